"""Stage of rule ``check_study`` (workflow/rules/simulate.smk), and the ``cortexflow check`` command.

The function lives beside the reader it drives (``cortexflow.data.study_check``).
"""

from cortexflow.data.study_check import check_study_stage

__all__ = ["check_study_stage"]
