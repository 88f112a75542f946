"""Brain -> audio: rectified flow in the latent space of a 1-D mel-spectrogram VAE.

    voxels --BrainEncoder--> (global, tokens) --DiT + flow ODE--> latent (C, T')
           --AudioVAE decoder--> log-mel (n_mels, T) --InverseMelScale + Griffin-Lim--> waveform

The same :class:`~cortexflow.models.dit.DiffusionTransformer` as for images runs
on the 1-D latent (its tokens are patches along time), and the same
:class:`~cortexflow.models.brain2img.LatentFlowDecoder` core trains and samples
it; only the VAE and the decoding step differ. Mel spectrograms are log
magnitudes (see :mod:`cortexflow.models.audio`), so ``reconstruct(...).output``
goes straight into :meth:`Brain2Audio.mel_to_waveform`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn

from cortexflow.errors import CortexflowInputError
from cortexflow.models import audio
from cortexflow.models.latent_flow import LatentFlowConfig, LatentFlowDecoder
from cortexflow.models.brain_encoder import BrainEncoder
from cortexflow.models.dit import DiffusionTransformer, DiTConfig
from cortexflow.models.types import Modality
from cortexflow.models.flow import FlowConfig
from cortexflow.models.vae import AudioVAE, AudioVAEConfig

log = logging.getLogger("cortexflow.models.brain2audio")

__all__ = ["AudioDiT", "Brain2AudioConfig", "Brain2Audio", "build_brain2audio"]


@dataclass
class Brain2AudioConfig(LatentFlowConfig):
    """Everything :meth:`Brain2Audio.from_config` needs: the shared fields of
    :class:`~cortexflow.models.latent_flow.LatentFlowConfig` plus the mel/STFT settings and the VAE."""

    n_mels: int = 80
    audio_len: int = 128
    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 256
    vae: AudioVAEConfig = field(default_factory=AudioVAEConfig)


class Brain2Audio(LatentFlowDecoder):
    """Reconstruct log-mel spectrograms (B, n_mels, audio_len) from brain activity.

    The seed's signature (``n_voxels, n_mels, audio_len, hidden_dim, depth,
    num_heads, sample_rate, brain_encoder``) plus keyword-only options: a
    pretrained ``vae`` (an :class:`AudioVAE`) or a ``vae_config`` (default: 8
    latent channels, width 64, 2 levels, i.e. 4x shorter in time), a full
    ``dit_config`` (overrides hidden_dim/depth/num_heads; default patch size 2
    along time), the STFT settings, ``prior_conditioning`` and ``cond_drop_prob``.
    """

    modality = Modality.AUDIO

    def __init__(
        self,
        n_voxels: int = 1024,
        n_mels: int = 80,
        audio_len: int = 128,
        hidden_dim: int = 256,
        depth: int = 6,
        num_heads: int = 8,
        sample_rate: int = 16000,
        brain_encoder: nn.Module | None = None,
        *,
        vae: AudioVAE | None = None,
        vae_config: AudioVAEConfig | None = None,
        dit_config: DiTConfig | None = None,
        flow_config: FlowConfig | None = None,
        n_brain_tokens: int = 16,
        n_fft: int = 1024,
        hop_length: int = 256,
        prior_conditioning: bool = False,
        cond_drop_prob: float = 0.1,
    ):
        super().__init__()
        if vae is not None and not isinstance(vae, AudioVAE):
            raise CortexflowInputError(f"vae must be an AudioVAE, got {type(vae).__name__}")
        if vae is None:
            vae = AudioVAE.from_config(
                vae_config or AudioVAEConfig(n_mels=n_mels, latent_channels=8, hidden_dim=64, n_downsample=2)
            )
        if vae.config.n_mels != n_mels:
            raise CortexflowInputError(
                f"the VAE was built for {vae.config.n_mels} mel bins but n_mels={n_mels}",
                fix="build the model with the VAE's n_mels",
            )
        factor = self._check_arguments(
            vae, audio_len, "audio_len", " frames", "crop or pad mel spectrograms to a multiple of {factor} frames",
            cond_drop_prob,
        )
        dit_in = dit_config or DiTConfig(
            hidden_dim=hidden_dim, depth=depth, num_heads=num_heads, cond_dim=hidden_dim, patch_size=2
        )
        if brain_encoder is None:
            brain_encoder = BrainEncoder(n_voxels=n_voxels, cond_dim=dit_in.cond_dim, n_tokens=n_brain_tokens)
        latent_shape = (vae.latent_channels, audio_len // factor)
        if latent_shape[1] % dit_in.patch_size:
            dit_in = replace(dit_in, patch_size=1)
            log.info("latent length %d is odd: using patch_size 1 along time", latent_shape[1])
        dit_cfg = self._dit_config_for(dit_in, latent_shape, prior_conditioning)
        self.config = Brain2AudioConfig(
            n_mels=n_mels,
            audio_len=audio_len,
            sample_rate=sample_rate,
            n_fft=n_fft,
            hop_length=hop_length,
            dit=dit_cfg,
            vae=vae.config,
            **self._common_config(brain_encoder, n_voxels, n_brain_tokens, flow_config, prior_conditioning,
                                  cond_drop_prob),
        )
        self.n_mels, self.audio_len, self.sample_rate = n_mels, audio_len, sample_rate
        self._build(brain_encoder, vae, dit_cfg, self.config.flow, latent_shape)

    @classmethod
    def from_config(cls, config: Brain2AudioConfig) -> "Brain2Audio":
        encoder = cls._encoder_from(config.encoder, config.n_voxels, config.dit.cond_dim, config.n_brain_tokens)
        return cls(
            config.n_voxels,
            config.n_mels,
            config.audio_len,
            config.dit.hidden_dim,
            config.dit.depth,
            config.dit.num_heads,
            config.sample_rate,
            encoder,
            vae_config=config.vae,
            dit_config=config.dit,
            flow_config=config.flow,
            n_brain_tokens=config.n_brain_tokens,
            n_fft=config.n_fft,
            hop_length=config.hop_length,
            prior_conditioning=config.prior_conditioning,
            cond_drop_prob=config.cond_drop_prob,
        )

    @property
    def mel_params(self) -> dict[str, int]:
        """This model's STFT settings, for ``mel_to_waveform(mel, **model.mel_params)``."""
        cfg = self.config
        return {"sample_rate": cfg.sample_rate, "n_fft": cfg.n_fft, "hop_length": cfg.hop_length}

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw latents -> log-mel spectrograms (B, n_mels, audio_len)."""
        return self.vae.decode(latents)

    # The seed's static methods, with the same defaults: log-mel (B, n_mels, T) ->
    # waveform (B, (T - 1) * hop_length) by InverseMelScale (gelsd, refined to
    # non-negative least squares) and Griffin-Lim, and its inverse.
    mel_to_waveform = staticmethod(audio.mel_to_waveform)
    waveform_to_mel = staticmethod(audio.waveform_to_mel)


class AudioDiT(DiffusionTransformer):
    """The seed library's 1-D DiT on mel spectrograms, ``AudioDiT(n_mels, seq_len,
    hidden_dim, depth, num_heads, cond_dim)``: here it is this package's
    :class:`~cortexflow.models.dit.DiffusionTransformer` on (B, n_mels, seq_len)
    inputs, one token per frame (patch size 1), so it has the same blocks
    (projected QK-norm attention, cross-attention, SwiGLU) as every other DiT.
    ``forward(x, t, brain_global, brain_tokens=None)`` returns the velocity,
    shaped like ``x``. :class:`Brain2Audio` does not use it: it runs the DiT on
    the latents of an :class:`AudioVAE` instead of on raw mel frames.
    """

    def __init__(
        self,
        n_mels: int = 80,
        seq_len: int = 128,
        hidden_dim: int = 256,
        depth: int = 6,
        num_heads: int = 8,
        cond_dim: int = 256,
    ):
        super().__init__(
            DiTConfig(
                in_channels=n_mels,
                hidden_dim=hidden_dim,
                depth=depth,
                num_heads=num_heads,
                patch_size=1,
                cond_dim=cond_dim,
                input_size=(seq_len,),
            )
        )
        self.n_mels, self.seq_len = n_mels, seq_len


def build_brain2audio(
    n_voxels: int = 1024,
    n_mels: int = 80,
    audio_len: int = 128,
    hidden_dim: int = 256,
    depth: int = 6,
    *,
    num_heads: int = 8,
    sample_rate: int = 16000,
    n_fft: int = 1024,
    hop_length: int = 256,
    latent_channels: int = 8,
    vae_hidden_dim: int = 64,
    vae_downsample: int = 2,
    patch_size: int = 2,
    n_brain_tokens: int = 16,
    prior_conditioning: bool = False,
    cond_drop_prob: float = 0.1,
    vae: AudioVAE | None = None,
    brain_encoder: nn.Module | None = None,
) -> Brain2Audio:
    """Brain2Audio with the seed's positional arguments and defaults (cond_dim = hidden_dim)."""
    return Brain2Audio(
        n_voxels=n_voxels,
        n_mels=n_mels,
        audio_len=audio_len,
        sample_rate=sample_rate,
        brain_encoder=brain_encoder,
        vae=vae,
        vae_config=AudioVAEConfig(n_mels, latent_channels, vae_hidden_dim, vae_downsample),
        dit_config=DiTConfig(
            hidden_dim=hidden_dim, depth=depth, num_heads=num_heads, cond_dim=hidden_dim, patch_size=patch_size
        ),
        n_brain_tokens=n_brain_tokens,
        n_fft=n_fft,
        hop_length=hop_length,
        prior_conditioning=prior_conditioning,
        cond_drop_prob=cond_drop_prob,
    )
