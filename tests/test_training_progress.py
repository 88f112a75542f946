"""Progress of training: the log line (step/total, loss, rate, elapsed, ETA), the loss curve
(one row per logged step, continued on resume), and that neither changes what is trained."""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from cortexflow.training import Trainer, TrainingConfig
from cortexflow.training.checkpoint import prune_stale_checkpoints
from cortexflow.training.history import CURVE_COLUMNS, CURVE_NAME, LossCurve, clock, curve_path, progress_line

X = torch.randn(96, 5, generator=torch.Generator().manual_seed(0))
W = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
Y = X @ W


class Regressor(nn.Module):
    """A learnable toy task with dropout, so every step draws from torch's global RNG."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 32), nn.GELU(), nn.Dropout(0.1), nn.Linear(32, 3))

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((self.net(x) - y) ** 2).mean()


def _model() -> Regressor:
    torch.manual_seed(0)
    return Regressor()


def _batches(step: int, generator: torch.Generator):
    idx = torch.randint(0, len(X), (16,), generator=generator)
    return X[idx], Y[idx]


def _config(**overrides) -> TrainingConfig:
    values = dict(learning_rate=1e-2, warmup_steps=2, max_steps=40, checkpoint_every=8, ema_decay=0.9, log_every=5,
                  device="cpu")
    return TrainingConfig(**{**values, **overrides})


def test_logging_and_the_curve_leave_training_bit_identical(tmp_path):
    # Logging every step (a host sync, a curve row and a log line each step) against logging
    # once at the end, and the progress bar on against off: the same weights, EMA and losses.
    a = Trainer(_model(), _config(log_every=1))
    ra = a.fit(_batches, checkpoint_dir=tmp_path / "a", progress=False)
    b = Trainer(_model(), _config(log_every=40))
    rb = b.fit(_batches, checkpoint_dir=tmp_path / "b", progress=True)
    assert len(a.curve.rows) == 40 and len(b.curve.rows) == 1
    assert ra.losses == rb.losses
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), name
    for k, v in a.ema.shadow.items():
        assert torch.equal(v, b.ema.shadow[k])
    # the single row of b is the mean of all 40 step losses, a's rows are the losses themselves
    assert b.curve.rows[0][1] == pytest.approx(np.mean(ra.losses), rel=1e-12)
    assert [r[1] for r in a.curve.rows] == pytest.approx(ra.losses, rel=1e-12)


def test_curve_has_a_row_per_logged_step_and_the_loss_falls(tmp_path, caplog):
    trainer = Trainer(_model(), _config(max_steps=60, log_every=10))
    trainer.name = "toy"
    with caplog.at_level(logging.INFO, logger="cortexflow.training.trainer"):
        result = trainer.fit(_batches, checkpoint_dir=tmp_path, progress=False)
    curve = trainer.curve.frame()
    assert list(curve.columns) == CURVE_COLUMNS
    assert curve["step"].tolist() == [10, 20, 30, 40, 50, 60]
    # each row's loss is the mean of the losses of its interval
    for k, row in curve.iterrows():
        assert row["loss"] == pytest.approx(np.mean(result.losses[10 * k:10 * (k + 1)]), rel=1e-9)
    assert curve["loss"].iloc[-1] < 0.2 * curve["loss"].iloc[0]
    assert (np.diff(curve["loss"]) < 0).sum() >= 4
    assert (np.diff(curve["elapsed_s"]) >= 0).all() and curve["elapsed_s"].iloc[0] > 0
    assert curve["lr"].iloc[-1] < curve["lr"].iloc[0]  # the cosine decays
    assert np.isfinite(curve["grad_norm"]).all()
    # the file beside the checkpoint holds the same rows
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / CURVE_NAME), curve)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("toy: step ")]
    assert len(lines) == 6
    assert lines[2].startswith("toy: step 30/60 (50%)  loss ")
    assert re.search(r"  lr \d\.\d{3}e-\d\d  grad-norm \d+\.\d{3}  \d+\.\d\d steps/s  "
                     r"elapsed \d+:\d\d:\d\d  ETA \d+:\d\d:\d\d$", lines[2]), lines[2]
    assert lines[-1].endswith("ETA 0:00:00")


def test_resumed_run_continues_the_curve(tmp_path):
    full = Trainer(_model(), _config())
    full.fit(_batches, progress=False)

    # a job stopped at step 16 (its last checkpoint), whose curve file also got a row of a
    # later step before the kill (the curve is written just before each checkpoint)
    killed = tmp_path / "killed"
    Trainer(_model(), _config()).fit(_batches, steps=16, checkpoint_dir=killed, progress=False)
    rows_at_kill = LossCurve.load(killed / CURVE_NAME).rows
    assert [r[0] for r in rows_at_kill] == [5, 10, 15, 16]
    LossCurve(rows_at_kill + [(18, 9.0, 1e-3, 1.0, 99.0)]).save(killed / CURVE_NAME)

    resumed = Trainer(_model(), _config())
    result = resumed.fit(_batches, checkpoint_dir=killed, progress=False)
    assert result.resumed and result.start_step == 16
    steps = [r[0] for r in resumed.curve.rows]
    assert steps == [5, 10, 15, 16, 20, 25, 30, 35, 40]
    assert resumed.curve.rows[:4] == rows_at_kill  # the earlier rows are kept as they were
    elapsed = [r[4] for r in resumed.curve.rows]
    assert all(b >= a for a, b in zip(elapsed, elapsed[1:]))  # the clock continues
    # after the resume point the rows are those of the uninterrupted run (row 20 averages 17-20)
    uninterrupted = {r[0]: r for r in full.curve.rows}
    for step, loss, lr, grad_norm, _ in resumed.curve.rows[4:]:
        if step != 20:
            assert (loss, lr, grad_norm) == pytest.approx(uninterrupted[step][1:4], rel=1e-12)
    assert _same_weights(full.model, resumed.model)
    # the saved file is the continued curve
    assert [r[0] for r in LossCurve.load(killed / CURVE_NAME).rows] == steps


def test_a_lost_or_damaged_curve_does_not_stop_a_resume(tmp_path, caplog):
    Trainer(_model(), _config()).fit(_batches, steps=16, checkpoint_dir=tmp_path, progress=False)
    (tmp_path / CURVE_NAME).write_bytes(b"not a parquet file")
    resumed = Trainer(_model(), _config())
    with caplog.at_level(logging.WARNING):
        result = resumed.fit(_batches, checkpoint_dir=tmp_path, progress=False)
    assert result.resumed and result.final_step == 40
    assert any("cannot read the loss curve" in r.getMessage() for r in caplog.records)
    assert [r[0] for r in resumed.curve.rows] == [20, 25, 30, 35, 40]


def test_stale_checkpoint_folders_with_a_curve_are_still_pruned(tmp_path):
    for key in ("old", "new"):
        Trainer(_model(), _config(max_steps=8)).fit(_batches, checkpoint_dir=tmp_path / key, progress=False)
    removed = prune_stale_checkpoints(tmp_path / "new")
    assert removed == [tmp_path / "old"] and (tmp_path / "new" / CURVE_NAME).exists()


def test_progress_line_and_clock():
    line = progress_line(150, 300, 0.43217, 3e-4, 0.8123, 75.0, 2.0)
    assert line == ("step 150/300 (50%)  loss 0.4322  lr 3.000e-04  grad-norm 0.812  2.00 steps/s  "
                    "elapsed 0:01:15  ETA 0:01:15")
    assert "grad-norm -" in progress_line(1, 10, 1.0, 1e-3, None, 1.0, 0.0)
    assert progress_line(1, 10, 1.0, 1e-3, None, 1.0, 0.0).endswith("ETA ?")
    assert clock(3725.4) == "1:02:05" and clock(math.inf) == "?"
    assert curve_path("results/sim/models/sub-01_image_decoder_seed0.pt").as_posix() == \
        "results/sim/models/sub-01_image_decoder_seed0_curve.parquet"


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
