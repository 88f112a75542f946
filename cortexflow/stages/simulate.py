"""Stage of rule ``simulate_study`` (workflow/rules/simulate.smk).

The function lives beside the simulator it drives (``cortexflow.data.simulate``).
"""

from cortexflow.data.simulate import simulate_study_stage

# the config section its stages' --params come from (cortexflow.stages.STAGES reads it)
STAGE_SECTIONS = "simulate"

__all__ = ["simulate_study_stage"]
