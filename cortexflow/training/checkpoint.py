"""Training checkpoints that resume a run exactly.

A resumed run continues bit-for-bit as if it had never stopped only if the
checkpoint holds *everything* the next step depends on: parameters, optimizer
moments, the learning-rate schedule's position, the EMA, the step counter, and
every random-number generator a step draws from (torch CPU and CUDA for
dropout and noise, numpy and Python's ``random`` for user code, and the
generator that picks the batches). This module captures and restores the RNG
part and reads/writes checkpoint files; ``Trainer`` assembles the rest.

Everything is stored as tensors, numbers, strings and containers of them, so
checkpoints load with ``torch.load(weights_only=True)`` (no pickled code).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cortexflow._io import load_torch, save_torch
from cortexflow.errors import CortexflowInputError

log = logging.getLogger("cortexflow.training.checkpoint")

__all__ = ["capture_rng_state", "restore_rng_state", "save_checkpoint", "load_checkpoint", "prune_stale_checkpoints",
           "CHECKPOINT_FORMAT"]

#: Bumped when the checkpoint layout changes incompatibly.
CHECKPOINT_FORMAT = 1


def capture_rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """The state of torch (CPU and every CUDA device), numpy's legacy global
    generator, Python's ``random`` and, if given, ``generator``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": _python_state_to_tensors(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Inverse of :func:`capture_rng_state`.

    Generator states are byte tensors that torch accepts on the CPU only; a
    checkpoint read with ``map_location`` set to a GPU has them there, so they
    are brought back first. The CUDA generators are restored only where CUDA
    is in use.
    """
    torch.set_rng_state(_cpu_bytes(state["torch"]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].cpu().numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    random.setstate(_python_state_from_tensors(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [_cpu_bytes(s) for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            log.warning(
                "checkpoint has %d CUDA RNG states, this machine %d devices: CUDA RNG not restored",
                len(cuda_states),
                torch.cuda.device_count(),
            )
    if generator is not None and "generator" in state:
        generator.set_state(_cpu_bytes(state["generator"]))


def _cpu_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A generator state as torch's setters want it: a CPU uint8 tensor."""
    return tensor.detach().to("cpu", torch.uint8)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically (a killed job never leaves half a checkpoint)."""
    state = {"format": CHECKPOINT_FORMAT, **state}
    path = save_torch(path, state)
    log.info("wrote checkpoint %s (step %s)", path, state.get("step"))
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, checking its format."""
    path = Path(path)
    state = load_torch(path, "training checkpoint", "delete it to start training from scratch", map_location)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CortexflowInputError(
            f"not a cortexflow training checkpoint of format {CHECKPOINT_FORMAT}",
            path=path,
            fix="delete it to start training from scratch",
        )
    return state


def _python_state_to_tensors(state: tuple) -> dict[str, Any]:
    version, internal, gauss_next = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next}


def _python_state_from_tensors(state: dict[str, Any]) -> tuple:
    return state["version"], tuple(int(x) for x in state["internal"].tolist()), state["gauss_next"]


def prune_stale_checkpoints(checkpoint_dir: str | Path) -> list[Path]:
    """Remove the sibling folders of ``checkpoint_dir`` that no resume can use; return them.

    The workflow keys each decoder's checkpoint folder by its settings and code
    (``checkpoints/sub-01_image/<key>/last.pt``), so after an edit the old key's
    folder is never resumed again: it only takes disk space (169 MB after one
    default run). Called once a training stage has written its final output;
    ``checkpoint_dir`` itself is kept (its ``last.pt`` lets a lost output be
    rebuilt without training again). Only folders holding nothing but ``.pt``
    files are removed, so nothing a user put beside them is touched.
    """
    import shutil

    current = Path(checkpoint_dir).resolve()
    removed = []
    if not current.parent.is_dir():
        return removed
    for sibling in sorted(current.parent.iterdir()):
        if sibling.resolve() == current or not sibling.is_dir():
            continue
        files = list(sibling.rglob("*"))
        if not all(f.is_file() and f.suffix == ".pt" or f.is_dir() for f in files):
            continue
        size = sum(f.stat().st_size for f in files if f.is_file())
        shutil.rmtree(sibling)
        log.info("removed stale checkpoints %s (%.1f MB; another run's settings or code)", sibling, size / 1e6)
        removed.append(sibling)
    return removed
