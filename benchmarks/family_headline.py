"""Print the per-family headline of docs/analysis-plan.md (section 6) from one finished run.

    .venv/bin/python benchmarks/family_headline.py [results/sim]
    .venv/bin/python benchmarks/family_headline.py results/sim --replication results/rep2028

With ``--replication`` it counts the plan's statements of both runs side by side
(section 8): S1 (SSIM) and S2 (``two_way_id_feature``,
``two_way_id_within_category``) agree when the verdicts are equal; S3
(``two_way_id_pixel``, ``two_way_id_lowpass``) when both are "not worse" (no
interval below zero against any baseline) or both are not. It prints the
count per statement metric and every statement that differs.

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


S3_METRICS = ("two_way_id_pixel", "two_way_id_lowpass")


def statement_agreement(study: pd.DataFrame, replication: pd.DataFrame, metrics=METRICS,
                        modality: str = "image") -> pd.DataFrame:
    """One row per (subject, family, metric, method) present in both runs: each run's verdict, the
    statement's form of it (S3: ``not worse`` / ``worse``) and whether the two agree."""
    keys = ["subject", "family", "metric", "method"]
    verdicts = []
    for table in (study, replication):
        st = family_statements(table)
        st = st[(st["modality"] == modality) & st["metric"].isin(metrics)]
        verdicts.append(st[keys + ["verdict"]])
    both = verdicts[0].merge(verdicts[1], on=keys, suffixes=("_study", "_replication"))
    for run in ("study", "replication"):
        s3 = both["metric"].isin(S3_METRICS)
        both[f"statement_{run}"] = both[f"verdict_{run}"].where(
            ~s3, both[f"verdict_{run}"].map(lambda v: "worse" if v == "trails" else "not worse"))
    both["agrees"] = both["statement_study"] == both["statement_replication"]
    return both


def agreement_lines(both: pd.DataFrame) -> list[str]:
    lines = ["| metric | statements | agree |", "|---|---:|---:|"]
    for metric, group in both.groupby("metric", sort=False):
        lines.append(f"| {metric} | {len(group)} | {int(group['agrees'].sum())} |")
    lines.append(f"| all | {len(both)} | {int(both['agrees'].sum())} |")
    differ = both[~both["agrees"]]
    if len(differ):
        lines += ["", "Differing statements (study -> replication):"]
        lines += [f"- {r.family}, {r.metric}, sub-{r.subject} {r.method}: {r.statement_study} -> "
                  f"{r.statement_replication}" for r in differ.itertuples()]
    return lines


def main(argv: list[str]) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", default="results/sim")
    ap.add_argument("--replication", help="a second run's results folder: count the statements that agree")
    args = ap.parse_args(argv)
    table = pd.read_parquet(Path(args.results) / "summary_by_category.parquet")
    if args.replication is None:
        print("\n".join(headline_table(table)))
        return
    other = pd.read_parquet(Path(args.replication) / "summary_by_category.parquet")
    print("\n".join(agreement_lines(statement_agreement(table, other))))


if __name__ == "__main__":
    main(sys.argv[1:])
