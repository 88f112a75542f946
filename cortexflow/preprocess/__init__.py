"""From BOLD runs to the (trials x voxels) matrices decoders learn from.

- :mod:`~cortexflow.preprocess.glm`: single-trial betas of one run (LSA / LSS),
  checked against nilearn's ``FirstLevelModel``;
- :mod:`~cortexflow.preprocess.rois`: regions on the BOLD grid (coordinate
  spheres, labels image, mask) and the ROI voxels of a task's runs;
- :mod:`~cortexflow.preprocess.dataset`: the leakage-free train/test dataset
  with training-only z-scoring and NSD-style noise ceilings.
"""

from cortexflow.preprocess.dataset import Dataset, DatasetConfig, build_dataset, load_dataset
from cortexflow.preprocess.glm import GLMConfig, build_design, single_trial_betas
from cortexflow.preprocess.rois import ROIConfig, RegionMap, build_regions, select_voxels

__all__ = [
    "Dataset", "DatasetConfig", "GLMConfig", "ROIConfig", "RegionMap",
    "build_dataset", "build_design", "build_regions", "load_dataset", "select_voxels", "single_trial_betas",
]
