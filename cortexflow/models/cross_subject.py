"""One decoder for many subjects: per-subject voxel adapters into a shared space.

Subjects differ in how many voxels they have and in what each voxel responds
to, so no weight that reads voxels can be shared. MindEye2 (Scotti et al. 2024,
arXiv:2403.17188, Sec. 2.1) therefore gives every subject its own linear map
from its voxels into a shared latent space, and trains everything after it --
there the residual MLP and diffusion prior, here the shared brain encoder and
the DiT -- on all subjects at once. A new subject then needs only its own map
learned from scratch; the rest starts from the shared model:

    voxels_s (B, n_s) --LN, dropout, W_s--> shared (B, shared_dim)
        --BrainEncoder--> (global (B, cond_dim), tokens (B, n_tokens, cond_dim)) --> DiT

:class:`CrossSubjectEncoder` is that front end; it takes the subject of every
row (``BrainData.subject_idx``), so a batch may mix subjects, their voxels
zero-padded to the widest subject. With one subject it needs no index and is a
drop-in encoder of an ordinary single-subject decoder. :func:`adapt_to_subject`
turns a shared decoder into a new subject's decoder (the shared weights
copied, a fresh adapter), and :func:`set_trainable` freezes what fine-tuning
must not move.

The seed's :class:`~cortexflow.models.brain_encoder.SubjectAdapter` is a
different idea: a low-rank correction of the *embedding* of voxels that all
subjects share, which needs the same voxels in every subject.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from cortexflow.errors import CortexflowInputError
from cortexflow.models.brain_encoder import BrainEncoder, ConfiguredModule, check_voxels
from cortexflow.models.io import module_spec

log = logging.getLogger("cortexflow.models.cross_subject")

__all__ = ["CrossSubjectEncoder", "CrossSubjectEncoderConfig", "adapt_to_subject", "set_trainable",
           "ADAPTER_PREFIX"]

# state-dict prefix of the per-subject maps inside a decoder (``model.brain_encoder``)
ADAPTER_PREFIX = "brain_encoder.adapters."


@dataclass
class CrossSubjectEncoderConfig:
    """Hyper-parameters of :class:`CrossSubjectEncoder`.

    subject_voxels: subject label -> voxel count, in adapter-index order
        (``BrainData.subject_idx`` counts in this order).
    shared_dim: width of the shared space the adapters map into.
    The rest configure the shared :class:`BrainEncoder` on that space
    (``input_dropout`` is dropout on each subject's voxels, before its adapter).
    """

    subject_voxels: dict[str, int]
    shared_dim: int
    cond_dim: int
    n_tokens: int = 8
    hidden_dim: int | None = None
    dropout: float = 0.1
    input_dropout: float = 0.0
    n_blocks: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.subject_voxels, dict) or not self.subject_voxels:
            raise CortexflowInputError("subject_voxels must map at least one subject label to its voxel count",
                                       fix="e.g. {'01': 1200, '02': 1180}")
        self.subject_voxels = {str(k): int(v) for k, v in self.subject_voxels.items()}
        bad = {k: v for k, v in self.subject_voxels.items() if v <= 0}
        if bad:
            raise CortexflowInputError(f"voxel counts must be positive, got {bad}")
        for name in ("shared_dim", "cond_dim", "n_tokens"):
            if int(getattr(self, name)) <= 0:
                raise CortexflowInputError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0.0 <= self.input_dropout < 1.0 or not 0.0 <= self.dropout < 1.0:
            raise CortexflowInputError(f"dropout and input_dropout must be in [0, 1), got "
                                       f"{self.dropout}, {self.input_dropout}")


class _SubjectMap(nn.Module):
    """One subject's voxels -> the shared space: per-trial LayerNorm over voxels
    (as the single-subject encoder), voxel dropout, one linear map."""

    def __init__(self, n_voxels: int, shared_dim: int, input_dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(n_voxels, elementwise_affine=False)
        self.drop = nn.Dropout(input_dropout)
        self.linear = nn.Linear(n_voxels, shared_dim)

    def forward(self, voxels: torch.Tensor) -> torch.Tensor:
        return self.linear(self.drop(self.norm(voxels)))


class CrossSubjectEncoder(ConfiguredModule):
    """Per-subject adapters, then one shared :class:`BrainEncoder`.

    ``forward(voxels, subject_idx)``: ``voxels`` (B, n) holds each row's
    subject's voxels in its first ``n_s`` columns (n = that subject's count,
    or the widest subject's when rows of several subjects are mixed);
    ``subject_idx`` (B,) or one int; ``None`` only when there is one subject.
    """

    takes_subject = True  # LatentFlowDecoder.encode_brain passes BrainData.subject_idx

    def __init__(self, subject_voxels: dict[str, int], shared_dim: int, cond_dim: int, n_tokens: int = 8,
                 hidden_dim: int | None = None, dropout: float = 0.1, input_dropout: float = 0.0, n_blocks: int = 1):
        super().__init__()
        self.config = CrossSubjectEncoderConfig(dict(subject_voxels), shared_dim, cond_dim, n_tokens, hidden_dim,
                                                dropout, input_dropout, n_blocks)
        c = self.config
        self.adapters = nn.ModuleList(_SubjectMap(n, c.shared_dim, c.input_dropout)
                                      for n in c.subject_voxels.values())
        # the adapters already normalised each subject's voxels; the shared
        # projector normalises the shared vector again (scales differ per subject)
        self.shared = BrainEncoder(n_voxels=c.shared_dim, cond_dim=c.cond_dim, n_tokens=c.n_tokens,
                                   hidden_dim=c.hidden_dim, dropout=c.dropout, input_dropout=0.0,
                                   n_blocks=c.n_blocks, input_norm=True)

    @property
    def subjects(self) -> list[str]:
        return list(self.config.subject_voxels)

    @property
    def n_voxels(self) -> int:
        """The widest subject's voxel count (the width of a mixed batch)."""
        return max(self.config.subject_voxels.values())

    @property
    def n_tokens(self) -> int:
        return self.config.n_tokens

    def subject_index(self, subject: str) -> int:
        if subject not in self.config.subject_voxels:
            raise CortexflowInputError(f"subject {subject!r} has no adapter in this encoder (it has {self.subjects})",
                                       fix="adapt the model to the subject first (adapt_to_subject)")
        return self.subjects.index(subject)

    def _indices(self, subject_idx: torch.Tensor | int | None, batch: int, device: torch.device) -> torch.Tensor:
        n_sub = len(self.adapters)
        if subject_idx is None:
            if n_sub != 1:
                raise CortexflowInputError(
                    f"this encoder has {n_sub} subjects {self.subjects} and the brain data names none",
                    fix="pass BrainData(..., subject_idx=...) with each row's subject index")
            return torch.zeros(batch, dtype=torch.long, device=device)
        idx = torch.as_tensor(subject_idx, device=device)
        if idx.dtype.is_floating_point or idx.dtype == torch.bool:
            raise CortexflowInputError(f"subject_idx must hold integers, got dtype {idx.dtype}", fix="pass a LongTensor")
        idx = idx.long().reshape(-1)
        if idx.numel() == 1:
            idx = idx.expand(batch)
        if idx.numel() != batch:
            raise CortexflowInputError(f"subject_idx has {idx.numel()} entries for a batch of {batch}",
                                       fix="pass one subject index per row, or one for the whole batch")
        if bool(((idx < 0) | (idx >= n_sub)).any()):
            raise CortexflowInputError(f"subject_idx must be in [0, {n_sub}) for subjects {self.subjects}, "
                                       f"got {sorted(set(idx.tolist()))}")
        return idx

    def embed(self, voxels: torch.Tensor, subject_idx: torch.Tensor | int | None = None) -> torch.Tensor:
        """The shared-space vectors (B, shared_dim) of each row's subject adapter."""
        if not isinstance(voxels, torch.Tensor) or voxels.ndim != 2:
            check_voxels(voxels, self.n_voxels)  # raises with the usual message
        idx = self._indices(subject_idx, voxels.shape[0], voxels.device)
        out = voxels.new_zeros(voxels.shape[0], self.config.shared_dim)
        for s in torch.unique(idx).tolist():
            n_s = self.adapters[s].linear.in_features
            if voxels.shape[1] < n_s:
                raise CortexflowInputError(
                    f"rows of subject {self.subjects[s]!r} need {n_s} voxels, got {voxels.shape[1]} columns",
                    fix="give each row its subject's voxels (same ROI voxels and order as in training), "
                        "zero-padded to the widest subject when subjects are mixed")
            rows = idx == s
            x = check_voxels(voxels[rows, :n_s], n_s)
            out = out.index_put((rows.nonzero(as_tuple=True)[0],), self.adapters[s](x))
        return out

    def forward(self, voxels: torch.Tensor, subject_idx: torch.Tensor | int | None = None):
        return self.shared(self.embed(voxels, subject_idx))


def adapt_to_subject(model: nn.Module, subject: str, n_voxels: int) -> nn.Module:
    """A copy of the flow decoder ``model`` (whose encoder is a :class:`CrossSubjectEncoder`)
    for one new subject: every shared weight copied, a freshly initialised adapter for
    ``subject``'s ``n_voxels`` voxels, and no other subject's adapter."""
    enc = getattr(model, "brain_encoder", None)
    if not isinstance(enc, CrossSubjectEncoder):
        raise CortexflowInputError(
            f"the model's brain encoder is {type(enc).__name__}, not a CrossSubjectEncoder",
            fix="start from a decoder trained by the cross-subject shared stage")
    new_enc = CrossSubjectEncoder.from_config(replace(enc.config, subject_voxels={str(subject): int(n_voxels)}))
    config = replace(model.config, encoder=module_spec(new_enc), n_voxels=new_enc.n_voxels)
    new = type(model).from_config(config)
    shared_state = {k: v for k, v in model.state_dict().items() if not k.startswith(ADAPTER_PREFIX)}
    missing, unexpected = new.load_state_dict(shared_state, strict=False)
    not_adapter = [k for k in missing if not k.startswith(ADAPTER_PREFIX)]
    if not_adapter or unexpected:  # the two models differ in more than the adapter: a bug, not bad input
        raise RuntimeError(f"adapt_to_subject: missing {not_adapter}, unexpected {unexpected}")
    log.info("adapted %s to subject %s (%d voxels): %d shared tensors copied, adapter fresh",
             type(model).__name__, subject, n_voxels, len(shared_state))
    return new


TRAINABLE = ("all", "adapter")


def set_trainable(model: nn.Module, which: str) -> list[str]:
    """Freeze all but ``which`` of a cross-subject decoder: ``"all"`` (everything
    but the frozen VAE) or ``"adapter"`` (the subject adapters only). Returns the
    names of the parameters left trainable."""
    if which not in TRAINABLE:
        raise CortexflowInputError(f"trainable must be one of {TRAINABLE}, got {which!r}")
    names = []
    # the null condition trains only with condition dropout (LatentFlowDecoder._build)
    frozen = ("vae.",) + (("uncond_",) if getattr(model.config, "cond_drop_prob", None) == 0 else ())
    for name, p in model.named_parameters():
        train = not name.startswith(frozen) and (which == "all" or name.startswith(ADAPTER_PREFIX))
        p.requires_grad_(train)
        if train:
            names.append(name)
    return names
