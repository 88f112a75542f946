"""The seed library's documented building blocks, reached through its module
paths (``cortexflow.dit``, ``cortexflow.flow_matching``, ``cortexflow.vae``,
``cortexflow.training``, ``cortexflow._types``), checked by value: the
documented defaults, adaLN-Zero (every block starts as the identity and still
learns), the flow-matching objective as written on the seed's page, the
solvers a ``FlowConfig`` selects, the residual blocks, and a trainer
checkpoint that resumes the same trajectory."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- documented defaults


def test_configs_have_the_seed_defaults():
    from cortexflow._types import DiTConfig, FlowConfig, TrainingConfig, VAEConfig

    dit = DiTConfig()
    assert (dit.in_channels, dit.hidden_dim, dit.depth, dit.num_heads, dit.patch_size, dit.cond_dim) == (
        4, 768, 12, 12, 2, 768)
    assert (dit.mlp_ratio, dit.qk_norm, dit.use_cross_attn) == (4.0, True, True)
    flow = FlowConfig()
    assert (flow.num_steps, flow.logit_normal, flow.solver, flow.cfg_scale) == (50, True, "euler", 4.0)
    assert FlowConfig(solver="midpoint").solver == "midpoint"
    train = TrainingConfig()
    assert (train.learning_rate, train.batch_size, train.ema_decay) == (1e-4, 16, 0.9999)
    vae = VAEConfig()
    assert (vae.in_channels, vae.latent_channels, vae.hidden_dims) == (3, 4, [64, 128, 256, 512])
    custom = DiTConfig(hidden_dim=96, depth=3, num_heads=6)
    assert (custom.hidden_dim, custom.depth, custom.num_heads, custom.cond_dim) == (96, 3, 6, 768)


# ----------------------------------------------------------------------------- DiT pieces


def test_timestep_embedding_is_a_function_of_each_time_alone():
    from cortexflow.dit import TimestepEmbedding

    torch.manual_seed(0)
    emb = TimestepEmbedding(24)
    times = torch.tensor([0.0, 0.25, 0.25, 0.9])
    batch = emb(times)
    assert batch.shape == (4, 24) and emb(torch.tensor(0.25)).shape == (1, 24)
    for i, t in enumerate(times):  # row i depends on t_i only, scalar or batched
        torch.testing.assert_close(emb(t), batch[i : i + 1])
    assert torch.equal(batch[1], batch[2])
    gaps = [(batch[i] - batch[j]).abs().max().item() for i, j in ((0, 1), (1, 3), (0, 3))]
    assert min(gaps) > 1e-3  # distinct times, distinct embeddings


def test_swiglu_computes_the_gated_feed_forward():
    from cortexflow.dit import SwiGLU

    torch.manual_seed(0)
    ff = SwiGLU(12, 20)
    x = torch.randn(2, 5, 12)
    out = ff(x)
    assert out.shape == (2, 5, 12)
    w1, w3 = ff.w13.weight[:20], ff.w13.weight[20:]
    expected = (F.silu(x @ w1.T) * (x @ w3.T)) @ ff.w2.weight.T
    torch.testing.assert_close(out, expected)


def _small_dit(**kw):
    from cortexflow.dit import DiffusionTransformer, DiTConfig

    cfg = DiTConfig(in_channels=4, hidden_dim=32, depth=2, num_heads=4, cond_dim=16, **kw)
    return DiffusionTransformer(cfg, img_size=8)


def test_every_fresh_block_is_the_identity_and_the_output_is_zero():
    """adaLN-Zero: the gates start at zero, so each block returns its input exactly."""
    torch.manual_seed(0)
    model = _small_dit()
    seen = []
    hooks = [b.register_forward_hook(lambda m, args, out: seen.append((args[0], out))) for b in model.blocks]
    x, t = torch.randn(3, 4, 8, 8), torch.rand(3)
    out = model(x, t, torch.randn(3, 16), torch.randn(3, 5, 16))
    for h in hooks:
        h.remove()
    assert len(seen) == 2 and all(torch.equal(inp, res) for inp, res in seen)
    assert out.shape == x.shape and torch.count_nonzero(out) == 0


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_gradients_reach_every_parameter_within_three_steps(kind):
    """Zero-initialised gates block the gradient to the blocks at step 0 only:
    after the output layer moves, every weight of the DiT (and of the seed's
    AudioDiT) takes part in training."""
    from cortexflow.brain2audio import AudioDiT

    torch.manual_seed(0)
    if kind == "image":
        model, x = _small_dit(), torch.randn(4, 4, 8, 8)
    else:
        model, x = AudioDiT(n_mels=6, seq_len=10, hidden_dim=32, depth=2, num_heads=4, cond_dim=16), torch.randn(4, 6, 10)
        assert model(x, torch.rand(4), torch.randn(4, 16)).shape == x.shape
    g, tok, t = torch.randn(4, 16), torch.randn(4, 3, 16), torch.rand(4)
    target = torch.randn_like(x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    touched = {name: False for name, _ in model.named_parameters()}
    for _ in range(3):
        opt.zero_grad()
        F.mse_loss(model(x, t, g, tok), target).backward()
        for name, p in model.named_parameters():
            touched[name] |= bool(p.grad is not None and p.grad.abs().sum() > 0)
        opt.step()
    assert all(touched.values()), [n for n, ok in touched.items() if not ok]


def test_modulate_and_residual_blocks_by_value():
    from cortexflow.dit import modulate
    from cortexflow.vae import ResBlock, ResBlock1D

    torch.manual_seed(0)
    x, shift, scale = torch.randn(2, 3, 4), torch.randn(2, 4), torch.randn(2, 4)
    torch.testing.assert_close(modulate(x, shift, scale)[1, 2], x[1, 2] * (1 + scale[1]) + shift[1])
    for block, shape in ((ResBlock(8), (2, 8, 5, 5)), (ResBlock1D(8), (2, 8, 7))):
        inp = torch.randn(shape)
        out = block(inp)
        assert out.shape == shape and not torch.allclose(out, inp)
        last = block.block[-1]  # the residual branch ends in a convolution
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
        assert torch.equal(block(inp), inp)  # branch silenced: the skip connection alone


# ----------------------------------------------------------------------------- flow matching


class _Linear(nn.Module):
    """Velocity model with the seed's call signature: v = W x + a t + c."""

    def __init__(self, dim: int):
        super().__init__()
        self.w = nn.Linear(dim, dim)
        self.a = nn.Parameter(torch.randn(dim))

    def forward(self, x, t, brain_global, brain_tokens=None):
        return self.w(x) + t.view(-1, 1) * self.a + brain_global


def test_compute_loss_is_the_documented_objective():
    """L = E || v(x_t, t, c) - (x_1 - x_0) ||^2 with x_t = (1 - t) x_0 + t x_1."""
    from cortexflow.flow_matching import RectifiedFlowMatcher

    torch.manual_seed(0)
    model, fm = _Linear(3), RectifiedFlowMatcher()
    x1, c = torch.randn(5, 3) * 2 + 1, torch.randn(5, 3)
    loss = fm.compute_loss(model, x1, c, generator=_gen(7))
    replay = _gen(7)  # the same draws, in the same order: times, then noise
    t = fm.sample_timesteps(5, generator=replay)
    x0 = torch.randn(5, 3, generator=replay)
    xt = (1 - t[:, None]) * x0 + t[:, None] * x1
    expected = ((model(xt, t, c) - (x1 - x0)) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert model.w.weight.grad.abs().sum() > 0 and model.a.grad.abs().sum() > 0


def test_untrained_dit_loss_is_the_data_plus_noise_variance():
    # adaLN-Zero: v = 0, so the loss is E|x_1 - x_0|^2 = var(x_1) + 1 per element.
    from cortexflow.flow_matching import RectifiedFlowMatcher

    torch.manual_seed(0)
    x1 = 2.0 * torch.randn(64, 4, 8, 8, generator=_gen(1))
    loss = RectifiedFlowMatcher().compute_loss(_small_dit(), x1, torch.randn(64, 16), generator=_gen(2))
    assert loss.item() == pytest.approx(5.0, rel=0.05)


class _TimeRamp(nn.Module):
    """v(x, t, c) = 2 t c: the exact flow from x_0 ends at x_0 + c."""

    def forward(self, x, t, brain_global, brain_tokens=None):
        return 2 * t.view(-1, 1) * brain_global


@pytest.mark.parametrize("solver, steps, error", [("euler", 4, 0.25), ("midpoint", 4, 0.0), ("euler", 1, 1.0)])
def test_sample_integrates_with_the_configured_solver(solver, steps, error):
    from cortexflow._types import FlowConfig
    from cortexflow.flow_matching import RectifiedFlowMatcher

    fm = RectifiedFlowMatcher(FlowConfig(solver=solver, num_steps=steps))
    c, x0 = torch.randn(3, 2), torch.randn(3, 2)
    out = fm.sample(_TimeRamp(), (3, 2), c, noise=x0, cfg_scale=1.0)
    # Euler on a linear-in-t velocity lags by c / steps; midpoint is exact.
    torch.testing.assert_close(out, x0 + (1 - error) * c, rtol=1e-5, atol=1e-5)
    drawn = fm.sample(_TimeRamp(), (3, 2), c, generator=_gen(4), cfg_scale=1.0)
    torch.testing.assert_close(drawn, torch.randn(3, 2, generator=_gen(4)) + (1 - error) * c, rtol=1e-5, atol=1e-5)


def test_guided_sample_follows_the_guided_velocity():
    """With v = 2 t c, guidance w gives v_u + w (v_c - v_u): the end point moves
    to x_0 + c_u + w (c - c_u)."""
    from cortexflow.flow_matching import RectifiedFlowMatcher

    fm = RectifiedFlowMatcher()
    c, c_u, x0 = torch.randn(2, 3), torch.randn(1, 3), torch.randn(2, 3)
    out = fm.sample(_TimeRamp(), (2, 3), c, num_steps=3, solver="midpoint", cfg_scale=3.0,
                    brain_global_uncond=c_u, noise=x0)
    torch.testing.assert_close(out, x0 + c_u + 3.0 * (c - c_u), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- training utilities


def test_scheduler_current_lr_warms_up_decays_and_keeps_its_floor():
    from cortexflow.training import WarmupCosineScheduler

    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(2))], lr=1e-3)
    sched = WarmupCosineScheduler(opt, warmup_steps=5, total_steps=25, min_lr_ratio=0.2)
    lrs = [sched.current_lr]
    for _ in range(40):
        opt.step()
        sched.step()
        lrs.append(sched.current_lr)
    assert lrs[:5] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4, 1e-3])
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert min(lrs) == pytest.approx(2e-4) and lrs[-1] == pytest.approx(2e-4)


def test_trainer_checkpoint_resumes_the_same_trajectory(tmp_path):
    from cortexflow import BrainData, Trainer, TrainingConfig, build_brain2img

    def loss_fn(m, b):
        return m.training_loss(b["stimulus"], BrainData(voxels=b["fmri"]), cfg_dropout=0.0)

    def fresh():
        torch.manual_seed(0)
        model = build_brain2img(n_voxels=20, img_size=8, hidden_dim=16, depth=1, num_heads=2)
        return Trainer(model, TrainingConfig(learning_rate=1e-3, warmup_steps=1, ema_decay=0.9, device="cpu"))

    g = _gen(0)
    batches = [{"fmri": torch.randn(2, 20, generator=g), "stimulus": torch.rand(2, 3, 8, 8, generator=g)}
               for _ in range(4)]
    first = fresh()
    assert first.ema is not None and first.global_step == 0
    for b in batches[:2]:
        first.train_step(b, loss_fn)
    path = first.save_checkpoint(tmp_path / "ckpt.pt")
    torch.manual_seed(1)  # the loss draws times and noise from torch's RNG: same state for both
    tail = [first.train_step(b, loss_fn) for b in batches[2:]]

    second = fresh()
    second.load_checkpoint(path)
    assert second.global_step == 2
    torch.manual_seed(1)
    assert [second.train_step(b, loss_fn) for b in batches[2:]] == tail
    for (name, p), q in zip(first.model.named_parameters(), second.model.parameters()):
        assert torch.equal(p, q), name
    for name, shadow in first.ema.shadow.items():
        assert torch.equal(shadow, second.ema.shadow[name]), name
