"""The baselines beside ridge (cortexflow.models.baselines): per-target ridge, ridge to pixels,
nearest-neighbour retrieval, the character n-gram LM, and the fit_baseline stage that stores them."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge, RidgeCV

from cortexflow.errors import CortexflowInputError
from cortexflow.models.baselines import (CharNgramLM, fit_ngram_lm, fit_ridge_per_target, load_baselines,
                                         nearest_by_correlation)
from cortexflow.models.latents import save_latents
from cortexflow.models.ridge import RidgeDecoder
from cortexflow.stages.baseline import fit_baseline_stage
from test_ridge import linear_problem, r2, write_dataset

ALPHAS = np.logspace(-2, 4, 13)


def targets_needing_different_penalties(p, seed=0, n=30):
    """Five targets from strong signal to pure noise: the best penalty differs per target."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    W = rng.normal(size=(p, 5))
    Y = X @ W * np.array([3, 1, 0.3, 0.1, 0]) + rng.normal(size=(n, 5)) * np.array([0.1, 1, 1, 3, 1])
    return X, Y


@pytest.mark.parametrize("p", [10, 60])  # primal (p < n) and kernel (p > n) paths
def test_per_target_alphas_equal_sklearn_ridgecv_leave_one_out(p):
    X, Y = targets_needing_different_penalties(p)
    fitted, cv_error = fit_ridge_per_target(X, Y, ALPHAS, n_folds=len(X))  # leave-one-out folds
    reference = RidgeCV(alphas=ALPHAS, alpha_per_target=True).fit(X, Y)
    np.testing.assert_array_equal(fitted.alpha, reference.alpha_)
    assert len(np.unique(fitted.alpha)) >= 3  # the targets really get different penalties
    assert cv_error.shape == (len(ALPHAS), 5)
    # and the coefficients are sklearn's Ridge with those per-target penalties
    ridge = Ridge(alpha=fitted.alpha).fit(X, Y)
    np.testing.assert_allclose(fitted.coef, ridge.coef_.T, atol=1e-5)
    np.testing.assert_allclose(fitted.predict(X[:4]), ridge.predict(X[:4]), atol=1e-4)


def test_per_target_ridge_with_one_target_type_equals_the_shared_alpha_ridge():
    # identical targets (one column repeated) must get the alpha the single-alpha ridge picks on the same folds
    X, Y, _, _ = linear_problem(q=1, p=40)
    groups = np.repeat(np.arange(len(X) // 2), 2)
    fitted, _ = fit_ridge_per_target(X, np.repeat(Y, 3, axis=1), ALPHAS, n_folds=5, groups=groups)
    shared = RidgeDecoder(ALPHAS, 5).fit(X, Y, groups=groups)
    assert np.all(fitted.alpha == shared.alpha_)


def test_nearest_neighbour_returns_the_exact_training_item():
    rng = np.random.default_rng(0)
    candidates = rng.normal(size=(30, 4, 3, 3))
    order = nearest_by_correlation(candidates[[7, 2, 19]], candidates, k=8)
    assert order.shape == (3, 8)
    np.testing.assert_array_equal(order[:, 0], [7, 2, 19])
    # correlation, not distance: a scaled and shifted latent retrieves the same item
    assert nearest_by_correlation(3 * candidates[[5]] + 1, candidates, k=1)[0, 0] == 5
    # neighbours come in order of decreasing correlation
    flat = candidates.reshape(30, -1)
    corr = np.corrcoef(flat[7], flat)[0, 1:]
    assert np.all(np.diff(corr[order[0]]) <= 1e-12)


def test_ngram_lm_learns_the_training_statistics():
    sentences = ["the cat sat on the mat", "the dog sat on the log", "the cat ran to the mat", "a dog ran on the log"]
    lm = CharNgramLM(order=3, add_k=0.01).fit(sentences)
    seen, n = lm.sentence_logprob("the cat sat on the log")
    unseen, m = lm.sentence_logprob("zq xv wk jp")
    assert seen / n > unseen / m + 2  # nats per symbol
    # the most probable sentence is made of the training text's frequent pieces
    best = lm.most_probable()
    assert 0 < len(best) <= max(map(len, sentences)) and set(best) <= set("".join(sentences))
    assert lm.sentence_logprob(best)[0] / (len(best) + 1) >= max(lm.sentence_logprob(s)[0] / (len(s) + 1)
                                                                 for s in sentences)
    fitted, info = fit_ngram_lm(sentences * 3, orders=(1, 3), add_ks=(0.01, 1.0), n_folds=3)
    assert info["order"] == 3  # characters depend on their context
    with pytest.raises(CortexflowInputError):
        CharNgramLM(order=0)


def test_fit_baseline_stage_writes_every_baseline(tmp_path):
    X, Y, X_test, Y_test = linear_problem(q=16, n=120)
    stim = np.array([f"s{i:03d}" for i in range(len(X))])
    write_dataset(tmp_path / "ds", X, stim)
    rng = np.random.default_rng(1)
    # pixels that are a linear function of the latents, so ridge to pixels can be checked too
    mix = rng.normal(size=(16, 3 * 12 * 12)) / 4
    images = (Y @ mix).reshape(-1, 3, 12, 12).astype(np.float32)
    save_latents(tmp_path / "latents.npz", ids=stim, latents=Y.reshape(-1, 4, 2, 2), targets=images,
                 vae_reconstructions=images, splits=np.array(["train"] * len(X)), norm_mean=0.0, norm_std=1.0)
    fit_baseline_stage(dataset=str(tmp_path / "ds"), out=str(tmp_path / "ridge.npz"),
                       params={"cv_folds": 4, "nn_k": "auto", "nn_source": "auto"},
                       latents=str(tmp_path / "latents.npz"), out_baselines=str(tmp_path / "baselines.npz"))
    fitted = load_baselines(tmp_path / "baselines.npz")
    assert sorted(fitted.training_ids) == sorted(stim)
    # nn_mean<k>: k and source chosen on the out-of-fold predictions, the whole table kept
    assert fitted.nn_tuning is not None and len(fitted.nn_tuning) == 7 * 2  # the plan's grid: k = 1 .. 64
    best = fitted.nn_tuning.sort_values("score", ascending=False, kind="stable").iloc[0]
    assert (fitted.nn_k, fitted.nn_source) == (best["k"], best["source"]) and set(fitted.nn_tuning["n_trials"]) == {120}
    fit_baseline_stage(dataset=str(tmp_path / "ds"), out=str(tmp_path / "ridge2.npz"),
                       params={"cv_folds": 4},  # the default: nn_mean8 of the VAE reconstructions
                       latents=str(tmp_path / "latents.npz"), out_baselines=str(tmp_path / "fixed.npz"))
    fixed = load_baselines(tmp_path / "fixed.npz")
    assert (fixed.nn_k, fixed.nn_source, fixed.nn_tuning) == (8, "vae", None)
    pred = fitted.ridge_pt.predict(X_test)
    assert pred.shape == (len(X_test), 4, 2, 2) and fitted.ridge_pt.alpha.shape == (16,)
    assert r2(pred.reshape(len(X_test), -1), Y_test) > 0.8
    pixels = fitted.ridge_pixels.predict(X_test)
    assert pixels.shape == (len(X_test), 3, 12, 12)
    assert r2(pixels.reshape(len(X_test), -1), (Y_test @ mix)) > 0.8
    with pytest.raises(CortexflowInputError, match="not found"):
        load_baselines(tmp_path / "missing.npz")


def test_lm_guided_by_an_embedding_writes_the_sentence_it_points_at():
    from cortexflow.evaluation.features import CharNgramConfig, char_ngram_features
    from cortexflow.evaluation.metrics import character_error_rate
    from cortexflow.models.baselines import conditioned_decode

    training = ["the young child ate the bread", "a old man ate the cheese", "the child saw the young dog",
                "a dog ate the cheese", "the man saw a child", "the old dog saw the bread"]
    held_out = "the young child ate the cheese"  # never seen whole, made of seen pieces
    lm = CharNgramLM(order=3, add_k=0.1).fit(training)
    features = CharNgramConfig()
    target = char_ngram_features([held_out], features)[0]
    assert conditioned_decode(lm, target, features, weight=0.0) == lm.most_probable()
    guided = conditioned_decode(lm, target, features, weight=30.0)
    unguided_cer = character_error_rate([lm.most_probable()], [held_out])[0]
    assert character_error_rate([guided], [held_out])[0] < unguided_cer - 0.15  # measured: .33 against .53


def test_retrieval_k_and_source_are_chosen_on_held_out_folds():
    from cortexflow.evaluation.metrics import rowwise_pearson
    from cortexflow.models.baselines import choose_retrieval
    from cortexflow.models.ridge import grouped_folds

    rng = np.random.default_rng(0)
    n = 240
    ids = np.array([f"s{i:03d}" for i in range(n)])
    # stimuli on a smooth 1-D manifold: neighbours in latent space look alike
    t = np.sort(rng.uniform(0, 6, n))
    latents = np.stack([np.sin(t * k) for k in (1, 2, 3)] + [np.cos(t * k) for k in (1, 2, 3)], axis=1)
    images = np.stack([np.sin(t[:, None] * np.arange(1, 21) * 0.3 + p) for p in (0.0, 1.0)], axis=1)
    folds = grouped_folds(n, 5, ids, 0)
    score = lambda a, b: rowwise_pearson(a, b)  # noqa: E731
    noisy_vae = images + rng.normal(0, 1.0, images.shape)  # a poor autoencoder
    sources = {"vae": noisy_vae, "original": images}

    def choose(noise):
        oof = latents + rng.normal(0, noise, latents.shape)
        return choose_retrieval(oof, ids, folds, ids, latents, sources, images, score, (2, 4, 8, 16, 32, 64))

    k_clean, source, table = choose(0.01)
    k_noisy, _, _ = choose(1.5)
    assert source == "original"  # averaging the stimuli beats averaging a poor autoencoder's output
    assert k_clean <= 4 < 16 <= k_noisy  # a noisy prediction wants more neighbours averaged
    assert len(table) == 12 and set(table["n_trials"]) == {n}
    # a trial never retrieves its own stimulus (its fold is left out): even a perfect prediction's
    # nearest neighbour is another stimulus
    perfect, _, t2 = choose_retrieval(latents, ids, folds, ids, latents, {"original": images}, images,
                                      lambda a, b: -np.abs(a - b).reshape(len(a), -1).mean(1), (2,))
    assert t2["score"].iloc[0] < -1e-3
