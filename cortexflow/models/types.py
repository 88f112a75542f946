"""Inputs and outputs of the decoding pipelines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class BrainData:
    """One batch of brain activity.

    voxels: (batch, n_voxels) tensor, or a dict ROI name -> (batch, n_roi_voxels)
        for ROI-aware encoders.
    subject_id: a BIDS label ("sub-01") or a list of them, one per row.
    subject_idx: (batch,) long tensor of subject indices for per-subject adapters.
    prior: optional tensor in the target's latent shape (e.g. a ridge-regression
        prediction) that models built with ``prior_conditioning`` take as input.
    """

    voxels: torch.Tensor | dict[str, torch.Tensor]
    subject_id: str | list[str] | None = None
    subject_idx: torch.Tensor | None = None
    prior: torch.Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        if isinstance(self.voxels, dict):
            return next(iter(self.voxels.values())).shape[0]
        return self.voxels.shape[0]

    def to(self, device: torch.device | str) -> "BrainData":
        def move(x):
            return None if x is None else x.to(device)

        voxels = {k: v.to(device) for k, v in self.voxels.items()} if isinstance(self.voxels, dict) else self.voxels.to(device)
        return BrainData(voxels, self.subject_id, move(self.subject_idx), move(self.prior), dict(self.metadata))


@dataclass
class ReconstructionResult:
    """What ``reconstruct`` returns: ``output`` in the modality's space
    (images (B, C, H, W) in [0, 1]; mel spectrograms (B, n_mels, T); text bytes
    (B, L)), the modality name and anything else in ``metadata``
    (``metadata["texts"]`` for text). Every model's ``reconstruct`` returns its
    tensors on the CPU, whatever device it ran on."""

    output: torch.Tensor
    modality: str
    brain_global: torch.Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
