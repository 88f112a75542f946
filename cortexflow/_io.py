"""Atomic file writing and small I/O helpers shared by every stage.

Each artifact is written under a temporary name in its final folder and renamed
into place only once complete, so a killed job never leaves a half-written file
that looks finished (``os.replace`` is atomic on POSIX within one filesystem).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cortexflow.errors import CortexflowInputError

log = logging.getLogger("cortexflow.io")

# What a truncated or otherwise damaged file raises while its data are read:
# gzip/zlib streams cut short (EOFError, zlib.error, BadGzipFile is an OSError),
# short reads and I/O errors (OSError), numpy's and nibabel's size checks
# (ValueError: "cannot reshape", "mmap length is greater than file size"), and
# a damaged zip archive (.npz: BadZipFile, KeyError of a missing member).
_DAMAGED = (OSError, EOFError, ValueError, zlib.error, zipfile.BadZipFile, KeyError)
# Writing fails for reasons the user fixes outside the code: a full disk or quota,
# a read-only or forbidden folder.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _damaged(path: str | Path, what: str, e: BaseException, fix: str | None = None) -> CortexflowInputError:
    reason = (str(e).splitlines() or [""])[0][:200]  # the first line: torch's pickling errors run to paragraphs
    return CortexflowInputError(
        f"cannot read the {what}: the file is truncated or damaged ({type(e).__name__}: {reason})", path=path,
        fix=fix or "rerun the stage that wrote it (delete the file first), or restore it from its source")


def _missing(path: str | Path, what: str, fix: str | None) -> CortexflowInputError:
    return CortexflowInputError(f"the {what} does not exist", path=path,
                                fix=fix or "check the path, or run the earlier stages first")


def load_npy(path: str | Path, what: str = "array file", fix: str | None = None) -> np.ndarray:
    """``np.load`` of a .npy whose damage (truncation, bad header) becomes an input error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path, what, fix)
    try:
        return np.load(path, allow_pickle=False)
    except _DAMAGED as e:
        raise _damaged(path, what, e, fix) from None


def load_npz(path: str | Path, what: str = "array archive", fix: str | None = None) -> dict[str, np.ndarray]:
    """Every array of a .npz, read now (a lazy NpzFile would fail later, far from the file's name)."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path, what, fix)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except _DAMAGED as e:
        raise _damaged(path, what, e, fix) from None


def read_parquet(path: str | Path, what: str = "table", fix: str | None = None):  # noqa: ANN201 - DataFrame
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise _missing(path, what, fix)
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises ArrowInvalid (a ValueError) or OSError for broken files
        raise _damaged(path, what, e, fix) from None


def image_data(img: Any, path: str | Path, what: str, dtype: Any = None, fix: str | None = None) -> np.ndarray:
    """The voxel array of a nibabel image; a truncated file (whose header reads but whose
    data do not) becomes an input error naming it. ``dtype``: float type for ``get_fdata``."""
    try:
        return img.get_fdata(dtype=dtype) if dtype is not None else np.asanyarray(img.dataobj)
    except _DAMAGED as e:
        raise _damaged(path, what, e, fix or "re-export or re-copy the file (a .nii.gz that was cut short, e.g. "
                                             "by an interrupted transfer, has a readable header but not all its data)") from None


def _write_error(path: Path, e: OSError) -> CortexflowInputError | None:
    if e.errno in _WRITE_ERRNOS or "No space left" in str(e):
        return CortexflowInputError(f"cannot write the file ({e.strerror or e})", path=path,
                                    fix="free disk space or quota, or make the results folder writable; "
                                        "nothing was written in its place, so rerunning then continues")
    return None


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
    suffix = "".join(path.suffixes) or ".tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=f".tmp{suffix}", dir=path.parent)
    except OSError as e:
        err = _write_error(path, e)
        if err is not None:
            raise err from e
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _publish_mode(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        err = _write_error(path, e)
        if err is not None:
            raise err from e
        raise
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:
        err = _write_error(path, e)
        if err is not None:
            raise err from e
        raise
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
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        err = _write_error(path, e)
        if err is not None:
            raise err from e
        raise
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


def load_torch(path: str | Path, what: str = "file", fix: str | None = None, map_location: Any = None) -> Any:
    """``torch.load(path, weights_only=True)``; a file that cannot be read (truncated, foreign) is the
    project's input error naming it, the problem and ``fix``."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # zip/pickle errors of a truncated or foreign file
        raise _damaged(path, what, e, fix) from e


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


def npz_memmap(path: str | Path, name: str) -> np.ndarray:
    """Array ``name`` of the ``.npz`` at ``path``, memory-mapped read-only: its rows are read from
    disk when indexed, so a process that needs a few rows of a large array does not hold it all.

    ``np.savez`` (``save_npz``) stores each array uncompressed in the zip: an ``.npy`` file whose
    bytes can be mapped where they lie. A compressed member (``np.savez_compressed``), an empty
    array or one of Python objects is read whole instead.
    """
    import struct

    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{name}.npy")
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)  # the zip's local file header: name and extra-field lengths at bytes 26-29
            if local[:4] == b"PK\x03\x04":
                name_length, extra_length = struct.unpack("<HH", local[26:30])
                f.seek(info.header_offset + 30 + name_length + extra_length)
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran_order, dtype = read_header(f)
                if not dtype.hasobject and int(np.prod(shape)) > 0:
                    return np.memmap(path, dtype=dtype, mode="r", offset=f.tell(), shape=shape,
                                     order="F" if fortran_order else "C")
    with np.load(path, allow_pickle=False) as f:
        return f[name]
