"""Single-trial response amplitudes (betas) from one BOLD run.

A general linear model with one HRF-convolved regressor per trial, solved for
every voxel at once:

* least-squares-all (LSA; Rissman, Gazzaley & D'Esposito 2004, *NeuroImage*
  23:752): all trial regressors in one design, ``B = pinv(X) Y`` — one
  pseudo-inverse of the small design matrix, one matrix product with the data;
* least-squares-separate (LSS; Mumford et al. 2012, *NeuroImage* 59:2636): per
  trial a design with that trial, the sum of all other trials, and the nuisance
  columns. By the Frisch–Waugh–Lovell theorem the nuisance columns can be
  projected out of the two trial columns once (``M = I - Q Qᵀ``); the weight
  vector that maps the data to trial k's beta is the first row of
  ``pinv([M x_k, M (s - x_k)])``, and because that row already lies in the
  range of ``M`` it applies to the raw data. Stacking the rows gives one
  (trials × time) matrix and again a single product with all voxels.

Nuisance columns are the confounds named in the config (fMRIPrep's
``desc-confounds_timeseries.tsv``) — or, with ``confounds_strategy``, the
columns nilearn's ``load_confounds`` picks for a denoising strategy (volumes it
scrubs become one spike regressor each, which in a least-squares fit is the
same as censoring them) — one HRF regressor per ``trial_type`` of
events that have no stimulus (e.g. responses), and a DCT-II cosine drift basis
plus a constant (high-pass filter; nilearn's ``create_cosine_drift``).

Units: with ``signal_scaling: psc`` (the default) each voxel's time series is
divided by its mean and expressed in percent signal change,
``100 (y / mean(y) - 1)`` — nilearn's ``FirstLevelModel(signal_scaling=0)`` —
so betas are comparable across voxels and runs whose raw intensities differ;
``raw`` keeps the scanner units.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from typing import Literal

from cortexflow.data.bids import clip_events_to_run
from cortexflow.errors import CortexflowInputError
from cortexflow.sections import from_mapping
from cortexflow.preprocess.hrf import HRF_MODELS, dct_basis, event_regressors, frame_times, gamma_difference_hrf

log = logging.getLogger("cortexflow.preprocess.glm")

DEFAULT_CONFOUNDS = (
    "trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z",
    "framewise_displacement", "csf", "white_matter",
)
TRIAL_COLUMNS = ["trial", "onset", "duration", "stimulus_id", "modality"]
# nilearn.interfaces.fmriprep.load_confounds' strategies (nilearn 0.13)
CONFOUND_STRATEGIES = ("motion", "wm_csf", "global_signal", "compcor", "ica_aroma", "scrub", "high_pass",
                       "non_steady_state", "tedana")
# nilearn.interfaces.fmriprep.load_confounds_strategy's presets (nilearn 0.13)
DENOISE_STRATEGIES = ("simple", "scrubbing", "compcor", "ica_aroma")


@dataclass(frozen=True)
class GLMConfig:
    """Parameters of the single-trial GLM (the ``glm:`` section of the config).

    ``high_pass`` is in Hz: 1/128 Hz, SPM's default. nilearn's 0.01 Hz adds one
    more cosine per ~100 s of run; in a rapid event-related design (a trial every
    two volumes) slow cosines are nearly spanned by the trial regressors, and on
    the default simulated study that extra column cut the median correlation of
    single-trial betas with the true responses from 0.62 to 0.43. ``min_residual_dof`` is the fewest degrees of freedom the design
    may leave for the noise: below it the run has too few volumes for its trials.
    ``confounds_strategy`` (e.g. ``[motion, wm_csf]``) replaces the ``confounds``
    column list by ``nilearn.interfaces.fmriprep.load_confounds(strategy=...)``,
    with ``confounds_options`` as its other arguments (``motion: full``,
    ``scrub: 5``, ...). Leave ``high_pass`` out of the strategy: the cosine
    drifts of ``drift_model`` are already in the design.
    ``denoise_strategy`` (``simple``, ``scrubbing``, ``compcor``, ``ica_aroma``)
    instead takes one of nilearn's presets, ``load_confounds_strategy``, with
    ``confounds_options`` as its overrides (e.g. ``fd_threshold: 0.2``). Every
    preset includes ``high_pass`` (fMRIPrep's ``cosine_XX`` columns); those are
    left out of the design, whose own cosine drifts span the same slow
    frequencies (two copies would make it rank-deficient).
    """

    method: Literal["lsa", "lss"] = "lsa"
    hrf_model: str = "spm"
    drift_model: str | None = "cosine"
    high_pass: float = 1.0 / 128.0
    confounds: tuple[str, ...] = DEFAULT_CONFOUNDS
    signal_scaling: Literal["psc", "raw"] = "psc"
    oversampling: int = 50
    slice_time_ref: float = 0.0
    min_onset: float = -24.0
    min_residual_dof: int = 5
    voxel_chunk: int = 32768
    confounds_strategy: tuple[str, ...] | None = None
    confounds_options: Mapping = field(default_factory=dict)
    denoise_strategy: Literal["simple", "scrubbing", "compcor", "ica_aroma"] | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.method in ("lsa", "lss"), "method must be 'lsa' or 'lss'"),
            (self.hrf_model in HRF_MODELS, f"hrf_model must be one of {', '.join(HRF_MODELS)}"),
            (self.drift_model in ("cosine", None), "drift_model must be 'cosine' or null"),
            (self.high_pass >= 0, "high_pass must be >= 0 Hz"),
            (self.signal_scaling in ("psc", "raw"), "signal_scaling must be 'psc' or 'raw'"),
            (int(self.oversampling) >= 1, "oversampling must be >= 1"),
            (0.0 <= self.slice_time_ref <= 1.0, "slice_time_ref must lie in [0, 1]"),
            (int(self.min_residual_dof) >= 1, "min_residual_dof must be >= 1"),
            (int(self.voxel_chunk) >= 1, "voxel_chunk must be >= 1"),
            (self.confounds_strategy is None or (len(self.confounds_strategy) > 0 and all(
                s in CONFOUND_STRATEGIES for s in self.confounds_strategy)),
             f"confounds_strategy must be null or a list of {', '.join(CONFOUND_STRATEGIES)}"),
            (self.denoise_strategy is None or self.denoise_strategy in DENOISE_STRATEGIES,
             f"denoise_strategy must be null or one of {', '.join(DENOISE_STRATEGIES)}"),
            (self.denoise_strategy is None or self.confounds_strategy is None,
             "set either denoise_strategy (a preset) or confounds_strategy (a list), not both"),
            (isinstance(self.confounds_options, Mapping) and "strategy" not in self.confounds_options
             and "denoise_strategy" not in self.confounds_options
             and "img_files" not in self.confounds_options,
             "confounds_options must map load_confounds' other arguments (motion, scrub, ...) to values"),
        ]
        for ok, message in checks:
            if not ok:
                raise CortexflowInputError(f"glm config: {message}", fix="correct the glm section of the config")

    @classmethod
    def from_params(cls, params: GLMConfig | Mapping | None) -> GLMConfig:
        """Build from the config section; unknown keys are an error (typos would be silent)."""
        if isinstance(params, GLMConfig):
            return params
        params = dict(params or {})
        if params.get("confounds", ()) is None:  # null: no confounds
            params["confounds"] = ()
        if isinstance(params.get("confounds_strategy"), str):  # one strategy
            params["confounds_strategy"] = [params["confounds_strategy"]]
        if params.get("confounds_options", {}) is None:
            params["confounds_options"] = {}
        return from_mapping(cls, params, "glm")


def cosine_drift(n_scans: int, tr: float, high_pass: float) -> np.ndarray:
    """DCT-II basis with periods longer than ``1 / high_pass`` s, then a constant column.

    Same columns as ``nilearn.signal.create_cosine_drift`` (SPM's ``spm_dctmtx``).
    """
    order = min(n_scans - 1, int(np.floor(2 * n_scans * high_pass * tr)))
    return np.hstack([dct_basis(n_scans, order), np.ones((n_scans, 1))])


@dataclass
class Design:
    """A run's design matrix: trial columns first, then nuisance columns."""

    matrix: pd.DataFrame
    n_trials: int
    trials: pd.DataFrame = field(repr=False)

    @property
    def trial_regressors(self) -> np.ndarray:
        return self.matrix.to_numpy()[:, : self.n_trials]

    @property
    def nuisance(self) -> np.ndarray:
        return self.matrix.to_numpy()[:, self.n_trials :]


def _source(sources: Mapping[str, str] | None, key: str) -> str | None:
    return None if sources is None else sources.get(key)


def _is_trial(events: pd.DataFrame) -> pd.Series:
    """Rows that are trials: those that name a stimulus."""
    stim = events["stimulus_id"]
    return stim.notna() & ~stim.astype(str).str.strip().isin(["", "n/a", "nan", "None"])


def _trials_table(events: pd.DataFrame) -> pd.DataFrame:
    trials = events[_is_trial(events)].sort_values("onset", kind="stable").reset_index(drop=True)
    return pd.DataFrame({
        "trial": np.arange(len(trials)),
        "onset": trials["onset"].to_numpy(float),
        "duration": trials["duration"].to_numpy(float),
        "stimulus_id": trials["stimulus_id"].astype(str).to_numpy(),
        "modality": trials["modality"].astype(str).to_numpy() if "modality" in trials else None,
    })


def _check_events(events: pd.DataFrame, n_scans: int, tr: float, sources) -> pd.DataFrame:
    path = _source(sources, "events")
    missing = [c for c in ("onset", "duration", "stimulus_id") if c not in events.columns]
    if missing:
        raise CortexflowInputError(
            f"events table lacks columns {missing} (has {list(events.columns)})", path=path,
            fix="write a BIDS events.tsv with onset, duration and stimulus_id (n/a for non-stimulus events)")
    ev = events.copy()
    for col in ("onset", "duration"):
        ev[col] = pd.to_numeric(ev[col], errors="coerce")
        if not np.isfinite(ev[col].to_numpy(dtype=float)).all():
            raise CortexflowInputError(f"events column {col!r} has missing or non-numeric values", path=path,
                                       fix="give every event a numeric onset and duration in seconds")
    if (ev["duration"] < 0).any():
        raise CortexflowInputError("events with negative duration", path=path, fix="durations must be >= 0 s")
    before = ev[ev["onset"] < 0]
    if len(before):
        raise CortexflowInputError(
            f"{len(before)} event(s) start before the first volume; first: onset {before['onset'].iloc[0]:g} s",
            path=path, fix="check that the events file belongs to this BOLD run and that onsets are in seconds")
    # what outlasts the run (n_scans x TR) is cut or dropped, with a warning (cortexflow.data.bids)
    return clip_events_to_run(ev, n_scans * tr, path)


def _select_confounds(confounds: pd.DataFrame | None, names: Sequence[str], n_scans: int, sources) -> np.ndarray:
    path = _source(sources, "confounds")
    if not names:
        return np.zeros((n_scans, 0))
    if confounds is None:
        raise CortexflowInputError(f"confounds {list(names)} are requested but no confounds table was given",
                                   path=path, fix="pass the run's desc-confounds_timeseries.tsv or set glm.confounds: []")
    missing = [c for c in names if c not in confounds.columns]
    if missing:
        raise CortexflowInputError(
            f"confound column(s) {missing} are missing; available: {list(confounds.columns)}", path=path,
            fix="choose glm.confounds among the available columns")
    if len(confounds) != n_scans:
        raise CortexflowInputError(f"confounds table has {len(confounds)} rows but the run has {n_scans} volumes",
                                   path=path, fix="use the confounds file of this run")
    values = confounds[list(names)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64, copy=True)
    # fMRIPrep writes n/a in the first row(s) of framewise_displacement and the
    # derivative columns (no previous volume): that is "no change", i.e. 0.
    # Any other missing value is an error, never passed on.
    bad = ~np.isfinite(values)
    leading = np.cumprod(bad, axis=0).astype(bool)
    if (bad & ~leading).any():
        cols = [names[j] for j in np.flatnonzero((bad & ~leading).any(axis=0))]
        raise CortexflowInputError(f"confound column(s) {cols} have missing values after the first rows",
                                   path=path, fix="fill or drop those confounds")
    values[leading] = 0.0
    return values


def build_design(
    events: pd.DataFrame,
    confounds: pd.DataFrame | None,
    n_scans: int,
    tr: float,
    params: GLMConfig | Mapping | None = None,
    *,
    sources: Mapping[str, str] | None = None,
) -> Design:
    """The LSA design of one run: one column per trial (events with a ``stimulus_id``,
    in onset order), one per ``trial_type`` of the other events, the confounds, the
    cosine drifts and a constant. Indexed by frame time, like nilearn's design matrices.
    """
    cfg = GLMConfig.from_params(params)
    ev = _check_events(events, n_scans, tr, sources)
    times = frame_times(n_scans, tr, cfg.slice_time_ref)
    hrf = gamma_difference_hrf(tr, cfg.oversampling, model=cfg.hrf_model)

    is_trial = _is_trial(ev)
    trials = ev[is_trial].sort_values("onset", kind="stable").reset_index(drop=True)
    if len(trials) == 0:
        raise CortexflowInputError("the events table has no trials (no row with a stimulus_id)",
                                   path=_source(sources, "events"), fix="give each stimulus event its stimulus_id")
    columns = {f"trial_{i:03d}": r for i, r in enumerate(
        event_regressors(trials["onset"], trials["duration"], times, hrf, cfg.oversampling, cfg.min_onset).T)}

    others = ev[~is_trial]
    if len(others):
        kind = others["trial_type"].astype(str) if "trial_type" in others else pd.Series("other", index=others.index)
        for name in sorted(kind.unique()):
            sel = others[kind == name]
            reg = event_regressors(sel["onset"], sel["duration"], times, hrf, cfg.oversampling, cfg.min_onset)
            columns[f"event_{name}"] = reg.sum(axis=1)
    for name, col in zip(cfg.confounds, _select_confounds(confounds, cfg.confounds, n_scans, sources).T):
        columns[f"confound_{name}"] = col
    if cfg.drift_model == "cosine":
        drift = cosine_drift(n_scans, tr, cfg.high_pass)
        for j in range(drift.shape[1] - 1):
            columns[f"drift_{j + 1:02d}"] = drift[:, j]
    columns["constant"] = np.ones(n_scans)
    matrix = pd.DataFrame(columns, index=pd.Index(times, name="frame_time"))

    design = Design(matrix=matrix, n_trials=len(trials), trials=_trials_table(ev))
    _check_design(design, cfg, sources)
    return design


def _check_design(design: Design, cfg: GLMConfig, sources) -> None:
    X = design.matrix.to_numpy()
    n_scans, n_cols = X.shape
    path = _source(sources, "events")
    dead = np.flatnonzero(~np.any(design.trial_regressors, axis=0))
    if dead.size:
        raise CortexflowInputError(
            f"{dead.size} trial(s) have no response inside the run (onsets "
            f"{design.trials['onset'].to_numpy()[dead].round(2).tolist()} s, after the last volume)",
            path=path, fix="drop events that start after the last volume was acquired")
    rank = np.linalg.matrix_rank(X)
    # LSS fits one model per trial: two trial columns and the nuisance columns
    model_rank = rank if cfg.method == "lsa" else np.linalg.matrix_rank(design.nuisance) + min(2, design.n_trials)
    if n_scans - model_rank < cfg.min_residual_dof:
        raise CortexflowInputError(
            f"too few volumes for the design: {design.n_trials} trials + {n_cols - design.n_trials} nuisance "
            f"columns leave {n_scans - model_rank} residual degrees of freedom in {n_scans} volumes "
            f"({cfg.method.upper()}, glm.min_residual_dof = {cfg.min_residual_dof})", path=path,
            fix="use longer runs, fewer confounds or a lower glm.high_pass"
            + (", or use glm.method: lss" if cfg.method == "lsa" else ""))
    if cfg.method == "lsa" and rank < n_cols:
        dead = [name for name, col in design.matrix.items() if not np.any(col.to_numpy())]
        raise CortexflowInputError(
            f"the design matrix is rank-deficient (rank {rank} < {n_cols} columns)"
            + (f"; all-zero columns: {dead}" if dead else "; some trials are collinear (same onset?) or confounds repeat"),
            path=path, fix="remove duplicated or unmeasurable events and duplicated confounds, or use glm.method: lss")
    # The canonical HRF peaks ~5 s after onset: a trial closer than that to the
    # last volume is measured on its rising edge only.
    onsets = design.trials["onset"].to_numpy()
    late = onsets[onsets > design.matrix.index[-1] - 5.0]
    if late.size:
        log.warning("%s: %d trial(s) start less than 5 s before the last volume (onsets %s s): their response "
                    "is barely sampled and their betas will be noisy", path or "events", late.size,
                    late.round(2).tolist())


def _check_bold(bold_2d: np.ndarray, sources) -> None:
    path = _source(sources, "bold")
    if bold_2d.ndim != 2 or bold_2d.shape[0] < 2:
        raise CortexflowInputError(f"BOLD data must be (time, voxels) with >= 2 volumes, got shape {bold_2d.shape}",
                                   path=path, fix="pass a 4-D run masked to (time, voxels)")
    finite = np.isfinite(bold_2d).all(axis=0)
    if not finite.all():
        raise CortexflowInputError(f"{int((~finite).sum())} of {bold_2d.shape[1]} voxels contain NaN or inf",
                                   path=path, fix="use a brain mask that excludes them (e.g. fMRIPrep's desc-brain_mask)")
    constant = np.ptp(bold_2d, axis=0) == 0
    if constant.any():
        raise CortexflowInputError(f"{int(constant.sum())} of {bold_2d.shape[1]} voxels are constant over time",
                                   path=path, fix="use a brain mask that excludes voxels without signal")


def _voxel_means(y: np.ndarray, sources) -> np.ndarray:
    mean = y.mean(axis=0)
    if (mean <= 0).any():
        raise CortexflowInputError(
            f"{int((mean <= 0).sum())} voxels have a mean <= 0, so percent signal change is undefined",
            path=_source(sources, "bold"), fix="pass unscaled BOLD data, or set glm.signal_scaling: raw")
    return mean


def _lss_weights(design: Design) -> np.ndarray:
    """(trials x time) matrix whose product with the data gives LSS betas (see module doc)."""
    X = design.trial_regressors
    N = design.nuisance
    Q, _ = np.linalg.qr(N)
    residualise = lambda A: A - Q @ (Q.T @ A)  # noqa: E731
    own = residualise(X)                                         # (T, n)
    rest = residualise(X.sum(axis=1, keepdims=True)) - own       # (T, n)
    pairs = np.stack([own.T, rest.T], axis=2)                    # (n, T, 2)
    return np.linalg.pinv(pairs)[:, 0, :]                        # (n, T)


def trial_weights(design: Design, method: str = "lsa") -> np.ndarray:
    """Rows that map a (time x voxels) data matrix to single-trial betas: shape (n_trials, time)."""
    if method == "lss":
        return _lss_weights(design)
    return np.linalg.pinv(design.matrix.to_numpy())[: design.n_trials]


def single_trial_betas(
    bold_2d: np.ndarray,
    events: pd.DataFrame,
    confounds: pd.DataFrame | None,
    tr: float,
    params: GLMConfig | Mapping | None = None,
    *,
    sources: Mapping[str, str] | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Single-trial betas of one run, for all voxels at once.

    Args:
        bold_2d: (time, voxels) BOLD data of one run (already masked).
        events: BIDS events; rows with a ``stimulus_id`` are trials.
        confounds: fMRIPrep confounds table (rows = volumes), or None if
            ``params.confounds`` is empty.
        tr: repetition time in seconds.
        params: :class:`GLMConfig` or its dict.
        sources: optional ``{"bold": path, "events": path, "confounds": path}``
            used only to name files in error messages.

    Returns:
        betas (n_trials, voxels) float32 in trial (onset) order, and the trials
        table (``trial, onset, duration, stimulus_id, modality``).
    """
    cfg = GLMConfig.from_params(params)
    bold_2d = np.asarray(bold_2d)
    _check_bold(bold_2d, sources)
    if not (np.isfinite(tr) and tr > 0):
        raise CortexflowInputError(f"TR must be a positive number of seconds, got {tr!r}",
                                   path=_source(sources, "bold"), fix="set RepetitionTime in the BOLD sidecar")
    n_scans, n_vox = bold_2d.shape
    design = build_design(events, confounds, n_scans, tr, cfg, sources=sources)
    weights = trial_weights(design, cfg.method)
    betas = np.empty((design.n_trials, n_vox), dtype=np.float32)
    for start in range(0, n_vox, cfg.voxel_chunk):
        stop = min(start + cfg.voxel_chunk, n_vox)
        y = np.asarray(bold_2d[:, start:stop], dtype=np.float64)
        chunk = weights @ y
        if cfg.signal_scaling == "psc":
            # W @ (100 (y / m - 1)) = 100 (W @ y) / m, because every weight row is
            # orthogonal to the design's constant column (pinv(X) X = I): one pass
            # over the data fewer than scaling it first, same numbers.
            chunk *= 100.0 / _voxel_means(y, sources)
        betas[:, start:stop] = chunk
    log.info("%s: %d trials x %d voxels (%s, %d design columns, %d volumes)",
             _source(sources, "bold") or "run", design.n_trials, n_vox, cfg.method.upper(),
             design.matrix.shape[1], n_scans)
    return betas, design.trials


# --------------------------------------------------------------------- stage


def strategy_confounds(bold: str | Path, cfg: GLMConfig, confounds_path: str | Path, n_scans: int) -> pd.DataFrame:
    """The confounds nilearn's ``load_confounds`` selects for ``cfg.confounds_strategy``
    (or ``load_confounds_strategy`` for the preset ``cfg.denoise_strategy``, without
    its ``cosine_XX`` columns: see ``GLMConfig``), plus one spike column per volume
    its scrubbing leaves out (``spike_<volume>``).

    nilearn finds the confounds file from the BOLD file's fMRIPrep name (it must be
    the ``<run>_desc-confounds_timeseries.tsv`` beside it), so errors name that file.
    """
    from nilearn.interfaces.fmriprep import load_confounds, load_confounds_strategy
    from nilearn.interfaces.fmriprep.load_confounds_utils import get_confounds_file

    try:
        found = Path(get_confounds_file(str(bold), flag_full_aroma=False, flag_tedana=False))
    except (ValueError, FileNotFoundError) as e:
        found = None
        reason = f"{type(e).__name__}: {e}"
    if found is None or found.resolve() != Path(confounds_path).resolve():
        raise CortexflowInputError(
            "glm.confounds_strategy reads the confounds through nilearn, which looks for them beside the BOLD run "
            + (f"under fMRIPrep's name and found {found}" if found is not None else f"and did not find them ({reason})"),
            path=confounds_path, fix="keep fMRIPrep's <run>_desc-confounds_timeseries.tsv beside the BOLD run and pass "
                                     "that file, or list the columns in glm.confounds instead of a strategy")
    preset = cfg.denoise_strategy
    what = f"load_confounds_strategy cannot apply preset {preset!r}" if preset else \
        f"load_confounds cannot apply strategy {list(cfg.confounds_strategy)}"
    try:
        if preset:
            table, sample_mask = load_confounds_strategy(str(bold), denoise_strategy=preset, **dict(cfg.confounds_options))
        else:
            table, sample_mask = load_confounds(str(bold), strategy=cfg.confounds_strategy, **dict(cfg.confounds_options))
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:  # missing columns, bad options, misnamed files
        raise CortexflowInputError(
            f"nilearn's {what} ({type(e).__name__}: {e})", path=confounds_path,
            fix="use fMRIPrep's own confounds file and sidecar beside the BOLD run, choose strategies whose columns "
                "it has (scrub needs std_dvars and framewise_displacement, compcor its .json), or list columns in "
                "glm.confounds instead") from None
    table = pd.DataFrame(table).reset_index(drop=True)
    if preset:  # the design's own cosine drifts replace fMRIPrep's (GLMConfig)
        table = table.drop(columns=[c for c in table.columns if str(c).startswith("cosine")])
    if len(table) != n_scans:
        raise CortexflowInputError(f"load_confounds returned {len(table)} rows for a run of {n_scans} volumes",
                                   path=confounds_path, fix="use the confounds file fMRIPrep wrote for this very run")
    if sample_mask is not None:
        censored = np.setdiff1d(np.arange(n_scans), np.asarray(sample_mask))
        for v in censored:
            table[f"spike_{v:04d}"] = (np.arange(n_scans) == v).astype(float)
        log.info("%s: %s kept %d columns and scrubbed %d volume(s) (spike regressors)", Path(bold).name,
                 f"preset {preset}" if preset else f"load_confounds {list(cfg.confounds_strategy)}",
                 table.shape[1] - len(censored), len(censored))
    return table



def _bids_entity(path: str | Path, key: str) -> str | None:
    m = re.search(rf"(?:^|_){key}-([a-zA-Z0-9]+)", Path(path).name)
    return m.group(1) if m else None


def _glmsingle_betas(glmsingle: str, all_events: list[str], events: str, loaded, inside: np.ndarray,  # noqa: ANN001
                     stimulus_ids) -> tuple[np.ndarray, pd.DataFrame]:  # noqa: ANN001
    """This run's betas and trials table from a GLMsingle output over the runs of ``all_events``."""
    from cortexflow.data.bids import read_events
    from cortexflow.preprocess.glmsingle import run_betas

    resolved = [Path(p).resolve() for p in all_events]
    if Path(events).resolve() not in resolved:
        raise CortexflowInputError("this run's events file is not among --glmsingle-events", path=events,
                                   fix="list the events of every run the GLMsingle model was fit on, in run order")
    index = resolved.index(Path(events).resolve())
    counts = [int(_is_trial(read_events(p, stimulus_ids=stimulus_ids)).sum()) if i != index
              else int(_is_trial(loaded.events).sum()) for i, p in enumerate(all_events)]
    betas = run_betas(glmsingle, index, counts, inside, all_events)
    return betas, _trials_table(loaded.events)


def glm_betas_stage(
    *,
    bold: str,
    events: str,
    confounds: str,
    mask: str,
    out_betas: str,
    out_trials: str,
    params: dict,
    sidecar: str | None = None,
    stimuli: str | None = None,
    glmsingle: str | None = None,
    glmsingle_events: list[str] | None = None,
) -> None:
    """Single-trial betas of one BOLD run: a 4-D NIfTI (one volume per trial) and a trials table.

    Reads the run through ``cortexflow.data.bids.load_run`` (which checks TR,
    shapes, events and confounds against the files, and, given ``stimuli`` (the
    study's stimuli.tsv), that every stimulus id of the events is listed there,
    so an unknown id is reported here naming this run's events file), masks it with the brain
    mask, estimates betas with :func:`single_trial_betas`, and writes them on the
    BOLD grid (zeros outside the mask) with the trials table (``trial, onset,
    duration, stimulus_id, modality, run`` and ``session`` when the file names
    carry ``ses-``).

    With ``glmsingle`` (GLMsingle's TYPED_FITHRF_GLMDENOISE_RR file for the runs
    whose events are ``glmsingle_events``, in run order; this run's ``events``
    among them) the betas are read from it instead of estimated
    (``cortexflow.preprocess.glmsingle``); the BOLD data are not read.
    """
    import nibabel as nib

    from cortexflow import _io
    from cortexflow.data.bids import RunFiles, load_run, read_stimulus_table

    cfg = GLMConfig.from_params(params)  # before any data are read: a config error costs nothing
    run_label, session = _bids_entity(bold, "run"), _bids_entity(bold, "ses")
    if sidecar is None:  # fMRIPrep writes it beside the preprocessed BOLD
        sidecar = str(Path(bold).with_name(Path(bold).name.split(".")[0] + ".json"))
    run_files = RunFiles(subject=_bids_entity(bold, "sub") or "", task=_bids_entity(bold, "task") or "",
                         run=int(run_label) if run_label and run_label.isdigit() else 1, bold=Path(bold),
                         mask=Path(mask), events=Path(events), confounds=Path(confounds), sidecar=Path(sidecar),
                         session=session)
    stimulus_ids = None if stimuli is None else set(read_stimulus_table(stimuli)["stimulus_id"])
    loaded = load_run(run_files, stimulus_ids)
    mask_img, bold_img = loaded.mask, loaded.bold  # load_run checked that they share a grid
    inside = _io.image_data(mask_img, mask, "brain mask") > 0
    if not inside.any():
        raise CortexflowInputError("brain mask is empty", path=mask, fix="use the run's desc-brain_mask")
    if glmsingle is not None:
        betas, trials = _glmsingle_betas(glmsingle, glmsingle_events or [events], events, loaded, inside, stimulus_ids)
    else:
        # float32: half the memory of nibabel's default; a truncated .nii.gz fails here, not in load_run
        data = _io.image_data(bold_img, bold, "preprocessed BOLD run", dtype=np.float32)
        bold_2d = data[inside].T  # (time, voxels)
        del data
        bold_img.uncache()
        confound_table = loaded.confounds
        if cfg.confounds_strategy is not None or cfg.denoise_strategy is not None:
            confound_table = strategy_confounds(bold, cfg, confounds, bold_2d.shape[0])
            cfg = dataclasses.replace(cfg, confounds=tuple(confound_table.columns))
        betas, trials = single_trial_betas(bold_2d, loaded.events, confound_table, float(loaded.tr), cfg,
                                           sources={"bold": bold, "events": events, "confounds": confounds})
    trials["run"] = run_files.run
    if session is not None:
        trials["session"] = session

    volume = np.zeros(inside.shape + (betas.shape[0],), dtype=np.float32)
    volume[inside] = betas.T
    out_img = nib.Nifti1Image(volume, bold_img.affine)
    out_img.header.set_zooms(bold_img.header.get_zooms()[:3] + (1.0,))
    out_img.header.set_xyzt_units(xyz=bold_img.header.get_xyzt_units()[0])
    out_img.set_sform(bold_img.affine, code=int(bold_img.header["sform_code"]) or 1)
    out_img.set_qform(bold_img.affine, code=int(bold_img.header["qform_code"]) or 1)
    with _io.atomic_write(out_betas) as tmp:
        nib.save(out_img, tmp)
    _io.save_parquet(out_trials, trials)
    log.info("wrote %s (%d trials) and %s", out_betas, len(trials), out_trials)
