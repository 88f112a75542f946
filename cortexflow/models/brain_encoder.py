"""Brain encoders: fMRI voxels -> a global embedding and a sequence of tokens.

The decoders condition on brain activity in two ways (Peebles & Xie 2022,
arXiv:2212.09748; Esser et al. 2024, arXiv:2403.03206): a *global* vector that
modulates every block through adaLN, and a short sequence of *tokens* that the
blocks cross-attend to. Every encoder here returns that pair,
``(global (B, cond_dim), tokens (B, n_tokens, cond_dim))``.

fMRI gives a few thousand trials of many thousand noisy voxels, so the encoder
is deliberately a well-regularised projector rather than a deep network: a
per-trial LayerNorm over voxels (removes the trial's global signal and scale,
which is mostly noise after a single-trial GLM), dropout on voxels and hidden
units, one wide linear map, and a small residual MLP (as in MindEye, Scotti et
al. 2023, whose "residual MLP backbone" on flattened voxels is the standard
fMRI projector). The linear path is kept intact by the residual connections,
so the encoder can never do worse than a (regularised) linear read-out, which
is what ridge regression shows works on this kind of data.

``ROIBrainEncoder`` gives each region its own projector and its own group of
tokens, so cross-attention can choose which region to read from;
``SubjectAdapter`` adds a zero-initialised low-rank per-subject correction
(LoRA-style, Hu et al. 2021, arXiv:2106.09685) on the shared embedding.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from cortexflow.errors import CortexflowInputError

log = logging.getLogger("cortexflow.models.brain_encoder")

__all__ = [
    "BrainEncoder",
    "BrainEncoderConfig",
    "ROIBrainEncoder",
    "ROIBrainEncoderConfig",
    "SubjectAdapter",
    "SubjectAdapterConfig",
    "check_voxels",
]


def check_voxels(voxels: object, n_voxels: int, *, name: str = "voxels") -> torch.Tensor:
    """Return ``voxels`` if it is a floating (batch, n_voxels) tensor, else raise.

    Raises ``CortexflowInputError`` saying what was passed and how to fix it;
    shared by every encoder so that the messages agree.
    """
    if not isinstance(voxels, torch.Tensor):
        raise CortexflowInputError(
            f"{name} must be a torch.Tensor of shape (batch, {n_voxels}), got {type(voxels).__name__}",
            fix="convert with torch.as_tensor(x, dtype=torch.float32)",
        )
    if voxels.ndim != 2:
        fix = (
            f"add a batch dimension ({name}.unsqueeze(0))"
            if voxels.ndim == 1
            else f"reshape to (batch, {n_voxels}); one row per trial, one column per voxel"
        )
        raise CortexflowInputError(
            f"{name} must have 2 dimensions (batch, {n_voxels}), got shape {tuple(voxels.shape)}", fix=fix
        )
    if voxels.shape[1] != n_voxels:
        raise CortexflowInputError(
            f"{name} has {voxels.shape[1]} voxels but the encoder was built for {n_voxels}",
            fix="select the same voxels (same ROI mask and voxel order) the model was trained on, "
            f"or build the model with n_voxels={voxels.shape[1]}",
        )
    if not voxels.is_floating_point():
        raise CortexflowInputError(
            f"{name} must be floating point, got dtype {voxels.dtype}", fix=f"pass {name}.float()"
        )
    return voxels


class ResidualMLPBlock(nn.Module):
    """Pre-norm residual MLP block, ``x + W2 drop(GELU(W1 LN(x)))``.

    ``W2`` starts at zero so a fresh block is the identity and the encoder
    starts as a regularised linear read-out that the blocks refine.
    """

    def __init__(self, dim: int, dropout: float, expansion: int = 2):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, expansion * dim)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(expansion * dim, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.drop(self.act(self.fc1(self.norm(x)))))


class _VoxelProjector(nn.Module):
    """LayerNorm over voxels -> voxel dropout -> linear -> residual MLP blocks."""

    def __init__(self, n_in: int, hidden: int, n_blocks: int, dropout: float, input_dropout: float, input_norm: bool):
        super().__init__()
        # No affine: with 10^4 voxels a per-voxel gain would double the first
        # layer's parameters for nothing the linear map cannot already do.
        self.input_norm = nn.LayerNorm(n_in, elementwise_affine=False) if input_norm else nn.Identity()
        self.input_drop = nn.Dropout(input_dropout)
        self.proj = nn.Linear(n_in, hidden)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(ResidualMLPBlock(hidden, dropout) for _ in range(n_blocks)))
        self.out_norm = nn.LayerNorm(hidden)

    def forward(self, voxels: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.proj(self.input_drop(self.input_norm(voxels))))
        return self.out_norm(self.blocks(h))


class _TokenHead(nn.Module):
    """hidden (B, H) -> tokens (B, n_tokens, D): one linear map plus a learned
    position embedding per token, normalised so cross-attention keys start at
    a sensible scale whatever the voxel count."""

    def __init__(self, hidden: int, n_tokens: int, cond_dim: int):
        super().__init__()
        self.n_tokens, self.cond_dim = n_tokens, cond_dim
        self.proj = nn.Linear(hidden, n_tokens * cond_dim)
        self.pos_emb = nn.Parameter(torch.randn(n_tokens, cond_dim) * 0.02)
        self.norm = nn.LayerNorm(cond_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(h).view(h.shape[0], self.n_tokens, self.cond_dim)
        return self.norm(tokens + self.pos_emb)


class ConfiguredModule(nn.Module):
    """A module built from one config dataclass held as ``self.config``, whose fields are its
    constructor's keyword arguments; ``cond_dim`` is the width of what it gives the DiT."""

    config: Any

    @classmethod
    def from_config(cls, config: Any) -> "ConfiguredModule":
        return cls(**_shallow_fields(config))

    @property
    def cond_dim(self) -> int:
        return self.config.cond_dim


@dataclass
class BrainEncoderConfig:
    """Hyper-parameters of :class:`BrainEncoder`.

    hidden_dim: width of the projector (default: ``cond_dim``).
    n_blocks: residual MLP blocks after the linear projection.
    dropout: dropout on hidden units; input_dropout: dropout on voxels.
    input_norm: LayerNorm each trial over voxels before projecting.
    """

    n_voxels: int
    cond_dim: int
    n_tokens: int = 16
    hidden_dim: int | None = None
    dropout: float = 0.1
    input_dropout: float = 0.0
    n_blocks: int = 1
    input_norm: bool = True

    def __post_init__(self) -> None:
        _check_positive(n_voxels=self.n_voxels, cond_dim=self.cond_dim, n_tokens=self.n_tokens)
        if self.hidden_dim is not None:
            _check_positive(hidden_dim=self.hidden_dim)
        if self.n_blocks < 0:
            raise CortexflowInputError(f"n_blocks must be >= 0, got {self.n_blocks}")
        _check_prob(dropout=self.dropout, input_dropout=self.input_dropout)


class BrainEncoder(ConfiguredModule):
    """fMRI voxels (B, n_voxels) -> (global (B, cond_dim), tokens (B, n_tokens, cond_dim)).

    >>> enc = BrainEncoder(n_voxels=1000, cond_dim=64)
    >>> g, t = enc(torch.randn(2, 1000))
    >>> g.shape, t.shape
    (torch.Size([2, 64]), torch.Size([2, 16, 64]))
    """

    def __init__(
        self,
        n_voxels: int,
        cond_dim: int,
        n_tokens: int = 16,
        hidden_dim: int | None = None,
        dropout: float = 0.1,
        input_dropout: float = 0.0,
        n_blocks: int = 1,
        input_norm: bool = True,
    ):
        super().__init__()
        self.config = BrainEncoderConfig(
            n_voxels, cond_dim, n_tokens, hidden_dim, dropout, input_dropout, n_blocks, input_norm
        )
        hidden = hidden_dim or cond_dim
        self.projector = _VoxelProjector(n_voxels, hidden, n_blocks, dropout, input_dropout, input_norm)
        self.global_head = nn.Linear(hidden, cond_dim)
        self.token_head = _TokenHead(hidden, n_tokens, cond_dim)

    @property
    def n_voxels(self) -> int:
        return self.config.n_voxels

    @property
    def n_tokens(self) -> int:
        return self.config.n_tokens

    def forward(self, voxels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.projector(check_voxels(voxels, self.config.n_voxels))
        return self.global_head(h), self.token_head(h)


@dataclass
class ROIBrainEncoderConfig:
    """Hyper-parameters of :class:`ROIBrainEncoder`.

    roi_sizes: ROI name -> voxel count, in the order tokens are laid out (and
        the order columns are split in when a flat tensor is passed).
    tokens_per_roi: tokens each ROI contributes to the token sequence, or a
        list with one count per ROI.
    hidden_dim: width of each ROI's projector (default: ``cond_dim``).
    """

    roi_sizes: dict[str, int]
    cond_dim: int
    tokens_per_roi: int | list[int] = 4
    hidden_dim: int | None = None
    dropout: float = 0.1
    input_dropout: float = 0.0
    n_blocks: int = 1
    input_norm: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.roi_sizes, Mapping) or not self.roi_sizes:
            raise CortexflowInputError(
                "roi_sizes must be a non-empty dict of ROI name -> voxel count",
                fix='pass e.g. roi_sizes={"V1": 2000, "V2": 1500}',
            )
        self.roi_sizes = {str(k): int(v) for k, v in self.roi_sizes.items()}
        _check_positive(**{f"roi_sizes[{k!r}]": v for k, v in self.roi_sizes.items()})
        _check_positive(cond_dim=self.cond_dim)
        if isinstance(self.tokens_per_roi, (list, tuple)):
            if len(self.tokens_per_roi) != len(self.roi_sizes):
                raise CortexflowInputError(
                    f"tokens_per_roi lists {len(self.tokens_per_roi)} counts for {len(self.roi_sizes)} ROIs",
                    fix="give one token count per ROI, or a single number for all",
                )
            self.tokens_per_roi = list(self.tokens_per_roi)
            _check_positive(**{f"tokens_per_roi[{i}]": k for i, k in enumerate(self.tokens_per_roi)})
        else:
            _check_positive(tokens_per_roi=self.tokens_per_roi)
        if self.hidden_dim is not None:
            _check_positive(hidden_dim=self.hidden_dim)
        if self.n_blocks < 0:
            raise CortexflowInputError(f"n_blocks must be >= 0, got {self.n_blocks}")
        _check_prob(dropout=self.dropout, input_dropout=self.input_dropout)

    @property
    def token_counts(self) -> list[int]:
        """Tokens of each ROI, in ``roi_sizes`` order."""
        k = self.tokens_per_roi
        return list(k) if isinstance(k, list) else [k] * len(self.roi_sizes)


def _seed_roi_tokens(roi_sizes: Mapping[str, int], n_tokens: int) -> int | list[int]:
    """The seed's ``n_tokens`` (tokens in all) as per-ROI counts: split evenly,
    the first ROIs taking one more when it does not divide."""
    n_rois = len(roi_sizes) if isinstance(roi_sizes, Mapping) else 0
    if not isinstance(n_tokens, int) or n_rois == 0 or n_tokens < n_rois:
        raise CortexflowInputError(
            f"n_tokens={n_tokens!r} cannot give each of the {n_rois} ROIs its own token group",
            fix=f"use n_tokens >= {max(n_rois, 1)} (or tokens_per_roi)",
        )
    base, extra = divmod(n_tokens, n_rois)
    if not extra:
        return base
    counts = [base + (i < extra) for i in range(n_rois)]
    log.info("ROIBrainEncoder: %d tokens over %d ROIs -> %s per ROI", n_tokens, n_rois, counts)
    return counts


class ROIBrainEncoder(ConfiguredModule):
    """One projector and one token group per ROI, plus a global embedding.

    ``forward`` takes a dict ROI name -> (B, n_roi_voxels) (exactly the ROIs of
    ``roi_sizes``) or a flat (B, sum of sizes) tensor whose columns are the
    ROIs concatenated in ``roi_sizes`` order. It returns
    ``(global (B, cond_dim), tokens (B, n_rois * tokens_per_roi, cond_dim))``;
    tokens ``[i * tokens_per_roi, (i + 1) * tokens_per_roi)`` come from ROI ``i``
    only and carry a learned ROI embedding. The global embedding is a linear
    map of all ROI features together.

    The seed's keywords also work: ``n_tokens`` (tokens in all, split over the
    ROIs, the first ones taking one more when it does not divide) instead of
    ``tokens_per_roi``, and ``per_roi_dim`` for ``hidden_dim``.
    """

    def __init__(
        self,
        roi_sizes: dict[str, int],
        cond_dim: int,
        tokens_per_roi: int = 4,
        hidden_dim: int | None = None,
        dropout: float = 0.1,
        input_dropout: float = 0.0,
        n_blocks: int = 1,
        input_norm: bool = True,
        *,
        n_tokens: int | None = None,
        per_roi_dim: int | None = None,
    ):
        super().__init__()
        if n_tokens is not None:
            tokens_per_roi = _seed_roi_tokens(roi_sizes, n_tokens)
        if per_roi_dim is not None:
            if hidden_dim is not None and hidden_dim != per_roi_dim:
                raise CortexflowInputError(
                    f"per_roi_dim={per_roi_dim} (the seed's name) and hidden_dim={hidden_dim} disagree",
                    fix="give only hidden_dim",
                )
            hidden_dim = per_roi_dim
        self.config = ROIBrainEncoderConfig(
            dict(roi_sizes), cond_dim, tokens_per_roi, hidden_dim, dropout, input_dropout, n_blocks, input_norm
        )
        hidden = hidden_dim or cond_dim
        sizes = self.config.roi_sizes
        # A ModuleList (not ModuleDict) so that any ROI name, dots included, works.
        self.projectors = nn.ModuleList(
            _VoxelProjector(n, hidden, n_blocks, dropout, input_dropout, input_norm) for n in sizes.values()
        )
        self.token_heads = nn.ModuleList(_TokenHead(hidden, k, cond_dim) for k in self.config.token_counts)
        self.roi_embedding = nn.Parameter(torch.randn(len(sizes), 1, cond_dim) * 0.02)
        self.global_head = nn.Linear(hidden * len(sizes), cond_dim)

    @property
    def roi_names(self) -> list[str]:
        return list(self.config.roi_sizes)

    @property
    def n_voxels(self) -> int:
        return sum(self.config.roi_sizes.values())

    @property
    def n_tokens(self) -> int:
        return sum(self.config.token_counts)

    def split(self, voxels: torch.Tensor | Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """Validate the input and return one (B, n_roi) tensor per ROI, in order."""
        sizes = self.config.roi_sizes
        if isinstance(voxels, torch.Tensor):
            flat = check_voxels(voxels, self.n_voxels)
            return list(torch.split(flat, list(sizes.values()), dim=1))
        if not isinstance(voxels, Mapping):
            raise CortexflowInputError(
                f"ROIBrainEncoder takes a dict ROI name -> tensor, got {type(voxels).__name__}",
                fix=f"pass {{name: (batch, n) tensor}} for the ROIs {self.roi_names}",
            )
        missing = [k for k in sizes if k not in voxels]
        extra = [k for k in voxels if k not in sizes]
        if missing or extra:
            raise CortexflowInputError(
                f"ROI inputs do not match the encoder: missing {missing}, unexpected {extra}",
                fix=f"pass exactly the ROIs the encoder was built with: {self.roi_names}",
            )
        parts = [check_voxels(voxels[k], n, name=f"voxels[{k!r}]") for k, n in sizes.items()]
        batch = {p.shape[0] for p in parts}
        if len(batch) != 1:
            raise CortexflowInputError(
                f"ROI inputs have different batch sizes {sorted(batch)}",
                fix="give every ROI one row per trial, the same trials in the same order",
            )
        return parts

    def forward(self, voxels: torch.Tensor | Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = [proj(x) for proj, x in zip(self.projectors, self.split(voxels))]
        tokens = torch.cat(
            [head(h) + emb for head, h, emb in zip(self.token_heads, hidden, self.roi_embedding)], dim=1
        )
        return self.global_head(torch.cat(hidden, dim=-1)), tokens


@dataclass
class SubjectAdapterConfig:
    cond_dim: int
    rank: int = 16
    n_subjects: int = 8

    def __post_init__(self) -> None:
        _check_positive(cond_dim=self.cond_dim, rank=self.rank, n_subjects=self.n_subjects)


class SubjectAdapter(ConfiguredModule):
    """Per-subject low-rank residual correction of a shared brain embedding.

    ``x + (x A_s) B_s`` with ``A_s`` (cond_dim, rank) and ``B_s`` (rank, cond_dim)
    for subject ``s`` -- the LoRA parameterisation (Hu et al. 2021): ``B`` starts
    at zero, so an untrained adapter is exactly the identity and a new subject
    starts from the shared model. Works on a global embedding (B, D) or on
    tokens (B, T, D).
    """

    def __init__(self, cond_dim: int, rank: int = 16, n_subjects: int = 8):
        super().__init__()
        self.config = SubjectAdapterConfig(cond_dim, rank, n_subjects)
        self.down = nn.Parameter(torch.empty(n_subjects, cond_dim, rank))
        self.up = nn.Parameter(torch.zeros(n_subjects, rank, cond_dim))
        # Kaiming-uniform as nn.Linear, per subject.
        bound = 1.0 / math.sqrt(cond_dim)
        nn.init.uniform_(self.down, -bound, bound)

    def forward(self, brain_global: torch.Tensor, subject_idx: torch.Tensor | int) -> torch.Tensor:
        cfg = self.config
        is_tensor = isinstance(brain_global, torch.Tensor)
        if not is_tensor or brain_global.ndim not in (2, 3) or brain_global.shape[-1] != cfg.cond_dim:
            shape = tuple(brain_global.shape) if is_tensor else type(brain_global).__name__
            raise CortexflowInputError(
                f"SubjectAdapter takes (batch, {cfg.cond_dim}) or (batch, tokens, {cfg.cond_dim}), got {shape}",
                fix="pass the brain encoder's output; build the adapter with cond_dim equal to the encoder's",
            )
        batch = brain_global.shape[0]
        idx = torch.as_tensor(subject_idx, device=brain_global.device)
        if idx.dtype.is_floating_point or idx.dtype == torch.bool:
            raise CortexflowInputError(
                f"subject_idx must hold integers, got dtype {idx.dtype}", fix="pass a LongTensor"
            )
        idx = idx.long().reshape(-1)
        if idx.numel() == 1:
            idx = idx.expand(batch)
        if idx.numel() != batch:
            raise CortexflowInputError(
                f"subject_idx has {idx.numel()} entries for a batch of {batch}",
                fix="pass one subject index per row, or a single index for the whole batch",
            )
        if bool(((idx < 0) | (idx >= cfg.n_subjects)).any()):
            raise CortexflowInputError(
                f"subject_idx must be in [0, {cfg.n_subjects}), got {sorted(set(idx.tolist()))}",
                fix=f"build the adapter with n_subjects > {int(idx.max())}",
            )
        down = self.down[idx].to(brain_global.dtype)  # (B, D, r)
        up = self.up[idx].to(brain_global.dtype)  # (B, r, D)
        x = brain_global if brain_global.ndim == 3 else brain_global.unsqueeze(1)
        out = x + (x @ down) @ up
        return out if brain_global.ndim == 3 else out.squeeze(1)


def _shallow_fields(config: object) -> dict:
    """The dataclass's fields as constructor keyword arguments (not recursed,
    unlike ``dataclasses.asdict``, so nested config objects stay objects)."""
    from dataclasses import fields

    return {f.name: getattr(config, f.name) for f in fields(config)}


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise CortexflowInputError(f"{name} must be a positive integer, got {value!r}")


def _check_prob(**values: float) -> None:
    for name, value in values.items():
        if not 0.0 <= float(value) < 1.0:
            raise CortexflowInputError(f"{name} must be in [0, 1), got {value!r}")
