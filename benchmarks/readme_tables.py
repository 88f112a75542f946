"""Print the result tables of docs/results.md (markdown) from one finished run.

    .venv/bin/python benchmarks/readme_tables.py [results/sim]

Reads summary.parquet and comparisons.parquet of the run and prints, per
modality, every method's value per subject (decoder methods, baselines, the
noise-free linear decoder, chance, the VAE ceiling), then each decoder method's
paired difference (95% bootstrap interval over items and training seeds) against
every baseline, marking the strongest baseline of each metric (best mean on the
evaluated items, as summary.md does). Nothing is computed here that the
workflow did not compute: docs/results.md copies these tables (it was the
README's, hence the name) so that they can be regenerated from a fresh
`make run` and checked against it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from cortexflow.evaluation.evaluate import LOWER_IS_BETTER, is_baseline_method, is_decoder_method, method_order
from cortexflow.evaluation.summary import best_baselines


def _value(x: float) -> str:
    return f"{x:.3f}".replace("0.", ".", 1) if abs(x) < 1 else f"{x:.3f}"


def _diff(x: float) -> str:
    return f"{x:+.3f}"


def values_table(summary: pd.DataFrame, modality: str) -> list[str]:
    block = summary[summary["modality"] == modality]
    subjects = sorted(block["subject"].unique())
    metrics = list(dict.fromkeys(block["metric"]))
    lines = ["| method | " + " | ".join(f"{m}{' ↓' if m in LOWER_IS_BETTER else ''} (" + " / ".join(
        f"sub-{s}" for s in subjects) + ")" for m in metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for method in method_order(block["method"].unique()):
        cells = []
        for metric in metrics:
            v = block[(block["method"] == method) & (block["metric"] == metric)].set_index("subject")["value"]
            cells.append(" / ".join(_value(v[s]) if s in v else "–" for s in subjects))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def differences_table(summary: pd.DataFrame, comparisons: pd.DataFrame, modality: str) -> list[str]:
    best = best_baselines(summary[summary["modality"] == modality])
    strongest = {(r.subject, r.metric): r.baseline for r in best.itertuples()}
    block = comparisons[(comparisons["modality"] == modality) & comparisons["method_a"].map(is_decoder_method)
                        & comparisons["method_b"].map(is_baseline_method)]
    lines = ["| subject | metric | comparison | difference [95% CI] | |", "|---|---|---|---|---|"]
    for r in block.sort_values(["subject", "metric", "method_a", "method_b"], kind="stable").itertuples():
        sign = -1 if r.metric in LOWER_IS_BETTER else 1
        verdict = ("better" if sign * r.ci_low > 0 and sign * r.ci_high > 0 else
                   "worse" if sign * r.ci_low < 0 and sign * r.ci_high < 0 else "no difference")
        mark = " (strongest)" if strongest.get((r.subject, r.metric)) == r.method_b else ""
        lines.append(f"| sub-{r.subject} | {r.metric} | {r.method_a} − {r.method_b}{mark} | "
                     f"{_diff(r.diff)} [{_diff(r.ci_low)}, {_diff(r.ci_high)}] | {verdict} |")
    return lines


def main(argv: list[str]) -> None:
    results = Path(argv[0] if argv else "results/sim")
    summary = pd.read_parquet(results / "summary.parquet")
    comparisons = pd.read_parquet(results / "comparisons.parquet")
    for modality in ("image", "audio", "text"):
        if (summary["modality"] == modality).any():
            print(f"## {modality}\n")
            print("\n".join(values_table(summary, modality)) + "\n")
            print("\n".join(differences_table(summary, comparisons, modality)) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
