"""Parameters of the model stages: the config's ``vae``, ``decoder``, ``sampling``
and ``cross_subject`` sections, as dataclasses.

They live below the stages (``cortexflow.stages`` imports them, and so do
:mod:`cortexflow.sections`' registry and the summary's sampling legend), so that
no lower layer has to import a stage module to read a config section.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Literal

from cortexflow.data.stimulus_arrays import AudioFeatures
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

    @classmethod
    def from_params(cls, values: Mapping | None, key: str = "decoder") -> "DecoderParams":
        """From config ``decoder.<modality>`` (at config key ``key``), refusing the keys that moved to ``sampling``."""
        moved = sorted(set(values) & _MOVED_TO_SAMPLING) if isinstance(values, Mapping) else []
        if moved:
            raise CortexflowInputError(f"{moved} in the config section {key} are sampling settings",
                                       fix=f"move them to sampling: {{{key.rpartition('.')[2]}: {{...}}}} (so that "
                                           "editing them reruns sampling, not training)")
        return from_mapping(cls, values, key)


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


# the SamplingParams keys that once lived in decoder.<modality> (batch_size is in both)
_MOVED_TO_SAMPLING = {f.name for f in fields(SamplingParams)} - {"batch_size"}


@dataclass
class CrossSubjectParams:
    """Config ``cross_subject``: the held-out subjects, the trial budgets and the
    model and training settings of both arms."""

    modality: str = "image"
    held_out: list[str] = field(default_factory=list)  # empty: every subject in turn
    runs: list[int] = field(default_factory=lambda: [1, 2, 5, 10])
    shared_dim: int = 128
    # DecoderParams of both arms (prior_conditioning is off)
    decoder: dict = field(default_factory=lambda: {"hidden_dim": 64, "depth": 2, "num_heads": 4})
    shared_steps: int = 600
    finetune_steps: int = 150  # both arms, at every budget
    adapter_steps: int = 30  # fine-tuning first trains the new adapter alone (LP-FT, Kumar et al. 2022)
    finetune_trainable: str = "all"  # after the adapter steps: "all" or "adapter"
    sampling: dict = field(default_factory=lambda: {"num_steps": 20, "n_samples": 2})
    n_boot: int = 1000

    @classmethod
    def from_params(cls, params: dict | None, source: str | None = None) -> "CrossSubjectParams":
        p = from_mapping(cls, params, "cross_subject")
        if p.modality not in ("image", "audio"):
            raise CortexflowInputError(f"cross_subject.modality must be image or audio, got {p.modality!r}")
        if not p.runs or any(int(k) < 1 for k in p.runs):
            raise CortexflowInputError(f"cross_subject.runs must list positive run counts, got {p.runs}")
        if p.finetune_trainable not in ("all", "adapter"):
            raise CortexflowInputError(f"cross_subject.finetune_trainable must be all or adapter, "
                                       f"got {p.finetune_trainable!r}")
        if not 0 <= p.adapter_steps <= p.finetune_steps:
            raise CortexflowInputError("cross_subject.adapter_steps must lie in [0, finetune_steps]")
        if p.shared_steps < 1 or p.finetune_steps < 1:
            raise CortexflowInputError("cross_subject.shared_steps and finetune_steps must be >= 1")
        return p

    def decoder_params(self, steps: int) -> DecoderParams:
        d = from_mapping(DecoderParams, {**self.decoder, "steps": steps}, "cross_subject.decoder")
        d.prior_conditioning = False
        return d

    def sampling_params(self) -> SamplingParams:
        return from_mapping(SamplingParams, self.sampling, "cross_subject.sampling")
