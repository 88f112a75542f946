"""The ridge baseline: solver, cross-validation, stage, text retrieval."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import Ridge

from cortexflow.errors import CortexflowInputError
from cortexflow.models.ridge import RidgeDecoder, cross_val_predict_ridge, grouped_folds, load_ridge
from cortexflow.stages.baseline import fit_baseline_stage


def linear_problem(n=240, p=60, q=12, noise=0.5, seed=0, n_test=100):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(p, q)) / np.sqrt(p)
    X = rng.normal(size=(n + n_test, p))
    Y = X @ W + 0.3 + noise * rng.normal(size=(n + n_test, q))
    return X[:n], Y[:n], X[n:], X[n:] @ W + 0.3


def r2(pred, truth):
    return 1 - ((pred - truth) ** 2).sum() / ((truth - truth.mean(0)) ** 2).sum()


@pytest.mark.parametrize("p", [60, 400])  # primal (p < n) and kernel (p > n) paths
def test_matches_sklearn_ridge_at_the_chosen_alpha(p):
    X, Y, _, _ = linear_problem(p=p)
    decoder = RidgeDecoder(n_folds=4).fit(X, Y)
    reference = Ridge(alpha=decoder.alpha_).fit(X, Y)
    assert np.allclose(decoder.coef_, reference.coef_.T, atol=1e-5)
    assert np.allclose(decoder.intercept_, reference.intercept_, atol=1e-5)
    assert np.allclose(decoder.predict(X[:5]), reference.predict(X[:5]), atol=1e-4)


def test_recovers_a_known_linear_map_and_picks_a_sensible_alpha():
    X, Y, X_test, Y_test = linear_problem(noise=0.5)
    clean = RidgeDecoder().fit(X, Y)
    assert r2(clean.predict(X_test), Y_test) > 0.8
    # chance: a shuffled pairing of the same predictions
    assert r2(clean.predict(X_test)[::-1], Y_test) < 0
    noisy = RidgeDecoder().fit(*linear_problem(noise=5.0)[:2])
    assert noisy.alpha_ > 5 * clean.alpha_  # more noise, more shrinkage
    grid = clean.alphas
    assert grid[0] < clean.alpha_ < grid[-1] and grid[0] < noisy.alpha_ < grid[-1]
    assert clean.cv_mse_[np.searchsorted(grid, clean.alpha_)] == clean.cv_mse_.min()


def test_targets_keep_their_shape():
    X, Y, X_test, _ = linear_problem(q=12)
    decoder = RidgeDecoder().fit(X, Y.reshape(-1, 3, 2, 2))
    assert decoder.predict(X_test).shape == (100, 3, 2, 2)
    with pytest.raises(CortexflowInputError):
        decoder.predict(X_test[:, :10])


def test_grouped_folds_keep_repeats_together():
    groups = np.repeat(np.arange(20), 3)
    folds = grouped_folds(60, 5, groups, seed=0)
    assert set(folds) == set(range(5))
    for g in range(20):
        assert len(set(folds[groups == g])) == 1
    assert np.bincount(folds).tolist() == [12] * 5


def test_out_of_fold_predictions_never_see_their_own_stimulus():
    # 40 stimuli x 3 repeats; voxels are the stimulus' signature plus small noise
    rng = np.random.default_rng(1)
    signatures = rng.normal(size=(40, 80))
    targets = rng.normal(size=(40, 5))  # unrelated to the voxels: nothing to learn
    groups = np.repeat(np.arange(40), 3)
    X = signatures[groups] + 0.05 * rng.normal(size=(120, 80))
    Y = targets[groups]
    grouped = cross_val_predict_ridge(X, Y, n_folds=5, groups=groups)
    leaky = cross_val_predict_ridge(X, Y, n_folds=5)  # repeats split across folds
    assert grouped.shape == Y.shape and grouped.dtype == np.float32
    assert r2(leaky, Y) > 0.5  # memorises twins
    assert r2(grouped, Y) < 0.05  # cannot


def write_dataset(folder, X, ids):
    """A make_dataset folder whose last voxel column is not selected (pure noise)."""
    folder.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(9).normal(size=(len(X), 1))
    np.save(folder / "X_train.npy", np.hstack([X, noise]).astype(np.float32))
    np.save(folder / "X_test.npy", np.zeros((2, X.shape[1] + 1), np.float32))
    pd.DataFrame({"stimulus_id": ids, "run": 1, "fold": ["train"] * (len(ids) - 10) + ["val"] * 10}).to_parquet(
        folder / "train.parquet")
    pd.DataFrame({"stimulus_id": ["x", "y"], "n_repeats": 2}).to_parquet(folder / "test.parquet")
    pd.DataFrame({"region": "V1", "selected": [True] * X.shape[1] + [False]}).to_parquet(folder / "voxels.parquet")
    (folder / "dataset.json").write_text("{}")


def test_fit_baseline_stage_with_latents_roundtrips(tmp_path):
    X, Y, X_test, Y_test = linear_problem(q=16)
    stim = np.array([f"s{i:03d}" for i in range(len(X))])
    write_dataset(tmp_path / "ds", X, stim)
    order = np.random.default_rng(0).permutation(len(X))  # latents stored in another order
    np.savez(tmp_path / "latents.npz", ids=stim[order], latents=Y.reshape(-1, 4, 2, 2)[order],
             targets=np.zeros((len(X), 1)))
    out = tmp_path / "ridge.npz"
    fit_baseline_stage(dataset=str(tmp_path / "ds"), out=str(out), params={"cv_folds": 4},
                       latents=str(tmp_path / "latents.npz"))
    decoder = load_ridge(out)
    pred = decoder.predict(X_test)
    assert pred.shape == (100, 4, 2, 2)
    assert r2(pred.reshape(100, -1), Y_test) > 0.8
    direct = RidgeDecoder(n_folds=4).fit(X, Y, groups=stim)
    assert decoder.alpha_ == direct.alpha_
    assert np.allclose(pred.reshape(100, -1), direct.predict(X_test), atol=1e-4)

    # the prior train_decoder reads: the baseline's own out-of-fold predictions (its 4 grouped folds, its seed),
    # in the dataset's row order, each trial predicted by a ridge that never saw it
    prior = decoder.training_prior(stim, source=out)
    expected = cross_val_predict_ridge(X, Y.reshape(-1, 4, 2, 2), n_folds=4, alphas=(decoder.alpha_,), groups=stim)
    assert prior.shape == (len(X), 4, 2, 2) and prior.dtype == np.float32
    np.testing.assert_allclose(prior, expected, atol=1e-5)
    assert not np.allclose(prior, decoder.predict(X[:, :]), atol=1e-3)  # not the in-sample fit
    assert r2(prior.reshape(len(X), -1), Y) > 0.5
    with pytest.raises(CortexflowInputError, match="other training trials"):
        decoder.training_prior(stim[::-1], source=out)

    np.savez(tmp_path / "short.npz", ids=stim[:5], latents=Y[:5])
    with pytest.raises(CortexflowInputError, match="no latent"):
        fit_baseline_stage(dataset=str(tmp_path / "ds"), out=str(tmp_path / "x.npz"), params={},
                           latents=str(tmp_path / "short.npz"))
    with pytest.raises(CortexflowInputError, match="needs latents"):
        fit_baseline_stage(dataset=str(tmp_path / "ds"), out=str(tmp_path / "x.npz"), params={})


def test_text_baseline_retrieves_the_nearest_training_sentence(tmp_path):
    rng = np.random.default_rng(2)
    words = "the a cat dog bird river sea rain sun old red blue runs sits sings falls flows reads on in to".split()
    sentences = sorted({" ".join(rng.choice(words, 5)) for _ in range(40)})
    ids = [f"t{i:02d}" for i in range(len(sentences))]
    # voxels: a noisy linear encoding of each sentence's n-gram embedding, 4 repeats each
    from cortexflow.evaluation.features import char_ngram_features

    encoding = rng.normal(size=(2048, 150))
    signal = char_ngram_features(sentences) @ encoding
    repeats = np.repeat(np.arange(len(sentences)), 4)
    X = signal[repeats] + 0.2 * rng.normal(size=(len(repeats), 150))
    write_dataset(tmp_path / "ds", X, np.asarray(ids)[repeats])
    bids = tmp_path / "bids"
    (bids / "stimuli").mkdir(parents=True)
    pd.DataFrame({"stimulus_id": ids, "modality": "text", "path": "", "split": "train", "text": sentences}).to_csv(
        bids / "stimuli" / "stimuli.tsv", sep="\t", index=False)
    out = tmp_path / "ridge_text.npz"
    fit_baseline_stage(dataset=str(tmp_path / "ds"), out=str(out), params={"cv_folds": 4}, stimuli=str(bids))
    decoder = load_ridge(out)
    assert decoder.candidate_texts.tolist() == sentences
    with pytest.raises(CortexflowInputError, match="no out-of-fold predictions"):  # no decoder takes a text prior
        decoder.training_prior(np.asarray(ids)[repeats], source=out)
    X_new = signal + 0.2 * rng.normal(size=signal.shape)
    retrieved = decoder.predict_texts(X_new)
    assert np.mean(retrieved == np.asarray(sentences)) > 0.9
    assert np.mean(retrieved[::-1] == np.asarray(sentences)) < 0.1  # chance pairing
    assert decoder.predict(X_new).shape == (len(sentences), 2048)
    with pytest.raises(CortexflowInputError, match="not fitted on text"):
        RidgeDecoder().fit(X, X[:, :3]).predict_texts(X_new)
