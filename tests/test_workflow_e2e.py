"""The whole workflow, end to end, on the tiny config (a few minutes on CPU).

From nothing (the simulated study is written by the workflow itself) to
results/tiny/summary.parquet, in a temporary copy of the repository; then a
second run must find nothing to do, and a decoder whose output is lost (a job
killed before it wrote it) must resume from its checkpoint instead of training
again. The tests run in file order and share one workflow run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from test_workflow_dag import TINY, copy_repo, scheduled, snakemake

pytestmark = pytest.mark.slow

SUMMARY_COLUMNS = ["subject", "modality", "method", "metric", "value", "ci_low", "ci_high", "n"]
COMPARISON_COLUMNS = ["subject", "modality", "metric", "method_a", "method_b", "diff", "ci_low", "ci_high", "n"]
# DESIGN.md, "Contracts that other parts rely on"
METRICS = {
    "image": {"pixcorr", "ssim", "two_way_id_pixel", "two_way_id_feature", "two_way_id_hog"},
    "audio": {"mel_corr", "two_way_id"},
    "text": {"cer", "two_way_id"},
}
DECODER = {"image": "dit", "audio": "dit", "text": "decoder"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("e2e") / "repo")
    proc = snakemake(repo, "--cores", "2", "--configfile", TINY, "--workflow-profile", "workflow/profiles/default",
                     timeout=400, check=False)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    return repo


def test_summary_has_every_subject_modality_method_and_metric(tiny_run):
    summary = pd.read_parquet(tiny_run / "results/tiny/summary.parquet")
    assert list(summary.columns)[: len(SUMMARY_COLUMNS)] == SUMMARY_COLUMNS
    assert set(summary["modality"]) == set(METRICS)
    for modality, metrics in METRICS.items():
        rows = summary[summary["modality"] == modality]
        # the simulated study also has its noise ceiling (ridge on the noise-free responses)
        for method in (DECODER[modality], "ridge", "chance", "noise_ceiling"):
            found = set(rows.loc[rows["method"] == method, "metric"])
            assert metrics <= found, (modality, method, metrics - found)
    finite = summary.dropna(subset=["value", "ci_low", "ci_high"])
    assert len(finite) > 0.9 * len(summary)
    assert (finite["ci_low"] <= finite["value"] + 1e-9).all() and (finite["value"] <= finite["ci_high"] + 1e-9).all()
    assert (summary["n"] > 0).all()
    # chance is chance: two-way identification of shuffled pairs sits near 0.5
    chance = summary[(summary["method"] == "chance") & summary["metric"].str.startswith("two_way_id")]
    assert np.all(np.abs(chance["value"] - 0.5) < 0.25), chance


def test_comparisons_hold_decoder_against_ridge(tiny_run):
    comparisons = pd.read_parquet(tiny_run / "results/tiny/comparisons.parquet")
    assert list(comparisons.columns)[: len(COMPARISON_COLUMNS)] == COMPARISON_COLUMNS
    against_ridge = comparisons[comparisons["method_b"] == "ridge"]
    for modality in METRICS:
        assert DECODER[modality] in set(against_ridge.loc[against_ridge["modality"] == modality, "method_a"])
    assert (comparisons["ci_low"] <= comparisons["ci_high"]).all()


def test_report_files_exist(tiny_run):
    results = tiny_run / "results/tiny"
    markdown = (results / "summary.md").read_text()
    assert "ridge" in markdown
    figures = sorted((results / "figures").glob("*.png"))
    names = {f.name for f in figures}
    assert "metrics.png" in names and {f"sub-01_{m}.png" for m in METRICS} <= names
    for figure in figures:
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for log in ("simulate_study.log", "summarize.log"):
        assert (results / "logs" / log).stat().st_size > 0


def test_second_run_reruns_nothing(tiny_run):
    proc = snakemake(tiny_run, "--cores", "2", "--configfile", TINY, "--dry-run")
    assert scheduled(proc.stdout) == {}, proc.stdout[-3000:]


def test_lost_decoder_resumes_from_its_checkpoint(tiny_run):
    decoder = "results/tiny/models/sub-01_text_decoder.pt"
    log = tiny_run / "results/tiny/logs/train_decoder/sub-01_text.log"
    assert "resumed" not in log.read_text()  # the first run trained from scratch
    (tiny_run / decoder).unlink()
    proc = snakemake(tiny_run, decoder, "--cores", "2", "--configfile", TINY)
    assert scheduled(proc.stdout + proc.stderr) == {"train_decoder": 1}
    assert "resumed" in log.read_text() and (tiny_run / decoder).exists()
