"""The seed library's ``cortexflow.vae``, re-exported from :mod:`cortexflow.models.vae`.

``ResBlock(channels)`` and ``ResBlock1D(channels)`` build this package's
residual block (group norm, SiLU, 3-wide convolutions) in 2-D and 1-D, with
the seed's constructor.
"""

from __future__ import annotations

import torch.nn as nn

from cortexflow._seed_compat import missing_names
from cortexflow.models import vae as _vae
from cortexflow.models.vae import AudioVAE, AudioVAEConfig, ConvVAE, LatentVAE, VAEConfig

__all__ = ["AudioVAE", "AudioVAEConfig", "ConvVAE", "LatentVAE", "ResBlock", "ResBlock1D", "VAEConfig"]


def ResBlock(channels: int) -> nn.Module:  # noqa: N802 (the seed's class name)
    """2-D residual block on ``channels`` feature maps."""
    return _vae.ResBlock(channels, nn.Conv2d)


def ResBlock1D(channels: int) -> nn.Module:  # noqa: N802 (the seed's class name)
    """1-D residual block on ``channels`` feature maps."""
    return _vae.ResBlock(channels, nn.Conv1d)


_WHY = ("a ConvVAE builds its encoder and decoder stacks itself (LatentVAE(config).encode / .decode, "
        "ConvVAE in cortexflow.models.vae)")
__getattr__ = missing_names(__name__, {"Encoder": _WHY, "Decoder": _WHY})
