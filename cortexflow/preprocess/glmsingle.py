"""Single-trial betas that GLMsingle estimated, read in place of cortexflow's own GLM.

GLMsingle (Prince et al. 2022, *eLife* 11:e77599) fits an HRF per voxel,
GLMdenoise noise regressors and ridge regression per voxel. Its Python version
saves each model as a pickled dict with ``np.save``; the final model is
``TYPED_FITHRF_GLMDENOISE_RR.npy``, whose ``betasmd`` holds the betas in
percent signal change, one per trial **in chronological order** (runs in the
order they were given, trials by onset within a run), shaped
``X x Y x Z x trials`` for volumes or ``voxels x 1 x 1 x trials`` for data given
as a (voxels x time) matrix. The MATLAB version saves ``modelmd`` in a ``.mat``
(``-v7``; ``-v7.3`` files are HDF5 and need re-saving). ``DESIGNINFO.npy`` beside
it holds ``numtrialrun``, the trials per run, which is checked when present.

cortexflow's trials are the events with a stimulus id, by onset, in cortexflow's
run order (sessions, then runs) — the order GLMsingle's design must follow.
Voxels of a matrix input are the brain-mask voxels in NumPy's C order
(``bold.get_fdata()[mask > 0]``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cortexflow.errors import CortexflowInputError

log = logging.getLogger("cortexflow.preprocess.glmsingle")

BETA_KEYS = ("betasmd", "modelmd")  # Python's name, MATLAB's name


def _load_dict(path: Path) -> dict:
    if path.suffix == ".mat":
        from scipy.io import loadmat

        try:
            return {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
        except NotImplementedError:
            raise CortexflowInputError("this .mat file is MATLAB -v7.3 (HDF5), which scipy cannot read", path=path,
                                       fix="re-save it in MATLAB with save(..., '-v7'), or use GLMsingle's Python output "
                                           "(.npy)") from None
        except (ValueError, OSError, EOFError) as e:
            raise CortexflowInputError(f"cannot read the GLMsingle .mat file ({e})", path=path,
                                       fix="re-save it from GLMsingle's results") from None
    try:
        # GLMsingle saves a dict with np.save, which pickles it: only load files you made
        obj = np.load(path, allow_pickle=True)
    except (ValueError, OSError, EOFError) as e:
        raise CortexflowInputError(f"cannot read the GLMsingle output ({type(e).__name__}: {e})", path=path,
                                   fix="point data.glmsingle at GLMsingle's TYPED_FITHRF_GLMDENOISE_RR.npy") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise CortexflowInputError(f"expected GLMsingle's saved dict, found a {type(obj).__name__}", path=path,
                                   fix="point data.glmsingle at GLMsingle's TYPED_FITHRF_GLMDENOISE_RR.npy")
    return obj


def read_glmsingle(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(betas shaped spatial... x trials, trials per run from DESIGNINFO or None)."""
    path = Path(path)
    if not path.is_file():
        raise CortexflowInputError("the GLMsingle output does not exist", path=path,
                                   fix="run GLMsingle first, or correct data.glmsingle")
    results = _load_dict(path)
    key = next((k for k in BETA_KEYS if k in results), None)
    if key is None:
        raise CortexflowInputError(f"no betasmd (or modelmd) in this GLMsingle output; it has {sorted(results)[:10]}",
                                   path=path, fix="use the TYPED_FITHRF_GLMDENOISE_RR file (models B-D have betasmd)")
    betas = np.asarray(results[key], dtype=np.float32)
    if betas.ndim == 2:  # a (voxels x trials) matrix saved without GLMsingle's singleton axes
        betas = betas[:, None, None, :]
    if betas.ndim != 4:
        raise CortexflowInputError(f"{key} must be X x Y x Z x trials or voxels x 1 x 1 x trials, not {betas.shape}",
                                   path=path, fix="use GLMsingle's own output file")
    per_run = None
    design = path.with_name("DESIGNINFO" + path.suffix)
    if design.is_file():
        info = _load_dict(design)
        if "numtrialrun" in info:
            per_run = np.asarray(info["numtrialrun"]).ravel().astype(int)
    return betas, per_run


def run_betas(path: str | Path, run_index: int, trials_per_run: Sequence[int], inside: np.ndarray,
              events_paths: Sequence[str]) -> np.ndarray:
    """This run's (trials x mask voxels) betas from a GLMsingle output covering ``events_paths``' runs."""
    betas, design_counts = read_glmsingle(path)
    counts = np.asarray(trials_per_run, dtype=int)
    if design_counts is not None and not np.array_equal(design_counts, counts):
        raise CortexflowInputError(
            f"DESIGNINFO's trials per run {design_counts.tolist()} differ from the events' {counts.tolist()} "
            f"({', '.join(Path(p).name for p in events_paths)})", path=Path(path).with_name("DESIGNINFO.npy"),
            fix="fit GLMsingle on the same runs, in cortexflow's run order, with one design column per stimulus event")
    if betas.shape[3] != counts.sum():
        raise CortexflowInputError(
            f"{betas.shape[3]} trials in the GLMsingle betas but {counts.sum()} stimulus events in the runs' events "
            f"({', '.join(Path(p).name for p in events_paths)})", path=path,
            fix="fit GLMsingle on exactly these runs, in this order")
    start = int(counts[:run_index].sum())
    chunk = betas[..., start:start + counts[run_index]]
    if chunk.shape[:3] == inside.shape:
        values = chunk[inside]
    elif chunk.shape[1:3] == (1, 1) and chunk.shape[0] == int(inside.sum()):
        values = chunk[:, 0, 0, :]
    else:
        raise CortexflowInputError(
            f"GLMsingle betas of spatial shape {betas.shape[:3]} fit neither the BOLD grid {inside.shape} nor the "
            f"{int(inside.sum())} brain-mask voxels", path=path,
            fix="run GLMsingle on this space's preprocessed BOLD (volumes, or the mask's voxels in C order)")
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise CortexflowInputError(f"{int(bad.sum())} brain-mask voxels have NaN or inf GLMsingle betas", path=path,
                                   fix="run GLMsingle with the same brain mask, or use a mask that excludes them")
    log.info("read %d trials of run %d from %s (trials %d-%d of %d)", chunk.shape[3], run_index + 1, path,
             start, start + chunk.shape[3] - 1, betas.shape[3])
    return values.T  # (trials, voxels)
