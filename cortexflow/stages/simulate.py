"""Stage of rule ``simulate_study`` (workflow/rules/simulate.smk).

The function lives beside the simulator it drives (``cortexflow.data.simulate``).
"""

from cortexflow.data.simulate import simulate_study_stage

__all__ = ["simulate_study_stage"]
