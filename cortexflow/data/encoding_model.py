"""The encoding model behind the simulated study: stimulus features, regions, voxel tuning.

Each simulated voxel computes a non-linear function of stimulus features of the
kind that voxel-wise encoding studies fit to real data:

- early visual voxels: a population receptive field (pRF) over Gabor energy,
  as in Kay, Naselaris, Prenger & Gallant (2008), "Identifying natural images
  from human brain activity": quadrature Gabor pairs at several orientations
  and spatial frequencies (the energy model of Adelson & Bergen, 1985), summed
  under a Gaussian pRF whose position follows retinotopy and whose size grows
  with eccentricity, then compressed (exponent 0.5, the compressive spatial
  summation of Kay et al., 2013);
- higher visual voxels: category-level features (what kind of thing the
  image shows, and which cluster of image appearance it falls in), the kind of
  tuning found in ventral temporal cortex (Grill-Spector & Weiner, 2014);
- auditory voxels: spectro-temporal modulation energy of the log-mel
  spectrogram (Chi, Ru & Shamma, 2005) in their best-frequency band, with a
  coarse tonotopic gradient (Formisano et al., 2003; Santoro et al., 2014);
- language voxels: a linear function of sentence semantics (the mean of the
  content words' embeddings), as in Huth et al. (2016), whose semantic maps lie
  largely in the default-mode network, and independent of whether the sentence
  is read or heard (Deniz et al., 2019).

Regions are spheres around the coordinates of the Seitzman et al. (2018) ROI
set that nilearn ships, inside nilearn's MNI152 brain mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import fft as sfft

REGIONS = ("early_visual", "higher_visual", "auditory", "language")
REGION_MODALITIES = {  # which stimuli drive each region
    "early_visual": ("image",),
    "higher_visual": ("image",),
    "auditory": ("audio",),
    "language": ("text", "audio"),
}
# Primary modality of each region (its SNR is calibrated on that task's design).
PRIMARY_MODALITY = {"early_visual": "image", "higher_visual": "image", "auditory": "audio", "language": "text"}


# ----------------------------------------------------------------------------- regions

def region_voxels(mask: np.ndarray, affine: np.ndarray, rois: pd.DataFrame, radius: float) -> pd.DataFrame:
    """Grid voxels inside ``mask`` within ``radius`` mm of an ROI centre.

    ``rois`` has columns ``x, y, z`` (MNI mm), ``region``, ``network``, ``roi``.
    A voxel within reach of several centres belongs to the nearest one, so
    regions never overlap. Returns one row per voxel, sorted by (i, j, k):
    ``region, network, roi, i, j, k, x, y, z``.
    """
    ijk = np.argwhere(mask)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    centres = rois[["x", "y", "z"]].to_numpy(float)
    d2 = ((xyz[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    nearest = d2.argmin(1)
    inside = d2[np.arange(len(xyz)), nearest] <= radius ** 2
    ijk, xyz, nearest = ijk[inside], xyz[inside], nearest[inside]
    table = pd.DataFrame({
        "region": rois["region"].to_numpy()[nearest],
        "network": rois["network"].to_numpy()[nearest],
        "roi": rois["roi"].to_numpy()[nearest],
        "i": ijk[:, 0], "j": ijk[:, 1], "k": ijk[:, 2],
        "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2],
    })
    return table.reset_index(drop=True)


# ----------------------------------------------------------------------------- image features

def gabor_energy(images: np.ndarray, n_orientations: int = 8, cycles_per_image: tuple[float, ...] = (2, 4, 8),
                 pool: int = 2, batch: int = 32) -> np.ndarray:
    """Local Gabor energy, (N, orientations, frequencies, H/pool, W/pool), float32.

    Each filter is a Gaussian bump on one side of the 2-D frequency plane, i.e.
    an analytic (quadrature) Gabor pair, so |response|^2 is phase-invariant
    energy (Adelson & Bergen, 1985). Frequency bandwidth is about one octave.
    Images are mirror-padded to twice their size, so filtering neither wraps
    around nor sees an edge at the image border.
    """
    n, h, w = images.shape
    ph, pw = 2 * h, 2 * w
    fy = sfft.fftfreq(ph)[:, None]
    fx = sfft.fftfreq(pw)[None, :]
    filters = []
    for cpi in cycles_per_image:
        f0 = cpi / w  # cycles per pixel
        sigma = 0.3 * f0
        for o in range(n_orientations):
            theta = np.pi * o / n_orientations
            cx, cy = f0 * np.cos(theta), f0 * np.sin(theta)
            filters.append(np.exp(-((fx - cx) ** 2 + (fy - cy) ** 2) / (2 * sigma ** 2)))
    bank = np.stack(filters).astype(np.complex64)  # (F*O, ph, pw)
    out = np.empty((n, len(cycles_per_image), n_orientations, h // pool, w // pool), np.float32)
    for start in range(0, n, batch):
        x = images[start: start + batch].astype(np.float32)
        x = x - x.mean(axis=(1, 2), keepdims=True)
        x = np.pad(x, ((0, 0), (h // 2, h - h // 2), (w // 2, w - w // 2)), mode="symmetric")
        spec = sfft.fft2(x)
        resp = sfft.ifft2(spec[:, None] * bank[None], axes=(-2, -1))[..., h // 2: h // 2 + h, w // 2: w // 2 + w]
        energy = (resp.real ** 2 + resp.imag ** 2).astype(np.float32)
        energy = energy.reshape(len(x), len(cycles_per_image), n_orientations, h // pool, pool, w // pool, pool).mean((4, 6))
        out[start: start + len(x)] = energy
    return out.transpose(0, 2, 1, 3, 4).copy()  # (N, O, F, h, w)


def appearance_clusters(images: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 25) -> np.ndarray:
    """Cluster index of each image by k-means on 8x8 thumbnails (deterministic Lloyd iterations)."""
    n, h, w = images.shape
    f = 8
    thumbs = images[:, : h - h % f, : w - w % f].reshape(n, f, h // f, f, w // f).mean((2, 4)).reshape(n, -1)
    thumbs = thumbs - thumbs.mean(1, keepdims=True)
    k = min(k, n)
    centres = thumbs[rng.choice(n, k, replace=False)].copy()
    labels = np.zeros(n, int)
    for _ in range(iterations):
        labels = ((thumbs[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        for c in range(k):
            if np.any(labels == c):
                centres[c] = thumbs[labels == c].mean(0)
    return labels


# ----------------------------------------------------------------------------- audio features

def mel_filterbank(n_fft: int, sample_rate: int, n_mels: int, fmin: float, fmax: float) -> tuple[np.ndarray, np.ndarray]:
    """Triangular HTK-mel filters (n_mels, n_fft//2+1) and their centre frequencies in Hz."""
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10 ** (np.asarray(m) / 2595.0) - 1.0)

    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    fb = np.maximum(0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
    return fb, edges[1:-1]


def log_mel(waveforms: np.ndarray, sample_rate: int, n_mels: int = 32, hop_s: float = 0.01,
            win_s: float = 0.025) -> tuple[np.ndarray, np.ndarray]:
    """(N, n_mels, frames) log-mel spectrograms and the mel centre frequencies."""
    win = int(round(win_s * sample_rate))
    hop = int(round(hop_s * sample_rate))
    n_fft = int(2 ** np.ceil(np.log2(win)))
    frames = np.lib.stride_tricks.sliding_window_view(np.asarray(waveforms, np.float32), win, axis=-1)[:, ::hop]
    z = sfft.rfft(frames * np.hanning(win + 2)[1:-1].astype(np.float32), n=n_fft, axis=-1)  # (N, frames, freqs)
    fb, centres = mel_filterbank(n_fft, sample_rate, n_mels, 80.0, 0.95 * sample_rate / 2)
    power = (z.real ** 2 + z.imag ** 2).transpose(0, 2, 1)  # (N, freqs, frames)
    return np.log(np.matmul(fb.astype(np.float32), power) + 1e-6), centres


def modulation_energy(spectrograms: np.ndarray, frame_rate: float, bins_per_octave: float,
                      rates_hz: tuple[float, ...] = (2, 4, 8, 16),
                      scales_cpo: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)) -> tuple[np.ndarray, list[tuple]]:
    """Spectro-temporal modulation energy per frequency band (Chi, Ru & Shamma, 2005).

    Returns (N, channels, n_mels): the energy of each 2-D Gabor modulation
    filter (rate x scale x sweep direction) at each mel band, summed over time,
    and the channel list of (rate_hz, scale_cpo, direction). By Parseval's
    theorem the sum over time equals the sum over temporal frequencies, so only
    the inverse transform along the frequency axis is computed.
    """
    n, m, t = spectrograms.shape
    pm, pt = 2 * m, sfft.next_fast_len(t + int(frame_rate / min(rates_hz)))  # pad by the longest period
    fm = sfft.fftfreq(pm)[:, None]  # cycles per mel bin
    ft = sfft.fftfreq(pt)[None, :]  # cycles per frame
    x = (spectrograms - spectrograms.mean(axis=(1, 2), keepdims=True)).astype(np.float32)
    spec = sfft.fft2(x, s=(pm, pt))
    channels, energies = [], []
    for rate in rates_hz:
        rt = rate / frame_rate
        for scale in scales_cpo:
            sm = scale / bins_per_octave
            for direction in (1, -1):  # downward / upward frequency sweeps
                h = np.exp(-((ft - rt) ** 2) / (2 * (0.5 * rt) ** 2) - ((fm - direction * sm) ** 2) / (2 * (0.5 * sm) ** 2))
                band = np.flatnonzero(h.max(0) > 1e-4)  # temporal frequencies the filter passes
                resp = sfft.ifft(spec[:, :, band] * h[None][:, :, band].astype(np.complex64), axis=1)[:, :m]
                energies.append((resp.real ** 2 + resp.imag ** 2).sum(-1) / pt)
                channels.append((rate, scale, direction))
    return np.stack(energies, 1).astype(np.float32), channels


# ----------------------------------------------------------------------------- tuning

@dataclass(frozen=True)
class TuningConfig:
    shared_fraction: float = 0.5  # share of each voxel's tuning common to all subjects
    prf_jitter: float = 0.15  # sd of pRF position scatter, in image half-widths
    category_weight: float = 1.0
    cluster_weight: float = 0.6
    mean_response_ratio: float = 1.5  # mean evoked response / its sd across stimuli


class LatentMixer:
    """Gaussian latents per voxel: sqrt(s) * shared + sqrt(1 - s) * subject-specific.

    Every tuning parameter is a fixed transform of such a latent, so one number
    (``shared_fraction``) sets how alike the subjects are, while no two are equal.
    """

    def __init__(self, shared_rng: np.random.Generator, subject_rng: np.random.Generator, shared_fraction: float):
        self.shared_rng, self.subject_rng, self.s = shared_rng, subject_rng, shared_fraction

    def __call__(self, *shape: int) -> np.ndarray:
        a = self.shared_rng.standard_normal(shape)
        b = self.subject_rng.standard_normal(shape)
        return np.sqrt(self.s) * a + np.sqrt(1 - self.s) * b


def retinotopic_position(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pRF centre (x, y in image half-widths, y up) and size from a voxel's MNI position.

    The left hemisphere sees the right visual field; dorsal voxels (above the
    calcarine sulcus, z > 5 mm here) see the lower field; eccentricity grows
    from the occipital pole (y = -100 mm) forwards. pRF size grows linearly
    with eccentricity (Dumoulin & Wandell, 2008; Kay et al., 2013).
    """
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    ecc = np.clip((y + 100.0) / 30.0, 0.05, 1.0)
    vertical = np.tanh(-(z - 5.0) / 15.0)
    horizontal = -np.sign(np.where(x == 0, 1e-3, x)) * np.sqrt(1 - vertical ** 2)
    return ecc * horizontal, ecc * vertical, 0.1 + 0.25 * ecc


def draw_tuning(voxels: pd.DataFrame, image_categories: int, image_clusters: int, n_mels: int, semantic_dim: int,
                mixer: LatentMixer, config: TuningConfig) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Per-voxel tuning parameters: a table (one row per voxel) and weight arrays by region.

    ``voxels`` is ``region_voxels``'s table; every tuning parameter is a fixed
    transform of the voxel's ``mixer`` latents, so subjects differ but are alike.
    """
    table = voxels.copy()
    weights: dict[str, np.ndarray] = {}
    n = len(table)
    for col in ("prf_x", "prf_y", "prf_size", "pref_orientation_deg", "orientation_selectivity", "pref_sf_cpi",
                "pref_category", "best_frequency_hz", "pref_rate_hz", "pref_scale_cpo"):
        table[col] = np.nan if col != "pref_category" else None
    latent = mixer(n, 8)  # one latent row per voxel, columns used by the region's transform

    ev = (table["region"] == "early_visual").to_numpy()
    if ev.any():
        px, py, size = retinotopic_position(table.loc[ev, ["x", "y", "z"]].to_numpy())
        lv = latent[ev]
        table.loc[ev, "prf_x"] = np.clip(px + config.prf_jitter * lv[:, 0], -1, 1)
        table.loc[ev, "prf_y"] = np.clip(py + config.prf_jitter * lv[:, 1], -1, 1)
        table.loc[ev, "prf_size"] = size * np.exp(0.2 * lv[:, 2])
        table.loc[ev, "pref_orientation_deg"] = (np.degrees(np.arctan2(lv[:, 3], lv[:, 4])) / 2) % 180
        table.loc[ev, "orientation_selectivity"] = np.exp(0.5 * lv[:, 5])  # von Mises kappa; broad, as voxels are
        # foveal voxels prefer finer gratings; log2 cycles/image between 1 and 3
        table.loc[ev, "pref_sf_cpi"] = 2 ** np.clip(3 - 2 * (size - 0.1) / 0.25 + 0.4 * lv[:, 6], 1, 3)

    hv = (table["region"] == "higher_visual").to_numpy()
    if hv.any():
        w_cat = mixer(int(hv.sum()), image_categories)
        # a third of the voxels are strongly selective for one category (face, text, ...)
        sharp = np.abs(latent[hv, 7]) > 1.0
        w_cat[sharp] += 2.0 * (w_cat[sharp] == w_cat[sharp].max(1, keepdims=True))
        weights["higher_visual_category"] = w_cat
        weights["higher_visual_cluster"] = mixer(int(hv.sum()), image_clusters)
        table.loc[hv, "pref_category"] = w_cat.argmax(1).astype(object)

    au = (table["region"] == "auditory").to_numpy()
    if au.any():
        lv = latent[au]
        # tonotopy: a medial-high / lateral-low gradient inside each sphere (Formisano et al., 2003)
        xs = table.loc[au, "x"].abs().to_numpy()
        roi = table.loc[au, "roi"].to_numpy()
        centre = pd.Series(xs).groupby(roi).transform("mean").to_numpy()
        bf = np.clip(0.5 + (centre - xs) / 16.0 + 0.15 * lv[:, 0], 0, 1) * (n_mels - 1)
        weights["auditory_best_bin"] = bf
        log_rate = np.log2(4.0) + 0.8 * lv[:, 1]
        log_scale = np.log2(0.5) + 0.8 * lv[:, 2]
        weights["auditory_pref_log_rate"] = log_rate
        weights["auditory_pref_log_scale"] = log_scale
        table.loc[au, "pref_rate_hz"] = 2 ** log_rate
        table.loc[au, "pref_scale_cpo"] = 2 ** log_scale

    la = (table["region"] == "language").to_numpy()
    if la.any():
        weights["language_semantic"] = mixer(int(la.sum()), semantic_dim)
    return table, weights


def early_visual_responses(table: pd.DataFrame, energy: np.ndarray, cycles_per_image: tuple[float, ...]) -> np.ndarray:
    """Raw pRF-Gabor responses (n_voxels, n_images) for the early visual rows of ``table``."""
    n, n_o, n_f, h, w = energy.shape
    coords = (np.arange(w) + 0.5) / w * 2 - 1
    gx, gy = np.meshgrid(coords, -coords)  # image row 0 is the top of the visual field
    px, py, ps = (table[c].to_numpy(float)[:, None] for c in ("prf_x", "prf_y", "prf_size"))
    prf = np.exp(-((gx.ravel()[None] - px) ** 2 + (gy.ravel()[None] - py) ** 2) / (2 * ps ** 2))
    prf /= prf.sum(1, keepdims=True)
    theta = np.pi * np.arange(n_o) / n_o
    pref = np.radians(table["pref_orientation_deg"].to_numpy(float))[:, None]
    kappa = table["orientation_selectivity"].to_numpy(float)[:, None]
    w_o = np.exp(kappa * (np.cos(2 * (theta[None] - pref)) - 1))
    log_sf = np.log2(np.asarray(cycles_per_image, float))[None]
    w_f = np.exp(-((log_sf - np.log2(table["pref_sf_cpi"].to_numpy(float))[:, None]) ** 2) / (2 * 0.75 ** 2))
    pooled = energy.reshape(n * n_o * n_f, h * w) @ prf.T.astype(np.float32)  # (N*O*F, V)
    pooled = pooled.reshape(n, n_o * n_f, -1).transpose(2, 0, 1)  # (V, N, O*F)
    weights = (w_o[:, :, None] * w_f[:, None, :]).reshape(len(w_o), -1, 1).astype(np.float32)  # (V, O*F, 1)
    drive = np.matmul(pooled, weights)[..., 0].astype(np.float64)  # (V, N)
    return np.sqrt(np.maximum(drive, 0))  # compressive spatial summation, exponent 0.5


def higher_visual_responses(w_cat: np.ndarray, w_clu: np.ndarray, categories: np.ndarray, clusters: np.ndarray,
                            config: TuningConfig) -> np.ndarray:
    n_cat, n_clu = w_cat.shape[1], w_clu.shape[1]
    return config.category_weight * w_cat @ np.eye(n_cat)[categories].T + config.cluster_weight * w_clu @ np.eye(n_clu)[clusters].T


def auditory_responses(best_bin: np.ndarray, log_rate: np.ndarray, log_scale: np.ndarray, energy: np.ndarray,
                       rates: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Raw responses (n_voxels, n_clips): modulation energy in the voxel's band, compressed."""
    n, c, m = energy.shape
    bins = np.arange(m)[None]
    band = np.exp(-((bins - best_bin[:, None]) ** 2) / (2 * 2.0 ** 2))  # about a third of an octave wide
    w_mod = np.exp(-((np.log2(rates)[None] - log_rate[:, None]) ** 2 + (np.log2(scales)[None] - log_scale[:, None]) ** 2) / 2)
    drive = np.einsum("ncm,vc,vm->vn", energy, w_mod, band)
    return np.sqrt(np.maximum(drive, 0))


def standardize_rows(raw: np.ndarray) -> np.ndarray:
    """z-score each voxel's raw responses across stimuli (flat rows stay zero)."""
    sd = raw.std(1, keepdims=True)
    return (raw - raw.mean(1, keepdims=True)) / np.where(sd > 0, sd, 1.0)
