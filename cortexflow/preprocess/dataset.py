"""The decoding dataset of one subject and modality, assembled without leakage.

From the ROI betas of all runs of a task (trials x voxels) to what decoders and
baselines learn from:

1. **Split by stimulus.** A stimulus is either train or test (``stimuli.tsv``'s
   ``split`` column; without it, stimuli shown more than once are test, the
   NSD "shared images" convention). No test stimulus is ever trained on, and a
   fraction ``val_fraction`` of the *training stimuli* (never single trials of a
   stimulus) forms the ``val`` fold for design decisions.
2. **z-score each voxel per session** (BIDS ``ses``, else per run), as NSD does
   to remove session-wise gain and baseline changes — but with the mean and sd
   of the ``train``-fold trials of that session only, so neither test nor val
   trials shape the normalisation they are evaluated with.
3. **Average test repeats**: one row per test stimulus.
4. **Noise ceiling** per voxel from the repeats (Allen et al. 2022, *Nat.
   Neurosci.* 25:116, "ncsnr"): the noise variance is the mean over repeated
   stimuli of the across-repeat variance, the signal variance what is left of
   the total, ``ncsnr = sd_signal / sd_noise`` and the ceiling for an average of
   ``n`` trials ``NC = 100 ncsnr² / (ncsnr² + 1/n)`` (``1/n`` averaged over test
   stimuli when their repeat counts differ). With z-scored betas the total
   variance is 1 and this is NSD's ``sqrt(max(0, 1 - sd_noise²)) / sd_noise``;
   using the measured total keeps it right when the test trials' variance is not
   exactly 1 under the training statistics. These columns describe the *test*
   data (the ceiling evaluation compares against) and are never used to choose
   voxels.
5. **Optional voxel selection** (off by default) by an ncsnr computed on the
   *training* split's repeated stimuli only. Selecting on test repeats would
   pick voxels that happen to be reliable on exactly the items being scored (a
   leak), and without repeated training stimuli there is no reliability to
   measure (each stimulus has one response, so a split half has nothing to
   compare) — then selection is refused with an error rather than quietly
   falling back to test data.

The X arrays keep every ROI voxel; ``voxels.parquet``'s ``selected`` column marks
the chosen ones (all, when selection is off), and :func:`load_dataset` applies it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from typing import Literal

from cortexflow.errors import CortexflowInputError
from cortexflow.preprocess.ncsnr import noise_ceiling, noise_ceiling_snr
from cortexflow.sections import from_mapping

log = logging.getLogger("cortexflow.preprocess.dataset")

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetConfig:
    """The ``dataset:`` section of the config.

    ``zscore``: ``session`` (per BIDS session, falling back to runs when the
    trials carry no session), ``run``, or ``none``. ``train_repeats``: ``trials``
    keeps every presentation of a training stimulus as its own row (MindEye's
    choice: more, noisier samples), ``average`` averages them (after z-scoring)
    into one row per stimulus, as the test split always is (Brain-Diffuser's
    and Takagi & Nishimoto's choice). Voxel selection is on when
    ``select_top_k`` or ``select_min_ncsnr`` is set; it needs at least
    ``min_repeated_train_stimuli`` training stimuli shown twice or more.
    """

    val_fraction: float = 0.1
    zscore: Literal["session", "run", "none"] = "session"
    train_repeats: Literal["trials", "average"] = "trials"
    select_top_k: int | None = None
    select_min_ncsnr: float | None = None
    min_repeated_train_stimuli: int = 10

    def __post_init__(self) -> None:
        fix = "correct the dataset section of the config"
        if not 0.0 <= self.val_fraction < 1.0:
            raise CortexflowInputError("dataset.val_fraction must lie in [0, 1)", fix=fix)
        if self.zscore not in ("session", "run", "none"):
            raise CortexflowInputError("dataset.zscore must be session, run or none", fix=fix)
        if self.train_repeats not in ("trials", "average"):
            raise CortexflowInputError("dataset.train_repeats must be trials or average", fix=fix)
        if self.select_top_k is not None and int(self.select_top_k) < 1:
            raise CortexflowInputError("dataset.select_top_k must be >= 1", fix=fix)
        if int(self.min_repeated_train_stimuli) < 2:
            raise CortexflowInputError("dataset.min_repeated_train_stimuli must be >= 2", fix=fix)

    @property
    def selects(self) -> bool:
        return self.select_top_k is not None or self.select_min_ncsnr is not None

    @classmethod
    def from_params(cls, params: DatasetConfig | Mapping | None) -> DatasetConfig:
        if isinstance(params, DatasetConfig):
            return params
        return from_mapping(cls, params, "dataset")


@dataclass
class Dataset:
    """One subject x modality: z-scored training trials, averaged test stimuli, voxels."""

    X_train: np.ndarray
    train: pd.DataFrame
    X_test: np.ndarray
    test: pd.DataFrame
    voxels: pd.DataFrame
    summary: dict


# ----------------------------------------------------------------------------- pieces


def assign_splits(trials: pd.DataFrame, stimuli: pd.DataFrame | None, *, source: str | None = None) -> pd.Series:
    """``train``/``test`` for every trial, decided per stimulus (see module doc)."""
    counts = trials["stimulus_id"].value_counts()
    if stimuli is None or "split" not in stimuli.columns:
        log.info("no split column in %s: stimuli shown more than once are test", source or "the stimuli table")
        return trials["stimulus_id"].map(lambda s: "test" if counts[s] > 1 else "train").rename("split")
    table = stimuli[["stimulus_id", "split"]].astype(str).drop_duplicates()
    conflicting = table[table.duplicated("stimulus_id", keep=False)]
    if len(conflicting):
        raise CortexflowInputError(f"stimuli {sorted(conflicting['stimulus_id'].unique())[:5]} are listed as both "
                                   "train and test", path=source, fix="give each stimulus_id one split")
    bad = sorted(set(table["split"]) - set(SPLITS))
    if bad:
        raise CortexflowInputError(f"split values {bad} are not train or test", path=source,
                                   fix="use split = train or test")
    split = trials["stimulus_id"].astype(str).map(dict(zip(table["stimulus_id"], table["split"])))
    unknown = sorted(trials.loc[split.isna(), "stimulus_id"].astype(str).unique())
    if unknown:
        raise CortexflowInputError(f"{len(unknown)} stimuli of the trials are not in the stimuli table "
                                   f"(e.g. {unknown[:5]})", path=source,
                                   fix="use the stimuli.tsv of this study, listing every stimulus_id shown")
    return split.rename("split")


def validation_stimuli(train_stimuli: np.ndarray, fraction: float, seed: int) -> set:
    """A random ``fraction`` of the training stimuli (at least one when fraction > 0 and there are two)."""
    stimuli = np.unique(np.asarray(train_stimuli).astype(str))
    n_val = int(round(fraction * len(stimuli)))
    if fraction > 0 and len(stimuli) >= 2:
        n_val = min(max(n_val, 1), len(stimuli) - 1)
    rng = np.random.default_rng(seed)
    return set(rng.permutation(stimuli)[:n_val].tolist())


def zscore_by_group(betas: np.ndarray, groups: np.ndarray, fit_rows: np.ndarray, *, source: str | None = None) -> np.ndarray:
    """z-score each voxel within each group using only the rows in ``fit_rows`` for mean and sd."""
    out = np.empty(betas.shape, dtype=np.float64)
    for g in pd.unique(groups):
        rows = groups == g
        fit = rows & fit_rows
        if fit.sum() < 2:
            raise CortexflowInputError(
                f"session/run {g!r} has {int(fit.sum())} training trial(s); its z-scoring statistics need at least 2",
                path=source, fix="set dataset.zscore: run or none, or put training stimuli in every session")
        mean = betas[fit].mean(axis=0)
        sd = betas[fit].std(axis=0, ddof=1)
        flat = sd == 0
        if flat.any():
            raise CortexflowInputError(
                f"{int(flat.sum())} voxels are constant over the training trials of session/run {g!r}",
                path=source, fix="exclude them with the ROI definition or a brain mask")
        out[rows] = (betas[rows] - mean) / sd
    return out


def _select(ncsnr_train: np.ndarray, cfg: DatasetConfig) -> np.ndarray:
    keep = np.ones(ncsnr_train.shape, dtype=bool)
    if cfg.select_min_ncsnr is not None:
        keep &= ncsnr_train >= cfg.select_min_ncsnr
    if cfg.select_top_k is not None:
        top = np.argsort(-ncsnr_train, kind="stable")[: int(cfg.select_top_k)]
        in_top = np.zeros_like(keep)
        in_top[top] = True
        keep &= in_top
    if not keep.any():
        raise CortexflowInputError("voxel selection kept no voxel", fix="lower dataset.select_min_ncsnr")
    return keep


def _average_repeats(table: pd.DataFrame, X: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows of the same stimulus averaged: the first presentation's table row with ``n_repeats``."""
    ids = table["stimulus_id"].to_numpy(str)
    order = pd.unique(ids)
    grouped = pd.DataFrame(X).groupby(ids, sort=False)
    averaged = grouped.mean().loc[order].to_numpy(np.float32)
    first = table.drop_duplicates("stimulus_id").set_index("stimulus_id").loc[order].reset_index()
    first["n_repeats"] = grouped.size().loc[order].to_numpy(np.int64)
    return first, averaged


# ----------------------------------------------------------------------------- assembly


def build_dataset(
    betas: np.ndarray,
    trials: pd.DataFrame,
    voxels: pd.DataFrame,
    stimuli: pd.DataFrame | None,
    params: DatasetConfig | Mapping | None = None,
    seed: int = 0,
    *,
    sources: Mapping[str, str] | None = None,
) -> Dataset:
    """Assemble the dataset of one subject and modality (see the module doc for each step)."""
    cfg = DatasetConfig.from_params(params)
    sources = dict(sources or {})
    betas_src, trials_src = sources.get("roi_betas"), sources.get("trials")
    betas = np.asarray(betas)
    if betas.ndim != 2 or betas.shape[0] != len(trials) or betas.shape[1] != len(voxels):
        raise CortexflowInputError(f"betas of shape {betas.shape} do not match {len(trials)} trials x "
                                   f"{len(voxels)} voxels", path=betas_src,
                                   fix="pass the trials and voxels tables written with these betas")
    bad = ~np.isfinite(betas).all(axis=0)
    if bad.any():
        raise CortexflowInputError(f"{int(bad.sum())} of {betas.shape[1]} voxels have NaN or inf betas",
                                   path=betas_src, fix="exclude them with the ROI definition or a brain mask")
    for col in ("stimulus_id", "run"):
        if col not in trials.columns:
            raise CortexflowInputError(f"trials table lacks column {col!r}", path=trials_src,
                                       fix="use the trials table written by extract_rois")
    trials = trials.reset_index(drop=True)
    split = assign_splits(trials, stimuli, source=sources.get("stimuli")).to_numpy()
    train_rows, test_rows = split == "train", split == "test"
    train_ids = set(trials.loc[train_rows, "stimulus_id"].astype(str))
    test_ids = set(trials.loc[test_rows, "stimulus_id"].astype(str))
    assert not train_ids & test_ids, "a stimulus is in both splits"  # guaranteed by per-stimulus assignment
    if not train_rows.any() or not test_rows.any():
        raise CortexflowInputError(f"{int(train_rows.sum())} training and {int(test_rows.sum())} test trials: "
                                   "both splits must be non-empty", path=sources.get("stimuli") or trials_src,
                                   fix="check the split column of stimuli.tsv against the stimuli shown in this task")

    val_ids = validation_stimuli(np.array(sorted(train_ids)), cfg.val_fraction, seed)
    fold = np.where(trials["stimulus_id"].astype(str).isin(val_ids), "val", "train")
    fit_rows = train_rows & (fold == "train")

    if cfg.zscore == "none":
        z = betas.astype(np.float64)
        unit = "none"
    else:
        use_session = cfg.zscore == "session" and "session" in trials.columns and trials["session"].notna().all()
        unit = "session" if use_session else "run"
        groups = trials["session" if use_session else "run"].astype(str)
        if not use_session and "session" in trials.columns:  # run 1 of ses-01 and of ses-02 are two runs
            groups = trials["session"].astype(str) + "/" + groups
        groups = groups.to_numpy()
        z = zscore_by_group(betas.astype(np.float64), groups, fit_rows, source=betas_src)

    # training split (train + val folds), in trial order
    keep_cols = [c for c in ("stimulus_id", "run", "session", "trial", "onset") if c in trials.columns]
    train = trials.loc[train_rows, keep_cols].reset_index(drop=True)
    train["stimulus_id"] = train["stimulus_id"].astype(str)
    train["fold"] = fold[train_rows]
    X_train = z[train_rows].astype(np.float32)
    if cfg.train_repeats == "average":  # one row per training stimulus, at its first presentation
        train, X_train = _average_repeats(train, X_train)

    # test split: repeats averaged, one row per stimulus in order of first presentation
    test_ids_ordered = pd.unique(trials.loc[test_rows, "stimulus_id"].astype(str))
    test_trials_ids = trials.loc[test_rows, "stimulus_id"].astype(str).to_numpy()
    z_test = z[test_rows]
    grouped = pd.DataFrame(z_test).groupby(test_trials_ids, sort=False)
    X_test = grouped.mean().loc[test_ids_ordered].to_numpy(np.float32)
    n_repeats = grouped.size().loc[test_ids_ordered].to_numpy()
    test = pd.DataFrame({"stimulus_id": test_ids_ordered, "n_repeats": n_repeats.astype(np.int64)})

    # noise ceiling of the test data (evaluation only)
    ncsnr, n_rep_test = noise_ceiling_snr(z_test, test_trials_ids)
    if n_rep_test == 0:
        log.warning("no test stimulus is repeated: the noise ceiling cannot be estimated (NaN)")
    out_voxels = voxels.reset_index(drop=True).copy()
    out_voxels["ncsnr"] = ncsnr
    out_voxels["noise_ceiling"] = noise_ceiling(ncsnr, n_repeats)

    # voxel selection from training repeats only
    selection = {"enabled": cfg.selects}
    if cfg.selects:
        ncsnr_train, n_rep_train = noise_ceiling_snr(z[train_rows], trials.loc[train_rows, "stimulus_id"].astype(str))
        if n_rep_train < cfg.min_repeated_train_stimuli:
            raise CortexflowInputError(
                f"voxel selection needs repeated training stimuli to measure reliability, but only {n_rep_train} "
                f"training stimuli are shown twice or more (dataset.min_repeated_train_stimuli = "
                f"{cfg.min_repeated_train_stimuli}); selecting on test repeats would leak test data",
                path=sources.get("stimuli") or trials_src,
                fix="turn selection off (unset dataset.select_top_k / select_min_ncsnr) or repeat some training stimuli")
        out_voxels["ncsnr_train"] = ncsnr_train
        out_voxels["selected"] = _select(ncsnr_train, cfg)
        selection.update(data="training-split repeats", n_repeated_train_stimuli=n_rep_train,
                         top_k=cfg.select_top_k, min_ncsnr=cfg.select_min_ncsnr)
    else:
        out_voxels["selected"] = True

    nc = out_voxels["noise_ceiling"].to_numpy()
    summary = {
        "n_train_trials": int((train["fold"] == "train").sum()),
        "n_val_trials": int((train["fold"] == "val").sum()),
        "n_train_stimuli": len(train_ids) - len(val_ids),
        "n_val_stimuli": len(val_ids),
        "n_test_stimuli": len(test_ids_ordered),
        "n_test_trials": int(test_rows.sum()),
        "mean_test_repeats": float(n_repeats.mean()),
        "n_voxels": int(betas.shape[1]),
        "n_selected": int(out_voxels["selected"].sum()),
        "zscore": unit,
        "train_repeats": cfg.train_repeats,
        "zscore_statistics": "train-fold trials of each group" if unit != "none" else None,
        "split_source": "stimuli.tsv split column" if stimuli is not None and "split" in stimuli.columns
        else "repeated stimuli are test",
        "train_test_overlap": 0,
        "noise_ceiling": {
            "repeated_test_stimuli": n_rep_test,
            "median_ncsnr": None if n_rep_test == 0 else float(np.median(ncsnr)),
            "median_percent": None if n_rep_test == 0 else float(np.median(nc)),
            "mean_percent": None if n_rep_test == 0 else float(np.mean(nc)),
        },
        "selection": selection,
        "seed": int(seed),
    }
    return Dataset(X_train, train, X_test, test, out_voxels, summary)


def make_dataset_stage(
    *,
    roi_betas: str,
    trials: str,
    voxels: str,
    stimuli: str,
    out_dir: str,
    params: dict,
    seed: int = 0,
) -> None:
    """Train/test dataset of one subject and modality (files in docs/contracts.md, "make_dataset")."""
    from cortexflow import _io

    cfg = DatasetConfig.from_params(params)
    for path in (roi_betas, trials, voxels, stimuli):
        if not Path(path).exists():
            raise CortexflowInputError("file does not exist", path=path, fix="run the earlier stages first")
    rerun = "rerun extract_rois for this subject and task (delete the file first)"
    betas = _io.load_npy(roi_betas, "ROI betas matrix", rerun)
    trials_df = _io.read_parquet(trials, "ROI trials table", rerun)
    voxels_df = _io.read_parquet(voxels, "ROI voxels table", rerun)
    stimuli_df = pd.read_csv(stimuli, sep="\t", dtype={"stimulus_id": str})
    if "modality" in stimuli_df.columns and "modality" in trials_df.columns:
        # one stimulus_id may be listed for several modalities (a sentence read and heard):
        # prefer this task's rows when they cover every stimulus shown
        same = stimuli_df[stimuli_df["modality"].astype(str).isin(set(trials_df["modality"].astype(str)))]
        if set(trials_df["stimulus_id"].astype(str)) <= set(same["stimulus_id"]):
            stimuli_df = same
    data = build_dataset(betas, trials_df, voxels_df, stimuli_df, cfg, seed,
                         sources={"roi_betas": roi_betas, "trials": trials, "stimuli": stimuli})
    with _io.atomic_dir(out_dir) as tmp:
        np.save(tmp / "X_train.npy", data.X_train)
        np.save(tmp / "X_test.npy", data.X_test)
        data.train.to_parquet(tmp / "train.parquet", index=False)
        data.test.to_parquet(tmp / "test.parquet", index=False)
        data.voxels.to_parquet(tmp / "voxels.parquet", index=False)
        _io.save_json(tmp / "dataset.json", data.summary)
    s = data.summary
    log.info("wrote %s: %d train + %d val trials, %d test stimuli (%d trials), %d/%d voxels, median NC %s%%",
             out_dir, s["n_train_trials"], s["n_val_trials"], s["n_test_stimuli"], s["n_test_trials"],
             s["n_selected"], s["n_voxels"], s["noise_ceiling"]["median_percent"])


def load_dataset(path: str | Path, selected_only: bool = True) -> Dataset:
    """Read a make_dataset output folder; with ``selected_only`` keep the selected voxels' columns."""
    import json

    from cortexflow import _io

    path = Path(path)
    if not (path / "dataset.json").is_file():
        raise CortexflowInputError("not a make_dataset output folder (no dataset.json)", path=path,
                                   fix="run make_dataset for this subject and modality first")
    rerun = "rerun make_dataset for this subject and modality (delete its folder first)"
    voxels = _io.read_parquet(path / "voxels.parquet", "dataset's voxels table", rerun)
    X_train = _io.load_npy(path / "X_train.npy", "training matrix", rerun)
    X_test = _io.load_npy(path / "X_test.npy", "test matrix", rerun)
    if selected_only:
        keep = voxels["selected"].to_numpy(bool)
        X_train, X_test, voxels = X_train[:, keep], X_test[:, keep], voxels[keep].reset_index(drop=True)
    try:
        summary = json.loads((path / "dataset.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CortexflowInputError(f"dataset.json is damaged ({e})", path=path / "dataset.json", fix=rerun) from None
    return Dataset(X_train, _io.read_parquet(path / "train.parquet", "training trials table", rerun), X_test,
                   _io.read_parquet(path / "test.parquet", "test stimuli table", rerun), voxels, summary)
