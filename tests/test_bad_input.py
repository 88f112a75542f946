"""The bad-input corpus (issue 10): every case ends in a clear error, never a traceback or a wrong answer.

Each case starts from a copy of one good run of a tiny simulated study, breaks
one thing, runs the stage through the command line's own entry point
(``cortexflow.cli.main``; a few through a real subprocess), and checks:

* a non-zero exit status, and for input errors status 2 with one line on stderr
  that names the file at fault and says what to do (``Fix:``), no traceback;
* no output that looks complete: the output paths hold what they held before
  (good betas from an earlier run stay byte-identical) and no temporary file is
  left beside them.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cortexflow import _io, cli
from cortexflow.data.bids import find_runs
from cortexflow.data.simulate import simulate_study
from cortexflow.errors import CortexflowInputError
from cortexflow.preprocess.glm import glm_betas_stage
from cortexflow.preprocess.rois import extract_rois_stage

SPACE = "MNI152NLin2009cAsym"
SIM = {"subjects": 1, "modalities": ["image"], "image_train": 24, "image_test": 4, "runs": {"image": 2}, "image_size": 16}
STEM = "sub-01_task-images_run-01"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tiny study, the good glm/extract_rois outputs of its two runs."""
    base = tmp_path_factory.mktemp("bad_input")
    bids = simulate_study(base / "bids", SIM, seed=0)
    out = base / "good"
    betas, trials = [], []
    for run in ("01", "02"):
        files = _run_files(bids, f"sub-01_task-images_run-{run}")
        betas.append(out / f"run-{run}_betas.nii.gz")
        trials.append(out / f"run-{run}_trials.parquet")
        glm_betas_stage(**{k: str(v) for k, v in files.items()}, out_betas=str(betas[-1]), out_trials=str(trials[-1]),
                        params={})
    rois = {k: out / f"rois_{k}" for k in ("betas.npy", "trials.parquet", "voxels.parquet")}
    extract_rois_stage(betas=[str(b) for b in betas], trials=[str(t) for t in trials], out_betas=str(rois["betas.npy"]),
                       out_trials=str(rois["trials.parquet"]), out_voxels=str(rois["voxels.parquet"]), params={})
    return {"bids": bids, "betas": betas, "trials": trials, "rois": rois}


def _run_files(bids: Path, stem: str) -> dict[str, Path]:
    func, raw = bids / "derivatives" / "fmriprep" / "sub-01" / "func", bids / "sub-01" / "func"
    return {"bold": func / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz",
            "events": raw / f"{stem}_events.tsv",
            "confounds": func / f"{stem}_desc-confounds_timeseries.tsv",
            "mask": func / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz",
            "sidecar": func / f"{stem}_space-{SPACE}_desc-preproc_bold.json",
            "stimuli": bids / "stimuli" / "stimuli.tsv"}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def case(study, tmp_path):
    """A copy of run 01's inputs to break, and output paths already holding good results."""
    files = {}
    for key, path in _run_files(study["bids"], STEM).items():
        files[key] = tmp_path / "in" / path.name
        files[key].parent.mkdir(exist_ok=True)
        shutil.copy(path, files[key])
    out = tmp_path / "out"
    out.mkdir()
    outputs = {"out_betas": out / f"{STEM}_betas.nii.gz", "out_trials": out / f"{STEM}_trials.parquet"}
    shutil.copy(study["betas"][0], outputs["out_betas"])
    shutil.copy(study["trials"][0], outputs["out_trials"])
    return {"files": files, "outputs": outputs, "before": {k: _digest(p) for k, p in outputs.items()}, "tmp": tmp_path}


def _glm_argv(case, params: dict | None = None, drop: tuple[str, ...] = ()) -> list[str]:
    argv = ["glm-betas"]
    for key, path in {**case["files"], **case["outputs"]}.items():
        if key not in drop:
            argv += [f"--{key.replace('_', '-')}", str(path)]
    argv += ["--params", json.dumps(params or {}), "--log", str(case["tmp"] / "glm.log")]
    return argv


def _expect_input_error(capsys, argv: list[str], names: Path | str, *, also: str | None = None) -> str:
    """Run the CLI; status 2, one stderr line naming ``names``, with a fix, and no traceback."""
    status = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("cortexflow ")]
    assert status == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(names) in lines[0] and "Fix:" in lines[0], lines[0]
    if also is not None:
        assert also in lines[0], lines[0]
    return lines[0]


def _outputs_untouched(case) -> None:
    for key, path in case["outputs"].items():
        assert _digest(path) == case["before"][key], f"{path.name} was overwritten"
    assert sorted(p.name for p in case["outputs"]["out_betas"].parent.iterdir()) == sorted(
        p.name for p in case["outputs"].values()), "a temporary or partial file was left"


def _rewrite_bold(path: Path, edit) -> None:  # noqa: ANN001 - edit(data) changes the (x, y, z, t) array in place
    img = nib.load(path)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    edit(data)
    header = img.header.copy()
    header.set_data_dtype(np.float32)  # NaN survives only in a float file
    header.set_slope_inter(1.0, 0.0)
    nib.save(nib.Nifti1Image(data, img.affine, header), path)


def _cut_last_line(path: Path) -> None:
    """An interrupted copy: the file ends inside the last row's third field."""
    lines = path.read_text().splitlines()
    fields = lines[-1].split("\t")
    path.write_text("\n".join(lines[:-1] + ["\t".join(fields[:2] + [fields[2][:1]])]))


def _shift_origin(path: Path, mm: float) -> None:
    img = nib.load(path)
    affine = img.affine.copy()
    affine[:3, 3] += mm
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), affine), path)


def _brain_voxel(mask_path: Path) -> tuple[int, int, int]:
    return tuple(int(i) for i in np.argwhere(np.asanyarray(nib.load(mask_path).dataobj) > 0)[0])


def _edit_tsv(path: Path, edit) -> None:  # noqa: ANN001
    table = pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)
    table = edit(table)
    table.to_csv(path, sep="\t", index=False, na_rep="n/a")


# ----------------------------------------------------------------------------- glm_betas: the run's files

def _truncate_gzip_data(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # an interrupted copy: the header reads, the data do not
    nib.load(path)  # the premise: opening the file (header) still works


@pytest.mark.parametrize("name, breaks, culprit, phrase", [
    ("truncated BOLD", lambda f: _truncate_gzip_data(f["bold"]), "bold", "truncated or damaged"),
    ("zero-byte BOLD", lambda f: f["bold"].write_bytes(b""), "bold", "cannot read the preprocessed BOLD run"),
    ("TR mismatch", lambda f: f["sidecar"].write_text(json.dumps({"RepetitionTime": 1.5})), "bold", "differs from RepetitionTime"),
    ("sidecar without TR", lambda f: f["sidecar"].write_text(json.dumps({"TaskName": "images"})), "sidecar", "RepetitionTime"),
    ("missing sidecar", lambda f: f["sidecar"].unlink(), "sidecar", "does not exist"),
    ("missing mask", lambda f: f["mask"].unlink(), "mask", "does not exist"),
    ("mask on another grid", lambda f: _shift_origin(f["mask"], 8.0), "mask", "affine differs"),
    ("events outside the run", lambda f: _edit_tsv(f["events"], lambda t: t.assign(onset=t["onset"] + 10_000)), "events", "outside the run"),
    ("events without onset", lambda f: _edit_tsv(f["events"], lambda t: t.drop(columns="onset")), "events", "onset"),
    ("events cut mid-line", lambda f: _cut_last_line(f["events"]), "events", "cut off mid-line"),
    ("unknown stimulus id", lambda f: _edit_tsv(f["events"], lambda t: t.assign(
        stimulus_id=t["stimulus_id"].where(t.index != 3, "not_a_stimulus"))), "events", "not_a_stimulus"),
    ("duplicate stimulus ids", lambda f: _edit_tsv(f["stimuli"], lambda t: pd.concat([t, t.iloc[:1]])), "stimuli", "duplicate"),
    ("short confounds", lambda f: _edit_tsv(f["confounds"], lambda t: t.iloc[:-3]), "confounds", "rows but the BOLD run has"),
    ("confounds cut mid-line", lambda f: _cut_last_line(f["confounds"]), "confounds", "cut off mid-line"),
    ("NaN voxels", lambda f: _rewrite_bold(f["bold"], lambda d: d.__setitem__(_brain_voxel(f["mask"]) + (5,), np.nan)), "bold", "NaN"),
    ("constant voxels", lambda f: _rewrite_bold(f["bold"], lambda d: d.__setitem__(_brain_voxel(f["mask"]), 100.0)), "bold", "constant"),
])
def test_glm_betas_refuses_a_broken_run(case, capsys, name, breaks, culprit, phrase):
    breaks(case["files"])
    _expect_input_error(capsys, _glm_argv(case), case["files"][culprit], also=phrase)
    _outputs_untouched(case)


def test_missing_confound_column_names_the_confounds(case, capsys):
    _expect_input_error(capsys, _glm_argv(case, {"confounds": ["trans_x", "std_dvars"]}), case["files"]["confounds"],
                        also="'std_dvars'")
    _outputs_untouched(case)


def test_unknown_stimulus_is_blamed_on_the_events_file_not_the_table(case, capsys):
    """Without --stimuli the id would surface later, in make_dataset, naming stimuli.tsv."""
    _edit_tsv(case["files"]["events"], lambda t: t.assign(stimulus_id=t["stimulus_id"].where(t.index != 0, "im_9999")))
    line = _expect_input_error(capsys, _glm_argv(case), case["files"]["events"], also="im_9999")
    assert "stimuli.tsv:" not in line  # the table is fine; the events file is at fault
    _outputs_untouched(case)


def test_disk_full_while_writing_is_an_input_error_and_keeps_the_old_betas(case, capsys, monkeypatch):
    def full(*args, **kwargs):  # noqa: ANN002, ANN003
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nib, "save", full)
    _expect_input_error(capsys, _glm_argv(case), case["outputs"]["out_betas"], also="No space left on device")
    _outputs_untouched(case)


def test_unexpected_error_goes_with_its_traceback_to_the_log(case, capsys, monkeypatch):
    import cortexflow.preprocess.glm as glm

    def bug(*args, **kwargs):  # noqa: ANN002, ANN003
        raise RuntimeError("an internal bug")

    monkeypatch.setattr(glm, "single_trial_betas", bug)
    status = cli.main(_glm_argv(case))
    err = capsys.readouterr().err
    assert status == 1
    assert "Traceback" not in err and "unexpected error: RuntimeError: an internal bug" in err
    assert str(case["tmp"] / "glm.log") in err
    log_text = (case["tmp"] / "glm.log").read_text()
    assert "Traceback (most recent call last)" in log_text and "RuntimeError: an internal bug" in log_text
    _outputs_untouched(case)


def test_cli_in_a_subprocess_missing_sidecar_and_params_file(case):
    """The installed entry point, end to end: one line, status 2, no traceback."""
    case["files"]["sidecar"].unlink()
    argv = _glm_argv(case)
    proc = subprocess.run([sys.executable, "-m", "cortexflow.cli", *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{case['files']['sidecar']}: the JSON sidecar with RepetitionTime does not exist" in proc.stderr
    assert "glm.log" in argv[-1] and str(case["files"]["sidecar"]) in (case["tmp"] / "glm.log").read_text()
    argv[argv.index("--params") + 1] = "@" + str(case["tmp"] / "missing.json")
    proc = subprocess.run([sys.executable, "-m", "cortexflow.cli", *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "missing.json: cannot read the --params file" in proc.stderr
    _outputs_untouched(case)


def test_unknown_glm_key_fails_before_any_data_are_read(case, capsys):
    case["files"]["bold"].write_bytes(b"")  # would fail if it were read
    _expect_input_error(capsys, _glm_argv(case, {"hrf": "spm"}), "unknown keys", also="glm config")
    _outputs_untouched(case)


# ----------------------------------------------------------------------------- later stages and intermediates

def _rois_argv(study, out: Path, betas: list[Path] | None = None, params: dict | None = None) -> list[str]:
    return ["extract-rois", "--betas", *map(str, betas or study["betas"]), "--trials", *map(str, study["trials"]),
            "--out-betas", str(out / "b.npy"), "--out-trials", str(out / "t.parquet"),
            "--out-voxels", str(out / "v.parquet"), "--params", json.dumps(params or {})]


def test_truncated_betas_image_is_named_by_extract_rois(study, tmp_path, capsys):
    broken = tmp_path / "run-01_betas.nii.gz"
    raw = study["betas"][0].read_bytes()
    broken.write_bytes(raw[: len(raw) // 2])
    _expect_input_error(capsys, _rois_argv(study, tmp_path / "out", [broken, study["betas"][1]]), broken,
                        also="rerun glm_betas")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _labels(study, tmp_path: Path, affine_shift=None, other_grid: bool = False):  # noqa: ANN001, ANN202
    ref = nib.load(study["betas"][0])
    shape, affine = ref.shape[:3], ref.affine.copy()
    labels = np.zeros(shape, np.int16)
    labels[shape[0] // 2 - 4: shape[0] // 2 + 4, 5:15, shape[2] // 2 - 4: shape[2] // 2 + 4] = 1  # an occipital box
    if affine_shift is not None:
        affine[:3, 3] += affine_shift
    img = nib.Nifti1Image(labels, affine)
    if other_grid:  # the same box on a 2 mm grid
        from nilearn.image import resample_img

        fine = np.diag([2.0, 2.0, 2.0, 1.0])
        fine[:3, 3] = affine[:3, 3]
        img = resample_img(img, target_affine=fine, target_shape=tuple(2 * s for s in shape), interpolation="nearest",
                           force_resample=True, copy_header=True)
    nib.save(img, tmp_path / "atlas.nii.gz")
    pd.DataFrame({"index": [1], "name": ["V"]}).to_csv(tmp_path / "atlas.tsv", sep="\t", index=False)
    return {"source": "labels", "labels_img": str(tmp_path / "atlas.nii.gz"),
            "labels_table": str(tmp_path / "atlas.tsv"), "regions": {"image": ["V"]}}


def test_atlas_shifted_by_12_mm_is_refused(study, tmp_path, capsys):
    params = _labels(study, tmp_path, affine_shift=np.array([0.0, 12.0, 0.0]))
    line = _expect_input_error(capsys, _rois_argv(study, tmp_path / "out", params=params), tmp_path / "atlas.nii.gz",
                               also="12.0 mm")
    assert "another affine" in line
    assert not (tmp_path / "out").exists()


def test_atlas_on_another_grid_needs_allow_resampling_and_then_warns(study, tmp_path, capsys):
    params = _labels(study, tmp_path, other_grid=True)
    _expect_input_error(capsys, _rois_argv(study, tmp_path / "out", params=params), tmp_path / "atlas.nii.gz",
                        also="allow_resampling")
    assert not (tmp_path / "out").exists()
    argv = _rois_argv(study, tmp_path / "out", params={**params, "allow_resampling": True}) + ["--log", str(tmp_path / "r.log")]
    assert cli.main(argv) == 0
    capsys.readouterr()
    warning = [line for line in (tmp_path / "r.log").read_text().splitlines() if "WARNING" in line]
    assert warning and "atlas.nii.gz" in warning[0] and "1.7 mm apart" in warning[0], warning
    assert re.search(r"inside the brain mask: V \d+%", warning[0]), warning
    assert np.load(tmp_path / "out" / "b.npy").shape[1] > 0


def _dataset_argv(study, roi_betas: Path, stimuli: Path, out: Path) -> list[str]:
    r = study["rois"]
    return ["make-dataset", "--roi-betas", str(roi_betas), "--trials", str(r["trials.parquet"]),
            "--voxels", str(r["voxels.parquet"]), "--stimuli", str(stimuli), "--out-dir", str(out), "--params", "{}"]


def test_truncated_intermediate_npy_is_named(study, tmp_path, capsys):
    broken = tmp_path / "roi-betas.npy"
    raw = study["rois"]["betas.npy"].read_bytes()
    broken.write_bytes(raw[: len(raw) // 3])
    _expect_input_error(capsys, _dataset_argv(study, broken, study["bids"] / "stimuli" / "stimuli.tsv", tmp_path / "ds"),
                        broken, also="truncated or damaged")
    assert not (tmp_path / "ds").exists()


def test_truncated_npz_and_parquet_are_named(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.arange(10_000.0))
    raw = (tmp_path / "a.npz").read_bytes()
    (tmp_path / "a.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CortexflowInputError, match=r"a\.npz: cannot read the latents: the file is truncated"):
        _io.load_npz(tmp_path / "a.npz", "latents")
    pd.DataFrame({"x": range(100)}).to_parquet(tmp_path / "t.parquet")
    raw = (tmp_path / "t.parquet").read_bytes()
    (tmp_path / "t.parquet").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CortexflowInputError, match=r"t\.parquet: cannot read the trials table"):
        _io.read_parquet(tmp_path / "t.parquet", "trials table")
    with gzip.open(tmp_path / "x.nii.gz", "wb") as f:
        f.write(b"not a nifti")
    with pytest.raises(CortexflowInputError, match="x.nii.gz"):
        from cortexflow.data.bids import _load_nifti

        _load_nifti(tmp_path / "x.nii.gz", "image")


def test_empty_test_split_names_the_stimulus_table(study, tmp_path, capsys):
    stimuli = tmp_path / "stimuli.tsv"
    table = pd.read_csv(study["bids"] / "stimuli" / "stimuli.tsv", sep="\t")
    table.assign(split="train").to_csv(stimuli, sep="\t", index=False)
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier dataset")  # a good earlier output is not destroyed
    _expect_input_error(capsys, _dataset_argv(study, study["rois"]["betas.npy"], stimuli, out), stimuli,
                        also="0 test trials")
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and not list(tmp_path.glob(".ds*"))


# ----------------------------------------------------------------------------- the study as a whole

def test_unknown_subject_and_wrong_space_name_the_folder(study):
    fmriprep = study["bids"] / "derivatives" / "fmriprep"
    with pytest.raises(CortexflowInputError, match=rf"{fmriprep}: no preprocessed BOLD runs for subject '99'"):
        find_runs(study["bids"], subject="99")
    with pytest.raises(CortexflowInputError, match=rf"{fmriprep}: .*space 'T1w'.*runs there are in: space-{SPACE} task-images"):
        find_runs(study["bids"], space="T1w")
