"""The cross_subject target: its DAG (and that `rule all` leaves it out), and a
tiny end-to-end run that writes the data-efficiency curve."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from test_workflow_dag import TINY, copy_repo, scheduled, snakemake

XSUB = "tests/configs/tiny_cross_subject.yaml"
XSUB_RULES = {"train_shared_decoder", "cross_subject_fit", "cross_subject_curve", "cross_subject"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("xsub") / "repo")


def test_cross_subject_builds_its_dag_and_rule_all_leaves_it_out(repo):
    jobs = scheduled(snakemake(repo, "cross_subject", "--cores", "1", "--dry-run", "--configfile", TINY, XSUB).stdout)
    # 2 subjects, each held out in turn: one shared decoder each (trained on the other),
    # and 2 budgets x 2 arms of fits each
    assert jobs["train_shared_decoder"] == 2
    assert jobs["cross_subject_fit"] == 8
    assert jobs["cross_subject_curve"] == 1 and jobs["cross_subject"] == 1
    default = scheduled(snakemake(repo, "--cores", "1", "--dry-run", "--configfile", TINY, XSUB).stdout)
    assert default and not (XSUB_RULES & set(default)), default
    (repo / "held.yaml").write_text(yaml.safe_dump({"cross_subject": {"held_out": ["02"], "runs": [1]}}))
    held = scheduled(snakemake(repo, "cross_subject", "--cores", "1", "--dry-run", "--configfile", TINY, XSUB,
                               "held.yaml").stdout)
    assert held["train_shared_decoder"] == 1 and held["cross_subject_fit"] == 2


@pytest.mark.slow
def test_tiny_cross_subject_run_writes_its_curve(repo):
    # one held-out subject: every rule runs, on both budgets (the DAG test above checks that each
    # subject is held out in turn by default); the other subject's half would add 5 of its 11
    # training processes, each ~5 s of imports (torch, torch._dynamo) on the test machine
    (repo / "held_02.yaml").write_text(yaml.safe_dump({"cross_subject": {"held_out": ["02"]}}))
    proc = snakemake(repo, "cross_subject", "--cores", "2", "--configfile", TINY, XSUB, "held_02.yaml",
                     timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    jobs = scheduled(proc.stdout + proc.stderr)
    assert jobs["train_shared_decoder"] == 1 and jobs["cross_subject_fit"] == 4, jobs
    out = repo / "results" / "tiny" / "cross_subject"
    curve = pd.read_parquet(out / "curve.parquet")
    assert set(curve["subject"]) == {"02"} and set(curve["runs"]) == {1, 2}
    assert {"shared:dit", "scratch:dit", "shared:dit_mean2", "ridge", "chance"} <= set(curve["method"])
    assert {"ssim", "two_way_id_feature"} <= set(curve["metric"])
    assert (curve["ci_low"] <= curve["value"]).all() and (curve["value"] <= curve["ci_high"]).all()
    # more runs, more trials
    trials = curve.groupby(["subject", "runs"])["n_trials"].first().unstack()
    assert (trials[2] > trials[1]).all()
    comps = pd.read_parquet(out / "comparisons.parquet")
    pairs = set(zip(comps["method_a"], comps["method_b"]))
    assert ("shared:dit", "scratch:dit") in pairs and ("shared:dit", "ridge") in pairs
    assert len(comps[(comps.method_a == "shared:dit") & (comps.method_b == "scratch:dit")]) == 1 * 2 * curve["metric"].nunique()
    assert "Paired differences" in (out / "curve.md").read_text()
    assert (out / "curve.png").stat().st_size > 1000
