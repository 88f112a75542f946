"""Reconstruction metrics, one score per test item, computed as the field does.

Every function returns per-item scores (shape (N,)); a reported number is their
mean, and its interval comes from resampling items (``bootstrap.py``). The
pairwise metrics take an ``order`` argument: reconstruction ``j`` is scored
against truth ``order[j]`` (the identity by default, a derangement for the
chance level).

Image (MindEye, Scotti et al. 2023, ``utils.py``/``Reconstruction_Metrics.ipynb``;
Brain-Diffuser, Ozcelik & VanRullen 2023):
- PixCorr: Pearson correlation of the flattened pixels of reconstruction and truth.
- SSIM: scikit-image ``structural_similarity`` on grayscale images with
  ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1``
  (Wang et al. 2004 with the Gaussian window of the original paper).
- Two-way identification: for reconstruction ``j``, the fraction of the other
  test items ``i`` whose features correlate with it less than the true item's
  do, ``mean_{i != j} [r(rec_j, true_i) < r(rec_j, true_j)]``.

Audio: Pearson correlation of log-mel spectrograms, log-spectral distance (dB),
two-way identification on mel features.

Text: character and word error rate (Levenshtein distance over reference
length), sentence BLEU-4 (Papineni et al. 2002) with add-one smoothing of the
2-4-gram precisions (Lin & Och 2004), two-way identification on hashed
character n-gram features.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from cortexflow.errors import CortexflowInputError
from cortexflow.evaluation.features import normalize_text, to_grayscale

log = logging.getLogger("cortexflow.evaluation.metrics")

SSIM_KWARGS = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
# scikit-image's Gaussian window spans 2 * round(3.5 * sigma) + 1 = 11 pixels at sigma 1.5.
SSIM_MIN_SIDE = 11
# 20 / ln(10): dB per natural-log unit of *magnitude*, the unit of cortexflow's
# log-mel features (``cortexflow.models.audio.waveform_to_mel``: torch.log of a
# power=1 mel spectrogram). Natural-log power would be 10 / ln(10).
DB_PER_NATURAL_LOG_MAGNITUDE = 20.0 / math.log(10.0)


def _order(n: int, order: np.ndarray | None) -> np.ndarray:
    if order is None:
        return np.arange(n)
    order = np.asarray(order)
    if order.shape != (n,):
        raise ValueError(f"order must have shape ({n},), got {order.shape}")
    return order


def _flatten(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(len(x), -1)


def _standardize_rows(x: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit norm; a constant row becomes zeros (correlation 0)."""
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 1e-12)


def rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of ``a[j]`` with ``b[j]`` for every row (0 for a constant row)."""
    a, b = _flatten(a), _flatten(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return np.einsum("nd,nd->n", _standardize_rows(a), _standardize_rows(b))


def correlation_matrix(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``r[j, i]`` = Pearson correlation of prediction ``j`` with truth ``i``."""
    return _standardize_rows(_flatten(pred)) @ _standardize_rows(_flatten(truth)).T


def two_way_identification(corr: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """Per-item two-way identification from a (N, N) correlation matrix.

    Row ``j`` holds prediction ``j``'s correlation with every truth; its true
    item is ``order[j]``. The score is the fraction of the N - 1 other truths
    it correlates with less than with its own, as in MindEye's
    ``two_way_identification``; exact ties count one half (they only occur for
    degenerate, e.g. constant, predictions, which thereby score 0.5, not 0).
    """
    n = corr.shape[0]
    if corr.shape != (n, n) or n < 2:
        raise ValueError(f"need a square correlation matrix of at least 2 items, got {corr.shape}")
    order = _order(n, order)
    true_r = corr[np.arange(n), order][:, None]
    wins = (corr < true_r).sum(axis=1) + 0.5 * ((corr == true_r).sum(axis=1) - 1)
    return wins / (n - 1)


def two_way_identification_within(corr: np.ndarray, groups, order: np.ndarray | None = None) -> np.ndarray:
    """Two-way identification whose distractors are only the other items of the true item's group.

    As ``two_way_identification``, but prediction ``j`` is compared only with
    the truths in the same group (stimulus family, or photo category) as its
    own truth ``order[j]``: it cannot be won by telling a digit from a face.
    An item alone in its group has no distractor there and is compared with
    every other item instead.
    """
    n = corr.shape[0]
    if corr.shape != (n, n) or n < 2:
        raise ValueError(f"need a square correlation matrix of at least 2 items, got {corr.shape}")
    groups = np.asarray(groups).astype(str)
    if groups.shape != (n,):
        raise ValueError(f"need one group per item, got {groups.shape} for {n} items")
    order = _order(n, order)
    true_r = corr[np.arange(n), order][:, None]
    same = groups[None, :] == groups[order][:, None]
    same[np.arange(n), order] = False
    alone = ~same.any(axis=1)
    same[alone] = True
    same[np.arange(n), order] = False
    wins = ((corr < true_r) & same).sum(axis=1) + 0.5 * ((corr == true_r) & same).sum(axis=1)
    return wins / same.sum(axis=1)


# -------------------------------------------------------------------------- image


def pixcorr(recon: np.ndarray, truth: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """PixCorr per item: Pearson r of flattened pixels (all channels), as MindEye."""
    return rowwise_pearson(recon, truth[_order(len(recon), order)])


def ssim(recon: np.ndarray, truth: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """SSIM per item on grayscale (N, C, H, W) images in [0, 1], MindEye's settings."""
    from skimage.metrics import structural_similarity

    rec_gray, true_gray = to_grayscale(recon), to_grayscale(truth)
    order = _order(len(recon), order)
    return np.array([structural_similarity(rec_gray[j], true_gray[order[j]], **SSIM_KWARGS)
                     for j in range(len(recon))])


# -------------------------------------------------------------------------- audio


def mel_correlation(recon: np.ndarray, truth: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """Pearson r of the whole (n_mels, T) log-mel spectrograms, per item."""
    return rowwise_pearson(recon, truth[_order(len(recon), order)])


def log_spectral_distance(recon: np.ndarray, truth: np.ndarray, order: np.ndarray | None = None,
                          db_per_unit: float = DB_PER_NATURAL_LOG_MAGNITUDE) -> np.ndarray:
    """Log-spectral distance in dB per item (lower is better).

    LSD = mean over frames of sqrt(mean over mel bins of (dB difference)^2)
    (Gray & Markel 1976; the usual speech-enhancement form). Inputs are log-mel
    spectrograms (N, n_mels, T); ``db_per_unit`` converts their unit to dB
    (20/ln 10 for natural-log magnitude, the default; 10/ln 10 for natural-log
    power; 1 if already in dB).
    """
    truth = truth[_order(len(recon), order)]
    diff_db = db_per_unit * (np.asarray(recon, np.float64) - np.asarray(truth, np.float64))
    return np.sqrt((diff_db ** 2).mean(axis=1)).mean(axis=1)


# --------------------------------------------------------------------------- text


def edit_distance(hyp: Sequence, ref: Sequence) -> int:
    """Levenshtein distance (unit-cost insertions, deletions, substitutions)."""
    if len(hyp) < len(ref):
        hyp, ref = ref, hyp
    previous = list(range(len(ref) + 1))
    for i, h in enumerate(hyp, 1):
        current = [i]
        for j, r in enumerate(ref, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (h != r)))
        previous = current
    return previous[-1]


def _error_rate(hyp: Sequence, ref: Sequence) -> float:
    # An empty reference has no length to divide by: any output is fully wrong.
    if len(ref) == 0:
        return 0.0 if len(hyp) == 0 else 1.0
    return edit_distance(hyp, ref) / len(ref)


def character_error_rate(hyps: Sequence[str], refs: Sequence[str], order: np.ndarray | None = None,
                         normalize: bool = True) -> np.ndarray:
    """CER per item: character edit distance / reference length (can exceed 1)."""
    order = _order(len(hyps), order)
    prep = normalize_text if normalize else str
    return np.array([_error_rate(prep(hyps[j]), prep(refs[order[j]])) for j in range(len(hyps))])


def word_error_rate(hyps: Sequence[str], refs: Sequence[str], order: np.ndarray | None = None,
                    normalize: bool = True) -> np.ndarray:
    """WER per item: word edit distance / number of reference words."""
    order = _order(len(hyps), order)
    prep = normalize_text if normalize else str
    return np.array([_error_rate(prep(hyps[j]).split(), prep(refs[order[j]]).split()) for j in range(len(hyps))])


def sentence_bleu(hyp: Sequence[str], ref: Sequence[str], max_n: int = 4) -> float:
    """BLEU-4 of one tokenised sentence against one reference.

    Modified n-gram precisions with clipped counts, uniform weights, brevity
    penalty exp(1 - r/c) when c < r (Papineni et al. 2002). A single sentence
    rarely shares a 4-gram with its reference, so precisions for n >= 2 are
    add-one smoothed, (m + 1) / (c + 1) (Lin & Och 2004, "BLEU+1"); without a
    unigram match the score is 0.
    """
    if not hyp or not ref:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        hyp_ngrams = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
        ref_ngrams = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
        matches = sum(min(count, ref_ngrams[g]) for g, count in hyp_ngrams.items())
        total = sum(hyp_ngrams.values())
        if n == 1:
            if matches == 0:
                return 0.0
            log_precision += math.log(matches / total)
        else:
            log_precision += math.log((matches + 1) / (total + 1))
    brevity = 1.0 if len(hyp) >= len(ref) else math.exp(1.0 - len(ref) / len(hyp))
    return brevity * math.exp(log_precision / max_n)


def bleu(hyps: Sequence[str], refs: Sequence[str], order: np.ndarray | None = None,
         normalize: bool = True) -> np.ndarray:
    """Sentence BLEU-4 per item on whitespace tokens of the normalised text."""
    order = _order(len(hyps), order)
    prep = normalize_text if normalize else str
    return np.array([sentence_bleu(prep(hyps[j]).split(), prep(refs[order[j]]).split()) for j in range(len(hyps))])


# ------------------------------------------------------------------ derangements


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation with no fixed point (rejection sampling).

    Pairing every reconstruction with another item's truth gives the metric's
    chance level on this very test set; about 1/e of permutations qualify.
    """
    if n < 2:
        raise CortexflowInputError(f"a chance level needs at least 2 test items, got {n}")
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm

