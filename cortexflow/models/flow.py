"""Rectified flow matching: training loss, time schedules, ODE samplers, guidance.

Conventions (the seed library's, kept): ``x_0`` is Gaussian noise, ``x_1`` is
data, the path is the straight line

    x_t = (1 - t) x_0 + t x_1,                       t in [0, 1]

and the network regresses its constant velocity ``x_1 - x_0`` (Liu et al. 2022,
arXiv:2209.03003; Lipman et al. 2023, arXiv:2210.02747, "conditional flow
matching" with sigma_min -> 0). Sampling integrates dx/dt = v(x, t) from t = 0
(noise) to t = 1 (data).

- Training times are logit-normal, ``t = sigmoid(m + s * n)`` (Esser et al.
  2024, arXiv:2403.03206, Sec. 3.1 "lognorm"), which spends more of the
  training signal on intermediate times, where the velocity is hardest.
- The sampling grid may be warped by the SD3 time shift (Esser et al. 2024,
  Eq. 23): with noise level ``sigma = 1 - t``,
  ``sigma' = shift * sigma / (1 + (shift - 1) * sigma)``; ``shift > 1`` spends
  more steps near the noise end.
- Solvers: Euler (1 evaluation per step), explicit midpoint and Heun
  (2 evaluations per step, second order).
- Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598):
  ``v = v_u + w (v_c - v_u)``. Both halves go through the network in ONE
  batched call; with ``w == 1`` the unconditional half is not computed at all
  and the result is exactly the conditional velocity.
- Precision: the network may run under bf16 autocast while the ODE state, the
  guidance combination and the time grid stay in float32 (``precision``;
  ``"auto"`` picks bf16 where the hardware multiplies bf16 natively).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from cortexflow.errors import CortexflowInputError

log = logging.getLogger("cortexflow.models.flow")

__all__ = [
    "PRECISIONS",
    "SOLVERS",
    "FlowConfig",
    "RectifiedFlowMatcher",
    "check_precision",
    "check_solver",
    "integrate",
    "random_tensor",
    "sampling_dtype",
    "shift_time",
    "time_grid",
]

SOLVERS = ("euler", "midpoint", "heun")
PRECISIONS = ("auto", "fp32", "bf16")

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _one_of(value: str, choices: tuple[str, ...], what: str) -> str:
    name = str(value).lower()
    if name not in choices:
        raise CortexflowInputError(f"unknown {what} {value!r}", fix=f"use one of {', '.join(map(repr, choices))}")
    return name


def check_solver(solver: str) -> str:
    """Return ``solver`` lower-cased if it is one of :data:`SOLVERS`, else raise."""
    return _one_of(solver, SOLVERS, "ODE solver")


@dataclass
class FlowConfig:
    """Settings of :class:`RectifiedFlowMatcher` (the seed's fields and defaults,
    plus ``shift``).

    sigma_min: training times are clamped to [sigma_min, 1 - sigma_min].
    logit_normal: sample training times from sigmoid(N(mean, std^2)), else U(0, 1).
    num_steps, solver, cfg_scale, shift, precision: the library's sampling
    defaults (the seed's), the one home of the defaults of ``integrate`` and of
    the decoders' ``sample_latents``/``reconstruct``; the workflow's own
    defaults (fewer steps, guidance 2, chosen on the validation fold) are
    ``cortexflow.models.params.SamplingParams``, config section ``sampling``.
    """

    num_steps: int = 50
    sigma_min: float = 1e-5
    logit_normal: bool = True
    logit_normal_mean: float = 0.0
    logit_normal_std: float = 1.0
    solver: str = "euler"
    cfg_scale: float = 4.0
    shift: float = 1.0
    precision: str = "auto"

    def __post_init__(self) -> None:
        self.solver = check_solver(self.solver)
        self.precision = check_precision(self.precision)
        _check_steps(self.num_steps)
        _check_shift(self.shift)
        if not 0.0 <= self.sigma_min < 0.5:
            raise CortexflowInputError(f"FlowConfig.sigma_min must be in [0, 0.5), got {self.sigma_min}")
        if self.logit_normal_std <= 0:
            raise CortexflowInputError(f"FlowConfig.logit_normal_std must be positive, got {self.logit_normal_std}")


def check_precision(precision: str) -> str:
    """Return ``precision`` lower-cased if it is one of :data:`PRECISIONS`, else raise."""
    return _one_of(precision, PRECISIONS, "sampling precision")


def _cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: oneDNN multiplies bf16 in hardware (else it emulates, slower than fp32)."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(bool(getattr(cpu, name)()) for name in checks if hasattr(cpu, name))
    except Exception:  # a private helper that changed: fall back to the safe choice
        return False


def sampling_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype the network runs in while sampling on ``device``; None is float32.

    ``"fp32"``: float32 throughout. ``"bf16"``: bf16 autocast on any device.
    ``"auto"``: bf16 where it is native and faster: CUDA devices with bf16
    support, and CPUs with AVX512-BF16 or AMX (on a 2-core AMD EPYC with
    AVX512-BF16, guided DiT sampling ran about 2x faster, benchmarks/bench_models.py);
    float32 elsewhere. Only the network's matrix products drop to bf16
    (autocast keeps normalisations and softmax in float32); the ODE state and
    the guidance combination stay float32.
    """
    precision = check_precision(precision)
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if _cpu_has_native_bf16() else None
    return None


def _check_steps(num_steps: int) -> int:
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise CortexflowInputError(f"num_steps must be a positive integer, got {num_steps!r}")
    return num_steps


def _check_shift(shift: float) -> float:
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise CortexflowInputError(
            f"time shift must be a positive number, got {shift!r}", fix="use 1.0 for no shift, > 1 for more noise-end steps"
        )
    return float(shift)


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3 time shift (Esser et al. 2024, Eq. 23) in this module's convention.

    t = 0 is noise, so the noise level is ``sigma = 1 - t``; the shifted noise
    level is ``shift * sigma / (1 + (shift - 1) * sigma)``. Fixes 0 and 1.
    """
    if shift == 1.0:
        return t
    sigma = 1.0 - t
    return 1.0 - shift * sigma / (1.0 + (shift - 1.0) * sigma)


def time_grid(num_steps: int, shift: float = 1.0, device: torch.device | str | None = None) -> torch.Tensor:
    """``num_steps + 1`` times from 0 to 1 (uniform, then shifted), float64."""
    grid = torch.linspace(0.0, 1.0, _check_steps(num_steps) + 1, dtype=torch.float64, device=device)
    return shift_time(grid, _check_shift(shift))


def integrate(
    velocity: VelocityFn,
    x: torch.Tensor,
    num_steps: int = FlowConfig.num_steps,
    solver: str = FlowConfig.solver,
    shift: float = FlowConfig.shift,
    progress: bool = False,
) -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t) from t = 0 to 1 starting at ``x``.

    ``velocity`` receives ``t`` as a 0-dim float32 tensor (one time for the
    whole batch). Euler: ``x += h v(x, t)``; midpoint:
    ``x += h v(x + h/2 v(x, t), t + h/2)``; Heun (the trapezoidal
    predictor-corrector, Karras et al. 2022, Alg. 1 without noise):
    ``x += h/2 (v(x, t) + v(x + h v(x, t), t + h))``.
    """
    solver = check_solver(solver)
    grid = time_grid(num_steps, shift).tolist()
    steps = tqdm(range(num_steps), desc=f"sampling ({solver})", disable=not progress, leave=False)
    dev = x.device

    def at(t: float) -> torch.Tensor:
        return torch.full((), t, dtype=torch.float32, device=dev)

    for i in steps:
        t0, t1 = grid[i], grid[i + 1]
        h = t1 - t0
        v0 = velocity(x, at(t0))
        if solver == "euler":
            x = x + h * v0
        elif solver == "midpoint":
            x = x + h * velocity(x + (h / 2) * v0, at(t0 + h / 2))
        else:  # heun
            v1 = velocity(x + h * v0, at(t1))
            x = x + (h / 2) * (v0 + v1)
    return x


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Sample with dropout off, and put the model back as it was afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class RectifiedFlowMatcher:
    """Rectified flow training and sampling (seed-compatible API).

    ``model`` is anything called as ``model(x, t, brain_global, brain_tokens)``
    that returns a velocity shaped like ``x`` restricted to its output channels;
    a :class:`~cortexflow.models.dit.DiffusionTransformer` is additionally
    driven through ``prepare_condition``/``forward_prepared`` so the condition
    is projected once per sampling run.

    ``prior`` (optional, same shape as the data) is concatenated to ``x_t``
    along channels as extra model input; in the unconditional half of guidance
    it is zero.
    """

    def __init__(self, config: FlowConfig | None = None):
        self.config = config or FlowConfig()

    # ── training ──

    def sample_timesteps(
        self, batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Training times in [sigma_min, 1 - sigma_min]: logit-normal or uniform."""
        cfg = self.config
        if cfg.logit_normal:
            u = random_tensor(torch.randn, (batch_size,), generator, device)
            t = torch.sigmoid(u * cfg.logit_normal_std + cfg.logit_normal_mean)
        else:
            t = random_tensor(torch.rand, (batch_size,), generator, device)
        return t.clamp(cfg.sigma_min, 1.0 - cfg.sigma_min)

    @staticmethod
    def interpolate(x_0: torch.Tensor, x_1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t = (1 - t) x_0 + t x_1`` with ``t`` of shape (B,)."""
        t = t.view(-1, *([1] * (x_1.ndim - 1)))
        return torch.lerp(x_0, x_1, t)

    def compute_loss(
        self,
        model: nn.Module,
        x_1: torch.Tensor,
        brain_global: torch.Tensor,
        brain_tokens: torch.Tensor | None = None,
        *,
        prior: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Conditional flow-matching loss ``E || v(x_t, t | c) - (x_1 - x_0) ||^2`` (mean over elements)."""
        if not isinstance(x_1, torch.Tensor) or x_1.ndim < 2:
            raise CortexflowInputError(f"x_1 must be a batch of data (B, C, ...), got {_shape(x_1)}")
        b = x_1.shape[0]
        t = self.sample_timesteps(b, x_1.device, generator)
        x_0 = random_tensor(torch.randn, x_1.shape, generator, x_1.device, x_1.dtype)
        x_t = self.interpolate(x_0, x_1, t)
        v_pred = model(_with_prior(x_t, prior), t, brain_global, brain_tokens)
        return F.mse_loss(v_pred, x_1 - x_0)

    # ── sampling ──

    def velocity_fn(
        self,
        model: nn.Module,
        brain_global: torch.Tensor,
        brain_tokens: torch.Tensor | None = None,
        cfg_scale: float | None = None,
        brain_global_uncond: torch.Tensor | None = None,
        brain_tokens_uncond: torch.Tensor | None = None,
        *,
        prior: torch.Tensor | None = None,
        precision: str | None = None,
    ) -> VelocityFn:
        """The (guided) velocity ``(x, t) -> v`` that the samplers integrate.

        Guidance is on when ``cfg_scale != 1`` and an unconditional embedding is
        given: the conditional and unconditional halves are stacked into one
        batch of 2B and evaluated in a single network call. Everything that is
        fixed along the run (condition projections, the prior input) is built
        here, once. The network runs in :func:`sampling_dtype` ``(precision)``;
        the returned velocity is float32.
        """
        dtype = sampling_dtype(self.config.precision if precision is None else precision, brain_global.device)
        guidance = float(self.config.cfg_scale if cfg_scale is None else cfg_scale)
        do_cfg = guidance != 1.0 and brain_global_uncond is not None
        b = brain_global.shape[0]
        if do_cfg:
            brain_global = torch.cat([brain_global, _expand_rows(brain_global_uncond, b, "brain_global_uncond")])
            if brain_tokens is not None:
                if brain_tokens_uncond is None:
                    raise CortexflowInputError(
                        "guidance needs brain_tokens_uncond when brain_tokens are given",
                        fix="pass the model's unconditional (null) tokens",
                    )
                brain_tokens = torch.cat([brain_tokens, _expand_rows(brain_tokens_uncond, b, "brain_tokens_uncond")])
            if prior is not None:
                prior = torch.cat([prior, torch.zeros_like(prior)])

        if hasattr(model, "prepare_condition") and hasattr(model, "forward_prepared"):
            condition = model.prepare_condition(brain_global, brain_tokens)

            def network(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return model.forward_prepared(x_in, t, condition)

        else:

            def network(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return model(x_in, t.expand(x_in.shape[0]), brain_global, brain_tokens)

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            x_in = torch.cat([x, x]) if do_cfg else x
            with torch.autocast(x.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                v = network(_with_prior(x_in, prior), t)
            v = v.to(x.dtype)
            if not do_cfg:
                return v
            v_cond, v_uncond = v.chunk(2)
            return v_uncond + guidance * (v_cond - v_uncond)

        return velocity

    def sample(
        self,
        model: nn.Module,
        shape: tuple[int, ...],
        brain_global: torch.Tensor,
        brain_tokens: torch.Tensor | None = None,
        num_steps: int | None = None,
        cfg_scale: float | None = None,
        brain_global_uncond: torch.Tensor | None = None,
        brain_tokens_uncond: torch.Tensor | None = None,
        *,
        prior: torch.Tensor | None = None,
        solver: str | None = None,
        shift: float | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        progress: bool = False,
        precision: str | None = None,
    ) -> torch.Tensor:
        """Integrate from noise (t = 0) to data (t = 1); returns a tensor of ``shape``.

        Each of the ``shape[0]`` samples starts from its own noise, drawn from
        ``generator`` (or given as ``noise``). Runs under ``torch.inference_mode``
        with the model in eval mode; ``precision`` (default: the config's) as in
        :func:`sampling_dtype`.
        """
        cfg = self.config
        solver = check_solver(cfg.solver if solver is None else solver)
        steps = _check_steps(cfg.num_steps if num_steps is None else num_steps)
        shift = _check_shift(cfg.shift if shift is None else shift)
        precision = check_precision(cfg.precision if precision is None else precision)
        shape = tuple(int(s) for s in shape)
        if brain_global.shape[0] != shape[0]:
            raise CortexflowInputError(
                f"shape asks for {shape[0]} samples but brain_global has {brain_global.shape[0]} rows",
                fix="give one brain condition per sample (repeat_interleave for several samples per input)",
            )
        if noise is None:
            noise = random_tensor(torch.randn, shape, generator, brain_global.device)
        elif tuple(noise.shape) != shape:
            raise CortexflowInputError(f"noise has shape {tuple(noise.shape)}, expected {shape}")
        with torch.inference_mode(), _eval_mode(model):
            velocity = self.velocity_fn(
                model, brain_global, brain_tokens, cfg_scale, brain_global_uncond, brain_tokens_uncond, prior=prior,
                precision=precision,
            )
            return integrate(velocity, noise, steps, solver, shift, progress=progress)


def random_tensor(
    draw: Callable[..., torch.Tensor],
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``draw(shape)`` (torch.randn / torch.rand) from ``generator`` on its own device,
    moved to ``device``: a CPU generator then gives the same numbers whether the
    model runs on CPU or GPU."""
    source = generator.device if generator is not None else device
    return draw(tuple(shape), generator=generator, device=source, dtype=dtype).to(device)


def _with_prior(x: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
    if prior is None:
        return x
    if prior.shape != x.shape:
        raise CortexflowInputError(
            f"the prior has shape {tuple(prior.shape)} but the latents have shape {tuple(x.shape)}",
            fix="give the prior in the latent's shape, one per sample",
        )
    return torch.cat([x, prior], dim=1)


def _expand_rows(x: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if x.shape[0] == batch:
        return x
    if x.shape[0] == 1:
        return x.expand(batch, *x.shape[1:])
    raise CortexflowInputError(f"{name} has {x.shape[0]} rows, expected 1 or {batch}")


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
