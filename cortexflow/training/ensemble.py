"""Several seeds of one latent-flow decoder trained as one stacked model (rule train_decoder_seeds; issue 24).

The workflow trains each seed of a decoder as its own run: a 0.6 M-parameter
DiT at batch 64 keeps one CPU core busy with small operators (~10,000 per
step) far more than with arithmetic, about a quarter of the fp32 matmul peak.
:class:`EnsembleTrainer` trains ``M`` seeds at once: every parameter is stacked
into an ``(M, ...)`` tensor, each linear map of the M members is one batched
matmul (``torch.baddbmm``), attention folds the members into its batch, and
each elementwise operator, the optimizer's included, runs once over all
members instead of M times. Same operator count per step, M times the work
per operator.

Each member is the run its seed would have been on its own, to float rounding:

- initialisation: each member is built separately, seeded as the stage seeds it
  (the caller builds the M models; :func:`cortexflow.stages.decoder_seeds.train_decoder_seeds_stage`
  does it as ``train_decoder`` does), and its weights are stacked unchanged;
- data order: member ``m`` gets batch ``step`` of its own batch function
  (``batch_indices(step, n, batch_size, seed_m)`` in the stage);
- randomness inside the loss: a single run re-seeds torch's global generator
  with its seed when ``fit`` starts and then draws, every step and in this
  order, the voxel dropout mask, the hidden dropout masks (projector, then each
  residual block), the condition-drop uniforms, the logit-normal time normals
  and the noise ``x_0``. Member ``m`` draws the same tensors, with the same
  operators (``bernoulli_``, ``rand``, ``randn`` of the same shapes), in the
  same order, from its own ``torch.Generator`` seeded with its seed, so its
  random numbers are bit-for-bit those of its single run; only the arithmetic
  that uses them is batched;
- loss, gradient clipping and optimizer: the loss is the sum of the members'
  own mean losses (so each member's gradient is its own loss's), the gradient
  norm is clipped per member (``clip_grad_norm_``'s formula on that member's
  slices), and AdamW, the warm-up + cosine schedule and the EMA are
  elementwise, so one optimizer over the stacked tensors is M optimizers (same
  weight-decay groups, by the members' parameter names).

What is not bit-for-bit: a batched matmul, a per-member loss reduction and a
per-member gradient norm add in another order than the single run's, so the
members differ from their single runs by rounding, which training then
carries along (tests/test_ensemble_training.py bounds it over a short run).

Supported: :class:`~cortexflow.models.latent_flow.LatentFlowDecoder` (image and
audio) with the global :class:`~cortexflow.models.brain_encoder.BrainEncoder`
and the :class:`~cortexflow.models.dit.DiffusionTransformer`, fp32 on the CPU,
one process, no gradient accumulation (what the default study trains). Anything
else is refused with :class:`~cortexflow.errors.CortexflowInputError`.
``TrainingConfig.compile`` runs the stacked loss (forward and backward) through
``torch.compile``; a step's random tensors are drawn before it, outside the
compiled code, so they stay the single runs' (inductor's own random streams
would not be), and only the arithmetic is compiled.
"""

from __future__ import annotations

import copy
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from cortexflow.errors import CortexflowInputError
from cortexflow.training.history import LossCurve, progress_line
from cortexflow.training.trainer import TrainingConfig, TrainingInterrupted, WarmupCosineScheduler

log = logging.getLogger("cortexflow.training.ensemble")

__all__ = ["EnsembleTrainer", "EnsembleResult", "train_ensemble"]

# TrainingConfig fields that may differ between members (everything else must agree)
_PER_MEMBER = ("seed",)


# ── stacked building blocks ─────────────────────────────────────────────────


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """M linear maps at once: x (M, ..., in), w (M, out, in), b (M, out) -> (M, ..., out)."""
    m, d_in = x.shape[0], x.shape[-1]
    flat = x.reshape(m, -1, d_in)
    wt = w.transpose(1, 2)
    out = torch.bmm(flat, wt) if b is None else torch.baddbmm(b.unsqueeze(1), flat, wt)
    return out.reshape(*x.shape[:-1], w.shape[1])


def _per_member(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """(M, d) -> (M, 1, ..., 1, d) for broadcasting over an ndim-dimensional (M, ..., d) tensor."""
    return v.reshape(v.shape[0], *([1] * (ndim - 2)), v.shape[-1])


def _layer_norm(x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None, eps: float) -> torch.Tensor:
    y = F.layer_norm(x, x.shape[-1:], eps=eps)
    if w is not None:
        y = torch.addcmul(_per_member(b, x.ndim), y, _per_member(w, x.ndim))
    return y


@dataclass
class EnsembleResult:
    """What :meth:`EnsembleTrainer.fit` did (the per-member losses of every step it ran)."""

    start_step: int
    final_step: int
    resumed: bool
    losses: list[list[float]] = field(default_factory=list)  # [member][step]
    seconds: float = 0.0


class EnsembleTrainer:
    """Trains ``models`` (one per seed, built separately) as one stacked model.

    ``configs``: each member's :class:`TrainingConfig`; they may differ in
    ``seed`` only. ``train_step(batches)`` takes one batch per member, each
    ``(latents, BrainData)`` as :func:`cortexflow.stages.decoder.latent_flow_batches`
    makes them. After training, :meth:`member` gives member ``m`` as a model of
    its own (its last weights) and :meth:`ema_member` the same model with its
    EMA weights; :meth:`state_of` gives the state a single Trainer would hold.
    """

    def __init__(self, models: Sequence[nn.Module], configs: Sequence[TrainingConfig]):
        if len(models) < 1 or len(models) != len(configs):
            raise CortexflowInputError(f"need one config per model, got {len(models)} models, {len(configs)} configs")
        base = {k: v for k, v in asdict(configs[0]).items() if k not in _PER_MEMBER}
        for c in configs[1:]:
            other = {k: v for k, v in asdict(c).items() if k not in _PER_MEMBER}
            if other != base:
                diff = sorted(k for k in base if base[k] != other[k])
                raise CortexflowInputError(f"ensemble members must share their training settings; {diff} differ")
        for m in models:
            _check_supported(m)
        cfg = configs[0]
        if cfg.grad_accum_steps != 1:
            raise CortexflowInputError("the ensemble trainer supports grad_accum_steps=1 only")
        if cfg.mixed_precision == "bf16" or (cfg.device not in ("cpu", "auto")):
            raise CortexflowInputError("the ensemble trainer trains fp32 on the CPU only")
        self.config = cfg
        self.configs = list(configs)
        self.seeds = [int(c.seed) for c in configs]
        self.templates = list(models)
        self.n = len(models)
        names = [n for n, p in models[0].named_parameters() if not n.startswith("vae.")]
        for m in models[1:]:
            if [n for n, p in m.named_parameters() if not n.startswith("vae.")] != names:
                raise CortexflowInputError("ensemble members must have the same architecture")
        # every parameter the loss uses, stacked member-first; trainable where the member's is
        self.params: dict[str, torch.Tensor] = {}
        for n in names:
            ps = [dict(m.named_parameters())[n] for m in models]
            t = torch.stack([p.detach() for p in ps]).clone()
            t.requires_grad_(ps[0].requires_grad)
            self.params[n] = t
        self.buffers = {n: torch.stack([dict(m.named_buffers())[n] for m in models])
                        for n in ("latent_mean", "latent_std")}
        m0 = models[0]
        self.pos_embed = m0.dit.pos_embed
        self.freqs = m0.dit.time_embed.freqs
        self.dit_cfg = m0.dit.config
        self.flow_cfg = m0.flow_matcher.config
        self.cond_drop_prob = float(m0.config.cond_drop_prob)
        self.prior_conditioning = bool(m0.config.prior_conditioning)
        enc = m0.brain_encoder
        self.enc_cfg = enc.config
        self.input_norm = not isinstance(enc.projector.input_norm, nn.Identity)
        self.n_blocks = len(enc.projector.blocks)

        trainable = [(n, p) for n, p in self.params.items() if p.requires_grad]
        # the Trainer's groups, decided on the members' names and shapes (a stacked tensor has one more dim)
        decay = [p for n, p in trainable if p.ndim - 1 >= 2 and "emb" not in n]
        decay_ids = {id(p) for p in decay}
        no_decay = [p for n, p in trainable if id(p) not in decay_ids]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate,
                                           betas=cfg.betas, eps=cfg.eps, fused=False)
        self.scheduler = WarmupCosineScheduler(self.optimizer, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        self.use_ema = cfg.use_ema and cfg.ema_decay > 0
        self.ema_num_updates = 0
        self.ema_shadow = {n: p.detach().clone() for n, p in self.params.items()} if self.use_ema else {}
        # each member's own stream: the global generator a single run re-seeds in fit()
        self.generators = [torch.Generator().manual_seed(s) for s in self.seeds]
        # compile=True: the stacked loss (forward and backward) through torch.compile; its random
        # tensors are drawn outside it, so the members' random numbers stay their single runs'
        self._loss_fn = torch.compile(self._loss) if cfg.compile else self._loss
        self.step = 0
        self.curves = [LossCurve() for _ in range(self.n)]
        self.last_grad_norms: torch.Tensor | None = None

    # ── randomness (each member from its own generator, in its single run's order) ──

    def _draw(self, fn: Callable[[torch.Generator], torch.Tensor]) -> torch.Tensor:
        return torch.stack([fn(g) for g in self.generators])

    def _dropout_noise(self, shape: tuple[int, ...], p: float) -> torch.Tensor | None:
        """nn.Dropout's noise in training mode, member by member: ATen's CPU dropout draws
        ``empty_like(x).bernoulli_(1 - p)`` and divides it by ``1 - p`` (then multiplies x by it);
        p = 0 draws nothing."""
        if p == 0:
            return None
        return self._draw(lambda g: torch.empty(shape).bernoulli_(1 - p, generator=g)).div_(1 - p)

    def _draw_randoms(self, b: int, n_voxels: int) -> dict[str, Any]:
        """Every random tensor one step of the members' losses uses, (M, ...) each, drawn in the order
        a single run draws them (computation draws nothing, so they can be drawn first): voxel dropout,
        projector dropout, each residual block's dropout, condition-drop uniforms, time normals, x_0."""
        c = self.enc_cfg
        hidden = c.hidden_dim or c.cond_dim
        r: dict[str, Any] = {"input_drop": self._dropout_noise((b, n_voxels), c.input_dropout),
                             "proj_drop": self._dropout_noise((b, hidden), c.dropout),
                             "block_drop": [self._dropout_noise((b, 2 * hidden), c.dropout)
                                            for _ in range(self.n_blocks)]}
        r["cond"] = self._draw(lambda g: torch.rand((b,), generator=g)) if self.cond_drop_prob > 0 else None
        if self.flow_cfg.logit_normal:
            r["time"] = self._draw(lambda g: torch.randn((b,), generator=g))
        else:
            r["time"] = self._draw(lambda g: torch.rand((b,), generator=g))
        shape = (b, *self.templates[0].latent_shape)
        r["x0"] = self._draw(lambda g: torch.randn(shape, generator=g))
        return r

    # ── the stacked loss ──

    def _encoder(self, P: dict[str, torch.Tensor], voxels: torch.Tensor,
                 r: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.enc_cfg
        pre = "brain_encoder."
        h = F.layer_norm(voxels, voxels.shape[-1:], eps=1e-5) if self.input_norm else voxels
        h = h if r["input_drop"] is None else h * r["input_drop"]
        h = _linear(h, P[pre + "projector.proj.weight"], P[pre + "projector.proj.bias"])
        h = h if r["proj_drop"] is None else h * r["proj_drop"]
        for i in range(self.n_blocks):
            b = f"{pre}projector.blocks.{i}."
            u = _layer_norm(h, P[b + "norm.weight"], P[b + "norm.bias"], 1e-5)
            u = F.gelu(_linear(u, P[b + "fc1.weight"], P[b + "fc1.bias"]))
            u = u if r["block_drop"][i] is None else u * r["block_drop"][i]
            h = h + _linear(u, P[b + "fc2.weight"], P[b + "fc2.bias"])
        h = _layer_norm(h, P[pre + "projector.out_norm.weight"], P[pre + "projector.out_norm.bias"], 1e-5)
        g = _linear(h, P[pre + "global_head.weight"], P[pre + "global_head.bias"])
        m, b = h.shape[:2]
        tok = _linear(h, P[pre + "token_head.proj.weight"], P[pre + "token_head.proj.bias"])
        tok = tok.view(m, b, c.n_tokens, c.cond_dim) + P[pre + "token_head.pos_emb"].unsqueeze(1)
        tok = _layer_norm(tok, P[pre + "token_head.norm.weight"], P[pre + "token_head.norm.bias"], 1e-5)
        return g, tok

    def _qk_norm(self, P: dict[str, torch.Tensor], x: torch.Tensor, name: str) -> torch.Tensor:
        if not self.dit_cfg.qk_norm:
            return x
        return _layer_norm(x, P[name + ".weight"], P[name + ".bias"], 1e-6)

    def _dit(self, P: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor, brain_global: torch.Tensor,
             brain_tokens: torch.Tensor) -> torch.Tensor:
        """x (M, B, C, *S), t (M, B) -> velocity (M, B, C_out, *S)."""
        cfg, dit = self.dit_cfg, self.templates[0].dit
        m, b = x.shape[:2]
        heads, d = cfg.num_heads, cfg.hidden_dim
        hd = d // heads

        def lin(h, name, bias=True):
            return _linear(h, P[f"dit.{name}.weight"], P[f"dit.{name}.bias"] if bias else None)

        args = (1000.0 * t.float()).reshape(m, b, 1) * self.freqs
        t_emb = lin(F.silu(lin(torch.cat([torch.cos(args), torch.sin(args)], dim=-1), "time_embed.mlp.0")),
                    "time_embed.mlp.2")
        global_emb = lin(F.silu(lin(brain_global, "cond_global_proj.0")), "cond_global_proj.2")
        silu_c = F.silu(global_emb + t_emb)  # (M, B, D)

        patches = dit.patchify(x.reshape(m * b, *x.shape[2:]))
        h = lin(patches.view(m, b, *patches.shape[1:]), "patch_embed") + self.pos_embed  # (M, B, N, D)
        n = h.shape[2]

        def attention(q, k, v):  # (M, B, L, H, hd) each, normalised -> (M, B, Lq, D)
            q, k, v = (z.flatten(0, 1).transpose(1, 2) for z in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v)
            return out.transpose(1, 2).reshape(m, b, q.shape[2], d)

        for i in range(cfg.depth):
            pre = f"blocks.{i}."
            n_mod = 9 if cfg.use_cross_attn else 6
            mod = lin(silu_c, pre + "adaLN_modulation").unsqueeze(2).chunk(n_mod, dim=-1)
            shift, scale, gate = mod[0], mod[1] + 1, mod[2]
            u = torch.addcmul(shift, F.layer_norm(h, (d,), eps=1e-6), scale)
            q, k, v = lin(u, pre + "attn.qkv").view(m, b, n, 3, heads, hd).unbind(3)
            q, k = self._qk_norm(P, q, f"dit.{pre}attn.q_norm"), self._qk_norm(P, k, f"dit.{pre}attn.k_norm")
            h = torch.addcmul(h, gate, lin(attention(q, k, v), pre + "attn.proj"))
            if cfg.use_cross_attn:
                shift, scale, gate = mod[3], mod[4] + 1, mod[5]
                t_count = brain_tokens.shape[2]
                ck, cv = lin(brain_tokens, pre + "cross_attn.kv").view(m, b, t_count, 2, heads, hd).unbind(3)
                ck = self._qk_norm(P, ck, f"dit.{pre}cross_attn.k_norm")
                u = torch.addcmul(shift, F.layer_norm(h, (d,), eps=1e-6), scale)
                q = self._qk_norm(P, lin(u, pre + "cross_attn.q").view(m, b, n, heads, hd), f"dit.{pre}cross_attn.q_norm")
                h = torch.addcmul(h, gate, lin(attention(q, ck, cv), pre + "cross_attn.proj"))
            shift, scale, gate = mod[-3], mod[-2] + 1, mod[-1]
            u = torch.addcmul(shift, F.layer_norm(h, (d,), eps=1e-6), scale)
            gate_ff, value = lin(u, pre + "mlp.w13", bias=False).chunk(2, dim=-1)
            h = torch.addcmul(h, gate, lin(F.silu(gate_ff) * value, pre + "mlp.w2", bias=False))
        shift, scale = lin(silu_c, "final_layer.adaLN_modulation").unsqueeze(2).chunk(2, dim=-1)
        out = lin(torch.addcmul(shift, F.layer_norm(h, (d,), eps=1e-6), scale + 1), "final_layer.proj")
        v = dit.unpatchify(out.reshape(m * b, n, -1))
        return v.view(m, b, *v.shape[1:])

    def _loss(self, P: dict[str, torch.Tensor], latents: torch.Tensor, voxels: torch.Tensor,
              prior: torch.Tensor | None, r: dict[str, Any]) -> torch.Tensor:
        """Per-member flow-matching losses (M,), as LatentFlowDecoder.training_loss_latents computes each,
        with the step's random tensors ``r`` (:meth:`_draw_randoms`); a pure function of its inputs."""
        fc = self.flow_cfg
        mean, std = self.buffers["latent_mean"], self.buffers["latent_std"]
        z = (latents - mean) / std
        brain_global, brain_tokens = self._encoder(P, voxels, r)
        if self.prior_conditioning:
            prior = (prior - mean) / std
        m, b = z.shape[:2]
        p = self.cond_drop_prob
        if p > 0:
            drop = r["cond"] < p  # (M, B)
            brain_global = torch.where(drop[..., None], P["uncond_global"], brain_global)
            brain_tokens = torch.where(drop[..., None, None], P["uncond_tokens"], brain_tokens)
            if prior is not None:
                # masked_fill's value, with where (a broadcast masked_fill over (M, B, ...) is slow on the CPU)
                prior = torch.where(drop.view(m, b, *([1] * (prior.ndim - 2))), 0.0, prior)
        t = torch.sigmoid(r["time"] * fc.logit_normal_std + fc.logit_normal_mean) if fc.logit_normal else r["time"]
        t = t.clamp(fc.sigma_min, 1.0 - fc.sigma_min)
        x0 = r["x0"]
        x_t = torch.lerp(x0, z, t.view(m, b, *([1] * (z.ndim - 2))))
        if prior is not None:
            x_t = torch.cat([x_t, prior], dim=2)
        v = self._dit(P, x_t, t, brain_global, brain_tokens)
        return (v - (z - x0)).square().flatten(1).mean(dim=1)

    # ── one step ──

    def train_step(self, batches: Sequence[Any]) -> torch.Tensor:
        """One optimizer step of every member on its own batch; returns the members' losses (M,)."""
        if len(batches) != self.n:
            raise CortexflowInputError(f"need one batch per member ({self.n}), got {len(batches)}")
        latents = torch.stack([bt[0] for bt in batches])
        voxels = torch.stack([bt[1].voxels for bt in batches])
        priors = [bt[1].prior for bt in batches]
        prior = None if priors[0] is None else torch.stack(priors)
        for p in self.params.values():
            p.grad = None
        randoms = self._draw_randoms(latents.shape[1], voxels.shape[2])
        losses = self._loss_fn(self.params, latents, voxels, prior, randoms)
        losses.sum().backward()
        if self.config.grad_clip:
            self.last_grad_norms = self._clip(self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.use_ema:
            self._ema_update()
        self.step += 1
        return losses.detach()

    @torch.no_grad()
    def _clip(self, max_norm: float) -> torch.Tensor:
        """clip_grad_norm_ per member: each member's global 2-norm over its own gradient slices."""
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        norms = torch.stack([torch.linalg.vector_norm(g.reshape(self.n, -1), 2, dim=1) for g in grads])
        total = torch.linalg.vector_norm(norms, 2, dim=0)  # (M,)
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for g in grads:
            g.mul_(coef.view(self.n, *([1] * (g.ndim - 1))))
        return total

    @torch.no_grad()
    def _ema_update(self) -> None:
        decay = self.config.ema_decay
        if self.config.ema_warmup:
            decay = min(decay, (1.0 + self.ema_num_updates) / (10.0 + self.ema_num_updates))
        names = list(self.ema_shadow)
        torch._foreach_lerp_([self.ema_shadow[k] for k in names], [self.params[k].detach() for k in names],
                             1.0 - decay)
        self.ema_num_updates += 1

    @property
    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    # ── the members as models of their own ──

    def _member_from(self, source: dict[str, torch.Tensor], m: int) -> nn.Module:
        model = copy.deepcopy(self.templates[m])
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in source:
                    p.copy_(source[n][m])
        return model

    def member(self, m: int) -> nn.Module:
        """Member ``m`` with its current (last-iterate) weights, as a model of its own."""
        return self._member_from(self.params, m)

    def ema_member(self, m: int) -> nn.Module:
        """Member ``m`` with its EMA weights (what the stage saves)."""
        if not self.use_ema:
            return self.member(m)
        return self._member_from(self.ema_shadow, m)

    # ── checkpoints ──

    def state_dict(self, run_tag: str | None = None) -> dict[str, Any]:
        return {
            "step": self.step,
            "params": {k: v.detach().clone() for k, v in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": {"num_updates": self.ema_num_updates, "shadow": {k: v.clone() for k, v in self.ema_shadow.items()}},
            "generators": [g.get_state() for g in self.generators],
            "curves": [c.rows for c in self.curves],
            "configs": [asdict(c) for c in self.configs],
            "run_tag": run_tag,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, v in state["params"].items():
                self.params[k].copy_(v)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.ema_num_updates = int(state["ema"]["num_updates"])
        for k, v in state["ema"]["shadow"].items():
            self.ema_shadow[k].copy_(v)
        for g, s in zip(self.generators, state["generators"]):
            g.set_state(s)
        for c, rows in zip(self.curves, state["curves"]):
            c.rows = list(rows)
        self.step = int(state["step"])

    def _try_resume(self, path: Path, run_tag: str | None) -> bool:
        state = torch.load(path, map_location="cpu", weights_only=False)
        mine = [asdict(c) for c in self.configs]
        if state.get("run_tag") != run_tag or state.get("configs") != mine:
            log.warning("not resuming %s: another run (tag or settings differ); training from scratch", path)
            return False
        self.load_state_dict(state)
        log.info("resumed %s at step %d", path, self.step)
        return True

    def save_checkpoint(self, path: Path, run_tag: str | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(run_tag), tmp)
        tmp.replace(path)

    # ── many steps ──

    def fit(self, batch_fns: Sequence[Callable[[int, torch.Generator], Any]], steps: int | None = None,
            checkpoint_dir: str | Path | None = None, run_tag: str | None = None,
            name: str = "ensemble", member_names: Sequence[str] | None = None) -> EnsembleResult:
        """Train every member to step ``steps`` (default ``max_steps``); ``batch_fns[m](step, generator)``
        gives member m's batch (the generator argument is a fresh one per member, as the Trainer's
        ``data_generator``, for batch functions that want it). Checkpoints (every
        ``checkpoint_every`` steps and at the end) resume the whole ensemble. Progress is logged one
        line per member, named ``member_names[m]`` (default ``<name>[m]``); on SIGTERM the ensemble
        checkpoints after the step in progress and raises ``TrainingInterrupted``."""
        cfg = self.config
        member_names = list(member_names or [f"{name}[{m}]" for m in range(self.n)])
        if len(batch_fns) != self.n:
            raise CortexflowInputError(f"need one batch function per member ({self.n}), got {len(batch_fns)}")
        target = cfg.max_steps if steps is None else int(steps)
        ckpt = None if checkpoint_dir is None else Path(checkpoint_dir) / "ensemble_last.pt"
        resumed = ckpt is not None and ckpt.exists() and self._try_resume(ckpt, run_tag)
        data_generators = [torch.Generator().manual_seed(s) for s in self.seeds]
        result = EnsembleResult(start_step=self.step, final_step=self.step, resumed=resumed,
                                losses=[[] for _ in range(self.n)])
        started = time.perf_counter()
        offset = self.curves[0].elapsed_s if self.curves[0].rows else 0.0
        window: list[torch.Tensor] = []
        since: list[list[float]] = [[] for _ in range(self.n)]
        # SIGTERM (a SLURM time limit, a kill): checkpoint after the step in progress and stop, as Trainer.fit
        received: list[int] = []
        install = threading.current_thread() is threading.main_thread()
        if install:
            previous_handler = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
        bar = tqdm(total=target, initial=self.step, desc=name, unit="step", disable=None)
        try:
            while self.step < target:
                batches = [fn(self.step, g) for fn, g in zip(batch_fns, data_generators)]
                window.append(self.train_step(batches))
                bar.update(1)
                stopping = bool(received)
                log_now = self.step % cfg.log_every == 0 or self.step == target
                ckpt_now = ckpt is not None and (self.step % cfg.checkpoint_every == 0 or self.step == target
                                                 or stopping)
                if log_now or ckpt_now or stopping:
                    values = torch.stack(window).T.tolist()  # [member][step]
                    window.clear()
                    for m, vals in enumerate(values):
                        bad = [v for v in vals if not math.isfinite(v)]
                        if bad:
                            raise FloatingPointError(f"member {m} (seed {self.seeds[m]}): loss {bad[0]} "
                                                     f"by step {self.step}")
                        result.losses[m].extend(vals)
                        since[m].extend(vals)
                    if log_now:
                        seconds = offset + time.perf_counter() - started
                        norms = None if self.last_grad_norms is None else self.last_grad_norms.tolist()
                        for m in range(self.n):
                            self.curves[m].append(self.step, sum(since[m]) / len(since[m]), self.learning_rate,
                                                  None if norms is None else norms[m], seconds)
                            since[m].clear()
                        rate = (self.step - result.start_step) / max(time.perf_counter() - started, 1e-9)
                        for m, c in enumerate(self.curves):  # each member's line, as its single run logs it
                            log.info("%s: %s", member_names[m], progress_line(self.step, target, c.rows[-1][1],
                                                                            self.learning_rate, c.rows[-1][3],
                                                                            seconds, rate))
                if ckpt_now:
                    self.save_checkpoint(ckpt, run_tag)
                if stopping:
                    where = f"checkpoint {ckpt}; run again to resume" if ckpt else "no checkpoint_dir"
                    log.warning("SIGTERM at step %d: stopping (%s)", self.step, where)
                    raise TrainingInterrupted(f"stopped by SIGTERM at step {self.step} ({where})")
        finally:
            bar.close()
            if install:
                signal.signal(signal.SIGTERM, previous_handler)
        result.final_step = self.step
        result.seconds = time.perf_counter() - started
        return result


def _check_supported(model: nn.Module) -> None:
    from cortexflow.models.brain_encoder import BrainEncoder
    from cortexflow.models.dit import DiffusionTransformer
    from cortexflow.models.latent_flow import LatentFlowDecoder

    if not isinstance(model, LatentFlowDecoder):
        raise CortexflowInputError(f"the ensemble trainer trains latent-flow decoders, not {type(model).__name__}")
    if type(model.brain_encoder) is not BrainEncoder:
        raise CortexflowInputError("the ensemble trainer supports the global BrainEncoder only (decoder.encoder: global)")
    if type(model.dit) is not DiffusionTransformer:
        raise CortexflowInputError(f"the ensemble trainer supports DiffusionTransformer, not {type(model.dit).__name__}")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise CortexflowInputError("the ensemble trainer runs on the CPU only")


def train_ensemble(models: Sequence[nn.Module], configs: Sequence[TrainingConfig],
                   batch_fns: Sequence[Callable[[int, torch.Generator], Any]], steps: int | None = None,
                   checkpoint_dir: str | Path | None = None, run_tag: str | None = None,
                   name: str = "ensemble", member_names: Sequence[str] | None = None
                   ) -> tuple[EnsembleTrainer, EnsembleResult]:
    """Train ``models`` (one per seed, each built as its single run builds it) as one stacked model;
    returns the trainer (``member``/``ema_member``/``curves``) and what the fit did."""
    trainer = EnsembleTrainer(models, configs)
    result = trainer.fit(batch_fns, steps, checkpoint_dir=checkpoint_dir, run_tag=run_tag, name=name,
                         member_names=member_names)
    return trainer, result

