"""The seed library's ``cortexflow.dit``, re-exported from :mod:`cortexflow.models.dit`.

``DiffusionTransformer(config, img_size)`` and ``forward(x, t, brain_global,
brain_tokens=None)`` are the seed's. The building blocks (``DiTBlock``,
``FinalLayer``, ``SwiGLU``, ``TimestepEmbedding``) are this package's, with its
constructors; ``modulate`` keeps the seed's meaning, ``x * (1 + scale) + shift``.
"""

from __future__ import annotations

import torch

from cortexflow._seed_compat import missing_names
from cortexflow.models import dit as _dit
from cortexflow.models.dit import DiffusionTransformer, DiTBlock, DiTConfig, FinalLayer, SwiGLU, TimestepEmbedding

__all__ = ["DiTBlock", "DiTConfig", "DiffusionTransformer", "FinalLayer", "SwiGLU", "TimestepEmbedding", "modulate"]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation with the seed's arguments: ``x * (1 + scale) + shift``, the
    (B, D) shift and scale broadcast over the tokens of x (B, N, D)."""
    return _dit.modulate(x, shift.unsqueeze(1), 1 + scale.unsqueeze(1))


__getattr__ = missing_names(
    __name__,
    {"PatchEmbed": "the DiT embeds patches with a reshape and one nn.Linear (DiffusionTransformer.patch_embed), "
     "for 1-D and 2-D latents alike"},
)
