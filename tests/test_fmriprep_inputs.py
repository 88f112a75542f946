"""Inputs as fMRIPrep and GLMsingle write them: load_confounds strategies, GLMsingle betas in place of the GLM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cortexflow.data.simulate import simulate_study
from cortexflow.errors import CortexflowInputError
from cortexflow.preprocess.glm import glm_betas_stage

SPACE = "MNI152NLin2009cAsym"
SIM = {"subjects": 1, "modalities": ["image"], "image_train": 24, "image_test": 4, "runs": {"image": 2}, "image_size": 16}
MOTION_WM_CSF = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "white_matter", "csf"]


def _files(bids, run: str) -> dict[str, str]:
    stem = f"sub-01_task-images_run-{run}"
    func, raw = bids / "derivatives" / "fmriprep" / "sub-01" / "func", bids / "sub-01" / "func"
    return {"bold": str(func / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz"), "events": str(raw / f"{stem}_events.tsv"),
            "confounds": str(func / f"{stem}_desc-confounds_timeseries.tsv"),
            "mask": str(func / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz"),
            "stimuli": str(bids / "stimuli" / "stimuli.tsv")}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    base = tmp_path_factory.mktemp("fmriprep_inputs")
    bids = simulate_study(base / "bids", SIM, seed=1)
    out = {}
    for run in ("01", "02"):
        paths = {"out_betas": str(base / f"run-{run}_betas.nii.gz"), "out_trials": str(base / f"run-{run}_trials.parquet")}
        glm_betas_stage(**_files(bids, run), **paths, params={"confounds": MOTION_WM_CSF})
        out[run] = paths
    return {"bids": bids, "betas": out}


def _run(study, tmp_path, run: str = "01", **kwargs) -> tuple[np.ndarray, pd.DataFrame]:
    paths = {"out_betas": str(tmp_path / "b.nii.gz"), "out_trials": str(tmp_path / "t.parquet")}
    glm_betas_stage(**_files(study["bids"], run), **paths, **kwargs)
    return np.asanyarray(nib.load(paths["out_betas"]).dataobj), pd.read_parquet(paths["out_trials"])


def _good(study, run: str) -> tuple[np.ndarray, pd.DataFrame]:
    paths = study["betas"][run]
    return np.asanyarray(nib.load(paths["out_betas"]).dataobj), pd.read_parquet(paths["out_trials"])


def test_load_confounds_strategy_gives_the_betas_of_the_same_columns(study, tmp_path):
    """[motion (basic), wm_csf] selects the 6 motion and 2 tissue columns; load_confounds
    demeans them, which the design's constant column absorbs: same betas."""
    betas, trials = _run(study, tmp_path, params={"confounds_strategy": ["motion", "wm_csf"],
                                                  "confounds_options": {"motion": "basic"}})
    good, good_trials = _good(study, "01")
    np.testing.assert_allclose(betas, good, rtol=1e-4, atol=1e-4 * np.abs(good).max())
    pd.testing.assert_frame_equal(trials, good_trials)
    # with the full motion set (derivatives too) the betas change: the option is passed on
    full, _ = _run(study, tmp_path, params={"confounds_strategy": ["motion", "wm_csf"], "confounds_options": {"motion": "derivatives"}})
    assert not np.allclose(full, good, atol=1e-4 * np.abs(good).max())


def test_scrubbed_volumes_become_spike_regressors(study, tmp_path):
    """A spike regressor per scrubbed volume is least-squares censoring: the trial betas equal
    those of the design with those volumes' rows removed."""
    from cortexflow.data.bids import load_run, find_runs
    from cortexflow.preprocess.glm import GLMConfig, build_design, strategy_confounds

    bids = tmp_path / "bids"
    shutil.copytree(study["bids"], bids)
    files = _files(bids, "01")
    conf = pd.read_csv(files["confounds"], sep="\t", na_values="n/a")
    conf["std_dvars"] = np.r_[np.nan, np.ones(len(conf) - 1)]
    conf["framewise_displacement"] = np.r_[np.nan, np.full(len(conf) - 1, 0.1)]
    conf.loc[[10, 30], "framewise_displacement"] = 2.0  # two volumes with large motion
    conf.to_csv(files["confounds"], sep="\t", index=False, na_rep="n/a")
    params = {"confounds_strategy": ["motion", "scrub"],
              "confounds_options": {"motion": "basic", "scrub": 0, "fd_threshold": 0.5, "std_dvars_threshold": 3}}
    paths = {"out_betas": str(tmp_path / "b.nii.gz"), "out_trials": str(tmp_path / "t.parquet")}
    glm_betas_stage(**files, **paths, params=params)
    betas = np.asanyarray(nib.load(paths["out_betas"]).dataobj)

    run = load_run(find_runs(bids, task="images")[0])
    cfg = GLMConfig.from_params(params)
    table = strategy_confounds(files["bold"], cfg, files["confounds"], run.n_volumes)
    spikes = [c for c in table.columns if c.startswith("spike_")]
    assert spikes == ["spike_0010", "spike_0030"]
    kept = np.setdiff1d(np.arange(run.n_volumes), [10, 30])
    plain = table.drop(columns=spikes)
    design = build_design(run.events, plain, run.n_volumes, run.tr, {"confounds": list(plain.columns)})
    inside = np.asanyarray(run.mask.dataobj) > 0
    y = run.bold.get_fdata()[inside].T
    weights = np.linalg.pinv(design.matrix.to_numpy()[kept])[: design.n_trials]
    censored = (weights @ y[kept]) * 100.0 / y.mean(axis=0)  # percent signal change, mean over all volumes
    np.testing.assert_allclose(betas[inside].T, censored, rtol=1e-3, atol=1e-3 * np.abs(censored).max())


def test_a_strategy_the_confounds_cannot_serve_names_the_file(study, tmp_path):
    with pytest.raises(CortexflowInputError, match=r"desc-confounds_timeseries.tsv: nilearn's load_confounds cannot apply "
                                                   r"strategy \['motion', 'scrub'\].*std_dvars"):
        _run(study, tmp_path, params={"confounds_strategy": ["motion", "scrub"]})
    with pytest.raises(CortexflowInputError, match="confounds_strategy must be null or a list of motion"):
        _run(study, tmp_path, params={"confounds_strategy": ["movement"]})


# ----------------------------------------------------------------------------- GLMsingle

def _glmsingle_betas(study, layout: str) -> np.ndarray:
    """Both runs' good betas, chronologically, as GLMsingle lays them out."""
    volumes = np.concatenate([_good(study, run)[0] for run in ("01", "02")], axis=3)
    if layout == "volume":
        return volumes
    mask = np.asanyarray(nib.load(_files(study["bids"], "01")["mask"]).dataobj) > 0
    return volumes[mask][:, None, None, :]  # voxels x 1 x 1 x trials, mask voxels in C order


@pytest.mark.parametrize("layout, fmt", [("volume", "npy"), ("matrix", "npy"), ("volume", "mat")])
def test_glmsingle_betas_replace_the_glm(study, tmp_path, layout, fmt):
    betas = _glmsingle_betas(study, layout)
    n_trials = [len(_good(study, run)[1]) for run in ("01", "02")]
    folder = tmp_path / "GLMsingle"
    folder.mkdir()
    if fmt == "npy":  # GLMsingle's Python output: a dict saved (pickled) with np.save
        np.save(folder / "TYPED_FITHRF_GLMDENOISE_RR.npy", {"betasmd": betas, "R2": np.zeros(betas.shape[:3])},
                allow_pickle=True)
        np.save(folder / "DESIGNINFO.npy", {"numtrialrun": np.array(n_trials), "stimdur": 3.0, "tr": 2.0}, allow_pickle=True)
    else:  # the MATLAB version's modelmd in a -v7 .mat
        from scipy.io import savemat

        savemat(folder / "TYPED_FITHRF_GLMDENOISE_RR.mat", {"modelmd": betas, "R2": np.zeros(betas.shape[:3])})
    path = str(folder / f"TYPED_FITHRF_GLMDENOISE_RR.{fmt}")
    all_events = [_files(study["bids"], run)["events"] for run in ("01", "02")]
    got, trials = _run(study, tmp_path, run="02", params={}, glmsingle=path, glmsingle_events=all_events)
    good, good_trials = _good(study, "02")
    np.testing.assert_array_equal(got, good)  # run 2's trials, at their voxels
    pd.testing.assert_frame_equal(trials, good_trials)


def test_glmsingle_with_other_trials_is_refused(study, tmp_path):
    betas = _glmsingle_betas(study, "volume")[..., :-1]  # one trial short
    path = tmp_path / "TYPED_FITHRF_GLMDENOISE_RR.npy"
    np.save(path, {"betasmd": betas}, allow_pickle=True)
    all_events = [_files(study["bids"], run)["events"] for run in ("01", "02")]
    with pytest.raises(CortexflowInputError, match=r"TYPED_FITHRF_GLMDENOISE_RR.npy: \d+ trials in the GLMsingle betas but "
                                                   r"\d+ stimulus events"):
        _run(study, tmp_path, run="02", params={}, glmsingle=str(path), glmsingle_events=all_events)
    np.save(path, {"R2": betas[..., 0]}, allow_pickle=True)
    with pytest.raises(CortexflowInputError, match="no betasmd"):
        _run(study, tmp_path, run="02", params={}, glmsingle=str(path), glmsingle_events=all_events)
    assert not (tmp_path / "b.nii.gz").exists()


def test_a_strategy_with_confounds_elsewhere_is_refused(study, tmp_path):
    """nilearn reads the confounds beside the BOLD run: a --confounds elsewhere would be ignored silently."""
    files = _files(study["bids"], "01")
    moved = tmp_path / "my_confounds.tsv"
    shutil.copy(files["confounds"], moved)
    paths = {"out_betas": str(tmp_path / "b.nii.gz"), "out_trials": str(tmp_path / "t.parquet")}
    with pytest.raises(CortexflowInputError, match=r"my_confounds.tsv: glm.confounds_strategy reads the confounds through "
                                                   r"nilearn.*found .*run-01_desc-confounds_timeseries.tsv"):
        glm_betas_stage(**{**files, "confounds": str(moved)}, **paths, params={"confounds_strategy": ["motion"]})
    assert not (tmp_path / "b.nii.gz").exists()


# ----------------------------------------------------------------------------- load_confounds_strategy presets

FULL_MOTION = [f"{m}{s}" for m in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
               for s in ("", "_derivative1", "_power2", "_derivative1_power2")]


@pytest.fixture
def real_confounds(study, tmp_path):
    """The study's run 1 with fMRIPrep's own confounds columns and .json (tests/fmriprep_fixture.py)."""
    from fmriprep_fixture import fmriprep_confounds, write_confounds

    bids = tmp_path / "bids"
    shutil.copytree(study["bids"], bids)
    files = _files(bids, "01")
    table, meta = fmriprep_confounds(pd.read_csv(files["confounds"], sep="\t", na_values="n/a"), tr=2.0)
    write_confounds(Path(files["confounds"]), table, meta)
    return files, table


@pytest.mark.parametrize(("preset", "expected"), [
    ("simple", FULL_MOTION + ["csf", "white_matter"]),
    ("compcor", FULL_MOTION + [f"a_comp_cor_{i:02d}" for i in range(5)]),  # the 5 of the combined mask
])
def test_a_denoise_preset_picks_fmriprep_columns_and_gives_their_betas(real_confounds, tmp_path, preset, expected):
    """nilearn's preset reads fMRIPrep's columns (the .json says which a_comp_cor are of the combined
    mask); its cosine_XX are left out for the design's own drifts, and the non-steady-state volume
    becomes a spike: the betas are those of listing exactly these columns in glm.confounds."""
    from cortexflow.preprocess.glm import GLMConfig, strategy_confounds

    files, table = real_confounds
    picked = strategy_confounds(files["bold"], GLMConfig(denoise_strategy=preset), files["confounds"], len(table))
    assert sorted(picked.columns) == sorted(expected + ["spike_0000"])
    assert not any(c.startswith("cosine") for c in picked.columns)
    paths = {"out_betas": str(tmp_path / "p.nii.gz"), "out_trials": str(tmp_path / "p.parquet")}
    # 50 volumes are too few for 30 confounds and 18 trials in one fit (LSA): one trial at a time
    glm_betas_stage(**files, **paths, params={"denoise_strategy": preset, "method": "lss"})
    by_preset = np.asanyarray(nib.load(paths["out_betas"]).dataobj)
    listed = {"out_betas": str(tmp_path / "l.nii.gz"), "out_trials": str(tmp_path / "l.parquet")}
    glm_betas_stage(**files, **listed, params={"confounds": expected + ["non_steady_state_outlier_00"],
                                                          "method": "lss"})
    by_list = np.asanyarray(nib.load(listed["out_betas"]).dataobj)
    np.testing.assert_allclose(by_preset, by_list, rtol=1e-4, atol=1e-4 * np.abs(by_list).max())


def test_scrubbing_preset_censors_high_motion_volumes(real_confounds, tmp_path):
    from cortexflow.preprocess.glm import GLMConfig, strategy_confounds

    files, table = real_confounds
    table["framewise_displacement"] = [None] + [0.1] * (len(table) - 1)
    table["std_dvars"] = [None] + [1.0] * (len(table) - 1)
    table.loc[40, "framewise_displacement"] = 1.2  # above the preset's 0.5 mm
    from fmriprep_fixture import write_confounds

    write_confounds(Path(files["confounds"]), table, json.loads(Path(files["confounds"]).with_suffix(".json").read_text()))
    picked = strategy_confounds(files["bold"], GLMConfig(denoise_strategy="scrubbing",
                                                         confounds_options={"scrub": 0}), files["confounds"], len(table))
    assert [c for c in picked.columns if c.startswith("spike_")] == ["spike_0000", "spike_0040"]
    assert {"csf_derivative1_power2", "white_matter_power2"} <= set(picked.columns)  # wm_csf: full


def test_compcor_without_its_json_and_a_preset_with_a_list_are_refused(real_confounds, study, tmp_path):
    files, _ = real_confounds
    Path(files["confounds"]).with_suffix(".json").unlink()
    paths = {"out_betas": str(tmp_path / "c.nii.gz"), "out_trials": str(tmp_path / "c.parquet")}
    with pytest.raises(CortexflowInputError, match=r"desc-confounds_timeseries\.tsv: nilearn's load_confounds_strategy "
                                                   r"cannot apply preset 'compcor'.*json"):
        glm_betas_stage(**files, **paths, params={"denoise_strategy": "compcor"})
    with pytest.raises(CortexflowInputError, match="either denoise_strategy"):
        glm_betas_stage(**files, **paths, params={"denoise_strategy": "simple", "confounds_strategy": ["motion"]})
    with pytest.raises(CortexflowInputError, match="glm.denoise_strategy' is 'aggressive'.*one of 'simple'"):
        glm_betas_stage(**files, **paths, params={"denoise_strategy": "aggressive"})
