"""``cortexflow check``: read a study's inputs the way the workflow will, and list every problem.

Before any job runs, the check finds every run of the configured tasks and
opens it as ``glm_betas`` will (``cortexflow.data.bids.load_run``): the files
of each run, the TR in the sidecar against the NIfTI header, the events against
the stimulus table and the run's length (what outlasts the run is reported as
clipped), the confound columns the GLM will take (``glm.confounds``, or those a
nilearn strategy picks), the GLM design itself (enough volumes for the trials,
no collinear trials), the grids of a subject's runs, the atlas or masks of
``rois`` on the BOLD grid, the GLMsingle files, the subjects and sessions
found, and the train/test split ``make_dataset`` will make. Unlike the stages,
it does not stop at the first problem: each one is listed with its file, what
is wrong and the fix, errors first, then warnings.

With ``read_data`` (the command's default) it also reads every run's voxels
inside the brain mask, which is what catches a truncated ``.nii.gz``, NaN
voxels and voxels without signal; without it (``--headers-only``, and the check
Snakemake runs while it builds the DAG) only headers and tables are read, in
well under a second for a 20-run study.

Which readers a ``data.source`` has is the ``SOURCE_CHECKS`` table: ``bids``
and ``simulate`` (once the simulator has written its study) are read by the
BIDS reader; another source registers its own function there.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cortexflow.errors import CortexflowInputError

log = logging.getLogger("cortexflow.data.study_check")


@dataclass
class Problem:
    """One finding: ``level`` error (the workflow would fail) or warning (it would go on)."""

    level: str
    problem: str
    path: str | None = None
    fix: str | None = None

    @classmethod
    def of(cls, error: CortexflowInputError, level: str = "error") -> Problem:
        return cls(level, error.problem, error.path, error.fix)


@dataclass
class RunSummary:
    subject: str
    session: str | None
    task: str
    run: int
    n_volumes: int
    tr: float
    n_trials: int
    n_other: int  # events without a stimulus (fixation, responses)
    grid: str


@dataclass
class StudyCheck:
    """What ``check_study`` found; ``report()`` is the text the command prints."""

    study: str
    source: str
    where: list[tuple[str, str]] = field(default_factory=list)
    runs: list[RunSummary] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)
    split: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    read_data: bool = True
    seconds: float = 0.0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    def error(self, problem: str, path: str | Path | None = None, fix: str | None = None) -> None:
        self.problems.append(Problem("error", problem, None if path is None else str(path), fix))

    def warn(self, problem: str, path: str | Path | None = None, fix: str | None = None) -> None:
        self.problems.append(Problem("warning", problem, None if path is None else str(path), fix))

    def subjects(self) -> dict[str, list[str]]:
        """Subject -> its sessions (empty when the runs carry no ses- entity)."""
        found: dict[str, list[str]] = {}
        for r in self.runs:
            sessions = found.setdefault(r.subject, [])
            if r.session and r.session not in sessions:
                sessions.append(r.session)
        return found

    def problems_text(self) -> str:
        lines = []
        for p in sorted(self.problems, key=lambda p: p.level != "error"):
            lines.append(f"  {p.level.upper():7} {p.path or '(no single file)'}")
            lines.append(f"          {p.problem.rstrip('.')}.")
            if p.fix:
                lines.append(f"          Fix: {p.fix.rstrip('.')}.")
        return "\n".join(lines)

    def report(self) -> str:
        out = [f"cortexflow check: study {self.study!r}, data.source {self.source}"]
        out += [f"  {key:<12} {value}" for key, value in self.where]
        out += [f"  {note}" for note in self.notes]
        subjects = self.subjects()
        if subjects:
            out.append(f"Subjects ({len(subjects)}): " + ", ".join(
                f"sub-{s}" + (f" (sessions {', '.join(ses)})" if ses else "") for s, ses in subjects.items()))
        if self.runs:
            out.append(f"Runs ({len(self.runs)}):")
            for r in self.runs:
                ses = f"ses-{r.session} " if r.session else ""
                out.append(f"  sub-{r.subject} {ses}task-{r.task} run-{r.run:02d}: {r.n_volumes} volumes x TR {r.tr:g} s, "
                           f"{r.n_trials} trials" + (f" + {r.n_other} other events" if r.n_other else "")
                           + f", grid {r.grid}")
        if self.regions:
            out.append("Regions (rois):")
            out += [f"  {line}" for line in self.regions]
        if self.split:
            out.append("Split (by stimulus; make_dataset):")
            out += [f"  {line}" for line in self.split]
        if self.problems:
            out.append(f"Problems ({len(self.errors)} error(s), {len(self.warnings)} warning(s)):")
            out.append(self.problems_text())
        what = "headers, tables and voxels" if self.read_data else "headers and tables"
        verdict = ("no problems" if not self.problems else
                   f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        out.append(f"Checked {len(self.runs)} run(s) ({what}) in {self.seconds:.1f} s: {verdict}.")
        return "\n".join(out)


class _Collect(logging.Handler):
    """Keeps the WARNING records that the readers log while a run is opened."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _warning_problem(message: str) -> Problem:
    """A reader's warning "<path>: <message>" as a Problem naming the path."""
    head, sep, rest = message.partition(": ")
    if sep and ("/" in head or head.endswith((".tsv", ".gz", ".nii", ".json"))):
        return Problem("warning", rest, head)
    return Problem("warning", message)


def _guarded(result: StudyCheck, action: Callable, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
    """``action(...)``; its input error and the warnings it logs or raises become findings (None on error)."""
    collect = _Collect()
    root = logging.getLogger("cortexflow")
    root.addHandler(collect)
    propagate, root.propagate = root.propagate, False  # listed once, in the report
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                value = action(*args, **kwargs)
            except CortexflowInputError as e:
                result.problems.append(Problem.of(e))
                value = None
    finally:
        root.removeHandler(collect)
        root.propagate = propagate
    for record in collect.records:
        result.problems.append(_warning_problem(record.getMessage()))
    for w in caught:
        if issubclass(w.category, (UserWarning, RuntimeWarning)) and "cortexflow" in str(w.filename):
            result.problems.append(_warning_problem(str(w.message)))
    return value


def _grid_text(img) -> str:  # noqa: ANN001
    zooms = img.header.get_zooms()[:3]
    return "x".join(str(int(n)) for n in img.shape[:3]) + " at " + "x".join(f"{z:g}" for z in zooms) + " mm"


def study_paths(config: dict) -> tuple[Path, Path]:
    """(BIDS root, fMRIPrep folder) of a config, as workflow/rules/common.smk resolves them."""
    data = config["data"]
    bids_root = Path(data["bids_root"] or f"data/{config['study']}/bids")
    return bids_root, Path(data["fmriprep_dir"] or bids_root / "derivatives" / "fmriprep")


# ----------------------------------------------------------------------------- one run


def _check_run(result: StudyCheck, run_files, stimulus_ids, glm_cfg, read_data: bool):  # noqa: ANN001, ANN202
    """Open one run; returns (loaded run, trials table) or None."""
    from cortexflow.data.bids import load_run
    from cortexflow.preprocess.glm import _check_bold, _is_trial, build_design, strategy_confounds

    loaded = _guarded(result, load_run, run_files, stimulus_ids)
    if loaded is None:
        return None
    f = run_files
    confounds = loaded.confounds
    if glm_cfg.confounds_strategy is not None or glm_cfg.denoise_strategy is not None:
        confounds = _guarded(result, strategy_confounds, f.bold, glm_cfg, f.confounds, loaded.n_volumes)
        if confounds is None:
            return None
        import dataclasses

        glm_cfg = dataclasses.replace(glm_cfg, confounds=tuple(confounds.columns))
    else:
        missing = [c for c in glm_cfg.confounds if c not in confounds.columns]
        if missing:
            result.error(f"confound column(s) {', '.join(missing)} of glm.confounds are missing "
                         f"(the table has {len(confounds.columns)} columns, e.g. {', '.join(list(confounds.columns)[:8])})",
                         f.confounds, "choose glm.confounds among the table's columns, or use glm.denoise_strategy")
            return None
    design = _guarded(result, build_design, loaded.events, confounds, loaded.n_volumes, loaded.tr, glm_cfg,
                      sources={"events": str(f.events), "confounds": str(f.confounds), "bold": str(f.bold)})
    if design is None:
        return None
    if read_data:
        from cortexflow._io import image_data

        def voxels() -> None:
            inside = image_data(loaded.mask, f.mask, "brain mask") > 0
            data = image_data(loaded.bold, f.bold, "preprocessed BOLD run", dtype=np.float32)
            _check_bold(data[inside].T, {"bold": str(f.bold)})
            loaded.bold.uncache()

        if _guarded(result, lambda: voxels() or True) is None:
            return None
    n_trials = int(_is_trial(loaded.events).sum())
    result.runs.append(RunSummary(f.subject, f.session, f.task, f.run, loaded.n_volumes, loaded.tr, n_trials,
                                  len(loaded.events) - n_trials, _grid_text(loaded.bold)))
    trials = design.trials.assign(run=f.run, session=f.session)
    return loaded, trials


# ----------------------------------------------------------------------------- the study


def _check_grids(result: StudyCheck, loaded: dict) -> None:
    """Runs of one subject and task share one grid (extract_rois stacks them voxel by voxel)."""
    by_unit: dict[tuple, list] = {}
    for (subject, task), runs in loaded.items():
        by_unit.setdefault((subject, task), []).extend(runs)
    for runs in by_unit.values():
        ref = runs[0]
        for r in runs[1:]:
            if r.bold.shape[:3] != ref.bold.shape[:3] or not np.allclose(r.bold.affine, ref.bold.affine, atol=1e-3):
                result.error(f"grid {_grid_text(r.bold)} differs from that of {ref.files.bold.name} "
                             f"({_grid_text(ref.bold)}; affines {'equal' if np.allclose(r.bold.affine, ref.bold.affine, atol=1e-3) else 'differ'})",
                             r.files.bold, "use runs preprocessed into the same output space and resolution "
                                           "(fMRIPrep --output-spaces, data.space)")


def _check_regions(result: StudyCheck, config: dict, modality: str, subject: str, run) -> None:  # noqa: ANN001
    """The modality's regions on this subject's BOLD grid, inside its brain mask (extract_rois)."""
    from cortexflow._io import image_data
    from cortexflow.preprocess.rois import ROIConfig, build_regions, select_voxels

    cfg = _guarded(result, ROIConfig.from_params, config["rois"])
    if cfg is None:
        return
    brain = image_data(run.mask, run.files.mask, "brain mask") > 0
    regions = _guarded(result, build_regions, cfg, modality, run.bold.shape[:3], run.bold.affine)
    if regions is None:
        return
    voxels = _guarded(result, select_voxels, regions, brain, cfg)
    if voxels is None:
        return
    source = {"coords": f"{cfg.atlas} spheres of {cfg.radius_mm:g} mm", "labels": str(cfg.labels_img),
              "mask": str((cfg.mask_img or {}).get(modality))}[cfg.source]
    result.regions.append(f"sub-{subject} {modality}: {len(voxels)} voxels in {voxels['region'].nunique()} region(s) "
                          f"inside the brain mask ({cfg.source}: {source})")


def _check_split(result: StudyCheck, config: dict, subject: str, modality: str, trials: pd.DataFrame,
                 stimuli: pd.DataFrame | None, table_path: Path) -> None:
    from cortexflow.preprocess.dataset import DatasetConfig, assign_splits, validation_stimuli

    split = _guarded(result, assign_splits, trials, stimuli, source=str(table_path))
    if split is None:
        return
    ids = trials["stimulus_id"].astype(str)
    train, test = ids[split.to_numpy() == "train"], ids[split.to_numpy() == "test"]
    where = f"sub-{subject} {modality}"
    if train.empty or test.empty:
        result.error(f"{where}: {len(train)} training and {len(test)} test trials; make_dataset needs both",
                     table_path, "check the split column of stimuli.tsv against the stimuli shown in this task")
        return
    cfg = DatasetConfig.from_params(config["dataset"])
    val = validation_stimuli(np.array(sorted(set(train))), cfg.val_fraction, int(config["seed"]))
    repeats = test.value_counts()
    shown = f"{repeats.min()}" if repeats.min() == repeats.max() else f"{repeats.min()}-{repeats.max()}"
    result.split.append(
        f"{where}: train {len(train)} trials of {train.nunique()} stimuli ({len(val)} of them the validation fold, "
        f"dataset.val_fraction {cfg.val_fraction:g}); test {len(test)} trials of {test.nunique()} stimuli "
        f"(shown {shown} times, repeats averaged)")
    if repeats.max() < 2:
        result.warn(f"{where}: no test stimulus is shown twice, so there is no noise-ceiling estimate", table_path,
                    "repeat test stimuli (as NSD does) if you want a ceiling; the metrics keep their intervals")
    if stimuli is not None:
        listed = set(stimuli.loc[(stimuli["modality"] == modality) & (stimuli["split"] == "test"), "stimulus_id"])
        unseen = sorted(listed - set(test))
        if unseen:
            result.notes.append(f"{len(unseen)} {modality} test stimuli of the table are never shown to sub-{subject} "
                                f"(e.g. {', '.join(unseen[:3])}); they are left out")


def check_bids_study(result: StudyCheck, config: dict, read_data: bool = True) -> None:
    """The BIDS / fMRIPrep study of ``config`` (data.source bids, or simulate once written)."""
    from cortexflow.data.bids import find_runs, load_stimuli
    from cortexflow.preprocess.glm import GLMConfig

    data = config["data"]
    bids_root, fmriprep = study_paths(config)
    result.where += [("BIDS root", str(bids_root)), ("fMRIPrep", str(fmriprep)), ("space", data["space"])]
    glm_cfg = _guarded(result, GLMConfig.from_params, config["glm"])
    stimuli = _guarded(result, load_stimuli, bids_root)
    stimulus_ids = None if stimuli is None else set(stimuli["stimulus_id"])
    table_path = bids_root / "stimuli" / "stimuli.tsv"
    wanted = [str(s) for s in data["subjects"]]
    loaded: dict[tuple[str, str], list] = {}
    trials: dict[tuple[str, str], list[pd.DataFrame]] = {}
    for modality in data["modalities"]:
        task = data["tasks"][modality]
        skipped: list[CortexflowInputError] = []
        runs = _guarded(result, find_runs, bids_root, task=task, fmriprep_dir=fmriprep, space=data["space"],
                        skipped=skipped)
        result.problems += [Problem.of(e) for e in skipped]
        for run_files in runs or []:
            if wanted and run_files.subject not in wanted:
                continue
            if glm_cfg is None:
                continue
            opened = _check_run(result, run_files, stimulus_ids, glm_cfg, read_data)
            if opened is not None:
                loaded.setdefault((run_files.subject, modality), []).append(opened[0])
                trials.setdefault((run_files.subject, modality), []).append(opened[1])
    found = sorted({r.subject for r in result.runs} | {s for s, _ in loaded})
    for subject in wanted:
        if not any(r.subject == subject for r in result.runs):
            result.error(f"data.subjects lists sub-{subject}, but no usable run of it was found", fmriprep,
                         "correct data.subjects, or fix the problems listed for its runs")
    for subject in found:
        for modality in data["modalities"]:
            if not any(r.subject == subject and r.task == data["tasks"][modality] for r in result.runs):
                result.error(f"sub-{subject} has no usable run of task '{data['tasks'][modality]}' ({modality})",
                             fmriprep, "list only subjects with every modality in data.subjects, drop the modality "
                                       "from data.modalities, or set data.tasks to the right task label")
    _check_grids(result, loaded)
    for (subject, modality), runs in loaded.items():
        _check_regions(result, config, modality, subject, runs[0])
        _check_split(result, config, subject, modality, pd.concat(trials[(subject, modality)], ignore_index=True),
                     stimuli, table_path)
        if data.get("glmsingle"):
            path = Path(str(data["glmsingle"]).format(subject=subject, task=data["tasks"][modality]))
            if not path.is_file():
                result.error("the GLMsingle file that data.glmsingle names does not exist", path,
                             "correct data.glmsingle ({subject} and {task} are filled in per subject and task)")


def check_simulated_study(result: StudyCheck, config: dict, read_data: bool = True) -> None:
    """The simulated study, once rule simulate_study has written it (read like a user's)."""
    bids_root, _ = study_paths(config)
    if not (bids_root / "dataset_description.json").is_file():
        result.where.append(("BIDS root", str(bids_root)))
        result.notes.append("the simulated study is not written yet: rule simulate_study writes it "
                            "(`snakemake simulate_study`), then the workflow checks it (rule check_study)")
        return
    check_bids_study(result, config, read_data)


def check_nsd_study(result: StudyCheck, config: dict, read_data: bool = True) -> None:
    """NSD's own files (data.source nsd): every file the nsd rules will read exists
    (``cortexflow.data.nsd.workflow_inputs``, the check Snakemake also runs)."""
    from cortexflow.data.nsd import workflow_inputs

    result.where.append(("NSD root", str(config["data"]["nsd"].get("root"))))
    inputs = _guarded(result, workflow_inputs, config["data"])
    if inputs is not None:
        sessions = {s: len(files["betas"]) for s, files in inputs["per_subject"].items()}
        result.notes.append("NSD: betas files of " + ", ".join(f"subj{s} ({n} sessions)" for s, n in sessions.items())
                            + "; the expdesign, stimuli and ROI files exist (not read further here)")


# data.source -> the function that checks such a study (another source adds its own)
SOURCE_CHECKS: dict[str, Callable[[StudyCheck, dict, bool], None]] = {
    "bids": check_bids_study,
    "simulate": check_simulated_study,
    "nsd": check_nsd_study,
}


def check_study(config: dict, read_data: bool = True) -> StudyCheck:
    """Every problem of the study that a validated workflow ``config`` describes (see module doc)."""
    start = time.perf_counter()
    source = config["data"]["source"]
    result = StudyCheck(study=config["study"], source=source, read_data=read_data)
    check = SOURCE_CHECKS.get(source)
    if check is None:
        result.notes.append(f"cortexflow check has no reader for data.source {source!r} yet; nothing was checked")
    else:
        check(result, config, read_data)
    result.seconds = time.perf_counter() - start
    return result


def _parse_overrides(items) -> dict:  # noqa: ANN001
    """``key=value`` pairs as Snakemake's --config takes them (values are YAML); dotted keys nest."""
    import yaml

    overrides: dict = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise CortexflowInputError(f"--config {item!r} is not key=value",
                                       fix="write e.g. --config study=mine data.source=bids")
        try:
            parsed = yaml.safe_load(value) if value else None
        except yaml.YAMLError as e:
            raise CortexflowInputError(f"--config {key}: the value is not valid YAML ({e})",
                                       fix="quote the value as YAML, e.g. data='{source: bids}'") from None
        node = overrides
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = parsed
    return overrides


def study_config(configfile=(), config=()) -> dict:  # noqa: ANN001
    """The workflow config as ``snakemake --configfile A B --config k=v`` would build it:
    config.yaml, then each file, then the overrides; validated, defaults filled."""
    from cortexflow.config import _read_yaml, default_config_path, deep_update, validate_config

    merged = _read_yaml(default_config_path(), "the default config") or {}
    last = None
    for path in configfile or ():
        overrides = _read_yaml(Path(path), "the config file") or {}
        if not isinstance(overrides, dict):
            raise CortexflowInputError("the config must be a mapping of keys to values", path=path,
                                       fix="start from the repository's config.yaml")
        merged, last = deep_update(merged, overrides), path
    merged = deep_update(merged, _parse_overrides(config))
    return validate_config(merged, path=last)


def check_study_stage(
    *,
    configfile: list[str] = (),
    config: list[str] = (),
    headers_only: bool = False,
    out: str | None = None,
) -> None:
    """Check a study's inputs before any job runs, and list every problem (file, problem, fix).

    Reads the study that the workflow config describes (config.yaml, then each
    --configfile, then --config key=value overrides, as Snakemake combines them):
    every run's files, the TR against the NIfTI header, events against the
    stimulus table and the run length, the confound columns, the GLM design, the
    grids of the runs and of the atlas or masks, the GLMsingle files, the
    subjects and sessions found, and the split make_dataset will make. Prints
    one report; exits with status 2 when there is an error, 0 when there are
    only warnings. --headers-only skips reading the voxels (NaN voxels and
    truncated files are then found only by glm_betas). --out also writes the
    report to a file (rule check_study).
    """
    result = check_study(study_config(configfile, config), read_data=not headers_only)
    text = result.report()
    print(text, flush=True)
    if out is not None:
        from cortexflow._io import atomic_write

        with atomic_write(out) as tmp:
            Path(tmp).write_text(text + "\n")
    if result.errors:
        raise CortexflowInputError(
            f"the study has {len(result.errors)} error(s) (listed above)",
            fix="correct each file named, then run cortexflow check again")
