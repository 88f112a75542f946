"""The seed library's ``cortexflow.brain_encoder``: the encoders
(:mod:`cortexflow.models.brain_encoder`) and ``make_synthetic_brain_data``
(:mod:`cortexflow.models.synthetic`)."""

from cortexflow.models.brain_encoder import (
    BrainEncoder,
    BrainEncoderConfig,
    ROIBrainEncoder,
    ROIBrainEncoderConfig,
    SubjectAdapter,
    SubjectAdapterConfig,
)
from cortexflow.models.synthetic import make_synthetic_brain_data

__all__ = [
    "BrainEncoder",
    "BrainEncoderConfig",
    "ROIBrainEncoder",
    "ROIBrainEncoderConfig",
    "SubjectAdapter",
    "SubjectAdapterConfig",
    "make_synthetic_brain_data",
]
