"""The evaluate stage: every metric for every method of one subject and modality.

Input is the sample stage's recon file (``R/recon/sub-{s}_{modality}.npz``):
``ids``, ``truth`` and one array per method (``dit``, ``dit_mean8``, ``ridge``,
``ceiling``; ``decoder``/``ridge`` strings for text). Output:

- per-item scores (``method, metric, item, score``), from which everything else
  follows;
- the summary: mean over items with a percentile bootstrap interval;
- paired comparisons over the same items (decoder minus ridge and others).

Reference rows beside the methods:
- ``chance``: the decoder's reconstructions scored against *other* items'
  truths (random derangements, averaged over ``chance_permutations``), i.e. what
  the metric gives on this test set when the reconstruction carries no
  information about its own stimulus. Two-way identification comes out ~0.5.
- ``ridge``: the linear baseline (``ridge.py``), decoded as the decoder is.
- ``ceiling``: whatever the sample stage stored under that name (the VAE's
  reconstruction of the true stimulus: the best a latent decoder could score).
- ``noise_ceiling`` (simulated study): ridge on the simulator's noise-free
  responses (``noise_ceiling.py``).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cortexflow import _io
from cortexflow.errors import CortexflowInputError
from cortexflow.evaluation import metrics as M
from cortexflow.evaluation.bootstrap import bootstrap_ci, bootstrap_indices, paired_bootstrap
from cortexflow.evaluation.features import CharNgramConfig, HOGFeatures, char_ngram_features, make_image_features

log = logging.getLogger("cortexflow.evaluation.evaluate")

MODALITIES = ("image", "audio", "text")
METRICS = {
    # two_way_id_feature: the independent feature space (evaluation.image_features, a fixed random-weight
    # CNN by default); two_way_id_hog: HOG, generous on the simulated study (features.py)
    "image": ("pixcorr", "ssim", "two_way_id_pixel", "two_way_id_feature", "two_way_id_hog"),
    "audio": ("mel_corr", "lsd", "two_way_id"),
    "text": ("cer", "wer", "bleu", "two_way_id"),
}
LOWER_IS_BETTER = frozenset({"cer", "wer", "lsd"})
REFERENCE_METHODS = ("ridge", "chance", "ceiling", "noise_ceiling")
SUMMARY_COLUMNS = ["subject", "modality", "method", "metric", "value", "ci_low", "ci_high", "n"]
COMPARISON_COLUMNS = ["subject", "modality", "metric", "method_a", "method_b", "diff", "ci_low", "ci_high", "n"]
ITEM_COLUMNS = ["method", "metric", "item", "score"]


def is_decoder_method(method: str) -> bool:
    """``dit``, its variants (``dit_mean8``...) and the text ``decoder``."""
    return method == "decoder" or method == "dit" or method.startswith("dit_") or method.startswith("decoder_")


def method_order(methods) -> list[str]:
    """Decoder methods first (``dit`` before its variants), then ridge, chance, ceiling, others."""
    rank = {"dit": 0, "decoder": 0, "ridge": 2, "chance": 3, "ceiling": 4, "noise_ceiling": 5}
    return sorted(methods, key=lambda m: (rank.get(m, 1 if is_decoder_method(m) else 6), m))


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

    @classmethod
    def from_params(cls, params: Mapping | None) -> "EvaluationConfig":
        params = dict(params or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(params) - known)
        if unknown:
            raise CortexflowInputError(f"unknown evaluation parameters {unknown}",
                                       fix=f"use only {sorted(known)} in the config's evaluation section")
        values = dict(params)
        if "text_features" in values:
            values["text_features"] = CharNgramConfig.from_params(values["text_features"])
        config = cls(**values)
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


class ImageScorer(_Scorer):
    def __init__(self, truth: np.ndarray, config: EvaluationConfig):
        self.truth = np.asarray(truth, dtype=np.float64)
        if min(self.truth.shape[2:]) < M.SSIM_MIN_SIDE:
            raise CortexflowInputError(
                f"images of {self.truth.shape[2]}x{self.truth.shape[3]} pixels are smaller than SSIM's Gaussian "
                f"window ({M.SSIM_MIN_SIDE} pixels at sigma 1.5)", fix="evaluate images of at least 11x11 pixels")
        self.features = make_image_features(config.image_features)
        self.truth_features = self.features(self.truth)
        self.hog = HOGFeatures()
        self.truth_hog = self.hog(self.truth)

    def score(self, pred, orders):
        pred = np.clip(np.asarray(pred, dtype=np.float64), 0.0, 1.0)  # decoders may overshoot [0, 1] slightly
        pixel_corr = M.correlation_matrix(pred, self.truth)
        feature_corr = M.correlation_matrix(self.features(pred), self.truth_features)
        hog_corr = M.correlation_matrix(self.hog(pred), self.truth_hog)
        return {
            "pixcorr": self._mean_over(orders, lambda o: M.pixcorr(pred, self.truth, o)),
            "ssim": self._mean_over(orders, lambda o: M.ssim(pred, self.truth, o)),
            "two_way_id_pixel": self._mean_over(orders, lambda o: M.two_way_identification(pixel_corr, o)),
            "two_way_id_feature": self._mean_over(orders, lambda o: M.two_way_identification(feature_corr, o)),
            "two_way_id_hog": self._mean_over(orders, lambda o: M.two_way_identification(hog_corr, o)),
        }


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


def score_items(recon: Recon, modality: str, config: EvaluationConfig, seed: int = 0) -> pd.DataFrame:
    """Per-item scores of every method and of chance: columns method, metric, item, score."""
    scorer = SCORERS[modality](recon.truth, config)
    n = len(recon.ids)
    identity = [np.arange(n)]
    rng = np.random.default_rng(seed)
    chance_orders = [M.derangement(n, rng) for _ in range(config.chance_permutations)]
    jobs = [(m, recon.methods[m], identity) for m in method_order(recon.methods)]
    source = chance_source(recon.methods)
    jobs.append(("chance", recon.methods[source], chance_orders))
    frames = []
    for method, pred, orders in tqdm(jobs, desc=f"scoring {modality}", disable=None, leave=False):
        for metric, scores in scorer.score(pred, orders).items():
            frames.append(pd.DataFrame({"method": method, "metric": metric, "item": recon.ids,
                                        "score": np.asarray(scores, dtype=np.float64)}))
    log.info("chance: %s's reconstructions against %d random derangements of the truth",
             source, config.chance_permutations)
    return pd.concat(frames, ignore_index=True)[ITEM_COLUMNS]


def _scores_by(items: pd.DataFrame) -> dict[tuple[str, str], np.ndarray]:
    """(method, metric) -> per-item scores, all in the same item order."""
    out = {}
    for (method, metric), group in items.groupby(["method", "metric"], sort=False):
        out[(method, metric)] = group.sort_values("item", kind="stable")["score"].to_numpy()
    return out


def summarize_items(items: pd.DataFrame, *, subject: str, modality: str, config: EvaluationConfig,
                    seed: int = 0) -> pd.DataFrame:
    """Mean per method and metric with its percentile bootstrap interval."""
    scores = _scores_by(items)
    n = items["item"].nunique()
    indices = bootstrap_indices(n, config.n_boot, seed)
    rows = []
    for (method, metric), values in scores.items():
        r = bootstrap_ci(values, confidence=config.confidence, indices=indices)
        rows.append((subject, modality, method, metric, r.value, r.ci_low, r.ci_high, r.n))
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def comparison_pairs(methods) -> list[tuple[str, str]]:
    """Which differences to report, as (method_a, method_b), diff = a - b.

    Every decoder method against ridge (the contract), chance and the ceilings; every
    decoder variant (``dit_mean8``...) against ``dit``; ridge against chance.
    """
    methods = set(methods)
    decoders = [m for m in method_order(methods) if is_decoder_method(m)]
    pairs = []
    for d in decoders:
        pairs += [(d, ref) for ref in ("ridge", "chance", "ceiling", "noise_ceiling") if ref in methods]
        if d != "dit" and d.startswith("dit") and "dit" in methods:
            pairs.append((d, "dit"))
    if {"ridge", "chance"} <= methods:
        pairs.append(("ridge", "chance"))
    return pairs


def compare_methods(items: pd.DataFrame, *, subject: str, modality: str, config: EvaluationConfig,
                    seed: int = 0) -> pd.DataFrame:
    """Paired bootstrap differences (same resampled items for both methods)."""
    scores = _scores_by(items)
    n = items["item"].nunique()
    indices = bootstrap_indices(n, config.n_boot, seed)
    metrics = list(dict.fromkeys(items["metric"]))
    rows = []
    for a, b in comparison_pairs(items["method"].unique()):
        for metric in metrics:
            if (a, metric) in scores and (b, metric) in scores:
                r = paired_bootstrap(scores[(a, metric)], scores[(b, metric)], confidence=config.confidence,
                                     indices=indices)
                rows.append((subject, modality, metric, a, b, r.value, r.ci_low, r.ci_high, r.n))
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


# -------------------------------------------------------------------- the stage


def evaluate_stage(*, recon: str, out_summary: str, out_items: str, out_comparisons: str, subject: str,
                   modality: str, params: dict, seed: int = 0) -> None:
    """Score every method of one recon file; write summary, per-item scores and comparisons."""
    config = EvaluationConfig.from_params(params)
    data = load_recon(recon, modality)
    log.info("evaluating %s: %d items, methods %s", recon, len(data.ids), method_order(data.methods))
    items = score_items(data, modality, config, seed)
    summary = summarize_items(items, subject=subject, modality=modality, config=config, seed=seed)
    comparisons = compare_methods(items, subject=subject, modality=modality, config=config, seed=seed)
    for row in summary.itertuples():
        log.info("sub-%s %s %-10s %-20s %.4f [%.4f, %.4f]", subject, modality, row.method, row.metric,
                 row.value, row.ci_low, row.ci_high)
    _io.save_parquet(out_items, items)
    _io.save_parquet(out_summary, summary)
    _io.save_parquet(out_comparisons, comparisons)
    log.info("wrote %s, %s, %s", out_summary, out_items, out_comparisons)
