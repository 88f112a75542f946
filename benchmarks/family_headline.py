"""Print the per-family headline of docs/analysis-plan.md (section 6) from one finished run.

    .venv/bin/python benchmarks/family_headline.py [results/sim]

Reads ``summary_by_category.parquet`` (the summarize stage's per-family paired
differences of each decoder method against every baseline, intervals over
independent units) and prints, per family and statement metric, the verdict
for each subject and decoder method (``leads`` every baseline, ``trails`` one,
or ``ties``) with the paired difference against the closest baseline. Nothing
is computed here that the workflow did not compute: the verdicts are
``cortexflow.evaluation.summary.family_statements``, as in ``summary.md``; the
README's headline table and docs/results.md copy this output.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from cortexflow.evaluation.summary import family_statements

METRICS = ("ssim", "two_way_id_feature", "two_way_id_within_category", "two_way_id_pixel", "two_way_id_lowpass")


def _num(x: float) -> str:
    return f"{x:+.3f}".replace("0.", ".", 1).replace("-", "−")


def headline_table(table: pd.DataFrame, metrics=METRICS, modality: str = "image") -> list[str]:
    statements = family_statements(table)
    statements = statements[(statements["modality"] == modality) & statements["metric"].isin(metrics)]
    subjects = sorted(statements["subject"].unique())
    methods = sorted(statements["method"].unique(), key=lambda m: (m != "dit", m))
    columns = [(s, m) for s in subjects for m in methods]
    lines = ["| family (unit, n) | metric | " + " | ".join(f"sub-{s}: {m}" for s, m in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for (family, metric), group in statements.groupby(["family", "metric"], sort=False):
        first = group.iloc[0]
        cells = []
        for subject, method in columns:
            row = group[(group["subject"] == subject) & (group["method"] == method)]
            if row.empty:
                cells.append("")
                continue
            r = row.iloc[0]
            text = f"{r.verdict} {_num(r['diff'])} [{_num(r.ci_low)}, {_num(r.ci_high)}] vs `{r.baseline}`"
            cells.append(f"**{text}**" if r.verdict != "ties" else text)
        lines.append(f"| {family} ({first.resample_unit}, {int(first.n)}) | {metric} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str]) -> None:
    results = Path(argv[0] if argv else "results/sim")
    table = pd.read_parquet(results / "summary_by_category.parquet")
    print("\n".join(headline_table(table)))


if __name__ == "__main__":
    main(sys.argv[1:])
