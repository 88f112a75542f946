"""Parameters of the model stages: the config's ``vae``, ``decoder`` and
``sampling`` sections, one sub-section per modality, as dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from cortexflow.data.stimulus_arrays import AudioFeatures
from cortexflow.errors import CortexflowInputError

CONTINUOUS = ("image", "audio")


def _from_dict(cls, values: dict | None, section: str):
    """Dataclass ``cls`` from a config sub-section, naming unknown keys."""
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CortexflowInputError(f"unknown key(s) {unknown} in the config section {section}",
                                   fix=f"use only {sorted(known)}")
    return cls(**values)


@dataclass
class VAEParams:
    """Config ``vae.<modality>``: the autoencoder and how long to train it."""

    latent_channels: int = 4
    hidden_dims: list[int] = field(default_factory=lambda: [32, 64])
    kl_weight: float = 1e-4
    steps: int = 500
    batch_size: int = 64
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    augment_flips: bool = True
    audio: AudioFeatures = field(default_factory=AudioFeatures)


@dataclass
class DecoderParams:
    """Config ``decoder.<modality>``: the brain decoder, its training and sampling."""

    hidden_dim: int = 128
    depth: int = 4
    num_heads: int = 4
    patch_size: int = 2
    n_tokens: int = 8
    # brain encoder: "global" (one projector of all voxels, n_tokens tokens) or "roi"
    # (one projector of roi_hidden_dim units and tokens_per_roi tokens per region)
    encoder: str = "global"
    tokens_per_roi: int = 1
    roi_hidden_dim: int = 32
    encoder_dropout: float = 0.3
    encoder_input_dropout: float = 0.1
    prior_conditioning: bool = True
    cond_drop_prob: float = 0.1
    steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 200
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    # text
    max_len: int = 64
    # which training trials to fit on: "all" (final model) or "train" (the fit fold,
    # leaving the val fold for design decisions)
    fit_on: str = "all"


@dataclass
class SamplingParams:
    """Config ``sampling.<modality>``: how rule ``sample`` draws reconstructions
    from a trained decoder. Kept apart from ``decoder`` so that editing these
    reruns sampling and evaluation, not training."""

    # DiT + rectified flow (image, audio)
    num_steps: int = 25
    solver: str = "euler"
    cfg_scale: float = 2.0
    shift: float = 1.0
    n_samples: int = 8  # samples per test trial: "dit" is the first, "dit_mean<n>" their mean
    precision: str = "auto"  # auto | fp32 | bf16 (cortexflow.models.flow.sampling_dtype)
    # autoregressive text
    temperature: float = 0.0  # 0: greedy decoding
    top_k: int = 0
    top_p: float = 1.0


_MOVED_TO_SAMPLING = {f.name for f in fields(SamplingParams)}


def modality_params(params: dict, modality: str, cls, section: str):
    """The dataclass ``cls`` of one modality's sub-section of config section ``section``."""
    if modality not in params:
        raise CortexflowInputError(f"the config section {section} has no entry for modality {modality!r}",
                                   fix=f"add {section}: {{{modality}: {{...}}}} (an empty mapping takes the defaults)")
    sub = dict(params[modality] or {})
    moved = sorted(set(sub) & _MOVED_TO_SAMPLING) if cls is DecoderParams else []
    if moved:
        raise CortexflowInputError(f"{moved} in the config section {section}.{modality} are sampling settings",
                                   fix=f"move them to sampling: {{{modality}: {{...}}}} (so that editing them "
                                       "reruns sampling, not training)")
    if cls is VAEParams and "audio" in sub:
        sub["audio"] = _from_dict(AudioFeatures, sub["audio"], f"{section}.{modality}.audio")
    return _from_dict(cls, sub, f"{section}.{modality}")


def resolve_device(device: str) -> torch.device:
    """``device`` as a torch device (``auto``: CUDA when available); CUDA asked for without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CortexflowInputError(f"device {device!r} was asked for but CUDA is not available",
                                   fix="set device: cpu (or auto) in the config, or run on a GPU node")
    return torch.device(device)

