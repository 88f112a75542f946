"""The latent-flow core shared by the image and audio decoders.

:class:`LatentFlowDecoder` holds everything that does not depend on the
modality (condition dropout and null embeddings for classifier-free guidance,
the optional prior input, latent normalisation, training losses, sampling);
:class:`~cortexflow.models.brain2img.Brain2Image` and
:class:`~cortexflow.models.brain2audio.Brain2Audio` subclass it.

Latent normalisation: flow matching starts from N(0, I), so the data end of the
path should have a comparable scale. The VAE's latents have no fixed scale
(Stable Diffusion rescales them by a constant for the same reason, Rombach et
al. 2022, Sec. 4.3.2), so the decoder keeps per-channel ``latent_mean`` and
``latent_std`` buffers, set once from the training latents with
:meth:`LatentFlowDecoder.set_latent_stats`, and works on
``(z - mean) / std`` inside; every public input and output is a raw VAE latent.

Devices: the model runs where its parameters are (``model.to("cuda")``);
:meth:`~LatentFlowDecoder.sample_latents` and :meth:`~LatentFlowDecoder.reconstruct`
accept brain data (and noise) on any device, move them to the model's, and
return CPU tensors, as :meth:`Brain2Text.reconstruct` does -- ready for
``.numpy()`` whichever device sampled them.

Prior conditioning (``prior_conditioning=True``): a tensor in the latent's
shape, e.g. a ridge-regression prediction of the latent, comes with the brain
data (``BrainData.prior``) and is concatenated to ``x_t`` along channels. A
small network learns the linear voxel -> latent map worse than ridge does from
a thousand noisy trials, so it is given that map's answer and learns what to
add (measured in docs/design-notes.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn as nn

from cortexflow.errors import CortexflowInputError
from cortexflow.models.brain_encoder import BrainEncoder
from cortexflow.models.brain_noise import check_brain_noise, perturb_condition
from cortexflow.models.dit import DiffusionTransformer, DiTConfig
from cortexflow.models.flow import FlowConfig, RectifiedFlowMatcher, _eval_mode, random_tensor
from cortexflow.models.io import module_from_spec, module_spec
from cortexflow.models.types import BrainData, ReconstructionResult
from cortexflow.models.vae import ConvVAE

log = logging.getLogger("cortexflow.models.latent_flow")

__all__ = ["LatentFlowConfig", "LatentFlowDecoder"]


@dataclass
class LatentFlowConfig:
    """The config fields every latent-flow decoder has; each modality's config adds its own.

    encoder: a module spec (see ``cortexflow.models.io.module_spec``) of the
        brain encoder; ``None`` builds ``BrainEncoder(n_voxels, dit.cond_dim, n_brain_tokens)``.
    dit: the DiT as built (its channels and input size follow from the VAE).
    """

    n_voxels: int = 1024
    dit: DiTConfig = field(default_factory=DiTConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    n_brain_tokens: int = 16
    encoder: dict | None = None
    prior_conditioning: bool = False
    cond_drop_prob: float = 0.1


class LatentFlowDecoder(nn.Module):
    """Brain-conditioned rectified flow on the latents of a frozen VAE.

    Subclasses build ``self.config`` and call :meth:`_build`; they define
    ``modality``, ``latent_shape`` and :meth:`decode_latents`.
    """

    modality = ""
    config: Any

    def _build(
        self,
        brain_encoder: nn.Module,
        vae: ConvVAE,
        dit_config: DiTConfig,
        flow_config: FlowConfig,
        latent_shape: tuple[int, ...],
    ) -> None:
        cond_dim = dit_config.cond_dim
        enc_dim, n_tokens = getattr(brain_encoder, "cond_dim", None), getattr(brain_encoder, "n_tokens", None)
        if enc_dim != cond_dim or not isinstance(n_tokens, int):
            raise CortexflowInputError(
                f"the brain encoder gives {enc_dim}-d embeddings but the DiT expects cond_dim={cond_dim}",
                fix="build the encoder with cond_dim equal to DiTConfig.cond_dim (it must expose cond_dim and n_tokens)",
            )
        self.brain_encoder = brain_encoder
        # Frozen: the workflow pretrains the VAE and caches its latents, and the
        # flow is trained on them; its weights ride along so reconstruct() can decode.
        self.vae = vae.requires_grad_(False)
        self._latent_shape = tuple(int(s) for s in latent_shape)
        # Learned "no brain" condition for classifier-free guidance (the seed's names).
        self.uncond_global = nn.Parameter(torch.zeros(1, cond_dim))
        self.uncond_tokens = nn.Parameter(torch.zeros(1, n_tokens, cond_dim))
        if self.config.cond_drop_prob == 0:
            # Without condition dropout no loss reaches the null condition: frozen, so that it is
            # no trainable parameter without a gradient, which DistributedDataParallel refuses
            # ("Expected to have finished reduction"). It stays at its zero start either way.
            self.uncond_global.requires_grad_(False)
            self.uncond_tokens.requires_grad_(False)
        self.dit = DiffusionTransformer(dit_config)
        self.flow_matcher = RectifiedFlowMatcher(flow_config)
        stat_shape = (1, latent_shape[0], *([1] * (len(latent_shape) - 1)))
        self.register_buffer("latent_mean", torch.zeros(stat_shape))
        self.register_buffer("latent_std", torch.ones(stat_shape))

    @classmethod
    def _dit_config_for(
        cls, dit_config: DiTConfig, latent_shape: tuple[int, ...], prior_conditioning: bool
    ) -> DiTConfig:
        """The DiT's input/output channels and size follow from the latent (and the prior)."""
        channels = latent_shape[0]
        return replace(
            dit_config,
            in_channels=channels * (2 if prior_conditioning else 1),
            out_channels=channels,
            input_size=tuple(latent_shape[1:]),
        )

    @staticmethod
    def _check_arguments(vae: ConvVAE, length: object, name: str, unit: str, fix: str,
                         cond_drop_prob: float) -> int:
        """The subclasses' shared argument checks; the VAE's downsampling factor.

        ``length`` (``name``, in ``unit``) is the stimulus size the VAE downsamples;
        ``fix`` may name ``{factor}``.
        """
        factor = vae.downsample_factor
        if not isinstance(length, int) or length <= 0 or length % factor:
            raise CortexflowInputError(
                f"{name}={length!r}{unit} is not a positive multiple of the VAE's downsampling factor {factor}",
                fix=fix.format(factor=factor),
            )
        if not 0.0 <= cond_drop_prob < 1.0:
            raise CortexflowInputError(f"cond_drop_prob must be in [0, 1), got {cond_drop_prob}")
        return factor

    @classmethod
    def _common_config(cls, brain_encoder: nn.Module, n_voxels: int, n_brain_tokens: int,
                       flow_config: FlowConfig | None, prior_conditioning: bool, cond_drop_prob: float) -> dict:
        """The config fields every latent-flow decoder has, as built (the encoder's own sizes win)."""
        return {
            "n_voxels": int(getattr(brain_encoder, "n_voxels", n_voxels)),
            "flow": flow_config or FlowConfig(),
            "n_brain_tokens": int(getattr(brain_encoder, "n_tokens", n_brain_tokens)),
            "encoder": cls._encoder_spec(brain_encoder),
            "prior_conditioning": bool(prior_conditioning),
            "cond_drop_prob": float(cond_drop_prob),
        }

    @staticmethod
    def _encoder_spec(brain_encoder: nn.Module | None) -> dict | None:
        return None if brain_encoder is None else module_spec(brain_encoder)

    @staticmethod
    def _encoder_from(spec: dict | None, n_voxels: int, cond_dim: int, n_tokens: int) -> nn.Module:
        if spec is not None:
            return module_from_spec(spec)
        return BrainEncoder(n_voxels=n_voxels, cond_dim=cond_dim, n_tokens=n_tokens)

    # ── shapes and device ──

    @property
    def device(self) -> torch.device:
        """Where the model's parameters (and so its computations) are."""
        return self.latent_mean.device

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one raw VAE latent, (C, H, W) or (C, T)."""
        return self._latent_shape

    def set_latent_stats(self, latents: torch.Tensor) -> None:
        """Per-channel mean and std of the training latents (N, *latent_shape), used to normalise them."""
        z = self._check_latents(latents, "latents").detach()
        dims = [0, *range(2, z.ndim)]
        self.latent_mean.copy_(z.mean(dim=dims, keepdim=True))
        self.latent_std.copy_(z.std(dim=dims, keepdim=True).clamp(min=1e-6))
        log.info(
            "latent stats from %d latents: mean %s, std %s",
            z.shape[0],
            [round(v, 3) for v in self.latent_mean.flatten().tolist()],
            [round(v, 3) for v in self.latent_std.flatten().tolist()],
        )

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latent_mean) / self.latent_std

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latent_std + self.latent_mean

    def _check_latents(self, z: object, name: str, batch: int | None = None) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or tuple(z.shape[1:]) != self.latent_shape or not z.is_floating_point():
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise CortexflowInputError(
                f"{name} must be a float tensor (batch, {', '.join(map(str, self.latent_shape))}), got {got}",
                fix="pass latents of the VAE this model was built around (encode the stimuli with model.vae)",
            )
        if batch is not None and z.shape[0] != batch:
            raise CortexflowInputError(
                f"{name} has {z.shape[0]} rows but the brain data has {batch}",
                fix="give one brain trial per latent, in the same order",
            )
        return z

    # ── conditioning ──

    def encode_brain(self, brain_data: BrainData) -> tuple[torch.Tensor, torch.Tensor]:
        """(global (B, cond_dim), tokens (B, n_tokens, cond_dim)) from ``brain_data.voxels``
        (a tensor, or a dict of ROI tensors for an ROI encoder)."""
        if not isinstance(brain_data, BrainData):
            raise CortexflowInputError(
                f"expected a BrainData, got {type(brain_data).__name__}",
                fix="wrap the voxels: BrainData(voxels=fmri)",
            )
        if getattr(self.brain_encoder, "takes_subject", False):  # per-subject adapters (models/cross_subject.py)
            return self.brain_encoder(brain_data.voxels, brain_data.subject_idx)
        return self.brain_encoder(brain_data.encoder_input(self.brain_encoder))

    def _prior(self, brain_data: BrainData, batch: int) -> torch.Tensor | None:
        prior = brain_data.prior
        if not self.config.prior_conditioning:
            if prior is not None:
                raise CortexflowInputError(
                    "BrainData.prior was given but the model was built without prior_conditioning",
                    fix="drop the prior, or build the model with prior_conditioning=True and retrain",
                )
            return None
        if prior is None:
            raise CortexflowInputError(
                "the model was built with prior_conditioning=True but BrainData.prior is None",
                fix=f"pass a prior (e.g. the ridge prediction of the latent), shape (batch, {self.latent_shape})",
            )
        return self.normalize_latents(self._check_latents(prior, "BrainData.prior", batch))

    # ── training ──

    def training_loss_latents(
        self,
        latents: torch.Tensor,
        brain_data: BrainData,
        cfg_dropout: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Flow-matching loss on raw VAE latents (B, *latent_shape).

        In training mode each row's condition is replaced by the learned null
        embedding (and its prior by zeros) with probability ``cfg_dropout``
        (default ``config.cond_drop_prob``), which trains the unconditional
        velocity that guidance needs (Ho & Salimans 2022). A model built with
        ``cond_drop_prob=0`` has its null embedding frozen (at zero): a
        ``cfg_dropout`` given here then drops rows to it but does not train it.
        """
        batch = brain_data.batch_size if isinstance(brain_data, BrainData) else None
        z = self.normalize_latents(self._check_latents(latents, "latents", batch))
        brain_global, brain_tokens = self.encode_brain(brain_data)
        prior = self._prior(brain_data, z.shape[0])
        p = self.config.cond_drop_prob if cfg_dropout is None else float(cfg_dropout)
        if self.training and p > 0:
            drop = random_tensor(torch.rand, (z.shape[0],), generator, z.device) < p
            brain_global = torch.where(drop[:, None], self.uncond_global.to(brain_global.dtype), brain_global)
            brain_tokens = torch.where(drop[:, None, None], self.uncond_tokens.to(brain_tokens.dtype), brain_tokens)
            if prior is not None:
                prior = prior.masked_fill(drop.view(-1, *([1] * (prior.ndim - 1))), 0.0)
        return self.flow_matcher.compute_loss(self.dit, z, brain_global, brain_tokens, prior=prior, generator=generator)

    def encode_stimulus(self, stimulus: torch.Tensor) -> torch.Tensor:
        """Stimulus -> raw latent (the VAE posterior mean, no sampling noise), on the model's device."""
        with torch.no_grad():
            _, mu, _ = self.vae.encode(stimulus.to(self.device))
        return mu

    def training_loss(
        self, stimulus: torch.Tensor, brain_data: BrainData, cfg_dropout: float | None = None
    ) -> torch.Tensor:
        """Seed-compatible loss on stimuli: encode with the frozen VAE, then :meth:`training_loss_latents`."""
        return self.training_loss_latents(self.encode_stimulus(stimulus), brain_data, cfg_dropout)

    # ── sampling ──

    def sample_latents(
        self,
        brain_data: BrainData,
        num_steps: int = FlowConfig.num_steps,
        cfg_scale: float = FlowConfig.cfg_scale,
        solver: str = FlowConfig.solver,
        shift: float = FlowConfig.shift,
        generator: torch.Generator | None = None,
        num_samples: int = 1,
        progress: bool = False,
        precision: str | None = None,
        noise: torch.Tensor | None = None,
        brain_noise: float = 0.0,
    ) -> torch.Tensor:
        """Raw latents (B, *latent_shape), or (B, num_samples, *latent_shape) when
        ``num_samples > 1``, on the CPU; every sample starts from its own noise,
        drawn from ``generator`` or given as ``noise`` (B, num_samples, *latent_shape)
        (see :func:`cortexflow.models.inference.trial_noise`). ``precision``:
        ``"auto"`` / ``"fp32"`` / ``"bf16"`` for the DiT's forward passes
        (default: the flow config's, ``"auto"``; see :func:`~cortexflow.models.flow.sampling_dtype`).
        ``brain_noise`` as in :meth:`reconstruct`. Inputs may be on any device; the
        model samples on its own."""
        z, _ = self._sample(brain_data, num_steps, cfg_scale, solver, shift, generator, num_samples, progress,
                            precision, noise, brain_noise)
        return z.cpu()

    def _sample(
        self,
        brain_data: BrainData,
        num_steps: int,
        cfg_scale: float,
        solver: str,
        shift: float,
        generator: torch.Generator | None,
        num_samples: int,
        progress: bool,
        precision: str | None = None,
        noise: torch.Tensor | None = None,
        brain_noise: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents, brain_global) on the model's device."""
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise CortexflowInputError(f"num_samples must be a positive integer, got {num_samples!r}")
        if not isinstance(brain_data, BrainData):
            raise CortexflowInputError(
                f"expected a BrainData, got {type(brain_data).__name__}",
                fix="wrap the voxels: BrainData(voxels=fmri)",
            )
        brain_data = brain_data.to(self.device)
        if noise is not None:
            expected = (brain_data.batch_size, num_samples, *self.latent_shape)
            if tuple(noise.shape) not in (expected, (expected[0] * num_samples, *expected[2:])):
                raise CortexflowInputError(
                    f"noise has shape {tuple(noise.shape)}, expected {expected}",
                    fix="give num_samples noise tensors per brain trial (cortexflow.models.inference.trial_noise)",
                )
            noise = noise.reshape(-1, *self.latent_shape).to(self.device, torch.float32)
        brain_noise = check_brain_noise(brain_noise)
        with torch.inference_mode(), _eval_mode(self):
            brain_global, brain_tokens = self.encode_brain(brain_data)
            batch = brain_global.shape[0]
            prior = self._prior(brain_data, batch)
            cond_global, cond_tokens = brain_global, brain_tokens
            if num_samples > 1:
                cond_global = brain_global.repeat_interleave(num_samples, dim=0)
                cond_tokens = brain_tokens.repeat_interleave(num_samples, dim=0)
                prior = None if prior is None else prior.repeat_interleave(num_samples, dim=0)
            if brain_noise > 0:
                cond_global = perturb_condition(cond_global, brain_noise, generator)
                cond_tokens = perturb_condition(cond_tokens, brain_noise, generator)
            z = self.flow_matcher.sample(
                self.dit,
                (batch * num_samples, *self.latent_shape),
                cond_global,
                cond_tokens,
                num_steps=num_steps,
                cfg_scale=cfg_scale,
                brain_global_uncond=self.uncond_global,
                brain_tokens_uncond=self.uncond_tokens,
                prior=prior,
                solver=solver,
                shift=shift,
                generator=generator,
                noise=noise,
                progress=progress,
                precision=precision,
            )
            z = self.denormalize_latents(z)
        # clone: ordinary tensors, usable outside inference mode
        z = z.clone() if num_samples == 1 else z.view(batch, num_samples, *self.latent_shape).clone()
        return z, brain_global.clone()

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw latents -> stimuli; each modality defines it."""
        raise NotImplementedError(f"{type(self).__name__} must define decode_latents")

    def reconstruct(
        self,
        brain_data: BrainData,
        num_steps: int = FlowConfig.num_steps,
        cfg_scale: float = FlowConfig.cfg_scale,
        num_samples: int = 1,
        brain_noise: float = 0.0,
        *,
        solver: str = FlowConfig.solver,
        shift: float = FlowConfig.shift,
        generator: torch.Generator | None = None,
        progress: bool = False,
        precision: str | None = None,
        noise: torch.Tensor | None = None,
    ) -> ReconstructionResult:
        """Sample latents for ``brain_data`` and decode them.

        The seed library's positional order (``brain_data, num_steps,
        cfg_scale, num_samples, brain_noise``); the rest is keyword-only.
        ``output`` is (B, *stimulus_shape), or (B, num_samples, *stimulus_shape)
        when ``num_samples > 1``. ``brain_noise`` > 0 adds Gaussian noise to each
        sample's brain embedding and tokens, scaled by ``brain_noise`` times the
        vector's norm (the seed's rule), so samples explore different readings
        of the brain signal; the null condition of guidance is not perturbed.
        ``precision`` and ``noise`` as in :meth:`sample_latents`.
        Inputs may be on any device; sampling and decoding run on the model's,
        and ``output`` and ``brain_global`` come back on the CPU. For many trials use
        :func:`cortexflow.models.inference.reconstruct_in_batches`, which bounds memory.
        """
        z, brain_global = self._sample(brain_data, num_steps, cfg_scale, solver, shift, generator, num_samples, progress,
                                       precision, noise, brain_noise)
        with torch.inference_mode(), _eval_mode(self):
            out = self.decode_latents(z.reshape(-1, *self.latent_shape))
        out = out.cpu().clone()
        if num_samples > 1:
            out = out.view(z.shape[0], num_samples, *out.shape[1:])
        return ReconstructionResult(
            output=out,
            modality=self.modality,
            brain_global=brain_global.cpu(),
            metadata={
                "num_steps": num_steps,
                "cfg_scale": cfg_scale,
                "solver": solver,
                "shift": shift,
                "num_samples": num_samples,
                "brain_noise": float(brain_noise),
                "precision": self.flow_matcher.config.precision if precision is None else precision,
            },
        )
