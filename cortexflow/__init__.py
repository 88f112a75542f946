"""cortexflow: decode what a person saw, heard or read from fMRI.

The public names are those of the seed library (cortexflowx 0.4) and are
imported lazily, so ``import cortexflow`` and the command line stay fast and
stages that need no torch never load it. The seed's module paths
(``cortexflow.dit``, ``cortexflow.brain2img``, ``cortexflow._types``, ...) are
thin re-exports; docs/seed-compat.md lists what differs from the seed.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.5.0"

_PUBLIC = {
    "BrainData": "cortexflow.models.types",
    "ReconstructionResult": "cortexflow.models.types",
    "DiffusionTransformer": "cortexflow.models.dit",
    "DiTConfig": "cortexflow.models.dit",
    "RectifiedFlowMatcher": "cortexflow.models.flow",
    "FlowConfig": "cortexflow.models.flow",
    "BrainEncoderConfig": "cortexflow.models.brain_encoder",
    "ROIBrainEncoderConfig": "cortexflow.models.brain_encoder",
    "SubjectAdapterConfig": "cortexflow.models.brain_encoder",
    "VAEConfig": "cortexflow.models.vae",
    "AudioVAEConfig": "cortexflow.models.vae",
    "Brain2ImageConfig": "cortexflow.models.brain2img",
    "Brain2AudioConfig": "cortexflow.models.brain2audio",
    "Brain2TextConfig": "cortexflow.models.brain2text",
    "BrainEncoder": "cortexflow.models.brain_encoder",
    "ROIBrainEncoder": "cortexflow.models.brain_encoder",
    "SubjectAdapter": "cortexflow.models.brain_encoder",
    "LatentVAE": "cortexflow.models.vae",
    "AudioVAE": "cortexflow.models.vae",
    "Brain2Image": "cortexflow.models.brain2img",
    "Brain2Audio": "cortexflow.models.brain2audio",
    "Brain2Text": "cortexflow.models.brain2text",
    "build_brain2img": "cortexflow.models.brain2img",
    "build_brain2audio": "cortexflow.models.brain2audio",
    "build_brain2text": "cortexflow.models.brain2text",
    "EMAModel": "cortexflow.models.ema",
    "Trainer": "cortexflow.training.trainer",
    "TrainingConfig": "cortexflow.training.trainer",
    "WarmupCosineScheduler": "cortexflow.training.trainer",
    "save_model": "cortexflow.models.io",
    "load_model": "cortexflow.models.io",
    # the rest of the seed's top-level names
    "Modality": "cortexflow.models.types",
    "CortexFlowError": "cortexflow._types",
    "AudioDiT": "cortexflow.models.brain2audio",
    "make_synthetic_brain_data": "cortexflow.models.synthetic",
    "SyntheticBrainDataset": "cortexflow.models.synthetic",
}

#: Seed names without a counterpart: importing one raises an error saying why.
_SEED_ONLY = {"BrainTextDecoder": "cortexflow.brain2text"}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    if name in _SEED_ONLY:
        return getattr(importlib.import_module(_SEED_ONLY[name]), name)  # raises SeedNameError
    raise AttributeError(f"module 'cortexflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
