"""``brain_noise``: the seed library's way to draw samples that differ in how
they read the brain, not only in their generation noise. Each sample's
conditioning vectors get Gaussian noise scaled by ``brain_noise`` times the
vector's norm."""

from __future__ import annotations

import torch

from cortexflow.errors import CortexflowInputError
from cortexflow.models.flow import random_tensor

__all__ = ["check_brain_noise", "perturb_condition"]


def check_brain_noise(brain_noise: object) -> float:
    """``brain_noise`` as a float >= 0, or a ``CortexflowInputError``."""
    try:
        value = float(brain_noise)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise CortexflowInputError(f"brain_noise must be a finite number >= 0, got {brain_noise!r}")
    return value


def perturb_condition(x: torch.Tensor, brain_noise: float, generator: torch.Generator | None) -> torch.Tensor:
    """``x + brain_noise * ||x|| * N(0, I)``, the norm taken over the last axis
    (the seed library's ``brain_noise`` rule)."""
    noise = random_tensor(torch.randn, x.shape, generator, x.device, x.dtype)
    return x + brain_noise * x.norm(dim=-1, keepdim=True).clamp(min=1e-6) * noise
