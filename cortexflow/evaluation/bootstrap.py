"""Percentile bootstrap over test items, marginal and paired.

A reported metric is the mean of per-item scores; its 95% interval is the
percentile interval of that mean over item resamples (Efron & Tibshirani 1993,
ch. 13). Two methods evaluated on the same items are compared with a *paired*
bootstrap: one index resample is applied to both score vectors and the
interval is that of the mean difference. Pairing removes the between-item
variance the two share; with ~100 test items it detects differences that
overlapping marginal intervals would hide (docs/design-notes.md, "The decoder prototype").

Resampling indices are drawn once from ``seed`` and reused, so every method and
metric of one evaluation sees the same resamples (common random numbers) and
the numbers are reproducible.

Items are not always independent: the crops of one source photo share it.
``cluster_bootstrap_counts`` resamples *units* (a source photo with all its
crops; an item that is its own unit) and then items within each drawn unit,
within each stratum (stimulus family), and returns how often each item is
drawn; ``hierarchical_bootstrap`` takes these counts as ``weights`` in place
of item indices (docs/analysis-plan.md, section 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BootstrapResult:
    """Point estimate (the mean over items), its interval, and the item count."""

    value: float
    ci_low: float
    ci_high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


def bootstrap_indices(n_items: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_boot, n_items) item indices drawn with replacement."""
    if n_items < 1 or n_boot < 1:
        raise ValueError(f"need n_items >= 1 and n_boot >= 1, got {n_items}, {n_boot}")
    return np.random.default_rng(seed).integers(0, n_items, size=(n_boot, n_items))


def _check_scores(scores: np.ndarray, name: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of per-item scores, got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{name} holds {int((~np.isfinite(scores)).sum())} non-finite per-item scores")
    return scores


def _percentile_interval(scores: np.ndarray, indices: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if indices.ndim != 2 or indices.shape[1] != len(scores):
        raise ValueError(f"indices of shape {indices.shape} do not fit {len(scores)} items")
    means = scores[indices].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_ci(scores: np.ndarray, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0,
                 indices: np.ndarray | None = None) -> BootstrapResult:
    """Mean of ``scores`` with its percentile bootstrap interval over items."""
    scores = _check_scores(scores, "scores")
    if indices is None:
        indices = bootstrap_indices(len(scores), n_boot, seed)
    low, high = _percentile_interval(scores, indices, confidence)
    return BootstrapResult(float(scores.mean()), low, high, len(scores))


def paired_bootstrap(scores_a: np.ndarray, scores_b: np.ndarray, *, n_boot: int = 1000, confidence: float = 0.95,
                     seed: int = 0, indices: np.ndarray | None = None) -> BootstrapResult:
    """Mean of ``scores_a - scores_b`` over the same items, with its paired interval."""
    a = _check_scores(scores_a, "scores_a")
    b = _check_scores(scores_b, "scores_b")
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same items, got {a.shape} and {b.shape}")
    return bootstrap_ci(a - b, n_boot=n_boot, confidence=confidence, seed=seed, indices=indices)


def seed_indices(n_seeds: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_boot, n_seeds) training-seed indices drawn with replacement (a stream apart from the items')."""
    if n_seeds < 1 or n_boot < 1:
        raise ValueError(f"need n_seeds >= 1 and n_boot >= 1, got {n_seeds}, {n_boot}")
    return np.random.default_rng([seed, 1]).integers(0, n_seeds, size=(n_boot, n_seeds))


def cluster_bootstrap_counts(units, *, strata=None, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_boot, n_items) draw counts of a two-level cluster bootstrap.

    Within each stratum (all items one stratum if ``strata`` is None), each
    resample draws the stratum's units with replacement, then, for every drawn
    copy of a unit, as many of its items as it has, with replacement
    (Davison & Hinkley 1997, section 3.8: resampling clusters, then within
    them). An item that is its own unit is drawn as often as its unit. Strata
    keep their size, so a resample never loses a stimulus family.
    """
    units = np.asarray(units).astype(str)
    n = len(units)
    if n < 1 or n_boot < 1:
        raise ValueError(f"need at least one item and n_boot >= 1, got {n}, {n_boot}")
    strata = np.zeros(n, dtype=str) if strata is None else np.asarray(strata).astype(str)
    if strata.shape != units.shape:
        raise ValueError(f"strata of shape {strata.shape} do not fit {n} items")
    rng = np.random.default_rng([seed, 2])  # a stream apart from the item and seed draws
    counts = np.zeros((n_boot, n), dtype=np.int64)
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        labels = np.unique(units[members])
        copies = rng.multinomial(len(labels), np.full(len(labels), 1.0 / len(labels)), size=n_boot)
        for j, label in enumerate(labels):
            items = members[units[members] == label]
            if len(items) == 1:
                counts[:, items[0]] = copies[:, j]
            else:
                counts[:, items] = rng.multinomial(copies[:, j] * len(items), np.full(len(items), 1.0 / len(items)))
    return counts


def hierarchical_bootstrap(scores: np.ndarray, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0,
                           indices: np.ndarray | None = None, seeds: np.ndarray | None = None,
                           weights: np.ndarray | None = None) -> BootstrapResult:
    """Mean of a (n_training_seeds, n_items) score table with an interval over seeds *and* items.

    Each resample draws training seeds with replacement and, independently,
    items with replacement (the same items for every drawn seed: all seeds
    reconstruct the same test set), and takes the mean of the drawn cells
    (a two-stage bootstrap; Davison & Hinkley 1997, section 3.8). With one seed
    it is ``bootstrap_ci``; when seeds disagree the interval widens with their
    spread, which the item bootstrap of one run cannot show. ``indices`` /
    ``seeds`` are the item and seed draws, shared across methods for common
    random numbers; ``weights`` (``cluster_bootstrap_counts``) replace
    ``indices`` where items are resampled by unit.
    """
    table = np.asarray(scores, dtype=np.float64)
    if table.ndim == 1:
        table = table[None, :]
    if table.ndim != 2 or table.size == 0:
        raise ValueError(f"scores must be (n_seeds, n_items), got shape {np.shape(scores)}")
    if not np.all(np.isfinite(table)):
        raise ValueError(f"scores hold {int((~np.isfinite(table)).sum())} non-finite per-item scores")
    n_seeds, n_items = table.shape
    if weights is None and indices is None:
        indices = bootstrap_indices(n_items, n_boot, seed)
    draws = weights if weights is not None else indices
    if seeds is None:
        seeds = seed_indices(n_seeds, len(draws), seed)
    if draws.shape[1] != n_items or seeds.shape != (len(draws), n_seeds):
        raise ValueError(f"draws of shapes {draws.shape}, {seeds.shape} do not fit {n_seeds} seeds x {n_items} items")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    # mean over drawn seeds and items = mean over drawn seeds of (item-resampled row means)
    if weights is not None:  # (n_seeds, n_boot): each seed's weighted mean over the drawn items
        per_seed = (table @ weights.T.astype(np.float64)) / weights.sum(axis=1)
    else:
        per_seed = table[:, indices].mean(axis=2)
    means = per_seed[seeds, np.arange(len(draws))[:, None]].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return BootstrapResult(float(table.mean()), float(low), float(high), n_items)
