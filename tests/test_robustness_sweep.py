"""benchmarks/robustness_sweep.py end to end on the tiny study: one workflow run per
SNR level, then the table, CSV and plot of the decoder against the strongest baseline."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from test_workflow_dag import TINY, copy_repo, workflow_env


@pytest.mark.slow
def test_sweep_runs_each_level_and_writes_the_table(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    out = tmp_path / "sweep"
    cmd = [sys.executable, str(repo / "benchmarks" / "robustness_sweep.py"), "--levels", "0.5", "4",
           "--base-config", str(repo / TINY), "--prefix", "t", "--cores", "2", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=repo, env=workflow_env(repo), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # one study per level, each with the sweep's SNR (and image only)
    for study, level in (("t-snr0p5", 0.5), ("t-snr4", 4.0)):
        assert (repo / "results" / study / "summary.parquet").is_file()
        assert sorted(p.name for p in (repo / "results" / study / "dataset" / "sub-01").iterdir()) == ["image"]
    table = pd.read_csv(out / "robustness.csv")
    assert set(table["beta_snr"]) == {0.5, 4.0}
    assert set(table["metric"]) == {"ssim", "two_way_id_feature"}
    assert {"dit", "dit_mean2"} <= set(table["method"])
    # the difference is the decoder's value minus the named baseline's, inside its interval
    assert (table["diff"] - (table["value"] - table["baseline_value"])).abs().max() < 1e-9
    assert ((table["ci_low"] <= table["diff"]) & (table["diff"] <= table["ci_high"])).all()
    # an 8x higher single-trial SNR gives the visual voxels a higher measured ncsnr
    ncsnr = table.groupby("beta_snr")["ncsnr_visual"].first()
    assert ncsnr[4.0] > 2 * ncsnr[0.5]
    assert (out / "robustness.png").stat().st_size > 10_000
    assert "| 0.5 | sub-01 |" in (out / "robustness.md").read_text()
