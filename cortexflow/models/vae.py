"""Convolutional variational autoencoders that give the flow a small latent space.

One implementation, :class:`ConvVAE`, serves images (2-D convolutions,
``(B, C, H, W) -> (B, latent_channels, H / 2^L, W / 2^L)``) and mel
spectrograms (1-D convolutions over time with the mel bins as channels,
``(B, n_mels, T) -> (B, latent_channels, T / 2^L)``), where ``L`` is the number
of downsampling levels. :class:`LatentVAE` and :class:`AudioVAE` are its two
seed-compatible faces.

The layout is the Stable Diffusion autoencoder's in miniature (Rombach et al.
2022, arXiv:2112.10752): strided convolutions down, GroupNorm-SiLU residual
blocks, nearest-neighbour upsampling followed by a convolution on the way up
(no transposed convolutions, which leave checkerboard artefacts; Odena et al.
2016), and a diagonal-Gaussian posterior trained with

    L = MSE(x, x_hat) + kl_weight * KL(N(mu, sigma^2) || N(0, I))

with a small ``kl_weight`` so the latent keeps detail (SD uses 1e-6 too). The
decoder's output is unbounded; the pipelines clamp images to [0, 1].
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from cortexflow.errors import CortexflowInputError

log = logging.getLogger("cortexflow.models.vae")

__all__ = ["VAEConfig", "AudioVAEConfig", "ConvVAE", "LatentVAE", "AudioVAE"]


@dataclass
class VAEConfig:
    """Image VAE (the seed's ``VAEConfig``): each entry of ``hidden_dims`` is one
    level that halves the resolution, so ``len(hidden_dims)`` sets the
    downsampling factor ``2 ** len(hidden_dims)``."""

    in_channels: int = 3
    latent_channels: int = 4
    hidden_dims: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    kl_weight: float = 1e-6

    def __post_init__(self) -> None:
        self.hidden_dims = [int(h) for h in self.hidden_dims]
        _check_vae_dims(self.in_channels, self.latent_channels, self.hidden_dims, self.kl_weight)

    @property
    def downsample_factor(self) -> int:
        return 2 ** len(self.hidden_dims)


@dataclass
class AudioVAEConfig:
    """Mel-spectrogram VAE (the seed's ``AudioVAE`` arguments): ``n_downsample``
    levels over time, widths ``hidden_dim * 2**level``."""

    n_mels: int = 80
    latent_channels: int = 8
    hidden_dim: int = 128
    n_downsample: int = 3
    kl_weight: float = 1e-6

    def __post_init__(self) -> None:
        if not isinstance(self.n_downsample, int) or self.n_downsample < 1:
            raise CortexflowInputError(f"AudioVAEConfig.n_downsample must be >= 1, got {self.n_downsample!r}")
        _check_vae_dims(self.n_mels, self.latent_channels, [self.hidden_dim], self.kl_weight)

    @property
    def hidden_dims(self) -> list[int]:
        return [self.hidden_dim * 2**level for level in range(self.n_downsample)]

    @property
    def downsample_factor(self) -> int:
        return 2**self.n_downsample


def _check_vae_dims(in_channels: int, latent_channels: int, hidden_dims: list[int], kl_weight: float) -> None:
    for name, value in (("in_channels", in_channels), ("latent_channels", latent_channels)):
        if not isinstance(value, int) or value <= 0:
            raise CortexflowInputError(f"VAE {name} must be a positive integer, got {value!r}")
    if not hidden_dims or any(h <= 0 for h in hidden_dims):
        raise CortexflowInputError(f"VAE hidden_dims must be positive widths, got {hidden_dims}")
    if kl_weight < 0:
        raise CortexflowInputError(f"VAE kl_weight must be >= 0, got {kl_weight}")


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """``x + Conv(SiLU(GN(Conv(SiLU(GN(x))))))`` in 1-D or 2-D."""

    def __init__(self, channels: int, conv: type[nn.Module]):
        super().__init__()
        self.block = nn.Sequential(
            _group_norm(channels),
            nn.SiLU(),
            conv(channels, channels, 3, padding=1),
            _group_norm(channels),
            nn.SiLU(),
            conv(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ConvVAE(nn.Module):
    """Diagonal-Gaussian convolutional VAE over ``spatial_dims`` (1 or 2) axes.

    ``encode(x) -> (z, mu, logvar)`` (z is a reparameterised sample),
    ``decode(z) -> x_hat``, ``forward(x) -> (x_hat, mu, logvar)``,
    ``loss(x, x_hat, mu, logvar) -> (total, {"recon", "kl"})``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        latent_channels: int,
        hidden_dims: list[int],
        kl_weight: float = 1e-6,
    ):
        super().__init__()
        if spatial_dims not in (1, 2):
            raise CortexflowInputError(f"spatial_dims must be 1 or 2, got {spatial_dims}")
        conv = nn.Conv1d if spatial_dims == 1 else nn.Conv2d
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.kl_weight = kl_weight
        self.levels = len(hidden_dims)

        down: list[nn.Module] = []
        prev = in_channels
        for width in hidden_dims:
            down += [conv(prev, width, 3, stride=2, padding=1), _group_norm(width), nn.SiLU(), ResBlock(width, conv)]
            prev = width
        self.encoder = nn.Sequential(*down)
        # mu and log-variance from one 1x1 convolution
        self.to_moments = conv(prev, 2 * latent_channels, 1)

        up: list[nn.Module] = [conv(latent_channels, prev, 3, padding=1)]
        widths = list(reversed(hidden_dims))
        for width, nxt in zip(widths, widths[1:] + [widths[-1]]):
            up += [
                ResBlock(width, conv),
                nn.Upsample(scale_factor=2, mode="nearest"),
                conv(width, nxt, 3, padding=1),
                _group_norm(nxt),
                nn.SiLU(),
            ]
        up.append(conv(widths[-1], in_channels, 3, padding=1))
        self.decoder = nn.Sequential(*up)

    @property
    def downsample_factor(self) -> int:
        return 2**self.levels

    def latent_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Latent (C, *S) for an input of spatial shape ``input_shape`` (no channel axis)."""
        return (self.latent_channels, *(s // self.downsample_factor for s in input_shape))

    def check_input(self, x: torch.Tensor, name: str = "input") -> torch.Tensor:
        """Raise ``CortexflowInputError`` unless ``x`` is (B, in_channels, *S) with S divisible by 2^levels."""
        kind = "(batch, channels, height, width)" if self.spatial_dims == 2 else "(batch, n_mels, frames)"
        if not isinstance(x, torch.Tensor) or x.ndim != 2 + self.spatial_dims or x.shape[1] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise CortexflowInputError(
                f"the VAE takes {name} of shape {kind} with {self.in_channels} channels, got {got}",
                fix="pass a batch in the layout above; build the VAE with the right channel count "
                "(VAEConfig.in_channels for images, n_mels for audio)",
            )
        f = self.downsample_factor
        if any(s % f for s in x.shape[2:]):
            raise CortexflowInputError(
                f"{name} size {tuple(x.shape[2:])} is not divisible by the VAE's downsampling factor {f}",
                fix=f"crop or pad to a multiple of {f}, or use fewer VAE levels",
            )
        return x

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z, mu, logvar); z = mu + sigma * eps. Use ``mu`` for a deterministic latent."""
        mu, logvar = self.to_moments(self.encoder(self.check_input(x))).chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return z, mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or z.ndim != 2 + self.spatial_dims or z.shape[1] != self.latent_channels:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise CortexflowInputError(
                f"the VAE decodes latents with {self.latent_channels} channels and {self.spatial_dims} spatial axes, got {got}"
            )
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z, mu, logvar = self.encode(x)
        return self.decode(z), mu, logvar

    def loss(
        self, x: torch.Tensor, x_recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """MSE reconstruction + ``kl_weight`` x KL to N(0, I) (both means over elements)."""
        recon = F.mse_loss(x_recon, x)
        kl = -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())
        return recon + self.kl_weight * kl, {"recon": float(recon.detach()), "kl": float(kl.detach())}


class LatentVAE(ConvVAE):
    """Image VAE, ``LatentVAE(config: VAEConfig | None)`` as in the seed library."""

    def __init__(self, config: VAEConfig | None = None):
        cfg = config or VAEConfig()
        super().__init__(2, cfg.in_channels, cfg.latent_channels, cfg.hidden_dims, cfg.kl_weight)
        self.config = cfg

    @classmethod
    def from_config(cls, config: VAEConfig) -> "LatentVAE":
        return cls(config)


class AudioVAE(ConvVAE):
    """Mel-spectrogram VAE, ``AudioVAE(n_mels=80, latent_channels=8, hidden_dim=128,
    n_downsample=3)`` as in the seed library; ``(B, n_mels, T) -> (B, latent_channels, T / 2^n_downsample)``."""

    def __init__(
        self,
        n_mels: int = 80,
        latent_channels: int = 8,
        hidden_dim: int = 128,
        n_downsample: int = 3,
        kl_weight: float = 1e-6,
    ):
        cfg = AudioVAEConfig(n_mels, latent_channels, hidden_dim, n_downsample, kl_weight)
        super().__init__(1, cfg.n_mels, cfg.latent_channels, cfg.hidden_dims, cfg.kl_weight)
        self.config = cfg

    @classmethod
    def from_config(cls, config: AudioVAEConfig) -> "AudioVAE":
        return cls(config.n_mels, config.latent_channels, config.hidden_dim, config.n_downsample, config.kl_weight)
