"""Dataset assembly: stimulus-wise split, training-only z-scoring, repeats, noise ceiling, selection."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cortexflow.errors import CortexflowInputError
from cortexflow.preprocess.dataset import (
    build_dataset,
    load_dataset,
    make_dataset_stage,
    noise_ceiling,
    noise_ceiling_snr,
)

N_VOX = 40
RELIABLE = np.arange(N_VOX) < 20  # the first half carries stimulus signal


def _study(seed=0, train_repeats=1, n_train=60, n_test=12, test_repeats=3, n_runs=4, signal=1.0, noise=0.5):
    """Trials spread over runs with run-specific gain and offset; (betas, trials, voxels, stimuli)."""
    rng = np.random.default_rng(seed)
    stim = [f"tr{i:03d}" for i in range(n_train)] + [f"te{i:02d}" for i in range(n_test)]
    shown = [s for s in stim[:n_train] for _ in range(train_repeats)] + [s for s in stim[n_train:] for _ in range(test_repeats)]
    shown = list(rng.permutation(shown))
    response = {s: rng.normal(scale=signal, size=N_VOX) * RELIABLE for s in stim}
    run = np.arange(len(shown)) % n_runs + 1
    gain, offset = rng.uniform(0.5, 2, size=(n_runs, N_VOX)), rng.normal(scale=3, size=(n_runs, N_VOX))
    clean = np.stack([response[s] for s in shown]) + rng.normal(scale=noise, size=(len(shown), N_VOX))
    betas = clean * gain[run - 1] + offset[run - 1]
    trials = pd.DataFrame({"trial": np.arange(len(shown)), "stimulus_id": shown, "run": run, "modality": "image"})
    voxels = pd.DataFrame({"region": np.where(RELIABLE, "V1", "noise"), "network": "Visual",
                           "i": np.arange(N_VOX), "j": 0, "k": 0, "x": 0.0, "y": 0.0, "z": 0.0})
    stimuli = pd.DataFrame({"stimulus_id": stim, "modality": "image", "path": "",
                            "split": ["train"] * n_train + ["test"] * n_test})
    return betas.astype(np.float32), trials, voxels, stimuli


def test_split_is_by_stimulus_and_test_repeats_are_averaged():
    betas, trials, voxels, stimuli = _study()
    data = build_dataset(betas, trials, voxels, stimuli, {"val_fraction": 0.2}, seed=0)
    assert not set(data.train["stimulus_id"]) & set(data.test["stimulus_id"])
    assert set(data.test["stimulus_id"]) == set(stimuli.loc[stimuli["split"] == "test", "stimulus_id"])
    assert (data.test["n_repeats"] == 3).all() and data.X_test.shape == (12, N_VOX)
    assert data.X_train.shape == (60, N_VOX) and data.X_train.dtype == np.float32
    # each test row is the mean of that stimulus' trials, z-scored with its run's training-fold statistics
    fit = trials["stimulus_id"].str.startswith("tr") & ~trials["stimulus_id"].isin(
        data.train.loc[data.train["fold"] == "val", "stimulus_id"])
    z = np.empty(betas.shape)
    for r in trials["run"].unique():
        rows = (trials["run"] == r).to_numpy()
        ref = betas[rows & fit.to_numpy()].astype(np.float64)
        z[rows] = (betas[rows] - ref.mean(0)) / ref.std(0, ddof=1)
    for row, sid in enumerate(data.test["stimulus_id"]):
        np.testing.assert_allclose(data.X_test[row], z[(trials["stimulus_id"] == sid).to_numpy()].mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(data.X_train, z[trials["stimulus_id"].str.startswith("tr").to_numpy()], rtol=1e-5, atol=1e-5)


def test_zscoring_never_sees_test_or_val_trials():
    betas, trials, voxels, stimuli = _study()
    data = build_dataset(betas, trials, voxels, stimuli, {"val_fraction": 0.2}, seed=0)
    held_out = trials["stimulus_id"].str.startswith("te") | trials["stimulus_id"].isin(
        data.train.loc[data.train["fold"] == "val", "stimulus_id"])
    corrupted = betas.copy()
    corrupted[held_out.to_numpy()] = 1e3 * corrupted[held_out.to_numpy()] + 50.0
    again = build_dataset(corrupted, trials, voxels, stimuli, {"val_fraction": 0.2}, seed=0)
    train_fold = (data.train["fold"] == "train").to_numpy()
    np.testing.assert_array_equal(again.X_train[train_fold], data.X_train[train_fold])
    # the training-fold trials of each run are exactly standardised
    for r in data.train["run"].unique():
        rows = train_fold & (data.train["run"] == r).to_numpy()
        np.testing.assert_allclose(data.X_train[rows].mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(data.X_train[rows].std(0, ddof=1), 1, atol=1e-5)


def test_validation_fold_holds_whole_stimuli_and_follows_the_seed():
    betas, trials, voxels, stimuli = _study(train_repeats=2)
    a = build_dataset(betas, trials, voxels, stimuli, {"val_fraction": 0.25}, seed=1).train
    b = build_dataset(betas, trials, voxels, stimuli, {"val_fraction": 0.25}, seed=1).train
    c = build_dataset(betas, trials, voxels, stimuli, {"val_fraction": 0.25}, seed=2).train
    assert a.groupby("stimulus_id")["fold"].nunique().max() == 1  # a stimulus is never split across folds
    assert a.loc[a["fold"] == "val", "stimulus_id"].nunique() == 15  # 25% of 60 training stimuli
    pd.testing.assert_frame_equal(a, b)
    assert set(a.loc[a["fold"] == "val", "stimulus_id"]) != set(c.loc[c["fold"] == "val", "stimulus_id"])


def test_ncsnr_recovers_signal_to_noise_and_noise_ceiling_formula():
    rng = np.random.default_rng(3)
    n_stim, reps, signal_sd, noise_sd = 400, 3, 1.0, 0.5
    signal = rng.normal(scale=signal_sd, size=(n_stim, 2)) * np.array([1.0, 0.0])  # voxel 2: noise only
    betas = np.repeat(signal, reps, axis=0) + rng.normal(scale=noise_sd, size=(n_stim * reps, 2))
    ids = np.repeat(np.arange(n_stim), reps)
    ncsnr, n_used = noise_ceiling_snr(betas, ids)
    assert n_used == n_stim
    assert ncsnr[0] == pytest.approx(signal_sd / noise_sd, rel=0.08)
    assert ncsnr[1] < 0.15
    # NSD: ncsnr 2 averaged over 3 trials -> 100 * 4 / (4 + 1/3) = 92.3%
    assert noise_ceiling(np.array([2.0]), np.array([3]))[0] == pytest.approx(100 * 4 / (4 + 1 / 3))
    assert noise_ceiling(np.array([0.0]), np.array([3]))[0] == 0.0
    # unequal repeats use the mean of 1/n (NSD's A/3 + B/2 + C/1 weighting)
    assert noise_ceiling(np.array([1.0]), np.array([1, 3]))[0] == pytest.approx(100 / (1 + (1 + 1 / 3) / 2))


def test_noise_ceiling_marks_the_reliable_voxels():
    betas, trials, voxels, stimuli = _study(n_test=40, test_repeats=3)
    vox = build_dataset(betas, trials, voxels, stimuli).voxels
    assert vox.loc[RELIABLE, "noise_ceiling"].min() > 60
    assert vox.loc[~RELIABLE, "noise_ceiling"].median() < 20
    assert vox["selected"].all()  # selection is off by default


def test_selection_uses_training_repeats_only_and_refuses_without_them():
    betas, trials, voxels, stimuli = _study(train_repeats=2)
    params = {"select_top_k": 20}
    data = build_dataset(betas, trials, voxels, stimuli, params)
    np.testing.assert_array_equal(data.voxels["selected"].to_numpy(), RELIABLE)
    # scrambling the test trials changes the noise ceiling but not the selection
    test_rows = trials["stimulus_id"].str.startswith("te").to_numpy()
    scrambled = betas.copy()
    scrambled[test_rows] = np.random.default_rng(9).permutation(scrambled[test_rows])
    again = build_dataset(scrambled, trials, voxels, stimuli, params)
    np.testing.assert_array_equal(again.voxels["selected"], data.voxels["selected"])
    assert not np.allclose(again.voxels["ncsnr"], data.voxels["ncsnr"])
    betas1, trials1, voxels1, stimuli1 = _study(train_repeats=1)
    with pytest.raises(CortexflowInputError, match="leak test data"):
        build_dataset(betas1, trials1, voxels1, stimuli1, params)


def test_without_split_column_repeated_stimuli_are_test():
    betas, trials, voxels, stimuli = _study()
    data = build_dataset(betas, trials, voxels, stimuli.drop(columns="split"))
    assert set(data.test["stimulus_id"]) == {f"te{i:02d}" for i in range(12)}
    assert data.summary["split_source"] == "repeated stimuli are test"


def test_bad_inputs_are_errors_naming_the_file():
    betas, trials, voxels, stimuli = _study()
    nan = betas.copy()
    nan[3, [1, 5, 7]] = np.nan
    with pytest.raises(CortexflowInputError, match=r"roi\.npy: 3 of 40 voxels have NaN"):
        build_dataset(nan, trials, voxels, stimuli, sources={"roi_betas": "roi.npy"})
    flat = betas.copy()
    flat[:, 2] = 1.0
    with pytest.raises(CortexflowInputError, match="1 voxels are constant"):
        build_dataset(flat, trials, voxels, stimuli)
    with pytest.raises(CortexflowInputError, match=r"stimuli\.tsv: 60 stimuli of the trials are not in"):
        build_dataset(betas, trials, voxels, stimuli[stimuli["split"] == "test"], sources={"stimuli": "stimuli.tsv"})
    both = pd.concat([stimuli, stimuli.iloc[[0]].assign(split="test")])
    with pytest.raises(CortexflowInputError, match="both train and test"):
        build_dataset(betas, trials, voxels, both)
    with pytest.raises(CortexflowInputError, match="do not match"):
        build_dataset(betas[:, :10], trials, voxels, stimuli)


def test_stage_writes_the_contract_files_and_load_dataset_reads_them(tmp_path):
    betas, trials, voxels, stimuli = _study(train_repeats=2)
    paths = {"roi_betas": tmp_path / "roi.npy", "trials": tmp_path / "trials.parquet",
             "voxels": tmp_path / "voxels.parquet", "stimuli": tmp_path / "stimuli.tsv"}
    np.save(paths["roi_betas"], betas)
    trials.to_parquet(paths["trials"])
    voxels.to_parquet(paths["voxels"])
    stimuli.to_csv(paths["stimuli"], sep="\t", index=False)
    out = tmp_path / "dataset" / "image"
    make_dataset_stage(**{k: str(v) for k, v in paths.items()}, out_dir=str(out),
                       params={"select_min_ncsnr": 1.0}, seed=0)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["X_train.npy", "X_test.npy", "train.parquet", "test.parquet", "voxels.parquet", "dataset.json"])
    summary = json.loads((out / "dataset.json").read_text())
    assert summary["train_test_overlap"] == 0 and summary["n_test_stimuli"] == 12
    assert summary["n_selected"] == int(RELIABLE.sum())
    assert set(pd.read_parquet(out / "train.parquet").columns) >= {"stimulus_id", "run", "fold"}
    loaded = load_dataset(out)
    assert loaded.X_train.shape == (120, 20) and loaded.X_test.shape == (12, 20)
    assert (loaded.voxels["region"] == "V1").all()
    assert load_dataset(out, selected_only=False).X_train.shape == (120, N_VOX)
