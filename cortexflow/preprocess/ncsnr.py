"""The noise ceiling of a voxel from repeated stimuli (Allen et al. 2022, *Nat. Neurosci.* 25:116).

Pure numbers, no files: :mod:`cortexflow.preprocess.dataset` writes both per
voxel (step 4 of its module doc has the formulas), and the summary reads the
ceiling of a region's median ncsnr (:func:`cortexflow.evaluation.summary.ncsnr_table`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def noise_ceiling_snr(betas: np.ndarray, stimulus_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-voxel ncsnr from repeated stimuli (Allen et al. 2022) and how many stimuli it used.

    Returns NaN per voxel when no stimulus is repeated (nothing to estimate from).
    """
    ids = np.asarray(stimulus_ids).astype(str)
    uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    repeated = counts[inverse] >= 2
    if not repeated.any():
        return np.full(betas.shape[1], np.nan), 0
    frame = pd.DataFrame(betas[repeated]).groupby(ids[repeated])
    noise_var = frame.var(ddof=1).mean(axis=0).to_numpy()
    total_var = betas[repeated].var(axis=0, ddof=1)
    signal_var = np.maximum(0.0, total_var - noise_var)
    with np.errstate(divide="ignore", invalid="ignore"):
        ncsnr = np.where(noise_var > 0, np.sqrt(signal_var / noise_var), np.inf)
    return ncsnr, int((counts >= 2).sum())


def noise_ceiling(ncsnr: np.ndarray, n_repeats: np.ndarray) -> np.ndarray:
    """Percent of variance explainable in averages of ``n_repeats`` trials (NSD's NC)."""
    inv_n = float(np.mean(1.0 / np.asarray(n_repeats, dtype=float)))
    ncsnr = np.asarray(ncsnr, dtype=float)
    return 100.0 * ncsnr ** 2 / (ncsnr ** 2 + inv_n)
