"""The seed library's ``cortexflow.brain2img``, re-exported from :mod:`cortexflow.models.brain2img`."""

from cortexflow.models.brain2img import Brain2Image, Brain2ImageConfig, build_brain2img

__all__ = ["Brain2Image", "Brain2ImageConfig", "build_brain2img"]
