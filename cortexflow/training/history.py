"""A training run's loss curve, and the progress line the trainer logs.

The curve has one row per logged step (``Trainer.fit`` logs every
``log_every`` optimizer steps and at the last one): the step, the mean
training loss of the steps since the previous row, the learning rate the next
step uses, the gradient norm before clipping at that step, and the seconds of
training so far. ``fit`` keeps it beside its checkpoint (``CURVE_NAME`` in the
checkpoint folder, written just before each checkpoint), so a run stopped and
resumed continues the same curve and clock instead of starting a new one; the
training stages then write it beside their model (:func:`curve_path`), where
the workflow declares it and the report plots it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("cortexflow.training.history")

CURVE_COLUMNS = ["step", "loss", "lr", "grad_norm", "elapsed_s"]
#: the curve's file in a checkpoint folder (beside ``last.pt``)
CURVE_NAME = "loss_curve.parquet"


def curve_path(model_path: str | Path) -> Path:
    """Where a training stage writes the loss curve of the model it writes to ``model_path``:
    beside it, ``<model stem>_curve.parquet``."""
    path = Path(model_path)
    return path.with_name(f"{path.name.split('.')[0]}_curve.parquet")


@dataclass
class LossCurve:
    """Rows of ``CURVE_COLUMNS``, in step order."""

    rows: list[tuple[int, float, float, float, float]] = field(default_factory=list)

    @property
    def elapsed_s(self) -> float:
        """Seconds of training the curve has seen (0 for an empty curve)."""
        return self.rows[-1][4] if self.rows else 0.0

    def append(self, step: int, loss: float, lr: float, grad_norm: float | None, elapsed_s: float) -> None:
        self.rows.append((int(step), float(loss), float(lr), math.nan if grad_norm is None else float(grad_norm),
                          float(elapsed_s)))

    def up_to(self, step: int) -> "LossCurve":
        """The rows at or before ``step`` (a resumed run drops those logged after its checkpoint)."""
        return LossCurve([r for r in self.rows if r[0] <= step])

    def frame(self):  # noqa: ANN201 - a pandas DataFrame
        import pandas as pd

        frame = pd.DataFrame(self.rows, columns=CURVE_COLUMNS)
        return frame.astype({"step": "int64", "loss": "float64", "lr": "float64", "grad_norm": "float64",
                             "elapsed_s": "float64"})

    def save(self, path: str | Path) -> Path:
        """Write the curve as parquet, atomically."""
        from cortexflow import _io

        return _io.save_parquet(path, self.frame())

    @classmethod
    def load(cls, path: str | Path) -> "LossCurve":
        """The curve in ``path``; empty (with a warning) if it is missing or unreadable: a lost
        curve costs its earlier rows, never the training run."""
        from cortexflow import _io
        from cortexflow.errors import CortexflowInputError

        path = Path(path)
        if not path.is_file():
            log.warning("no loss curve at %s: the curve starts at the resumed step", path)
            return cls()
        try:
            frame = _io.read_parquet(path, "loss curve")
            rows = list(frame[CURVE_COLUMNS].itertuples(index=False, name=None))
        except (CortexflowInputError, KeyError) as e:
            log.warning("cannot read the loss curve %s (%s): the curve starts at the resumed step", path, e)
            return cls()
        return cls([(int(s), float(a), float(b), float(c), float(d)) for s, a, b, c, d in rows])


def clock(seconds: float) -> str:
    """``seconds`` as H:MM:SS."""
    if not math.isfinite(seconds):
        return "?"
    minutes, s = divmod(int(round(max(seconds, 0.0))), 60)
    h, m = divmod(minutes, 60)
    return f"{h}:{m:02d}:{s:02d}"


def progress_line(step: int, total: int, loss: float, lr: float, grad_norm: float | None, elapsed_s: float,
                  steps_per_s: float) -> str:
    """The trainer's log line: where it is, the loss, and how long the rest will take.

    ``elapsed_s`` is the run's training time so far (earlier, resumed-from parts
    included); ``steps_per_s`` the rate of this process, which the ETA assumes.
    """
    eta = (total - step) / steps_per_s if steps_per_s > 0 else math.inf
    return (f"step {step}/{total} ({step / max(total, 1):.0%})  loss {loss:.4f}  lr {lr:.3e}  "
            f"grad-norm {'-' if grad_norm is None else f'{grad_norm:.3f}'}  {steps_per_s:.2f} steps/s  "
            f"elapsed {clock(elapsed_s)}  ETA {clock(eta)}")
