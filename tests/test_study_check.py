"""`cortexflow check`: the simulated study passes; each broken variant is named with its file and problem."""

from __future__ import annotations

import gzip
import json
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from cortexflow.cli import main
from cortexflow.data.simulate import simulate_study
from cortexflow.data.study_check import check_study, study_config

SPACE = "MNI152NLin2009cAsym"
SIM = {"subjects": 1, "modalities": ["image"], "image_train": 24, "image_test": 4, "runs": {"image": 2}, "image_size": 16}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return simulate_study(tmp_path_factory.mktemp("check") / "bids", SIM, seed=2)


def _config(tmp_path: Path, bids: Path, **extra) -> Path:
    path = tmp_path / "study.yaml"
    cfg = {"study": "checked", "data": {"source": "bids", "bids_root": str(bids), "modalities": ["image"]}, **extra}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _func(bids: Path, run: str = "01") -> dict[str, Path]:
    stem = f"sub-01_task-images_run-{run}"
    func = bids / "derivatives" / "fmriprep" / "sub-01" / "func"
    return {"bold": func / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz",
            "sidecar": func / f"{stem}_space-{SPACE}_desc-preproc_bold.json",
            "mask": func / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz",
            "events": bids / "sub-01" / "func" / f"{stem}_events.tsv"}


def test_simulated_study_passes_and_the_report_lists_subjects_runs_and_split(study, tmp_path, capsys):
    start = time.perf_counter()
    assert main(["check", "--configfile", str(_config(tmp_path, study))]) == 0
    seconds = time.perf_counter() - start
    out = capsys.readouterr().out
    assert "Subjects (1): sub-01" in out
    assert "sub-01 task-images run-01: " in out and "sub-01 task-images run-02: " in out and "TR 2 s" in out
    # the split make_dataset will make: 24 train stimuli shown once, 4 test stimuli shown 3 times
    assert "sub-01 image: train 24 trials of 24 stimuli (2 of them the validation fold" in out
    assert "test 12 trials of 4 stimuli (shown 3 times" in out
    assert "voxels in" in out and "inside the brain mask" in out
    assert "Checked 2 run(s) (headers, tables and voxels)" in out and "no problems" in out
    print(f"cortexflow check on the 2-run study: {seconds:.1f} s in all")  # the report's figure (pytest -s)


def _copy(study: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(study, tmp_path / "bids"))


def _remove_events(bids):
    _func(bids, "02")["events"].unlink()
    return _func(bids, "02")["events"], "no events file"


def _tr_mismatch(bids):
    _func(bids)["sidecar"].write_text(json.dumps({"RepetitionTime": 2.5}))
    return _func(bids)["bold"], "differs from RepetitionTime"


def _corrupt_nifti(bids):
    _func(bids)["bold"].write_bytes(gzip.compress(b"not a NIfTI header" * 20))
    return _func(bids)["bold"], "cannot read the preprocessed BOLD run as NIfTI"


def _nan_voxels(bids):
    path = _func(bids)["bold"]
    img = nib.load(path)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    inside = np.argwhere(np.asanyarray(nib.load(_func(bids)["mask"]).dataobj) > 0)[:3]
    data[tuple(inside.T)] = np.nan
    broken = nib.Nifti1Image(data, img.affine, img.header)
    broken.header.set_data_dtype(np.float32)
    broken.to_filename(path)
    return path, "3 of"


def _unknown_stimulus(bids):
    path = _func(bids)["events"]
    events = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    first = events.index[events["stimulus_id"] != "n/a"][0]
    events.loc[first, "stimulus_id"] = "img_never_listed"
    events.to_csv(path, sep="\t", index=False)
    return path, "img_never_listed"


@pytest.mark.parametrize("breaks", [_remove_events, _tr_mismatch, _corrupt_nifti, _nan_voxels, _unknown_stimulus],
                         ids=["missing-events", "tr-mismatch", "corrupt-nifti", "nan-voxels", "unknown-stimulus"])
def test_a_broken_study_names_the_file_and_the_problem(study, tmp_path, capsys, breaks):
    bids = _copy(study, tmp_path)
    culprit, phrase = breaks(bids)
    assert main(["check", "--configfile", str(_config(tmp_path, bids))]) == 2
    out = capsys.readouterr().out
    problems = out.split("Problems (", 1)[1]
    assert f"ERROR   {culprit}" in problems, problems
    assert phrase in problems.split(f"ERROR   {culprit}", 1)[1].split("ERROR", 1)[0], problems
    # the check goes on past the broken run: the other run is still read and listed
    assert out.count("sub-01 task-images run-") == 1


def test_an_atlas_on_another_grid_is_named_and_a_shifted_one_too(study, tmp_path):
    bold = nib.load(_func(study)["bold"])
    affine = bold.affine.copy()
    labels = np.zeros(bold.shape[:3][::-1], np.int16)  # another shape: another grid
    labels[10:20, 10:20, 10:20] = 1
    atlas = tmp_path / "atlas.nii.gz"
    nib.Nifti1Image(labels, affine).to_filename(atlas)
    table = tmp_path / "atlas.tsv"
    table.write_text("index\tname\n1\tV1\n")
    rois = {"source": "labels", "labels_img": str(atlas), "labels_table": str(table), "regions": {"image": ["V1"]}}
    result = check_study(study_config([str(_config(tmp_path, study, rois=rois))]), read_data=False)
    (error,) = result.errors
    assert error.path == str(atlas) and "another grid" in error.problem and "allow_resampling" in error.fix


def test_events_past_the_end_are_a_warning_and_the_exit_status_stays_0(study, tmp_path, capsys):
    bids = _copy(study, tmp_path)
    path = _func(bids)["events"]
    events = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    n_volumes = nib.load(_func(bids)["bold"]).shape[3]
    fixation = {c: "n/a" for c in events.columns} | {"onset": str(2.0 * n_volumes - 4), "duration": "6",
                                                     "trial_type": "fixation"}
    pd.concat([events, pd.DataFrame([fixation])]).to_csv(path, sep="\t", index=False)
    assert main(["check", "--configfile", str(_config(tmp_path, bids)), "--headers-only"]) == 0
    out = capsys.readouterr().out
    assert f"WARNING {path}" in out and f"line(s) {len(events) + 2}" in out and "cut there" in out
    assert "0 error(s), 1 warning(s)" in out


def test_config_overrides_work_like_snakemake(study, tmp_path):
    cfg = study_config([str(_config(tmp_path, study))], ["study=other", "dataset.val_fraction=0.25"])
    assert cfg["study"] == "other" and cfg["dataset"]["val_fraction"] == 0.25
    assert cfg["data"]["bids_root"] == str(study)  # the file's keys stay
    result = check_study(cfg, read_data=False)
    assert not result.problems and "(6 of them the validation fold" in result.report()
