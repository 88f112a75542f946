"""Quality-control figures for the report: what a neuroimager checks before trusting a decoder.

- :func:`plot_rois` -- the regions decoded from, drawn over nilearn's bundled
  MNI152 template (no download);
- :func:`plot_ncsnr` -- each region's distribution of the noise-ceiling SNR
  (Allen et al. 2022), the share of a voxel's response that repeats;
- :func:`plot_framewise_displacement` -- head motion per run (Power et al.
  2012, *NeuroImage* 59:2142), from fMRIPrep's confounds;
- :func:`plot_design_matrix` -- one run's single-trial GLM design;
- :func:`plot_training_curves` -- the loss curves of every autoencoder and decoder.

Each function takes tables or images already read and saves one PNG atomically
(``cortexflow.evaluation.figures._save``); ``cortexflow.stages.qc`` reads the
files and calls them. Figures are built on ``matplotlib.figure.Figure``; nilearn
draws into axes of that figure.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from cortexflow.evaluation.figures import _save

log = logging.getLogger("cortexflow.evaluation.qc_figures")

#: FD above which a volume is commonly censored (Power et al. 2012 used 0.5 mm)
FD_THRESHOLD_MM = 0.5
#: what each model's training loss is (its ``training_loss``)
LOSS_NAMES = {"vae": "reconstruction MSE + KL (normalised units)",
              "decoder": "rectified-flow velocity MSE",
              "decoder_text": "cross-entropy (nats per byte)"}


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, wrap=True, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_rois(rows: Sequence[tuple[str, object, int]], path: str | Path, title: str = "") -> Path:
    """One row per (label, labels image, number of regions): the regions over the MNI152 template,
    on axial slices spread over the regions' extent (z in mm on each slice)."""
    import matplotlib

    matplotlib.use("Agg")  # nilearn imports pyplot; never a display
    from nilearn import plotting
    from nilearn.datasets import load_mni152_template

    template = load_mni152_template(resolution=2)
    fig = Figure(figsize=(11, 2.3 * max(len(rows), 1)))
    for r, (label, img, n_regions) in enumerate(rows):
        ax = fig.add_axes((0.0, 1 - (r + 1) / len(rows), 1.0, 0.9 / len(rows)))
        data = np.asarray(img.dataobj)
        ijk = np.argwhere(data > 0)
        if len(ijk) == 0:
            _no_data(ax, f"{label}: no region voxel inside the brain")
            continue
        z_mm = (ijk @ img.affine[:3, :3].T + img.affine[:3, 3])[:, 2]
        lo, hi = np.percentile(z_mm, [5, 95])
        cuts = np.unique(np.round(np.linspace(lo, hi, 6)))
        plotting.plot_roi(img, bg_img=template, display_mode="z", cut_coords=list(cuts), figure=fig, axes=ax,
                          title=f"{label}: {n_regions} regions, {len(ijk)} voxels", colorbar=False, alpha=0.8,
                          cmap="tab20", vmin=0.5, vmax=max(int(data.max()), 1) + 0.5, annotate=True,
                          draw_cross=False, black_bg=False)
    if title:
        fig.suptitle(title, fontsize=10, y=1.02)
    return _save(fig, path)


def plot_ncsnr(voxels: Mapping[str, pd.DataFrame], path: str | Path, title: str = "") -> Path:
    """One panel per modality: the ncsnr of each region's voxels (box: quartiles, whiskers: 5-95%),
    regions by median; ``voxels`` are make_dataset's voxels tables (columns region, ncsnr)."""
    panels = list(voxels)
    fig = Figure(figsize=(min(16.0, max(6.0, 0.32 * max((v["region"].nunique() for v in voxels.values()), default=10) + 2)),
                          2.9 * max(len(panels), 1)))
    axes = fig.subplots(max(len(panels), 1), 1, squeeze=False)[:, 0]
    for ax, modality in zip(axes, panels):
        table = voxels[modality]
        finite = table[np.isfinite(table["ncsnr"].to_numpy(float))]
        if finite.empty:
            _no_data(ax, f"{modality}: no ncsnr (no stimulus was repeated in the test set)")
            continue
        groups = finite.groupby("region", sort=False)["ncsnr"]
        order = groups.median().sort_values(ascending=False).index.tolist()
        values = [groups.get_group(name).to_numpy(float) for name in order]
        ax.boxplot(values, whis=(5, 95), showfliers=False, widths=0.6, medianprops={"color": "#d62728"})
        ax.set_xticks(range(1, len(order) + 1), [f"{n} ({len(v)})" for n, v in zip(order, values)], rotation=60,
                      ha="right", fontsize=6)
        ax.set_ylabel("ncsnr (signal SD / noise SD)", fontsize=8)
        median = float(np.median(finite["ncsnr"]))
        ax.axhline(median, color="#7f7f7f", linewidth=0.8, linestyle="--")
        ax.set_xlabel("region (its voxel count)", fontsize=8)
        ax.set_title(f"{modality}: ncsnr per region; dashed: the median of all {len(finite)} voxels, {median:.2f}",
                     fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_framewise_displacement(runs: Mapping[str, Sequence[tuple[str, np.ndarray, float | None]]],
                                path: str | Path, threshold_mm: float = FD_THRESHOLD_MM, title: str = "") -> Path:
    """One panel per task: framewise displacement (mm) of each run over time, with the share of
    volumes above ``threshold_mm``. ``runs``: task -> [(run label, FD per volume, TR in s or None)]."""
    tasks = list(runs)
    fig = Figure(figsize=(9, 2.4 * max(len(tasks), 1)))
    axes = fig.subplots(max(len(tasks), 1), 1, squeeze=False)[:, 0]
    for ax, task in zip(axes, tasks):
        seconds = all(tr for _, _, tr in runs[task])
        for label, fd, tr in runs[task]:
            fd = np.asarray(fd, dtype=float)
            x = np.arange(len(fd)) * (tr if seconds else 1.0)
            above = np.nanmean(fd > threshold_mm) if np.isfinite(fd).any() else np.nan
            ax.plot(x, fd, linewidth=0.9,
                    label=f"run {label}: mean {np.nanmean(fd):.2f} mm, {above:.0%} > {threshold_mm:g} mm")
        ax.axhline(threshold_mm, color="#d62728", linewidth=0.8, linestyle="--")
        ax.set_xlabel("time (s)" if seconds else "volume", fontsize=8)
        ax.set_ylabel("framewise displacement (mm)", fontsize=8)
        ax.set_title(f"task {task}: head motion per run (dashed: {threshold_mm:g} mm)", fontsize=9)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=6, loc="upper right")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_design_matrix(matrix: pd.DataFrame, n_trials: int, path: str | Path, title: str = "") -> Path:
    """The design (frame times down, regressors across), each column scaled to its largest
    absolute value as nilearn's ``plot_design_matrix`` does; the trial columns are named as a group."""
    X = matrix.to_numpy(dtype=float)
    scale = np.abs(X).max(axis=0)
    X = X / np.where(scale > 0, scale, 1.0)
    fig = Figure(figsize=(min(16, 3 + 0.09 * X.shape[1]), 6))
    ax = fig.subplots()
    times = matrix.index.to_numpy(dtype=float)
    image = ax.imshow(X, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest",
                      extent=(-0.5, X.shape[1] - 0.5, times[-1], times[0]))
    others = list(range(n_trials, X.shape[1]))
    ticks = ([(n_trials - 1) / 2] if n_trials else []) + others
    labels = ([f"{n_trials} trial regressors"] if n_trials else []) + [str(matrix.columns[j]) for j in others]
    ax.set_xticks(ticks, labels, rotation=70, ha="right", fontsize=6)
    if n_trials:
        ax.axvline(n_trials - 0.5, color="k", linewidth=0.8)
    ax.set_ylabel("time (s)", fontsize=8)
    ax.set_xlabel("regressor", fontsize=8)
    fig.colorbar(image, ax=ax, shrink=0.6, label="value / column max |value|")
    ax.set_title(title or "design matrix", fontsize=9)
    return _save(fig, path)


def plot_training_curves(curves: Sequence[tuple[str, str, str, pd.DataFrame]], path: str | Path) -> Path:
    """One panel per model kind and modality (``curves``: (kind, modality, line label, curve table)),
    the training loss against the optimizer step on a log scale, one line per run."""
    panels: dict[tuple[str, str], list[tuple[str, pd.DataFrame]]] = {}
    for kind, modality, label, frame in curves:
        panels.setdefault((kind, modality), []).append((label, frame))
    keys = sorted(panels, key=lambda k: (k[0] != "vae", ["image", "audio", "text"].index(k[1])
                                         if k[1] in ("image", "audio", "text") else 9))
    ncols = min(3, max(len(keys), 1))
    nrows = -(-max(len(keys), 1) // ncols)
    fig = Figure(figsize=(4.0 * ncols, 3.1 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (kind, modality) in zip(axes, keys):
        loss_name = LOSS_NAMES["decoder_text" if kind == "decoder" and modality == "text" else kind]
        for label, frame in panels[(kind, modality)]:
            if frame.empty:
                continue
            ax.plot(frame["step"], frame["loss"], marker="." if len(frame) < 30 else None, linewidth=1.0,
                    label=f"{label} ({frame['elapsed_s'].iloc[-1]:.0f} s)")
        if all(f.empty for _, f in panels[(kind, modality)]):
            _no_data(ax, "no logged steps")
        elif all((f["loss"] > 0).all() for _, f in panels[(kind, modality)] if not f.empty):
            ax.set_yscale("log")
            # 0.5, not 5 x 10^-1; minor ticks labelled too when the axis spans less than a decade and a half
            plain = FuncFormatter(lambda value, _: f"{value:g}")
            low, high = ax.get_ylim()
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain if np.log10(high / low) < 1.5 else NullFormatter())
            ax.tick_params(axis="y", which="minor", labelsize=6)
        ax.set_title(f"{'autoencoder' if kind == 'vae' else 'decoder'} ({modality})", fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.set_ylabel(f"training loss\n{loss_name}", fontsize=7)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    for ax in axes[len(keys):]:
        ax.axis("off")
    fig.suptitle("Training loss (mean over each logged interval; legend: run and its training time)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
