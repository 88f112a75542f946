"""cortexflow.training: the optimisation loop (``Trainer``), its schedule and
resumable checkpoints."""

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
    "Trainer",
    "TrainingConfig",
    "TrainingInterrupted",
    "WarmupCosineScheduler",
    "batch_indices",
    "seed_everything",
]
