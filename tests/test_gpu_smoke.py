"""The GPU check (benchmarks/gpu_smoke.sh): the tiny config end to end with
``device: cuda`` (skipped without a GPU), and on the CPU the parts of the check
that need none: killing and resuming a training run, and the step measurement
at a small size, so that the script a GPU session runs is not untested.

The CPU tests simulate a CUDA device elsewhere (tests/test_device_and_batching.py);
the first test here runs the real workflow on a real GPU: every training,
encoding and sampling stage on CUDA, and the same summary as on CPU.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from test_workflow_dag import TINY, copy_repo, snakemake

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_checks  # noqa: E402


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
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


@pytest.mark.slow
def test_kill_and_resume_check_on_the_cpu(tmp_path):
    """gpu_checks kill-resume: train-decoder (its own process) gets SIGTERM after its first
    checkpoint, exits with 143, the rerun resumes at that step and finishes, and on the CPU
    the weights equal an uninterrupted run's."""
    table = tmp_path / "table.md"
    result = gpu_checks.kill_resume(tmp_path / "work", "cpu", steps=150, checkpoint_every=25, table=table)
    assert 25 <= result["stopped_at"] < 150 and result["identical"] and result["max_abs_diff"] == 0.0
    row = table.read_text()
    assert f"SIGTERM at step {result['stopped_at']} of 150, rerun resumed at {result['stopped_at']}" in row
    first = (tmp_path / "work" / "kill_resume_cpu" / "first.log").read_text()
    assert "Traceback" not in first  # a time limit is not reported as a bug


def test_step_measurement_at_small_size_on_the_cpu(tmp_path):
    """gpu_checks step: one training step's time, memory and FLOPs; the FLOPs counted in a
    training step are those of a forward and a backward pass (2 to 3 times the forward's)."""
    from torch.utils.flop_counter import FlopCounterMode

    from cortexflow.models.types import BrainData

    torch.set_num_threads(1)
    table = tmp_path / "table.md"
    result = gpu_checks.step("cpu", size="small", steps=2, table=table)
    assert result["batch"] == 8 and result["step_s"] > 0 and result["peak_memory_gib"] > 0
    assert result["achieved_tflops"] == pytest.approx(result["tflop_per_step"] / result["step_s"])
    assert result["bf16_peak_tflops"] is None and result["share_of_peak"] is None  # no peak for a CPU

    model, _, n_voxels = gpu_checks._small_model(torch.device("cpu"))
    z = torch.randn(8, *model.latent_shape)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.training_loss_latents(z, BrainData(voxels=torch.randn(8, n_voxels), prior=torch.randn_like(z)))
    ratio = result["tflop_per_step"] * 1e12 / counter.get_total_flops()
    assert 2.0 < ratio <= 3.0 + 1e-9
    assert "training step (CPU)" in table.read_text() and "TFLOP/s" in table.read_text()


def test_the_peak_table_and_the_smoke_script_parse():
    assert dict(gpu_checks.BF16_PEAK_TFLOPS)["H100"] == pytest.approx(989.4)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_smoke.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
