"""Percentile bootstrap intervals over items, marginal and paired."""

from __future__ import annotations

import numpy as np
import pytest

from cortexflow.evaluation.bootstrap import bootstrap_ci, bootstrap_indices, paired_bootstrap


def test_interval_surrounds_the_mean_with_the_normal_theory_width():
    rng = np.random.default_rng(0)
    scores = rng.normal(0.3, 1.0, size=400)
    r = bootstrap_ci(scores, n_boot=4000, seed=1)
    assert r.value == pytest.approx(scores.mean())
    assert r.ci_low < r.value < r.ci_high and r.n == 400
    expected = 2 * 1.96 * scores.std() / np.sqrt(400)
    assert (r.ci_high - r.ci_low) == pytest.approx(expected, rel=0.1)
    narrower = bootstrap_ci(scores, n_boot=4000, seed=1, confidence=0.5)
    assert narrower.ci_high - narrower.ci_low < 0.5 * (r.ci_high - r.ci_low)


def test_seeded_and_reproducible():
    scores = np.random.default_rng(2).random(50)
    assert bootstrap_ci(scores, seed=3) == bootstrap_ci(scores, seed=3)
    assert bootstrap_ci(scores, seed=3) != bootstrap_ci(scores, seed=4)
    indices = bootstrap_indices(50, 1000, 3)
    assert bootstrap_ci(scores, indices=indices) == bootstrap_ci(scores, seed=3)


def test_paired_difference_of_a_method_with_itself_is_exactly_zero():
    scores = np.random.default_rng(5).random(80)
    r = paired_bootstrap(scores, scores, seed=0)
    assert (r.value, r.ci_low, r.ci_high) == (0.0, 0.0, 0.0)
    assert not r.excludes_zero


def test_pairing_detects_a_small_consistent_gain_that_marginal_intervals_miss():
    rng = np.random.default_rng(6)
    item_difficulty = rng.normal(0.5, 0.2, size=100)  # shared by both methods
    a = item_difficulty + rng.normal(0, 0.01, size=100)
    b = item_difficulty + 0.02 + rng.normal(0, 0.01, size=100)
    ma, mb = bootstrap_ci(a, seed=0), bootstrap_ci(b, seed=0)
    assert ma.ci_high > mb.ci_low  # marginal intervals overlap
    diff = paired_bootstrap(b, a, seed=0)
    assert diff.excludes_zero and diff.ci_low > 0.01
    assert diff.value == pytest.approx(b.mean() - a.mean())


def test_bad_scores_are_rejected():
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap_ci(np.array([0.1, np.nan, 0.3]))
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError):
        bootstrap_ci(np.zeros(3), confidence=1.5)


def test_hierarchical_bootstrap_with_one_seed_is_the_item_bootstrap():
    from cortexflow.evaluation.bootstrap import hierarchical_bootstrap

    scores = np.random.default_rng(3).normal(size=60)
    indices = bootstrap_indices(60, 500, seed=1)
    assert hierarchical_bootstrap(scores[None], indices=indices) == bootstrap_ci(scores, indices=indices)


def test_hierarchical_interval_widens_when_training_seeds_disagree():
    from cortexflow.evaluation.bootstrap import hierarchical_bootstrap

    items = np.random.default_rng(4).normal(0.5, 0.1, size=80)
    agree = np.stack([items, items, items])
    disagree = agree + np.array([[0.15], [0.0], [-0.15]])  # same mean, seeds 0.3 apart
    a, d = hierarchical_bootstrap(agree, seed=2), hierarchical_bootstrap(disagree, seed=2)
    assert a.value == pytest.approx(d.value) and a.n == d.n == 80
    assert (d.ci_high - d.ci_low) > 2 * (a.ci_high - a.ci_low)
    # the item-only interval of the pooled scores would not see the seeds' spread
    pooled = bootstrap_ci(disagree.mean(axis=0), seed=2)
    assert (pooled.ci_high - pooled.ci_low) < 0.6 * (d.ci_high - d.ci_low)
    with pytest.raises(ValueError, match="non-finite"):
        hierarchical_bootstrap(np.array([[1.0, np.nan]]))
