"""benchmarks/run_timeline.py reads Snakemake's log: jobs paired by jobid, overlaps counted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run_timeline.py"
spec = importlib.util.spec_from_file_location("run_timeline", SCRIPT)
timeline = importlib.util.module_from_spec(spec)
sys.modules["run_timeline"] = timeline  # its dataclass looks its module up while being defined
spec.loader.exec_module(timeline)

# Snakemake 9's output, trimmed: simulate alone (10 s), then two trainings side by side (one of
# them with 2 threads), a job that never finished, and the summary
LOG = """Building DAG of jobs...
[Sat Dec  5 10:00:00 2026]
localrule simulate_study:
    output: data/sim/bids/dataset_description.json
    jobid: 2
    threads: 2
    resources: tmpdir=/tmp
Shell command: cortexflow simulate-study
[Sat Dec  5 10:00:10 2026]
Finished jobid: 2 (Rule: simulate_study)
1 of 5 steps (20%) done
[Sat Dec  5 10:00:10 2026]
localrule train_decoder:
    jobid: 7
    reason: Missing output files
    wildcards: subject=01, modality=image, train_seed=0
    resources: tmpdir=/tmp
[Sat Dec  5 10:00:11 2026]
rule train_decoder:
    jobid: 8
    wildcards: subject=02, modality=image, train_seed=0
    threads: 2
[Sat Dec  5 10:00:12 2026]
localrule sample:
    jobid: 9
[Sat Dec  5 10:00:40 2026]
Finished jobid: 7 (Rule: train_decoder)
[Sat Dec  5 10:01:10 2026]
Finished jobid: 8 (Rule: train_decoder)
[Sat Dec  5 10:01:10 2026]
localrule summarize:
    jobid: 1
[Sat Dec  5 10:01:20 2026]
Finished jobid: 1 (Rule: summarize)
"""


def test_jobs_are_paired_by_jobid_and_the_unfinished_one_left_out():
    jobs = timeline.parse_log(LOG.splitlines())
    assert [(j.rule, j.seconds, j.threads) for j in jobs] == [
        ("simulate_study", 10, 2), ("train_decoder", 30, 1), ("train_decoder", 59, 2), ("summarize", 10, 1)]
    assert jobs[1].wildcards == "subject=01, modality=image, train_seed=0"


def test_the_summary_counts_overlap_cores_and_milestones():
    s = timeline.summarize(timeline.parse_log(LOG.splitlines()), cores=2)
    assert s["wall_s"] == 80 and s["job_s"] == 109 and s["jobs"] == 4
    # simulate 10 s x 2 threads; 1 s of job 7 alone; 29 s of both (3 threads, capped at 2 cores);
    # 30 s of job 8 alone (2 threads); summarize 10 s
    assert s["busy_core_s"] == pytest.approx(20 + 1 + 58 + 60 + 10)
    assert s["running"] == {1: 51, 2: 29}
    assert s["rules"]["train_decoder"]["jobs"] == 2 and s["rules"]["train_decoder"]["max_s"] == 59
    assert s["milestones"]["last decoder training ends"] == pytest.approx(70 / 60)
    assert "| train_decoder | 2 | 1.5 |" in timeline.report(s, "log")
