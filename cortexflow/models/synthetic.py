"""Synthetic brain data for trying the models without a study (the seed
library's ``make_synthetic_brain_data`` and ``SyntheticBrainDataset``).

They are random numbers with fMRI-like first-order statistics and nothing a
decoder could learn from; the workflow's simulated study
(``cortexflow simulate``) is the realistic synthetic data set.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from cortexflow.errors import CortexflowInputError

__all__ = ["SyntheticBrainDataset", "make_synthetic_brain_data"]


def make_synthetic_brain_data(
    batch_size: int = 4,
    n_voxels: int = 1024,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(batch_size, n_voxels) float tensor: white noise smoothed along the voxel
    axis by a Gaussian kernel (up to 31 voxels wide, sigma = width / 6), then
    standardised per row to mean 0 and standard deviation 1. Draws from
    ``generator`` (a CPU generator) if given, else from torch's global RNG."""
    for name, value in (("batch_size", batch_size), ("n_voxels", n_voxels)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise CortexflowInputError(f"{name} must be a positive integer, got {value!r}")
    raw = torch.randn(batch_size, n_voxels, generator=generator).to(device)
    width = min(31, n_voxels // 2 * 2 + 1)
    if width >= 3:
        x = torch.arange(width, dtype=torch.float32, device=raw.device) - width // 2
        kernel = torch.exp(-0.5 * (x / (width / 6)) ** 2)
        raw = F.conv1d(raw.unsqueeze(1), (kernel / kernel.sum()).view(1, 1, -1), padding=width // 2).squeeze(1)
    return (raw - raw.mean(dim=-1, keepdim=True)) / (raw.std(dim=-1, keepdim=True) + 1e-8)


class SyntheticBrainDataset:
    """``n_samples`` random (fmri, stimulus) pairs, item ``i`` drawn from seed ``i``
    (so ``ds[i]`` is the same every time).

    ``ds[i]`` is ``{"fmri": (n_voxels,), "stimulus": ...}`` with the stimulus
    an image (3, img_size, img_size) in [0, 1), a non-negative spectrogram
    (n_mels, audio_len), or ``max_text_len`` printable-ASCII byte ids (long).
    ``to_loader(batch_size, shuffle)`` yields stacked batches of those dicts.
    """

    MODALITIES = ("image", "audio", "text")

    def __init__(
        self,
        n_samples: int = 1000,
        n_voxels: int = 1024,
        modality: str = "image",
        img_size: int = 64,
        n_mels: int = 80,
        audio_len: int = 128,
        max_text_len: int = 64,
    ) -> None:
        self.n_samples = n_samples
        self.n_voxels = n_voxels
        # Checked on access, as in the seed (its tests build one with a bad modality first).
        self.modality = str(modality)
        self.img_size = img_size
        self.n_mels = n_mels
        self.audio_len = audio_len
        self.max_text_len = max_text_len

    def __len__(self) -> int:
        return self.n_samples

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        if self.modality not in self.MODALITIES:
            raise CortexflowInputError(
                f"SyntheticBrainDataset modality {self.modality!r} is unknown", fix=f"use one of {self.MODALITIES}"
            )
        if not 0 <= idx < self.n_samples:
            raise IndexError(f"index {idx} out of range for {self.n_samples} samples")
        g = torch.Generator().manual_seed(int(idx))
        fmri = torch.randn(self.n_voxels, generator=g)
        if self.modality == "image":
            stimulus = torch.rand(3, self.img_size, self.img_size, generator=g)
        elif self.modality == "audio":
            stimulus = torch.randn(self.n_mels, self.audio_len, generator=g).abs()
        else:
            stimulus = torch.randint(32, 127, (self.max_text_len,), generator=g)
        return {"fmri": fmri, "stimulus": stimulus}

    def to_loader(
        self, batch_size: int = 8, shuffle: bool = True, generator: torch.Generator | None = None
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of stacked items; the last one may be smaller."""
        order = torch.randperm(self.n_samples, generator=generator).tolist() if shuffle else range(self.n_samples)
        order = list(order)
        for start in range(0, self.n_samples, batch_size):
            items = [self[i] for i in order[start : start + batch_size]]
            yield {key: torch.stack([item[key] for item in items]) for key in items[0]}
