"""glm_betas -> extract_rois -> make_dataset on a tiny simulated study, checked against its ground truth."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cortexflow.data.simulate import simulate_study
from cortexflow.errors import CortexflowInputError
from cortexflow.preprocess.dataset import make_dataset_stage
from cortexflow.preprocess.glm import glm_betas_stage
from cortexflow.preprocess.rois import extract_rois_stage

SPACE = "MNI152NLin2009cAsym"
# single-trial SNR 1 (the default study's is 0.5) so per-voxel checks on 84 trials have power
SIM = {"subjects": 1, "modalities": ["image"], "image_train": 60, "image_test": 8, "runs": {"image": 2}, "image_size": 16,
       "beta_snr": 1.0}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    base = tmp_path_factory.mktemp("study")
    bids = simulate_study(base / "bids", SIM, seed=0)
    func, raw, out = bids / "derivatives" / "fmriprep" / "sub-01" / "func", bids / "sub-01" / "func", base / "results"
    betas, trials = [], []
    for run in ("01", "02"):
        stem = f"sub-01_task-images_run-{run}"
        betas.append(str(out / "betas" / f"{stem}_betas.nii.gz"))
        trials.append(str(out / "betas" / f"{stem}_trials.parquet"))
        glm_betas_stage(bold=str(func / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz"),
                        events=str(raw / f"{stem}_events.tsv"),
                        confounds=str(func / f"{stem}_desc-confounds_timeseries.tsv"),
                        mask=str(func / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz"),
                        sidecar=str(func / f"{stem}_space-{SPACE}_desc-preproc_bold.json"),
                        out_betas=betas[-1], out_trials=trials[-1], params={})
    rois = {k: str(out / "rois" / f"sub-01_task-images_{k}") for k in ("roi-betas.npy", "trials.parquet", "voxels.parquet")}
    extract_rois_stage(betas=betas[::-1], trials=trials[::-1], out_betas=rois["roi-betas.npy"],
                       out_trials=rois["trials.parquet"], out_voxels=rois["voxels.parquet"], params={})
    dataset = out / "dataset" / "sub-01" / "image"
    make_dataset_stage(roi_betas=rois["roi-betas.npy"], trials=rois["trials.parquet"], voxels=rois["voxels.parquet"],
                       stimuli=str(bids / "stimuli" / "stimuli.tsv"), out_dir=str(dataset), params={}, seed=0)
    truth = bids / "derivatives" / "ground_truth" / "sub-01"
    return {"bids": bids, "betas": betas, "trials": trials, "rois": rois, "dataset": dataset,
            "truth_voxels": pd.read_csv(truth / "sub-01_voxels.tsv", sep="\t"),
            "responses": dict(np.load(truth / "sub-01_responses.npz"))}


def test_betas_volumes_follow_the_trials_and_the_mask(pipeline):
    img = nib.load(pipeline["betas"][0])
    table = pd.read_parquet(pipeline["trials"][0])
    events = pd.read_csv(pipeline["bids"] / "sub-01" / "func" / "sub-01_task-images_run-01_events.tsv", sep="\t")
    assert img.shape[3] == len(table) == len(events)
    assert list(table.columns[:6]) == ["trial", "onset", "duration", "stimulus_id", "modality", "run"]
    assert (table["run"] == 1).all() and np.all(np.diff(table["onset"]) > 0)
    mask = nib.load(next((pipeline["bids"] / "derivatives" / "fmriprep" / "sub-01" / "func").glob("*run-01*brain_mask*")))
    data = np.asanyarray(img.dataobj)
    inside = np.asanyarray(mask.dataobj) > 0
    assert np.all(data[~inside] == 0) and np.all(np.any(data[inside] != 0, axis=-1))


def test_stage_errors_name_the_file(pipeline, tmp_path):
    func = pipeline["bids"] / "derivatives" / "fmriprep" / "sub-01" / "func"
    stem = "sub-01_task-images_run-01"
    confounds = func / f"{stem}_desc-confounds_timeseries.tsv"
    with pytest.raises(CortexflowInputError, match="desc-confounds_timeseries.tsv.*'dvars'.*available") as err:
        glm_betas_stage(bold=str(func / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz"),
                        events=str(pipeline["bids"] / "sub-01" / "func" / f"{stem}_events.tsv"),
                        confounds=str(confounds), mask=str(func / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz"),
                        out_betas=str(tmp_path / "b.nii.gz"), out_trials=str(tmp_path / "t.parquet"),
                        params={"confounds": ["trans_x", "dvars"]})
    assert "framewise_displacement" in str(err.value)  # lists what is there
    assert not (tmp_path / "b.nii.gz").exists()


def test_roi_voxels_are_the_simulated_visual_regions(pipeline):
    voxels = pd.read_parquet(pipeline["rois"]["voxels.parquet"])
    truth = pipeline["truth_voxels"]
    simulated = truth[truth["region"].isin(["early_visual", "higher_visual"])]
    ours = set(map(tuple, voxels[["i", "j", "k"]].to_numpy()))
    theirs = set(map(tuple, simulated[["i", "j", "k"]].to_numpy()))
    assert len(ours & theirs) / len(ours | theirs) > 0.95  # same spheres; only nearest-centre ties may differ
    assert set(voxels["network"]) == {"Visual"}


def test_tuned_voxels_respond_most_to_their_preferred_stimulus(pipeline):
    """On the betas of each simulated image voxel: its preferred stimulus (largest true
    amplitude) gets a higher beta than the average of the other stimuli, and betas
    follow the true amplitudes across stimuli."""
    betas = np.load(pipeline["rois"]["roi-betas.npy"])
    trials = pd.read_parquet(pipeline["rois"]["trials.parquet"])
    voxels = pd.read_parquet(pipeline["rois"]["voxels.parquet"])
    resp = pipeline["responses"]
    truth_rows = pipeline["truth_voxels"].loc[resp["image_voxels"], ["i", "j", "k"]]
    tuned = pipeline["truth_voxels"].loc[resp["image_voxels"], "tuned"].to_numpy()  # untuned voxels prefer nothing
    column_of = {tuple(ijk): c for c, ijk in enumerate(voxels[["i", "j", "k"]].to_numpy())}
    pairs = [(r, column_of[tuple(ijk)]) for r, ijk in enumerate(truth_rows.to_numpy())
             if tuple(ijk) in column_of and tuned[r]]
    assert len(pairs) > 300
    rows, cols = map(np.array, zip(*pairs))
    # mean beta of each stimulus (test stimuli are shown 3 times), in the ground truth's stimulus order
    shown = list(pd.unique(trials["stimulus_id"]))
    per_stim = pd.DataFrame(betas[:, cols]).groupby(trials["stimulus_id"].to_numpy()).mean().loc[shown].to_numpy()
    ids = list(resp["image_ids"])
    amp = resp["image"][rows][:, [ids.index(s) for s in shown]].T  # stimuli x voxels, noise-free
    preferred = amp.argmax(axis=0)
    v = np.arange(len(cols))
    others = (per_stim.sum(axis=0) - per_stim[preferred, v]) / (len(shown) - 1)
    assert np.mean(per_stim[preferred, v] > others) > 0.85
    corr = [np.corrcoef(per_stim[:, j], amp[:, j])[0, 1] for j in v]
    assert np.median(corr) > 0.5
    shuffled = [np.corrcoef(per_stim[:, j], np.random.default_rng(j).permutation(amp[:, j]))[0, 1] for j in v]
    assert abs(np.median(shuffled)) < 0.1


def test_dataset_split_holds_no_training_stimulus_in_test(pipeline):
    stimuli = pd.read_csv(pipeline["bids"] / "stimuli" / "stimuli.tsv", sep="\t")
    images = stimuli[stimuli["modality"] == "image"]
    train = pd.read_parquet(pipeline["dataset"] / "train.parquet")
    test = pd.read_parquet(pipeline["dataset"] / "test.parquet")
    assert set(test["stimulus_id"]) == set(images.loc[images["split"] == "test", "stimulus_id"])
    assert set(train["stimulus_id"]) == set(images.loc[images["split"] == "train", "stimulus_id"])
    assert not set(train["stimulus_id"]) & set(test["stimulus_id"])
    assert (test["n_repeats"] == 3).all()
    X_train, X_test = np.load(pipeline["dataset"] / "X_train.npy"), np.load(pipeline["dataset"] / "X_test.npy")
    assert X_train.shape == (len(train), len(pd.read_parquet(pipeline["rois"]["voxels.parquet"])))
    assert X_test.shape[0] == len(test) and np.isfinite(X_train).all() and np.isfinite(X_test).all()
    summary = json.loads((pipeline["dataset"] / "dataset.json").read_text())
    assert summary["train_test_overlap"] == 0 and summary["split_source"] == "stimuli.tsv split column"
    # simulated single-trial SNR ~1, three repeats: NSD's ceiling would be ~75 %
    voxels = pd.read_parquet(pipeline["dataset"] / "voxels.parquet")
    assert 25 < voxels["noise_ceiling"].median() < 95


def _images(bids, ids):
    from PIL import Image

    return np.stack([np.asarray(Image.open(bids / "stimuli" / "images" / f"{s}.png"), np.float32) / 255 for s in ids])


def test_noise_free_responses_are_the_ground_truth_of_the_datasets_voxels(pipeline):
    from cortexflow.evaluation.noise_free_linear import noise_free_responses
    from cortexflow.preprocess.dataset import load_dataset

    data = load_dataset(pipeline["dataset"])
    ids, clean = noise_free_responses(pipeline["bids"] / "derivatives/ground_truth/sub-01", "image", data.voxels)
    truth, amp = pipeline["truth_voxels"], pipeline["responses"]
    tuned = truth.iloc[amp["image_voxels"]].reset_index(drop=True)
    # one voxel picked by its grid position carries exactly its row of the ground truth
    row = data.voxels.merge(tuned.reset_index(), on=["i", "j", "k"], suffixes=("", "_truth")).iloc[0]
    column = data.voxels.index[(data.voxels[["i", "j", "k"]] == row[["i", "j", "k"]].to_numpy()).all(axis=1)][0]
    np.testing.assert_array_equal(clean[:, column], amp["image"][int(row["index"])])
    assert list(ids) == list(amp["image_ids"])
    # and the columns line up with the measured test betas: noise-free and measured responses agree per voxel
    rows = [list(ids).index(s) for s in data.test["stimulus_id"]]
    tuned_cols = clean.std(axis=0) > 0
    assert tuned_cols.sum() > 50
    measured, expected = data.X_test[:, tuned_cols], clean[rows][:, tuned_cols]
    r = [np.corrcoef(measured[:, v], expected[:, v])[0, 1] for v in range(measured.shape[1])]
    assert np.nanmedian(r) > 0.3


def test_noise_free_linear_decoder_beats_the_same_ridge_on_noisy_betas(pipeline):
    from cortexflow.evaluation.noise_free_linear import predict_without_noise
    from cortexflow.models.ridge import RidgeDecoder
    from cortexflow.preprocess.dataset import load_dataset

    data = load_dataset(pipeline["dataset"])
    trial_ids = data.train["stimulus_id"].to_numpy(str)
    train_ids, test_ids = np.unique(trial_ids), data.test["stimulus_id"].to_numpy(str)
    baseline = RidgeDecoder(n_folds=4).fit(data.X_train, _images(pipeline["bids"], trial_ids), groups=trial_ids)
    train_images = _images(pipeline["bids"], train_ids)
    clean = predict_without_noise(pipeline["bids"] / "derivatives/ground_truth/sub-01", "image", data.voxels, train_ids,
                                  train_images, test_ids, baseline)
    noisy = baseline.predict(data.X_test)
    # scored on what the image adds to the mean training image (the mean alone has pixel correlation ~.3 here)
    mean = train_images.mean(axis=0).ravel()
    truth = _images(pipeline["bids"], test_ids).reshape(len(test_ids), -1) - mean

    def scores(pred):
        r = np.corrcoef(pred.reshape(len(pred), -1) - mean, truth)[: len(pred), len(pred):]
        two_way = np.mean([(r[i, i] > np.delete(r[i], i)).mean() for i in range(len(r))])
        return np.diag(r).mean(), two_way

    (r_clean, id_clean), (r_noisy, id_noisy) = scores(clean), scores(noisy)
    # measured on this study (seed 0): r .42 vs .35, two-way id .95 vs .88
    assert r_clean > r_noisy + 0.03 and id_clean >= id_noisy and id_clean > 0.8


def test_noise_free_linear_refuses_a_ground_truth_on_another_grid(pipeline, tmp_path):
    from cortexflow.evaluation.noise_free_linear import noise_free_responses
    from cortexflow.preprocess.dataset import load_dataset

    voxels = load_dataset(pipeline["dataset"]).voxels.copy()
    truth = pipeline["bids"] / "derivatives/ground_truth/sub-01"
    shifted = voxels.assign(x=voxels["x"] + 4.0)
    with pytest.raises(CortexflowInputError, match="sub-01_voxels.tsv: .*4.0 mm apart"):
        noise_free_responses(truth, "image", shifted)
    with pytest.raises(CortexflowInputError, match="ground-truth folder not found"):
        noise_free_responses(tmp_path / "nothing", "image", voxels)
    with pytest.raises(CortexflowInputError, match="no noise-free responses for modality 'audio'"):
        noise_free_responses(truth, "audio", voxels)
