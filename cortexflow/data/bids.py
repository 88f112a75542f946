"""Read a BIDS dataset with fMRIPrep derivatives (a user's study, or the simulated one).

Files are found by their BIDS entities, as fMRIPrep (>= 20.2) names them::

    <fmriprep>/sub-<s>/[ses-<x>/]func/sub-<s>[_ses-<x>]_task-<t>[_acq-..][_ce-..][_rec-..][_dir-..][_run-<r>][_echo-..]
        ..._space-<space>[_cohort-..][_res-..][_den-..]_desc-preproc_bold.nii.gz   the preprocessed run
        ..._space-<space>[_res-..]_desc-brain_mask.nii.gz  the brain mask (same space entities as the run)
        ..._space-<space>[_res-..]_desc-preproc_bold.json  sidecar (RepetitionTime)
        ..._desc-confounds_timeseries.tsv                  (or the older _desc-confounds_regressors.tsv)
    <bids_root>/sub-<s>/[ses-<x>/]func/..._events.tsv      the events, in the raw dataset

A file name is parsed into its entities (``key-value`` pairs), suffix and
extension, as the BIDS specification defines them, rather than matched against
one fixed pattern: fMRIPrep adds ``res-``/``den-``/``cohort-`` after ``space-``
(``--output-spaces MNI152NLin2009cAsym:res-2``) and keeps the raw run's
``ses-``/``acq-``/``rec-``/``dir-``/``echo-`` entities. ``data.space`` takes
fMRIPrep's own syntax: ``MNI152NLin2009cAsym`` matches any resolution, and
``MNI152NLin2009cAsym:res-2`` picks one when several were written. (pybids
would also parse these names, but it pulls in a database layer and indexes the
whole tree on every workflow start; the few naming rules needed here are in
``parse_bids_name``.)

and validated before anything is computed from them (``load_run``): the TR in
the sidecar against the NIfTI header, a 4-D image, a mask on the BOLD grid,
events inside the run (clipped to it) with known stimulus ids, one confounds row per volume.
Every failure raises ``CortexflowInputError`` naming the file and the fix.

Decisions, following the conventions of the tools that write these files:

- The sidecar's ``RepetitionTime`` is the TR. A header TR (``pixdim[4]``) that
  disagrees is an error, except when the header says 0 or 1 s, which some
  converters write as a placeholder: then a warning, and the sidecar wins.
  fMRIPrep writes both consistently.
- The sidecar is looked up next to the preprocessed BOLD first, then next to the
  raw BOLD, then as the top-level ``task-<t>_bold.json`` (BIDS inheritance).
- fMRIPrep writes ``n/a`` in the first row of derivative-based confounds
  (``framewise_displacement``, ``dvars``, ``*_derivative1``...): there is no
  previous volume. Those first-row gaps are set to 0; a missing value anywhere
  else is an error.
- Events without a ``stimulus_id`` (``n/a``: fixation, responses) are kept (the
  GLM models them as nuisance events, one regressor per ``trial_type``), and
  their ``duration`` may be ``n/a`` (BIDS: unavailable): an impulse of 0 s.
  Columns beyond those read here are kept and ignored.
- Events that end after the run (volumes x TR) are cut at its end, and those
  that start after it are dropped, with a warning naming the file and lines
  (``clip_events_to_run``): a final fixation row that outlasts the scan is
  common in real data. An onset before the first volume is still an error.
  The id may also be in a ``stim_id`` column (the name BIDS extension proposal
  BEP044, stimuli, gives it); when the events have neither but BIDS's
  ``stim_file``, the stimulus id is the file's name without its extension.
- Every row of a TSV must have as many fields as its header: a row with fewer is
  what a file cut off mid-line looks like, and is refused with its line number
  rather than read as a row with missing values.
"""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cortexflow._io import image_data
from cortexflow.errors import CortexflowInputError

log = logging.getLogger("cortexflow.data.bids")

DEFAULT_SPACE = "MNI152NLin2009cAsym"
MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
EVENT_COLUMNS = ("onset", "duration")
STIMULUS_COLUMNS = ("stimulus_id", "modality", "path", "split")
MODALITIES = ("image", "audio", "text")
_ENTITY = re.compile(r"(?P<key>[a-zA-Z]+)-(?P<value>[a-zA-Z0-9+]+)")
# Entities fMRIPrep adds to say where an output lives; the run's identity is the rest.
SPACE_ENTITIES = ("space", "cohort", "res", "den")
# Entities of a raw run that its events file may leave out (BIDS inheritance).
_EVENTS_OPTIONAL = (("echo", "part"), ("echo", "part", "rec", "ce", "dir", "acq"))
_TR_TOLERANCE = 1e-3  # seconds
# columns read as text whatever they hold (stimulus ids, BIDS labels)
_LABEL_COLUMNS = ("stimulus_id", "stim_id", "stim_file", "trial_type", "modality", "split", "path", "text")


@dataclass(frozen=True)
class RunFiles:
    """The files of one functional run. ``events`` is in the raw dataset, the rest in the derivatives."""

    subject: str
    task: str
    run: int
    bold: Path
    mask: Path
    events: Path
    confounds: Path
    sidecar: Path
    session: str | None = None

    @property
    def label(self) -> str:
        ses = f"_ses-{self.session}" if self.session else ""
        return f"sub-{self.subject}{ses}_task-{self.task}_run-{self.run:02d}"


@dataclass
class LoadedRun:
    """A validated run: images (nibabel, data not yet read), tables, and the TR in seconds."""

    files: RunFiles
    bold: object  # nibabel.Nifti1Image, 4-D
    mask: object  # nibabel.Nifti1Image, 3-D, on the BOLD grid
    events: pd.DataFrame
    confounds: pd.DataFrame
    tr: float

    @property
    def n_volumes(self) -> int:
        return int(self.bold.shape[3])


@dataclass(frozen=True)
class BIDSName:
    """A BIDS file name taken apart: ``sub-01_task-x_run-2_bold.nii.gz`` ->
    entities {sub: 01, task: x, run: 2} (in file order), suffix ``bold``, extension ``.nii.gz``."""

    entities: dict
    suffix: str
    extension: str

    def name(self, drop: Sequence[str] = (), **change: str | None) -> str:
        """The name with some entities dropped or changed (None drops); suffix/extension via ``suffix=``/``extension=``."""
        suffix = change.pop("suffix", None) or self.suffix
        extension = change.pop("extension", None) or self.extension
        ent = {k: v for k, v in self.entities.items() if k not in drop}
        for key, value in change.items():
            if value is None:
                ent.pop(key, None)
            else:
                ent[key] = value
        return "_".join([f"{k}-{v}" for k, v in ent.items()] + [suffix]) + extension


def parse_bids_name(name: str) -> BIDSName | None:
    """Entities, suffix and extension of a BIDS file name; None when it is not one."""
    stem, dot, rest = name.partition(".")
    parts = stem.split("_")
    if len(parts) < 2 or "-" in parts[-1]:
        return None
    entities = {}
    for part in parts[:-1]:
        m = _ENTITY.fullmatch(part)
        if m is None or m["key"] in entities:
            return None
        entities[m["key"]] = m["value"]
    return BIDSName(entities, parts[-1], dot + rest)


def _entities(name: str) -> dict[str, str]:
    """BIDS key-value entities of a file name (``sub-01_task-x_run-2_bold`` -> {sub: 01, ...})."""
    parsed = parse_bids_name(name)
    if parsed is not None:
        return dict(parsed.entities)
    stem = name.split(".")[0]
    return {m["key"]: m["value"] for m in _ENTITY.finditer(stem)}


def _prefix(name: str) -> str:
    """The part of a derivative's name before its space entities and ``desc-``: the run's identity."""
    return re.split(r"_(?:space|cohort|res|den|desc)-", name, maxsplit=1)[0]


def parse_space(space: str) -> tuple[str, dict[str, str]]:
    """``MNI152NLin2009cAsym:res-2`` (fMRIPrep's --output-spaces syntax) -> (space, {res: 2})."""
    name, _, rest = space.partition(":")
    extra = {}
    for part in filter(None, rest.split(":")):
        m = _ENTITY.fullmatch(part)
        if m is None or m["key"] not in SPACE_ENTITIES[1:]:
            raise CortexflowInputError(f"data.space {space!r}: {part!r} is not a cohort-, res- or den- entity",
                                       fix="write the space as fMRIPrep does, e.g. MNI152NLin2009cAsym or MNI152NLin2009cAsym:res-2")
        extra[m["key"]] = m["value"]
    return name, extra


def _similar(folder: Path, prefix: str) -> str:
    if not folder.is_dir():
        return f"the folder {folder} does not exist"
    near = sorted(p.name for p in folder.iterdir() if p.name.startswith(prefix.split("_run-")[0]))
    return "files there for this subject/task: " + (", ".join(near[:8]) + (" ..." if len(near) > 8 else "") if near else "none")


def _raw_func_dir(bids_root: Path, subject: str, session: str | None) -> Path:
    folder = bids_root / f"sub-{subject}"
    if session:
        folder = folder / f"ses-{session}"
    return folder / "func"


def find_runs(bids_root: str | Path, subject: str | None = None, task: str | None = None,
              fmriprep_dir: str | Path | None = None, space: str = DEFAULT_SPACE,
              skipped: list[CortexflowInputError] | None = None) -> list[RunFiles]:
    """Every preprocessed run in ``space``, with its mask, confounds, sidecar and events.

    ``subject`` and ``task`` filter (labels without the ``sub-``/``task-`` prefix).
    Runs are sorted by subject, session, task and run. A run whose companion
    file is missing raises an error naming the file expected and what is there;
    given a ``skipped`` list, that error is appended to it instead and the run
    left out (``cortexflow check`` lists every such run at once).
    """
    bids_root = Path(bids_root)
    fmriprep = Path(fmriprep_dir) if fmriprep_dir is not None else bids_root / "derivatives" / "fmriprep"
    if not fmriprep.is_dir():
        raise CortexflowInputError(
            "fMRIPrep derivatives folder not found", path=fmriprep,
            fix="run fMRIPrep into <bids_root>/derivatives/fmriprep, or set data.fmriprep_dir to its folder")
    subject = subject.removeprefix("sub-") if subject else None
    task = task.removeprefix("task-") if task else None
    space_name, space_extra = parse_space(space)
    every = []  # (path, parsed name) of every preprocessed BOLD run in the folder, any space
    for p in sorted(fmriprep.glob(f"sub-{subject or '*'}/**/*_bold.nii*")):
        parsed = parse_bids_name(p.name)
        if (p.parent.name == "func" and parsed is not None and parsed.suffix == "bold"
                and parsed.extension in (".nii.gz", ".nii") and parsed.entities.get("desc") == "preproc"):
            every.append((p, parsed))
    bolds = [p for p, parsed in every
             if parsed.entities.get("space") == space_name
             and all(parsed.entities.get(k) == v for k, v in space_extra.items())
             and (task is None or parsed.entities.get("task") == task)]
    if not bolds:
        what = f"subject {subject!r}, " if subject else ""
        what += f"task {task!r}, " if task else ""
        if every:
            found = sorted({"space-" + ":".join([e.entities.get("space", "none")] + [
                f"{k}-{e.entities[k]}" for k in SPACE_ENTITIES[1:] if k in e.entities])
                + f" task-{e.entities.get('task', '?')}" for _, e in every})
            there = f"; the preprocessed runs there are in: {', '.join(found[:8])}" + (" ..." if len(found) > 8 else "")
        else:
            there = "; there is no *_desc-preproc_bold.nii.gz in its sub-*/[ses-*/]func folders"
        raise CortexflowInputError(
            f"no preprocessed BOLD runs for {what}space {space!r} in this folder{there}",
            path=fmriprep,
            fix="check the subject and task labels and data.space; files must be named "
                f"sub-<label>_task-<label>[_run-<index>]_space-{space_name}[_res-<label>]_desc-preproc_bold.nii.gz")
    variants: dict[tuple, list[Path]] = {}
    for p in bolds:
        variants.setdefault(tuple(sorted((k, v) for k, v in _entities(p.name).items() if k not in SPACE_ENTITIES)), []).append(p)
    several = [v for v in variants.values() if len(v) > 1]
    if several:
        raise CortexflowInputError(
            f"run {_prefix(several[0][0].name)} exists in several variants of space {space!r}: "
            + ", ".join(p.name for p in several[0]), path=several[0][0].parent,
            fix=f"pick one in data.space the way fMRIPrep names it, e.g. {space_name}:res-2")
    runs = []
    for p in bolds:
        try:
            runs.append(_companions(p, bids_root, space))
        except CortexflowInputError as e:
            if skipped is None:
                raise
            skipped.append(e)
    runs.sort(key=lambda r: (r.subject, r.session or "", r.task, r.run))
    seen: dict[tuple, Path] = {}
    for r in runs:
        key = (r.subject, r.session, r.task, r.run)
        if key in seen:
            raise CortexflowInputError(
                f"two preprocessed runs share subject, session, task and run ({seen[key].name})", path=r.bold,
                fix="keep one run per run index (acq-/rec- variants must be selected before cortexflow)")
        seen[key] = r.bold
    log.info("found %d runs in %s", len(runs), fmriprep)
    return runs


def _companions(bold: Path, bids_root: Path, space: str) -> RunFiles:
    ent = _entities(bold.name)
    folder = bold.parent
    prefix = _prefix(bold.name)
    subject, session, task_label = ent.get("sub"), ent.get("ses"), ent.get("task")
    if not subject or not task_label:
        raise CortexflowInputError("file name lacks sub- or task- entity", path=bold,
                                   fix="name files as BIDS does: sub-<label>_task-<label>_...")
    run = int(ent["run"]) if "run" in ent else 1

    def need(candidates: Sequence[Path], what: str, fix: str) -> Path:
        for c in candidates:
            if c.is_file():
                return c
        raise CortexflowInputError(
            f"no {what} for run {prefix}: expected {candidates[0].name}; {_similar(candidates[0].parent, prefix)}",
            path=candidates[0], fix=fix)

    parsed = parse_bids_name(bold.name)
    mask = need([folder / parsed.name(suffix="mask", desc="brain", extension=".nii.gz"),
                 folder / parsed.name(drop=("den",), suffix="mask", desc="brain", extension=".nii.gz")], "brain mask",
                "fMRIPrep writes the mask beside the BOLD run; restore or rename it")
    confounds = need([folder / f"{prefix}_desc-confounds_timeseries.tsv", folder / f"{prefix}_desc-confounds_regressors.tsv"],
                     "confounds table", "fMRIPrep writes <run>_desc-confounds_timeseries.tsv beside the run; restore it")
    raw_dir = _raw_func_dir(bids_root, subject, session)
    raw = parse_bids_name(prefix + "_bold.nii.gz")
    events = need(list(dict.fromkeys(raw_dir / raw.name(drop=d, suffix="events", extension=".tsv")
                                     for d in ((),) + _EVENTS_OPTIONAL)), "events file",
                  "put the run's events.tsv in the raw BIDS folder, named like the run")
    sidecar = need([bold.with_name(bold.name.split(".")[0] + ".json"), raw_dir / f"{prefix}_bold.json",
                    bids_root / f"task-{task_label}_bold.json"], "JSON sidecar with RepetitionTime",
                   "add the run's _bold.json sidecar (fMRIPrep writes it beside the preprocessed BOLD)")
    return RunFiles(subject=subject, task=task_label, run=run, bold=bold, mask=mask, events=events,
                    confounds=confounds, sidecar=sidecar, session=session)


def require_file(path: str | Path, what: str, fix: str) -> Path:
    """``path`` as a Path if it is a file; otherwise the input error naming it."""
    path = Path(path)
    if not path.is_file():
        raise CortexflowInputError(f"the {what} does not exist" if not path.exists() else f"the {what} is not a file",
                                   path=path, fix=fix)
    return path


def _read_tsv(path: Path, what: str) -> pd.DataFrame:
    try:
        with open(path, newline="") as f:
            text = f.read()
    except OSError as e:
        raise CortexflowInputError(f"cannot read the {what} ({e.strerror or e})", path=path,
                                   fix="check that the file exists and is readable") from None
    except UnicodeDecodeError as e:
        raise CortexflowInputError(f"the {what} is not UTF-8 text ({e})", path=path,
                                   fix="save it as UTF-8 text (a TSV)") from None
    lines = text.splitlines()
    if lines:
        width = lines[0].count("\t")
        short = [i for i, line in enumerate(lines[1:], start=2) if line.strip() and line.count("\t") != width]
        if short:
            i = short[0]
            cut = " (the last line: the file looks cut off mid-line)" if i == len(lines) and not text.endswith("\n") else ""
            raise CortexflowInputError(
                f"line {i} of the {what} has {lines[i - 1].count(chr(9)) + 1} fields but the header has {width + 1}{cut}",
                path=path, fix="give every row a value for every column (n/a when missing); if the file was cut off, "
                               "restore it from its source")
        if len(lines) > 1 and not text.endswith(("\n", "\r")):
            log.warning("%s does not end with a newline: if it was cut off mid-line, its last row (line %d) is "
                        "incomplete", path, len(lines))
    try:
        # ids are labels, not numbers: "0042" stays "0042", also in a column with n/a
        header = lines[0].split("\t") if lines else []
        labels = {c: str for c in header if c in _LABEL_COLUMNS}
        return pd.read_csv(io.StringIO(text), sep="\t", na_values=["n/a"], keep_default_na=False, dtype=labels)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise CortexflowInputError(f"cannot read the {what} as a tab-separated table ({e})", path=path,
                                   fix="write it as TSV with a header row, tabs between columns, n/a for missing") from None


def _load_nifti(path: Path, what: str):  # noqa: ANN202 - nibabel image
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as e:  # nibabel raises several types for broken files
        raise CortexflowInputError(f"cannot read the {what} as NIfTI ({type(e).__name__}: {e})", path=path,
                                   fix="re-export the file as .nii.gz") from None


def _sidecar_tr(path: Path) -> float:
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CortexflowInputError(f"sidecar is not valid JSON ({e})", path=path, fix="fix the JSON syntax") from None
    tr = meta.get("RepetitionTime") if isinstance(meta, dict) else None
    if not isinstance(tr, (int, float)) or isinstance(tr, bool) or not tr > 0:
        raise CortexflowInputError(f"sidecar has no positive RepetitionTime (found {tr!r})", path=path,
                                   fix='add "RepetitionTime": <seconds> as the BIDS specification requires')
    return float(tr)


def _header_tr(img) -> float:  # noqa: ANN001
    tr = float(img.header.get_zooms()[3])
    unit = img.header.get_xyzt_units()[1]
    return tr / 1000.0 if unit == "msec" else tr / 1e6 if unit == "usec" else tr


def load_run(run_files: RunFiles, stimulus_ids: Iterable[str] | None = None) -> LoadedRun:
    """Open and validate one run (module docstring lists the checks).

    ``stimulus_ids``: the ids the events may name (e.g. from ``load_stimuli``);
    None skips that check. The BOLD data are not read into memory here.
    """
    f = run_files
    require_file(f.bold, "preprocessed BOLD run", "check the path; fMRIPrep writes <run>_space-<space>_desc-preproc_bold.nii.gz")
    require_file(f.mask, "brain mask", "fMRIPrep writes <run>_space-<space>_desc-brain_mask.nii.gz beside the BOLD run")
    require_file(f.events, "events file", "put the run's events.tsv in the raw BIDS folder, named like the run")
    require_file(f.confounds, "confounds table", "fMRIPrep writes <run>_desc-confounds_timeseries.tsv beside the run")
    require_file(f.sidecar, "JSON sidecar with RepetitionTime",
                 "add the run's _bold.json sidecar (fMRIPrep writes it beside the preprocessed BOLD), or pass --sidecar")
    tr = _sidecar_tr(f.sidecar)
    bold = _load_nifti(f.bold, "preprocessed BOLD run")
    if len(bold.shape) != 4 or bold.shape[3] < 2:
        raise CortexflowInputError(f"the BOLD image must be 4-D with at least 2 volumes, but its shape is {bold.shape}",
                                   path=f.bold, fix="give the preprocessed 4-D time series, not a single volume or a mask")
    header_tr = _header_tr(bold)
    if abs(header_tr - tr) > _TR_TOLERANCE:
        if header_tr in (0.0, 1.0):
            warnings.warn(f"{f.bold}: header TR is {header_tr:g} s (a placeholder); using the sidecar's {tr:g} s", stacklevel=2)
        else:
            raise CortexflowInputError(
                f"the header's TR ({header_tr:g} s) differs from RepetitionTime in {f.sidecar.name} ({tr:g} s)",
                path=f.bold, fix="correct whichever is wrong (the sidecar should hold the acquisition's TR)")
    mask = _load_nifti(f.mask, "brain mask")
    if len(mask.shape) != 3 or mask.shape != bold.shape[:3]:
        raise CortexflowInputError(f"mask shape {mask.shape} does not match the BOLD grid {bold.shape[:3]}", path=f.mask,
                                   fix="use the brain mask fMRIPrep wrote for this run and space")
    if not np.allclose(mask.affine, bold.affine, atol=1e-3):
        raise CortexflowInputError("mask affine differs from the BOLD affine (not on the same grid)", path=f.mask,
                                   fix="use the brain mask fMRIPrep wrote for this run and space")
    if not np.any(image_data(mask, f.mask, "brain mask")):
        raise CortexflowInputError("the brain mask is empty (no non-zero voxel)", path=f.mask,
                                   fix="use the brain mask fMRIPrep wrote for this run and space")
    n_volumes = int(bold.shape[3])
    events = check_events(_read_tsv(f.events, "events file"), f.events, n_volumes * tr, stimulus_ids)
    confounds = check_confounds(_read_tsv(f.confounds, "confounds table"), f.confounds, n_volumes)
    return LoadedRun(files=f, bold=bold, mask=mask, events=events, confounds=confounds, tr=tr)


def read_events(path: str | Path, run_seconds: float = np.inf, stimulus_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """One events file, read and validated (``check_events``); ``run_seconds`` inf skips the run-length check."""
    path = require_file(path, "events file", "put the run's events.tsv in the raw BIDS folder, named like the run")
    return check_events(_read_tsv(path, "events file"), path, run_seconds, stimulus_ids)


def check_events(events: pd.DataFrame, path: Path, run_seconds: float,
                 stimulus_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """Validate an events table (sorted by onset on return)."""
    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if "stimulus_id" not in events.columns and "stim_id" in events.columns:  # BEP044's name for the column
        events = events.rename(columns={"stim_id": "stimulus_id"})
    if "stimulus_id" not in events.columns:
        if "stim_file" in events.columns:
            events = events.assign(stimulus_id=[None if pd.isna(v) else Path(str(v)).name.split(".")[0]
                                                for v in events["stim_file"]])
        else:
            missing.append("stimulus_id")
    if missing:
        raise CortexflowInputError(f"events file lacks column(s) {', '.join(missing)} (has: {', '.join(events.columns)})",
                                   path=path, fix="add onset, duration and stimulus_id (or stim_id, or stim_file) columns")
    if events.empty:
        raise CortexflowInputError("events file has no rows", path=path, fix="list the run's trials, one per row")
    events = events.copy()
    events["stimulus_id"] = events["stimulus_id"].astype(object).where(events["stimulus_id"].notna(), None)
    # BIDS allows duration n/a ("unavailable"): an event without a stimulus (a response, a
    # button press) is then an impulse; a trial needs its duration for its regressor.
    impulse = events["duration"].isna() & events["stimulus_id"].isna()
    if impulse.any():
        log.info("%s: %d event(s) without a stimulus have duration n/a; modelled as impulses (0 s), line(s) %s",
                 path, int(impulse.sum()), _lines(np.flatnonzero(impulse.to_numpy())))
        events.loc[impulse, "duration"] = 0.0
    for col in EVENT_COLUMNS:
        values = pd.to_numeric(events[col], errors="coerce")
        bad = np.flatnonzero(~np.isfinite(values.to_numpy(float)))
        if bad.size:
            raise CortexflowInputError(f"column {col} is not a number in row(s) {', '.join(str(i + 2) for i in bad[:5])}",
                                       path=path, fix=f"give every event a numeric {col} in seconds")
        events[col] = values.astype(float)
    bad_dur = np.flatnonzero(events["duration"].to_numpy() < 0)
    if bad_dur.size:
        raise CortexflowInputError(f"negative duration in line(s) {', '.join(str(i + 2) for i in bad_dur[:5])}",
                                   path=path, fix="durations are seconds >= 0")
    before = np.flatnonzero(events["onset"].to_numpy() < 0)
    if before.size:
        i = before[0]
        raise CortexflowInputError(
            f"{before.size} event(s) start before the first volume; first at line {i + 2}: onset {events['onset'].iloc[i]:g} s",
            path=path, fix="check that this events file belongs to this run and that onsets are in seconds from the first volume")
    events = clip_events_to_run(events, run_seconds, path)
    if stimulus_ids is not None:
        known = set(stimulus_ids)
        named = events["stimulus_id"].dropna().astype(str)
        unknown = sorted(set(named) - known)
        if unknown:
            raise CortexflowInputError(
                f"{len(unknown)} stimulus id(s) not in the stimulus table: {', '.join(unknown[:5])}" + (" ..." if len(unknown) > 5 else ""),
                path=path, fix="correct the ids in this events file, or list those stimuli in the study's stimuli/stimuli.tsv")
    return events.sort_values("onset", kind="stable").reset_index(drop=True)


def _lines(rows: Sequence[int], most: int = 8) -> str:
    """File line numbers of table rows (the header is line 1)."""
    shown = ", ".join(str(int(i) + 2) for i in rows[:most])
    return shown + (f" and {len(rows) - most} more" if len(rows) > most else "")


def clip_events_to_run(events: pd.DataFrame, run_seconds: float, path: str | Path | None = None) -> pd.DataFrame:
    """Events as far as the run measured them: those that start at or after its end
    (``run_seconds`` = volumes x TR) are dropped, those that end after it are cut at
    the end, with a warning naming the file and its lines.

    Real event files often hold a final fixation or rest row that runs on after
    the last volume (the scanner was stopped early, or the stimulus script logs
    the planned end); nilearn only warns about it, and a model of the run has no
    samples there anyway. Keeps the row order and index.
    """
    if not np.isfinite(run_seconds):
        return events
    onset = events["onset"].to_numpy(float)
    end = onset + events["duration"].to_numpy(float)
    late = onset >= run_seconds - 1e-6
    over = ~late & (end > run_seconds + 1e-6)
    where = f"{path}: " if path is not None else ""
    if late.all():
        raise CortexflowInputError(
            f"all {len(events)} events fall outside the run: they start after its end ({run_seconds:g} s = "
            f"volumes x TR; first onset {onset.min():g} s)", path=path,
            fix="check that this events file belongs to this run and that onsets are in seconds from the first volume")
    if late.any():
        named = events.loc[late, "stimulus_id"].dropna().astype(str).tolist() if "stimulus_id" in events else []
        log.warning("%s%d event(s) start after the run's end (%g s = volumes x TR) and are dropped: line(s) %s%s",
                    where, int(late.sum()), run_seconds, _lines(np.flatnonzero(late)),
                    f" (trials of stimuli {', '.join(named[:5])})" if named else "")
    if over.any():
        log.warning("%s%d event(s) end after the run's end (%g s = volumes x TR) and are cut there: line(s) %s",
                    where, int(over.sum()), run_seconds, _lines(np.flatnonzero(over)))
        events = events.copy()
        events.loc[over, "duration"] = run_seconds - events.loc[over, "onset"]
    return events[~late]


def check_confounds(confounds: pd.DataFrame, path: Path, n_volumes: int) -> pd.DataFrame:
    """Validate a confounds table; first-row gaps of derivative columns become 0 (module docstring)."""
    if len(confounds) != n_volumes:
        raise CortexflowInputError(f"confounds table has {len(confounds)} rows but the BOLD run has {n_volumes} volumes",
                                   path=path, fix="use the confounds file fMRIPrep wrote for this very run")
    missing = [c for c in MOTION_COLUMNS if c not in confounds.columns]
    if missing:
        raise CortexflowInputError(f"confounds table lacks the motion column(s) {', '.join(missing)}", path=path,
                                   fix="use fMRIPrep's confounds table (it holds trans_x ... rot_z)")
    numeric = confounds.apply(pd.to_numeric, errors="coerce")
    text = [c for c in confounds.columns if numeric[c].isna().sum() > confounds[c].isna().sum()]
    if text:
        raise CortexflowInputError(f"non-numeric values in confound column(s) {', '.join(text[:5])}", path=path,
                                   fix="confounds must be numbers, n/a for missing")
    nan = numeric.isna()
    if nan.iloc[1:].any().any():
        cols = [c for c in numeric.columns if nan[c].iloc[1:].any()]
        raise CortexflowInputError(f"missing values after the first row in column(s) {', '.join(cols[:5])}", path=path,
                                   fix="fill or drop those columns; only the first row may be n/a (derivatives)")
    if nan.iloc[0].any():
        log.debug("%s: first-row n/a in %s set to 0", path.name, list(numeric.columns[nan.iloc[0]]))
    return numeric.fillna(0.0)


def check_same_grid(runs: Sequence[LoadedRun | RunFiles]) -> None:
    """All runs' BOLD images share shape and affine (voxel ``v`` is the same place in every run)."""
    if not runs:
        return
    import nibabel as nib

    def image(r):  # noqa: ANN001, ANN202
        return r.bold if isinstance(r, LoadedRun) else nib.load(str(r.bold))

    def path(r) -> Path:  # noqa: ANN001
        return r.files.bold if isinstance(r, LoadedRun) else r.bold

    ref = image(runs[0])
    for r in runs[1:]:
        img = image(r)
        if img.shape[:3] != ref.shape[:3] or not np.allclose(img.affine, ref.affine, atol=1e-3):
            raise CortexflowInputError(
                f"grid differs from {path(runs[0]).name} (shape {img.shape[:3]} vs {ref.shape[:3]}, "
                f"affines {'equal' if np.allclose(img.affine, ref.affine, atol=1e-3) else 'differ'})",
                path=path(r), fix="use runs preprocessed into the same output space and resolution (fMRIPrep --output-spaces)")


def load_stimuli(bids_root: str | Path) -> pd.DataFrame:
    """The stimulus table ``<bids_root>/stimuli/stimuli.tsv``, validated.

    Columns: ``stimulus_id`` (unique), ``modality`` (image | audio | text),
    ``path`` (relative to ``stimuli/``, as BIDS's ``stim_file``), ``split``
    (train | test), and ``text`` for sentences; other columns are kept.
    """
    return read_stimulus_table(Path(bids_root) / "stimuli" / "stimuli.tsv")


def read_stimulus_table(path: str | Path) -> pd.DataFrame:
    """The stimulus table at ``path`` (``load_stimuli`` documents its columns), validated."""
    path = Path(path)
    if not path.is_file():
        raise CortexflowInputError("stimulus table not found", path=path,
                                   fix="list the stimuli in stimuli/stimuli.tsv (stimulus_id, modality, path, split)")
    table = _read_tsv(path, "stimulus table")
    missing = [c for c in STIMULUS_COLUMNS if c not in table.columns]
    if missing:
        raise CortexflowInputError(f"stimulus table lacks column(s) {', '.join(missing)}", path=path,
                                   fix="columns must include stimulus_id, modality, path, split")
    dup = table["stimulus_id"][table["stimulus_id"].duplicated()].tolist()
    if dup:
        raise CortexflowInputError(f"duplicate stimulus id(s): {', '.join(map(str, dup[:5]))}", path=path,
                                   fix="give every stimulus its own id")
    bad_mod = sorted(set(table["modality"]) - set(MODALITIES))
    if bad_mod:
        raise CortexflowInputError(f"unknown modality value(s) {bad_mod}", path=path, fix=f"use one of {MODALITIES}")
    bad_split = sorted(set(table["split"]) - {"train", "test"})
    if bad_split:
        raise CortexflowInputError(f"unknown split value(s) {bad_split}", path=path, fix="split must be train or test")
    if "text" in table.columns:
        table["text"] = table["text"].astype(object).where(table["text"].notna(), None)
    if (table["modality"] == "text").any() and ("text" not in table.columns or table.loc[table["modality"] == "text", "text"].isna().any()):
        raise CortexflowInputError("text stimuli need their sentence in a text column", path=path,
                                   fix="fill the text column for every text stimulus")
    table["stimulus_id"] = table["stimulus_id"].astype(str)
    return table


def load_stimulus(bids_root: str | Path, row: pd.Series | dict) -> np.ndarray | tuple[np.ndarray, int] | str:
    """One stimulus: image float32 (C, H, W) in [0, 1]; audio (float32 waveform, sample rate); text str."""
    modality = row["modality"]
    if modality == "text":
        return str(row["text"])
    path = Path(bids_root) / "stimuli" / str(row["path"])
    if not path.is_file():
        raise CortexflowInputError(f"stimulus file of {row['stimulus_id']} not found", path=path,
                                   fix="put the file there or correct its path in stimuli/stimuli.tsv (relative to stimuli/)")
    if modality == "image":
        from PIL import Image

        with Image.open(path) as img:  # grey-scale stays one channel, anything else becomes RGB
            a = np.asarray(img.convert("L" if img.mode in ("1", "L", "LA") else "RGB"), dtype=np.float32) / 255.0
        return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))
    if modality == "audio":
        from scipy.io import wavfile

        try:
            rate, wav = wavfile.read(path)
        except ValueError as e:
            raise CortexflowInputError(f"cannot read WAV ({e})", path=path, fix="save the clip as PCM WAV") from None
        if np.issubdtype(wav.dtype, np.integer):
            wav = wav.astype(np.float32) / float(np.iinfo(wav.dtype).max + 1)
        wav = wav.astype(np.float32)
        if wav.ndim == 2:
            wav = wav.mean(1)
        return wav, int(rate)
    raise CortexflowInputError(f"unknown modality {modality!r} for {row['stimulus_id']}", fix=f"use one of {MODALITIES}")


def validate_study(bids_root: str | Path, fmriprep_dir: str | Path | None = None, space: str = DEFAULT_SPACE,
                   subject: str | None = None, task: str | None = None) -> list[LoadedRun]:
    """Find, load and validate every run (and the stimuli they name); check all share one grid."""
    stimuli = load_stimuli(bids_root)
    runs = [load_run(r, set(stimuli["stimulus_id"]))
            for r in find_runs(bids_root, subject=subject, task=task, fmriprep_dir=fmriprep_dir, space=space)]
    check_same_grid(runs)
    return runs
