"""The simulated study: reproducible to the byte, laid out as BIDS/fMRIPrep, carrying the signal it claims."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cortexflow.cli import main as cli_main
from cortexflow.data.bids import find_runs, load_run, load_stimuli
from cortexflow.data.simulate import SimulationConfig, lsa_design, planned_runs, simulate_study, study_subjects
from cortexflow.errors import CortexflowInputError

SPACE = "MNI152NLin2009cAsym"
# Small enough to be quick, large enough (40 single image trials) for per-voxel statistics.
# Single-trial SNR 1 (above the default study's) so per-voxel checks on 40 trials have power.
SMALL = {"subjects": 2, "image_train": 36, "image_test": 4, "sentence_train": 6, "sentence_test": 2, "test_repeats": 2,
         "runs": {"image": 2, "audio": 2, "text": 2}, "beta_snr": 1.0}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return simulate_study(tmp_path_factory.mktemp("sim") / "bids", SMALL, seed=7)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(study, tmp_path):
    # the two subjects in two processes this time (the fixture simulated them one after the other)
    again = _digests(simulate_study(tmp_path / "again", SMALL, seed=7, workers=2))
    assert again == _digests(study)
    other = _digests(simulate_study(tmp_path / "other", SMALL, seed=8))
    assert other.keys() == again.keys()
    bold = f"derivatives/fmriprep/sub-01/func/sub-01_task-images_run-01_space-{SPACE}_desc-preproc_bold.nii.gz"
    assert other[bold] != again[bold]
    assert other["stimuli/stimuli.tsv"] != again["stimuli/stimuli.tsv"]


def test_layout_follows_bids_and_fmriprep(study):
    assert json.loads((study / "dataset_description.json").read_text())["DatasetType"] == "raw"
    assert json.loads((study / "derivatives/fmriprep/dataset_description.json").read_text())["DatasetType"] == "derivative"
    assert pd.read_csv(study / "participants.tsv", sep="\t")["participant_id"].tolist() == ["sub-01", "sub-02"]
    stem = "sub-02_task-audio_run-02"
    func = study / "derivatives/fmriprep/sub-02/func"
    img = nib.load(func / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz")
    assert img.ndim == 4 and img.get_data_dtype() == np.int16 and img.header.get_zooms() == (4.0, 4.0, 4.0, 2.0)
    assert img.header.get_xyzt_units() == ("mm", "sec") and int(img.header["sform_code"]) == 4
    assert img.dataobj.slope == 2.0  # a fifth of the 1 % noise on a baseline of 1000
    mask = nib.load(func / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz").get_fdata() > 0
    first = np.asarray(img.dataobj[..., 0])
    assert mask.sum() > 25000 and np.all(first[~mask] == 0) and np.all(first[mask] > 300)
    assert np.allclose(img.affine, [[4, 0, 0, -98], [0, 4, 0, -134], [0, 0, 4, -72], [0, 0, 0, 1]])
    assert json.loads((func / f"{stem}_space-{SPACE}_desc-preproc_bold.json").read_text())["RepetitionTime"] == 2.0
    conf = pd.read_csv(func / f"{stem}_desc-confounds_timeseries.tsv", sep="\t", na_values="n/a")
    for col in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "framewise_displacement", "csf", "white_matter"):
        assert col in conf.columns
    assert len(conf) == img.shape[3] and np.isnan(conf["framewise_displacement"].iloc[0])
    fd = np.abs(np.diff(conf[["trans_x", "trans_y", "trans_z"]], axis=0)).sum(1) + 50 * np.abs(
        np.diff(conf[["rot_x", "rot_y", "rot_z"]], axis=0)).sum(1)
    assert np.allclose(conf["framewise_displacement"].iloc[1:], fd, atol=1e-5)  # Power et al. 2012
    events = pd.read_csv(study / "sub-02/func" / f"{stem}_events.tsv", sep="\t")
    assert list(events.columns[:5]) == ["onset", "duration", "trial_type", "stimulus_id", "modality"]
    assert (events["modality"] == "audio").all() and (events["duration"] == 2.0).all()
    stim = load_stimuli(study)
    assert set(events["stimulus_id"]) <= set(stim["stimulus_id"])
    assert all((study / "stimuli" / p).is_file() for p in stim["path"])


def test_test_stimuli_repeat_in_different_runs_and_training_stimuli_once(study):
    stim = load_stimuli(study).set_index("stimulus_id")
    for subject in ("01", "02"):
        trials = pd.concat([load_run(r).events.assign(run=r.run) for r in find_runs(study, subject=subject, task="images")])
        counts = trials.groupby("stimulus_id")["run"].agg(["size", "nunique"])
        split = stim.loc[counts.index, "split"]
        assert (counts.loc[split == "train", "size"] == 1).all()
        assert (counts.loc[split == "test", "size"] == 2).all() and (counts.loc[split == "test", "nunique"] == 2).all()
        assert len(counts) == 40


def test_planned_runs_match_the_files(study):
    assert [(r.subject, r.task, r.run) for r in find_runs(study)] == sorted(planned_runs(SMALL))
    assert study_subjects(SMALL) == ["01", "02"]
    assert planned_runs({})[:3] == [("01", "images", 1), ("01", "images", 2), ("01", "images", 3)]


def _betas(study: Path, subject: str, task: str, rows: np.ndarray, voxels: pd.DataFrame):
    """Least-squares single-trial betas (% signal) of the given voxels, all runs; and their stimulus ids."""
    ijk = voxels.loc[rows, ["i", "j", "k"]].to_numpy()
    betas, ids = [], []
    for files in find_runs(study, subject=subject, task=task):
        run = load_run(files)
        y = np.asarray(run.bold.dataobj)[ijk[:, 0], ijk[:, 1], ijk[:, 2]].T.astype(float)
        y = y / y.mean(0) * 100 - 100
        motion = run.confounds[["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "csf", "white_matter"]].to_numpy()
        design = np.column_stack([lsa_design(run.events, run.n_volumes, run.tr), motion - motion.mean(0)])
        betas.append(np.linalg.lstsq(design, y, rcond=None)[0][: len(run.events)])
        ids += run.events["stimulus_id"].tolist()
    return np.vstack(betas), ids


def _truth(study: Path, subject: str):
    folder = study / "derivatives/ground_truth" / f"sub-{subject}"
    voxels = pd.read_csv(folder / f"sub-{subject}_voxels.tsv", sep="\t", na_values="n/a")
    return voxels, np.load(folder / f"sub-{subject}_responses.npz")


@pytest.mark.parametrize("modality, task, region", [("image", "images", "early_visual"), ("image", "images", "higher_visual"),
                                                    ("text", "text", "language")])
def test_voxels_prefer_what_the_ground_truth_says(study, modality, task, region):
    """A voxel's estimated response to its preferred stimuli exceeds its response to the others."""
    voxels, resp = _truth(study, "01")
    rows = resp[f"{modality}_voxels"]
    keep = ((voxels.loc[rows, "region"] == region) & voxels.loc[rows, "tuned"]).to_numpy()
    betas, ids = _betas(study, "01", task, rows[keep], voxels)
    col = {s: i for i, s in enumerate(resp[f"{modality}_ids"])}
    truth = resp[modality][keep][:, [col[s] for s in ids]].T  # trials x voxels
    top = truth >= np.median(truth, axis=0)
    preferred = np.where(top, betas, np.nan)
    others = np.where(~top, betas, np.nan)
    wins = np.nanmean(preferred, 0) > np.nanmean(others, 0)
    # at single-trial SNR ~1 with 16-40 trials, nearly every voxel shows its tuning
    assert wins.mean() > (0.9 if modality == "image" else 0.75), wins.mean()
    # and signal dominates where the ground truth says there is none: shuffled truth gives chance
    shuffled = truth[np.random.default_rng(0).permutation(len(truth))] >= np.median(truth, axis=0)
    chance = np.nanmean(np.where(shuffled, betas, np.nan), 0) > np.nanmean(np.where(~shuffled, betas, np.nan), 0)
    assert 0.3 < chance.mean() < 0.7


def test_single_trial_snr_is_near_the_configured_level(study):
    voxels, resp = _truth(study, "01")
    rows = resp["image_voxels"]
    early = ((voxels.loc[rows, "region"] == "early_visual") & voxels.loc[rows, "tuned"]).to_numpy()
    betas, ids = _betas(study, "01", "images", rows[early], voxels)
    col = {s: i for i, s in enumerate(resp["image_ids"])}
    truth = resp["image"][early][:, [col[s] for s in ids]].T
    ratio = np.median(truth.std(0) / (betas - truth).std(0))
    # beta_snr 1 (nuisance regressed by lsa + motion); a canonical-HRF GLM on voxels whose HRFs
    # vary loses part of the signal, so the measured ratio sits somewhat below the configured one
    assert 0.5 < ratio < 1.3, ratio


def test_subjects_differ_in_tuning_but_share_part_of_it(study):
    _, a = _truth(study, "01")
    _, b = _truth(study, "02")
    assert np.array_equal(a["image_voxels"], b["image_voxels"])  # same MNI voxels ...
    r = [np.corrcoef(x, y)[0, 1] for x, y in zip(a["image"], b["image"]) if np.ptp(x) > 1e-3 and np.ptp(y) > 1e-3]
    assert 0.1 < np.median(r) < 0.95  # ... different, related tuning (voxels tuned in both subjects)


def test_ground_truth_regions_match_the_configured_spheres(study):
    voxels, _ = _truth(study, "01")
    from nilearn.datasets import fetch_coords_seitzman_2018

    atlas = fetch_coords_seitzman_2018()
    centres = pd.DataFrame(atlas.rois)[["x", "y", "z"]].to_numpy(float)
    d = np.linalg.norm(voxels[["x", "y", "z"]].to_numpy()[:, None] - centres[voxels["roi"].to_numpy()][:, None], axis=-1)
    assert d.max() <= 8.0 + 1e-6
    net = np.asarray(atlas.networks)[voxels["roi"].to_numpy()]
    assert (net == voxels["network"]).all()
    assert set(voxels.loc[voxels["network"] == "Visual", "region"]) == {"early_visual", "higher_visual"}
    assert voxels.loc[voxels["region"] == "early_visual", "prf_size"].notna().all()
    dseg = nib.load(study / "derivatives/ground_truth" / f"space-{SPACE}_desc-regions_dseg.nii.gz")
    labels = np.asarray(dseg.dataobj)
    assert labels[tuple(voxels[["i", "j", "k"]].to_numpy().T)].min() >= 1
    assert (labels > 0).sum() == len(voxels)


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(CortexflowInputError, match="unknown key.*image_trian"):
        SimulationConfig.from_params({"image_trian": 10})
    with pytest.raises(CortexflowInputError, match="simulate.tr must be > 0"):
        SimulationConfig.from_params({"tr": 0})
    with pytest.raises(CortexflowInputError, match="duration.audio must be > 0 and <= soa.audio"):
        SimulationConfig.from_params({"duration": {"audio": 5.0}})
    cfg = SimulationConfig.from_params({"runs": {"image": 3}})
    assert cfg.runs == {"image": 3, "audio": 4, "text": 4}


def test_cli_simulates_a_text_only_study(tmp_path, capsys):
    out = tmp_path / "bids"
    params = json.dumps({"subjects": 1, "modalities": ["text"], "sentence_train": 4, "sentence_test": 1, "runs": {"text": 1}})
    assert cli_main(["simulate", "--out", str(out), "--params", params, "--seed", "1"]) == 0
    (run,) = find_runs(out)
    assert run.task == "text" and len(load_run(run).events) == 4 + 3 * 1
    assert cli_main(["simulate", "--out", str(out), "--params", '{"subject": 1}']) == 2
    assert "simulate config: unknown keys simulate.subject" in capsys.readouterr().err


def test_every_region_has_its_untuned_share_and_voxels_have_their_own_hrf(study):
    a, resp = _truth(study, "01")
    b, _ = _truth(study, "02")
    for region, group in a.groupby("region"):
        assert (~group["tuned"]).sum() == round(0.4 * len(group)), region  # default untuned_fraction 0.4
    untuned_rows = np.flatnonzero(~a.loc[resp["image_voxels"], "tuned"].to_numpy())
    assert len(untuned_rows) and np.ptp(resp["image"][untuned_rows], axis=1).max() < 1e-4  # no stimulus tells apart
    assert (a.loc[~a["tuned"], "signal_sd_pct"] == 0).all() and (a.loc[a["tuned"], "signal_sd_pct"] > 0).all()
    # HRF shapes vary across voxels and differ between subjects (a subject-wide shift)
    assert a["hrf_peak_shape"].std() > 0.3 and a["hrf_undershoot_shape"].std() > 0.8
    assert abs(a["hrf_peak_shape"].mean() - b["hrf_peak_shape"].mean()) > 0.05


def test_noise_is_unit_variance_smooth_in_space_and_shared():
    from cortexflow.data.simulate import build_grid, run_noise, smooth_fields

    cfg = SimulationConfig()
    grid = build_grid(cfg.voxel_size_mm, cfg.baseline)
    n_brain = int(grid.mask.sum())
    maps = smooth_fields(np.random.default_rng(0).standard_normal((4, *grid.shape)).astype(np.float32), 6.0)[:, grid.mask]
    loadings = (maps / np.sqrt((maps ** 2).sum(0, keepdims=True))).astype(np.float32)

    def neighbour_corr(noise):
        vol = np.zeros((len(noise), *grid.shape), np.float32)
        vol[:, grid.mask] = noise
        both = grid.mask[1:] & grid.mask[:-1]
        x, y = vol[:, 1:][:, both], vol[:, :-1][:, both]
        x, y = (x - x.mean(0)) / x.std(0), (y - y.mean(0)) / y.std(0)
        return float((x * y).mean())

    noise = run_noise(200, loadings, grid, cfg, np.random.default_rng(1))
    assert noise.shape == (200, n_brain) and noise.dtype == np.float32
    assert abs(noise.var(0).mean() - 1) < 0.1  # the noise level stays what noise_pct says
    # smooth field (FWHM 2 voxels: neighbours correlate exp(-1 / 4 sigma^2) = .71) x .5 + shared .15
    assert 0.35 < neighbour_corr(noise) < 0.7
    far = noise[:, ::997]
    off = np.corrcoef(far.T)[np.triu_indices(far.shape[1], 1)]
    assert off.mean() > 0.02  # global components: distant voxels share noise too
    independent = SimulationConfig(noise_smooth_fraction=0.0, noise_shared_fraction=0.0)
    assert abs(neighbour_corr(run_noise(200, loadings, grid, independent, np.random.default_rng(1)))) < 0.03
    lag1 = np.mean(noise[1:] * noise[:-1]) / np.mean(noise ** 2)
    assert abs(lag1 - cfg.ar_rho) < 0.05  # AR(1) in time, as the SNR calibration assumes


def test_voxel_hrfs_reduce_to_the_canonical_one():
    from cortexflow.data.hrf import double_gamma_cumulative, spm_hrf, trial_regressors, varied_trial_signal

    cum = double_gamma_cumulative(0.1, np.array([6.0, 8.0]), np.array([16.0, 16.0]), np.array([1 / 6, 1 / 6]))
    assert np.allclose(cum[0], np.concatenate([[0], np.cumsum(spm_hrf(0.1))]), atol=1e-9)
    assert cum[1].argmax() != cum[0].argmax() or not np.allclose(cum[0], cum[1])
    onsets, durations = np.array([4.0, 20.0, 31.0]), np.array([3.0, 3.0, 2.0])
    amp = np.array([[1.0, -0.5, 2.0], [0.3, 0.3, 0.3]])
    sig = varied_trial_signal(onsets, durations, 40, 2.0, cum[:1].repeat(2, 0), amp)
    assert np.allclose(sig, trial_regressors(onsets, durations, 40, 2.0) @ amp.T, atol=1e-5)
    late = varied_trial_signal(onsets, durations, 40, 2.0, cum[1:], amp[:1])
    assert np.argmax(late[:, 0] > 0.5 * late.max()) > np.argmax(sig[:, 0] > 0.5 * sig[:, 0].max())  # later peak
