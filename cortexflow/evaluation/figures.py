"""Figures for the report: metrics with intervals, and what the decoders produced.

Every function computes nothing but a figure and saves it atomically as PNG.
Figures are built on ``matplotlib.figure.Figure`` directly rather than through
pyplot, so no display, no global backend switch and no figure registry to leak. The summarize stage names
files after their subject and modality (``sub-01_image_seed0.npz`` -> ``sub-01_image.png``) so
the workflow can declare them as outputs flagged with ``report()``.
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cortexflow import _io
from cortexflow.evaluation.evaluate import (LOWER_IS_BETTER, METRICS, MODALITIES, Recon, is_decoder_method,
                                            method_order)

log = logging.getLogger("cortexflow.evaluation.figures")

DPI = 120
METHOD_COLORS = {"dit": "#1f77b4", "decoder": "#1f77b4", "ridge": "#ff7f0e", "ridge_pt": "#ffbb78",
                 "ridge_pixels": "#d62728", "nn": "#8c564b", "retrieval": "#8c564b", "ngram_lm": "#e377c2",
                 "chance": "#7f7f7f", "ceiling": "#2ca02c", "noise_free_linear": "#98df8a"}
VARIANT_COLOR = "#17becf"  # decoder variants such as dit_mean8


def metric_label(metric: str) -> str:
    """The metric's name with the direction that is better."""
    return f"{metric} {'(lower is better)' if metric in LOWER_IS_BETTER else '(higher is better)'}"


def _title(prefix: str, description: str) -> str:
    return f"{prefix}: {description}" if prefix else description


def _save(fig, path: str | Path) -> Path:
    with _io.atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
    log.info("wrote %s", path)
    return Path(path)


def plot_metrics(summary: pd.DataFrame, path: str | Path, confidence: float = 0.95) -> Path:
    """One panel per modality x metric: each method's mean with its interval, one marker per subject."""
    modalities = [m for m in MODALITIES if m in set(summary["modality"])]
    if not modalities:
        raise ValueError("summary holds no known modality")
    panels = {mod: [m for m in METRICS[mod] if m in set(summary.loc[summary.modality == mod, "metric"])]
              + sorted(set(summary.loc[summary.modality == mod, "metric"]) - set(METRICS[mod])) for mod in modalities}
    ncols = max(len(v) for v in panels.values())
    fig = Figure(figsize=(3.1 * ncols, 2.9 * len(modalities)))
    axes = fig.subplots(len(modalities), ncols, squeeze=False)
    subjects = sorted(summary["subject"].astype(str).unique())
    markers = "osD^v<>px*"
    for r, modality in enumerate(modalities):
        for c in range(ncols):
            ax = axes[r, c]
            if c >= len(panels[modality]):
                ax.axis("off")
                continue
            metric = panels[modality][c]
            rows = summary[(summary.modality == modality) & (summary.metric == metric)]
            methods = method_order(rows["method"].unique())
            width = 0.7 / max(len(subjects), 1)
            for s_idx, subject in enumerate(subjects):
                for x, method in enumerate(methods):
                    row = rows[(rows.method == method) & (rows.subject.astype(str) == subject)]
                    if row.empty:
                        continue
                    row = row.iloc[0]
                    xpos = x - 0.35 + width * (s_idx + 0.5)
                    ax.errorbar(xpos, row.value, yerr=[[row.value - row.ci_low], [row.ci_high - row.value]],
                                fmt=markers[s_idx % len(markers)], color=METHOD_COLORS.get(method, VARIANT_COLOR if is_decoder_method(method) else "#9467bd"),
                                capsize=3, markersize=5, label=f"sub-{subject}" if x == 0 else None)
            ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right", fontsize=8)
            ax.set_title(f"{modality}: {metric_label(metric)}", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
            if len(subjects) > 1 and c == 0:
                ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"Mean over test items with {confidence:.0%} bootstrap intervals", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _image_for_display(image: np.ndarray) -> np.ndarray:
    image = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    return image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))


def image_mosaic(rows: list[np.ndarray], n: int, gap: int = 2) -> np.ndarray:
    """The first ``n`` images of each row ((N, C, H, W) in [0, 1]) tiled into one RGB canvas, rows
    top to bottom, ``gap`` white pixels between tiles: (rows x (H + gap) - gap, n x (W + gap) - gap, 3)."""
    h, w = rows[0].shape[-2:]
    canvas = np.ones((len(rows) * (h + gap) - gap, n * (w + gap) - gap, 3), dtype=np.float32)
    for r, images in enumerate(rows):
        for c in range(n):
            tile = _image_for_display(images[c])
            canvas[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = (
                tile[..., None] if tile.ndim == 2 else tile)
    return canvas


def _label_tiles(ax, row_names: list[str], ids, tile: tuple[int, int], gap: int, id_fontsize: float) -> None:
    """Name the rows (left) and the items (top) of a mosaic drawn on ``ax``, at the tiles' centres; no frame."""
    h, w = tile
    ax.set_yticks([r * (h + gap) + (h - 1) / 2 for r in range(len(row_names))], row_names, fontsize=8)
    ax.set_xticks([c * (w + gap) + (w - 1) / 2 for c in range(len(ids))], [str(i) for i in ids], fontsize=id_fontsize)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)


def plot_image_grid(recon: Recon, path: str | Path, n_items: int = 10, title: str = "") -> Path:
    """Rows: truth, then each method (decoder, its variants, ridge, ceiling); columns: test items.

    Drawn as one image (``image_mosaic``) on one axes: a grid of one axes per image took most of
    the summary's figure time (~90 axes per subject at the default study's 9 rows x 10 items)."""
    rows = [("truth", recon.truth)] + [(m, recon.methods[m]) for m in method_order(recon.methods)]
    n = min(n_items, len(recon.ids))
    h, w = recon.truth.shape[-2:]
    gap = max(1, round(0.06 * max(h, w)))
    fig = Figure(figsize=(1.1 * n + 0.8, 1.15 * len(rows)))
    ax = fig.subplots()
    ax.imshow(image_mosaic([images for _, images in rows], n, gap), vmin=0, vmax=1, interpolation="nearest")
    _label_tiles(ax, [name for name, _ in rows], recon.ids[:n], (h, w), gap, id_fontsize=6)
    fig.suptitle(_title(title, "true images (top row) and reconstructions, first test items"), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def mel_mosaic(rows: list[np.ndarray], n: int, gap: int = 2) -> np.ndarray:
    """The first ``n`` spectrograms of each row ((N, n_mels, T)) tiled into one 2-D canvas, rows top
    to bottom, each tile flipped so that its mel bins go up, ``gap`` NaN pixels between tiles (drawn
    in the colour map's "bad" colour): (rows x (n_mels + gap) - gap, n x (T + gap) - gap)."""
    h, w = rows[0].shape[-2:]
    canvas = np.full((len(rows) * (h + gap) - gap, n * (w + gap) - gap), np.nan, dtype=np.float32)
    for r, mels in enumerate(rows):
        for c in range(n):
            canvas[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = np.asarray(mels[c])[::-1]
    return canvas


def plot_mel_grid(recon: Recon, path: str | Path, n_items: int = 6, title: str = "") -> Path:
    """Log-mel spectrograms: truth then each method (rows) for the first test items (columns).

    Drawn as one image (``mel_mosaic``) on one axes, as the image grids are: with one axes per
    spectrogram the tiny study's audio figure took 2.0 s, as one image 0.5 s."""
    rows = [("truth", recon.truth)] + [(m, recon.methods[m]) for m in method_order(recon.methods)]
    n = min(n_items, len(recon.ids))
    vmin, vmax = np.percentile(recon.truth[:n], [1, 99])
    h, w = recon.truth.shape[-2:]
    gap = max(1, round(0.08 * h))
    fig = Figure(figsize=(1.9 * n + 1.6, 1.3 * len(rows)))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="white")
    image = ax.imshow(mel_mosaic([mels for _, mels in rows], n, gap), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                      interpolation="nearest")
    _label_tiles(ax, [name for name, _ in rows], recon.ids[:n], (h, w), gap, id_fontsize=7)
    fig.colorbar(image, ax=ax, shrink=0.6, label="log-mel")
    description = "log-mel spectrograms, truth (top row) and decoded; mel bins up, time right"
    fig.suptitle(_title(title, description), fontsize=9)
    return _save(fig, path)


def plot_text_table(recon: Recon, path: str | Path, n_items: int = 10, title: str = "") -> Path:
    """A table of true and decoded sentences for the first test items."""
    methods = method_order(recon.methods)
    n = min(n_items, len(recon.ids))
    columns = ["id", "truth"] + methods
    wrap = 34
    cells = [[str(recon.ids[i])] + [textwrap.fill(str(recon.truth[i]), wrap)]
             + [textwrap.fill(str(recon.methods[m][i]), wrap) for m in methods] for i in range(n)]
    lines = [max(c.count("\n") + 1 for c in row) for row in cells]
    fig = Figure(figsize=(1.2 + 3.0 * (len(columns) - 1), 0.5 + 0.22 * (sum(lines) + 2)))
    ax = fig.subplots()
    ax.axis("off")
    table = ax.table(cellText=cells, colLabels=columns, loc="upper center", cellLoc="left",
                     colWidths=[0.6 / len(columns)] + [1.4 / len(columns)] * (len(columns) - 1))
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    for (row, _), cell in table.get_celld().items():
        height = 0.22 * (lines[row - 1] if row > 0 else 1) / (0.5 + 0.22 * (sum(lines) + 2))
        cell.set_height(height * 1.15)
        if row == 0:
            cell.set_text_props(weight="bold")
    ax.set_title(_title(title, "true and decoded sentences, first test items"), fontsize=9)
    return _save(fig, path)


def plot_recon(recon: Recon, modality: str, path: str | Path, n_items: int = 10, title: str = "") -> Path:
    """The figure for one recon file, by modality."""
    if modality == "image":
        return plot_image_grid(recon, path, n_items, title)
    if modality == "audio":
        return plot_mel_grid(recon, path, min(n_items, 6), title)
    return plot_text_table(recon, path, n_items, title)


def plot_by_category(table: pd.DataFrame, path: str | Path, confidence: float = 0.95) -> Path:
    """Decoder minus the strongest baseline per stimulus category: one panel per modality x metric,
    categories on the x axis, one marker per subject and decoder method, intervals as error bars."""
    diffs = table[table["baseline"] != ""] if not table.empty else table
    panels = [] if diffs.empty else sorted({(m, k) for m, k in zip(diffs["modality"], diffs["metric"])},
                                           key=lambda mk: (MODALITIES.index(mk[0]), METRICS[mk[0]].index(mk[1])
                                                           if mk[1] in METRICS[mk[0]] else 99, mk[1]))
    if not panels:
        fig = Figure(figsize=(4, 2))
        fig.text(0.5, 0.5, "no stimulus categories (stimuli.tsv has no category column)", ha="center")
        return _save(fig, path)
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(3.4 * ncols, 2.9 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    markers = "osD^v<>px*"
    for ax, (modality, metric) in zip(axes, panels):
        rows = diffs[(diffs.modality == modality) & (diffs.metric == metric)]
        cats = sorted(rows["category"].unique())
        series = sorted({(s, m) for s, m in zip(rows["subject"].astype(str), rows["method"])})
        width = 0.7 / max(len(series), 1)
        for k, (subject, method) in enumerate(series):
            sub = rows[(rows.subject.astype(str) == subject) & (rows.method == method)].set_index("category")
            for x, cat in enumerate(cats):
                if cat not in sub.index:
                    continue
                r = sub.loc[cat]
                ax.errorbar(x - 0.35 + width * (k + 0.5), r.value, yerr=[[r.value - r.ci_low], [r.ci_high - r.value]],
                            fmt=markers[k % len(markers)],
                            color=METHOD_COLORS.get(method, VARIANT_COLOR if is_decoder_method(method) else "#9467bd"),
                            capsize=2, markersize=4, label=f"sub-{subject} {method}" if x == 0 else None)
        ax.axhline(0, color="#7f7f7f", linewidth=0.8)
        ax.set_xticks(range(len(cats)), cats, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{modality}: {metric}\n(decoder − strongest baseline)", fontsize=9)
    for ax in axes[len(panels):]:
        ax.axis("off")
    axes[0].legend(fontsize=6, loc="best")
    fig.suptitle(f"by stimulus category, {confidence:.0%} paired intervals; > 0: the decoder scores higher "
                 "(better unless the metric is lower-is-better)", fontsize=9)
    return _save(fig, path)
