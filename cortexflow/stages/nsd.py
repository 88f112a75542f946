"""Stages of rules ``nsd_betas`` and ``nsd_stimuli`` (workflow/rules/nsd.smk):
the Natural Scenes Dataset's own files into the files ``extract_rois`` writes.

Each function lives beside the reader it drives (``cortexflow.data.nsd``).
"""

from cortexflow.data.nsd import nsd_betas_stage, nsd_stimuli_stage

# the config section its stages' --params come from (cortexflow.stages.STAGES reads it): data, whose
# data.nsd the stages read
STAGE_SECTIONS = "data"

__all__ = ["nsd_betas_stage", "nsd_stimuli_stage"]
