"""Baselines beside the ridge decoder (``ridge.py``) that a reviewer asks for.

All are fitted on the training trials only (both folds, as ``ridge``), with
their hyper-parameters chosen by the same grouped cross-validation (folds by
``stimulus_id``):

- ``ridge_pt``: ridge to the same targets with one penalty *per target*
  (latent dimension), each chosen by grouped CV from the baseline's alpha grid,
  as himalaya's ``RidgeCV`` or scikit-learn's ``RidgeCV(alpha_per_target=True)``
  do. The eigen-factors of each fold are shared by every alpha and target
  (``ridge._cross_validate``'s trick), so the per-target choice costs one fold
  pass: CV error per (alpha, target), argmin per target.
- ``ridge_pixels`` (image): ridge from voxels straight to pixels, no VAE.
- ``nn`` / ``nn_mean<k>``: retrieval among the training stimuli. The ridge
  prediction of the latent is compared (Pearson correlation over the flattened
  latent) with every training stimulus's latent; ``nn`` is the VAE's
  reconstruction of the nearest one (the same VAE decode the latent decoders
  go through), ``nn_mean<k>`` the pixel/mel mean of the k nearest: of their
  VAE reconstructions or of the original stimuli, and k, as chosen on the
  training trials' out-of-fold predictions (``choose_retrieval``), the way the
  decoder's own knobs were chosen on held-out trials (docs/analysis-plan.md, 3).
- text ``retrieval``: the training sentence nearest (cosine) to the ridge
  prediction of its character n-gram embedding (``RidgeDecoder.predict_texts``).
- text ``ngram_lm``: a character n-gram language model of the training
  sentences (add-k smoothing; order and k by grouped CV on held-out sentences'
  log-likelihood) decoding its most probable sentence per character, with no
  brain data: the same sentence for every item. It shows how much of a text
  decoder's CER is language statistics alone.
- text ``ngram_lm_ridge``: the same LM guided by the brain: beam search for the
  sentence maximising LM log-probability per symbol plus a weight times the
  cosine between its character n-gram embedding and the ridge prediction of
  it (``conditioned_decode``); the weight is chosen by CER on training trials
  decoded from the ridge's out-of-fold predictions with LMs fitted on the other
  folds (``choose_lm_weight``). Unlike ``retrieval`` it can write sentences
  never seen in training.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from cortexflow.errors import CortexflowInputError
from cortexflow.models.ridge import _as_2d, _FoldFactors, _spectrum_kernel, _spectrum_primal, fold_factors, grouped_folds

log = logging.getLogger("cortexflow.models.baselines")


# ------------------------------------------------------------ per-target ridge


def _predict_per_target(f: _FoldFactors, alpha_per_target: np.ndarray) -> np.ndarray:
    sp = f.spectrum
    W = sp.numerator[:, None] / (sp.lam[:, None] + alpha_per_target[None, :])  # (r, q)
    return f.val_projected @ (W * sp.uty) + sp.y_mean


@dataclass
class LinearMap:
    """A fitted linear map voxels -> targets: ``X @ coef + intercept``, reshaped to ``target_shape``."""

    coef: np.ndarray  # (n_voxels, n_targets)
    intercept: np.ndarray  # (n_targets,)
    alpha: np.ndarray  # (n_targets,) or (1,)
    target_shape: tuple[int, ...]

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.coef.shape[0]:
            raise CortexflowInputError(f"baseline was fitted on {self.coef.shape[0]} voxels, got X of shape {X.shape}",
                                       fix="use the dataset this baseline was fitted on")
        return (X @ self.coef + self.intercept).reshape((len(X),) + tuple(self.target_shape))


def fit_ridge_per_target(X: np.ndarray, Y: np.ndarray, alphas, n_folds: int = 5, groups: np.ndarray | None = None,
                         seed: int = 0) -> tuple[LinearMap, np.ndarray]:
    """Ridge with one penalty per target column, each the grouped-CV argmin of its own squared error.

    Returns the map fitted on all rows and the CV error table (n_alphas, n_targets).
    With ``n_folds == len(X)`` and no groups this is leave-one-out, the choice
    scikit-learn's ``RidgeCV(alpha_per_target=True)`` makes (ties: the smaller alpha).
    """
    Y = np.asarray(Y)
    X2, Y2 = _as_2d(X, Y)
    alphas = np.unique(np.asarray(alphas, dtype=np.float64))
    folds = grouped_folds(len(X2), n_folds, groups, seed)
    errors = np.zeros((len(alphas), Y2.shape[1]))
    for f in fold_factors(X2, Y2, folds):
        sp = f.spectrum
        for a, alpha in enumerate(alphas):
            pred = (f.val_projected * sp.weights(alpha)) @ sp.uty + sp.y_mean
            errors[a] += ((pred - Y2[f.val_rows]) ** 2).sum(axis=0)
    best = np.argmin(errors, axis=0)
    alpha_pt = alphas[best]
    coef, intercept = ridge_coef_per_target(X2, Y2, alpha_pt)
    edge = np.isin(best, [0, len(alphas) - 1]).mean() if len(alphas) > 1 else 0.0
    log.info("per-target ridge: %d targets, alpha median %.3g (range %.3g-%.3g), %.0f%% at the grid's edge",
             len(alpha_pt), np.median(alpha_pt), alpha_pt.min(), alpha_pt.max(), 100 * edge)
    return LinearMap(coef.astype(np.float32), intercept.astype(np.float32), alpha_pt,
                     tuple(Y.shape[1:])), errors / len(X2)


def ridge_coef_per_target(X: np.ndarray, Y: np.ndarray, alpha_per_target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (p, q) and intercept (q,) of ridge with penalty ``alpha_per_target[j]`` for column j."""
    X, Y = _as_2d(X, Y)
    alpha_per_target = np.broadcast_to(np.asarray(alpha_per_target, dtype=np.float64), (Y.shape[1],))
    x_mean, y_mean = X.mean(0), Y.mean(0)
    A = X - x_mean
    if X.shape[1] > X.shape[0]:
        spectrum, U = _spectrum_kernel(A @ A.T, Y - y_mean, y_mean)
        W = spectrum.numerator[:, None] / (spectrum.lam[:, None] + alpha_per_target[None, :])
        coef = A.T @ (U @ (W * spectrum.uty))
    else:
        spectrum, V = _spectrum_primal(A, Y - y_mean, y_mean)
        W = spectrum.numerator[:, None] / (spectrum.lam[:, None] + alpha_per_target[None, :])
        coef = V @ (W * spectrum.uty)
    return coef, y_mean - x_mean @ coef


# ------------------------------------------------------------ retrieval


def nearest_by_correlation(predicted: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """(n, k) indices of the ``k`` candidates most correlated (Pearson, flattened) with each prediction,
    best first (ties: the lower index)."""
    P = np.asarray(predicted, dtype=np.float64).reshape(len(predicted), -1)
    C = np.asarray(candidates, dtype=np.float64).reshape(len(candidates), -1)
    if P.shape[1] != C.shape[1]:
        raise ValueError(f"predictions of {P.shape[1]} values cannot be compared with candidates of {C.shape[1]}")
    k = int(min(max(k, 1), len(C)))

    def unit(M):
        M = M - M.mean(axis=1, keepdims=True)
        return M / np.maximum(np.linalg.norm(M, axis=1, keepdims=True), 1e-12)

    corr = unit(P) @ unit(C).T
    return np.argsort(-corr, axis=1, kind="stable")[:, :k]


def choose_retrieval(oof_latents: np.ndarray, trial_ids: np.ndarray, folds: np.ndarray, candidate_ids: np.ndarray,
                     candidate_latents: np.ndarray, sources: dict[str, np.ndarray], truth: np.ndarray,
                     score, k_grid=(2, 4, 8, 16, 32, 64), *, candidate_rows: np.ndarray | None = None,
                     truth_rows: np.ndarray | None = None, max_elements: int = 50_000_000) -> tuple[int, str, "object"]:
    """The (k, source) of ``nn_mean<k>`` that scores best on the training trials, and the whole table.

    Each training trial's out-of-fold ridge prediction (``oof_latents``, from the
    fit that left out its fold) retrieves its k nearest candidates among the
    training stimuli *outside* its fold (as a test item retrieves among stimuli
    it never was); their mean, taken over each array of ``sources`` (e.g. the
    VAE reconstructions or the original stimuli, rows as ``candidate_ids``), is
    scored against the trial's own stimulus (``truth``, one row per trial) with
    ``score(pred, truth) -> per-trial scores``. Returns the best mean score's k
    and source (ties: the smaller k, then the first source) and a DataFrame of
    every (k, source, score, n_trials). ``sources`` and ``truth`` may be whole
    memory-mapped caches, with ``candidate_rows`` / ``truth_rows`` naming the
    rows of the candidates and of each trial's stimulus: only the neighbours of
    a few trials at a time (at most ``max_elements`` values) are read.
    """
    import pandas as pd

    trial_ids, candidate_ids = np.asarray(trial_ids).astype(str), np.asarray(candidate_ids).astype(str)
    candidate_rows = np.arange(len(candidate_ids)) if candidate_rows is None else np.asarray(candidate_rows)
    truth_rows = np.arange(len(trial_ids)) if truth_rows is None else np.asarray(truth_rows)
    fold_of = {}
    for tid, fold in zip(trial_ids, folds):
        fold_of.setdefault(tid, int(fold))
    candidate_fold = np.array([fold_of.get(c, -1) for c in candidate_ids])
    k_grid = sorted({int(k) for k in k_grid})
    totals = {(k, name): 0.0 for k in k_grid for name in sources}
    n = 0
    for fold in np.unique(folds):
        trials = np.flatnonzero(folds == fold)
        pool = np.flatnonzero(candidate_fold != fold)
        if len(pool) < 1 or len(trials) < 1:
            continue
        kmax = min(max(k_grid), len(pool))
        nearest = pool[nearest_by_correlation(oof_latents[trials], candidate_latents[pool], kmax)]  # (n_f, kmax)
        for name, arrays in sources.items():
            # a few trials at a time: their k nearest stimuli at once would be kmax copies of the set
            size = int(np.prod(arrays.shape[1:]))
            chunk = max(1, int(max_elements // (kmax * size)))
            for start in range(0, len(trials), chunk):
                rows = slice(start, start + chunk)
                picked = candidate_rows[nearest[rows]]  # (chunk, kmax) rows of the source arrays
                running = np.cumsum(np.asarray(arrays[picked.ravel()], dtype=np.float64).reshape(
                    *picked.shape, *arrays.shape[1:]), axis=1)  # sums of the 1, 2, ... nearest
                for k in k_grid:
                    kk = min(k, kmax)
                    pred = (running[:, kk - 1] / kk).astype(np.float32)
                    totals[(k, name)] += float(np.sum(score(pred, np.asarray(truth[truth_rows[trials[rows]]]))))
        n += len(trials)
    if n == 0:
        raise CortexflowInputError("no training trial could be scored for the retrieval baseline's k",
                                   fix="give the baseline at least two cross-validation folds with stimuli")
    table = pd.DataFrame([(k, name, totals[(k, name)] / n, n) for k in k_grid for name in sources],
                         columns=["k", "source", "score", "n_trials"])
    best = table.iloc[int(np.argmax(table["score"].to_numpy()))]  # first maximum: smaller k, first source
    return int(best["k"]), str(best["source"]), table


# ------------------------------------------------------------ character n-gram LM

BOS, EOS = "\x02", "\x03"


class CharNgramLM:
    """Character n-gram language model with add-k smoothing over the training alphabet plus end-of-sentence."""

    def __init__(self, order: int = 4, add_k: float = 0.1):
        if order < 1 or add_k <= 0:
            raise CortexflowInputError(f"n-gram LM needs order >= 1 and add_k > 0, got {order}, {add_k}")
        self.order, self.add_k = int(order), float(add_k)

    def fit(self, sentences: list[str]) -> "CharNgramLM":
        if not sentences:
            raise CortexflowInputError("the n-gram LM needs at least one training sentence")
        self.vocab = sorted(set("".join(sentences)) | {EOS})
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.totals: dict[str, int] = defaultdict(int)
        for s in sentences:
            padded = BOS * (self.order - 1) + s + EOS
            for i in range(self.order - 1, len(padded)):
                context = padded[i - self.order + 1:i]
                self.counts[context][padded[i]] += 1
                self.totals[context] += 1
        self.lengths = [len(s) for s in sentences]
        return self

    def _context_of(self, text: str) -> str:
        if self.order == 1:
            return ""
        padded = BOS * (self.order - 1) + text
        return padded[len(padded) - (self.order - 1):]

    def _logprob_next_ctx(self, ctx: str) -> dict[str, float]:
        row, total = self.counts.get(ctx, {}), self.totals.get(ctx, 0)
        denom = math.log(total + self.add_k * len(self.vocab))
        return {c: math.log(row.get(c, 0) + self.add_k) - denom for c in self.vocab}

    def sentence_logprob(self, sentence: str) -> tuple[float, int]:
        """Total log-probability of ``sentence`` plus end-of-sentence, and the number of predicted symbols
        (a character outside the training alphabet gets the smoothing mass of one unseen symbol)."""
        total = 0.0
        for i, c in enumerate(sentence + EOS):
            ctx = self._context_of(sentence[:i])
            count = self.counts.get(ctx, {}).get(c, 0)
            total += math.log(count + self.add_k) - math.log(self.totals.get(ctx, 0) + self.add_k * len(self.vocab))
        return total, len(sentence) + 1

    def most_probable(self, beam: int = 16, max_len: int | None = None) -> str:
        """The sentence of highest log-probability per symbol (end included), by beam search."""
        max_len = int(max_len or max(self.lengths))
        beams = [("", 0.0)]
        best, best_score = "", -math.inf
        for _ in range(max_len):
            expanded = []
            for text, score in beams:
                for c, lp in self._logprob_next_ctx(self._context_of(text)).items():
                    if c == EOS:
                        if text:
                            final = (score + lp) / (len(text) + 1)
                            if final > best_score:
                                best, best_score = text, final
                    else:
                        expanded.append((text + c, score + lp))
            expanded.sort(key=lambda t: -t[1] / len(t[0]))
            beams = expanded[:beam]
        return best


def conditioned_decode(lm: CharNgramLM, target: np.ndarray, features, weight: float, beam: int = 8,
                       prune: int = 48, max_len: int | None = None) -> str:
    """The sentence maximising LM log-probability per symbol + ``weight`` x cosine(char n-gram embedding,
    ``target``), by beam search: the n-gram LM guided by a brain prediction of the sentence's embedding.

    Each step expands every beam by every symbol, keeps the ``prune`` best by the LM alone, and of those
    the ``beam`` best by the combined score (the embedding of a prefix is compared with the target).
    ``weight`` 0 returns ``lm.most_probable()``, the unguided ``ngram_lm`` baseline itself (this
    search's narrower beam would find a different, less probable sentence).
    """
    from cortexflow.evaluation.features import char_ngram_features

    max_len = int(max_len or max(lm.lengths))
    if not weight:
        return lm.most_probable(max_len=max_len)
    target = np.asarray(target, dtype=np.float64).ravel()
    target = target / max(float(np.linalg.norm(target)), 1e-12)

    def similarity(texts):
        return char_ngram_features(texts, features) @ target

    beams = [("", 0.0)]
    best, best_score = "", -math.inf
    for _ in range(max_len):
        expanded, finished = [], []
        for text, score in beams:
            for c, lp in lm._logprob_next_ctx(lm._context_of(text)).items():
                if c == EOS:
                    if text:
                        finished.append((text, (score + lp) / (len(text) + 1)))
                else:
                    expanded.append((text + c, score + lp))
        if finished:
            sims = similarity([t for t, _ in finished])
            for (text, lm_score), sim in zip(finished, sims):
                if lm_score + weight * sim > best_score:
                    best, best_score = text, lm_score + weight * sim
        expanded.sort(key=lambda t: -t[1] / len(t[0]))
        expanded = expanded[:prune]
        if not expanded:
            break
        sims = similarity([t for t, _ in expanded])
        combined = [score / len(text) + weight * sim for (text, score), sim in zip(expanded, sims)]
        order = sorted(range(len(combined)), key=lambda i: -combined[i])[:beam]  # stable: ties as most_probable
        beams = [expanded[i] for i in order]
    return best


def choose_lm_weight(sentences: dict[str, str], stimulus_ids: np.ndarray, predictions: np.ndarray,
                     folds: np.ndarray, order: int, add_k: float, features, weights=(0.0, 1.0, 2.0, 4.0, 8.0, 32.0),
                     max_items: int = 24, seed: int = 0) -> tuple[float, dict[float, float]]:
    """The guidance weight of ``conditioned_decode`` with the lowest CER on training trials.

    ``predictions`` are the ridge's out-of-fold embeddings of the training trials (``folds``: its grouped
    CV folds); each trial is decoded with an LM fitted on the other folds' sentences, so neither the
    ridge nor the LM has seen its sentence. Up to ``max_items`` trials (one per stimulus) keep it cheap.
    """
    from cortexflow.evaluation.metrics import character_error_rate

    first = {}
    for row, sid in enumerate(stimulus_ids):
        first.setdefault(sid, row)
    rows = np.asarray(sorted(first.values()))
    rows = np.sort(np.random.default_rng(seed).permutation(rows)[:max_items])
    lms = {}
    cer = {}
    for w in weights:
        hyps, refs = [], []
        for r in rows:
            f = folds[r]
            if f not in lms:
                lms[f] = CharNgramLM(order, add_k).fit(sorted({sentences[s] for s, g in zip(stimulus_ids, folds)
                                                               if g != f}))
            hyps.append(conditioned_decode(lms[f], predictions[r], features, w))
            refs.append(sentences[stimulus_ids[r]])
        cer[w] = float(np.mean(character_error_rate(hyps, refs)))
    best = min(weights, key=lambda w: (cer[w], w))
    log.info("n-gram LM guided by the ridge embedding: weight %.3g (CV CER %s on %d training trials)", best,
             ", ".join(f"{w:g}: {c:.3f}" for w, c in cer.items()), len(rows))
    return best, cer


def fit_ngram_lm(sentences: list[str], orders=(2, 3, 4, 5), add_ks=(0.01, 0.1, 1.0), n_folds: int = 5,
                 seed: int = 0) -> tuple[CharNgramLM, dict]:
    """The n-gram LM whose (order, add_k) gives the best held-out log-likelihood per symbol over
    sentence folds of ``sentences`` (one per training stimulus), refitted on all of them."""
    sentences = list(sentences)
    folds = grouped_folds(len(sentences), n_folds, None, seed)
    scores = {}
    for order in orders:
        for k in add_ks:
            total, count = 0.0, 0
            for f in np.unique(folds):
                lm = CharNgramLM(order, k).fit([s for s, g in zip(sentences, folds) if g != f])
                for s, g in zip(sentences, folds):
                    if g == f:
                        lp, n = lm.sentence_logprob(s)
                        total, count = total + lp, count + n
            scores[(order, k)] = total / count
    order, k = max(scores, key=scores.get)
    log.info("n-gram LM: order %d, add-k %.3g (held-out log-likelihood %.3f nats per symbol)", order, k,
             scores[(order, k)])
    return CharNgramLM(order, k).fit(sentences), {"order": order, "add_k": k, "cv_loglik": scores[(order, k)]}


# ------------------------------------------------------------ the fit_baseline stage's second file


@dataclass
class FittedBaselines:
    """What ``fit_baseline`` stores beside the ridge decoder (``R/models/sub-{s}_{modality}_baselines.npz``).

    ``ridge_pt`` (image, audio) and ``ridge_pixels`` (image) are ``LinearMap``s;
    ``training_ids`` are the training stimuli (each once) among which ``nn``
    retrieves; ``nn_k`` is the k of ``nn_mean<k>``; ``ngram_lm`` (text) is the
    LM's most probable sentence, with ``lm_order`` / ``lm_add_k``.
    """

    training_ids: np.ndarray
    nn_k: int = 8
    nn_source: str = "vae"  # nn_mean<k> averages the VAE reconstructions ("vae") or the stimuli ("original")
    nn_tuning: "object | None" = None  # choose_retrieval's table (k, source, score, n_trials), if tuned
    ridge_pt: LinearMap | None = None
    ridge_pixels: LinearMap | None = None
    ngram_lm: str | None = None
    lm_order: int | None = None
    lm_add_k: float | None = None
    lm_weight: float | None = None  # ngram_lm_ridge's guidance weight (choose_lm_weight)

    def save(self, path) -> "object":
        from cortexflow import _io

        arrays = {"training_ids": np.asarray(self.training_ids, dtype=str), "nn_k": np.int64(self.nn_k),
                  "nn_source": np.asarray(self.nn_source, dtype=str)}
        if self.nn_tuning is not None:
            arrays.update(nn_tuning_k=self.nn_tuning["k"].to_numpy(np.int64),
                          nn_tuning_source=self.nn_tuning["source"].to_numpy(str),
                          nn_tuning_score=self.nn_tuning["score"].to_numpy(np.float64),
                          nn_tuning_n=self.nn_tuning["n_trials"].to_numpy(np.int64))
        for name in ("ridge_pt", "ridge_pixels"):
            m = getattr(self, name)
            if m is not None:
                arrays.update({f"{name}_coef": m.coef, f"{name}_intercept": m.intercept,
                               f"{name}_alpha": np.atleast_1d(np.asarray(m.alpha, np.float64)),
                               f"{name}_target_shape": np.asarray(m.target_shape, np.int64)})
        if self.ngram_lm is not None:
            arrays.update(ngram_lm=np.asarray(self.ngram_lm, dtype=str), lm_order=np.int64(self.lm_order),
                          lm_add_k=np.float64(self.lm_add_k), lm_weight=np.float64(self.lm_weight or 0.0))
        return _io.save_npz(path, **arrays)


def load_baselines(path) -> FittedBaselines:
    """The ``FittedBaselines`` that ``fit_baseline_stage`` wrote to ``path``."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise CortexflowInputError("baselines file not found", path=path, fix="run the fit_baseline stage first")
    with np.load(path, allow_pickle=False) as f:
        if "training_ids" not in f.files:
            raise CortexflowInputError("not a baselines file (no 'training_ids')", path=path,
                                       fix="rerun the fit_baseline stage")
        maps = {}
        for name in ("ridge_pt", "ridge_pixels"):
            if f"{name}_coef" in f.files:
                maps[name] = LinearMap(f[f"{name}_coef"], f[f"{name}_intercept"], f[f"{name}_alpha"],
                                       tuple(int(d) for d in f[f"{name}_target_shape"]))
        text = {}
        if "ngram_lm" in f.files:
            text = dict(ngram_lm=str(f["ngram_lm"]), lm_order=int(f["lm_order"]), lm_add_k=float(f["lm_add_k"]),
                        lm_weight=float(f["lm_weight"]) if "lm_weight" in f.files else 0.0)
        tuning = None
        if "nn_tuning_k" in f.files:
            import pandas as pd

            tuning = pd.DataFrame({"k": f["nn_tuning_k"], "source": f["nn_tuning_source"].astype(str),
                                   "score": f["nn_tuning_score"], "n_trials": f["nn_tuning_n"]})
        source = str(f["nn_source"]) if "nn_source" in f.files else "vae"
        return FittedBaselines(f["training_ids"].astype(str), int(f["nn_k"]), source, tuning, **maps, **text)
