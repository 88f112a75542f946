"""Exponential moving average of model parameters, for sampling.

Generative models sample better from a running average of their weights than
from the last iterate (Song & Ermon 2020; Karras et al. 2022, arXiv:2206.00364,
use it for every diffusion model they train). The update is

    shadow <- decay_t * shadow + (1 - decay_t) * param

with a constant ``decay_t = decay`` by default, as in the seed library
(cortexflowx 0.4). ``warmup=True`` uses ``decay_t = min(decay, (1 + n) / (10 + n))``
after ``n`` updates instead (the schedule of diffusers' and timm's EMA): early
on the average follows the fast-moving weights instead of staying near the
random initialisation, which matters for short runs where ``0.9999`` would
otherwise average over far more steps than were taken (after 2,500 updates at
a constant 0.999 the initial weights still make up 8% of the average). The
workflow's decoder training asks for the warm-up.

Only floating-point parameters are averaged; buffers (e.g. normalisation
statistics) are left to the model.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn

from cortexflow.errors import CortexflowInputError

log = logging.getLogger("cortexflow.models.ema")

__all__ = ["EMAModel"]


class EMAModel:
    """Shadow copy of a model's parameters, updated as an exponential moving average.

    >>> ema = EMAModel(model, decay=0.999)
    >>> ema.update(model)                       # after each optimizer step
    >>> originals = ema.apply_to(model)         # sample with the averaged weights
    >>> ema.restore(model, originals)           # back to the training weights

    ``warmup=False`` (the default, the seed's behaviour): constant ``decay``;
    ``warmup=True``: the decay ramps up as ``(1 + n) / (10 + n)`` (see the module).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False):
        if not 0.0 <= float(decay) <= 1.0:
            raise CortexflowInputError(f"EMA decay must be in [0, 1], got {decay!r}", fix="use e.g. 0.999 or 0.9999")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().clone() for name, p in _averaged_parameters(model)
        }

    def current_decay(self) -> float:
        """The decay the next ``update`` will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow parameters towards ``model``'s current parameters."""
        decay = self.current_decay()
        params = self._matching(model)
        shadow = [self.shadow[name] for name, _ in params]
        current = [p.detach().to(s.dtype) for (_, p), s in zip(params, shadow)]
        if shadow:
            # lerp(s, p, w) = s + w (p - s) = decay * s + (1 - decay) * p, one fused kernel per dtype/device.
            torch._foreach_lerp_(shadow, current, 1.0 - decay)
        self.num_updates += 1

    @torch.no_grad()
    def apply_to(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Copy the averaged parameters into ``model``; return its originals for ``restore``."""
        originals = {}
        for name, p in self._matching(model):
            originals[name] = p.detach().clone()
            p.copy_(self.shadow[name])
        return originals

    @torch.no_grad()
    def restore(self, model: nn.Module, originals: dict[str, torch.Tensor]) -> None:
        """Put back the parameters ``apply_to`` returned."""
        for name, p in self._matching(model):
            if name not in originals:
                raise CortexflowInputError(
                    f"no original value for parameter {name!r}",
                    fix="pass the dict that apply_to(model) returned for this same model",
                )
            p.copy_(originals[name])

    def copy_to(self, model: nn.Module) -> None:
        """Copy the averaged parameters into ``model`` for good (e.g. before saving it)."""
        self.apply_to(model)

    @contextlib.contextmanager
    def average_parameters(self, model: nn.Module) -> Iterator[nn.Module]:
        """``with ema.average_parameters(model):`` runs its body with the averaged weights."""
        originals = self.apply_to(model)
        try:
            yield model
        finally:
            self.restore(model, originals)

    def to(self, device: torch.device | str) -> "EMAModel":
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "shadow": {k: v.clone() for k, v in self.shadow.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shadow = state["shadow"]
        if set(shadow) != set(self.shadow):
            missing = sorted(set(self.shadow) - set(shadow))[:5]
            extra = sorted(set(shadow) - set(self.shadow))[:5]
            raise CortexflowInputError(
                f"EMA state does not match the model: missing {missing}, unexpected {extra}",
                fix="load an EMA state saved for a model with the same architecture",
            )
        for name, value in shadow.items():
            if value.shape != self.shadow[name].shape:
                raise CortexflowInputError(
                    f"EMA state for {name!r} has shape {tuple(value.shape)}, "
                    f"the model {tuple(self.shadow[name].shape)}",
                    fix="load an EMA state saved for a model with the same architecture",
                )
            self.shadow[name].copy_(value)
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])

    def _matching(self, model: nn.Module) -> list[tuple[str, torch.Tensor]]:
        params = list(_averaged_parameters(model))
        if len(params) != len(self.shadow) or any(name not in self.shadow for name, _ in params):
            raise CortexflowInputError(
                "model's parameters are not the ones this EMA was created for",
                fix="create the EMAModel from this model (same architecture and parameter names)",
            )
        return params


def _averaged_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    for name, p in model.named_parameters():
        if p.is_floating_point():
            yield name, p
