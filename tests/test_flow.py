"""Rectified flow: time distributions, solvers on a known ODE, guidance, noise,
and a 2-D toy distribution learned to the right mean and covariance."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn as nn

from cortexflow.errors import CortexflowInputError
from cortexflow.models.dit import DiffusionTransformer, DiTConfig
from cortexflow.models.flow import FlowConfig, RectifiedFlowMatcher, integrate, shift_time, time_grid



def test_logit_normal_times_follow_their_distribution():
    fm = RectifiedFlowMatcher(FlowConfig(logit_normal_mean=0.5, logit_normal_std=0.8))
    t = fm.sample_timesteps(20000, generator=torch.Generator().manual_seed(0))
    assert 0 < t.min() and t.max() < 1
    logits = torch.log(t / (1 - t))
    assert abs(logits.mean().item() - 0.5) < 0.03
    assert abs(logits.std().item() - 0.8) < 0.03
    uniform = RectifiedFlowMatcher(FlowConfig(logit_normal=False)).sample_timesteps(20000)
    assert abs(uniform.mean().item() - 0.5) < 0.01 and abs(uniform.var().item() - 1 / 12) < 0.003


def test_sd3_time_shift():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    shifted = shift_time(t, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1
    assert torch.all(shifted[1:] > shifted[:-1])
    # sigma = 0.5 -> 3 * 0.5 / (1 + 2 * 0.5) = 0.75, so t = 0.25: more steps near the noise end
    assert shifted[5].item() == pytest.approx(0.25)
    assert torch.equal(shift_time(t, 1.0), t)
    grid = time_grid(4, shift=3.0)
    assert len(grid) == 5 and grid[0] == 0 and grid[-1] == 1


def _linear_ode_error(solver: str, steps: int) -> float:
    # dx/dt = (1 + 2t) x, so x(1) = x(0) exp(∫_0^1 (1 + 2t) dt) = x(0) e^2
    def velocity(x, t):
        return (1.0 + 2.0 * t) * x

    x0 = torch.tensor([1.0, -0.5], dtype=torch.float64)
    exact = x0 * math.exp(2.0)
    return (integrate(velocity, x0, steps, solver) - exact).abs().max().item()


def test_second_order_solvers_beat_euler_on_a_linear_ode():
    euler, midpoint, heun = (_linear_ode_error(s, 10) for s in ("euler", "midpoint", "heun"))
    assert midpoint < euler / 5 and heun < euler / 5
    # convergence orders: halving the step divides the error by ~2 (Euler) and ~4 (Heun, midpoint)
    assert 1.7 < euler / _linear_ode_error("euler", 20) < 2.3
    assert 3.4 < heun / _linear_ode_error("heun", 20) < 4.6
    assert 3.4 < midpoint / _linear_ode_error("midpoint", 20) < 4.6


def test_unknown_solver_lists_the_valid_ones():
    with pytest.raises(CortexflowInputError, match="'euler', 'midpoint', 'heun'"):
        integrate(lambda x, t: x, torch.zeros(1), 2, "rk45")
    with pytest.raises(CortexflowInputError, match="unknown ODE solver 'dopri'"):
        FlowConfig(solver="dopri")
    with pytest.raises(CortexflowInputError, match="num_steps"):
        integrate(lambda x, t: x, torch.zeros(1), 0, "euler")


class _CountingDiT(DiffusionTransformer):
    """A DiT that records the batch size of every network call."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.calls: list[int] = []

    def forward_prepared(self, x, t, condition):
        self.calls.append(x.shape[0])
        return super().forward_prepared(x, t, condition)


def _random_dit(in_channels=4, out_channels=None) -> _CountingDiT:
    cfg = DiTConfig(
        in_channels=in_channels, out_channels=out_channels, hidden_dim=32, depth=2, num_heads=4, cond_dim=16, input_size=(4, 4)
    )
    model = _CountingDiT(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _condition(batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 4, 4, 4, generator=g),
        torch.randn(batch, 16, generator=g),
        torch.randn(batch, 5, 16, generator=g),
        torch.randn(1, 16, generator=g),
        torch.randn(1, 5, 16, generator=g),
    )


def test_guidance_scale_one_is_exactly_the_conditional_velocity():
    model = _random_dit()
    x, g, tok, g0, tok0 = _condition()
    t = torch.tensor(0.3)
    fm = RectifiedFlowMatcher()
    with torch.no_grad():
        v = fm.velocity_fn(model, g, tok, 1.0, g0, tok0, precision="fp32")(x, t)
        assert model.calls == [3]  # the unconditional half is not even computed
        assert torch.equal(v, model(x, t, g, tok))


def test_batched_guidance_equals_two_separate_passes():
    model = _random_dit()
    x, g, tok, g0, tok0 = _condition()
    t = torch.tensor(0.6)
    with torch.no_grad():
        v = RectifiedFlowMatcher().velocity_fn(model, g, tok, 4.0, g0, tok0, precision="fp32")(x, t)
        assert model.calls == [6]  # one network call on the stacked 2B batch
        v_cond = model(x, t, g, tok)
        v_uncond = model(x, t, g0.expand(3, -1), tok0.expand(3, -1, -1))
    assert not torch.allclose(v_cond, v_uncond)
    torch.testing.assert_close(v, v_uncond + 4.0 * (v_cond - v_uncond), rtol=1e-5, atol=1e-5)


def test_guidance_with_prior_zeroes_the_unconditional_prior():
    model = _random_dit(in_channels=8, out_channels=4)
    x, g, tok, g0, tok0 = _condition()
    prior = torch.randn_like(x)
    t = torch.tensor(0.5)
    with torch.no_grad():
        v = RectifiedFlowMatcher().velocity_fn(model, g, tok, 2.0, g0, tok0, prior=prior, precision="fp32")(x, t)
        v_cond = model(torch.cat([x, prior], 1), t, g, tok)
        v_uncond = model(torch.cat([x, torch.zeros_like(prior)], 1), t, g0.expand(3, -1), tok0.expand(3, -1, -1))
    torch.testing.assert_close(v, v_uncond + 2.0 * (v_cond - v_uncond), rtol=1e-5, atol=1e-5)


def test_sampling_noise_is_independent_per_sample_and_reproducible():
    model = _random_dit()
    _, g, tok, g0, tok0 = _condition()
    same_g, same_tok = g[:1].expand(3, -1), tok[:1].expand(3, -1, -1)
    fm = RectifiedFlowMatcher()

    def run(seed):
        return fm.sample(
            model, (3, 4, 4, 4), same_g, same_tok, num_steps=4, cfg_scale=2.0,
            brain_global_uncond=g0, brain_tokens_uncond=tok0, generator=torch.Generator().manual_seed(seed),
        )

    a = run(1)
    assert not torch.allclose(a[0], a[1]) and not torch.allclose(a[1], a[2])
    assert torch.equal(a, run(1))
    assert not torch.allclose(a, run(2))
    assert model.calls == [6] * 12  # 3 runs x 4 Euler steps, one batched call each


def test_sampling_precision_resolves_per_device(monkeypatch):
    from cortexflow.models import flow

    assert flow.sampling_dtype("fp32", "cpu") is None
    assert flow.sampling_dtype("BF16", "cpu") is torch.bfloat16
    monkeypatch.setattr(flow, "_cpu_has_native_bf16", lambda: False)
    assert flow.sampling_dtype("auto", "cpu") is None  # emulated bf16 would be slower than fp32
    monkeypatch.setattr(flow, "_cpu_has_native_bf16", lambda: True)
    assert flow.sampling_dtype("auto", "cpu") is torch.bfloat16
    with pytest.raises(CortexflowInputError, match="'auto', 'fp32', 'bf16'"):
        flow.sampling_dtype("fp16", "cpu")
    with pytest.raises(CortexflowInputError, match="unknown sampling precision"):
        FlowConfig(precision="half")


def test_bf16_sampling_runs_the_network_in_bf16_and_keeps_the_state_fp32():
    model = _random_dit()
    x, g, tok, g0, tok0 = _condition()
    t = torch.tensor(0.4)
    fm = RectifiedFlowMatcher()
    with torch.no_grad():
        v32 = fm.velocity_fn(model, g, tok, 4.0, g0, tok0, precision="fp32")(x, t)
        v16 = fm.velocity_fn(model, g, tok, 4.0, g0, tok0, precision="bf16")(x, t)
    assert v16.dtype == torch.float32
    assert not torch.equal(v16, v32)  # the network really ran in bf16
    assert (v16 - v32).norm() / v32.norm() < 0.03  # bf16 keeps ~3 significant digits, guidance x4 included
    samples = fm.sample(model, (3, 4, 4, 4), g, tok, num_steps=4, cfg_scale=4.0, brain_global_uncond=g0,
                        brain_tokens_uncond=tok0, generator=torch.Generator().manual_seed(0), precision="bf16")
    assert samples.dtype == torch.float32


class _ToyVelocity(nn.Module):
    """Seed-style model ``(x, t, brain_global, brain_tokens) -> v`` for 2-D points;
    the 1-D brain_global shifts the target distribution."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(4, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2)
        )

    def forward(self, x, t, brain_global, brain_tokens=None):
        return self.net(torch.cat([x, t.view(-1, 1), brain_global], dim=1))


def test_flow_matching_learns_a_conditional_2d_gaussian():
    # Uniform training times: logit-normal times (the default, tested above) rarely
    # visit t near 0 and 1, and on this 2-D toy shrink the sampled variance by ~20%.
    torch.manual_seed(0)
    mean = torch.tensor([2.0, -1.0])
    cov = torch.tensor([[0.5, 0.3], [0.3, 0.4]])
    chol = torch.linalg.cholesky(cov)
    model = _ToyVelocity()
    fm = RectifiedFlowMatcher(FlowConfig(logit_normal=False))
    steps = 300
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        c = torch.randint(0, 2, (1024, 1), generator=gen).float()  # condition c shifts x by 2c
        data = mean + torch.randn(1024, 2, generator=gen) @ chol.T + torch.cat([2 * c, 0 * c], 1)
        loss = fm.compute_loss(model, data, c, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    for (c, offset), precision in itertools.product(((0.0, 0.0), (1.0, 2.0)), ("fp32", "bf16")):
        cond = torch.full((4000, 1), c)
        samples = fm.sample(model, (4000, 2), cond, num_steps=20, solver="heun", precision=precision,
                            generator=torch.Generator().manual_seed(2))
        target = mean + torch.tensor([offset, 0.0])
        assert torch.allclose(samples.mean(0), target, atol=0.1), samples.mean(0)
        assert torch.allclose(torch.cov(samples.T), cov, atol=0.1), torch.cov(samples.T)
