"""The summarize stage: one table, one comparison table, a readable page, figures.

Concatenates the evaluate stage's per-subject files into
``results/<study>/summary.parquet`` and ``comparisons.parquet``, writes
``summary.md`` (methods side by side with their intervals, the paired
differences with a clear mark where the interval excludes zero, and decoded
sentences), and the figures the report shows.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from cortexflow import _io
from cortexflow.errors import CortexflowInputError
from cortexflow.evaluation import figures
from cortexflow.evaluation.evaluate import (COMPARISON_COLUMNS, LOWER_IS_BETTER, METRICS, SUMMARY_COLUMNS,
                                            EvaluationConfig, Recon, load_recon, method_order)

log = logging.getLogger("cortexflow.evaluation.summary")

RECON_NAME = re.compile(r"^sub-(?P<subject>[A-Za-z0-9]+)_(?P<modality>image|audio|text)$")


def _read_tables(paths: list[str], columns: list[str], what: str) -> pd.DataFrame:
    frames = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise CortexflowInputError(f"{what} file not found", path=path, fix="run the evaluate stage first")
        frame = pd.read_parquet(path)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise CortexflowInputError(f"{what} file lacks columns {missing}", path=path,
                                       fix="rerun the evaluate stage")
        frames.append(frame[columns])
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    table = pd.concat(frames, ignore_index=True)
    table["subject"] = table["subject"].astype(str)
    return table


def recon_identity(path: str | Path) -> tuple[str, str]:
    """(subject, modality) from a recon file name ``sub-<label>_<modality>.npz``."""
    match = RECON_NAME.match(Path(path).name.removesuffix(".npz"))
    if not match:
        raise CortexflowInputError("recon file name is not sub-<label>_<modality>.npz", path=path,
                                   fix="keep the sample stage's file names")
    return match["subject"], match["modality"]


# ------------------------------------------------------------------ markdown


def _fmt(value: float, signed: bool = False) -> str:
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _verdict(row) -> str:
    """Whether the paired interval excludes zero, and which method it favours."""
    if row.ci_low <= 0 <= row.ci_high:
        return "not significant"
    a_larger = row.diff > 0
    a_better = a_larger != (row.metric in LOWER_IS_BETTER)
    return f"**significant**: {row.method_a if a_better else row.method_b} better"


def metrics_markdown(summary: pd.DataFrame, comparisons: pd.DataFrame, confidence: float) -> list[str]:
    """Per subject x modality: methods as columns (mean [CI]), then the paired differences."""
    lines = []
    for (subject, modality), block in summary.groupby(["subject", "modality"], sort=True):
        methods = method_order(block["method"].unique())
        metric_names = [m for m in METRICS.get(modality, ()) if m in set(block.metric)]
        metric_names += sorted(set(block.metric) - set(metric_names))
        n = int(block["n"].max())
        lines += [f"## sub-{subject} · {modality} ({n} test items)", ""]
        rows = []
        for metric in metric_names:
            cells = [f"{metric} {'↓' if metric in LOWER_IS_BETTER else '↑'}"]
            for method in methods:
                hit = block[(block.metric == metric) & (block.method == method)]
                cells.append("–" if hit.empty else
                             f"{_fmt(hit.value.iloc[0])} [{_fmt(hit.ci_low.iloc[0])}, {_fmt(hit.ci_high.iloc[0])}]")
            rows.append(cells)
        lines += _markdown_table(["metric"] + methods, rows) + [""]
        comp = comparisons[(comparisons.subject == subject) & (comparisons.modality == modality)]
        if not comp.empty:
            lines += [f"Paired bootstrap differences over the same items ({confidence:.0%} CI):", ""]
            rows = [[f"{r.metric} {'↓' if r.metric in LOWER_IS_BETTER else '↑'}", f"{r.method_a} − {r.method_b}",
                     f"{_fmt(r.diff, True)} [{_fmt(r.ci_low, True)}, {_fmt(r.ci_high, True)}]", _verdict(r)]
                    for r in comp.itertuples()]
            lines += _markdown_table(["metric", "comparison", "difference [CI]", "verdict"], rows) + [""]
    return lines


def sentences_markdown(recon: Recon, subject: str, n_items: int) -> list[str]:
    methods = method_order(recon.methods)
    rows = [[_md_escape(recon.ids[i]), _md_escape(recon.truth[i])] + [_md_escape(recon.methods[m][i]) for m in methods]
            for i in range(min(n_items, len(recon.ids)))]
    return [f"## sub-{subject} · decoded sentences", ""] + _markdown_table(["id", "truth"] + methods, rows) + [""]


def build_markdown(study: str, summary: pd.DataFrame, comparisons: pd.DataFrame, text_recons: list[tuple[str, Recon]],
                   config: EvaluationConfig) -> str:
    lines = [
        f"# cortexflow results: {study}",
        "",
        f"Each cell is the mean over held-out test items with its {config.confidence:.0%} percentile bootstrap "
        f"interval over items ({config.n_boot} resamples). ↑: higher is better, ↓: lower is better.",
        "",
        "- `dit` / `decoder`: the brain decoder, one sample (`dit_mean<K>`: the mean of K samples, an estimate "
        "of the posterior mean).",
        "- `ridge`: ridge regression from voxels to the same targets (the linear baseline).",
        f"- `chance`: the decoder's outputs scored against other items' truths ({config.chance_permutations} "
        "random derangements); two-way identification is ≈ 0.5 here.",
        "- `ceiling`: the autoencoder's reconstruction of the true stimulus, the best a latent decoder can reach.",
        "- `noise_ceiling` (simulated study only): the ridge decoder fitted and applied on the simulator's "
        "noise-free responses of the same voxels, what linear decoding would reach without measurement noise.",
        "",
        "A comparison is marked significant when its paired interval excludes 0.",
        "",
    ]
    lines += metrics_markdown(summary, comparisons, config.confidence)
    for subject, recon in text_recons:
        lines += sentences_markdown(recon, subject, config.figure_items)
    return "\n".join(lines).rstrip() + "\n"


# -------------------------------------------------------------------- the stage


def summarize_stage(*, summaries: list[str], comparisons: list[str], recons: list[str], out_summary: str,
                    out_comparisons: str, out_markdown: str, out_figures: str, params: dict) -> None:
    """Concatenate the per-subject results; write summary tables, summary.md and figures.

    Figures (in ``out_figures``): ``metrics.png`` and one ``<recon name>.png`` per
    recon file (image grid, mel spectrograms, or sentence table).
    """
    config = EvaluationConfig.from_params(params)
    summary = _read_tables(summaries, SUMMARY_COLUMNS, "summary")
    comparison = _read_tables(comparisons, COMPARISON_COLUMNS, "comparisons")
    if summary.empty:
        raise CortexflowInputError("no summary rows to summarize", fix="pass the evaluate stage's summary files")
    summary = summary.sort_values(["subject", "modality", "method", "metric"], kind="stable", ignore_index=True)
    _io.save_parquet(out_summary, summary)
    _io.save_parquet(out_comparisons, comparison)
    loaded = []
    for path in recons:
        subject, modality = recon_identity(path)
        loaded.append((Path(path).name.removesuffix(".npz"), subject, modality, load_recon(path, modality)))
    text_recons = [(subject, recon) for _, subject, modality, recon in loaded if modality == "text"]
    study = Path(out_summary).resolve().parent.name
    with _io.atomic_write(out_markdown) as tmp:
        tmp.write_text(build_markdown(study, summary, comparison, text_recons, config), encoding="utf-8")
    with _io.atomic_dir(out_figures) as folder:
        figures.plot_metrics(summary, folder / "metrics.png", config.confidence)
        for stem, subject, modality, recon in loaded:
            figures.plot_recon(recon, modality, folder / f"{stem}.png", config.figure_items,
                               title=f"sub-{subject} {modality}")
    log.info("wrote %s (%d rows), %s (%d rows), %s and %d figures in %s", out_summary, len(summary),
             out_comparisons, len(comparison), out_markdown, len(loaded) + 1, out_figures)

