"""What the model stages import for their parameters, in one place.

The dataclasses of the config's ``vae``, ``decoder``, ``sampling`` and
``cross_subject`` sections live in :mod:`cortexflow.models.params` (below the
stages, so the config check and the summary can read them without importing a
stage); the per-modality parsing is :func:`cortexflow.sections.modality_params`.
"""

from cortexflow.devices import resolve_device
from cortexflow.models.params import (CONTINUOUS, TRAINING_SEEDS, CrossSubjectParams, DecoderParams, SamplingParams,
                                      VAEParams, training_seeds)
from cortexflow.sections import modality_params

__all__ = ["CONTINUOUS", "TRAINING_SEEDS", "CrossSubjectParams", "DecoderParams", "SamplingParams", "VAEParams",
           "modality_params", "resolve_device", "training_seeds"]
