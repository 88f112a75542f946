"""What the study brings is part of the DAG: the atlas, masks and GLMsingle files are rule inputs,
a real study is checked while the DAG is built, and sessions keep their BIDS names.

Dry runs on the tiny config in a copy of the repository (tests/test_workflow_dag.py's helpers).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import nibabel as nib
import pandas as pd
import pytest

from fmriprep_fixture import real_format_study
from test_workflow_dag import TINY, copy_repo, fake_complete_run, overlay, scheduled, snakemake

from cortexflow.data.simulate import simulate_study

SIM = {"subjects": 1, "modalities": ["image"], "image_train": 24, "image_test": 4, "runs": {"image": 2}, "image_size": 16}
LABELS = {"source": "labels", "labels_img": "atlas/visual_dseg.nii.gz", "labels_table": "atlas/visual_dseg.tsv",
          "regions": {"image": ["V1"], "audio": ["A1"], "text": ["STS"]}}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return copy_repo(tmp_path_factory.mktemp("inputs") / "repo")


def _dry(repo: Path, *configs: str, check: bool = True, forceall: bool = False):
    args = ["--cores", "1", "--dry-run", "--printshellcmds", "--configfile", TINY, *configs]
    return snakemake(repo, *args, *(["--forceall"] if forceall else []), check=check, timeout=600)


def test_missing_atlas_and_glmsingle_files_stop_the_dry_run_naming_key_and_path(repo):
    proc = _dry(repo, overlay(repo, "labels.yaml", {"rois": LABELS}), check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "rois.labels_img" in text and "atlas/visual_dseg.nii.gz" in text, text[-3000:]
    masks = {"source": "mask", "mask_img": {"image": "masks/v1.nii.gz", "audio": "masks/a1.nii.gz",
                                             "text": "masks/sts.nii.gz"}}
    proc = _dry(repo, overlay(repo, "masks.yaml", {"rois": masks}), check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and re.search(r"rois\.mask_img\.(image|audio|text)", text) and "masks/" in text
    glmsingle = {"data": {"glmsingle": "glmsingle/sub-{subject}/task-{task}/TYPED_FITHRF_GLMDENOISE_RR.npy"}}
    proc = _dry(repo, overlay(repo, "glmsingle_missing.yaml", glmsingle), check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "data.glmsingle" in text and "glmsingle/sub-01/task-" in text


def test_editing_the_atlas_reruns_the_roi_extraction_and_what_follows(repo):
    (repo / "atlas").mkdir(exist_ok=True)
    for name in ("visual_dseg.nii.gz", "visual_dseg.tsv"):
        (repo / "atlas" / name).write_text("a dry run does not read it\n")
    labels = overlay(repo, "labels.yaml", {"rois": LABELS})
    fake_complete_run(repo, TINY, labels)
    assert scheduled(_dry(repo, labels).stdout) == {}
    atlas = repo / "atlas" / "visual_dseg.nii.gz"
    atlas.write_text("an edited atlas\n")  # new content (Snakemake compares checksums of newer inputs)
    later = time.time() + 60
    os.utime(atlas, (later, later))
    jobs = scheduled(_dry(repo, labels).stdout)
    assert {"extract_rois", "make_dataset", "fit_baseline", "train_decoder", "sample", "evaluate"} <= set(jobs), jobs
    assert "glm_betas" not in jobs and "simulate_study" not in jobs and "pretrain_vae" not in jobs
    assert jobs["extract_rois"] == jobs["make_dataset"]  # every task: the atlas serves every modality


@pytest.fixture(scope="module")
def sessions_study(tmp_path_factory) -> Path:
    """A small simulated study re-laid in fMRIPrep 23's naming: its two image runs are run-01 of ses-01 and ses-02."""
    base = tmp_path_factory.mktemp("real_format")
    sim = simulate_study(base / "sim", SIM, seed=4)
    return real_format_study(sim, base / "bids", {("images", 1): ("01", 1), ("images", 2): ("02", 1)})


def _bids_config(repo: Path, root: Path, name: str) -> str:
    return overlay(repo, name, {"study": "sessions", "data": {
        "source": "bids", "bids_root": str(root), "space": "MNI152NLin2009cAsym:res-2", "modalities": ["image"]}})


def test_sessions_keep_their_entities_in_every_derived_name(repo, sessions_study):
    out = _dry(repo, _bids_config(repo, sessions_study, "sessions.yaml"), forceall=True)
    text = out.stdout + out.stderr
    assert "cortexflow check: 2 runs of the study checked" in text  # the check ran while the DAG was built
    betas = sorted(set(re.findall(r"results/sessions/betas/sub-01/(\S+?)_betas\.nii\.gz", out.stdout)))
    assert betas == ["sub-01_ses-01_task-images_run-01", "sub-01_ses-02_task-images_run-01"], betas
    assert "logs/glm_betas/sub-01_ses-02_task-images_run-01.log" in out.stdout
    assert "r01" not in " ".join(betas)
    assert scheduled(out.stdout)["glm_betas"] == 2 and "check_study" not in scheduled(out.stdout)


def test_a_broken_run_stops_the_dry_run_with_the_check_report(repo, sessions_study, tmp_path):
    import shutil

    root = Path(shutil.copytree(sessions_study, tmp_path / "bids"))
    events = root / "sub-01" / "ses-02" / "func" / "sub-01_ses-02_task-images_run-01_events.tsv"
    table = pd.read_csv(events, sep="\t", dtype=str, keep_default_na=False)
    table.loc[table["stimulus_id"] != "n/a", "stimulus_id"] = "img-unknown"
    table.to_csv(events, sep="\t", index=False)
    bold = next((root / "derivatives/fmriprep/sub-01/ses-01/func").glob("*res-2_desc-preproc_bold.nii.gz"))
    assert nib.load(bold).shape[3] > 0
    proc = _dry(repo, _bids_config(repo, root, "broken.yaml"), check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"ERROR   {events}" in text and "img-unknown" in text and re.search(r"the study has \d+ error\(s\)", text), text[-3000:]
    # the other session's run is fine, and its clipped fixation is a warning, not an error
    assert "WARNING" in text and "cut there" in text
