"""Inputs and outputs of the decoding pipelines."""

from __future__ import annotations

from dataclasses import KW_ONLY, InitVar, dataclass, field
from enum import StrEnum
from typing import Any

import torch

from cortexflow.errors import CortexflowInputError

__all__ = ["BrainData", "Modality", "ReconstructionResult"]


class Modality(StrEnum):
    """What a pipeline decodes. A ``str`` enum (the seed's ``Modality``):
    ``Modality.IMAGE == "image"``, ``Modality.IMAGE.value == "image"``, and it
    formats as its value, so f-strings, paths and tables see ``"image"``."""

    IMAGE = "image"
    AUDIO = "audio"
    TEXT = "text"


@dataclass
class BrainData:
    """One batch of brain activity.

    voxels: (batch, n_voxels) tensor, or a dict ROI name -> (batch, n_roi_voxels)
        for ROI-aware encoders.
    subject_id: a BIDS label ("sub-01") or a list of them, one per row.
    subject_idx: (batch,) long tensor of subject indices for per-subject adapters.
    prior: optional tensor in the target's latent shape (e.g. a ridge-regression
        prediction) that models built with ``prior_conditioning`` take as input.

    Keyword-only, as in the seed library: ``roi_voxels`` (a dict ROI name ->
    (batch, n_roi_voxels); an ROI encoder reads it instead of ``voxels`` when it
    is given), ``roi_mask`` (kept for the caller, not used by the models) and
    ``tr`` (repetition time in seconds, default 2.0).
    """

    voxels: torch.Tensor | dict[str, torch.Tensor]
    subject_id: str | list[str] | None = None
    subject_idx: torch.Tensor | None = None
    prior: torch.Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    _: KW_ONLY
    roi_mask: torch.Tensor | None = None
    roi_voxels: dict[str, torch.Tensor] | None = None
    tr: float = 2.0

    @property
    def batch_size(self) -> int:
        if isinstance(self.voxels, dict):
            return next(iter(self.voxels.values())).shape[0]
        return 1 if self.voxels.ndim == 1 else self.voxels.shape[0]

    @property
    def n_voxels(self) -> int:
        """Voxels per trial (summed over ROIs when ``voxels`` is a dict)."""
        if isinstance(self.voxels, dict):
            return sum(v.shape[-1] for v in self.voxels.values())
        return self.voxels.shape[-1]

    def encoder_input(self, encoder: object) -> torch.Tensor | dict[str, torch.Tensor]:
        """What ``encoder`` reads: ``roi_voxels`` for an ROI-aware encoder (one
        with ``roi_names``) when they are given, else ``voxels``."""
        if self.roi_voxels is not None and hasattr(encoder, "roi_names"):
            return self.roi_voxels
        return self.voxels

    def to(self, device: torch.device | str) -> "BrainData":
        def move(x):
            return None if x is None else x.to(device)

        def move_all(x):
            return {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else move(x)

        return BrainData(
            move_all(self.voxels), self.subject_id, move(self.subject_idx), move(self.prior), dict(self.metadata),
            roi_mask=move(self.roi_mask), roi_voxels=move_all(self.roi_voxels), tr=self.tr,
        )


@dataclass
class ReconstructionResult:
    """What ``reconstruct`` returns: ``output`` in the modality's space
    (images (B, C, H, W) in [0, 1]; mel spectrograms (B, n_mels, T); text bytes
    (B, L)), the ``modality`` (a :class:`Modality`; a plain string given here is
    converted) and anything else in ``metadata`` (``metadata["texts"]`` for text).

    The seed's names also work: ``brain_condition`` (the same tensor as
    ``brain_global``), ``n_steps`` and ``cfg_scale`` (kept in ``metadata`` as
    ``num_steps`` and ``cfg_scale``), as keyword arguments and as attributes.

    Every model's ``reconstruct`` returns its tensors on the CPU, whatever
    device it ran on.
    """

    output: torch.Tensor
    modality: Modality
    brain_global: torch.Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    _: KW_ONLY
    brain_condition: InitVar[torch.Tensor | None] = None
    n_steps: InitVar[int | None] = None
    cfg_scale: InitVar[float | None] = None

    def __post_init__(self, brain_condition, n_steps, cfg_scale) -> None:
        if not isinstance(self.output, torch.Tensor):
            raise CortexflowInputError(
                f"ReconstructionResult.output must be a tensor, got {type(self.output).__name__}",
                fix="pass keywords (output=..., modality=...): the first positional field is output "
                "(the seed library had modality first)",
            )
        try:
            self.modality = Modality(self.modality)
        except ValueError:
            raise CortexflowInputError(
                f"unknown modality {self.modality!r}", fix=f"use one of {[m.value for m in Modality]}"
            ) from None
        if brain_condition is not None:
            if self.brain_global is not None and brain_condition is not self.brain_global:
                raise CortexflowInputError("give brain_global or brain_condition (the seed's name), not both")
            self.brain_global = brain_condition
        if n_steps is not None:
            self.metadata.setdefault("num_steps", int(n_steps))
        if cfg_scale is not None:
            self.metadata.setdefault("cfg_scale", float(cfg_scale))


# The seed's attribute names, read from the fields above (set after the class
# is built: the dataclass keeps the InitVar defaults it captured).
ReconstructionResult.brain_condition = property(  # type: ignore[assignment]
    lambda self: self.brain_global, doc="The seed's name for ``brain_global``."
)
ReconstructionResult.n_steps = property(  # type: ignore[assignment]
    lambda self: int(self.metadata.get("num_steps", 50)), doc="ODE steps used (the seed's default 50 if unknown)."
)
ReconstructionResult.cfg_scale = property(  # type: ignore[assignment]
    lambda self: float(self.metadata.get("cfg_scale", 1.0)), doc="Guidance scale used (1.0: none, or unknown)."
)
