"""The seed library's ``cortexflow._types``: its data types and configs,
re-exported from where they live in this package."""

from cortexflow.errors import CortexflowInputError as CortexFlowError
from cortexflow.models.dit import DiTConfig
from cortexflow.models.flow import FlowConfig
from cortexflow.models.types import BrainData, Modality, ReconstructionResult
from cortexflow.models.vae import VAEConfig
from cortexflow.training.trainer import TrainingConfig

__all__ = [
    "BrainData",
    "CortexFlowError",
    "DiTConfig",
    "FlowConfig",
    "Modality",
    "ReconstructionResult",
    "TrainingConfig",
    "VAEConfig",
]
