"""cortexflow.training: the optimisation loop (``Trainer``), its schedule and
resumable checkpoints (and the seed library's ``SyntheticBrainDataset``)."""

from cortexflow.models.synthetic import SyntheticBrainDataset

from cortexflow.training.trainer import (
    FitResult,
    Trainer,
    TrainingConfig,
    TrainingInterrupted,
    WarmupCosineScheduler,
    batch_indices,
    seed_everything,
)

__all__ = [
    "FitResult",
    "SyntheticBrainDataset",
    "Trainer",
    "TrainingConfig",
    "TrainingInterrupted",
    "WarmupCosineScheduler",
    "batch_indices",
    "seed_everything",
]
