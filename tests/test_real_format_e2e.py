"""A dress rehearsal in real formats: the tiny workflow end to end on a study named and filled as
fMRIPrep 23+ and a real experiment write it (data.source bids).

The dataset is the tiny config's simulated study re-laid by tests/fmriprep_fixture.py: two
sessions (the two image runs are run-01 of ses-01 and of ses-02), ``res-2`` MNI outputs with
``T1w`` and ``fsaverage`` outputs and ``boldref`` images beside them, fMRIPrep's confounds
columns (``n/a`` first rows, cosine_XX, a_comp_cor_XX, non_steady_state_outlier_00) with their
.json, and events with a fixation row that ends after the last volume, a button press with
duration ``n/a`` and an extra column. A few minutes on CPU, like tests/test_workflow_e2e.py.
"""

from __future__ import annotations

import pandas as pd
import pytest

from fmriprep_fixture import real_format_study
from test_workflow_dag import TINY, copy_repo, overlay, scheduled, snakemake

from cortexflow.config import load_config
from cortexflow.data.simulate import simulate_study

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    base = tmp_path_factory.mktemp("rehearsal")
    repo = copy_repo(base / "repo")
    sim = simulate_study(base / "sim", load_config(repo / TINY)["simulate"], seed=0)
    bids = real_format_study(sim, base / "bids", {("images", 1): ("01", 1), ("images", 2): ("02", 1)})
    # one image decoder (the tiny config trains two): the seeds' aggregation is tested end to end
    # in test_workflow_e2e.py, this run tests the formats
    real = overlay(repo, "real_format.yaml", {"study": "rehearsal", "data": {
        "source": "bids", "bids_root": str(bids), "space": "MNI152NLin2009cAsym:res-2"},
        "decoder": {"image": {"seeds": 1}}})
    proc = snakemake(repo, "--cores", "2", "--configfile", TINY, real, "--workflow-profile", "workflow/profiles/default",
                     timeout=1800, check=False)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    # the study check runs while the DAG is built, before any job, in a run as in a dry run (whose
    # output test_study_inputs_dag.py checks): its report is in the run's output
    return repo, bids, proc.stdout + proc.stderr, real


def test_the_real_format_study_runs_end_to_end(rehearsal):
    repo, _, _, _ = rehearsal
    summary = pd.read_parquet(repo / "results/rehearsal/summary.parquet")
    assert set(summary["modality"]) == {"image", "audio", "text"}
    assert {"dit", "ridge", "chance"} <= set(summary["method"])
    assert "noise_free_linear" not in set(summary["method"])  # a real study has no ground truth


def test_sessions_keep_their_names_and_clipped_events_are_logged(rehearsal):
    repo, bids, check_output, _ = rehearsal
    betas = sorted(p.name for p in (repo / "results/rehearsal/betas/sub-01").glob("*_betas.nii.gz"))
    assert betas == ["sub-01_ses-01_task-audio_run-01_betas.nii.gz", "sub-01_ses-01_task-images_run-01_betas.nii.gz",
                     "sub-01_ses-01_task-text_run-01_betas.nii.gz", "sub-01_ses-02_task-images_run-01_betas.nii.gz"]
    trials = pd.read_parquet(repo / "results/rehearsal/rois/sub-01/sub-01_task-images_trials.parquet")
    assert list(trials.drop_duplicates("session")["session"]) == ["01", "02"]  # sessions in order, both run 1
    assert set(trials["run"]) == {1}
    # the fixation that outlasts each run: cut, with a warning naming the events file, in the job's log
    log = (repo / "results/rehearsal/logs/glm_betas/sub-01_ses-02_task-images_run-01.log").read_text()
    assert "sub-01_ses-02_task-images_run-01_events.tsv" in log and "cut there" in log
    assert "cortexflow check: 4 runs of the study checked" in check_output and "cut there" in check_output


def test_a_second_run_reruns_nothing(rehearsal):
    repo, _, _, real = rehearsal
    proc = snakemake(repo, "--cores", "1", "--dry-run", "--configfile", TINY, real, timeout=600)
    assert scheduled(proc.stdout) == {}, proc.stdout[-3000:]
