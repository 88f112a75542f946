"""Training loop shared by every decoder: AdamW, warmup + cosine schedule,
gradient clipping, EMA, bf16 autocast on CUDA, and checkpoints that resume a
run exactly.

The schedule is the one most transformer and diffusion training uses
(Loshchilov & Hutter 2017, SGDR, arXiv:1608.03983 for the cosine; a linear
warmup as in Goyal et al. 2017, arXiv:1706.02677, keeps Adam's early steps,
made with poorly estimated second moments, small). Weight decay is applied to
matrices only, not to biases, norms or embeddings (as in GPT-2 / nanoGPT),
and decoupled from the gradient (AdamW, Loshchilov & Hutter 2019,
arXiv:1711.05101).

``Trainer.fit`` is what the workflow's ``train_decoder`` stage calls: it
resumes from ``checkpoint_dir/last.pt`` when there is one, so a job killed by
a time limit continues where it stopped when rerun, and the continued run is
bit-for-bit the uninterrupted one on CPU (see ``cortexflow.training.checkpoint``
for what that takes).

Scale: launched under torchrun, the trainer wraps the model in
DistributedDataParallel and each process computes its shard of every global
batch (``cortexflow.training.distributed``); ``grad_accum_steps`` cuts each
(shard of a) batch into micro-batches whose gradients add up before one
optimizer step. ``batch_size`` stays the global batch either way, so the
number of processes and micro-batches change memory use, not the optimisation.
The loop does not wait for the device every step: losses stay on the device
and are read back (and checked for NaN) every ``log_every`` steps.
``compile=True`` runs the loss through ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LRScheduler
from tqdm.auto import tqdm

from cortexflow.devices import resolve_device
from cortexflow.errors import CortexflowInputError
from cortexflow.sections import from_mapping
from cortexflow.models.ema import EMAModel
from cortexflow.models.types import BrainData
from cortexflow.training import distributed
from cortexflow.training.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint

log = logging.getLogger("cortexflow.training.trainer")

__all__ = [
    "FitResult",
    "Trainer",
    "TrainingConfig",
    "TrainingInterrupted",
    "WarmupCosineScheduler",
    "batch_indices",
    "seed_everything",
]

LossFn = Callable[[nn.Module, Any], torch.Tensor]
BatchFn = Callable[[int, torch.Generator], Any]


@dataclass
class TrainingConfig:
    """Optimisation settings (the seed library's names, plus what resuming needs).

    learning_rate: peak learning rate, reached after ``warmup_steps``.
    batch_size: used by batch functions and ``batch_indices``; the trainer
        itself takes batches as they come.
    max_steps: length of the cosine schedule and ``fit``'s default step count.
    min_lr_ratio: the schedule ends at ``learning_rate * min_lr_ratio``.
    grad_clip: clip the global gradient norm to this (0 or None: no clipping).
    ema_decay / ema_warmup / use_ema: see :class:`cortexflow.EMAModel`.
        As in the seed library, ``ema_decay=0`` turns EMA off and the decay is
        constant unless ``ema_warmup=True`` (which the workflow's stages set).
    mixed_precision: ``"auto"`` = bf16 autocast when training on CUDA (with
        bf16 support), fp32 otherwise; ``"bf16"`` forces bf16 autocast on any
        device; ``"no"`` keeps fp32. Parameters and optimizer state stay fp32.
    device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    seed: seeds torch, numpy, ``random`` and the batch generator at the start
        of a fresh (not resumed) ``fit``.
    log_every / checkpoint_every: in optimizer steps; losses are read back from
        the device (and checked for NaN/inf) every ``log_every`` steps.
    grad_accum_steps: micro-batches per optimizer step (each batch is cut into
        this many equal parts; gradients add up before the step).
    compile: run the loss through ``torch.compile`` (off by default: compiling
        takes minutes and pays off only on long GPU runs).
    """

    learning_rate: float = 1e-4
    batch_size: int = 16
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 500
    max_steps: int = 10_000
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = False
    use_ema: bool = True
    mixed_precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    grad_accum_steps: int = 1
    compile: bool = False

    #: Fields that do not change the optimisation trajectory; a checkpoint
    #: written under other values of these is still resumed.
    NON_TRAJECTORY = ("log_every", "checkpoint_every", "device", "mixed_precision", "compile")

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        if not self.learning_rate > 0:
            raise CortexflowInputError(f"learning_rate must be > 0, got {self.learning_rate}")
        for name in ("batch_size", "max_steps", "log_every", "checkpoint_every", "grad_accum_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise CortexflowInputError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise CortexflowInputError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise CortexflowInputError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.weight_decay < 0:
            raise CortexflowInputError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise CortexflowInputError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise CortexflowInputError(f"grad_clip must be >= 0 or None, got {self.grad_clip}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise CortexflowInputError(f"ema_decay must be in [0, 1], got {self.ema_decay}")
        if self.mixed_precision not in ("auto", "bf16", "no"):
            raise CortexflowInputError(
                f"mixed_precision must be 'auto', 'bf16' or 'no', got {self.mixed_precision!r}"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainingConfig":
        """Build from a config-file section, naming unknown keys in the error."""
        return from_mapping(cls, values, "training")


class WarmupCosineScheduler(LRScheduler):
    """Linear warmup to the base learning rate, then a half cosine down to
    ``min_lr_ratio`` times it at ``total_steps``; constant after.

    factor(s) = (s + 1) / warmup_steps                             for s < warmup_steps
              = r + (1 - r) (1 + cos(pi * p)) / 2,  p = (s - w) / (T - w)   after
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int,
        total_steps: int,
        min_lr_ratio: float = 0.0,
        last_epoch: int = -1,
    ):
        if warmup_steps < 0 or total_steps <= 0:
            raise CortexflowInputError(
                f"need warmup_steps >= 0 and total_steps > 0, got {warmup_steps} and {total_steps}"
            )
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.min_lr_ratio = float(min_lr_ratio)
        super().__init__(optimizer, last_epoch)

    def lr_factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    @property
    def current_lr(self) -> float:
        """The first parameter group's learning rate now (the seed's name)."""
        return self.optimizer.param_groups[0]["lr"]

    def get_lr(self) -> list[float]:
        factor = self.lr_factor(self.last_epoch)
        return [base * factor for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


class _LossModule(nn.Module):
    """``loss_fn(model, batch)`` as a module's ``forward``: DistributedDataParallel
    synchronises gradients of what runs through ``forward``, and ``torch.compile``
    compiles a module; the decoders' losses are methods, not ``forward``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.loss_fn: LossFn = _default_loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


class TrainingInterrupted(RuntimeError):
    """``fit`` stopped on SIGTERM (e.g. a SLURM time limit) after checkpointing;
    running it again resumes."""


@dataclass
class FitResult:
    """What ``Trainer.fit`` did: the step it started from and ended at, whether
    it resumed a checkpoint, the loss of every step it ran, and the checkpoint
    it wrote last."""

    start_step: int
    final_step: int
    resumed: bool
    losses: list[float] = field(default_factory=list)
    checkpoint: Path | None = None
    seconds: float = 0.0


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's global generator and ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def batch_indices(step: int, n_items: int, batch_size: int, seed: int) -> torch.Tensor:
    """Indices of batch ``step`` when ``n_items`` are shuffled anew every epoch.

    Stateless: the permutation of epoch ``e`` comes from ``seed`` and ``e``
    only, so any step's batch is known without replaying earlier ones -- a
    batch function built on it resumes exactly. Epochs drop the last
    incomplete batch (every item is still seen, in other epochs); when
    ``n_items < batch_size`` a batch is the whole shuffled set.
    """
    if n_items <= 0 or batch_size <= 0:
        raise CortexflowInputError(f"need n_items > 0 and batch_size > 0, got {n_items} and {batch_size}")
    per_epoch = max(1, n_items // batch_size)
    epoch, k = divmod(int(step), per_epoch)
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch)
    perm = torch.randperm(n_items, generator=generator)
    return perm[k * batch_size : (k + 1) * batch_size]


class Trainer:
    """Optimises ``model`` on batches with a loss function.

    ``train_step(batch, loss_fn)`` does one step (the seed library's API);
    ``fit(batches, steps, checkpoint_dir)`` runs many, with a progress bar,
    logging and resumable checkpoints. ``loss_fn(model, batch)`` returns a
    scalar loss; ``batch`` is moved to the training device first (tensors in
    dicts, lists, tuples and ``BrainData`` included).
    """

    def __init__(self, model: nn.Module, config: TrainingConfig | None = None):
        if not isinstance(model, nn.Module):
            raise CortexflowInputError(f"Trainer needs a torch.nn.Module, got {type(model).__name__}")
        self.config = config = config if config is not None else TrainingConfig()
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.dist = distributed.current()
        self._loss_module: nn.Module = _LossModule(self.model)
        self._ddp: nn.Module | None = None
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
                if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(self._loss_module, device_ids=ids)
        self._forward: nn.Module = self._ddp or self._loss_module
        if config.compile:
            self._forward = torch.compile(self._forward)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise CortexflowInputError("the model has no trainable parameters", fix="unfreeze at least one parameter")
        # Decay matrices only (Linear/attention weights); biases, norm gains,
        # position and token embeddings stay undecayed, as in GPT-2.
        decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and "emb" not in n]
        decay_ids = {id(p) for p in decay}
        no_decay = [p for p in params if id(p) not in decay_ids]
        groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]],
            lr=config.learning_rate,
            betas=config.betas,
            eps=config.eps,
            fused=self.device.type == "cuda",
        )
        self.scheduler = WarmupCosineScheduler(
            self.optimizer, config.warmup_steps, config.max_steps, config.min_lr_ratio
        )
        use_ema = config.use_ema and config.ema_decay > 0  # the seed: ema_decay=0 means no EMA
        self.ema = EMAModel(model, config.ema_decay, warmup=config.ema_warmup) if use_ema else None
        self.data_generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.autocast_dtype = _autocast_dtype(config.mixed_precision, self.device)
        self._grad_norm: torch.Tensor | None = None
        log.info(
            "trainer: %s%s, %.2fM trainable parameters, %s, lr %.2e, EMA %s",
            self.device,
            f" x {self.dist.world_size} processes (DDP)" if self.dist.enabled else "",
            sum(p.numel() for p in params) / 1e6,
            "bf16 autocast" if self.autocast_dtype else "fp32",
            config.learning_rate,
            f"decay {config.ema_decay}" if self.ema else "off",
        )

    # ------------------------------------------------------------------ one step

    def train_step(self, batch: Any, loss_fn: LossFn) -> float:
        """One optimizer step on ``batch``; returns the loss as a float."""
        step = self.step
        value = float(self._step(batch, loss_fn))
        _check_finite([value], step)
        return value

    def _step(self, batch: Any, loss_fn: LossFn) -> torch.Tensor:
        """One optimizer step on (this process's shard of) the global ``batch``;
        returns the mean loss of the shard as a 0-dim tensor on the device (no host sync)."""
        self.model.train()
        self._loss_module.loss_fn = loss_fn
        micro_batches = distributed.split_rows(
            distributed.shard(_to_device(batch, self.device), self.dist), self.config.grad_accum_steps
        )
        if self.dist.enabled:
            torch.manual_seed(distributed.step_seed(self.config.seed, self.dist.rank, self.step))
        autocast = torch.autocast(
            self.device.type, dtype=self.autocast_dtype or torch.bfloat16, enabled=self.autocast_dtype is not None
        )
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for i, micro in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            # DDP all-reduces gradients once, after the last micro-batch
            sync = self._ddp.no_sync() if self._ddp is not None and not last else contextlib.nullcontext()
            with sync:
                with autocast:
                    loss = self._forward(micro)
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise CortexflowInputError(
                        f"loss_fn must return a scalar tensor, got {type(loss).__name__}"
                        + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else ""),
                        fix="reduce the loss to a scalar (e.g. .mean())",
                    )
                (loss.reshape(()) / len(micro_batches)).backward()
            total = total + loss.detach().float().reshape(())
        if self.config.grad_clip:
            self._grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return total / len(micro_batches)

    @property
    def last_grad_norm(self) -> float | None:
        """The global gradient norm before clipping at the last step (reads it back from the device)."""
        return None if self._grad_norm is None else float(self._grad_norm)

    @property
    def learning_rate(self) -> float:
        """The learning rate the next step will use."""
        return self.optimizer.param_groups[0]["lr"]

    @property
    def global_step(self) -> int:
        """The seed library's name for :attr:`step` (optimizer steps taken)."""
        return self.step

    @global_step.setter
    def global_step(self, value: int) -> None:
        self.step = int(value)

    # ------------------------------------------------------------------ many steps

    def fit(
        self,
        batches: BatchFn | Iterable[Any],
        steps: int | None = None,
        loss_fn: LossFn | None = None,
        checkpoint_dir: str | Path | None = None,
        progress: bool = True,
        run_tag: str | None = None,
        handle_sigterm: bool = True,
    ) -> FitResult:
        """Train until global step ``steps`` (default ``config.max_steps``).

        batches: either a function ``batch_fn(step, generator) -> batch``
            (``generator`` is the trainer's own ``torch.Generator``, saved in
            checkpoints, so random batch sampling resumes exactly; see also
            :func:`batch_indices`), or an iterable of batches, iterated again
            each time it is exhausted; on resume its first ``step`` batches
            are skipped, which is exact when every pass yields the same
            batches (a list, an unshuffled DataLoader).
        loss_fn: ``loss_fn(model, batch) -> scalar``; default
            ``model.training_loss(**batch)`` for dict batches, else
            ``model.training_loss(*batch)``.
        checkpoint_dir: resume from ``checkpoint_dir/last.pt`` if present
            (unless it was written with different optimisation settings,
            another model or another ``run_tag`` -- then it is stale, and
            training starts afresh and overwrites it), and write it every
            ``config.checkpoint_every`` steps and at the end.
        run_tag: any string identifying the run's inputs (e.g. a data hash);
            a checkpoint with another tag is not resumed.
        handle_sigterm: on SIGTERM (what SLURM sends before killing a job at
            its time limit) finish the current step, write the checkpoint and
            raise :class:`TrainingInterrupted`, instead of dying mid-interval
            and losing up to ``checkpoint_every`` steps. Only in the main thread.
        """
        cfg = self.config
        if callable(steps):
            raise CortexflowInputError(
                "Trainer.fit's second argument is the number of steps, got a function",
                fix="pass the loss as loss_fn=...: fit(batches, steps, loss_fn=loss_fn) "
                "(the seed library's fit(dataset, loss_fn, n_epochs) is not this API; see docs/seed-compat.md)",
            )
        target = cfg.max_steps if steps is None else int(steps)
        if target < 0:
            raise CortexflowInputError(f"steps must be >= 0, got {steps}")
        loss_fn = loss_fn or _default_loss_fn
        ckpt_path = None if checkpoint_dir is None else Path(checkpoint_dir) / "last.pt"
        resumed = ckpt_path is not None and ckpt_path.exists() and self._try_resume(ckpt_path, run_tag)
        if not resumed and self.step == 0:
            seed_everything(cfg.seed)
            self.data_generator.manual_seed(cfg.seed)
        result = FitResult(start_step=self.step, final_step=self.step, resumed=resumed)
        if self.step >= target:
            log.info("already at step %d of %d; nothing to train", self.step, target)
            return result

        next_batch = self._batch_source(batches)
        started = time.perf_counter()
        window: list[torch.Tensor] = []  # losses not yet read back from the device
        received: list[int] = []
        install = handle_sigterm and threading.current_thread() is threading.main_thread()
        if install:
            previous_handler = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
        show = progress and self.dist.is_main
        bar = tqdm(total=target, initial=self.step, desc="train", unit="step", disable=None if show else True)
        stop = _StopVote(self.dist)
        try:
            while self.step < target:
                window.append(self._step(next_batch(), loss_fn))
                bar.update(1)
                # every process stops after the same step, the first after which any was signalled
                stopping = stop.agreed(bool(received))
                log_now = self.step % cfg.log_every == 0 or self.step == target
                checkpoint_now = ckpt_path is not None and (
                    self.step % cfg.checkpoint_every == 0 or self.step == target or stopping
                )
                if log_now or checkpoint_now or stopping:
                    # one host sync per interval: read back (and average over processes) the window's losses
                    values = self._read_losses(window, first_step=self.step - len(window))
                    result.losses.extend(values)
                    window.clear()
                    bar.set_postfix(loss=f"{values[-1]:.4f}", lr=f"{self.learning_rate:.2e}", refresh=False)
                    if log_now:
                        log.info(
                            "step %d/%d  loss %.4f  lr %.3e  grad-norm %s",
                            self.step,
                            target,
                            sum(values) / len(values),
                            self.learning_rate,
                            "-" if self.last_grad_norm is None else f"{self.last_grad_norm:.3f}",
                        )
                if checkpoint_now and self.dist.is_main:
                    result.checkpoint = self.save_checkpoint(ckpt_path, run_tag=run_tag)
                if stopping:
                    if self.dist.enabled:
                        # no process exits (and makes torchrun end the others) before rank 0 has written
                        torch.distributed.barrier()
                    where = f"checkpoint {ckpt_path}; run again to resume" if ckpt_path else "no checkpoint_dir"
                    who = "" if received else " (sent to another process)"
                    log.warning("SIGTERM%s at step %d: stopping (%s)", who, self.step, where)
                    raise TrainingInterrupted(f"stopped by SIGTERM at step {self.step} ({where})")
        finally:
            bar.close()
            if install:
                signal.signal(signal.SIGTERM, previous_handler)
        if self.dist.enabled:
            torch.distributed.barrier()  # the last checkpoint is written before any rank moves on
        result.final_step = self.step
        result.seconds = time.perf_counter() - started
        log.info(
            "trained steps %d-%d in %.1f s (%.2f steps/s)",
            result.start_step,
            result.final_step,
            result.seconds,
            (result.final_step - result.start_step) / max(result.seconds, 1e-9),
        )
        return result

    def _read_losses(self, window: list[torch.Tensor], first_step: int) -> list[float]:
        """The window's per-step losses as floats (the mean over processes under DDP); NaN/inf raise."""
        if not window:
            return []
        losses = torch.stack(window)
        if self.dist.enabled:
            torch.distributed.all_reduce(losses)
            losses = losses / self.dist.world_size
        values = losses.tolist()
        _check_finite(values, first_step)
        return values

    def _batch_source(self, batches: BatchFn | Iterable[Any]) -> Callable[[], Any]:
        if callable(batches) and not isinstance(batches, Iterable):
            return lambda: batches(self.step, self.data_generator)
        if not isinstance(batches, Iterable):
            raise CortexflowInputError(
                f"batches must be a function (step, generator) -> batch or an iterable, got {type(batches).__name__}"
            )
        state: dict[str, Iterator[Any]] = {}

        def next_from_iterable() -> Any:
            for attempt in range(2):
                if "it" not in state:
                    state["it"] = iter(batches)
                try:
                    return next(state["it"])
                except StopIteration:
                    del state["it"]
            raise CortexflowInputError("the batch iterable yielded no batches", fix="pass a non-empty iterable")

        # Replay the batches a resumed run has already consumed.
        for _ in range(self.step):
            next_from_iterable()
        return next_from_iterable

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self, run_tag: str | None = None) -> dict[str, Any]:
        """Everything a resumed run needs (see ``cortexflow.training.checkpoint``)."""
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "rng": capture_rng_state(self.data_generator),
            "config": self._config_dict(),
            "run_tag": run_tag,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        restore_rng_state(state["rng"], self.data_generator)
        self.step = int(state["step"])

    def save_checkpoint(self, path: str | Path, run_tag: str | None = None) -> Path:
        """Write the trainer's full state to ``path`` atomically."""
        return save_checkpoint(path, self.state_dict(run_tag))

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore the trainer's full state from ``path``."""
        self.load_state_dict(load_checkpoint(path))

    def _try_resume(self, path: Path, run_tag: str | None) -> bool:
        """Resume from ``path`` if it belongs to this run; warn and start afresh if it is stale."""
        # Read onto the CPU: the random-generator states must stay CPU byte tensors
        # (torch.set_rng_state and Generator.set_state refuse CUDA ones), and
        # load_state_dict copies the weights and optimizer moments to the device
        # the model lives on.
        state = load_checkpoint(path, map_location="cpu")
        reason = self._stale_reason(state, run_tag)
        if reason is None:
            try:
                self.load_state_dict(state)
            except (RuntimeError, KeyError, ValueError) as exc:
                reason = f"it does not fit this model ({str(exc).splitlines()[0]})"
        if reason is not None:
            log.warning("not resuming %s: %s; training from scratch (it will be overwritten)", path, reason)
            return False
        log.info("resumed %s at step %d", path, self.step)
        return True

    def _stale_reason(self, state: Mapping[str, Any], run_tag: str | None) -> str | None:
        if state.get("run_tag") != run_tag:
            return f"run tag {state.get('run_tag')!r} != {run_tag!r}"
        mine = self._config_dict()
        theirs = state.get("config", {})
        defaults = TrainingConfig().__dict__  # keys added since a checkpoint was written count at their default
        changed = sorted(
            k for k in mine
            if k not in TrainingConfig.NON_TRAJECTORY and theirs.get(k, _plain(defaults.get(k))) != mine[k]
        )
        if changed:
            return "training settings changed: " + ", ".join(f"{k} {theirs.get(k)!r} -> {mine[k]!r}" for k in changed)
        if (state.get("ema") is None) != (self.ema is None):
            return "EMA on/off differs"
        return None

    def _config_dict(self) -> dict[str, Any]:
        # Tuples become lists so that checkpoints compare equal after a round trip.
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.config).items()}


# ----------------------------------------------------------------------------- helpers


class _StopVote:
    """Whether any process of the run has been asked to stop (SIGTERM), agreed after every step.

    Under torchrun the processes see a SLURM time limit's SIGTERM at different
    steps; a process that stopped (and read back losses, wrote the checkpoint)
    on its own would enter other collectives than the rest, and the run would
    die without a checkpoint. So each step ends with an all-reduce (MAX) of the
    local flags, and every process stops after the same step. The vote runs on
    the CPU over gloo (a side group when the run itself uses NCCL), so it adds no
    GPU synchronisation to the step, only a few bytes between processes.
    """

    def __init__(self, ctx: distributed.DistributedContext):
        self.enabled = ctx.enabled
        self.group = None
        if self.enabled and torch.distributed.get_backend() != "gloo":
            self.group = torch.distributed.new_group(backend="gloo")

    def agreed(self, local: bool) -> bool:
        if not self.enabled:
            return local
        flag = torch.tensor([1 if local else 0], dtype=torch.int32)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self.group)
        return bool(flag.item())


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _check_finite(values: list[float], first_step: int) -> None:
    for i, value in enumerate(values):
        if not math.isfinite(value):
            raise FloatingPointError(
                f"loss is {value} at step {first_step + i}; lower learning_rate, raise warmup_steps, "
                "or check the batch for NaN/inf inputs"
            )


def _default_loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
    if not hasattr(model, "training_loss"):
        raise CortexflowInputError(
            f"{type(model).__name__} has no training_loss method", fix="pass loss_fn=lambda model, batch: ..."
        )
    if isinstance(batch, Mapping):
        return model.training_loss(**batch)
    if isinstance(batch, (tuple, list)):
        return model.training_loss(*batch)
    return model.training_loss(batch)


def _autocast_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if mode == "no":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, BrainData):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(_to_device(v, device) for v in batch)
    if isinstance(batch, list):
        return [_to_device(v, device) for v in batch]
    return batch
