"""Stages of rules ``glm_betas``, ``extract_rois`` and ``make_dataset``
(workflow/rules/preprocess.smk).

Each function lives beside the library code it drives (``cortexflow.preprocess``).
"""

from cortexflow.preprocess.dataset import make_dataset_stage
from cortexflow.preprocess.glm import glm_betas_stage
from cortexflow.preprocess.rois import extract_rois_stage

# the config section its stages' --params come from (cortexflow.stages.STAGES reads it)
STAGE_SECTIONS = {"glm_betas": "glm", "extract_rois": "rois", "make_dataset": "dataset"}

__all__ = ["glm_betas_stage", "extract_rois_stage", "make_dataset_stage"]
