"""Atomic file writing and small I/O helpers shared by every stage.

Each artifact is written under a temporary name in its final folder and renamed
into place only once complete, so a killed job never leaves a half-written file
that looks finished (``os.replace`` is atomic on POSIX within one filesystem).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("cortexflow.io")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp create files 0600 and folders 0700; give the artifact the
    permissions an ordinary ``open``/``mkdir`` would (0666/0777 minus the umask),
    so results can be shared with a lab group on a cluster."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    The temporary file keeps ``path``'s suffixes (``.nii.gz``, ``.parquet``) so
    writers that infer the format from the name still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; rename it to ``path`` on success.

    An existing ``path`` is replaced only after the new folder is complete.
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _publish_mode(tmp, directory=True)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
    log.debug("wrote %s %s", path, getattr(array, "shape", ""))
    return Path(path)


def save_npz(path: str | Path, **arrays: Any) -> Path:
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return Path(path)


def save_parquet(path: str | Path, frame: Any) -> Path:
    with atomic_write(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(path)


def save_json(path: str | Path, obj: Any) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
    return Path(path)


def save_torch(path: str | Path, obj: Any) -> Path:
    import torch

    with atomic_write(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def set_threads(n: int | None) -> None:
    """Limit torch's intra-op threads to what the scheduler gave this job."""
    if not n:
        return
    import torch

    torch.set_num_threads(max(1, int(n)))
