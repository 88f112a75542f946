"""Trainer: the schedule's values, one step's mechanics, and exact resumption
(a stopped-and-resumed run has bit-identical parameters to an uninterrupted one)."""

from __future__ import annotations

import math
import os
import random
import signal

import numpy as np
import pytest
import torch
import torch.nn as nn

from cortexflow.errors import CortexflowInputError
from cortexflow.training import Trainer, TrainingConfig, TrainingInterrupted, WarmupCosineScheduler, batch_indices



X = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
Y = X @ torch.randn(6, 2, generator=torch.Generator().manual_seed(1))


class NoisyRegressor(nn.Module):
    """Dropout and an embedding, so a step draws from torch's RNG and uses both
    parameter groups (decayed matrices, undecayed vectors)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Dropout(0.2), nn.Linear(16, 2))
        self.bias_emb = nn.Embedding(1, 2)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        noise = 0.01 * torch.randn_like(y)  # torch global RNG inside the loss too
        return ((self.net(x) + self.bias_emb.weight - y - noise) ** 2).mean()


def _model() -> NoisyRegressor:
    torch.manual_seed(0)
    return NoisyRegressor()


def _batch_fn(step: int, generator: torch.Generator):
    # Draws from the trainer's generator, numpy's and Python's global RNGs:
    # all three must be restored on resume.
    idx = torch.randint(0, 64, (8,), generator=generator)
    jitter = float(np.random.rand()) * 1e-3 + random.random() * 1e-3
    return X[idx] + jitter, Y[idx]


CONFIG = dict(learning_rate=1e-2, warmup_steps=3, max_steps=12, checkpoint_every=4, ema_decay=0.9, log_every=5)


def _same_parameters(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_scheduler_warmup_then_cosine_to_the_floor():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = WarmupCosineScheduler(opt, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    lrs = []
    for _ in range(17):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert lrs[9] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))  # halfway: midpoint of peak and floor
    assert lrs[14:] == pytest.approx([0.2] * 3)  # floor reached and kept
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    # Its state round-trips like any torch scheduler.
    other = WarmupCosineScheduler(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0), 4, 14, 0.1)
    other.load_state_dict(sched.state_dict())
    assert other.last_epoch == sched.last_epoch


def test_train_step_decreases_loss_clips_gradients_and_updates_ema():
    model = _model()
    trainer = Trainer(model, TrainingConfig(learning_rate=1e-2, warmup_steps=0, max_steps=60, grad_clip=0.05))
    loss_fn = lambda m, b: m.training_loss(*b)  # noqa: E731
    before = {k: v.clone() for k, v in trainer.ema.shadow.items()}
    losses = [trainer.train_step((X, Y), loss_fn) for _ in range(60)]
    assert losses[-1] < 0.3 * losses[0]
    grad_norm = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
    assert trainer.last_grad_norm > 0.05 and float(grad_norm) <= 0.05 * (1 + 1e-4)
    assert trainer.step == 60 and trainer.ema.num_updates == 60
    assert any(not torch.equal(before[k], v) for k, v in trainer.ema.shadow.items())
    # Only matrices are decayed; biases and embeddings are not.
    decayed, plain = trainer.optimizer.param_groups
    assert decayed["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decayed["params"])
    assert any(p is model.bias_emb.weight for p in plain["params"])


def test_loss_function_misuse_is_reported():
    trainer = Trainer(_model(), TrainingConfig())
    with pytest.raises(CortexflowInputError, match="scalar tensor"):
        trainer.train_step((X, Y), lambda m, b: m.net(b[0]))
    with pytest.raises(FloatingPointError, match="nan at step 0"):
        trainer.train_step((X, Y), lambda m, b: m.training_loss(*b) * float("nan"))
    with pytest.raises(CortexflowInputError, match="learning_rate"):
        TrainingConfig(learning_rate=0)
    with pytest.raises(CortexflowInputError, match="mixed_precision"):
        TrainingConfig(mixed_precision="fp16")
    with pytest.raises(CortexflowInputError, match=r"training config: unknown keys training\.lr"):
        TrainingConfig.from_dict({"lr": 1e-3})


def test_autocast_only_when_asked_on_cpu():
    seen = {}

    def loss_fn(m, b):
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        return m.training_loss(*b)

    Trainer(_model(), TrainingConfig(mixed_precision="auto", device="cpu")).train_step((X, Y), loss_fn)
    assert seen["autocast"] is False
    Trainer(_model(), TrainingConfig(mixed_precision="bf16", device="cpu")).train_step((X, Y), loss_fn)
    assert seen["autocast"] is True


def test_resumed_run_is_bit_identical_to_uninterrupted(tmp_path):
    config = TrainingConfig(**CONFIG)
    full = Trainer(_model(), config)
    full_result = full.fit(_batch_fn, progress=False)
    assert full_result.final_step == 12 and len(full_result.losses) == 12

    # Run 1 stops at step 6 (as a killed job would, between checkpoints it
    # writes one at 4 and one on exit), then the RNGs are disturbed and a fresh
    # process-like trainer with a differently initialised model resumes.
    first = Trainer(_model(), config).fit(_batch_fn, steps=6, checkpoint_dir=tmp_path, progress=False)
    assert first.final_step == 6 and (tmp_path / "last.pt").exists()
    torch.manual_seed(999)
    np.random.seed(999)
    random.seed(999)
    other_init = NoisyRegressor()
    resumed_trainer = Trainer(other_init, config)
    resumed = resumed_trainer.fit(_batch_fn, checkpoint_dir=tmp_path, progress=False)

    assert resumed.resumed and resumed.start_step == 6 and resumed.final_step == 12
    assert resumed.losses == full_result.losses[6:]
    assert _same_parameters(full.model, resumed_trainer.model)
    for k, v in full.ema.shadow.items():
        assert torch.equal(v, resumed_trainer.ema.shadow[k])
    assert resumed_trainer.learning_rate == full.learning_rate
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary leftovers

    # Run again: already finished, nothing happens.
    again = Trainer(_model(), config).fit(_batch_fn, checkpoint_dir=tmp_path, progress=False)
    assert again.resumed and again.losses == [] and again.final_step == 12


def test_resume_with_an_iterable_of_batches(tmp_path):
    batches = [(X[i : i + 16], Y[i : i + 16]) for i in range(0, 48, 16)]  # 3 batches: wraps into epochs
    config = TrainingConfig(**CONFIG)
    full = Trainer(_model(), config)
    full.fit(batches, steps=8, progress=False)
    Trainer(_model(), config).fit(batches, steps=5, checkpoint_dir=tmp_path, progress=False)
    resumed = Trainer(_model(), config)
    resumed.fit(batches, steps=8, checkpoint_dir=tmp_path, progress=False)
    assert _same_parameters(full.model, resumed.model)


def test_sigterm_checkpoints_and_the_rerun_resumes_exactly(tmp_path):
    """A SLURM time limit sends SIGTERM: the step in flight finishes, the
    checkpoint is written off-schedule, and a rerun continues exactly."""
    config = TrainingConfig(**CONFIG)
    full = Trainer(_model(), config)
    full.fit(_batch_fn, progress=False)

    def batch_fn_killed_at_step_6(step, generator):
        if step == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return _batch_fn(step, generator)

    handler_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match="SIGTERM at step 7"):
        Trainer(_model(), config).fit(batch_fn_killed_at_step_6, checkpoint_dir=tmp_path, progress=False)
    assert signal.getsignal(signal.SIGTERM) is handler_before
    resumed = Trainer(_model(), config)
    result = resumed.fit(_batch_fn, checkpoint_dir=tmp_path, progress=False)
    assert result.start_step == 7  # checkpoint_every=4: 7 was written only because of the signal
    assert _same_parameters(full.model, resumed.model)


def test_stale_checkpoints_are_not_resumed(tmp_path, caplog):
    Trainer(_model(), TrainingConfig(**CONFIG)).fit(_batch_fn, steps=4, checkpoint_dir=tmp_path, run_tag="data-v1", progress=False)
    changed_lr = TrainingConfig(**{**CONFIG, "learning_rate": 5e-3})
    result = Trainer(_model(), changed_lr).fit(_batch_fn, steps=2, checkpoint_dir=tmp_path, run_tag="data-v1", progress=False)
    assert not result.resumed and result.start_step == 0
    assert "learning_rate 0.01 -> 0.005" in caplog.text

    result = Trainer(_model(), changed_lr).fit(_batch_fn, steps=3, checkpoint_dir=tmp_path, run_tag="data-v2", progress=False)
    assert not result.resumed and "run tag 'data-v1' != 'data-v2'" in caplog.text

    # Settings that do not change the trajectory (logging, checkpoint period) still resume.
    relogged = TrainingConfig(**{**CONFIG, "learning_rate": 5e-3, "log_every": 1})
    result = Trainer(_model(), relogged).fit(_batch_fn, steps=4, checkpoint_dir=tmp_path, run_tag="data-v2", progress=False)
    assert result.resumed and result.start_step == 3


def test_unreadable_checkpoint_names_the_file(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CortexflowInputError, match="last.pt.*cannot read the training checkpoint.*delete it"):
        Trainer(_model(), TrainingConfig(**CONFIG)).fit(_batch_fn, steps=2, checkpoint_dir=tmp_path, progress=False)


def test_batch_indices_shuffle_each_epoch_and_are_stateless():
    n, bs = 10, 3  # 3 full batches per epoch; the incomplete one is dropped
    epoch0 = torch.cat([batch_indices(s, n, bs, seed=7) for s in range(3)])
    epoch1 = torch.cat([batch_indices(s, n, bs, seed=7) for s in range(3, 6)])
    assert len(set(epoch0.tolist())) == 9 and len(set(epoch1.tolist())) == 9
    assert not torch.equal(epoch0, epoch1)
    assert torch.equal(batch_indices(4, n, bs, seed=7), batch_indices(4, n, bs, seed=7))
    assert not torch.equal(batch_indices(0, n, bs, seed=7), batch_indices(0, n, bs, seed=8))
    assert sorted(batch_indices(5, 4, 16, seed=0).tolist()) == [0, 1, 2, 3]
    assert math.isclose(len(batch_indices(0, 100, 32, seed=0)), 32)


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_resume_onto_another_device_keeps_the_generator_states_on_the_cpu(tmp_path):
    """A trainer on a GPU used to read its checkpoint with map_location=<its device>: the saved
    generator states landed there, and torch.set_rng_state / Generator.set_state (CPU byte tensors
    only) raised TypeError, so every resumed GPU job crashed. Here the trainer's device is torch's
    ``meta`` device (tensors without data; another device type, as CUDA is): the checkpoint must
    be read onto the CPU, the weights and optimizer moments moved to the model's device, the
    generators restored as saved."""
    config = TrainingConfig(**CONFIG)
    Trainer(_model(), config).fit(_batch_fn, steps=6, checkpoint_dir=tmp_path, progress=False)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    torch.manual_seed(999)
    elsewhere = Trainer(_model().to("meta"), TrainingConfig(**{**CONFIG, "device": "meta"}))
    assert elsewhere.device.type == "meta"
    result = elsewhere.fit(_batch_fn, steps=6, checkpoint_dir=tmp_path, progress=False)  # resume, no new step
    assert result.resumed and result.start_step == 6 and elsewhere.step == 6
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
    assert torch.equal(elsewhere.data_generator.get_state(), saved["rng"]["generator"])
    assert np.array_equal(np.random.get_state()[1], saved["rng"]["numpy"]["keys"].numpy().astype(np.uint32))
    moments = [s["exp_avg"] for s in elsewhere.optimizer.state.values()]
    assert moments and all(m.device.type == "meta" for m in moments)  # on the parameters' device
    assert all(p.device.type == "meta" for p in elsewhere.model.parameters())
    assert elsewhere.scheduler.last_epoch == 6

    # and the same checkpoint, resumed on the CPU, still continues exactly
    full = Trainer(_model(), config)
    full.fit(_batch_fn, progress=False)
    resumed = Trainer(_model(), config)
    assert resumed.fit(_batch_fn, checkpoint_dir=tmp_path, progress=False).start_step == 6
    assert _same_parameters(full.model, resumed.model)


def test_generator_states_read_onto_another_device_are_brought_back(tmp_path):
    """restore_rng_state itself brings generator states back to CPU byte tensors (a caller may
    have read them with map_location=<a GPU>; here they are int64, which torch refuses too)."""
    from cortexflow.training.checkpoint import capture_rng_state, restore_rng_state

    g = torch.Generator().manual_seed(5)
    state = capture_rng_state(g)
    expected = (torch.rand(3), torch.rand(2, generator=g))
    moved = {**state, "torch": state["torch"].to(torch.int64), "generator": state["generator"].to(torch.int64)}
    torch.manual_seed(0)
    g.manual_seed(0)
    restore_rng_state(moved, g)  # int64 states are refused by torch; restore converts them back to bytes
    assert torch.equal(torch.rand(3), expected[0]) and torch.equal(torch.rand(2, generator=g), expected[1])
