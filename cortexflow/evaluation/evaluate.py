"""The evaluate stage: every metric for every method of one subject and modality.

Input is the sample stage's recon files, one per training seed of the decoder
(``R/recon/sub-{s}_{modality}_seed{k}.npz``): ``ids``, ``truth`` and one array
per method (``dit``, ``dit_mean8``, the baselines, ``ceiling``; strings for
text). The decoder's methods are scored in every file; the baselines, which
do not depend on the decoder's seed, from the first. Output:

- per-item scores (``method, metric, item, score, seed``; ``seed`` is the
  training-seed index for decoder methods, missing for the others), from which
  everything else follows;
- the summary: mean over items (and seeds) with a percentile bootstrap
  interval; for a decoder with several seeds, the two-stage bootstrap over
  seeds and items (``bootstrap.hierarchical_bootstrap``);
- paired comparisons over the same items: every decoder method against every
  baseline, chance and the ceilings, each variant against ``dit``, with the
  same two-stage bootstrap of the per-seed differences.

Reference rows beside the methods:
- ``chance``: the decoder's reconstructions scored against *other* items'
  truths (random derangements, averaged over ``chance_permutations``), i.e. what
  the metric gives on this test set when the reconstruction carries no
  information about its own stimulus. Two-way identification comes out ~0.5.
- baselines (``BASELINES``): ``ridge`` (``ridge.py``), ``ridge_pt``,
  ``ridge_pixels``, ``nn``, ``nn_mean<k>``; text ``retrieval``, ``ngram_lm``
  and ``ngram_lm_ridge`` (``models/baselines.py``), decoded as the decoder is.
- ``ceiling``: whatever the sample stage stored under that name (the VAE's
  reconstruction of the true stimulus: the best a latent decoder could score).
- ``noise_free_linear`` (simulated study): ridge on the simulator's noise-free
  responses (``noise_free_linear.py``); not a ceiling for a nonlinear decoder.
"""

from __future__ import annotations

import abc
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cortexflow import _io
from cortexflow.errors import CortexflowInputError
from cortexflow.sections import from_mapping
from cortexflow.evaluation import metrics as M
from cortexflow.evaluation.bootstrap import hierarchical_bootstrap, seed_indices
from cortexflow.evaluation.features import CharNgramConfig, HOGFeatures, char_ngram_features, make_image_features
from cortexflow.evaluation.units import ItemUnits, load_item_units

log = logging.getLogger("cortexflow.evaluation.evaluate")

MODALITIES = ("image", "audio", "text")
METRICS = {
    # two_way_id_feature: the independent feature space (evaluation.image_features, a fixed random-weight
    # CNN by default); two_way_id_hog: HOG, generous on the simulated study (features.py);
    # two_way_id_within_category: the feature space with distractors of the item's own family (or photo
    # category) only; two_way_id_lowpass: pixels after a Gaussian low-pass (docs/analysis-plan.md, 5)
    "image": ("pixcorr", "ssim", "two_way_id_pixel", "two_way_id_feature", "two_way_id_hog",
              "two_way_id_within_category", "two_way_id_lowpass"),
    "audio": ("mel_corr", "lsd", "two_way_id"),
    "text": ("cer", "wer", "bleu", "two_way_id"),
}
LOWER_IS_BETTER = frozenset({"cer", "wer", "lsd"})
# the baselines a decoder is compared against, in the order they are shown (nn_mean<k> after nn)
BASELINES = ("ridge", "ridge_pt", "ridge_pixels", "nn", "retrieval", "ngram_lm", "ngram_lm_ridge")
REFERENCE_METHODS = ("chance", "ceiling", "noise_free_linear")
SUMMARY_COLUMNS = ["subject", "modality", "method", "metric", "value", "ci_low", "ci_high", "n"]
COMPARISON_COLUMNS = ["subject", "modality", "metric", "method_a", "method_b", "diff", "ci_low", "ci_high", "n",
                      "resample_unit"]
ITEM_COLUMNS = ["method", "metric", "item", "score", "seed"]
SEED_FILE = re.compile(r"_seed(\d+)$")


def is_decoder_method(method: str) -> bool:
    """``dit``, its variants (``dit_mean8``...) and the text ``decoder``."""
    return method == "decoder" or method == "dit" or method.startswith("dit_") or method.startswith("decoder_")


def is_baseline_method(method: str) -> bool:
    """The baselines of ``BASELINES`` and ``nn_mean<k>``."""
    return method in BASELINES or re.fullmatch(r"nn_mean\d+", method) is not None


def method_order(methods) -> list[str]:
    """Decoder methods first (``dit`` before its variants), then the baselines, chance, the ceilings, others."""
    def key(m):
        if is_decoder_method(m):
            return (0 if m in ("dit", "decoder") else 1, 0, m)
        if is_baseline_method(m):
            return (2, BASELINES.index("nn") if m.startswith("nn_mean") else BASELINES.index(m), m)
        if m in REFERENCE_METHODS:
            return (3, REFERENCE_METHODS.index(m), m)
        return (4, 0, m)
    return sorted(methods, key=key)


@dataclass(frozen=True)
class EvaluationConfig:
    """Parameters of the evaluate and summarize stages (config section ``evaluation``)."""

    n_boot: int = 1000
    confidence: float = 0.95
    chance_permutations: int = 10
    image_features: dict = field(default_factory=lambda: {"kind": "randconv"})
    log_mel_db_per_unit: float = M.DB_PER_NATURAL_LOG_MAGNITUDE
    normalize_text: bool = True
    text_features: CharNgramConfig = field(default_factory=CharNgramConfig)
    figure_items: int = 10
    # two_way_id_lowpass: Gaussian sigma as a fraction of the image side (2 px at 32 px)
    lowpass_sigma: float = 1 / 16
    # what the bootstrap resamples: "item" (every test item independent; the studies so far) or
    # "unit" (the crops of one source photo together, within each stimulus family; docs/analysis-plan.md)
    resample_by: Literal["item", "unit"] = "item"

    @classmethod
    def from_params(cls, params: Mapping | None, key: str = "evaluation") -> "EvaluationConfig":
        config = from_mapping(cls, params, key)
        if config.n_boot < 1 or not 0 < config.confidence < 1 or config.chance_permutations < 1:
            raise CortexflowInputError(
                f"evaluation needs n_boot >= 1, 0 < confidence < 1 and chance_permutations >= 1, got "
                f"{config.n_boot}, {config.confidence}, {config.chance_permutations}")
        return config


# ------------------------------------------------------------------ recon files


@dataclass
class Recon:
    """One recon file: item ids, the truth and each method's reconstructions."""

    ids: np.ndarray
    truth: np.ndarray
    methods: dict[str, np.ndarray]
    path: Path | None = None


def load_recon(path: str | Path, modality: str) -> Recon:
    """Read and check a recon file written by the sample stage."""
    path = Path(path)
    if modality not in MODALITIES:
        raise CortexflowInputError(f"unknown modality '{modality}'", fix=f"use one of {MODALITIES}")
    if not path.is_file():
        raise CortexflowInputError("recon file not found", path=path, fix="run the sample stage first")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except ValueError as e:
        raise CortexflowInputError(f"cannot read without pickle ({e})", path=path,
                                   fix="store text as unicode arrays: np.asarray(texts, dtype=str)") from None
    for key in ("ids", "truth"):
        if key not in arrays:
            raise CortexflowInputError(f"recon file has no '{key}' array", path=path, fix="rerun the sample stage")
    ids, truth = arrays.pop("ids").astype(str), arrays.pop("truth")
    if len(np.unique(ids)) != len(ids):
        raise CortexflowInputError("recon 'ids' are not unique", path=path,
                                   fix="store one row per test stimulus (repeats averaged)")
    if not arrays:
        raise CortexflowInputError("recon file holds no method", path=path, fix="rerun the sample stage")
    if "chance" in arrays:
        raise CortexflowInputError("'chance' is computed by the evaluate stage, not stored", path=path,
                                   fix="drop the 'chance' array from the recon file")
    expected_ndim = {"image": 4, "audio": 3, "text": 1}[modality]
    if truth.ndim != expected_ndim or len(truth) != len(ids) or len(ids) < 2:
        raise CortexflowInputError(f"'truth' of shape {truth.shape} does not fit {modality} with {len(ids)} ids "
                                   f"(need {expected_ndim}-D, one row per id, at least 2 items)", path=path)
    for name, values in arrays.items():
        if values.shape != truth.shape:
            raise CortexflowInputError(f"method '{name}' has shape {values.shape} but truth has {truth.shape}",
                                       path=path, fix="store every method in the same shape as 'truth'")
        if modality != "text" and not np.all(np.isfinite(values)):
            raise CortexflowInputError(f"method '{name}' holds NaN or infinite values", path=path)
    if modality == "text" and not all(a.dtype.kind == "U" for a in [truth, *arrays.values()]):
        raise CortexflowInputError("text recon arrays must hold strings", path=path,
                                   fix="store text as np.asarray(texts, dtype=str)")
    return Recon(ids, truth, arrays, path)


# ---------------------------------------------------------------------- scorers


class _Scorer(abc.ABC):
    """Per-item scores of one modality's metrics against a fixed truth.

    ``score(pred, orders)`` averages over several pairings (``orders``: the
    truth index of each reconstruction); the identity pairing gives a method's
    score, derangements give chance. Correlation matrices and features are
    computed once per prediction, whatever the number of pairings.
    """

    @abc.abstractmethod
    def score(self, pred: np.ndarray, orders: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Per-item scores of every metric, averaged over the pairings in ``orders``."""

    @staticmethod
    def _mean_over(orders, fn) -> np.ndarray:
        return np.mean([fn(order) for order in orders], axis=0)


def lowpass_images(images: np.ndarray, sigma_fraction: float) -> np.ndarray:
    """What survives of (N, C, H, W) images under a Gaussian of sd ``sigma_fraction`` x the image side
    (1/16: 2 px at 32 px, about an eighth of the resolution): two_way_id_lowpass's space."""
    from scipy.ndimage import gaussian_filter

    sigma = sigma_fraction * images.shape[-1]
    return gaussian_filter(np.asarray(images, dtype=np.float64), sigma=(0, 0, sigma, sigma), mode="reflect")


class ImageScorer(_Scorer):
    """Image metrics; with ``groups`` (each item's family or photo category, in truth order) also
    two-way identification against distractors of the same group only."""

    def __init__(self, truth: np.ndarray, config: EvaluationConfig, groups: np.ndarray | None = None):
        self.truth = np.asarray(truth, dtype=np.float64)
        self.groups = None if groups is None else np.asarray(groups).astype(str)
        self.lowpass_sigma = config.lowpass_sigma
        if min(self.truth.shape[2:]) < M.SSIM_MIN_SIDE:
            raise CortexflowInputError(
                f"images of {self.truth.shape[2]}x{self.truth.shape[3]} pixels are smaller than SSIM's Gaussian "
                f"window ({M.SSIM_MIN_SIDE} pixels at sigma 1.5)", fix="evaluate images of at least 11x11 pixels")
        self.features = make_image_features(config.image_features)
        self.truth_features = self.features(self.truth)
        self.hog = HOGFeatures()
        self.truth_hog = self.hog(self.truth)
        self.truth_lowpass = self.lowpass(self.truth)

    def lowpass(self, images: np.ndarray) -> np.ndarray:
        return lowpass_images(images, self.lowpass_sigma)

    def score(self, pred, orders):
        pred = np.clip(np.asarray(pred, dtype=np.float64), 0.0, 1.0)  # decoders may overshoot [0, 1] slightly
        pixel_corr = M.correlation_matrix(pred, self.truth)
        feature_corr = M.correlation_matrix(self.features(pred), self.truth_features)
        hog_corr = M.correlation_matrix(self.hog(pred), self.truth_hog)
        lowpass_corr = M.correlation_matrix(self.lowpass(pred), self.truth_lowpass)
        scores = {
            "pixcorr": self._mean_over(orders, lambda o: M.pixcorr(pred, self.truth, o)),
            "ssim": self._mean_over(orders, lambda o: M.ssim(pred, self.truth, o)),
            "two_way_id_pixel": self._mean_over(orders, lambda o: M.two_way_identification(pixel_corr, o)),
            "two_way_id_feature": self._mean_over(orders, lambda o: M.two_way_identification(feature_corr, o)),
            "two_way_id_hog": self._mean_over(orders, lambda o: M.two_way_identification(hog_corr, o)),
            "two_way_id_lowpass": self._mean_over(orders, lambda o: M.two_way_identification(lowpass_corr, o)),
        }
        if self.groups is not None:
            scores["two_way_id_within_category"] = self._mean_over(
                orders, lambda o: M.two_way_identification_within(feature_corr, self.groups, o))
        return scores


class AudioScorer(_Scorer):
    def __init__(self, truth: np.ndarray, config: EvaluationConfig):
        self.truth = np.asarray(truth, dtype=np.float64)
        self.db_per_unit = config.log_mel_db_per_unit

    def score(self, pred, orders):
        pred = np.asarray(pred, dtype=np.float64)
        corr = M.correlation_matrix(pred, self.truth)
        return {
            "mel_corr": self._mean_over(orders, lambda o: M.mel_correlation(pred, self.truth, o)),
            "lsd": self._mean_over(orders, lambda o: M.log_spectral_distance(pred, self.truth, o, self.db_per_unit)),
            "two_way_id": self._mean_over(orders, lambda o: M.two_way_identification(corr, o)),
        }


class TextScorer(_Scorer):
    def __init__(self, truth: np.ndarray, config: EvaluationConfig):
        self.truth = [str(t) for t in truth]
        self.normalize = config.normalize_text
        self.ngrams = config.text_features
        self.truth_features = char_ngram_features(self.truth, self.ngrams)

    def score(self, pred, orders):
        pred = [str(p) for p in pred]
        corr = M.correlation_matrix(char_ngram_features(pred, self.ngrams), self.truth_features)
        return {
            "cer": self._mean_over(orders, lambda o: M.character_error_rate(pred, self.truth, o, self.normalize)),
            "wer": self._mean_over(orders, lambda o: M.word_error_rate(pred, self.truth, o, self.normalize)),
            "bleu": self._mean_over(orders, lambda o: M.bleu(pred, self.truth, o, self.normalize)),
            "two_way_id": self._mean_over(orders, lambda o: M.two_way_identification(corr, o)),
        }


SCORERS = {"image": ImageScorer, "audio": AudioScorer, "text": TextScorer}


# ---------------------------------------------------------------- computations


def chance_source(methods) -> str:
    """The method whose reconstructions define chance: the decoder if present."""
    ordered = method_order(methods)
    decoders = [m for m in ordered if is_decoder_method(m)]
    candidates = decoders or [m for m in ordered if m != "ceiling"] or ordered
    return candidates[0]


def score_items(recon: Recon, modality: str, config: EvaluationConfig, seed: int = 0,
                decoder_seeds: list[Recon] | None = None, units: ItemUnits | None = None) -> pd.DataFrame:
    """Per-item scores of every method and of chance: columns method, metric, item, score, seed.

    ``recon`` is the first training seed's file; ``decoder_seeds`` the others
    (same items), whose decoder methods are scored too (seed 1, 2, ...).
    ``units`` (image) gives each item's distractor group for
    ``two_way_id_within_category``; without groups that metric is not scored.
    """
    if modality == "image":
        groups = units.subset(recon.ids).group if units is not None and units.has_groups else None
        scorer = ImageScorer(recon.truth, config, groups)
    else:
        scorer = SCORERS[modality](recon.truth, config)
    n = len(recon.ids)
    identity = [np.arange(n)]
    rng = np.random.default_rng(seed)
    chance_orders = [M.derangement(n, rng) for _ in range(config.chance_permutations)]
    jobs = [(m, recon.methods[m], identity) for m in method_order(recon.methods)]
    source = chance_source(recon.methods)
    jobs.append(("chance", recon.methods[source], chance_orders))
    seeds = {m: (0 if is_decoder_method(m) else pd.NA) for m, _, _ in jobs}
    jobs = [(m, pred, orders, seeds[m]) for m, pred, orders in jobs]
    for k, other in enumerate(decoder_seeds or [], start=1):
        _check_same_items(recon, other)
        jobs += [(m, other.methods[m], identity, k) for m in method_order(other.methods) if is_decoder_method(m)]
    frames = []
    for method, pred, orders, training_seed in tqdm(jobs, desc=f"scoring {modality}", disable=None, leave=False):
        for metric, scores in scorer.score(pred, orders).items():
            frames.append(pd.DataFrame({"method": method, "metric": metric, "item": recon.ids,
                                        "score": np.asarray(scores, dtype=np.float64),
                                        "seed": pd.array([training_seed] * n, dtype="Int64")}))
    log.info("chance: %s's reconstructions against %d random derangements of the truth",
             source, config.chance_permutations)
    return pd.concat(frames, ignore_index=True)[ITEM_COLUMNS]


def _check_same_items(first: Recon, other: Recon) -> None:
    if not (np.array_equal(first.ids, other.ids) and first.truth.shape == other.truth.shape):
        raise CortexflowInputError("recon files of one subject's training seeds hold different test items",
                                   path=other.path, fix="rerun the sample stage for every seed on the same dataset")


def _scores_by(items: pd.DataFrame) -> dict[tuple[str, str], np.ndarray]:
    """(method, metric) -> (n_seeds, n_items) scores, items in the same order for every method."""
    items = _with_seed(items)
    out = {}
    for (method, metric), group in items.groupby(["method", "metric"], sort=False):
        out[(method, metric)] = _seed_by_item(group["seed_key"].to_numpy(), group["item"].to_numpy(),
                                              group["score"].to_numpy(dtype=np.float64))
    return out


def _seed_by_item(seeds: np.ndarray, items: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``pivot_table(index=seed, columns=item, values=score, aggfunc="first").sort_index(axis=1)``, as
    numpy: rows by seed and columns by item, both sorted; NaN scores count as missing, a seed or an
    item with no score is left out, and where a pair repeats, its first score counts. (The summary
    builds hundreds of these tables; pandas' pivot took most of its time.)"""
    keep = ~np.isnan(scores)
    seeds, items, scores = seeds[keep], items[keep], scores[keep]
    seed_keys, seed_rows = np.unique(seeds, return_inverse=True)
    item_keys, item_cols = np.unique(items, return_inverse=True)
    cells, first = np.unique(seed_rows * len(item_keys) + item_cols, return_index=True)
    table = np.full((len(seed_keys), len(item_keys)), np.nan)
    table.flat[cells] = scores[first]
    return table


def _with_seed(items: pd.DataFrame) -> pd.DataFrame:
    items = items.copy()
    seed = items["seed"] if "seed" in items.columns else pd.Series(pd.NA, index=items.index, dtype="Int64")
    items["seed_key"] = seed.astype("Int64").fillna(-1).astype(int)
    return items


def _draws(items: pd.DataFrame, config: EvaluationConfig, seed: int, units: ItemUnits | None = None):
    """Item draws shared by every method (keyword arguments of ``hierarchical_bootstrap``: item
    ``indices``, or cluster ``weights`` where units hold several items), the ``resample_unit`` they
    stand for, and one seed draw per number of training seeds."""
    ordered = np.sort(items["item"].astype(str).unique())  # the column order of _scores_by
    units = ItemUnits.independent(ordered) if units is None else units.subset(ordered)
    cache: dict[int, np.ndarray] = {}

    def seeds(n_seeds: int) -> np.ndarray:
        if n_seeds not in cache:
            cache[n_seeds] = seed_indices(n_seeds, config.n_boot, seed)
        return cache[n_seeds]
    return units.draws(config.n_boot, seed), units.resample_unit, seeds


def summarize_items(items: pd.DataFrame, *, subject: str, modality: str, config: EvaluationConfig,
                    seed: int = 0, units: ItemUnits | None = None) -> pd.DataFrame:
    """Mean per method and metric (over items and training seeds) with its bootstrap interval over both
    (over units, then items within them, where ``units`` groups items)."""
    scores = _scores_by(items)
    draws, _, seeds = _draws(items, config, seed, units)
    rows = []
    for (method, metric), table in scores.items():
        r = hierarchical_bootstrap(table, confidence=config.confidence, seeds=seeds(len(table)), **draws)
        rows.append((subject, modality, method, metric, r.value, r.ci_low, r.ci_high, r.n))
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def seed_values(items: pd.DataFrame) -> pd.DataFrame:
    """Each decoder method's mean over items per training seed: columns method, metric, seed, value."""
    items = items[items["method"].map(is_decoder_method)]
    items = items[items["seed"].notna()] if "seed" in items.columns else items.assign(seed=0)
    return (items.groupby(["method", "metric", "seed"], sort=True)["score"].mean()
            .rename("value").reset_index())


def comparison_pairs(methods) -> list[tuple[str, str]]:
    """Which differences to report, as (method_a, method_b), diff = a - b.

    Every decoder method against every baseline, chance and the ceilings; every
    decoder variant (``dit_mean8``...) against ``dit``; every baseline against chance.
    """
    ordered = method_order(set(methods))
    decoders = [m for m in ordered if is_decoder_method(m)]
    baselines = [m for m in ordered if is_baseline_method(m)]
    references = [m for m in ordered if m in REFERENCE_METHODS]
    pairs = []
    for d in decoders:
        pairs += [(d, ref) for ref in baselines + references]
        if d != "dit" and d.startswith("dit") and "dit" in ordered:
            pairs.append((d, "dit"))
    if "chance" in ordered:
        pairs += [(b, "chance") for b in baselines]
    return pairs


def compare_methods(items: pd.DataFrame, *, subject: str, modality: str, config: EvaluationConfig,
                    seed: int = 0, units: ItemUnits | None = None) -> pd.DataFrame:
    """Paired bootstrap differences: the same resampled items (and training seeds) for both methods.

    The per-item difference is taken per training seed (a decoder's seed-k
    scores minus the baseline's, which has one "seed"; two decoder methods of
    the same seeds pair seed by seed), and its mean gets the two-stage
    interval over seeds and items of ``hierarchical_bootstrap`` (items resampled by unit where
    ``units`` groups them; the column ``resample_unit`` says which).
    """
    scores = _scores_by(items)
    draws, resample_unit, seeds = _draws(items, config, seed, units)
    metrics = list(dict.fromkeys(items["metric"]))
    rows = []
    for a, b in comparison_pairs(items["method"].unique()):
        for metric in metrics:
            if (a, metric) in scores and (b, metric) in scores:
                A, B = scores[(a, metric)], scores[(b, metric)]
                if len(A) != len(B) and 1 not in (len(A), len(B)):
                    raise CortexflowInputError(f"{a} has {len(A)} training seeds and {b} {len(B)}: cannot pair them")
                diff = A - B
                r = hierarchical_bootstrap(diff, confidence=config.confidence, seeds=seeds(len(diff)), **draws)
                rows.append((subject, modality, metric, a, b, r.value, r.ci_low, r.ci_high, r.n, resample_unit))
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


# -------------------------------------------------------------------- the stage


def evaluate_stage(*, recon: list[str], out_summary: str, out_items: str, out_comparisons: str, subject: str,
                   modality: str, params: dict, seed: int = 0, stimuli: str | None = None) -> None:
    """Score every method of one subject's recon files (one per training seed, in seed order);
    write summary, per-item scores and comparisons. ``stimuli`` (the study's stimuli.tsv) tells
    which items share a source photo (resampled together) and each item's family."""
    config = EvaluationConfig.from_params(params)
    paths = [recon] if isinstance(recon, (str, Path)) else list(recon)
    if not paths:
        raise CortexflowInputError("no recon file to evaluate", fix="pass the sample stage's recon files")
    data = [load_recon(p, modality) for p in paths]
    log.info("evaluating %s: %d items, %d training seed(s), methods %s", paths[0], len(data[0].ids), len(data),
             method_order(data[0].methods))
    units = load_item_units(stimuli, data[0].ids) if stimuli else None
    resampled = units if config.resample_by == "unit" else None
    if resampled is not None:
        log.info("resampling unit: %s (%d units of %d items; families %s)", units.resample_unit,
                 len(np.unique(units.unit)), len(units.items), sorted(set(units.family)))
    items = score_items(data[0], modality, config, seed, decoder_seeds=data[1:], units=units)
    summary = summarize_items(items, subject=subject, modality=modality, config=config, seed=seed, units=resampled)
    comparisons = compare_methods(items, subject=subject, modality=modality, config=config, seed=seed,
                                  units=resampled)
    for row in summary.itertuples():
        log.info("sub-%s %s %-10s %-20s %.4f [%.4f, %.4f]", subject, modality, row.method, row.metric,
                 row.value, row.ci_low, row.ci_high)
    _io.save_parquet(out_items, items)
    _io.save_parquet(out_summary, summary)
    _io.save_parquet(out_comparisons, comparisons)
    log.info("wrote %s, %s, %s", out_summary, out_items, out_comparisons)
