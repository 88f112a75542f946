"""Diffusion Transformer (DiT) that predicts the rectified-flow velocity of a latent.

One transformer serves 2-D latents (images, ``(B, C, H, W)``) and 1-D latents
(audio, ``(B, C, T)``): the latent is cut into non-overlapping patches of
``patch_size`` along every spatial axis and each patch becomes a token, so the
blocks never see how many axes there were.

A block follows DiT (Peebles & Xie 2022, arXiv:2212.09748, Fig. 3, "adaLN-Zero")
with the changes that SD3/FLUX and PixArt-alpha made standard:

    x = x + g1 * W_o Attn(QKNorm(W_qkv (LN(x) * (1 + s1) + b1)))    self-attention
    x = x + g2 * XAttn(LN(x) * (1 + s2) + b2, brain tokens)         cross-attention
    x = x + g3 * SwiGLU(LN(x) * (1 + s3) + b3)                      feed-forward

- (b, s, g) come from one linear map of ``SiLU(t_emb + brain_global)`` whose
  weights start at zero, so every block starts as the identity (adaLN-Zero).
- Q and K are layer-normalised per head after the projections (QK-Norm,
  Dehghani et al. 2023, arXiv:2302.05442, who use LayerNorm; SD3 Sec. 5.3.2
  uses RMSNorm, which on CPU is several unfused kernels instead of one), so
  the attention logits stay bounded whatever the activation scale.
- Attention is ``F.scaled_dot_product_attention`` on one fused Q/K/V projection.
- The feed-forward is SwiGLU (Shazeer 2020, arXiv:2002.05202) with hidden width
  ``2/3 * mlp_ratio * hidden_dim`` (rounded up to a multiple of 64), the LLaMA
  convention that gives it the parameters and FLOPs of a GELU MLP of ratio
  ``mlp_ratio``; ``mlp_hidden_dim`` overrides it.
- Cross-attention to the brain tokens (PixArt-alpha, arXiv:2310.00426) carries
  what one pooled vector cannot; its keys and values depend only on the brain
  tokens, so :meth:`DiffusionTransformer.prepare_condition` computes them once
  per sampling run instead of once per step.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from cortexflow.errors import CortexflowInputError

log = logging.getLogger("cortexflow.models.dit")

__all__ = ["DiTConfig", "DiTCondition", "DiffusionTransformer", "DiTBlock"]


@dataclass
class DiTConfig:
    """Hyper-parameters of :class:`DiffusionTransformer`.

    The first nine fields are the seed library's ``DiTConfig`` with its defaults.

    in_channels: channels of the transformer's input (latent channels, plus as
        many again when a prior is concatenated to the input).
    out_channels: channels of the predicted velocity (default: ``in_channels``).
    input_size: spatial shape of the latent, ``(H, W)`` or ``(T,)``; every entry
        must be divisible by ``patch_size``.
    mlp_hidden_dim: SwiGLU hidden width (default: 2/3 * mlp_ratio * hidden_dim,
        rounded up to a multiple of 64).
    """

    in_channels: int = 4
    hidden_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    patch_size: int = 2
    cond_dim: int = 768
    mlp_ratio: float = 4.0
    qk_norm: bool = True
    use_cross_attn: bool = True
    input_size: tuple[int, ...] = field(default=(32, 32))
    out_channels: int | None = None
    mlp_hidden_dim: int | None = None

    def __post_init__(self) -> None:
        self.input_size = tuple(int(s) for s in self.input_size)
        for name in ("in_channels", "hidden_dim", "depth", "num_heads", "patch_size", "cond_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise CortexflowInputError(f"DiTConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_dim % self.num_heads:
            raise CortexflowInputError(
                f"DiTConfig.hidden_dim={self.hidden_dim} is not divisible by num_heads={self.num_heads}",
                fix="choose hidden_dim as a multiple of num_heads (e.g. 256 with 8 heads)",
            )
        if len(self.input_size) not in (1, 2) or any(s <= 0 for s in self.input_size):
            raise CortexflowInputError(
                f"DiTConfig.input_size must be (H, W) or (T,) of positive sizes, got {self.input_size}"
            )
        if any(s % self.patch_size for s in self.input_size):
            raise CortexflowInputError(
                f"latent size {self.input_size} is not divisible by patch_size={self.patch_size}",
                fix="choose a patch_size that divides every latent axis, or change the latent size",
            )
        if self.mlp_ratio <= 0:
            raise CortexflowInputError(f"DiTConfig.mlp_ratio must be positive, got {self.mlp_ratio}")

    @property
    def latent_out_channels(self) -> int:
        return self.out_channels or self.in_channels

    @property
    def ffn_hidden_dim(self) -> int:
        if self.mlp_hidden_dim:
            return int(self.mlp_hidden_dim)
        return 64 * math.ceil(2 * self.mlp_ratio * self.hidden_dim / 3 / 64)

    @property
    def n_tokens(self) -> int:
        return math.prod(s // self.patch_size for s in self.input_size)


class DiTCondition(NamedTuple):
    """The parts of the conditioning that do not change along a sampling run.

    global_emb: (B, hidden_dim) projection of the brain's global embedding
        (the time embedding is added per step).
    context: per block, the cross-attention keys and values of the brain
        tokens, each (B, heads, n_brain_tokens, head_dim); ``None`` without
        cross-attention.
    """

    global_emb: torch.Tensor
    context: list[tuple[torch.Tensor, torch.Tensor]] | None


# ── building blocks ─────────────────────────────────────────────────────────


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    # No affine: adaLN supplies the scale and shift (DiT Sec. 3.2).
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale_plus_one: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale) + shift`` in one fused kernel; shift/scale are (B, 1, D)."""
    return torch.addcmul(shift, x, scale_plus_one)


class SwiGLU(nn.Module):
    """``W2 (SiLU(x W1) * x W3)`` (Shazeer 2020, Eq. 6), W1 and W3 fused in one matmul.

    The feed-forward of the DiT (no biases) and of the text decoder (biases,
    dropout on the output). Files written when the text decoder had its own
    copy (``gate_up``/``down``) load into ``w13``/``w2``.
    """

    _OLD_NAMES = (("gate_up.", "w13."), ("down.", "w2."))

    def __init__(self, dim: int, hidden_dim: int, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.w13 = nn.Linear(dim, 2 * hidden_dim, bias=bias)
        self.w2 = nn.Linear(hidden_dim, dim, bias=bias)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w13(x).chunk(2, dim=-1)
        return self.drop(self.w2(F.silu(gate) * value))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for old, new in self._OLD_NAMES:
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class SelfAttention(nn.Module):
    """Multi-head self-attention: fused Q/K/V projection, QK-Norm, SDPA, output projection."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        # Normalise per head in (B, N, H, hd) layout, then move heads forward for SDPA.
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).unbind(2)
        q, k, v = self.q_norm(q).transpose(1, 2), self.k_norm(k).transpose(1, 2), v.transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class CrossAttention(nn.Module):
    """Queries from the latent tokens, keys/values from the brain tokens.

    :meth:`project_context` is split out so the keys and values of a fixed
    condition are computed once per sampling run.
    """

    def __init__(self, dim: int, cond_dim: int, num_heads: int, qk_norm: bool):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(cond_dim, 2 * dim)
        self.q_norm = nn.LayerNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def project_context(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Brain tokens (B, T, cond_dim) -> normalised keys and values, each (B, H, T, hd)."""
        b, t, _ = tokens.shape
        d = self.proj.in_features
        k, v = self.kv(tokens).view(b, t, 2, self.num_heads, d // self.num_heads).unbind(2)
        return self.k_norm(k).transpose(1, 2), v.transpose(1, 2)

    def forward(self, x: torch.Tensor, context: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, n, d = x.shape
        q = self.q_norm(self.q(x).view(b, n, self.num_heads, d // self.num_heads)).transpose(1, 2)
        k, v = context
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """adaLN-Zero block: self-attention, cross-attention to the brain, SwiGLU."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        d = config.hidden_dim
        self.use_cross_attn = config.use_cross_attn
        self.attn = SelfAttention(d, config.num_heads, config.qk_norm)
        if config.use_cross_attn:
            self.cross_attn = CrossAttention(d, config.cond_dim, config.num_heads, config.qk_norm)
        self.mlp = SwiGLU(d, config.ffn_hidden_dim)
        # shift/scale/gate for each of the 2 or 3 sub-layers; zero-initialised in
        # DiffusionTransformer._init_weights so the block starts as the identity.
        self.n_mod = 9 if config.use_cross_attn else 6
        self.adaLN_modulation = nn.Linear(d, self.n_mod * d)

    def forward(
        self,
        x: torch.Tensor,
        silu_c: torch.Tensor,
        context: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        """x: (B, N, D) tokens; silu_c: (B, D) = SiLU(t_emb + brain_global);
        context: precomputed cross-attention keys/values or None."""
        mod = self.adaLN_modulation(silu_c).unsqueeze(1).chunk(self.n_mod, dim=-1)
        shift_sa, scale_sa, gate_sa = mod[0], mod[1] + 1, mod[2]
        x = torch.addcmul(x, gate_sa, self.attn(modulate(_layer_norm(x), shift_sa, scale_sa)))
        if self.use_cross_attn:
            shift_ca, scale_ca, gate_ca = mod[3], mod[4] + 1, mod[5]
            if context is not None:
                h = self.cross_attn(modulate(_layer_norm(x), shift_ca, scale_ca), context)
                x = torch.addcmul(x, gate_ca, h)
        shift_ff, scale_ff, gate_ff = mod[-3], mod[-2] + 1, mod[-1]
        return torch.addcmul(x, gate_ff, self.mlp(modulate(_layer_norm(x), shift_ff, scale_ff)))


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of ``1000 t`` (the 0..1000 range DiT and SD3 embed)
    followed by a two-layer MLP (DiT's ``TimestepEmbedder``)."""

    def __init__(self, dim: int, frequency_dim: int = 256, max_period: float = 10_000.0):
        super().__init__()
        half = frequency_dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * half, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = (1000.0 * t.float()).reshape(-1, 1) * self.freqs
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


def sincos_position_embedding(grid: tuple[int, ...], dim: int) -> torch.Tensor:
    """Fixed sin-cos position embedding (Vaswani et al. 2017; the 2-D form of
    MAE/DiT splits the channels between the axes). Returns (prod(grid), dim)."""
    n_axes = len(grid)
    per_axis = dim // n_axes // 2 * 2
    coords = torch.meshgrid(*(torch.arange(g, dtype=torch.float64) for g in grid), indexing="ij")
    parts = []
    for axis in range(n_axes):
        omega = 1.0 / 10_000 ** (torch.arange(per_axis // 2, dtype=torch.float64) / max(per_axis // 2, 1))
        angles = coords[axis].reshape(-1, 1) * omega
        parts += [torch.sin(angles), torch.cos(angles)]
    emb = torch.cat(parts, dim=1)
    if emb.shape[1] < dim:  # dim not divisible by 2 * n_axes: pad with zeros
        emb = F.pad(emb, (0, dim - emb.shape[1]))
    return emb.float()


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a linear map of each token back to its patch."""

    def __init__(self, hidden_dim: int, patch_dim: int):
        super().__init__()
        self.adaLN_modulation = nn.Linear(hidden_dim, 2 * hidden_dim)
        self.proj = nn.Linear(hidden_dim, patch_dim)

    def forward(self, x: torch.Tensor, silu_c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(silu_c).unsqueeze(1).chunk(2, dim=-1)
        return self.proj(modulate(_layer_norm(x), shift, scale + 1))


# ── the transformer ─────────────────────────────────────────────────────────


class DiffusionTransformer(nn.Module):
    """Velocity field ``v(x_t, t | brain)`` on 1-D or 2-D latents.

    ``DiffusionTransformer(config, img_size=None)``: as in the seed library,
    ``img_size`` (when given) sets a square latent ``input_size``.

    ``forward(x, t, brain_global, brain_tokens=None)``: x (B, C, *input_size),
    t () or (B,) in [0, 1], brain_global (B, cond_dim), brain_tokens
    (B, T, cond_dim) or None (then cross-attention is skipped).
    For sampling, :meth:`prepare_condition` once and :meth:`forward_prepared`
    per step give the same result without recomputing the condition.
    """

    def __init__(self, config: DiTConfig | None = None, img_size: int | None = None):
        super().__init__()
        cfg = config or DiTConfig()
        if img_size is not None:
            cfg = replace(cfg, input_size=(int(img_size), int(img_size)))
        self.config = cfg
        p, d = cfg.patch_size, cfg.hidden_dim
        self.patch_dim_in = cfg.in_channels * p ** len(cfg.input_size)
        self.patch_embed = nn.Linear(self.patch_dim_in, d)
        grid = tuple(s // p for s in cfg.input_size)
        self.register_buffer("pos_embed", sincos_position_embedding(grid, d).unsqueeze(0), persistent=False)
        self.time_embed = TimestepEmbedding(d)
        self.cond_global_proj = nn.Sequential(nn.Linear(cfg.cond_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(d, cfg.latent_out_channels * p ** len(cfg.input_size))
        self._init_weights()

    @classmethod
    def from_config(cls, config: DiTConfig) -> "DiffusionTransformer":
        return cls(config)

    @property
    def img_size(self) -> int:
        """Seed-compatible: the latent's side length (first spatial axis)."""
        return self.config.input_size[0]

    def _init_weights(self) -> None:
        # DiT's initialisation: Xavier for linear maps, N(0, 0.02) for the time MLP,
        # zeros for every adaLN modulation and the output projection (adaLN-Zero).
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for layer in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation.weight)
            nn.init.zeros_(block.adaLN_modulation.bias)
        for layer in (self.final_layer.adaLN_modulation, self.final_layer.proj):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # ── patches ──

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) -> (B, N, p^d * C), patches in row-major order."""
        p, b, c = self.config.patch_size, x.shape[0], x.shape[1]
        grid = [s // p for s in x.shape[2:]]
        if len(grid) == 2:
            x = x.reshape(b, c, grid[0], p, grid[1], p).permute(0, 2, 4, 3, 5, 1)
        else:
            x = x.reshape(b, c, grid[0], p).permute(0, 2, 3, 1)
        return x.reshape(b, math.prod(grid), -1)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, p^d * C_out) -> (B, C_out, *S); the inverse of :meth:`patchify`."""
        cfg = self.config
        p, b, c = cfg.patch_size, x.shape[0], cfg.latent_out_channels
        grid = [s // p for s in cfg.input_size]
        if len(grid) == 2:
            x = x.reshape(b, grid[0], grid[1], p, p, c).permute(0, 5, 1, 3, 2, 4)
        else:
            x = x.reshape(b, grid[0], p, c).permute(0, 3, 1, 2)
        return x.reshape(b, c, *cfg.input_size)

    # ── conditioning ──

    def prepare_condition(
        self, brain_global: torch.Tensor, brain_tokens: torch.Tensor | None = None
    ) -> DiTCondition:
        """Project the brain condition once: the global MLP and, per block, the
        cross-attention keys and values of the brain tokens."""
        cfg = self.config
        if not isinstance(brain_global, torch.Tensor) or brain_global.ndim != 2 or brain_global.shape[1] != cfg.cond_dim:
            raise CortexflowInputError(
                f"brain_global must be (batch, {cfg.cond_dim}), got {_shape(brain_global)}",
                fix="pass the brain encoder's global embedding; its cond_dim must equal DiTConfig.cond_dim",
            )
        context = None
        if brain_tokens is not None and cfg.use_cross_attn:
            if (
                not isinstance(brain_tokens, torch.Tensor)
                or brain_tokens.ndim != 3
                or brain_tokens.shape[0] != brain_global.shape[0]
                or brain_tokens.shape[2] != cfg.cond_dim
            ):
                raise CortexflowInputError(
                    f"brain_tokens must be (batch={brain_global.shape[0]}, n_tokens, {cfg.cond_dim}), "
                    f"got {_shape(brain_tokens)}",
                    fix="pass the brain encoder's token output for the same batch",
                )
            context = [block.cross_attn.project_context(brain_tokens) for block in self.blocks]
        return DiTCondition(self.cond_global_proj(brain_global), context)

    # ── forward ──

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        brain_global: torch.Tensor,
        brain_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted velocity (B, out_channels, *input_size)."""
        return self.forward_prepared(x, t, self.prepare_condition(brain_global, brain_tokens))

    def forward_prepared(self, x: torch.Tensor, t: torch.Tensor | float, condition: DiTCondition) -> torch.Tensor:
        """As :meth:`forward`, with the condition from :meth:`prepare_condition`.

        A scalar ``t`` (the same time for the whole batch, as in sampling) is
        embedded once and broadcast.
        """
        cfg = self.config
        expected = (cfg.in_channels, *cfg.input_size)
        if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != expected:
            raise CortexflowInputError(
                f"the DiT takes latents of shape (batch, {', '.join(map(str, expected))}), got {_shape(x)}",
                fix="check the latent shape the model was built for (DiTConfig.in_channels and input_size)",
            )
        batch = x.shape[0]
        if condition.global_emb.shape[0] != batch:
            raise CortexflowInputError(
                f"the latent batch has {batch} rows but the condition has {condition.global_emb.shape[0]}",
                fix="give one brain condition per latent",
            )
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, batch)):
            raise CortexflowInputError(f"t must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
        t_emb = self.time_embed(t.reshape(-1))  # (1 or B, D)
        silu_c = F.silu(condition.global_emb + t_emb)

        h = self.patch_embed(self.patchify(x)) + self.pos_embed
        for i, block in enumerate(self.blocks):
            h = block(h, silu_c, None if condition.context is None else condition.context[i])
        return self.unpatchify(self.final_layer(h, silu_c))


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
