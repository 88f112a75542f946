"""The seed library's ``cortexflow.brain2audio``, re-exported from :mod:`cortexflow.models.brain2audio`."""

from cortexflow._seed_compat import missing_names
from cortexflow.models.brain2audio import AudioDiT, Brain2Audio, Brain2AudioConfig, build_brain2audio

__all__ = ["AudioDiT", "Brain2Audio", "Brain2AudioConfig", "build_brain2audio"]

__getattr__ = missing_names(
    __name__,
    {"DiTBlock1D": "AudioDiT is the package's DiffusionTransformer on 1-D input, built of "
     "cortexflow.models.dit.DiTBlock (the same block for images and audio)"},
)
