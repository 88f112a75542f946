"""Brain -> image: a brain encoder conditions a DiT that runs rectified flow in
the latent space of a (pretrained, frozen) VAE.

    voxels --BrainEncoder--> (global, tokens) --DiT + flow ODE--> latent --VAE decoder--> image

The modality-independent core (condition dropout, prior input, latent
normalisation, losses, sampling) is :class:`~cortexflow.models.latent_flow.LatentFlowDecoder`,
shared with :class:`~cortexflow.models.brain2audio.Brain2Audio` and re-exported here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from cortexflow.errors import CortexflowInputError
from cortexflow.models.brain_encoder import BrainEncoder
from cortexflow.models.dit import DiTConfig
from cortexflow.models.flow import FlowConfig
from cortexflow.models.latent_flow import LatentFlowConfig, LatentFlowDecoder
from cortexflow.models.types import Modality
from cortexflow.models.vae import LatentVAE, VAEConfig

log = logging.getLogger("cortexflow.models.brain2img")

__all__ = ["Brain2ImageConfig", "Brain2Image", "LatentFlowDecoder", "build_brain2img"]

@dataclass
class Brain2ImageConfig(LatentFlowConfig):
    """Everything :meth:`Brain2Image.from_config` needs: the shared fields of
    :class:`~cortexflow.models.latent_flow.LatentFlowConfig` plus the image size and the VAE."""

    img_size: int = 64
    vae: VAEConfig = field(default_factory=VAEConfig)


class Brain2Image(LatentFlowDecoder):
    """Reconstruct images (B, C, img_size, img_size) in [0, 1] from brain activity.

    The seed's signature, plus keyword-only ``vae`` (a pretrained
    :class:`LatentVAE` to build around; its config then wins over
    ``vae_config``), ``prior_conditioning`` and ``cond_drop_prob``.
    """

    modality = Modality.IMAGE

    def __init__(
        self,
        n_voxels: int = 1024,
        img_size: int = 64,
        dit_config: DiTConfig | None = None,
        vae_config: VAEConfig | None = None,
        flow_config: FlowConfig | None = None,
        n_brain_tokens: int = 16,
        brain_encoder: nn.Module | None = None,
        *,
        vae: LatentVAE | None = None,
        prior_conditioning: bool = False,
        cond_drop_prob: float = 0.1,
    ):
        super().__init__()
        if vae is not None and not isinstance(vae, LatentVAE):
            raise CortexflowInputError(f"vae must be a LatentVAE, got {type(vae).__name__}")
        vae = vae if vae is not None else LatentVAE(vae_config or VAEConfig())
        factor = self._check_arguments(
            vae, img_size, "img_size", "",
            "use an img_size divisible by {factor}, or fewer VAE levels (VAEConfig.hidden_dims)", cond_drop_prob,
        )
        dit_in = dit_config or DiTConfig()
        if brain_encoder is None:
            brain_encoder = BrainEncoder(n_voxels=n_voxels, cond_dim=dit_in.cond_dim, n_tokens=n_brain_tokens)
        latent_shape = (vae.latent_channels, img_size // factor, img_size // factor)
        dit_cfg = self._dit_config_for(dit_in, latent_shape, prior_conditioning)
        self.config = Brain2ImageConfig(
            img_size=img_size,
            dit=dit_cfg,
            vae=vae.config,
            **self._common_config(brain_encoder, n_voxels, n_brain_tokens, flow_config, prior_conditioning,
                                  cond_drop_prob),
        )
        self.img_size = img_size
        self._build(brain_encoder, vae, dit_cfg, self.config.flow, latent_shape)

    @classmethod
    def from_config(cls, config: Brain2ImageConfig) -> "Brain2Image":
        encoder = cls._encoder_from(config.encoder, config.n_voxels, config.dit.cond_dim, config.n_brain_tokens)
        return cls(
            config.n_voxels,
            config.img_size,
            config.dit,
            config.vae,
            config.flow,
            config.n_brain_tokens,
            encoder,
            prior_conditioning=config.prior_conditioning,
            cond_drop_prob=config.cond_drop_prob,
        )

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw latents -> images clamped to [0, 1]."""
        return self.vae.decode(latents).clamp(0.0, 1.0)


def build_brain2img(
    n_voxels: int = 1024,
    img_size: int = 64,
    hidden_dim: int = 256,
    depth: int = 6,
    num_heads: int = 8,
    *,
    in_channels: int = 3,
    latent_channels: int = 4,
    vae_hidden_dims: tuple[int, ...] = (32, 64),
    patch_size: int = 2,
    n_brain_tokens: int = 16,
    prior_conditioning: bool = False,
    cond_drop_prob: float = 0.1,
    vae: LatentVAE | None = None,
    brain_encoder: nn.Module | None = None,
) -> Brain2Image:
    """Brain2Image with the seed's defaults (cond_dim = hidden_dim, a 2-level VAE:
    4x smaller latents); keyword-only extras for the workflow (grayscale
    ``in_channels=1``, a pretrained ``vae``, ``prior_conditioning``)."""
    dit_cfg = DiTConfig(hidden_dim=hidden_dim, depth=depth, num_heads=num_heads, cond_dim=hidden_dim, patch_size=patch_size)
    vae_cfg = VAEConfig(in_channels=in_channels, latent_channels=latent_channels, hidden_dims=list(vae_hidden_dims))
    return Brain2Image(
        n_voxels=n_voxels,
        img_size=img_size,
        dit_config=dit_cfg,
        vae_config=vae_cfg,
        flow_config=FlowConfig(),
        n_brain_tokens=n_brain_tokens,
        brain_encoder=brain_encoder,
        vae=vae,
        prior_conditioning=prior_conditioning,
        cond_drop_prob=cond_drop_prob,
    )
