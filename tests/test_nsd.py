"""data.source: nsd — the Natural Scenes Dataset read from its own files.

Each test writes a tiny NSD download itself, in NSD's folder and file names and
formats (docs/nsd.md): nsd_expdesign.mat through scipy's savemat (MATLAB v5,
1-based ``masterordering`` into ``subjectim`` columns, ``subjectim`` and
``sharedix`` as 1-based 73k ids, doubles as MATLAB writes them),
betas_sessionNN as int16 percent signal change x 300 (subject 01 as .nii.gz,
subject 02 as MATLAB-order .hdf5), the nsdgeneral ROI (-1 outside cortex, 0
outside the ROI, 1 inside), a streams label file with its .mgz.ctab, the
stimuli as ``imgBrick`` (N x H x W x 3 uint8) and nsd_stim_info_merged.csv.
The sessions are 36 trials instead of 750 (``data.nsd.trials_per_session``),
the grid 6 x 7 x 5, so that a whole study fits in a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.io import savemat

from cortexflow.data import nsd
from cortexflow.errors import CortexflowInputError
from cortexflow.preprocess.dataset import build_dataset, make_dataset_stage

GRID = (6, 7, 5)
AFFINE = np.array([[1.8, 0, 0, -4.5], [0, 1.8, 0, -6.3], [0, 0, 1.8, -3.6], [0, 0, 0, 1]])
TRIALS = 36  # per session (NSD: 750)
SESSIONS = 2
SHARED = 6  # 73k ids 1..6 are the "shared" images
PER_SUBJECT = 24  # 10k images per subject (NSD: 10,000): the shared ones and 18 of its own
N_IMAGES = SHARED + 2 * (PER_SUBJECT - SHARED) + 6  # the brick also holds images nobody saw
IMAGE_PX = 48
DROPPED = (2, 4, 2)  # a voxel of subject 02 that session 2 did not cover (zeros)
FORMATS = {"01": "nifti", "02": "hdf5"}


def roi_labels() -> np.ndarray:
    labels = np.zeros(GRID, dtype=np.int16)
    labels[[0, -1]] = -1  # outside the cortex
    labels[1:5, 2:6, 1:4] = 1  # 4 x 4 x 3 = 48 voxels
    return labels


def write_betas(path: Path, raw: np.ndarray, fmt: str) -> None:
    """One session's int16 betas (X x Y x Z x trials) as NSD writes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "nifti":
        img = nib.Nifti1Image(raw.astype(np.int16), AFFINE)
        img.header.set_data_dtype(np.int16)
        nib.save(img, path)
    else:  # MATLAB's X x Y x Z x 750, column-major: h5py sees 750 x Z x Y x X; NSD's chunks are one voxel's trials
        with h5py.File(path, "w") as f:
            f.create_dataset("betas", data=raw.astype(np.int16).transpose(3, 2, 1, 0), chunks=(raw.shape[3], 1, 1, 1))


def write_nsd(root: Path, seed: int = 0) -> dict:
    """A tiny NSD download in NSD's layout; returns what the tests check against."""
    rng = np.random.default_rng(seed)
    own = [np.arange(SHARED + 1 + s * (PER_SUBJECT - SHARED), SHARED + 1 + (s + 1) * (PER_SUBJECT - SHARED))
           for s in range(2)]
    # each subject's 10k list in its own order, the shared images at different columns
    subjectim = np.stack([rng.permutation(np.r_[np.arange(1, SHARED + 1), own[s]]) for s in range(2)])
    masterordering = rng.permutation(np.repeat(np.arange(1, PER_SUBJECT + 1), 3))  # every image 3 times
    assert masterordering.size == SESSIONS * TRIALS
    sharedix = np.arange(1, SHARED + 1)
    design = root / "nsddata/experiments/nsd"
    design.mkdir(parents=True)
    savemat(design / "nsd_expdesign.mat", {"masterordering": masterordering[None].astype(float),
                                           "subjectim": subjectim.astype(float),
                                           "sharedix": sharedix[None].astype(float)})
    pd.DataFrame({"cocoId": 1000 + np.arange(N_IMAGES), "nsdId": np.arange(N_IMAGES),
                  "shared1000": np.arange(N_IMAGES) < SHARED}).to_csv(design / "nsd_stim_info_merged.csv")
    images = rng.integers(0, 256, (N_IMAGES, IMAGE_PX, IMAGE_PX, 3), dtype=np.uint8)
    stimuli = root / "nsddata_stimuli/stimuli/nsd"
    stimuli.mkdir(parents=True)
    with h5py.File(stimuli / "nsd_stimuli.hdf5", "w") as f:
        f.create_dataset("imgBrick", data=images, chunks=(1, IMAGE_PX, IMAGE_PX, 3))
    labels = roi_labels()
    streams = np.where(labels == 1, np.where(np.arange(GRID[1])[None, :, None] < 4, 1, 2), 0).astype(np.int16)
    raw = {}
    for s, subject in enumerate(("01", "02")):
        roi = root / f"nsddata/ppdata/subj{subject}/func1pt8mm/roi"
        roi.mkdir(parents=True)
        nib.save(nib.Nifti1Image(labels, AFFINE), roi / "nsdgeneral.nii.gz")
        nib.save(nib.Nifti1Image(streams, AFFINE), roi / "streams.nii.gz")
        ctab = root / f"nsddata/freesurfer/subj{subject}/label"
        ctab.mkdir(parents=True)
        (ctab / "streams.mgz.ctab").write_text("0 Unknown\n1 early\n2 ventral\n")
        # a response to the image's mean intensity per voxel, plus noise, in percent signal change
        weights = rng.normal(0, 1, GRID)
        for session in range(1, SESSIONS + 1):
            shown = subjectim[s, masterordering[(session - 1) * TRIALS:session * TRIALS] - 1] - 1
            brightness = images[shown].mean(axis=(1, 2, 3)) / 255.0 - 0.5
            psc = weights[..., None] * brightness * 4 + rng.normal(0, 0.5, GRID + (TRIALS,))
            data = np.round(psc * 300).astype(np.int16)
            data[labels == -1] = 0  # NSD's liberal brain mask zeroes what lies outside
            if subject == "02" and session == 2:
                data[DROPPED] = 0
            raw[(subject, session)] = data
            folder = root / f"nsddata_betas/ppdata/subj{subject}/func1pt8mm/betas_fithrf_GLMdenoise_RR"
            suffix = ".nii.gz" if FORMATS[subject] == "nifti" else ".hdf5"
            write_betas(folder / f"betas_session{session:02d}{suffix}", data, FORMATS[subject])
    return {"subjectim": subjectim, "masterordering": masterordering, "sharedix": sharedix, "raw": raw,
            "images": images}


@pytest.fixture(scope="module")
def download(tmp_path_factory):
    root = tmp_path_factory.mktemp("nsd")
    return root, write_nsd(root)


def params(root: Path, **extra) -> dict:
    return {"nsd": {"root": str(root), "trials_per_session": TRIALS, **extra}}


def run_betas(root: Path, subject: str, out: Path, **extra) -> dict[str, Path]:
    plan = nsd.workflow_inputs({"nsd": params(root, **extra)["nsd"], "modalities": ["image"]}, [subject])
    files = plan["per_subject"][subject]
    paths = {k: out / f"sub-{subject}_{k}" for k in ("betas.npy", "trials.parquet", "voxels.parquet")}
    nsd.nsd_betas_stage(subject=subject, expdesign=plan["expdesign"], betas=files["betas"], roi=files["roi"],
                        regions=files["regions"], region_tables=files["region_tables"],
                        out_betas=str(paths["betas.npy"]), out_trials=str(paths["trials.parquet"]),
                        out_voxels=str(paths["voxels.parquet"]), params=params(root, **extra))
    return paths


@pytest.fixture(scope="module")
def subject01(download, tmp_path_factory):
    root, truth = download
    return run_betas(root, "01", tmp_path_factory.mktemp("sub01"), regions=["streams"])


# ------------------------------------------------------------------ the reader


def test_a_beta_lands_at_its_trial_with_nsd_scaling(download, subject01):
    root, truth = download
    betas = np.load(subject01["betas.npy"])
    trials = pd.read_parquet(subject01["trials.parquet"])
    voxels = pd.read_parquet(subject01["voxels.parquet"])
    assert betas.shape == (SESSIONS * TRIALS, 48) and len(trials) == SESSIONS * TRIALS and len(voxels) == 48
    # trial 5 of session 2 (row 36 + 4) at the voxel (3, 4, 2)
    row = TRIALS + 4
    col = int(np.flatnonzero((voxels[["i", "j", "k"]].to_numpy() == (3, 4, 2)).all(axis=1))[0])
    assert betas[row, col] == pytest.approx(truth["raw"][("01", 2)][3, 4, 2, 4] / 300.0, abs=1e-6)
    # ... and shows 73k image subjectim[s, masterordering[t] - 1] (both 1-based), named by its 0-based nsdId
    id73k = truth["subjectim"][0, truth["masterordering"][row] - 1]
    assert trials.loc[row, "stimulus_id"] == f"nsd-{id73k - 1:05d}" and trials.loc[row, "nsd_id"] == id73k - 1
    assert trials.loc[row, "session"] == "02" and bool(trials.loc[row, "shared"]) == (id73k <= SHARED)
    # the whole matrix: every trial at every ROI voxel
    ijk = tuple(voxels[["i", "j", "k"]].to_numpy().T)
    expected = np.concatenate([truth["raw"][("01", s)][ijk].T for s in (1, 2)]) / 300.0
    np.testing.assert_allclose(betas, expected, atol=1e-6)
    # a session's 12 runs: NSD's 750 trials are 63 in odd and 62 in even runs; 36 are 3 in each
    assert nsd.run_sizes(750) == [63, 62] * 6 and nsd.run_sizes(TRIALS) == [3] * 12
    assert trials["run"].nunique() == 24 and trials.groupby("run").size().eq(3).all()


def test_regions_are_named_by_the_colour_table_in_contiguous_blocks(subject01):
    voxels = pd.read_parquet(subject01["voxels.parquet"])
    assert list(pd.unique(voxels["region"])) == ["early", "ventral"]
    assert (voxels.loc[voxels["region"] == "early", "j"] < 4).all()
    assert set(voxels["network"]) == {"nsdgeneral"}
    # world coordinates from the ROI's affine
    np.testing.assert_allclose(voxels[["x", "y", "z"]].to_numpy(),
                               voxels[["i", "j", "k"]].to_numpy() * 1.8 + AFFINE[:3, 3], atol=1e-5)


def test_hdf5_and_nifti_betas_read_the_same(tmp_path):
    """The .hdf5 holds MATLAB's X x Y x Z x trials column-major (h5py: trials x Z x Y x X); a wrong axis
    order would scramble voxels on this non-cubic grid."""
    raw = np.random.default_rng(1).integers(-3000, 3000, GRID + (TRIALS,)).astype(np.int16)
    roi = tmp_path / "nsdgeneral.nii.gz"
    nib.save(nib.Nifti1Image(roi_labels(), AFFINE), roi)
    voxels = nsd.roi_voxels(roi)
    write_betas(tmp_path / "betas_session01.nii.gz", raw, "nifti")
    write_betas(tmp_path / "betas_session01.hdf5", raw, "hdf5")
    a = nsd.read_session_betas(tmp_path / "betas_session01.nii.gz", voxels, TRIALS, block=7)
    b = nsd.read_session_betas(tmp_path / "betas_session01.hdf5", voxels, TRIALS)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, raw[tuple(voxels.ijk.T)].T / 300.0, atol=1e-6)


def test_voxels_a_session_did_not_cover_are_left_out(download, tmp_path):
    root, truth = download
    paths = run_betas(root, "02", tmp_path)  # subject 02's betas are .hdf5
    voxels = pd.read_parquet(paths["voxels.parquet"])
    betas = np.load(paths["betas.npy"])
    assert betas.shape == (SESSIONS * TRIALS, 47)
    assert not ((voxels[["i", "j", "k"]].to_numpy() == DROPPED).all(axis=1)).any()
    assert np.all(np.any(betas != 0, axis=0))


# ------------------------------------------------------------------ stimuli and the dataset


@pytest.fixture(scope="module")
def study(download, subject01, tmp_path_factory):
    """nsd_stimuli (24 px) and make_dataset on subject 01."""
    root, truth = download
    out = tmp_path_factory.mktemp("study")
    plan = nsd.workflow_inputs({"nsd": params(root)["nsd"], "modalities": ["image"]}, ["01"])
    table = out / "stimuli" / "stimuli.tsv"
    nsd.nsd_stimuli_stage(trials=[str(subject01["trials.parquet"])], expdesign=plan["expdesign"],
                          stimuli=plan["stimuli"], stim_info=plan["stim_info"], out=str(table),
                          params=params(root, image_size=24))
    make_dataset_stage(roi_betas=str(subject01["betas.npy"]), trials=str(subject01["trials.parquet"]),
                       voxels=str(subject01["voxels.parquet"]), stimuli=str(table), out_dir=str(out / "dataset"),
                       params={"val_fraction": 0.2})
    return out, table


def test_stimuli_are_the_images_shown_resized_by_area_with_shared_as_test(download, study):
    root, truth = download
    out, table_path = study
    table = pd.read_csv(table_path, sep="\t")
    shown = np.unique(truth["subjectim"][0, truth["masterordering"] - 1]) - 1
    assert list(table["nsd_id"]) == sorted(shown.tolist())
    assert set(table.loc[table["split"] == "test", "nsd_id"]) == set(range(SHARED))
    assert (table["coco_id"] == 1000 + table["nsd_id"]).all()
    from PIL import Image

    for _, row in table.head(3).iterrows():
        with Image.open(table_path.parent / row["path"]) as img:
            got = np.asarray(img.convert("RGB")).astype(float)
        # 48 -> 24 px: each pixel the mean of a 2 x 2 block (area averaging), up to rounding
        blocks = truth["images"][row["nsd_id"]].astype(float).reshape(24, 2, 24, 2, 3).mean(axis=(1, 3))
        assert np.abs(got - blocks).max() <= 1.0


def test_dataset_tests_the_shared_images_averaged_and_zscored_with_training_statistics(download, subject01, study):
    out, table_path = study
    folder = out / "dataset"
    X_test, X_train = np.load(folder / "X_test.npy"), np.load(folder / "X_train.npy")
    test, train = pd.read_parquet(folder / "test.parquet"), pd.read_parquet(folder / "train.parquet")
    summary = json.loads((folder / "dataset.json").read_text())
    assert set(test["stimulus_id"]) == {f"nsd-{i:05d}" for i in range(SHARED)}
    assert (test["n_repeats"] == 3).all() and summary["zscore"] == "session"
    assert not set(train["stimulus_id"]) & set(test["stimulus_id"])
    assert len(train) == SESSIONS * TRIALS - 3 * SHARED
    # by hand: per session, the mean and sd of its train-fold trials only; test repeats averaged
    betas = np.load(subject01["betas.npy"]).astype(np.float64)
    trials = pd.read_parquet(subject01["trials.parquet"])
    fold = trials["stimulus_id"].map(dict(zip(train["stimulus_id"], train["fold"]))).fillna("test").to_numpy()
    z = np.empty_like(betas)
    for session in trials["session"].unique():
        rows = (trials["session"] == session).to_numpy()
        fit = betas[rows & (fold == "train")]
        z[rows] = (betas[rows] - fit.mean(0)) / fit.std(0, ddof=1)
    for n, stimulus in enumerate(test["stimulus_id"]):
        np.testing.assert_allclose(X_test[n], z[(trials["stimulus_id"] == stimulus).to_numpy()].mean(0), atol=1e-5)
    np.testing.assert_allclose(X_train, z[fold != "test"], atol=1e-5)


def test_training_repeats_are_kept_or_averaged(subject01, study):
    out, table_path = study
    betas = np.load(subject01["betas.npy"])
    trials = pd.read_parquet(subject01["trials.parquet"])
    voxels = pd.read_parquet(subject01["voxels.parquet"])
    stimuli = pd.read_csv(table_path, sep="\t", dtype={"stimulus_id": str})
    kept = build_dataset(betas, trials, voxels, stimuli, {"val_fraction": 0.2})
    averaged = build_dataset(betas, trials, voxels, stimuli, {"val_fraction": 0.2, "train_repeats": "average"})
    assert len(averaged.train) == PER_SUBJECT - SHARED and (averaged.train["n_repeats"] == 3).all()
    for n, stimulus in enumerate(averaged.train["stimulus_id"]):
        rows = (kept.train["stimulus_id"] == stimulus).to_numpy()
        np.testing.assert_allclose(averaged.X_train[n], kept.X_train[rows].mean(0), atol=1e-5)
        assert averaged.train.loc[n, "fold"] == kept.train.loc[rows, "fold"].iloc[0]
    np.testing.assert_array_equal(averaged.X_test, kept.X_test)


# ------------------------------------------------------------------ bad input


def test_fewer_sessions_than_asked_names_the_folder_and_the_fix(download):
    root, _ = download
    with pytest.raises(CortexflowInputError) as e:
        nsd.workflow_inputs({"nsd": params(root, sessions=3)["nsd"], "modalities": ["image"]}, ["01"])
    message = str(e.value)
    assert "session(s) 3" in message and "betas_fithrf_GLMdenoise_RR" in message and "data.nsd.sessions" in message


def test_betas_off_the_roi_grid_are_refused_naming_the_file(download, tmp_path):
    root, _ = download
    bad = tmp_path / "betas_session01.nii.gz"
    write_betas(bad, np.zeros((6, 7, 4, TRIALS), dtype=np.int16), "nifti")
    plan = nsd.workflow_inputs({"nsd": params(root)["nsd"], "modalities": ["image"]}, ["01"])
    with pytest.raises(CortexflowInputError) as e:
        nsd.nsd_betas_stage(subject="01", expdesign=plan["expdesign"], betas=[str(bad)],
                            roi=plan["per_subject"]["01"]["roi"], out_betas=str(tmp_path / "b.npy"),
                            out_trials=str(tmp_path / "t.parquet"), out_voxels=str(tmp_path / "v.parquet"),
                            params=params(root))
    assert str(bad) in str(e.value) and "grid (6, 7, 4)" in str(e.value) and "resolution" in str(e.value)
    assert not (tmp_path / "b.npy").exists()


def test_missing_files_and_a_short_session_are_named(download, tmp_path):
    root, _ = download
    with pytest.raises(CortexflowInputError, match="data.nsd.root"):
        nsd.workflow_inputs({"nsd": {"root": None}, "modalities": ["image"]})
    with pytest.raises(CortexflowInputError, match="NSD holds images only"):
        nsd.workflow_inputs({"nsd": params(root)["nsd"], "modalities": ["image", "audio"]})
    with pytest.raises(CortexflowInputError, match="nsd_expdesign.mat"):
        nsd.read_expdesign(tmp_path / "nsd_expdesign.mat")
    short = tmp_path / "betas_session01.hdf5"
    write_betas(short, np.zeros(GRID + (TRIALS - 1,), dtype=np.int16), "hdf5")
    voxels = nsd.roi_voxels(root / "nsddata/ppdata/subj01/func1pt8mm/roi/nsdgeneral.nii.gz")
    with pytest.raises(CortexflowInputError, match=f"holds {TRIALS - 1} trials"):
        nsd.read_session_betas(short, voxels, TRIALS)


# ------------------------------------------------------------------ the workflow


@pytest.mark.slow
def test_tiny_workflow_runs_end_to_end_from_an_nsd_download(tmp_path):
    """data.source: nsd with the tiny config's model sizes: NSD's files -> summary.parquet, with no
    simulate_study, glm_betas or extract_rois job; a second run finds nothing to do."""
    from test_workflow_dag import TINY, copy_repo, overlay, scheduled, snakemake

    root = tmp_path / "nsd"
    root.mkdir()
    write_nsd(root)
    repo = copy_repo(tmp_path / "repo")
    config = overlay(repo, "nsd.yaml", {
        "study": "tinynsd",
        "data": {"source": "nsd", "modalities": ["image"],
                 "nsd": {"root": str(root), "trials_per_session": TRIALS, "image_size": 32, "regions": ["streams"]}},
        "decoder": {"image": {"seeds": 1}},
    })
    proc = snakemake(repo, "--cores", "2", "--configfile", TINY, config, "--workflow-profile",
                     "workflow/profiles/default", timeout=1200, check=False)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    jobs = scheduled(proc.stdout + proc.stderr)
    assert jobs["nsd_betas"] == 2 and jobs["nsd_stimuli"] == 1 and jobs["make_dataset"] == 2
    assert not {"simulate_study", "glm_betas", "extract_rois"} & set(jobs)
    results = repo / "results/tinynsd"
    summary = pd.read_parquet(results / "summary.parquet")
    assert set(summary["subject"]) == {"01", "02"} and set(summary["modality"]) == {"image"}
    assert {"dit", "ridge", "chance"} <= set(summary["method"])
    for subject in ("01", "02"):
        test = pd.read_parquet(results / f"dataset/sub-{subject}/image/test.parquet")
        assert set(test["stimulus_id"]) == {f"nsd-{i:05d}" for i in range(SHARED)}
    # the nsdgeneral voxels in streams' two regions; subject 02 without the voxel session 2 missed
    assert len(pd.read_parquet(results / "dataset/sub-02/image/voxels.parquet")) == 47
    again = snakemake(repo, "-n", "--configfile", TINY, config, timeout=300)
    assert "Nothing to be done" in again.stdout + again.stderr
