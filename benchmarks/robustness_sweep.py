"""How the image decoder's margin over the strongest baseline moves with the study's SNR.

For each single-trial SNR level (the simulator's ``simulate.beta_snr``, the one key
that scales the study's difficulty) this runs the real workflow, end to end, on a
study of its own (``results/<prefix>-snr<level>/``, e.g. sweep-snr0p25: simulation, GLM, ROIs, VAE,
baselines, DiT, sampling, evaluation) with the default design and a partial
config of the sweep's own (image only; ``--subjects`` subjects; ``--seeds``
training seeds). It then reads each study's comparisons.parquet and writes, per
level and subject, the measured test-repeat ncsnr of the visual ROI and the
paired difference (with the workflow's 95% bootstrap interval over items and
seeds) of the DiT (one sample, mean of 8) against the strongest baseline of
each metric, on SSIM and on the independent-feature two-way identification:

    .venv/bin/python benchmarks/robustness_sweep.py --levels 0.25 0.5 1.0 \\
        [--subjects 1] [--seeds 1] [--cores 2] [--out results/robustness]

Writes ``robustness.csv``, ``robustness.md`` (the table) and ``robustness.png``
(difference against level, one panel per metric) under ``--out``. Not part of
``make run``: each level is a study of its own (measured cost in docs/results.md,
"Robustness across SNR"). Rerunning reuses every finished study (Snakemake's
cache), so adding a level costs only that level. As in the workflow, the
strongest baseline is picked on the evaluated items (the most generous choice
for the baselines).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cortexflow import _io

REPO = Path(__file__).resolve().parents[1]
METRICS = ("ssim", "two_way_id_feature")
log = logging.getLogger("robustness_sweep")


def study_name(prefix: str, level: float) -> str:
    return f"{prefix}-snr{level:g}".replace(".", "p")  # study names allow no dots: snr0p25


def sweep_config(study: str, level: float, subjects: int, seeds: int) -> dict:
    """The partial config of one level: its keys replace config.yaml's, everything else is the default study."""
    return {"study": study, "simulate": {"beta_snr": float(level), "subjects": int(subjects)},
            "data": {"modalities": ["image"]}, "decoder": {"image": {"seeds": int(seeds)}}}


def run_level(study: str, config: dict, workdir: Path, cores: int, profile: str, base_config: Path | None) -> float:
    """Run the workflow to this study's summary; seconds it took (near 0 when Snakemake finds it done)."""
    configfile = workdir / f"{study}.json"  # JSON is YAML: Snakemake reads it as a config file
    _io.save_json(configfile, config)
    results = f"results/{study}"
    cmd = [sys.executable, "-m", "snakemake", f"{results}/summary.parquet", f"{results}/comparisons.parquet",
           "--cores", str(cores), "--configfile", *([str(base_config.resolve())] if base_config else []),
           str(configfile.resolve())]
    if profile:
        cmd += ["--workflow-profile", profile]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log.info("%s: %s", study, " ".join(cmd))
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{study}: snakemake exited {proc.returncode}; see results/{study}/logs/ and .snakemake/log/")
    return time.perf_counter() - start


def visual_ncsnr(study: str) -> dict[str, float]:
    """Median test-repeat ncsnr of the Visual network's voxels, per subject."""
    from cortexflow.evaluation.summary import ncsnr_table

    datasets = sorted(str(p) for p in (REPO / "results" / study / "dataset").glob("sub-*/image"))
    table = ncsnr_table(datasets)
    visual = table[table["region"].str.lower() == "visual"]
    return {str(r.subject): float(r.ncsnr_median) for r in visual.itertuples()}


def level_rows(study: str, level: float) -> list[dict]:
    """Per subject, decoder method and metric: the strongest baseline and the paired difference to it."""
    from cortexflow.evaluation.evaluate import is_decoder_method
    from cortexflow.evaluation.summary import best_baselines

    results = REPO / "results" / study
    summary = pd.read_parquet(results / "summary.parquet")
    comparisons = pd.read_parquet(results / "comparisons.parquet")
    summary = summary[summary["modality"] == "image"]
    best = best_baselines(summary)
    ncsnr = visual_ncsnr(study)
    rows = []
    for b in best[best["metric"].isin(METRICS)].itertuples():
        methods = sorted(m for m in comparisons["method_a"].unique() if is_decoder_method(m))  # dit, dit_mean8
        for method in methods:
            hit = comparisons[(comparisons["subject"] == b.subject) & (comparisons["modality"] == "image")
                              & (comparisons["metric"] == b.metric) & (comparisons["method_a"] == method)
                              & (comparisons["method_b"] == b.baseline)]
            if hit.empty:
                continue
            c = hit.iloc[0]
            value = summary[(summary["subject"] == b.subject) & (summary["metric"] == b.metric)
                            & (summary["method"].isin([method, b.baseline]))].set_index("method")["value"]
            rows.append({"beta_snr": level, "subject": str(b.subject), "ncsnr_visual": ncsnr.get(str(b.subject)),
                         "metric": b.metric, "method": method, "value": float(value[method]),
                         "baseline": b.baseline, "baseline_value": float(value[b.baseline]),
                         "diff": float(c["diff"]), "ci_low": float(c["ci_low"]), "ci_high": float(c["ci_high"])})
    return rows


def markdown(table: pd.DataFrame) -> str:
    lines = ["| beta_snr | subject | visual ncsnr | metric | method | value | strongest baseline | "
             "difference [95% CI] |", "|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.beta_snr:g} | sub-{r.subject} | {r.ncsnr_visual:.2f} | {r.metric} | {r.method} | "
                     f"{r.value:.3f} | {r.baseline} {r.baseline_value:.3f} | "
                     f"{r.diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}] |")
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], METRICS):
        block = table[table["metric"] == metric]
        for (subject, method), group in block.groupby(["subject", "method"], sort=True):
            group = group.sort_values("beta_snr")
            x = group["beta_snr"].to_numpy(float)
            y = group["diff"].to_numpy(float)
            err = np.stack([y - group["ci_low"].to_numpy(float), group["ci_high"].to_numpy(float) - y])
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"sub-{subject} {method}")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        levels = sorted(block["beta_snr"].unique())
        ax.set_xticks(levels, [f"{v:g}" for v in levels])
        ax.minorticks_off()
        ax.set_xlabel("single-trial SNR (simulate.beta_snr)")
        ax.set_ylabel(f"DiT − strongest baseline, {metric}")
        ax.set_title(metric)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with _io.atomic_write(out) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", type=float, nargs="+", default=[0.25, 0.5, 1.0],
                        help="single-trial SNR levels (simulate.beta_snr); the default study is 0.5")
    parser.add_argument("--subjects", type=int, default=1, help="simulated subjects per level")
    parser.add_argument("--seeds", type=int, default=1, help="image decoder training seeds per subject")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--prefix", default="sweep", help="study names are <prefix>-snr<level>")
    parser.add_argument("--profile", default="workflow/profiles/default", help="Snakemake workflow profile")
    parser.add_argument("--base-config", type=Path, default=None,
                        help="a partial config applied before the sweep's own (e.g. tests/configs/tiny.yaml for a "
                             "smoke run); default: config.yaml alone")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "robustness",
                        help="where the table and plot go (default results/robustness/, beside the studies)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if any(level <= 0 for level in args.levels):
        raise SystemExit("--levels must be positive (beta_snr is an amplitude ratio)")

    args.out.mkdir(parents=True, exist_ok=True)
    rows, costs = [], {}
    for level in sorted(args.levels):
        study = study_name(args.prefix, level)
        costs[study] = run_level(study, sweep_config(study, level, args.subjects, args.seeds), args.out,
                                 args.cores, args.profile, args.base_config)
        log.info("%s: done in %.0f s", study, costs[study])
        rows += level_rows(study, level)
    table = pd.DataFrame(rows).sort_values(["metric", "method", "subject", "beta_snr"]).reset_index(drop=True)
    with _io.atomic_write(args.out / "robustness.csv") as tmp:
        table.to_csv(tmp, index=False)
    text = markdown(table)
    with _io.atomic_write(args.out / "robustness.md") as tmp:
        tmp.write_text(text)
    plot(table, args.out / "robustness.png")
    print(text)
    for study, seconds in costs.items():
        print(f"{study}: {seconds / 60:.1f} min (this invocation)")
    print(f"wrote {args.out}/robustness.csv, robustness.md, robustness.png")


if __name__ == "__main__":
    main()
