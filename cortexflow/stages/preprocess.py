"""Stages of rules ``glm_betas``, ``extract_rois`` and ``make_dataset``
(workflow/rules/preprocess.smk).

Each function lives beside the library code it drives (``cortexflow.preprocess``).
"""

from cortexflow.preprocess.dataset import make_dataset_stage
from cortexflow.preprocess.glm import glm_betas_stage
from cortexflow.preprocess.rois import extract_rois_stage

__all__ = ["glm_betas_stage", "extract_rois_stage", "make_dataset_stage"]
