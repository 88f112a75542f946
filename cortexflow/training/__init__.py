"""cortexflow.training: the optimisation loop (``Trainer``), its schedule and
resumable checkpoints (and the seed library's ``SyntheticBrainDataset``).

The names below are imported on first use (PEP 562), so that importing a
torch-free submodule such as ``cortexflow.training.history`` (the workflow's
Snakefile does, to name the loss-curve files) does not import torch: every
``snakemake`` start, dry runs included, paid about 3 s of CPU for it.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SyntheticBrainDataset": "cortexflow.models.synthetic",
    "FitResult": "cortexflow.training.trainer",
    "Trainer": "cortexflow.training.trainer",
    "TrainingConfig": "cortexflow.training.trainer",
    "TrainingInterrupted": "cortexflow.training.trainer",
    "WarmupCosineScheduler": "cortexflow.training.trainer",
    "batch_indices": "cortexflow.training.trainer",
    "seed_everything": "cortexflow.training.trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
