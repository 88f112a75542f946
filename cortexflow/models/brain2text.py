"""Brain -> text: a byte-level autoregressive transformer decoder conditioned on fMRI.

Text is modelled as UTF-8 bytes (vocabulary 256 + BOS/EOS/PAD), so any
sentence in any language is representable without a tokenizer to ship or
download, and sequences of a sentence stay short (~100 bytes). The decoder is a
GPT-style pre-norm transformer (Radford et al. 2019; the layout of nanoGPT)
whose blocks add cross-attention to the brain tokens, as the decoder of the
original transformer (Vaswani et al. 2017, Fig. 1):

    x = x + SelfAttn(LN(x))        causal, fused qkv, F.scaled_dot_product_attention
    x = x + CrossAttn(LN(x), m)    m = [brain global; brain tokens]
    x = x + MLP(LN(x))

Generation keeps a key/value cache: each new byte runs the decoder on one
position and attends to the cached keys/values of the prefix, and the
cross-attention keys/values of the brain memory are projected once, so a
sequence of L bytes costs O(L) position-forwards instead of the O(L^2) of
recomputing the prefix each step. Sampling supports temperature, top-k
(Fan et al. 2018) and nucleus/top-p (Holtzman et al. 2020) filtering.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from cortexflow.errors import CortexflowInputError
from cortexflow.models.brain_encoder import (
    BrainEncoder,
    BrainEncoderConfig,
    ROIBrainEncoder,
    ROIBrainEncoderConfig,
    SubjectAdapter,
)
from cortexflow.models.brain_noise import check_brain_noise, perturb_condition
from cortexflow.models.dit import SwiGLU
from cortexflow.models.types import BrainData, Modality, ReconstructionResult

log = logging.getLogger("cortexflow.models.brain2text")

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "VOCAB_SIZE",
    "Brain2Text",
    "Brain2TextConfig",
    "build_brain2text",
    "decode_bytes",
    "encode_texts",
]

#: Byte values are token ids 0..255; three special tokens follow.
BOS_ID, EOS_ID, PAD_ID = 256, 257, 258
VOCAB_SIZE = 259


# ----------------------------------------------------------------------------- bytes <-> text


def encode_texts(texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """UTF-8 encode ``texts`` into a right-padded (B, L) byte tensor and its mask.

    ``L`` is the longest encoded text, capped at ``max_len`` bytes (longer texts
    are truncated, with a warning; a character cut in half decodes as U+FFFD).
    Padding is ``PAD_ID``; ``mask`` is True on real bytes.
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise CortexflowInputError(
            f"texts must be a list of str, got {type(texts).__name__}", fix="wrap a single sentence in a list: [text]"
        )
    if max_len <= 0:
        raise CortexflowInputError(f"max_len must be positive, got {max_len}")
    encoded = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise CortexflowInputError(f"texts[{i}] is {type(text).__name__}, not str", fix="pass a list of str")
        encoded.append(text.encode("utf-8"))
    n_long = sum(len(b) > max_len for b in encoded)
    if n_long:
        log.warning("%d of %d texts are longer than max_len=%d bytes and were truncated", n_long, len(encoded), max_len)
    length = max([min(len(b), max_len) for b in encoded], default=0)
    tokens = torch.full((len(encoded), length), PAD_ID, dtype=torch.long)
    for i, b in enumerate(encoded):
        b = b[:max_len]
        if b:
            tokens[i, : len(b)] = torch.frombuffer(bytearray(b), dtype=torch.uint8).long()
    return tokens, tokens != PAD_ID


def decode_bytes(tokens: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
    """Decode rows of token ids to str: stop at the first EOS/PAD, skip BOS,
    and replace invalid UTF-8 with U+FFFD (never raises on model output)."""
    rows = tokens.tolist() if isinstance(tokens, torch.Tensor) else [list(r) for r in tokens]
    if rows and not isinstance(rows[0], list):
        rows = [rows]
    texts = []
    for row in rows:
        out = bytearray()
        for t in row:
            t = int(t)
            if t in (EOS_ID, PAD_ID):
                break
            if 0 <= t < 256:
                out.append(t)
        texts.append(out.decode("utf-8", errors="replace"))
    return texts


# ----------------------------------------------------------------------------- config


@dataclass
class Brain2TextConfig:
    """Hyper-parameters of :class:`Brain2Text`.

    encoder: the brain encoder's config (its ``cond_dim`` must equal
        ``hidden_dim``); a ``ROIBrainEncoderConfig`` builds an ROI-aware model.
    max_len: most text bytes generated or trained on (EOS not counted).
    n_subjects: > 0 adds a :class:`SubjectAdapter` on the brain embedding,
        driven by ``BrainData.subject_idx``.
    """

    encoder: BrainEncoderConfig | ROIBrainEncoderConfig
    max_len: int = 128
    hidden_dim: int = 512
    depth: int = 8
    n_heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    n_subjects: int = 0
    adapter_rank: int = 16

    def __post_init__(self) -> None:
        # Accept the plain dicts a config file or a saved checkpoint holds.
        if isinstance(self.encoder, Mapping):
            enc = dict(self.encoder)
            self.encoder = ROIBrainEncoderConfig(**enc) if "roi_sizes" in enc else BrainEncoderConfig(**enc)
        if not isinstance(self.encoder, (BrainEncoderConfig, ROIBrainEncoderConfig)):
            raise CortexflowInputError(f"encoder must be a BrainEncoderConfig, got {type(self.encoder).__name__}")
        for name in ("max_len", "hidden_dim", "depth", "n_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise CortexflowInputError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_dim % self.n_heads:
            raise CortexflowInputError(
                f"hidden_dim={self.hidden_dim} is not divisible by n_heads={self.n_heads}",
                fix="choose n_heads that divides hidden_dim (e.g. 8 for 512)",
            )
        if self.encoder.cond_dim != self.hidden_dim:
            raise CortexflowInputError(
                f"encoder.cond_dim={self.encoder.cond_dim} differs from hidden_dim={self.hidden_dim}",
                fix="build the encoder with cond_dim equal to the decoder's hidden_dim",
            )
        if not 0.0 <= self.dropout < 1.0:
            raise CortexflowInputError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.n_subjects < 0:
            raise CortexflowInputError(f"n_subjects must be >= 0, got {self.n_subjects}")


# ----------------------------------------------------------------------------- decoder blocks


@dataclass
class _LayerCache:
    """Keys/values of one block during generation.

    self_k/self_v: (B, H, max_positions, hd), filled up to the current length.
    cross_k/cross_v: (B, H, M, hd), the brain memory projected once.
    """

    self_k: torch.Tensor
    self_v: torch.Tensor
    cross_k: torch.Tensor
    cross_v: torch.Tensor


@dataclass
class KVCache:
    """Per-layer caches plus the number of positions already stored."""

    layers: list[_LayerCache] = field(default_factory=list)
    length: int = 0


def _split_heads(x: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """(B, T, n_heads * head_dim) -> (B, n_heads, T, head_dim)."""
    b, t, _ = x.shape
    return x.view(b, t, n_heads, head_dim).transpose(1, 2)


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return _split_heads(x, self.n_heads, self.head_dim)

    def forward(self, x: torch.Tensor, cache: _LayerCache | None = None, start: int = 0) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (self._heads(z) for z in self.qkv(x).split(d, dim=-1))
        drop = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        else:
            end = start + t
            cache.self_k[:, :, start:end] = k
            cache.self_v[:, :, start:end] = v
            # .to(): under autocast the projections may be bf16 while the cache is fp32.
            k, v = cache.self_k[:, :, :end].to(q.dtype), cache.self_v[:, :, :end].to(q.dtype)
            # A single new position sees the whole prefix; several new positions
            # (a multi-byte prompt) need the causal mask shifted by ``start``.
            mask = None
            if t > 1:
                mask = torch.ones(t, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))


class CrossAttention(nn.Module):
    """Queries from the text stream, keys/values from the brain memory."""

    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return _split_heads(x, self.n_heads, self.head_dim)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(memory).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(self, x: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, t, d = x.shape
        k, v = memory_kv
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(self._heads(self.q(x)), k, v, dropout_p=drop)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))


def swiglu_hidden(dim: int, mlp_ratio: float) -> int:
    """Hidden width of the gated MLP: 2/3 of ``mlp_ratio * dim`` (so it costs the
    same as a GELU MLP of that ratio; Shazeer 2020), rounded up to a multiple of 8."""
    hidden = int(2 * mlp_ratio * dim / 3)
    return 8 * ((hidden + 7) // 8)


class DecoderBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = CausalSelfAttention(dim, n_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, n_heads, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = SwiGLU(dim, swiglu_hidden(dim, mlp_ratio), bias=True, dropout=dropout)

    def forward(
        self,
        x: torch.Tensor,
        memory_kv: tuple[torch.Tensor, torch.Tensor],
        cache: _LayerCache | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x), cache, start)
        x = x + self.cross_attn(self.norm2(x), memory_kv)
        return x + self.mlp(self.norm3(x))


# ----------------------------------------------------------------------------- model


class Brain2Text(nn.Module):
    """fMRI -> UTF-8 text, by a byte-level transformer decoder cross-attending to the brain.

    ``training_loss(texts, brain)`` is the teacher-forced cross-entropy of the
    bytes and EOS; ``reconstruct(brain, ...)`` samples text with a KV cache.
    """

    def __init__(self, config: Brain2TextConfig):
        super().__init__()
        self.config = config
        dim = config.hidden_dim
        enc = config.encoder
        encoder_cls = ROIBrainEncoder if isinstance(enc, ROIBrainEncoderConfig) else BrainEncoder
        self.brain_encoder = encoder_cls.from_config(enc)
        self.subject_adapter = (
            SubjectAdapter(dim, config.adapter_rank, config.n_subjects) if config.n_subjects > 0 else None
        )
        self.memory_norm = nn.LayerNorm(dim)
        self.token_emb = nn.Embedding(VOCAB_SIZE, dim)
        # Positions 0..max_len: BOS followed by up to max_len bytes.
        self.pos_emb = nn.Embedding(config.max_len + 1, dim)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            DecoderBlock(dim, config.n_heads, config.mlp_ratio, config.dropout) for _ in range(config.depth)
        )
        self.norm_out = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, VOCAB_SIZE, bias=False)
        self._init_decoder_weights()
        # Weight tying (Press & Wolf 2017): input and output byte embeddings share one matrix.
        self.lm_head.weight = self.token_emb.weight

    @classmethod
    def from_config(cls, config: Brain2TextConfig) -> "Brain2Text":
        return cls(config)

    def _init_decoder_weights(self) -> None:
        # GPT-2 initialisation: N(0, 0.02), residual output projections scaled by
        # 1/sqrt(2 * depth) so the residual stream's variance does not grow with depth.
        residual_std = 0.02 / math.sqrt(2 * self.config.depth)
        for module in [self.token_emb, self.pos_emb, *self.blocks]:
            for name, sub in module.named_modules():
                if isinstance(sub, nn.Linear):
                    # residual outputs: attention's proj and the gated MLP's w2 (named down before SwiGLU was shared)
                    std = residual_std if name.endswith(("proj", "mlp.w2")) else 0.02
                    nn.init.normal_(sub.weight, std=std)
                    if sub.bias is not None:
                        nn.init.zeros_(sub.bias)
                elif isinstance(sub, nn.Embedding):
                    nn.init.normal_(sub.weight, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.token_emb.weight.device

    # ------------------------------------------------------------------ brain side

    def encode_brain(self, brain: BrainData) -> tuple[torch.Tensor, torch.Tensor]:
        """brain -> (global (B, D), memory (B, 1 + n_tokens, D)) the decoder attends to."""
        if not isinstance(brain, BrainData):
            raise CortexflowInputError(
                f"brain must be a cortexflow.BrainData, got {type(brain).__name__}",
                fix="wrap the voxels: BrainData(voxels=fmri)",
            )
        brain = brain.to(self.device)
        brain_global, tokens = self.brain_encoder(brain.encoder_input(self.brain_encoder))
        if self.subject_adapter is not None:
            if brain.subject_idx is None:
                raise CortexflowInputError(
                    "this model has per-subject adapters but BrainData.subject_idx is None",
                    fix="pass BrainData(voxels=..., subject_idx=torch.tensor([...]))",
                )
            brain_global = self.subject_adapter(brain_global, brain.subject_idx)
            tokens = self.subject_adapter(tokens, brain.subject_idx)
        memory = torch.cat([brain_global.unsqueeze(1), tokens], dim=1)
        return brain_global, self.memory_norm(memory)

    # ------------------------------------------------------------------ decoder

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, VOCAB_SIZE) for input ids ``tokens`` (B, T),
        recomputing every position (training; the reference for the cache)."""
        if tokens.shape[1] > self.config.max_len + 1:
            raise CortexflowInputError(
                f"sequence of {tokens.shape[1]} positions exceeds max_len + 1 = {self.config.max_len + 1}",
                fix="truncate the text or build the model with a larger max_len",
            )
        x = self._embed(tokens, 0)
        for block in self.blocks:
            x = block(x, block.cross_attn.memory_kv(memory))
        return self.lm_head(self.norm_out(x))

    def _embed(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        return self.drop(self.token_emb(tokens) + self.pos_emb(positions))

    def init_cache(self, memory: torch.Tensor, max_positions: int) -> KVCache:
        """Empty self-attention caches for ``max_positions`` and the brain memory's
        cross-attention keys/values, projected once for the whole generation."""
        b = memory.shape[0]
        cache = KVCache()
        for block in self.blocks:
            attn = block.self_attn
            shape = (b, attn.n_heads, max_positions, attn.head_dim)
            k, v = block.cross_attn.memory_kv(memory)
            cache.layers.append(
                _LayerCache(memory.new_zeros(shape), memory.new_zeros(shape), k, v)
            )
        return cache

    def forward_cached(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits (B, T, V) for ``tokens`` (B, T) that follow the ``cache.length``
        positions already in ``cache``; appends their keys/values to it."""
        start = cache.length
        if start + tokens.shape[1] > cache.layers[0].self_k.shape[2]:
            raise CortexflowInputError(
                f"the cache holds {cache.layers[0].self_k.shape[2]} positions, {start + tokens.shape[1]} needed",
                fix="create the cache with a larger max_positions",
            )
        x = self._embed(tokens, start)
        for block, layer in zip(self.blocks, cache.layers):
            x = block(x, (layer.cross_k, layer.cross_v), layer, start)
        cache.length = start + tokens.shape[1]
        return self.lm_head(self.norm_out(x))

    # ------------------------------------------------------------------ the seed's byte helpers

    @staticmethod
    def text_to_tokens(text: str) -> torch.Tensor:
        """UTF-8 bytes of ``text`` as a 1-D long tensor (the seed's helper; no BOS/EOS)."""
        if not isinstance(text, str):
            raise CortexflowInputError(f"text must be a str, got {type(text).__name__}")
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)

    @staticmethod
    def tokens_to_text(tokens: torch.Tensor) -> str:
        """One row of token ids -> str, stopping at the first NUL byte (the seed's
        end marker), EOS or PAD, skipping BOS; invalid UTF-8 becomes U+FFFD."""
        row = tokens.reshape(-1).tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
        if 0 in row:
            row = row[: row.index(0)]
        return decode_bytes([row])[0]

    # ------------------------------------------------------------------ training

    def _text_tokens(self, text: torch.Tensor | Sequence[str]) -> torch.Tensor:
        if isinstance(text, torch.Tensor):
            if text.ndim != 2 or text.dtype not in (torch.long, torch.int32, torch.int64, torch.uint8, torch.int16):
                raise CortexflowInputError(
                    f"text_bytes must be an integer tensor (batch, length), got {text.dtype} {tuple(text.shape)}",
                    fix="use encode_texts(texts, max_len) or pass a list of str",
                )
            text = text.long()
            # The seed library right-pads byte rows with 0 (NUL ends a text there):
            # trailing zeros are padding.
            trailing_zero = (text == 0).flip(1).cumprod(1).flip(1).bool()
            text = text.masked_fill(trailing_zero, PAD_ID)
            if bool(((text < 0) | ((text > 255) & (text != PAD_ID))).any()):
                raise CortexflowInputError(
                    f"text_bytes must hold byte values 0..255 or PAD_ID={PAD_ID}",
                    fix="use encode_texts(texts, max_len) to build the tensor",
                )
            real = text != PAD_ID
            if bool((real[:, 1:] & ~real[:, :-1]).any()):
                raise CortexflowInputError(
                    "text_bytes has padding before real bytes; padding must be at the end of each row",
                    fix="right-pad with PAD_ID, as encode_texts does",
                )
            if text.shape[1] > self.config.max_len:
                raise CortexflowInputError(
                    f"text_bytes has {text.shape[1]} bytes per row, more than max_len={self.config.max_len}",
                    fix="truncate to max_len or build the model with a larger max_len",
                )
            return text
        tokens, _ = encode_texts(text, self.config.max_len)
        return tokens

    def training_loss(self, text_bytes: torch.Tensor | Sequence[str], brain: BrainData) -> torch.Tensor:
        """Teacher-forced cross-entropy (nats per byte) of the text and its EOS.

        Input is ``[BOS, b_1 .. b_n]``, target ``[b_1 .. b_n, EOS]``; padding
        positions are excluded from the mean.
        """
        tokens = self._text_tokens(text_bytes).to(self.device)
        if tokens.shape[0] != brain.batch_size:
            raise CortexflowInputError(
                f"{tokens.shape[0]} texts for {brain.batch_size} brain samples",
                fix="pass one text per row of brain activity",
            )
        b = tokens.shape[0]
        lengths = (tokens != PAD_ID).sum(dim=1)
        pad = torch.full((b, 1), PAD_ID, dtype=torch.long, device=tokens.device)
        targets = torch.cat([tokens, pad], dim=1)
        targets[torch.arange(b, device=tokens.device), lengths] = EOS_ID
        bos = torch.full((b, 1), BOS_ID, dtype=torch.long, device=tokens.device)
        inputs = torch.cat([bos, tokens], dim=1)
        _, memory = self.encode_brain(brain)
        logits = self(inputs, memory)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=PAD_ID)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def reconstruct(
        self,
        brain: BrainData,
        max_len: int | None = None,
        temperature: float = 0.8,
        top_k: int | None = 50,
        top_p: float = 1.0,
        num_samples: int = 1,
        brain_noise: float = 0.0,
        *,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> ReconstructionResult:
        """Generate text for each row of ``brain`` (the seed library's positional order).

        Runs in eval mode (dropout off) and puts the model's mode back after.
        ``greedy=True`` (or ``temperature=0``) takes the most likely byte;
        otherwise bytes are sampled from the logits divided by ``temperature``
        after keeping the ``top_k`` most likely (``None``/0: all) and the
        smallest set whose probability reaches ``top_p`` (1.0, or 0.0 as in the
        seed: no nucleus filtering).

        ``brain`` may be on any device (it is moved to the model's); ``generator``
        may live on the CPU or on the model's device.

        ``num_samples`` > 1 draws that many texts per row, each with its own
        random draws and, with ``brain_noise`` > 0, its own perturbation of the
        brain memory (noise scaled by ``brain_noise`` times each vector's norm).

        Returns, on the CPU, ``output`` long: generated bytes, ``PAD_ID`` after the end,
        (B, L), or (B, num_samples, L); ``metadata["texts"]`` the decoded strings
        (a list, or per row a list of ``num_samples``) and ``metadata["lengths"]``
        the byte counts, nested the same way.
        """
        max_len = self.config.max_len if max_len is None else int(max_len)
        if not 0 < max_len <= self.config.max_len:
            raise CortexflowInputError(
                f"max_len must be in [1, {self.config.max_len}], got {max_len}",
                fix="the model's positional table ends at its own max_len",
            )
        if temperature < 0:
            raise CortexflowInputError(f"temperature must be >= 0, got {temperature}")
        if not 0.0 <= top_p <= 1.0:
            raise CortexflowInputError(f"top_p must be in [0, 1] (0 or 1: no nucleus filtering), got {top_p}")
        if top_k is not None and top_k < 0:
            raise CortexflowInputError(f"top_k must be >= 0 or None, got {top_k}")
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise CortexflowInputError(f"num_samples must be a positive integer, got {num_samples!r}")
        brain_noise = check_brain_noise(brain_noise)
        top_p = 1.0 if top_p == 0.0 else float(top_p)
        greedy = greedy or temperature == 0

        was_training = self.training
        self.eval()
        try:
            brain_global, memory = self.encode_brain(brain)
            if num_samples > 1:
                memory = memory.repeat_interleave(num_samples, dim=0)
            if brain_noise > 0:
                memory = perturb_condition(memory, brain_noise, generator)
            b = memory.shape[0]
            cache = self.init_cache(memory, max_len + 1)
            out = torch.full((b, max_len), PAD_ID, dtype=torch.long, device=self.device)
            done = torch.zeros(b, dtype=torch.bool, device=self.device)
            lengths = torch.full((b,), max_len, dtype=torch.long, device=self.device)
            next_input = torch.full((b, 1), BOS_ID, dtype=torch.long, device=self.device)
            for i in range(max_len):
                logits = self.forward_cached(next_input, cache)[:, -1].float()
                token = _choose(logits, greedy, temperature, top_k, top_p, generator)
                newly_done = (token == EOS_ID) & ~done
                lengths[newly_done] = i
                done |= newly_done
                out[:, i] = torch.where(done, PAD_ID, token)
                if bool(done.all()):
                    break
                next_input = token.unsqueeze(1)
        finally:
            self.train(was_training)
        texts: list = decode_bytes(out)
        counts: list = lengths.cpu().tolist()
        out = out.cpu()
        if num_samples > 1:
            texts = [texts[i : i + num_samples] for i in range(0, b, num_samples)]
            counts = [counts[i : i + num_samples] for i in range(0, b, num_samples)]
            out = out.view(-1, num_samples, max_len)
        return ReconstructionResult(
            output=out,
            modality=Modality.TEXT,
            brain_global=brain_global.cpu(),
            metadata={"texts": texts, "lengths": counts, "num_samples": num_samples, "brain_noise": brain_noise},
        )


def _choose(
    logits: torch.Tensor,
    greedy: bool,
    temperature: float,
    top_k: int | None,
    top_p: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Pick the next token for each row of ``logits`` (B, V)."""
    # BOS and PAD are never outputs of the decoder.
    logits = logits.clone()
    logits[:, [BOS_ID, PAD_ID]] = float("-inf")
    if greedy:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(int(top_k), logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the
        # most likely token is always kept.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    if generator is not None and generator.device != probs.device:
        # draw where the generator lives (a CPU generator then gives the same
        # texts on CPU and GPU), like cortexflow.models.flow.random_tensor
        return torch.multinomial(probs.to(generator.device), 1, generator=generator).squeeze(1).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def build_brain2text(
    n_voxels: int | None = None,
    max_len: int = 128,
    hidden_dim: int = 512,
    depth: int = 8,
    n_heads: int | None = None,
    n_brain_tokens: int = 16,
    encoder_hidden_dim: int | None = None,
    encoder_dropout: float = 0.1,
    dropout: float = 0.1,
    mlp_ratio: float = 4.0,
    roi_sizes: dict[str, int] | None = None,
    tokens_per_roi: int = 4,
    n_subjects: int = 0,
    adapter_rank: int = 16,
) -> Brain2Text:
    """Build a :class:`Brain2Text` (the seed library's constructor, same first arguments).

    Give ``n_voxels`` for a whole-brain :class:`BrainEncoder`, or ``roi_sizes``
    for an :class:`ROIBrainEncoder`. ``n_heads`` defaults to ``hidden_dim // 64``.
    """
    if (n_voxels is None) == (roi_sizes is None):
        raise CortexflowInputError(
            "give exactly one of n_voxels and roi_sizes", fix="e.g. build_brain2text(n_voxels=15000)"
        )
    if n_heads is None:
        n_heads = max(1, hidden_dim // 64)
    if roi_sizes is not None:
        encoder: BrainEncoderConfig | ROIBrainEncoderConfig = ROIBrainEncoderConfig(
            dict(roi_sizes), hidden_dim, tokens_per_roi, encoder_hidden_dim, encoder_dropout
        )
    else:
        encoder = BrainEncoderConfig(n_voxels, hidden_dim, n_brain_tokens, encoder_hidden_dim, encoder_dropout)
    config = Brain2TextConfig(
        encoder=encoder,
        max_len=max_len,
        hidden_dim=hidden_dim,
        depth=depth,
        n_heads=n_heads,
        mlp_ratio=mlp_ratio,
        dropout=dropout,
        n_subjects=n_subjects,
        adapter_rank=adapter_rank,
    )
    model = Brain2Text(config)
    log.info(
        "built Brain2Text: %.2fM parameters (hidden %d, depth %d, max_len %d)",
        sum(p.numel() for p in model.parameters()) / 1e6,
        hidden_dim,
        depth,
        max_len,
    )
    return model
