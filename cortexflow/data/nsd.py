"""The Natural Scenes Dataset read from its own files (``data.source: nsd``).

NSD (Allen et al. 2022, *Nat. Neurosci.* 25:116) ships single-trial betas, so
this reader needs no BOLD runs and no GLM: it goes from an NSD download folder
(``data.nsd.root``, the layout of the NSD data manual, cvnlab.slite.page) to the
files that ``extract_rois`` writes for a BIDS study (docs/contracts.md), and
``make_dataset`` takes it from there. What it reads:

* ``nsddata/experiments/nsd/nsd_expdesign.mat`` (MATLAB v5, scipy's loadmat):
  ``masterordering`` (1 x 30,000: for trial t of the experiment, a 1-based
  column of ``subjectim``; the first 750 are session 1, the next 750 session 2,
  and so on), ``subjectim`` (8 x 10,000: each subject's images as 1-based 73k
  ids) and ``sharedix`` (the 1,000 images every subject was scheduled to see,
  1-based 73k ids). Trial t of subject s shows 73k image
  ``subjectim[s, masterordering[t] - 1]``.
* ``nsddata_betas/ppdata/subjXX/<resolution>/<betas>/betas_sessionNN.nii.gz``
  (X x Y x Z x 750) or ``.hdf5`` (dataset ``betas``, MATLAB's X x Y x Z x 750
  stored column-major, so h5py sees 750 x Z x Y x X): int16, percent signal
  change times 300, zero outside a liberal brain mask (and in voxels a session
  did not fully cover). One session at a time, and only the ROI's voxels are
  kept: a 1.8 mm session is ~1 GB as int16, the ROI ~2 % of it.
* ``nsddata/ppdata/subjXX/<resolution>/roi/<roi>.nii.gz`` (-1 outside the
  cortex, 0 outside the ROI, >= 1 inside): the voxels decoded. Optional further
  label files (``streams``, ``prf-visualrois``, ...) split them into regions,
  named by ``nsddata/freesurfer/subjXX/label/<name>.mgz.ctab`` when present.
* ``nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5`` (``imgBrick``, 73,000 x 425 x
  425 x 3 uint8, row = 0-based 73k id): only the images shown are read, and
  resized by area averaging to ``data.nsd.image_size``.

Stimulus ids are ``nsd-<nsdId>`` with the 0-based ``nsdId`` of
``nsd_stim_info_merged.csv`` (= imgBrick row = 73k id - 1). The shared images
are the test split; every other image is training (``stimuli.tsv``'s split
column), so no test image is ever trained on, for any subject.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from cortexflow.errors import CortexflowInputError
from cortexflow.sections import from_mapping

log = logging.getLogger("cortexflow.data.nsd")

TRIALS_PER_SESSION = 750  # NSD: 12 runs of 63 (odd runs) or 62 (even runs) stimulus trials
RUNS_PER_SESSION = 12
SESSION_FILE = re.compile(r"^betas_session(\d+)\.(nii\.gz|hdf5)$")
FORMATS = {"nifti": ".nii.gz", "hdf5": ".hdf5"}


@dataclass(frozen=True)
class NSDConfig:
    """The ``data.nsd`` section of the config (docs/nsd.md).

    ``sessions``: an integer N (sessions 1..N, each must be there), a list of
    session numbers, or null (every session whose betas file is found).
    ``format``: ``auto`` reads ``.hdf5`` where a session has one (random access
    to the ROI's voxels) and ``.nii.gz`` otherwise. ``roi``: the label file in
    ``roi/`` whose voxels (label >= 1) are decoded; ``regions``: further label
    files of ``roi/`` that name parts of it (the ROI encoder's regions).
    ``beta_scale``: what the stored betas are divided by (NSD: 300).
    ``trials_per_session``: NSD's 750; only a dataset in NSD's layout with
    shorter sessions (the tests' fixture) sets it.
    """

    root: str | None = None
    sessions: int | tuple[int, ...] | None = None
    resolution: Literal["func1pt8mm", "func1mm"] = "func1pt8mm"
    betas: str = "betas_fithrf_GLMdenoise_RR"
    format: Literal["auto", "hdf5", "nifti"] = "auto"
    roi: str = "nsdgeneral"
    regions: tuple[str, ...] = ()
    image_size: int = 256
    beta_scale: float = 300.0
    trials_per_session: int = TRIALS_PER_SESSION

    def __post_init__(self) -> None:
        fix = "correct data.nsd in the config (docs/nsd.md)"
        if isinstance(self.sessions, int) and self.sessions < 1:
            raise CortexflowInputError("data.nsd.sessions must be >= 1", fix=fix)
        if isinstance(self.sessions, tuple) and (not self.sessions or min(self.sessions) < 1):
            raise CortexflowInputError("data.nsd.sessions must list session numbers >= 1", fix=fix)
        if self.image_size < 8:
            raise CortexflowInputError("data.nsd.image_size must be >= 8 pixels", fix=fix)
        if self.beta_scale <= 0 or self.trials_per_session < 1:
            raise CortexflowInputError("data.nsd.beta_scale and trials_per_session must be positive", fix=fix)

    @classmethod
    def from_params(cls, params: NSDConfig | Mapping | None) -> NSDConfig:
        """From ``data.nsd`` itself, or from a mapping holding it under ``nsd`` (the data section)."""
        if isinstance(params, Mapping) and "nsd" in params:
            params = params["nsd"]
        return from_mapping(cls, params, "data.nsd")


# ----------------------------------------------------------------------------- where NSD keeps its files


def subject_folder(subject: str) -> str:
    """``subj01`` for subject label ``01`` (or ``1``)."""
    if not str(subject).isdigit():
        raise CortexflowInputError(f"NSD subject labels are numbers (01 ... 08), not {subject!r}",
                                   fix="list NSD subjects as data.subjects: ['01', '02', ...]")
    return f"subj{int(subject):02d}"


def expdesign_file(root: str | Path) -> Path:
    return Path(root) / "nsddata" / "experiments" / "nsd" / "nsd_expdesign.mat"


def stim_info_file(root: str | Path) -> Path:
    return Path(root) / "nsddata" / "experiments" / "nsd" / "nsd_stim_info_merged.csv"


def stimuli_file(root: str | Path) -> Path:
    return Path(root) / "nsddata_stimuli" / "stimuli" / "nsd" / "nsd_stimuli.hdf5"


def betas_folder(root: str | Path, subject: str, cfg: NSDConfig) -> Path:
    return Path(root) / "nsddata_betas" / "ppdata" / subject_folder(subject) / cfg.resolution / cfg.betas


def roi_file(root: str | Path, subject: str, name: str, cfg: NSDConfig) -> Path:
    return Path(root) / "nsddata" / "ppdata" / subject_folder(subject) / cfg.resolution / "roi" / f"{name}.nii.gz"


def label_table_file(root: str | Path, subject: str, name: str) -> Path:
    """The FreeSurfer colour table naming the labels of ROI file ``name``."""
    return Path(root) / "nsddata" / "freesurfer" / subject_folder(subject) / "label" / f"{name}.mgz.ctab"


def find_subjects(root: str | Path, cfg: NSDConfig) -> list[str]:
    """Labels (``01`` ...) of the subjects with a betas folder of the configured kind."""
    base = Path(root) / "nsddata_betas" / "ppdata"
    found = sorted(p.name[4:] for p in base.glob("subj[0-9]*") if (p / cfg.resolution / cfg.betas).is_dir())
    if not found:
        raise CortexflowInputError(f"no subject has betas in {base}/subjXX/{cfg.resolution}/{cfg.betas}",
                                   path=base, fix="set data.nsd.root to the NSD download folder (it holds "
                                   "nsddata/ and nsddata_betas/), or data.nsd.resolution / data.nsd.betas "
                                   "to the betas you downloaded (docs/nsd.md)")
    return found


def session_files(root: str | Path, subject: str, cfg: NSDConfig) -> list[Path]:
    """The betas file of each configured session of one subject, in session order."""
    folder = betas_folder(root, subject, cfg)
    suffixes = [FORMATS[cfg.format]] if cfg.format != "auto" else [".hdf5", ".nii.gz"]
    found: dict[int, Path] = {}
    if folder.is_dir():
        for path in folder.iterdir():
            match = SESSION_FILE.match(path.name)
            if match and "." + match.group(2) in suffixes:
                session = int(match.group(1))
                # auto: a session's .hdf5 (random access) wins over its .nii.gz
                if session not in found or suffixes.index("." + match.group(2)) < suffixes.index(
                        "".join(found[session].suffixes)):
                    found[session] = path
    kind = "betas_sessionNN" + (FORMATS[cfg.format] if cfg.format != "auto" else ".hdf5 or .nii.gz")
    if cfg.sessions is None:
        wanted = sorted(found)
        if not wanted:
            raise CortexflowInputError(f"no {kind} file for {subject_folder(subject)}", path=folder,
                                       fix="download the betas of this subject (docs/nsd.md) or drop it from "
                                       "data.subjects")
    else:
        wanted = list(range(1, cfg.sessions + 1)) if isinstance(cfg.sessions, int) else sorted(set(cfg.sessions))
    missing = [s for s in wanted if s not in found]
    if missing:
        have = f"it has sessions {_ranges(sorted(found))}" if found else "it has none"
        raise CortexflowInputError(
            f"{subject_folder(subject)} lacks the {kind} file of session(s) {_ranges(missing)} ({have}; "
            f"data.nsd.sessions asks for {_ranges(wanted)})", path=folder,
            fix="download them, or set data.nsd.sessions to the sessions you have (NSD subjects have 40, 40, 32, "
                "30, 40, 32, 40 and 30 sessions)")
    return [found[s] for s in wanted]


def session_of(path: str | Path) -> int:
    """The session number in a betas file name (``betas_session07.hdf5`` -> 7)."""
    match = SESSION_FILE.match(Path(path).name)
    if not match:
        raise CortexflowInputError("not an NSD betas file name (betas_sessionNN.nii.gz or .hdf5)", path=path,
                                   fix="pass NSD's betas files under their own names")
    return int(match.group(1))


def _ranges(values: Sequence[int]) -> str:
    """``1-3, 7`` for [1, 2, 3, 7]."""
    out, values = [], sorted(values)
    start = prev = None
    for v in values + [None]:
        if v is not None and prev is not None and v == prev + 1:
            prev = v
            continue
        if start is not None:
            out.append(f"{start}-{prev}" if prev != start else f"{start}")
        start = prev = v
    return ", ".join(out)


def workflow_inputs(data: Mapping, subjects: Sequence[str] | None = None) -> dict:
    """What the workflow's nsd rules read, checked while Snakemake builds its job graph.

    ``data`` is the config's data section. Returns ``{"subjects": [...],
    "expdesign", "stimuli", "stim_info" (or None), "per_subject": {subject:
    {"betas": [...], "roi", "regions": [...], "region_tables": [...]}}}``; a
    missing file stops the dry run with a message naming it and the fix.
    """
    cfg = NSDConfig.from_params(data.get("nsd"))
    if not cfg.root:
        raise CortexflowInputError("data.source is nsd but data.nsd.root is not set",
                                   fix="set data.nsd.root to the NSD download folder (docs/nsd.md)")
    root = Path(cfg.root)
    if not root.is_dir():
        raise CortexflowInputError("the NSD folder (data.nsd.root) does not exist", path=root,
                                   fix="set data.nsd.root to the folder holding nsddata/ and nsddata_betas/")
    other = [m for m in data.get("modalities", []) if m != "image"]
    if other:
        raise CortexflowInputError(f"NSD holds images only, but data.modalities lists {other}",
                                   fix="set data.modalities: [image]")
    expdesign, stimuli = expdesign_file(root), stimuli_file(root)
    for path, what in ((expdesign, "the experimental design"), (stimuli, "the stimulus images")):
        if not path.is_file():
            raise CortexflowInputError(f"{what} file is missing", path=path,
                                       fix=f"download {path.relative_to(root)} from NSD (docs/nsd.md)")
    labels = [str(s) for s in (subjects or data.get("subjects") or find_subjects(root, cfg))]
    per_subject = {}
    for subject in labels:
        roi = roi_file(root, subject, cfg.roi, cfg)
        regions = [roi_file(root, subject, name, cfg) for name in cfg.regions]
        for path in [roi, *regions]:
            if not path.is_file():
                raise CortexflowInputError(f"the ROI file of {subject_folder(subject)} is missing", path=path,
                                           fix="download it (nsddata/ppdata/subjXX/<resolution>/roi/), or correct "
                                           "data.nsd.roi / data.nsd.regions")
        tables = [label_table_file(root, subject, name) for name in cfg.regions]
        per_subject[subject] = {
            "betas": [str(p) for p in session_files(root, subject, cfg)],
            "roi": str(roi),
            "regions": [str(p) for p in regions],
            "region_tables": [str(p) for p in tables if p.is_file()],
        }
    info = stim_info_file(root)
    return {"subjects": labels, "expdesign": str(expdesign), "stimuli": str(stimuli),
            "stim_info": str(info) if info.is_file() else None, "per_subject": per_subject}


# ----------------------------------------------------------------------------- the experimental design


@dataclass(frozen=True)
class NSDDesign:
    """``nsd_expdesign.mat``'s trial order, kept 1-based as NSD writes it."""

    masterordering: np.ndarray  # (n_trials,) 1-based columns of subjectim
    subjectim: np.ndarray  # (n_subjects, n_images) 1-based 73k ids
    sharedix: np.ndarray  # (n_shared,) 1-based 73k ids


def read_expdesign(path: str | Path) -> NSDDesign:
    """Read and check ``nsd_expdesign.mat``."""
    from scipy.io import loadmat

    path = Path(path)
    fix = "use NSD's nsddata/experiments/nsd/nsd_expdesign.mat (download it again if it is damaged)"
    if not path.is_file():
        raise CortexflowInputError("the NSD experimental design file does not exist", path=path, fix=fix)
    try:
        mat = loadmat(path)
    except (NotImplementedError, ValueError, OSError, TypeError) as e:  # v7.3 (HDF5) files raise NotImplementedError
        raise CortexflowInputError(f"cannot read it as a MATLAB v5 file ({type(e).__name__}: {e})", path=path,
                                   fix=fix) from None
    missing = [k for k in ("masterordering", "subjectim", "sharedix") if k not in mat]
    if missing:
        raise CortexflowInputError(f"it lacks the variable(s) {', '.join(missing)}", path=path, fix=fix)
    order = np.asarray(mat["masterordering"]).astype(np.int64).ravel()
    subjectim = np.atleast_2d(np.asarray(mat["subjectim"]).astype(np.int64))
    shared = np.asarray(mat["sharedix"]).astype(np.int64).ravel()
    if order.size == 0 or order.min() < 1 or order.max() > subjectim.shape[1]:
        raise CortexflowInputError(f"masterordering's values ({order.min() if order.size else '-'} to "
                                   f"{order.max() if order.size else '-'}) are not 1-based columns of subjectim "
                                   f"({subjectim.shape[1]} columns)", path=path, fix=fix)
    if subjectim.min() < 1 or shared.size == 0 or shared.min() < 1:
        raise CortexflowInputError("subjectim and sharedix must hold 1-based 73k image ids", path=path, fix=fix)
    return NSDDesign(order, subjectim, shared)


def stimulus_ids(nsd_ids: np.ndarray) -> np.ndarray:
    """``nsd-00042`` for the 0-based nsdId 42."""
    return np.array([f"nsd-{int(i):05d}" for i in np.asarray(nsd_ids).ravel()], dtype=object)


def run_sizes(trials_per_session: int, runs: int = RUNS_PER_SESSION) -> list[int]:
    """Stimulus trials of each run: NSD's 750 are 63 in odd runs and 62 in even runs (data manual,
    responses.tsv); other totals are split as evenly, odd runs taking the remainder first."""
    base, extra = divmod(trials_per_session, runs)
    order = list(range(0, runs, 2)) + list(range(1, runs, 2))  # odd runs (index 0, 2, ...) first
    sizes = [base] * runs
    for index in order[:extra]:
        sizes[index] += 1
    return sizes


def subject_trials(design: NSDDesign, subject: str, sessions: Sequence[int],
                   trials_per_session: int = TRIALS_PER_SESSION, source: str | Path | None = None) -> pd.DataFrame:
    """One row per trial of ``sessions`` (in order): ``session``, ``run``, ``trial``, ``stimulus_id``,
    ``nsd_id`` (0-based), ``shared`` (one of the shared 1,000), ``modality``."""
    index = int(subject) - 1
    if not 0 <= index < design.subjectim.shape[0]:
        raise CortexflowInputError(f"subjectim has {design.subjectim.shape[0]} subjects; there is no subject "
                                   f"{subject}", path=source, fix="list NSD subjects 01 ... 08 in data.subjects")
    sizes = run_sizes(trials_per_session)
    run_of_trial = np.repeat(np.arange(1, len(sizes) + 1), sizes)
    trial_in_run = np.concatenate([np.arange(1, n + 1) for n in sizes])
    shared = set(design.sharedix.tolist())
    frames = []
    for session in sessions:
        start = (int(session) - 1) * trials_per_session
        stop = start + trials_per_session
        if stop > design.masterordering.size:
            raise CortexflowInputError(
                f"session {session} needs trials {start + 1}-{stop} of masterordering, which holds "
                f"{design.masterordering.size} ({design.masterordering.size // trials_per_session} sessions)",
                path=source, fix="set data.nsd.sessions to sessions that NSD has (1-40)")
        ids73k = design.subjectim[index, design.masterordering[start:stop] - 1]
        frames.append(pd.DataFrame({
            "session": f"{int(session):02d}",
            "run": [f"{int(session):02d}r{r:02d}" for r in run_of_trial],
            "trial": trial_in_run,
            "stimulus_id": stimulus_ids(ids73k - 1),
            "nsd_id": (ids73k - 1).astype(np.int64),
            "shared": [i in shared for i in ids73k.tolist()],
            "modality": "image",
        }))
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------- ROIs and betas


@dataclass
class ROIVoxels:
    """The decoded voxels of one subject: (n, 3) grid indices, the voxels table, the grid."""

    ijk: np.ndarray
    table: pd.DataFrame
    shape: tuple[int, int, int]
    affine: np.ndarray


def _load_labels(path: str | Path, what: str):
    import nibabel as nib

    from cortexflow import _io

    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises several types for broken files
        raise CortexflowInputError(f"cannot read {what} ({type(e).__name__}: {e})", path=path,
                                   fix="download the file from NSD again") from None
    data = np.asarray(_io.image_data(img, path, what))
    if data.ndim != 3:
        raise CortexflowInputError(f"{what} has shape {data.shape}; an ROI file is one 3-D volume", path=path,
                                   fix="use NSD's nsddata/ppdata/subjXX/<resolution>/roi/<name>.nii.gz")
    return np.rint(data).astype(np.int64), img.affine


def read_label_table(path: str | Path) -> dict[int, str]:
    """Label value -> name from a FreeSurfer colour table (``<value> <name> ...`` per line)."""
    names = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].lstrip("-").isdigit():
            names[int(parts[0])] = parts[1]
    return names


def roi_voxels(roi: str | Path, regions: Sequence[str | Path] = (), region_tables: Sequence[str | Path] = ()) -> ROIVoxels:
    """The voxels with label >= 1 in ``roi``, split into the labels of ``regions`` (the first file that labels a
    voxel names it; unlabelled voxels keep the ROI's name), grouped by region as the ROI encoder needs."""
    from cortexflow.preprocess.rois import RegionMap

    mask_labels, affine = _load_labels(roi, "the ROI file")
    mask = mask_labels >= 1
    roi_name = Path(roi).name.split(".")[0]
    if not mask.any():
        raise CortexflowInputError("the ROI has no voxel (no label >= 1)", path=roi,
                                   fix="use an ROI file that marks its voxels with 1 (NSD: -1 outside cortex, 0 outside)")
    tables = {Path(t).name.split(".")[0]: read_label_table(t) for t in region_tables}
    labels = np.zeros(mask.shape, dtype=np.int64)
    names: list[str] = []
    for path in regions:
        values, region_affine = _load_labels(path, "the region file")
        if values.shape != mask.shape or not np.allclose(region_affine, affine, atol=1e-3):
            raise CortexflowInputError(f"the region file's grid {values.shape} is not the ROI's {mask.shape} "
                                       f"({roi})", path=path,
                                       fix="use ROI files of the same preparation (data.nsd.resolution)")
        stem = Path(path).name.split(".")[0]
        table = tables.get(stem, {})
        for value in np.unique(values[mask & (labels == 0)]):
            if value < 1:
                continue
            name = table.get(int(value), f"{stem}-{int(value)}")
            if name in names or name == roi_name:
                name = f"{stem}:{name}"
            names.append(name)
            labels[mask & (labels == 0) & (values == value)] = len(names)
    rest = mask & (labels == 0)
    if rest.any():
        names.append(roi_name)
        labels[rest] = len(names)
    regions_map = RegionMap(labels, affine, names, [roi_name] * len(names))
    table = regions_map.voxels()
    return ROIVoxels(table[["i", "j", "k"]].to_numpy(np.int64), table, tuple(mask.shape), affine)


def read_session_betas(path: str | Path, voxels: ROIVoxels, trials_per_session: int = TRIALS_PER_SESSION,
                       beta_scale: float = 300.0, block: int = 50) -> np.ndarray:
    """(trials x voxels) float32 betas of one session file at ``voxels``, divided by ``beta_scale``.

    Reads the ROI's voxels only: from ``.hdf5`` slice by slice of its bounding
    box, from ``.nii.gz`` ``block`` volumes at a time (a gzip stream reads
    forward, so the whole file is decompressed once, never held whole).
    """
    path = Path(path)
    if not path.is_file():
        raise CortexflowInputError("the betas file does not exist", path=path,
                                   fix="download it, or set data.nsd.sessions to the sessions you have")
    raw = _read_hdf5_betas(path, voxels, trials_per_session) if path.name.endswith(".hdf5") \
        else _read_nifti_betas(path, voxels, trials_per_session, block)
    return (raw.astype(np.float32) / np.float32(beta_scale))


def _grid_error(path: Path, shape, voxels: ROIVoxels) -> CortexflowInputError:
    return CortexflowInputError(
        f"the betas' grid {tuple(shape)} is not the ROI's {voxels.shape}: betas and ROI come from different "
        "preparations (func1pt8mm vs func1mm) or subjects", path=path,
        fix="use the betas and roi/ files of the same subject and data.nsd.resolution")


def _trials_error(path: Path, n: int, expected: int) -> CortexflowInputError:
    return CortexflowInputError(f"the file holds {n} trials, an NSD session {expected}", path=path,
                                fix="download the file again (it may be cut short); data.nsd.trials_per_session "
                                    "is 750 for NSD")


def _read_nifti_betas(path: Path, voxels: ROIVoxels, trials: int, block: int) -> np.ndarray:
    import nibabel as nib

    try:
        img = nib.load(str(path), keep_file_open=True)
    except Exception as e:  # nibabel raises several types for broken headers
        raise CortexflowInputError(f"cannot read the betas file ({type(e).__name__}: {e})", path=path,
                                   fix="download the file again") from None
    if len(img.shape) != 4 or tuple(img.shape[:3]) != voxels.shape:
        raise _grid_error(path, img.shape[:3], voxels)
    if not np.allclose(img.affine, voxels.affine, atol=1e-3):
        raise CortexflowInputError("the betas' affine differs from the ROI's (same shape, other position)",
                                   path=path, fix="use the betas and roi/ files of the same subject and resolution")
    if img.shape[3] != trials:
        raise _trials_error(path, img.shape[3], trials)
    if np.dtype(img.get_data_dtype()) != np.int16:
        log.warning("%s stores %s, not NSD's int16 (percent signal change x 300); check data.nsd.beta_scale",
                    path, img.get_data_dtype())
    i, j, k = voxels.ijk.T
    out = np.empty((trials, len(voxels.ijk)), dtype=np.float32)
    try:
        for start in range(0, trials, block):
            stop = min(start + block, trials)
            chunk = np.asarray(img.dataobj[..., start:stop])
            out[start:stop] = chunk[i, j, k, :].T
    except (EOFError, OSError, ValueError) as e:  # gzip streams cut short
        raise CortexflowInputError(f"cannot read the betas ({type(e).__name__}: {e})", path=path,
                                   fix="download the file again (it looks cut short)") from None
    finally:
        img.uncache()
    return out


def _read_hdf5_betas(path: Path, voxels: ROIVoxels, trials: int) -> np.ndarray:
    h5py = _h5py()
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CortexflowInputError(f"cannot open the HDF5 file ({e})", path=path,
                                   fix="download the file again") from None
    with f:
        if "betas" not in f:
            raise CortexflowInputError(f"the file has no 'betas' dataset (it has {sorted(f.keys())})", path=path,
                                       fix="use NSD's betas_sessionNN.hdf5")
        data = f["betas"]
        # MATLAB wrote X x Y x Z x trials column-major: h5py sees trials x Z x Y x X
        if data.ndim != 4 or tuple(data.shape[1:][::-1]) != voxels.shape:
            raise _grid_error(path, tuple(data.shape[1:][::-1]) if data.ndim == 4 else data.shape, voxels)
        if data.shape[0] != trials:
            raise _trials_error(path, data.shape[0], trials)
        out = np.empty((trials, len(voxels.ijk)), dtype=np.float32)
        i, j, k = voxels.ijk.T
        j0, j1, i0, i1 = j.min(), j.max() + 1, i.min(), i.max() + 1
        for z in np.unique(k):
            cols = np.flatnonzero(k == z)
            slab = data[:, int(z), j0:j1, i0:i1]  # trials x (Y box) x (X box)
            out[:, cols] = slab[:, j[cols] - j0, i[cols] - i0]
    return out


def _h5py():
    try:
        import h5py
    except ImportError:
        raise CortexflowInputError("reading NSD's .hdf5 files needs the h5py package",
                                   fix="pip install h5py==3.16.0 (it is in requirements.txt)") from None
    return h5py


# ----------------------------------------------------------------------------- stimuli


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8 by area averaging (PIL's box filter: each output pixel is
    the mean of the input pixels it covers, so downsampling does not alias and values stay in range)."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.Resampling.BOX))


def read_images(path: str | Path, nsd_ids: Sequence[int], batch: int = 64):
    """Yield (nsd_id, (425, 425, 3) uint8 image) from ``imgBrick`` for the given ids, in increasing id order."""
    h5py = _h5py()
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CortexflowInputError(f"cannot open the HDF5 file ({e})", path=path, fix="download it again") from None
    with f:
        if "imgBrick" not in f:
            raise CortexflowInputError(f"the file has no 'imgBrick' dataset (it has {sorted(f.keys())})", path=path,
                                       fix="use NSD's nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5")
        brick = f["imgBrick"]
        if brick.ndim != 4 or brick.shape[3] != 3:
            raise CortexflowInputError(f"imgBrick has shape {brick.shape}; NSD's is 73000 x 425 x 425 x 3", path=path,
                                       fix="use NSD's nsd_stimuli.hdf5")
        ids = np.unique(np.asarray(nsd_ids, dtype=np.int64))
        if ids.size and (ids.min() < 0 or ids.max() >= brick.shape[0]):
            raise CortexflowInputError(f"the design names image {int(ids.max()) + 1} (73k id) but imgBrick holds "
                                       f"{brick.shape[0]}", path=path, fix="use NSD's full nsd_stimuli.hdf5")
        for start in range(0, ids.size, batch):
            chunk = ids[start:start + batch]
            images = brick[chunk.tolist()]  # h5py reads increasing index lists
            yield from zip(chunk.tolist(), images)


# ----------------------------------------------------------------------------- stages


def nsd_betas_stage(
    *,
    subject: str,
    expdesign: str,
    betas: list[str],
    roi: str,
    out_betas: str,
    out_trials: str,
    out_voxels: str,
    params: dict,
    regions: list[str] = (),
    region_tables: list[str] = (),
) -> None:
    """One NSD subject: its single-trial betas at the ROI's voxels, with trials and voxels tables.

    Writes what extract_rois writes for a BIDS study (docs/contracts.md), from
    NSD's betas_sessionNN files (any order; stacked in session order), the
    experimental design and the ROI (docs/nsd.md). ``params`` is data.nsd (or
    the data section holding it).
    """
    from tqdm import tqdm

    from cortexflow import _io

    cfg = NSDConfig.from_params(params)
    if not betas:
        raise CortexflowInputError("no betas files given", fix="pass the subject's betas_sessionNN files")
    files = sorted(betas, key=session_of)
    sessions = [session_of(p) for p in files]
    if len(set(sessions)) != len(sessions):
        raise CortexflowInputError(f"session(s) given twice: {sorted(s for s in set(sessions) if sessions.count(s) > 1)}",
                                   path=files[0], fix="pass one betas file (.hdf5 or .nii.gz) per session")
    design = read_expdesign(expdesign)
    trials = subject_trials(design, subject, sessions, cfg.trials_per_session, source=expdesign)
    voxels = roi_voxels(roi, regions, region_tables)
    n_vox = len(voxels.ijk)
    matrix = np.empty((len(trials), n_vox), dtype=np.float32)
    valid = np.ones(n_vox, dtype=bool)
    t = cfg.trials_per_session
    for n, path in enumerate(tqdm(files, desc=f"sub-{subject} sessions", unit="session", disable=None)):
        block = read_session_betas(path, voxels, t, cfg.beta_scale)
        matrix[n * t:(n + 1) * t] = block
        # NSD stores 0 where a session did not cover a voxel (and outside its brain mask)
        valid &= np.any(block != 0, axis=0)
        log.info("read %s: %d trials x %d ROI voxels", path, block.shape[0], n_vox)
    if not valid.any():
        raise CortexflowInputError("every ROI voxel is zero in some session", path=files[0],
                                   fix="check that the betas and the ROI are of the same subject")
    if not valid.all():
        log.warning("sub-%s: %d of %d ROI voxels are zero in every trial of some session (not covered); left out",
                    subject, int((~valid).sum()), n_vox)
        matrix = matrix[:, valid]
    table = voxels.table[valid].reset_index(drop=True)
    _io.save_npy(out_betas, matrix)
    _io.save_parquet(out_trials, trials)
    _io.save_parquet(out_voxels, table)
    log.info("wrote %s: sub-%s, %d sessions, %d trials x %d voxels in %d region(s); %d trials of shared images",
             out_betas, subject, len(files), matrix.shape[0], matrix.shape[1], table["region"].nunique(),
             int(trials["shared"].sum()))


def nsd_stimuli_stage(
    *,
    trials: list[str],
    expdesign: str,
    stimuli: str,
    out: str,
    params: dict,
    stim_info: str | None = None,
) -> None:
    """The study's stimuli.tsv and images: every NSD image the trials show, resized to data.nsd.image_size.

    ``trials`` are nsd_betas' trials tables of every subject; the shared 1,000
    (sharedix of ``expdesign``) are the test split, all others training. The
    images go to ``images/`` beside ``out`` (stimuli.tsv's paths are relative
    to its folder, as in a BIDS study's stimuli/).
    ``stimuli`` is nsd_stimuli.hdf5; ``stim_info`` (nsd_stim_info_merged.csv),
    when given, adds each image's COCO id.
    """
    from tqdm import tqdm

    from cortexflow import _io

    cfg = NSDConfig.from_params(params)
    design = read_expdesign(expdesign)
    shared = set((design.sharedix - 1).tolist())
    ids: set[int] = set()
    for path in trials:
        table = _io.read_parquet(path, "NSD trials table", "rerun nsd_betas for this subject (delete the file first)")
        if "nsd_id" not in table.columns:
            raise CortexflowInputError("the trials table has no nsd_id column", path=path,
                                       fix="pass the trials tables written by nsd_betas")
        ids |= set(table["nsd_id"].astype(np.int64).tolist())
    nsd_ids = np.array(sorted(ids), dtype=np.int64)
    names = stimulus_ids(nsd_ids)
    rows = pd.DataFrame({"stimulus_id": names, "modality": "image",
                         "path": [f"images/{name}.png" for name in names],
                         "split": ["test" if i in shared else "train" for i in nsd_ids.tolist()],
                         "nsd_id": nsd_ids})
    if stim_info:
        info = pd.read_csv(stim_info)
        if {"nsdId", "cocoId"} <= set(info.columns):
            coco = dict(zip(info["nsdId"].astype(np.int64), info["cocoId"].astype(np.int64)))
            rows["coco_id"] = [coco.get(i, -1) for i in nsd_ids.tolist()]
        else:
            log.warning("%s has no nsdId/cocoId columns; COCO ids left out", stim_info)
    from PIL import Image

    out_images = Path(out).parent / "images"
    with _io.atomic_dir(out_images) as folder:
        for nsd_id, image in tqdm(read_images(stimuli, nsd_ids), total=len(nsd_ids), desc="NSD images",
                                  unit="image", disable=None):
            Image.fromarray(resize_image(image, cfg.image_size)).save(folder / f"{stimulus_ids([nsd_id])[0]}.png")
    with _io.atomic_write(out) as tmp:
        rows.to_csv(tmp, sep="\t", index=False)
    log.info("wrote %s and %d images of %d px in %s (%d test = shared, %d train)", out, len(rows), cfg.image_size,
             out_images, int((rows["split"] == "test").sum()), int((rows["split"] == "train").sum()))
