"""The canonical haemodynamic response and trial regressors.

The simulator turns each trial into a BOLD time course by convolving its
stimulus boxcar with SPM's canonical double-gamma HRF (Friston et al., 1998;
peak at ~5 s, undershoot at ~15 s, undershoot ratio 1/6) on a fine time grid,
then samples it at each volume's onset (``t * TR``). The simulated voxels'
own HRFs vary around that canonical shape (``double_gamma_cumulative``,
``varied_trial_signal``): real HRFs differ in peak latency by a second or more
across regions and subjects (Handwerker, Ollinger & D'Esposito, 2004), while the
GLM keeps the canonical one, as real analyses do.
"""

from __future__ import annotations

import math

import numpy as np


def spm_hrf(dt: float, length: float = 32.0, peak: float = 6.0, undershoot: float = 16.0,
            ratio: float = 1.0 / 6.0) -> np.ndarray:
    """SPM's canonical HRF sampled every ``dt`` seconds, normalised to unit sum."""
    t = np.arange(0.0, length, dt)

    def gamma_pdf(shape: float) -> np.ndarray:  # unit-scale gamma density
        return t ** (shape - 1) * np.exp(-t) / math.gamma(shape)

    h = gamma_pdf(peak) - ratio * gamma_pdf(undershoot)
    return h / h.sum()


def trial_regressors(onsets: np.ndarray, durations: np.ndarray, n_volumes: int, tr: float,
                     dt: float = 0.1) -> np.ndarray:
    """(n_volumes, n_trials): each trial's boxcar convolved with the HRF, sampled at ``t * tr``.

    Regressors are in units of the response to a sustained stimulus: a block
    long enough to reach the plateau has height 1, so a trial's amplitude is
    its response at plateau, in the units of the signal (% signal change here).
    A boxcar from ``a`` to ``b`` convolved with ``h`` is ``H(t - a) - H(t - b)``
    with ``H`` the running sum of ``h``, so all trials take two look-ups each.
    """
    onsets = np.asarray(onsets, float)
    durations = np.maximum(np.asarray(durations, float), dt)
    cumulative = np.concatenate([[0.0], np.cumsum(spm_hrf(dt))])  # H[k] = sum of h[:k]
    times = np.arange(n_volumes) * tr

    def running(lag: np.ndarray) -> np.ndarray:
        k = np.clip(np.floor(lag / dt + 1e-9).astype(int) + 1, 0, len(cumulative) - 1)
        return np.where(lag < 0, 0.0, cumulative[k])

    start = times[:, None] - onsets[None, :]
    return running(start) - running(start - durations[None, :])


def cosine_drift(n_volumes: int, tr: float, cutoff: float = 128.0) -> np.ndarray:
    """DCT high-pass basis (SPM's), (n_volumes, k) columns with period > ``cutoff`` s removed."""
    from cortexflow.preprocess.hrf import dct_basis  # the GLM's basis: one definition of the DCT

    return dct_basis(n_volumes, int(np.floor(2 * n_volumes * tr / cutoff)))


def ar1_covariance(n: int, rho: float) -> np.ndarray:
    """Correlation matrix of a stationary AR(1) process with unit variance."""
    idx = np.arange(n)
    return rho ** np.abs(idx[:, None] - idx[None, :])


def beta_noise_sd(design: np.ndarray, rho: float) -> np.ndarray:
    """Sd of each least-squares coefficient under unit-variance AR(1) noise.

    Var(b) = (X'X)^-1 X' S X (X'X)^-1 for noise covariance S: the factor that
    turns a time-series noise level into the noise of single-trial betas, so
    the simulator can set signal-to-noise where decoders see it, at the betas.
    """
    pinv = np.linalg.pinv(design)
    cov = pinv @ ar1_covariance(design.shape[0], rho) @ pinv.T
    return np.sqrt(np.clip(np.diag(cov), 0, None))


# ----------------------------------------------------------------------------- HRFs that vary across voxels

def double_gamma_cumulative(dt: float, peak: np.ndarray, undershoot: np.ndarray, ratio: np.ndarray,
                            length: float = 32.0) -> np.ndarray:
    """(V, L + 1) running sums of V double-gamma HRFs (``spm_hrf``'s form, unit sum), from 0.

    ``peak``, ``undershoot`` (gamma shapes, so the peak lies near ``peak - 1`` s)
    and ``ratio`` are per-voxel arrays. Row ``v``'s entry ``k`` is the sum of
    the first ``k`` samples of that voxel's HRF, the ``cumulative`` of
    ``trial_regressors``; entry 0 is 0.
    """
    from scipy.special import gammaln

    t = np.arange(0.0, length, dt)[None]
    log_t = np.log(np.maximum(t, 1e-12))

    def gamma_pdf(shape: np.ndarray) -> np.ndarray:
        shape = np.asarray(shape, float)[:, None]
        return np.where(t > 0, np.exp((shape - 1) * log_t - t - gammaln(shape)), 0.0)

    h = gamma_pdf(peak) - np.asarray(ratio, float)[:, None] * gamma_pdf(undershoot)
    h /= h.sum(1, keepdims=True)
    return np.concatenate([np.zeros((h.shape[0], 1)), np.cumsum(h, 1)], 1)


def varied_trial_signal(onsets: np.ndarray, durations: np.ndarray, n_volumes: int, tr: float,
                        cumulative: np.ndarray, amplitudes: np.ndarray, dt: float = 0.1,
                        chunk: int = 256) -> np.ndarray:
    """(n_volumes, V) task signal when every voxel has its own HRF.

    ``cumulative`` is ``double_gamma_cumulative``'s (V, L + 1) output (same
    ``dt``), ``amplitudes`` (V, n_trials) each trial's plateau response. Voxel
    ``v``'s signal is ``trial_regressors`` built with its own HRF, times its
    amplitudes: the same look-ups, done for all voxels at once.
    """
    onsets = np.asarray(onsets, float)
    durations = np.maximum(np.asarray(durations, float), dt)
    last = cumulative.shape[1] - 1
    start = np.arange(n_volumes)[:, None] * tr - onsets[None, :]

    def index(lag: np.ndarray) -> np.ndarray:  # entry 0 is 0, so negative lags read 0
        return np.clip(np.floor(lag / dt + 1e-9).astype(int) + 1, 0, last)

    k1, k2 = index(start), index(start - durations[None, :])
    out = np.empty((n_volumes, len(cumulative)), np.float32)
    cum = cumulative.astype(np.float32)
    amp = np.asarray(amplitudes, np.float32)
    for a in range(0, len(cum), chunk):
        c = cum[a: a + chunk]
        reg = c[:, k1] - c[:, k2]  # (v, T, n_trials)
        out[:, a: a + chunk] = np.einsum("vtn,vn->tv", reg, amp[a: a + chunk], optimize=True)
    return out
