"""The BIDS / fMRIPrep reader: it reads what the simulator writes, and every check fails loudly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cortexflow.data.bids import check_same_grid, find_runs, load_run, load_stimuli, load_stimulus, validate_study
from cortexflow.data.simulate import planned_runs, simulate_study
from cortexflow.errors import CortexflowInputError

SPACE = "MNI152NLin2009cAsym"
TINY = {"subjects": 2, "image_train": 16, "image_test": 3, "sentence_train": 6, "sentence_test": 2, "test_repeats": 2,
        "runs": {"image": 2, "audio": 2, "text": 2}}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return simulate_study(tmp_path_factory.mktemp("sim") / "bids", TINY, seed=3)


def test_reader_reads_the_simulated_study(study):
    runs = find_runs(study)
    assert [(r.subject, r.task, r.run) for r in runs] == sorted(planned_runs(TINY))
    assert [r.run for r in find_runs(study, subject="02", task="audio")] == [1, 2]
    loaded = validate_study(study)
    stimuli = load_stimuli(study)
    for run in loaded:
        assert run.tr == 2.0
        assert run.bold.shape[:3] == run.mask.shape == (50, 59, 48)
        assert len(run.confounds) == run.n_volumes
        assert run.confounds.notna().all().all() and run.confounds["framewise_displacement"].iloc[0] == 0.0
        assert (run.events["onset"].diff().dropna() > 0).all()
        modality = run.events["modality"].iloc[0]
        ids = set(stimuli.loc[stimuli["modality"] == modality, "stimulus_id"])
        assert set(run.events["stimulus_id"]) <= ids
    img_row = stimuli[stimuli["modality"] == "image"].iloc[0]
    img = load_stimulus(study, img_row)
    assert img.shape == (1, 32, 32) and img.dtype == np.float32 and 0 <= img.min() < img.max() <= 1
    wav, rate = load_stimulus(study, stimuli[stimuli["modality"] == "audio"].iloc[0])
    assert rate == 16000 and wav.shape == (32000,) and np.abs(wav).max() > 0.05
    text_row = stimuli[stimuli["modality"] == "text"].iloc[0]
    assert load_stimulus(study, text_row) == text_row["text"] and text_row["text"].endswith(".")


def test_renamed_file_in_a_copied_study_fails_clearly(study, tmp_path):
    copy = tmp_path / "bids"
    shutil.copytree(study, copy)
    events = copy / "sub-01" / "func" / "sub-01_task-images_run-02_events.tsv"
    events.rename(events.with_name("sub-01_task-images_run-2_events.tsv"))
    with pytest.raises(CortexflowInputError, match=r"no events file for run sub-01_task-images_run-02.*"
                                                   r"expected sub-01_task-images_run-02_events\.tsv.*run-2_events"):
        find_runs(copy, subject="01", task="images")


# ----------------------------------------------------------------------------- a hand-made dataset

def make_dataset(root: Path, n_vols: int = 12, tr: float = 2.0, header_tr: float | None = None) -> Path:
    """One valid run of one subject, written by hand as BIDS + fMRIPrep name it."""
    func = root / "derivatives" / "fmriprep" / "sub-01" / "func"
    raw = root / "sub-01" / "func"
    func.mkdir(parents=True)
    raw.mkdir(parents=True)
    stem = "sub-01_task-look_run-01"
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    bold = nib.Nifti1Image(np.random.default_rng(0).normal(100, 1, (4, 4, 4, n_vols)).astype(np.float32), affine)
    bold.header.set_xyzt_units("mm", "sec")
    bold.header.set_zooms((3.0, 3.0, 3.0, header_tr if header_tr is not None else tr))
    bold.to_filename(func / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz")
    nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), affine).to_filename(func / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz")
    (func / f"{stem}_space-{SPACE}_desc-preproc_bold.json").write_text(json.dumps({"RepetitionTime": tr}))
    conf = pd.DataFrame({c: np.linspace(0, 0.1, n_vols) for c in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")})
    conf["framewise_displacement"] = np.r_[np.nan, np.full(n_vols - 1, 0.05)]
    conf.to_csv(func / f"{stem}_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a")
    pd.DataFrame({"onset": [2.0, 8.0], "duration": [3.0, 3.0], "trial_type": ["x", "x"], "stimulus_id": ["a", "b"]}).to_csv(
        raw / f"{stem}_events.tsv", sep="\t", index=False)
    (root / "stimuli").mkdir()
    pd.DataFrame({"stimulus_id": ["a", "b"], "modality": ["text", "text"], "path": ["n/a", "n/a"],
                  "split": ["train", "test"], "text": ["One.", "Two."]}).to_csv(root / "stimuli" / "stimuli.tsv", sep="\t", index=False)
    return root


def _only_run(root: Path):
    (run,) = find_runs(root)
    return run


def _edit_tsv(path: Path, edit) -> None:  # noqa: ANN001 - edit changes the table in place or returns a new one
    table = pd.read_csv(path, sep="\t", na_values="n/a")
    edited = edit(table)
    (table if edited is None else edited).to_csv(path, sep="\t", index=False, na_rep="n/a")


def test_hand_made_dataset_is_valid(tmp_path):
    run = load_run(_only_run(make_dataset(tmp_path)), stimulus_ids={"a", "b"})
    assert run.tr == 2.0 and run.n_volumes == 12
    assert list(run.events["stimulus_id"]) == ["a", "b"]
    assert run.confounds["framewise_displacement"].tolist()[:2] == [0.0, 0.05]


def test_tr_in_sidecar_must_match_header(tmp_path):
    run = _only_run(make_dataset(tmp_path, header_tr=2.5))
    with pytest.raises(CortexflowInputError, match=r"preproc_bold\.nii\.gz: the header's TR \(2\.5 s\) differs .*\(2 s\)"):
        load_run(run)


def test_placeholder_header_tr_warns_and_uses_sidecar(tmp_path):
    run = _only_run(make_dataset(tmp_path, header_tr=1.0))
    with pytest.warns(UserWarning, match="placeholder"):
        assert load_run(run).tr == 2.0


def test_sidecar_without_repetition_time(tmp_path):
    run = _only_run(make_dataset(tmp_path))
    run.sidecar.write_text(json.dumps({"TaskName": "look"}))
    with pytest.raises(CortexflowInputError, match=r"bold\.json: sidecar has no positive RepetitionTime"):
        load_run(run)


def test_bold_must_be_4d(tmp_path):
    run = _only_run(make_dataset(tmp_path))
    nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.diag([3.0, 3.0, 3.0, 1.0])).to_filename(run.bold)
    with pytest.raises(CortexflowInputError, match=r"must be 4-D .* shape is \(4, 4, 4\)"):
        load_run(run)


@pytest.mark.parametrize("shape, affine, message", [
    ((4, 4, 5), np.diag([3.0, 3.0, 3.0, 1.0]), r"mask shape \(4, 4, 5\) does not match the BOLD grid \(4, 4, 4\)"),
    ((4, 4, 4), np.diag([2.0, 3.0, 3.0, 1.0]), r"mask affine differs"),
])
def test_mask_must_be_on_the_bold_grid(tmp_path, shape, affine, message):
    run = _only_run(make_dataset(tmp_path))
    nib.Nifti1Image(np.ones(shape, np.uint8), affine).to_filename(run.mask)
    with pytest.raises(CortexflowInputError, match=r"brain_mask\.nii\.gz: " + message):
        load_run(run)


def test_empty_mask_fails(tmp_path):
    run = _only_run(make_dataset(tmp_path))
    nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.diag([3.0, 3.0, 3.0, 1.0])).to_filename(run.mask)
    with pytest.raises(CortexflowInputError, match=r"brain_mask\.nii\.gz: the brain mask is empty"):
        load_run(run)


def test_events_before_the_run_are_refused_those_after_it_clipped_with_the_lines(tmp_path, caplog):
    """A final fixation that outlasts the scan is cut at the run's end, a trial that starts after
    it dropped; both are warnings naming the file and its lines (nilearn too only warns)."""
    run = _only_run(make_dataset(tmp_path))  # 12 volumes x 2 s = 24 s

    def late(t):
        extra = pd.DataFrame({"onset": [20.0, 25.0], "duration": [6.0, 1.0], "trial_type": ["fixation", "x"],
                              "stimulus_id": [None, "a"]})
        return pd.concat([t, extra], ignore_index=True)
    _edit_tsv(run.events, late)
    with caplog.at_level("WARNING", logger="cortexflow"):
        loaded = load_run(run, stimulus_ids={"a", "b"})
    assert loaded.events["onset"].tolist() == [2.0, 8.0, 20.0]  # the one at 25 s is gone
    assert loaded.events["duration"].tolist() == [3.0, 3.0, 4.0]  # 20 + 6 s cut at 24 s
    messages = [r.getMessage() for r in caplog.records]
    assert any(str(run.events) in m and "end after the run's end (24 s" in m and "line(s) 4" in m for m in messages)
    assert any(str(run.events) in m and "are dropped: line(s) 5" in m and "stimuli a" in m for m in messages)

    def early(t):
        t.loc[1, "onset"] = -1.0
    _edit_tsv(run.events, early)
    with pytest.raises(CortexflowInputError, match=r"events\.tsv: 1 event\(s\) start before the first volume"):
        load_run(run)


def test_events_as_bids_allows_them_n_a_extra_columns_and_rows_without_a_stimulus(tmp_path):
    """n/a durations of non-stimulus rows are impulses, extra columns are kept, and ids that look like
    numbers stay labels even in a column with n/a (0042 is not 42.0)."""
    root = make_dataset(tmp_path)
    run = _only_run(root)
    run.events.write_text("onset\tduration\ttrial_type\tstimulus_id\tresponse_time\tnotes\n"
                          "2.0\t3.0\timage\t0042\t0.61\tn/a\n"
                          "5.5\tn/a\tbutton_press\tn/a\tn/a\tleft hand\n"
                          "8.0\t3.0\timage\t0007\tn/a\tn/a\n"
                          "11.0\t2.0\tfixation\tn/a\tn/a\tn/a\n")
    loaded = load_run(run, stimulus_ids={"0042", "0007"})
    ev = loaded.events
    assert ev["stimulus_id"].tolist() == ["0042", None, "0007", None]
    assert ev["duration"].tolist() == [3.0, 0.0, 3.0, 2.0]
    assert ev["response_time"].iloc[0] == 0.61 and ev["notes"].iloc[1] == "left hand"
    with pytest.raises(CortexflowInputError, match=r"not in the stimulus table: 0042"):
        load_run(run, stimulus_ids={"42", "0007"})


def test_events_must_name_known_stimuli(tmp_path):
    run = _only_run(make_dataset(tmp_path))
    with pytest.raises(CortexflowInputError, match=r"events\.tsv: 1 stimulus id\(s\) not in the stimulus table: b"):
        load_run(run, stimulus_ids={"a"})


def test_events_need_onset_and_a_stimulus(tmp_path):
    run = _only_run(make_dataset(tmp_path))
    _edit_tsv(run.events, lambda t: t.drop(columns=["onset", "stimulus_id"]))
    with pytest.raises(CortexflowInputError, match=r"lacks column\(s\) onset, stimulus_id"):
        load_run(run)


def test_stim_file_gives_the_stimulus_id(tmp_path):
    run = _only_run(make_dataset(tmp_path))

    def to_stim_file(t):
        t["stim_file"] = ["images/a.png", "images/b.png"]
        return t.drop(columns=["stimulus_id"])
    _edit_tsv(run.events, to_stim_file)
    assert load_run(run, stimulus_ids={"a", "b"}).events["stimulus_id"].tolist() == ["a", "b"]


def test_confound_rows_must_equal_volumes(tmp_path):
    run = _only_run(make_dataset(tmp_path))
    _edit_tsv(run.confounds, lambda t: t.drop(index=[11]))
    with pytest.raises(CortexflowInputError, match=r"timeseries\.tsv: confounds table has 11 rows but the BOLD run has 12 volumes"):
        load_run(run)


def test_confound_gaps_after_the_first_row_fail(tmp_path):
    run = _only_run(make_dataset(tmp_path))

    def gap(t):
        t.loc[5, "trans_y"] = np.nan
    _edit_tsv(run.confounds, gap)
    with pytest.raises(CortexflowInputError, match=r"missing values after the first row in column\(s\) trans_y"):
        load_run(run)


def test_confounds_need_motion_columns(tmp_path):
    run = _only_run(make_dataset(tmp_path))
    _edit_tsv(run.confounds, lambda t: t.drop(columns=["rot_z"]))
    with pytest.raises(CortexflowInputError, match=r"lacks the motion column\(s\) rot_z"):
        load_run(run)


def test_runs_must_share_one_grid(tmp_path):
    a = load_run(_only_run(make_dataset(tmp_path / "a")))
    run_b = _only_run(make_dataset(tmp_path / "b"))
    img = nib.load(run_b.bold)
    shifted = img.affine.copy()
    shifted[0, 3] += 2.0
    nib.Nifti1Image(np.asarray(img.dataobj), shifted, img.header).to_filename(run_b.bold)
    check_same_grid([a, a])
    with pytest.raises(CortexflowInputError, match=r"b/derivatives/.*preproc_bold\.nii\.gz: grid differs .*affines differ"):
        check_same_grid([a, run_b])


def test_missing_mask_and_wrong_space_are_named(tmp_path):
    root = make_dataset(tmp_path)
    run = _only_run(root)
    run.mask.unlink()
    with pytest.raises(CortexflowInputError, match=r"no brain mask for run sub-01_task-look_run-01: expected "
                                                   r"sub-01_task-look_run-01_space-MNI152NLin2009cAsym_desc-brain_mask"):
        find_runs(root)
    with pytest.raises(CortexflowInputError, match=r"no preprocessed BOLD runs for space 'T1w' .*runs there are in: space-MNI152NLin2009cAsym task-look"):
        find_runs(root, space="T1w")


def test_stimulus_table_is_validated(tmp_path):
    root = make_dataset(tmp_path)
    _edit_tsv(root / "stimuli" / "stimuli.tsv", lambda t: t.__setitem__("split", ["train", "val"]))
    with pytest.raises(CortexflowInputError, match=r"stimuli\.tsv: unknown split value\(s\) \['val'\]"):
        load_stimuli(root)
    _edit_tsv(root / "stimuli" / "stimuli.tsv", lambda t: t.__setitem__("split", ["train", "test"]))
    _edit_tsv(root / "stimuli" / "stimuli.tsv", lambda t: t.__setitem__("stimulus_id", ["a", "a"]))
    with pytest.raises(CortexflowInputError, match=r"duplicate stimulus id\(s\): a"):
        load_stimuli(root)


# ----------------------------------------------------------------------------- fMRIPrep names as they come

def _rename_all(folder: Path, old: str, new: str) -> None:
    for p in list(folder.iterdir()):
        if old in p.name:
            p.rename(p.with_name(p.name.replace(old, new)))


def test_fmriprep_entities_res_ses_acq_echo_are_found(tmp_path):
    """fMRIPrep's `--output-spaces MNI152NLin2009cAsym:res-2` adds res- after space-; raw
    entities (ses-, acq-, rec-, echo-) stay in the derivative names; events may omit echo-."""
    root = make_dataset(tmp_path)
    func = root / "derivatives" / "fmriprep" / "sub-01" / "func"
    raw = root / "sub-01" / "func"
    _rename_all(func, f"_space-{SPACE}_", f"_space-{SPACE}_res-2_")
    for folder in (func, raw):
        _rename_all(folder, "sub-01_task-look_run-01", "sub-01_ses-A_task-look_acq-mb4_rec-norm_run-03_echo-1")
    _rename_all(raw, "_echo-1_events", "_events")  # events shared by every echo
    ses = root / "derivatives" / "fmriprep" / "sub-01" / "ses-A"
    ses.mkdir()
    func.rename(ses / "func")
    (root / "sub-01" / "ses-A").mkdir()
    raw.rename(root / "sub-01" / "ses-A" / "func")
    (run,) = find_runs(root, space=SPACE)
    assert (run.subject, run.session, run.task, run.run) == ("01", "A", "look", 3)
    assert run.bold.name == f"sub-01_ses-A_task-look_acq-mb4_rec-norm_run-03_echo-1_space-{SPACE}_res-2_desc-preproc_bold.nii.gz"
    assert run.mask.name == f"sub-01_ses-A_task-look_acq-mb4_rec-norm_run-03_echo-1_space-{SPACE}_res-2_desc-brain_mask.nii.gz"
    assert run.events.name == "sub-01_ses-A_task-look_acq-mb4_rec-norm_run-03_events.tsv"
    assert run.sidecar.name.endswith("_res-2_desc-preproc_bold.json")
    assert load_run(run).n_volumes == 12
    assert find_runs(root, space=f"{SPACE}:res-2") == [run]
    # a space that names another resolution is not found, and the message lists what is there
    with pytest.raises(CortexflowInputError, match=rf"space '{SPACE}:res-1'.*there are in: space-{SPACE}:res-2 task-look"):
        find_runs(root, space=f"{SPACE}:res-1")


def test_two_resolutions_of_one_run_need_a_choice(tmp_path):
    root = make_dataset(tmp_path)
    func = root / "derivatives" / "fmriprep" / "sub-01" / "func"
    for p in list(func.glob(f"*_space-{SPACE}_*")):
        shutil.copy(p, p.with_name(p.name.replace(f"_space-{SPACE}_", f"_space-{SPACE}_res-2_")))
    with pytest.raises(CortexflowInputError, match=rf"several variants.*Fix: pick one in data.space .*{SPACE}:res-2"):
        find_runs(root)
    (run,) = find_runs(root, space=f"{SPACE}:res-2")
    assert "_res-2_" in run.bold.name and "_res-2_" in run.mask.name


def test_stim_id_column_of_bep044_is_read(tmp_path):
    root = make_dataset(tmp_path)
    run = _only_run(root)
    events = pd.read_csv(run.events, sep="\t")
    events.rename(columns={"stimulus_id": "stim_id"}).to_csv(run.events, sep="\t", index=False, na_rep="n/a")
    loaded = load_run(run, stimulus_ids=set(events["stimulus_id"].dropna()))
    assert list(loaded.events["stimulus_id"].dropna()) == list(events.sort_values("onset")["stimulus_id"].dropna())


def test_events_cut_mid_line_are_refused_with_the_line(tmp_path):
    root = make_dataset(tmp_path)
    run = _only_run(root)
    text = run.events.read_text()
    run.events.write_text(text.rstrip("\n")[:-6])  # an interrupted copy: the last row loses its last fields
    with pytest.raises(CortexflowInputError, match=r"_events.tsv: line \d+ of the events file has \d fields but the "
                                                   r"header has \d.*cut off mid-line"):
        load_run(run)
