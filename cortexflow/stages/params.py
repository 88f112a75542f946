"""Parameters of the model stages: the config's ``vae``, ``decoder`` and
``sampling`` sections, one sub-section per modality, as dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from cortexflow.data.stimulus_arrays import AudioFeatures
from cortexflow.devices import resolve_device  # noqa: F401  (the stages' import of it)
from cortexflow.errors import CortexflowInputError
from cortexflow.sections import from_mapping

CONTINUOUS = ("image", "audio")


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
    grad_accum_steps: int = 1  # micro-batches per step: batch_size / grad_accum_steps rows in memory at once
    compile: bool = False  # torch.compile the training loss (pays off on long GPU runs only)
    # text
    max_len: int = 64
    # which training trials to fit on: "all" (final model) or "train" (the fit fold,
    # leaving the val fold for design decisions)
    fit_on: Literal["all", "train"] = "all"
    # how many training runs (seeds config.seed + 0, 1, ...) the workflow trains and samples; the
    # summary's intervals resample them (default: TRAINING_SEEDS). Not read by the training stage.
    seeds: int | None = None


@dataclass
class SamplingParams:
    """Config ``sampling.<modality>``: how rule ``sample`` draws reconstructions
    from a trained decoder. Kept apart from ``decoder`` so that editing these
    reruns sampling and evaluation, not training.

    The one home of the workflow's sampling defaults (config.yaml and the
    schema do not restate them; the schema's are checked against these). The
    library's own defaults, for Python callers, are ``models.flow.FlowConfig``'s
    (the seed's: 50 steps, guidance 4)."""

    # DiT + rectified flow (image, audio)
    num_steps: int = 25
    solver: Literal["euler", "midpoint", "heun"] = "euler"
    cfg_scale: float = 2.0
    shift: float = 1.0
    n_samples: int = 8  # samples per test trial: "dit" is the first, "dit_mean<n>" their mean
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto | fp32 | bf16 (cortexflow.models.flow.sampling_dtype)
    # sd of the noise each sample starts from: 1 samples the learned distribution; below 1
    # ("temperature"), samples lie nearer its centre and differ less from each other
    noise_scale: float = 1.0
    # autoregressive text
    temperature: float = 0.0  # 0: greedy decoding
    top_k: int = 0
    top_p: float = 1.0
    # test trials per forward pass (bounds memory; samples do not depend on it)
    batch_size: int = 64

    def __post_init__(self) -> None:
        if not 0.0 <= self.noise_scale <= 10.0:
            raise CortexflowInputError(f"sampling noise_scale must be in [0, 10], got {self.noise_scale!r}",
                                       fix="use 1 (the learned distribution) or a value below 1 (nearer its centre)")


# training seeds per modality when decoder.<modality>.seeds is not set: three image runs
# (the headline claims); one audio and text run to stay inside the 2-core budget
TRAINING_SEEDS = {"image": 3, "audio": 1, "text": 1}


def training_seeds(section: dict, modality: str) -> int:
    """How many training seeds config ``decoder.<modality>`` asks for."""
    value = (section.get(modality) or {}).get("seeds")
    n = TRAINING_SEEDS.get(modality, 1) if value is None else value
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise CortexflowInputError(f"decoder.{modality}.seeds must be a positive integer, got {value!r}",
                                   fix="set e.g. decoder: {image: {seeds: 3}}")
    return n


_MOVED_TO_SAMPLING = {f.name for f in fields(SamplingParams)} - {"batch_size"}


def modality_params(params: dict, modality: str, cls, section: str):
    """The dataclass ``cls`` of one modality's sub-section of config section ``section``."""
    if modality not in params:
        raise CortexflowInputError(f"the config section {section} has no entry for modality {modality!r}",
                                   fix=f"add {section}: {{{modality}: {{...}}}} (an empty mapping takes the defaults)")
    sub = params[modality] or {}
    moved = sorted(set(sub) & _MOVED_TO_SAMPLING) if cls is DecoderParams and isinstance(sub, dict) else []
    if moved:
        raise CortexflowInputError(f"{moved} in the config section {section}.{modality} are sampling settings",
                                   fix=f"move them to sampling: {{{modality}: {{...}}}} (so that editing them "
                                       "reruns sampling, not training)")
    return from_mapping(cls, sub, f"{section}.{modality}")
