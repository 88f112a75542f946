"""The tiny config end to end with ``device: cuda`` (skipped without a GPU).

The CPU tests simulate a CUDA device (tests/test_device_and_batching.py); this
one runs the real workflow on a real GPU: every training, encoding and
sampling stage on CUDA, and the same summary as on CPU. benchmarks/gpu_smoke.sh
runs it with the timing figures the README quotes.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from test_workflow_dag import TINY, copy_repo, snakemake

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]


def test_tiny_study_runs_on_cuda(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    proc = snakemake(repo, "--cores", "4", "--configfile", TINY, "--config", "device=cuda",
                     "--workflow-profile", "workflow/profiles/default", timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    logs = "\n".join(p.read_text() for p in (repo / "results/tiny/logs").rglob("*.log"))
    summary = pd.read_parquet(repo / "results/tiny/summary.parquet")
    assert {"image", "audio", "text"} <= set(summary["modality"])
    assert summary["value"].notna().mean() > 0.9
    assert "trainer: cuda" in logs  # the trainer names its device in its first log line
