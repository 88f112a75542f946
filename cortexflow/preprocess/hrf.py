"""Haemodynamic response functions and HRF-convolved event regressors.

The canonical HRF is SPM's difference of two gamma densities (Friston et al.
1998, *NeuroImage* 7:30; ``spm_hrf.m``: peak gamma with shape 6, undershoot
gamma with shape 16, ratio 1/6, scale 1 s); Glover's variant (Glover 1999,
*NeuroImage* 9:416) changes shapes, dispersions and ratio. Both are sampled
exactly as nilearn samples them (``nilearn.glm.first_level.hemodynamic_models``)
so that a design built here and one built by nilearn agree to rounding error:
a boxcar per event on a time grid ``oversampling`` times finer than the TR,
convolved with the HRF, truncated, then linearly interpolated at the frame times.

Instead of convolving one boxcar per trial (nilearn runs ``np.convolve`` once
per condition, which dominates its single-trial design time), this module uses
that a boxcar from sample ``a`` to ``b`` convolved with ``h`` equals
``H[t - a] - H[t - b]`` with ``H`` the running sum of ``h``: every trial's
regressor is two look-ups into one cumulative HRF, for all trials at once.
"""

from __future__ import annotations

import numpy as np

# (delay, undershoot, dispersion, undershoot dispersion, ratio): nilearn's parameters.
_HRF_SHAPES: dict[str, tuple[float, float, float, float, float]] = {
    "spm": (6.0, 16.0, 1.0, 1.0, 0.167),
    "glover": (6.0, 12.0, 0.9, 0.9, 0.48),
}
HRF_MODELS = tuple(_HRF_SHAPES)


def gamma_pdf(t: np.ndarray, shape: float, loc: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """The gamma density at ``t``: ``scipy.stats.gamma.pdf(t, shape, loc=loc, scale=scale)``, bit for bit.

    The same operations in the same order as scipy's (``exp(xlogy(a - 1, x) - x -
    gammaln(a)) / scale`` on ``x = (t - loc) / scale``, zero outside the support
    ``x >= 0``), without importing ``scipy.stats``: that import alone took 1.2 s of
    the 2.8 s of a tiny study's glm_betas job (measured), and every GLM job pays it.
    """
    from scipy.special import gammaln, xlogy  # 0.4 s; not at import: every snakemake start imports this module

    x = np.asarray((np.asarray(t, dtype=float) - loc) / scale, dtype=float)
    out = np.zeros(x.shape)
    inside = x >= 0
    xi = x[inside]
    out[inside] = np.exp(xlogy(shape - 1.0, xi) - xi - gammaln(shape)) / scale
    return out


def gamma_difference_hrf(tr: float, oversampling: int = 50, time_length: float = 32.0, model: str = "spm") -> np.ndarray:
    """The HRF sampled every ``tr / oversampling`` seconds over ``time_length`` s, summing to 1.

    Matches ``nilearn.glm.first_level.spm_hrf`` / ``glover_hrf`` sample for sample
    (including nilearn's ``loc=dt`` shift of both gamma densities).
    """
    if model not in _HRF_SHAPES:
        raise ValueError(f"unknown HRF model {model!r}; known: {', '.join(HRF_MODELS)}")
    delay, undershoot, dispersion, u_dispersion, ratio = _HRF_SHAPES[model]
    dt = tr / oversampling
    t = np.linspace(0, time_length, int(np.rint(time_length / dt)))
    peak = gamma_pdf(t, delay / dispersion, loc=dt, scale=dispersion)
    under = gamma_pdf(t, undershoot / u_dispersion, loc=dt, scale=u_dispersion)
    hrf = peak - ratio * under
    return hrf / hrf.sum()


def frame_times(n_scans: int, tr: float, slice_time_ref: float = 0.0) -> np.ndarray:
    """Acquisition time of each volume, as ``FirstLevelModel`` computes it."""
    return (np.arange(n_scans) + slice_time_ref) * tr


def event_regressors(
    onsets: np.ndarray,
    durations: np.ndarray,
    times: np.ndarray,
    hrf: np.ndarray,
    oversampling: int = 50,
    min_onset: float = -24.0,
) -> np.ndarray:
    """One HRF-convolved boxcar per event, sampled at ``times``: shape (n_times, n_events).

    Reproduces nilearn's ``compute_regressor`` for a condition holding one event
    (amplitude 1): the same high-resolution grid (starting ``min_onset`` seconds
    before the first frame), the same ``searchsorted`` placement of onset and
    offset (a zero duration lasts one high-resolution sample), and the same
    linear interpolation back to the frame times.
    """
    onsets = np.asarray(onsets, dtype=np.float64)
    durations = np.asarray(durations, dtype=np.float64)
    n = times.size
    t_min, t_max = float(times.min()), float(times.max())
    n_high = (n - 1) / (t_max - t_min) * (t_max * (1 + 1.0 / (n - 1)) - t_min - min_onset) * oversampling + 1
    grid = np.linspace(t_min + min_onset, t_max * (1 + 1.0 / (n - 1)), int(np.rint(n_high)))
    last = grid.size - 1
    start = np.minimum(np.searchsorted(grid, onsets), last)
    stop = np.minimum(np.searchsorted(grid, onsets + durations), last)
    stop = np.where((stop < last) & (stop == start), stop + 1, stop)
    # The boxcar covers samples start..stop-1 (nilearn's cumsum of +1 at start, -1 at stop).

    # Linear interpolation weights of each frame time on the high-resolution grid.
    pos = np.interp(times, grid, np.arange(grid.size, dtype=np.float64))
    left = np.minimum(np.floor(pos).astype(np.int64), last)
    right = np.minimum(left + 1, last)
    w_right = pos - left

    cum = np.concatenate(([0.0], np.cumsum(hrf)))  # cum[m] = sum of hrf[:m]

    def conv_at(idx: np.ndarray) -> np.ndarray:
        # (boxcar * hrf)[idx] = sum_{s=start}^{stop-1} hrf[idx - s]
        #                    = cum[clip(idx - start + 1)] - cum[clip(idx - stop + 1)]
        hi = np.clip(idx[:, None] - start[None, :] + 1, 0, hrf.size)
        lo = np.clip(idx[:, None] - stop[None, :] + 1, 0, hrf.size)
        return cum[hi] - cum[lo]

    return (1.0 - w_right)[:, None] * conv_at(left) + w_right[:, None] * conv_at(right)


def dct_basis(n_scans: int, order: int) -> np.ndarray:
    """The first ``order`` DCT-II regressors over ``n_scans`` volumes (SPM's ``spm_dctmtx`` without its
    constant), unit-norm columns (n_scans, order): the high-pass drift basis of the GLM and the simulator."""
    t = np.arange(n_scans)
    k = np.arange(1, order + 1)
    return np.sqrt(2.0 / n_scans) * np.cos(np.pi / n_scans * (t[:, None] + 0.5) * k[None, :])
