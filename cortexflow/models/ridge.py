"""The linear baseline: ridge regression from voxels to the decoder's targets.

Ridge regression from fMRI to a stimulus representation is the field's standard
anchor (Naselaris et al. 2011; the first stage of Brain-Diffuser, Ozcelik &
VanRullen 2023), and the seed library's DiT only tied it. The baseline predicts
the same targets the generative decoder is trained on:

- image / audio: the VAE latents of the stimulus (``encode_latents`` output),
  decoded to pixels / mel by the sample stage with the same VAE;
- text (no latents): a hashed character 2-3-gram embedding of the sentence
  (``features.char_ngram_features``). A linear map cannot write a sentence, so
  the ridge "reconstruction" is *retrieval*: the training sentence whose
  embedding is nearest (cosine) to the predicted one. It can only return
  sentences seen in training, which is the honest linear anchor for a
  generative text decoder.

The penalty is chosen by grouped k-fold cross-validation over a log grid,
for all targets at once (one alpha, as RidgeCV with ``alpha_per_target=False``).
Each fold needs one thin SVD, X = U S V^T, after which the solution for any
alpha is V diag(s / (s^2 + alpha)) U^T Y (Hastie, Tibshirani & Friedman,
ESL eq. 3.47), so the whole grid costs little more than one fit; with more
voxels than trials the same factors come from the eigendecomposition of the
trials x trials Gram matrix, computed once for all folds. Folds group
trials by ``stimulus_id``: repeats of one stimulus share a target, and leaving
out one repeat while training on its twins would favour too little shrinkage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from cortexflow import _io
from cortexflow.errors import CortexflowInputError
from cortexflow.sections import from_mapping
from cortexflow.evaluation.features import CharNgramConfig, char_ngram_features

log = logging.getLogger("cortexflow.models.ridge")

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-1, 7, 25))


@dataclass(frozen=True)
class RidgeConfig:
    """Parameters of the ``fit_baseline`` stage (config section ``baseline``)."""

    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    cv_folds: int = 5
    text_features: CharNgramConfig = field(default_factory=CharNgramConfig)
    # nn_mean<k> (models/baselines.py): k and what is averaged (VAE reconstructions or the original
    # stimuli); "auto": chosen on the training trials' out-of-fold predictions (choose_retrieval), as
    # config.yaml (the study of docs/analysis-plan.md) does; the default keeps the first studies' (8, vae).
    # The grid is the plan's, k = 1 included (one neighbour, named nn_mean1 beside nn)
    nn_k: int | Literal["auto"] = 8
    nn_k_grid: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    nn_source: Literal["auto", "vae", "original"] = "vae"

    def __post_init__(self) -> None:
        if not self.alphas or min(self.alphas) <= 0:
            raise CortexflowInputError(f"baseline.alphas must be positive numbers, got {self.alphas}",
                                       fix="give a log grid such as [0.1, 1, 10, ...]")
        if self.cv_folds < 2:
            raise CortexflowInputError(f"baseline.cv_folds must be at least 2, got {self.cv_folds}",
                                       fix="set baseline.cv_folds: 5 (the default) or another number >= 2")
        if self.nn_k != "auto" and not (isinstance(self.nn_k, int) and self.nn_k >= 2):
            raise CortexflowInputError(f"baseline.nn_k must be auto or at least 2 (nn is the k = 1 case), got {self.nn_k}",
                                       fix="set baseline.nn_k: auto (the default) or a number >= 2")
        if not self.nn_k_grid or min(self.nn_k_grid) < 1:
            raise CortexflowInputError(f"baseline.nn_k_grid must hold numbers >= 1, got {self.nn_k_grid}",
                                       fix="set baseline.nn_k_grid: [1, 2, 4, 8, 16, 32, 64] (the default)")

    @classmethod
    def from_params(cls, params: dict | None, key: str = "baseline") -> "RidgeConfig":
        return from_mapping(cls, params, key)


# ------------------------------------------------------------------ the solver


def grouped_folds(n_samples: int, n_folds: int, groups: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Fold index (0..k-1) of every sample; all samples of a group share a fold.

    Groups are shuffled with ``seed`` and dealt to folds in turn, so folds hold
    about the same number of groups. Without ``groups`` every sample is its own.
    """
    groups = np.arange(n_samples) if groups is None else np.asarray(groups)
    if len(groups) != n_samples:
        raise ValueError(f"{len(groups)} group labels for {n_samples} samples")
    unique, inverse = np.unique(groups, return_inverse=True)
    n_folds = min(n_folds, len(unique))
    if n_folds < 2:
        raise CortexflowInputError(f"cross-validation needs at least 2 distinct stimuli, got {len(unique)}")
    fold_of_group = np.empty(len(unique), dtype=np.int64)
    fold_of_group[np.random.default_rng(seed).permutation(len(unique))] = np.arange(len(unique)) % n_folds
    return fold_of_group[inverse]


@dataclass
class _Spectrum:
    """Eigen-factors of a centred design that give the ridge solution for any alpha.

    With A = X - mean (m x p) and A = U S V^T, ridge predictions for new centred
    rows B are B V diag(s / (s^2 + alpha)) U^T Y. When p > m (more voxels than
    trials, the usual case) the same thing comes cheaper from the m x m Gram
    matrix A A^T = U diag(lam) U^T: B A^T U diag(1 / (lam + alpha)) U^T Y
    (the kernel form, ESL section 18.3.5). ``numerator`` holds s (primal) or
    ones (kernel), so both read numerator / (lam + alpha).
    """

    lam: np.ndarray  # squared singular values, (r,)
    numerator: np.ndarray  # (r,)
    uty: np.ndarray  # U^T (Y - y_mean), (r, q)
    y_mean: np.ndarray  # (q,)

    def weights(self, alpha: float) -> np.ndarray:
        return self.numerator / (self.lam + alpha)


def _spectrum_primal(A: np.ndarray, Yc: np.ndarray, y_mean: np.ndarray) -> tuple[_Spectrum, np.ndarray]:
    """Spectrum from the thin SVD of centred A, and V (p, r) to project new rows."""
    U, s, Vt = np.linalg.svd(A, full_matrices=False)
    return _Spectrum(s ** 2, s, U.T @ Yc, y_mean), Vt.T


def _spectrum_kernel(K: np.ndarray, Yc: np.ndarray, y_mean: np.ndarray) -> tuple[_Spectrum, np.ndarray]:
    """Spectrum from a centred Gram matrix K = A A^T, and U (m, r) to project new rows."""
    lam, U = np.linalg.eigh(K)
    lam = np.clip(lam, 0.0, None)  # round-off below zero; the centring null vector meets U^T Yc = 0
    return _Spectrum(lam, np.ones_like(lam), U.T @ Yc, y_mean), U


def _centre_gram(G_rows: np.ndarray, G_train: np.ndarray) -> np.ndarray:
    """(B - 1 mu^T)(A - 1 mu^T)^T from uncentred Gram blocks, mu = mean of the training rows."""
    col = G_train.mean(axis=0)
    return G_rows - G_rows.mean(axis=1, keepdims=True) - col[None, :] + col.mean()


@dataclass
class _FoldFactors:
    """What one fold needs to predict its held-out rows for any alpha."""

    val_rows: np.ndarray
    val_projected: np.ndarray  # held-out rows in the spectral basis, (n_val, r)
    spectrum: _Spectrum

    def predict(self, alpha: float) -> np.ndarray:
        sp = self.spectrum
        return (self.val_projected * sp.weights(alpha)) @ sp.uty + sp.y_mean


def fold_factors(X: np.ndarray, Y: np.ndarray, folds: np.ndarray) -> list[_FoldFactors]:
    """Per fold, the factorisation of its training rows that predicts its held-out rows at any alpha."""
    kernel = X.shape[1] > X.shape[0]
    G = X @ X.T if kernel else None  # one Gram matrix serves every fold
    factors = []
    for k in np.unique(folds):
        train, val = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        y_mean = Y[train].mean(0)
        if kernel:
            G_train = G[np.ix_(train, train)]
            spectrum, U = _spectrum_kernel(_centre_gram(G_train, G_train), Y[train] - y_mean, y_mean)
            projected = _centre_gram(G[np.ix_(val, train)], G_train) @ U
        else:
            x_mean = X[train].mean(0)
            spectrum, V = _spectrum_primal(X[train] - x_mean, Y[train] - y_mean, y_mean)
            projected = (X[val] - x_mean) @ V
        factors.append(_FoldFactors(val, projected, spectrum))
    return factors


def _cross_validate(X: np.ndarray, Y: np.ndarray, alphas: np.ndarray, folds: np.ndarray):
    """CV mean squared error per alpha, the best alpha, and its out-of-fold predictions."""
    factors = fold_factors(X, Y, folds)
    errors = np.zeros(len(alphas))
    for f in factors:
        for a, alpha in enumerate(alphas):
            errors[a] += ((f.predict(alpha) - Y[f.val_rows]) ** 2).sum()
    cv_mse = errors / Y.size
    best = int(np.argmin(cv_mse))
    oof = np.empty_like(Y)
    for f in factors:
        oof[f.val_rows] = f.predict(alphas[best])
    return cv_mse, best, oof


def _fit_coef(X: np.ndarray, Y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge coefficients (p, q), intercept (q,) and x mean (p,) on all rows."""
    x_mean, y_mean = X.mean(0), Y.mean(0)
    A = X - x_mean
    if X.shape[1] > X.shape[0]:
        spectrum, U = _spectrum_kernel(A @ A.T, Y - y_mean, y_mean)
        coef = A.T @ (U @ (spectrum.weights(alpha)[:, None] * spectrum.uty))
    else:
        spectrum, V = _spectrum_primal(A, Y - y_mean, y_mean)
        coef = V @ (spectrum.weights(alpha)[:, None] * spectrum.uty)
    return coef, y_mean - x_mean @ coef, x_mean


def _as_2d(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or len(X) != len(Y):
        raise ValueError(f"X must be (n_samples, n_voxels) with one row per target, got {X.shape} and {Y.shape}")
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(Y))):
        raise CortexflowInputError("ridge inputs hold NaN or infinite values",
                                   fix="check the dataset's voxels and the latents for non-finite entries")
    return X, Y.reshape(len(Y), -1)


def cross_val_predict_ridge(X: np.ndarray, Y: np.ndarray, n_folds: int = 5, alphas=DEFAULT_ALPHAS, seed: int = 0,
                            groups: np.ndarray | None = None) -> np.ndarray:
    """Out-of-fold ridge predictions of ``Y`` (same shape, float32).

    Each row is predicted by a model that never saw it (nor, with ``groups``,
    any trial of its stimulus), so the decoder can take these as a conditioning
    input at training time without being handed the answer. The alpha is the
    one the same folds select, which costs nothing extra.
    """
    Y = np.asarray(Y)
    X2, Y2 = _as_2d(X, Y)
    folds = grouped_folds(len(X2), n_folds, groups, seed)
    cv_mse, best, oof = _cross_validate(X2, Y2, np.asarray(alphas, dtype=np.float64), folds)
    log.info("out-of-fold ridge predictions: alpha %.3g (CV MSE %.4g), %d folds", alphas[best], cv_mse[best],
             len(np.unique(folds)))
    return oof.reshape(Y.shape).astype(np.float32)


class RidgeDecoder:
    """Ridge regression voxels -> targets with one CV-chosen penalty for all targets.

    After ``fit``: ``coef_`` (n_voxels, n_targets), ``intercept_`` (n_targets,),
    ``x_mean_``, ``alpha_``, ``cv_mse_`` (per alpha of the grid), ``target_shape``,
    ``oof_predictions_`` (each training row predicted by the CV fold that left
    out its group, at the chosen alpha) and ``training_ids_`` (the ``groups``
    given to ``fit``, which name the rows of ``oof_predictions_``).
    For text, ``candidate_texts`` and ``text_features`` make ``predict_texts``
    return the nearest training sentence.
    """

    def __init__(self, alphas=DEFAULT_ALPHAS, n_folds: int = 5, seed: int = 0):
        self.alphas = np.unique(np.asarray(alphas, dtype=np.float64))  # sorted: the edge check needs it
        self.n_folds = int(n_folds)
        self.seed = int(seed)
        self.candidate_texts: np.ndarray | None = None
        self.candidate_ids: np.ndarray | None = None
        self.text_features: CharNgramConfig | None = None
        self.oof_predictions_: np.ndarray | None = None
        self.training_ids_: np.ndarray | None = None

    def fit(self, X: np.ndarray, Y: np.ndarray, groups: np.ndarray | None = None) -> "RidgeDecoder":
        Y = np.asarray(Y)
        X2, Y2 = _as_2d(X, Y)
        self.target_shape = tuple(Y.shape[1:])
        folds = grouped_folds(len(X2), self.n_folds, groups, self.seed)
        self.cv_mse_, best, oof = _cross_validate(X2, Y2, self.alphas, folds)
        self.oof_predictions_ = oof.reshape(Y.shape).astype(np.float32)
        self.training_ids_ = None if groups is None else np.asarray(groups, dtype=str)
        self.alpha_ = float(self.alphas[best])
        if best in (0, len(self.alphas) - 1) and len(self.alphas) > 1:
            log.warning("ridge alpha %.3g is at the edge of the grid [%.3g, %.3g]; widen baseline.alphas",
                        self.alpha_, self.alphas[0], self.alphas[-1])
        coef, intercept, x_mean = _fit_coef(X2, Y2, self.alpha_)
        self.coef_, self.intercept_, self.x_mean_ = (a.astype(np.float32) for a in (coef, intercept, x_mean))
        log.info("ridge: %d samples x %d voxels -> %d targets, alpha %.3g (CV MSE %.4g, null %.4g)",
                 X2.shape[0], X2.shape[1], Y2.shape[1], self.alpha_, self.cv_mse_[best], Y2.var(0).mean())
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted targets, shaped (n, *target_shape), float32."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.coef_.shape[0]:
            raise CortexflowInputError(f"ridge was fitted on {self.coef_.shape[0]} voxels, got X of shape {X.shape}",
                                       fix="use the dataset this baseline was fitted on")
        return (X @ self.coef_ + self.intercept_).reshape((len(X),) + self.target_shape)

    def predict_texts(self, X: np.ndarray) -> np.ndarray:
        """Text baseline: the candidate sentence nearest (cosine) to each prediction."""
        if self.candidate_texts is None or self.text_features is None:
            raise CortexflowInputError("this ridge baseline was not fitted on text",
                                       fix="fit it with fit_baseline_stage(..., stimuli=...) for the text modality")
        predicted = self.predict(X).reshape(len(X), -1)
        predicted /= np.maximum(np.linalg.norm(predicted, axis=1, keepdims=True), 1e-12)
        candidates = char_ngram_features(list(self.candidate_texts), self.text_features)
        return self.candidate_texts[np.argmax(predicted @ candidates.T, axis=1)]

    def save(self, path: str | Path) -> Path:
        arrays = dict(coef=self.coef_, intercept=self.intercept_, x_mean=self.x_mean_, alpha=np.float64(self.alpha_),
                      alphas=self.alphas, cv_mse=self.cv_mse_, target_shape=np.asarray(self.target_shape, np.int64),
                      n_folds=np.int64(self.n_folds), seed=np.int64(self.seed))
        if self.oof_predictions_ is not None and self.training_ids_ is not None:
            arrays.update(oof_predictions=self.oof_predictions_, training_ids=self.training_ids_)
        if self.candidate_texts is not None:
            arrays.update(candidate_texts=np.asarray(self.candidate_texts, dtype=str),
                          candidate_ids=np.asarray(self.candidate_ids, dtype=str),
                          ngram_range=np.asarray(self.text_features.ngram_range, np.int64),
                          n_features=np.int64(self.text_features.n_features),
                          normalize_text=np.bool_(self.text_features.normalize))
        return _io.save_npz(path, **arrays)


    def training_prior(self, training_ids: np.ndarray, source: str | Path | None = None) -> np.ndarray:
        """The out-of-fold predictions of the training trials ``training_ids`` (a dataset's
        training trials, in its row order), float32, shaped (n, *target_shape).

        They are what ``fit`` saw: a baseline fitted on another dataset (other
        trials or another order) is refused, naming ``source``.
        """
        if self.oof_predictions_ is None or self.training_ids_ is None:
            raise CortexflowInputError("this ridge baseline holds no out-of-fold predictions of its training trials",
                                       path=source, fix="rerun the fit_baseline stage")
        training_ids = np.asarray(training_ids, dtype=str)
        if not np.array_equal(training_ids, self.training_ids_):
            raise CortexflowInputError(f"this ridge baseline was fitted on {len(self.training_ids_)} other training "
                                       f"trials than the dataset's {len(training_ids)}", path=source,
                                       fix="rerun fit_baseline on the same dataset as train_decoder")
        return self.oof_predictions_


def load_ridge(path: str | Path) -> RidgeDecoder:
    """A fitted ``RidgeDecoder`` from the ``.npz`` that ``fit_baseline_stage`` wrote."""
    path = Path(path)
    if not path.is_file():
        raise CortexflowInputError("ridge baseline file not found", path=path, fix="run the fit_baseline stage first")
    with np.load(path, allow_pickle=False) as f:
        missing = {"coef", "intercept", "x_mean", "alpha", "alphas", "target_shape"} - set(f.files)
        if missing:
            raise CortexflowInputError(f"not a ridge baseline file (missing {sorted(missing)})", path=path,
                                       fix="rerun the fit_baseline stage")
        decoder = RidgeDecoder(f["alphas"], int(f["n_folds"]) if "n_folds" in f.files else 5,
                               int(f["seed"]) if "seed" in f.files else 0)
        decoder.coef_, decoder.intercept_, decoder.x_mean_ = f["coef"], f["intercept"], f["x_mean"]
        decoder.alpha_ = float(f["alpha"])
        decoder.cv_mse_ = f["cv_mse"] if "cv_mse" in f.files else None
        decoder.target_shape = tuple(int(d) for d in f["target_shape"])
        if "oof_predictions" in f.files:
            decoder.oof_predictions_ = f["oof_predictions"]
            decoder.training_ids_ = f["training_ids"]
        if "candidate_texts" in f.files:
            decoder.candidate_texts = f["candidate_texts"]
            decoder.candidate_ids = f["candidate_ids"]
            decoder.text_features = CharNgramConfig(tuple(int(n) for n in f["ngram_range"]), int(f["n_features"]),
                                                    bool(f["normalize_text"]))
    return decoder
