"""The summarize stage: one table, one comparison table, a readable page, figures.

Concatenates the evaluate stage's per-subject files into
``results/<study>/summary.parquet`` and ``comparisons.parquet``, writes
``summary.md`` (methods side by side with their intervals, the paired
differences with a clear mark where the interval excludes zero, and decoded
sentences), and the figures the report shows.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pandas as pd

from cortexflow import _io
from cortexflow.errors import CortexflowInputError
from cortexflow.evaluation import figures
import numpy as np

from cortexflow.evaluation.bootstrap import bootstrap_indices, hierarchical_bootstrap, seed_indices
from cortexflow.evaluation.evaluate import (COMPARISON_COLUMNS, LOWER_IS_BETTER, METRICS, SUMMARY_COLUMNS,
                                            EvaluationConfig, Recon, _scores_by, is_baseline_method,
                                            is_decoder_method, load_recon, method_order, seed_values)

log = logging.getLogger("cortexflow.evaluation.summary")

RECON_NAME = re.compile(r"^sub-(?P<subject>[A-Za-z0-9]+)_(?P<modality>image|audio|text)(_seed(?P<seed>\d+))?$")
CATEGORY_COLUMNS = ["subject", "modality", "category", "method", "baseline", "metric", "value", "ci_low", "ci_high",
                    "n"]


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
    """(subject, modality) from a recon file name ``sub-<label>_<modality>[_seed<k>].npz``."""
    match = RECON_NAME.match(Path(path).name.removesuffix(".npz"))
    if not match:
        raise CortexflowInputError("recon file name is not sub-<label>_<modality>[_seed<k>].npz", path=path,
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


def sampling_markdown(sampling: dict | None, modalities) -> list[str]:
    """One legend line per modality: how its decoder outputs were drawn (config ``sampling``)."""
    from dataclasses import asdict

    from cortexflow.models.params import SamplingParams

    lines = []
    for modality in modalities:
        given = (sampling or {}).get(modality)
        if given is None:
            continue
        p = {**asdict(SamplingParams()), **given}  # a partial section counts at the workflow's defaults
        if modality == "text":
            how = ("greedy decoding (temperature 0)" if p["temperature"] <= 0 else
                   f"sampled at temperature {p['temperature']:g}, top-k {p['top_k']}, top-p {p['top_p']:g}")
        else:
            scale = float(p["noise_scale"])
            spread = ("1: samples of the learned distribution" if scale == 1 else
                      f"{scale:g}: below 1, samples nearer the centre of the learned distribution "
                      "and less varied than it, a sampling temperature")
            how = (f"{p['num_steps']} {p['solver']} steps, guidance {p['cfg_scale']:g}, "
                   f"{p['n_samples']} samples a test item, starting-noise scale {spread}")
        lines.append(f"  {modality}: {how};")
    if lines:
        lines[-1] = lines[-1][:-1] + "."
        lines.insert(0, "- How the decoders' outputs were drawn (config `sampling`):")
    return lines


def build_markdown(study: str, summary: pd.DataFrame, comparisons: pd.DataFrame, text_recons: list[tuple[str, Recon]],
                   config: EvaluationConfig, extra_sections: list[str] | None = None,
                   sampling: dict | None = None) -> str:
    extra_sections = extra_sections or []
    modalities = [m for m in ("image", "audio", "text") if m in set(summary["modality"])]
    lines = [
        f"# cortexflow results: {study}",
        "",
        f"Each cell is the mean over held-out test items (and, for the decoder, over its training seeds) with its "
        f"{config.confidence:.0%} percentile bootstrap interval ({config.n_boot} resamples; for a decoder with "
        "several training seeds a two-stage bootstrap that resamples seeds and items). "
        "↑: higher is better, ↓: lower is better.",
        "",
        "- `dit` / `decoder`: the brain decoder, one sample (`dit_mean<K>`: the mean of K samples, an estimate "
        "of the posterior mean).",
        *sampling_markdown(sampling, modalities),
        "- Baselines, all fitted on the training trials only, penalties by grouped CV:",
        "  `ridge`: ridge regression from voxels to the decoder's latents (one penalty), decoded by the same VAE;",
        "  `ridge_pt`: the same with one penalty per latent dimension;",
        "  `ridge_pixels` (image): ridge from voxels straight to pixels, no VAE;",
        "  `nn`: the VAE reconstruction of the training stimulus whose latent correlates best with the ridge-"
        "predicted latent; `nn_mean<k>`: the mean of the VAE reconstructions of the k best;",
        "  `retrieval` (text): the training sentence nearest to the ridge-predicted character n-gram embedding;",
        "  `ngram_lm` (text): the most probable sentence of a character n-gram LM of the training sentences, "
        "the same for every item (no brain data: what language statistics alone score); `ngram_lm_ridge` (text): "
        "that LM's beam search guided towards the ridge-predicted n-gram embedding (weight by CV on training "
        "trials), which can write sentences never seen in training.",
        f"- `chance`: the decoder's outputs scored against other items' truths ({config.chance_permutations} "
        "random derangements); two-way identification is ≈ 0.5 here.",
        "- `ceiling`: the autoencoder's reconstruction of the true stimulus, the best a latent decoder can reach.",
        "- `noise_free_linear` (simulated study only): the ridge decoder fitted and applied on the simulator's "
        "noise-free responses of the same voxels: linear decoding without measurement noise. It is not a noise "
        "ceiling (a nonlinear decoder may exceed it); NSD's noise ceiling is the ncsnr section below.",
        "",
        "A comparison is marked significant when its paired interval excludes 0. Every decoder method is compared "
        "with every baseline (comparisons.parquet); the strongest baseline per metric named below is the one with "
        "the best mean on these test items, a choice that favours the baselines.",
        "",
    ]
    lines += metrics_markdown(summary, comparisons, config.confidence)
    lines += extra_sections
    for subject, recon in text_recons:
        lines += sentences_markdown(recon, subject, config.figure_items)
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------ strongest baseline, seeds, categories, ncsnr


def best_baselines(summary: pd.DataFrame) -> pd.DataFrame:
    """Per subject, modality and metric, the baseline with the best mean (columns subject, modality, metric,
    baseline). Chosen on the evaluated items: the strongest opponent for the decoder, not a tuned one."""
    rows = []
    block = summary[summary["method"].map(is_baseline_method)]
    for (subject, modality, metric), group in block.groupby(["subject", "modality", "metric"], sort=True):
        best = group.sort_values("value", ascending=metric in LOWER_IS_BETTER, kind="stable").iloc[0]
        rows.append((subject, modality, metric, best["method"]))
    return pd.DataFrame(rows, columns=["subject", "modality", "metric", "baseline"])


def best_baseline_markdown(best: pd.DataFrame, comparisons: pd.DataFrame) -> list[str]:
    """The decoder methods against the strongest baseline of each metric, with their paired intervals."""
    if best.empty or comparisons.empty:
        return []
    merged = comparisons.merge(best, left_on=["subject", "modality", "metric", "method_b"],
                               right_on=["subject", "modality", "metric", "baseline"])
    merged = merged[merged["method_a"].map(is_decoder_method)]
    if merged.empty:
        return []
    rows = [[f"sub-{r.subject}", r.modality, f"{r.metric} {'↓' if r.metric in LOWER_IS_BETTER else '↑'}",
             f"{r.method_a} − {r.method_b}", f"{_fmt(r.diff, True)} [{_fmt(r.ci_low, True)}, {_fmt(r.ci_high, True)}]",
             _verdict(r)] for r in merged.itertuples()]
    return ["## Decoder against the strongest baseline of each metric", "",
            "The strongest baseline is the one with the best mean on the test items (favouring the baselines); "
            "the difference is paired over the same items and training seeds.", ""] + \
        _markdown_table(["subject", "modality", "metric", "comparison", "difference [CI]", "verdict"], rows) + [""]


def seeds_markdown(per_seed: pd.DataFrame) -> list[str]:
    """Each decoder method's mean per training seed, and the spread (max − min) over seeds."""
    if per_seed.empty:
        return []
    lines = ["## Training seeds", "",
             "Mean over test items of each decoder method per training seed (the summary pools them).", ""]
    rows = []
    for (subject, modality, method, metric), group in per_seed.groupby(["subject", "modality", "method", "metric"],
                                                                       sort=True):
        values = group.sort_values("seed")["value"].to_numpy()
        rows.append([f"sub-{subject}", modality, method, metric, str(len(values)),
                     ", ".join(_fmt(v) for v in values), _fmt(values.max() - values.min())])
    return lines + _markdown_table(["subject", "modality", "method", "metric", "seeds", "per seed", "spread"],
                                   rows) + [""]


def category_table(items: pd.DataFrame, categories: dict[str, str], best: pd.DataFrame, *, subject: str,
                   modality: str, config: EvaluationConfig, seed: int = 0) -> pd.DataFrame:
    """Per stimulus category: every method's mean with its interval (``baseline`` empty), and each decoder
    method minus the metric's strongest baseline (``baseline`` names it), over the category's items and
    the training seeds (two-stage bootstrap, as the summary)."""
    rows = []
    items = items[items["method"] != "chance"]
    item_category = items["item"].astype(str).map(categories)
    if item_category.isna().all():
        return pd.DataFrame(columns=CATEGORY_COLUMNS)
    items = items.assign(category=item_category.fillna("unknown"))
    best_of = {r.metric: r.baseline for r in best[(best.subject == subject) & (best.modality == modality)].itertuples()}
    for category, block in items.groupby("category", sort=True):
        scores = _scores_by(block)
        n = block["item"].nunique()
        indices = bootstrap_indices(n, config.n_boot, seed)
        seed_draws = {k: seed_indices(k, config.n_boot, seed) for k in {len(t) for t in scores.values()}}
        for (method, metric), table in scores.items():
            r = hierarchical_bootstrap(table, confidence=config.confidence, indices=indices,
                                       seeds=seed_draws[len(table)])
            rows.append((subject, modality, category, method, "", metric, r.value, r.ci_low, r.ci_high, r.n))
            if is_decoder_method(method) and metric in best_of and (best_of[metric], metric) in scores:
                diff = table - scores[(best_of[metric], metric)]
                r = hierarchical_bootstrap(diff, confidence=config.confidence, indices=indices,
                                           seeds=seed_draws[len(diff)])
                rows.append((subject, modality, category, method, best_of[metric], metric, r.value, r.ci_low,
                             r.ci_high, r.n))
    return pd.DataFrame(rows, columns=CATEGORY_COLUMNS)


def category_markdown(table: pd.DataFrame) -> list[str]:
    """Decoder methods and the strongest baseline per category, and their difference."""
    if table.empty:
        return []
    lines = ["## By stimulus category", "",
             "Mean [CI] over each category's test items (stimuli.tsv `category`); the last column is the decoder "
             "method minus the metric's strongest baseline (paired, over the category's items and the seeds).", ""]
    diffs = table[table["baseline"] != ""]
    rows = []
    for r in diffs.itertuples():
        plain = table[(table.subject == r.subject) & (table.modality == r.modality) & (table.category == r.category)
                      & (table.metric == r.metric) & (table.baseline == "")]
        mine, theirs = plain[plain.method == r.method], plain[plain.method == r.baseline]
        cell = (lambda x: "–" if x.empty else
                f"{_fmt(x.value.iloc[0])} [{_fmt(x.ci_low.iloc[0])}, {_fmt(x.ci_high.iloc[0])}]")
        verdict = "" if r.ci_low <= 0 <= r.ci_high else " *"
        rows.append([f"sub-{r.subject}", r.modality, r.category, str(r.n), f"{r.metric}", f"{r.method}: {cell(mine)}",
                     f"{r.baseline}: {cell(theirs)}",
                     f"{_fmt(r.value, True)} [{_fmt(r.ci_low, True)}, {_fmt(r.ci_high, True)}]{verdict}"])
    return lines + _markdown_table(["subject", "modality", "category", "items", "metric", "decoder",
                                    "strongest baseline", "difference [CI]"], rows) + \
        ["", "`*`: the interval excludes 0.", ""]


def ncsnr_table(datasets: list[str]) -> pd.DataFrame:
    """Per dataset (subject, modality) and ROI group (network): ncsnr median and IQR of the test repeats, and NSD's
    noise ceiling NC = 100 ncsnr² / (ncsnr² + 1/n) at the median ncsnr (n: the mean number of test repeats).

    Read from make_dataset's ``voxels.parquet`` (every voxel, selected or not) and ``test.parquet``.
    """
    from cortexflow.preprocess.ncsnr import noise_ceiling

    rows = []
    for folder in datasets:
        folder = Path(folder)
        voxels_path, test_path = folder / "voxels.parquet", folder / "test.parquet"
        for path in (voxels_path, test_path):
            if not path.is_file():
                raise CortexflowInputError("dataset file missing", path=path, fix="run the make_dataset stage")
        voxels, test = pd.read_parquet(voxels_path), pd.read_parquet(test_path)
        if "ncsnr" not in voxels.columns:
            raise CortexflowInputError("voxels table has no ncsnr column", path=voxels_path,
                                       fix="rerun the make_dataset stage")
        n_rep = test["n_repeats"].to_numpy(float)
        subject, modality = folder.parent.name.removeprefix("sub-"), folder.name
        # ROI groups: the networks of the ROI definition (rois.networks), all voxels besides when there are several
        group_col = "network" if "network" in voxels.columns else "region" if "region" in voxels.columns else None
        groups = list(voxels.groupby(group_col, sort=True)) if group_col else []
        if len(groups) != 1:
            groups = [("all", voxels), *groups]
        for region, block in groups:
            values = block["ncsnr"].to_numpy(float)
            values = values[np.isfinite(values)]
            if not len(values):
                continue
            q1, med, q3 = np.quantile(values, [0.25, 0.5, 0.75])
            rows.append((subject, modality, str(region), len(values), med, q1, q3,
                         float(noise_ceiling(np.array([med]), n_rep)[0]), float(n_rep.mean())))
    return pd.DataFrame(rows, columns=["subject", "modality", "region", "n_voxels", "ncsnr_median", "ncsnr_q1",
                                       "ncsnr_q3", "nc_percent", "mean_repeats"])


def ncsnr_markdown(table: pd.DataFrame) -> list[str]:
    if table.empty:
        return []
    rows = [[f"sub-{r.subject}", r.modality, r.region, str(r.n_voxels),
             f"{r.ncsnr_median:.2f} [{r.ncsnr_q1:.2f}, {r.ncsnr_q3:.2f}]", f"{r.nc_percent:.1f}",
             f"{r.mean_repeats:.1f}"] for r in table.itertuples()]
    return ["## Noise ceiling (NSD's definition)", "",
            "ncsnr per voxel from the test repeats (Allen et al. 2022): median [interquartile range] over the "
            "ROI's voxels, and NSD's noise ceiling NC = 100·ncsnr²/(ncsnr² + 1/n) at the median ncsnr, with n the "
            "mean number of repeats averaged per test item: the share of a voxel's test-response variance that "
            "the stimulus can explain.", ""] + \
        _markdown_table(["subject", "modality", "ROI group", "voxels", "ncsnr median [IQR]", "NC (%)", "repeats"],
                        rows) + [""]


def load_categories(stimuli: str | Path) -> dict[str, str]:
    """stimulus_id -> category from stimuli.tsv (empty when it has no ``category`` column)."""
    path = Path(stimuli)
    if not path.is_file():
        raise CortexflowInputError("stimuli table not found", path=path, fix="pass the study's stimuli/stimuli.tsv")
    table = pd.read_csv(path, sep="\t", dtype=str)
    if "stimulus_id" not in table.columns:
        raise CortexflowInputError("stimuli table has no stimulus_id column", path=path)
    if "category" not in table.columns:
        log.warning("%s has no category column: no results by category", path)
        return {}
    return dict(zip(table["stimulus_id"], table["category"].fillna("unknown")))


# -------------------------------------------------------------------- the stage


def summarize_stage(*, summaries: list[str], comparisons: list[str], recons: list[str], out_summary: str,
                    out_comparisons: str, out_markdown: str, out_figures: str, params: dict,
                    items: list[str] = (), stimuli: str | None = None, datasets: list[str] = (),
                    out_by_category: str | None = None, seed: int = 0, sampling: str | None = None) -> None:
    """Concatenate the per-subject results; write summary tables, summary.md and figures.

    Figures (in ``out_figures``): ``metrics.png``, one ``sub-<s>_<modality>.png``
    per recon file (image grid, mel spectrograms, or sentence table; the first
    training seed's) and, with ``out_by_category``, ``by_category.png``.
    ``items`` (the evaluate stage's per-item scores, in the order of
    ``summaries``) give the per-seed spread and, with ``stimuli`` (stimuli.tsv's
    ``category``), ``out_by_category``; ``datasets`` (make_dataset folders) give
    the ncsnr section; ``sampling`` (the config's ``sampling`` section as JSON)
    says in summary.md how the decoders were sampled (noise scale, guidance, ...).
    """
    config = EvaluationConfig.from_params(params)
    try:
        sampling_section = json.loads(sampling) if sampling else None
    except json.JSONDecodeError as e:
        raise CortexflowInputError(f"--sampling is not JSON: {e}",
                                   fix="pass the config's sampling section as JSON, e.g. '{\"image\": {...}}'") from None
    summary = _read_tables(summaries, SUMMARY_COLUMNS, "summary")
    comparison = _read_tables(comparisons, COMPARISON_COLUMNS, "comparisons")
    if summary.empty:
        raise CortexflowInputError("no summary rows to summarize", fix="pass the evaluate stage's summary files")
    summary = summary.sort_values(["subject", "modality", "method", "metric"], kind="stable", ignore_index=True)
    _io.save_parquet(out_summary, summary)
    _io.save_parquet(out_comparisons, comparison)
    best = best_baselines(summary)
    extra = best_baseline_markdown(best, comparison)
    per_seed, by_category = [], []
    categories = load_categories(stimuli) if stimuli else {}
    for path in items or []:
        subject, modality = _items_identity(path)
        table = pd.read_parquet(path)
        per_seed.append(seed_values(table).assign(subject=subject, modality=modality))
        if out_by_category is not None and categories:
            by_category.append(category_table(table, categories, best, subject=subject, modality=modality,
                                              config=config, seed=seed))
    extra += seeds_markdown(pd.concat(per_seed, ignore_index=True) if per_seed else pd.DataFrame())
    category = pd.concat(by_category, ignore_index=True) if by_category else pd.DataFrame(columns=CATEGORY_COLUMNS)
    if out_by_category is not None:
        _io.save_parquet(out_by_category, category)
        extra += category_markdown(category)
    extra += ncsnr_markdown(ncsnr_table(datasets or []))
    loaded = []
    for path in recons:
        subject, modality = recon_identity(path)
        loaded.append((f"sub-{subject}_{modality}", subject, modality, load_recon(path, modality)))
    text_recons = [(subject, recon) for _, subject, modality, recon in loaded if modality == "text"]
    study = Path(out_summary).resolve().parent.name
    with _io.atomic_write(out_markdown) as tmp:
        tmp.write_text(build_markdown(study, summary, comparison, text_recons, config, extra,
                                      sampling=sampling_section), encoding="utf-8")
    with _io.atomic_dir(out_figures) as folder:
        figures.plot_metrics(summary, folder / "metrics.png", config.confidence)
        if out_by_category is not None:
            figures.plot_by_category(category, folder / "by_category.png", config.confidence)
        for stem, subject, modality, recon in loaded:
            figures.plot_recon(recon, modality, folder / f"{stem}.png", config.figure_items,
                               title=f"sub-{subject} {modality}")
    log.info("wrote %s (%d rows), %s (%d rows), %s and %d figures in %s", out_summary, len(summary),
             out_comparisons, len(comparison), out_markdown, len(loaded) + 1, out_figures)


ITEMS_NAME = re.compile(r"^sub-(?P<subject>[A-Za-z0-9]+)_(?P<modality>image|audio|text)_items$")


def _items_identity(path: str | Path) -> tuple[str, str]:
    match = ITEMS_NAME.match(Path(path).name.removesuffix(".parquet"))
    if not match or not Path(path).is_file():
        raise CortexflowInputError("not an evaluate stage's items file (sub-<label>_<modality>_items.parquet)",
                                   path=path, fix="pass the evaluate stage's per-item scores")
    return match["subject"], match["modality"]
