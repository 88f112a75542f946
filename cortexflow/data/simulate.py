"""The embedded default study: a simulated fMRI experiment, written as a real one looks on disk.

``simulate_study`` writes, deterministically from a seed, a BIDS dataset with
fMRIPrep-style derivatives (docs/contracts.md, "Study layout"): per subject
and run a 4-D BOLD image on a 4 mm MNI152NLin2009cAsym grid with its sidecar,
brain mask, confounds table and events; the stimuli (grey-scale images, spoken
and written sentences); and a ground-truth folder saying which voxels carry
what, so results can be compared with what is knowable.

What a voxel's time series holds (in % of its baseline intensity):

    y(t) = b * (1 + [ sum_trials amp(voxel, stimulus) * hrf_regressor(t)   task signal, the voxel's own HRF
                      + slow drift (cosines, period > 128 s)
                      + head-motion leakage (strongest at the brain's edge)
                      + physiological signal (shared, strongest in CSF)
                      + noise: AR(1) in time; smooth in space (a Gaussian-smoothed
                        field) plus a few global components plus independent noise ] / 100)

A share ``untuned_fraction`` of every region's voxels is untuned (one evoked
response to every stimulus); every voxel's HRF is a double gamma whose shape
is drawn per subject and voxel, while the GLM assumes the canonical one.

``amp`` comes from the encoding model (cortexflow.data.encoding_model), scaled
so that the *single-trial beta* signal-to-noise ratio is ``beta_snr`` on
average: the time-series noise level is fixed (``noise_pct``), and each voxel's
signal sd across stimuli is ``snr * noise_pct * k``, where ``k`` is the sd of a
least-squares single-trial beta under that AR(1) noise for the task's design.
The default ``beta_snr = 0.5`` (tuned voxels) puts the test-repeat ncsnr of the
ROI voxels at a median of about 0.4, within NSD's visual cortex range (0.2-0.6;
Allen et al., 2022); ``beta_snr`` alone scales the study's difficulty.

Test stimuli are shown ``test_repeats`` times in different runs, training
stimuli once, as in NSD. Every subject sees the same stimuli in its own order,
and every subject's voxels have their own tuning (a share ``tuning_shared_fraction``
is common to all subjects).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import time
import zlib
from collections.abc import Mapping
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from cortexflow._io import atomic_dir
from cortexflow.data import encoding_model as em
from cortexflow.data.hrf import (
    beta_noise_sd,
    cosine_drift,
    double_gamma_cumulative,
    trial_regressors,
    varied_trial_signal,
)
from cortexflow.data.sentences import generate_sentences, sentence_features, word_embeddings
from cortexflow.data.speech import SpeechConfig, SpeechJob
from cortexflow.data.stimuli import (
    DEADLEAVES,
    IMAGE_CATEGORIES,
    LEGACY_DESIGN,
    check_image_design,
    make_image_set,
)
from cortexflow.errors import CortexflowInputError
from cortexflow.sections import from_mapping

log = logging.getLogger("cortexflow.data.simulate")

SPACE = "MNI152NLin2009cAsym"
MODALITIES = ("image", "audio", "text")
ID_PREFIX = {"image": "img", "audio": "aud", "text": "txt"}
GABOR_CPI = (2.0, 4.0, 8.0)
N_MELS = 32
MOTION_COLUMNS = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
HRF_DT = 0.1  # s, the fine time grid of the simulated HRFs
HEAD_RADIUS_MM = 50.0  # Power et al. (2012): rotations -> displacement on a 50 mm sphere


@dataclass(frozen=True)
class SimulationConfig:
    """The ``simulate:`` section of the workflow config. The defaults ARE the default study.

    Sizes are chosen so the whole default workflow (training included) runs in
    about 36 minutes on 2 CPU cores while decoding stays hard: ~2,000 single
    training trials of images (on the validation fold the DiT's lead over the
    strongest baselines grows with the training set up to there: docs/validation.md,
    "Why one sample did not beat nn_mean8 on SSIM"), ~250 sentences heard and read;
    noise as real studies have it (test-repeat ncsnr of the ROIs in NSD's range,
    spatially correlated noise, untuned voxels, HRFs that differ from the GLM's).
    """

    subjects: int = 2
    modalities: tuple[str, ...] = MODALITIES
    tasks: Mapping[str, str] = field(default_factory=lambda: {"image": "images", "audio": "audio", "text": "text"})
    # regions: spheres around Seitzman et al. (2018) ROI centres (nilearn, offline)
    roi_radius_mm: float = 8.0
    networks: Mapping[str, str] = field(default_factory=lambda: {
        "visual": "Visual", "auditory": "Auditory", "language": "DefaultMode"})
    early_visual_max_y: float = -78.0  # visual ROIs whose centre lies behind this y (mm) are early visual
    voxel_size_mm: float = 4.0
    # stimuli
    image_train: int = 2000
    image_test: int = 150  # 50 gave paired SSIM intervals of about +-.03, wider than the effects at stake (docs/validation.md)
    image_size: int = 32
    # which source photos are used, which are held out for test, and each split's share of every
    # kind of source (lfw_face, lfw_nonface, digit, deadleaves, photo). The defaults are the design
    # of the first studies (stimuli.LEGACY_DESIGN); config.yaml, the default study, sets the design
    # of docs/analysis-plan.md (12 held-out photos, dead leaves, 300 test images)
    image_photos: tuple[str, ...] = LEGACY_DESIGN["photos"]
    image_test_photos: tuple[str, ...] = LEGACY_DESIGN["test_photos"]
    image_train_shares: Mapping[str, float] = field(default_factory=lambda: dict(LEGACY_DESIGN["train_shares"]))
    image_test_shares: Mapping[str, float] = field(default_factory=lambda: dict(LEGACY_DESIGN["test_shares"]))
    sentence_train: int = 250
    sentence_test: int = 30
    max_words: int = 7
    sample_rate: int = 16000
    voice: str = "en-us"
    words_per_minute: int = 190
    # design
    tr: float = 2.0
    test_repeats: int = 3
    runs: Mapping[str, int] = field(default_factory=lambda: {"image": 20, "audio": 4, "text": 4})
    soa: Mapping[str, float] = field(default_factory=lambda: {"image": 4.0, "audio": 4.0, "text": 4.0})
    duration: Mapping[str, float] = field(default_factory=lambda: {"image": 3.0, "audio": 2.0, "text": 3.0})
    blank_fraction: float = 0.1  # share of empty trial slots (fixation), for the baseline
    lead_in: float = 6.0
    lead_out: float = 14.0
    # responses and noise
    # Single-trial beta SNR of a tuned voxel (signal sd across stimuli / beta noise sd), the one
    # key that scales the study's difficulty (a robustness sweep varies it). 0.5 puts the
    # test-repeat ncsnr of the ROIs (tuned and untuned voxels) at a median of about 0.4, in
    # NSD's range for visual cortex (0.2-0.6; Allen et al., 2022); see docs/simulator.md.
    beta_snr: float = 0.5
    snr_spread: float = 0.4  # sd of log voxel SNR
    untuned_fraction: float = 0.4  # share of each region's voxels with no stimulus-specific response
    tuning_shared_fraction: float = 0.5
    semantic_dim: int = 16
    image_clusters: int = 12
    noise_pct: float = 1.0
    ar_rho: float = 0.3
    # noise that is smooth in space and shared: a share of the noise variance is a Gaussian-smoothed
    # field (FWHM in mm), another share a few global components with smooth spatial loadings
    noise_smooth_fwhm_mm: float = 8.0
    noise_smooth_fraction: float = 0.5
    noise_shared_rank: int = 4
    noise_shared_fraction: float = 0.15
    # HRF shape drawn per subject and voxel around SPM's canonical one (0: canonical everywhere)
    hrf_variability: float = 1.0
    drift_pct: float = 1.0
    motion_mm: float = 0.2
    motion_leak_pct: float = 0.3  # % signal per mm of displacement
    physio_pct: float = 0.2
    baseline: float = 1000.0

    _MAPPINGS = ("tasks", "networks", "runs", "soa", "duration")

    @classmethod
    def from_params(cls, params: SimulationConfig | Mapping[str, Any] | None) -> SimulationConfig:
        """Build from the config section; mapping keys (runs, soa, ...) update the defaults."""
        if isinstance(params, SimulationConfig):
            return params
        params = dict(params or {})
        defaults = cls()
        for name in cls._MAPPINGS:  # a partial mapping updates the default one
            if isinstance(params.get(name), Mapping):
                params[name] = {**getattr(defaults, name), **params[name]}
        return from_mapping(cls, params, "simulate")

    def __post_init__(self) -> None:
        fix = "correct the simulate section of the config"
        bad = [m for m in self.modalities if m not in MODALITIES]
        if bad or not self.modalities:
            raise CortexflowInputError(f"simulate.modalities must be a non-empty subset of {MODALITIES}, got {self.modalities}", fix=fix)
        for name in ("subjects", "image_size", "sample_rate", "test_repeats", "semantic_dim", "image_clusters", "max_words"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise CortexflowInputError(f"simulate.{name} must be a positive integer, got {getattr(self, name)!r}", fix=fix)
        for name in ("image_train", "image_test", "sentence_train", "sentence_test"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise CortexflowInputError(f"simulate.{name} must be an integer >= 0, got {getattr(self, name)!r}", fix=fix)
        for name in ("tr", "roi_radius_mm", "voxel_size_mm", "noise_pct", "baseline", "beta_snr"):
            if not getattr(self, name) > 0:
                raise CortexflowInputError(f"simulate.{name} must be > 0, got {getattr(self, name)!r}", fix=fix)
        for name in ("snr_spread", "drift_pct", "noise_smooth_fwhm_mm", "hrf_variability", "noise_shared_rank", "motion_mm", "motion_leak_pct", "physio_pct", "lead_in", "lead_out"):
            if getattr(self, name) < 0:
                raise CortexflowInputError(f"simulate.{name} must be >= 0, got {getattr(self, name)!r}", fix=fix)
        if not 0 <= self.ar_rho < 1 or not 0 <= self.tuning_shared_fraction <= 1 or not 0 <= self.blank_fraction < 1:
            raise CortexflowInputError("simulate.ar_rho and blank_fraction must lie in [0, 1), tuning_shared_fraction in [0, 1]", fix=fix)
        if not 0 <= self.untuned_fraction < 1:
            raise CortexflowInputError(f"simulate.untuned_fraction must lie in [0, 1), got {self.untuned_fraction!r}", fix=fix)
        if not isinstance(self.noise_shared_rank, int):
            raise CortexflowInputError("simulate.noise_shared_rank must be an integer >= 0", fix=fix)
        if not (self.noise_smooth_fraction >= 0 and self.noise_shared_fraction >= 0
                and self.noise_smooth_fraction + self.noise_shared_fraction <= 1):
            raise CortexflowInputError("simulate.noise_smooth_fraction and noise_shared_fraction must be >= 0 and sum to "
                                       f"at most 1, got {self.noise_smooth_fraction} and {self.noise_shared_fraction}", fix=fix)
        if self.image_size % 8:
            raise CortexflowInputError(f"simulate.image_size must be a multiple of 8, got {self.image_size}", fix=fix)
        for m in self.modalities:
            for name in ("tasks", "runs", "soa", "duration"):
                if m not in getattr(self, name):
                    raise CortexflowInputError(f"simulate.{name} has no entry for modality {m!r}", fix=fix)
            if not (isinstance(self.runs[m], int) and self.runs[m] >= 1):
                raise CortexflowInputError(f"simulate.runs.{m} must be a positive integer", fix=fix)
            if not 0 < self.duration[m] <= self.soa[m]:
                raise CortexflowInputError(f"simulate.duration.{m} must be > 0 and <= soa.{m}", fix=fix)
            task = self.tasks[m]
            if not (isinstance(task, str) and task.isalnum()):
                raise CortexflowInputError(f"simulate.tasks.{m} must be an alphanumeric BIDS label, got {task!r}", fix=fix)
        if len({self.tasks[m] for m in self.modalities}) != len(self.modalities):
            raise CortexflowInputError("simulate.tasks must give each modality its own task", fix=fix)
        for key in ("visual", "auditory", "language"):
            if key not in self.networks:
                raise CortexflowInputError(f"simulate.networks needs a {key!r} entry (a Seitzman 2018 network name)", fix=fix)
        need_images = "image" in self.modalities
        if need_images:
            check_image_design(tuple(self.image_photos), tuple(self.image_test_photos),
                               {"train": dict(self.image_train_shares), "test": dict(self.image_test_shares)})
        need_sentences = "audio" in self.modalities or "text" in self.modalities
        if need_images and self.image_train < 2 or need_sentences and self.sentence_train < 2:
            raise CortexflowInputError("simulate needs at least 2 training stimuli per simulated modality", fix=fix)

    @property
    def image_categories(self) -> tuple[str, ...]:
        """The image categories the higher visual voxels are tuned to (dead leaves only if drawn)."""
        shares = (self.image_train_shares, self.image_test_shares)
        return IMAGE_CATEGORIES + ((DEADLEAVES,) if any(s.get(DEADLEAVES, 0) > 0 for s in shares) else ())

    @property
    def subject_labels(self) -> list[str]:
        return [f"{i + 1:02d}" for i in range(self.subjects)]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: (dict(v) if isinstance(v, Mapping) else list(v) if isinstance(v, tuple) else v) for k, v in out.items()}


def planned_runs(params: SimulationConfig | Mapping[str, Any] | None) -> list[tuple[str, str, int]]:
    """(subject label, task label, run number) of every run the simulator will write, in order."""
    cfg = SimulationConfig.from_params(params)
    return [(s, cfg.tasks[m], r) for s in cfg.subject_labels for m in cfg.modalities for r in range(1, cfg.runs[m] + 1)]


def study_subjects(params: SimulationConfig | Mapping[str, Any] | None) -> list[str]:
    """Subject labels ("01", "02", ...) of the simulated study."""
    return SimulationConfig.from_params(params).subject_labels


def _rng(seed: int, *stream: str | int) -> np.random.Generator:
    """An independent, named random stream: the same name always draws the same numbers."""
    keys = [zlib.crc32(str(s).encode()) for s in stream]
    return np.random.default_rng([int(seed), *keys])


def bids_stem(subject: str, task: str, run: int) -> str:
    return f"sub-{subject}_task-{task}_run-{run:02d}"


# ----------------------------------------------------------------------------- brain grid

@dataclass
class BrainGrid:
    """The MNI grid, its brain mask and tissue classes, and each voxel's baseline intensity."""

    affine: np.ndarray
    mask: np.ndarray  # bool (X, Y, Z)
    baseline: np.ndarray  # (n_brain,) intensity of each brain voxel, in mask order
    csf: np.ndarray  # bool (n_brain,)
    white_matter: np.ndarray
    edge: np.ndarray  # bool (n_brain,): on the brain's boundary

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.mask.shape


@functools.lru_cache(maxsize=4)  # the templates never change; studies simulated in one process share the grid
def build_grid(voxel_size: float, baseline: float) -> BrainGrid:
    """nilearn's MNI152 brain mask and GM/WM templates (1 mm, offline) averaged onto a ``voxel_size`` grid.

    The coarse grid keeps the 1 mm grid's origin, so coarse voxel ``I`` is
    centred on fine voxel ``voxel_size * I``; each coarse voxel takes the
    partial-volume average of the fine voxels it covers (a separable tent
    filter, then subsampling). A coarse voxel is brain when over half of it is.
    The 1 mm images are read as they ship (nilearn resamples to make its 2 mm ones).
    """
    from nilearn import datasets
    from scipy import ndimage

    if voxel_size != int(voxel_size) or voxel_size < 1:
        raise CortexflowInputError(f"simulate.voxel_size_mm must be a whole number of mm, got {voxel_size}",
                                   fix="use voxel_size_mm: 4")
    zoom = int(voxel_size)
    brain1 = datasets.load_mni152_brain_mask(resolution=1)
    affine = np.diag([float(zoom)] * 3 + [1.0])
    affine[:3, 3] = brain1.affine[:3, 3]
    tent = np.concatenate([np.arange(1, zoom + 1), np.arange(zoom - 1, 0, -1)]).astype(np.float32)
    tent /= tent.sum()

    def average(img) -> np.ndarray:  # noqa: ANN001 - partial-volume average over each coarse voxel
        data = img.get_fdata(dtype=np.float32)
        for axis in range(3):
            data = ndimage.convolve1d(data, tent, axis=axis, mode="constant")[(slice(None),) * axis + (slice(None, None, zoom),)]
        return data

    mask = average(brain1) > 0.5
    # tissue probabilities of the MNI152 template; the rest of the brain is CSF
    gm = np.clip(average(datasets.load_mni152_gm_template(resolution=1)), 0, 1)[mask]
    wm = np.clip(average(datasets.load_mni152_wm_template(resolution=1)), 0, 1)[mask]
    csf = np.clip(1 - gm - wm, 0, 1)
    # EPI-like contrast: CSF brightest, grey matter above white matter (T2*-weighted)
    intensity = baseline * (0.8 * wm + 1.0 * gm + 1.3 * csf) / np.maximum(wm + gm + csf, 1e-6)
    edge = (mask & ~ndimage.binary_erosion(mask))[mask]
    return BrainGrid(affine=affine, mask=mask, baseline=intensity, csf=csf > 0.5, white_matter=wm > 0.5, edge=edge)


@functools.lru_cache(maxsize=1)
def _seitzman_coords() -> tuple[pd.DataFrame, np.ndarray]:
    from nilearn.datasets import fetch_coords_seitzman_2018

    atlas = fetch_coords_seitzman_2018()
    return pd.DataFrame(atlas.rois)[["x", "y", "z"]].astype(float).reset_index(drop=True), np.asarray(atlas.networks)


def seitzman_rois(cfg: SimulationConfig) -> pd.DataFrame:
    """The Seitzman 2018 ROI centres of the configured networks, labelled by simulated region."""
    rois, networks = _seitzman_coords()
    rois = rois.copy()
    rois["network"] = networks
    rois["roi"] = np.arange(len(rois))
    region = pd.Series(None, index=rois.index, dtype=object)
    visual = rois["network"] == cfg.networks["visual"]
    region[visual & (rois["y"] <= cfg.early_visual_max_y)] = "early_visual"
    region[visual & (rois["y"] > cfg.early_visual_max_y)] = "higher_visual"
    region[rois["network"] == cfg.networks["auditory"]] = "auditory"
    region[rois["network"] == cfg.networks["language"]] = "language"
    rois["region"] = region
    known = set(np.unique(networks))
    for key, name in cfg.networks.items():
        if name not in known:
            raise CortexflowInputError(f"simulate.networks.{key} = {name!r} is not a Seitzman 2018 network",
                                       fix=f"use one of {', '.join(sorted(known))}")
    return rois[rois["region"].notna()].reset_index(drop=True)


# ----------------------------------------------------------------------------- stimuli

@dataclass
class StudyStimuli:
    table: pd.DataFrame  # stimulus_id, modality, path, split, text, category, source
    images: np.ndarray | None  # (N, H, W) float32 in [0, 1], rows as the image rows of table
    sentences: list[str]
    waveforms: np.ndarray | None  # (N, samples) float32


def build_stimuli(cfg: SimulationConfig, seed: int) -> StudyStimuli:
    """Images, sentences and their speech, with ids and splits (speech is synthesised while images are cut)."""
    sentences: list[str] = []
    sentence_split = np.array([], str)
    speech = None
    if "audio" in cfg.modalities or "text" in cfg.modalities:
        rng = _rng(seed, "sentences")
        sentences = generate_sentences(cfg.sentence_train + cfg.sentence_test, rng, cfg.max_words)
        sentence_split = np.array(["train"] * cfg.sentence_train + ["test"] * cfg.sentence_test)[rng.permutation(len(sentences))]
        if "audio" in cfg.modalities:
            speech = SpeechJob(sentences, SpeechConfig(voice=cfg.voice, words_per_minute=cfg.words_per_minute,
                                                       sample_rate=cfg.sample_rate, duration=cfg.duration["audio"]))
    rows: list[dict[str, Any]] = []
    images = None
    if "image" in cfg.modalities:
        imgs = make_image_set(cfg.image_train, cfg.image_test, cfg.image_size, _rng(seed, "images"),
                              photos=tuple(cfg.image_photos), test_photos=tuple(cfg.image_test_photos),
                              train_shares=dict(cfg.image_train_shares), test_shares=dict(cfg.image_test_shares),
                              deadleaves_rng=_rng(seed, "images", DEADLEAVES))
        images = imgs.images
        for i in range(len(imgs)):
            sid = f"img-{i + 1:04d}"
            rows.append({"stimulus_id": sid, "modality": "image", "path": f"images/{sid}.png", "split": imgs.split[i],
                         "text": None, "category": imgs.category[i], "source": imgs.source[i]})
    for modality in ("audio", "text"):
        if modality not in cfg.modalities:
            continue
        for i, s in enumerate(sentences):
            sid = f"{ID_PREFIX[modality]}-{i + 1:04d}"
            path = f"audio/{sid}.wav" if modality == "audio" else "text/sentences.tsv"
            rows.append({"stimulus_id": sid, "modality": modality, "path": path, "split": str(sentence_split[i]),
                         "text": s, "category": "speech" if modality == "audio" else "sentence",
                         "source": f"sentence:{i + 1:04d}"})
    waveforms = speech.result() if speech is not None else None
    return StudyStimuli(pd.DataFrame(rows), images, sentences, waveforms)


@dataclass
class StimulusFeatures:
    gabor: np.ndarray | None = None  # (N_img, O, F, h, w)
    category: np.ndarray | None = None  # (N_img,) index into SimulationConfig.image_categories
    cluster: np.ndarray | None = None  # (N_img,)
    modulation: np.ndarray | None = None  # (N_sent, channels, n_mels)
    channel_rates: np.ndarray | None = None
    channel_scales: np.ndarray | None = None
    mel_centres_hz: np.ndarray | None = None
    semantic: np.ndarray | None = None  # (N_sent, semantic_dim)


def compute_features(stim: StudyStimuli, cfg: SimulationConfig, seed: int) -> StimulusFeatures:
    feats = StimulusFeatures()
    if stim.images is not None:
        feats.gabor = em.gabor_energy(stim.images, cycles_per_image=GABOR_CPI)
        cats = stim.table.loc[stim.table["modality"] == "image", "category"]
        feats.category = np.array([cfg.image_categories.index(c) for c in cats])
        feats.cluster = em.appearance_clusters(stim.images, cfg.image_clusters, _rng(seed, "clusters"))
    if stim.sentences:
        feats.semantic = sentence_features(stim.sentences, word_embeddings(cfg.semantic_dim, seed))
    if stim.waveforms is not None:
        spec, centres = em.log_mel(stim.waveforms, cfg.sample_rate, n_mels=N_MELS)
        octaves = np.log2(centres[-1] / centres[0])
        energy, channels = em.modulation_energy(spec, frame_rate=100.0, bins_per_octave=(N_MELS - 1) / octaves)
        feats.modulation = energy
        feats.channel_rates = np.array([c[0] for c in channels], float)
        feats.channel_scales = np.array([c[1] for c in channels], float)
        feats.mel_centres_hz = centres
    return feats


# ----------------------------------------------------------------------------- design

@dataclass
class RunDesign:
    events: pd.DataFrame  # onset, duration, stimulus_id
    n_volumes: int


def design_runs(train_ids: list[str], test_ids: list[str], n_runs: int, cfg: SimulationConfig, modality: str,
                rng: np.random.Generator) -> list[RunDesign]:
    """Trial order and timing of one subject's runs of one task.

    Each test stimulus is shown ``test_repeats`` times, in different runs when
    there are enough runs; training stimuli once. Runs hold equal numbers of
    trials; a share ``blank_fraction`` of the trial slots is left empty.
    """
    per_run: list[list[str]] = [[] for _ in range(n_runs)]
    for sid in test_ids:
        for r in range(cfg.test_repeats):
            loads = np.array([len(p) for p in per_run], float) + rng.random(n_runs) * 0.5
            # prefer runs that do not already hold this stimulus, then the emptiest
            loads += np.array([1e6 if sid in p else 0.0 for p in per_run])
            per_run[int(loads.argmin())].append(sid)
    total = len(train_ids) + len(test_ids) * cfg.test_repeats
    target = int(np.ceil(total / n_runs))
    pool = [train_ids[i] for i in rng.permutation(len(train_ids))]
    for p in sorted(per_run, key=len):
        take = max(0, min(target - len(p), len(pool)))
        p.extend(pool[:take])
        pool = pool[take:]
    for p in per_run:  # anything left (only when test loads were uneven)
        if not pool:
            break
        p.append(pool.pop())
    soa, dur = cfg.soa[modality], cfg.duration[modality]
    designs = []
    for trials in per_run:
        n_blank = int(round(cfg.blank_fraction * len(trials)))
        slots = np.array(trials + [""] * n_blank, dtype=object)[rng.permutation(len(trials) + n_blank)]
        onsets = cfg.lead_in + soa * np.arange(len(slots))
        keep = slots != ""
        events = pd.DataFrame({"onset": onsets[keep], "duration": dur, "stimulus_id": slots[keep].astype(str)})
        n_volumes = int(np.ceil((cfg.lead_in + soa * len(slots) + cfg.lead_out) / cfg.tr))
        designs.append(RunDesign(events.reset_index(drop=True), n_volumes))
    return designs


def lsa_design(events: pd.DataFrame, n_volumes: int, tr: float) -> np.ndarray:
    """Least-squares-all design: one regressor per trial, cosine drift (128 s) and an intercept."""
    trials = trial_regressors(events["onset"].to_numpy(), events["duration"].to_numpy(), n_volumes, tr)
    return np.column_stack([trials, cosine_drift(n_volumes, tr), np.ones(n_volumes)])


# ----------------------------------------------------------------------------- noise

def simulate_motion(n: int, motion_mm: float, rng: np.random.Generator) -> np.ndarray:
    """(n, 6) realignment parameters: trans_x/y/z in mm, rot_x/y/z in radians.

    Slow mean-reverting drift with occasional abrupt jerks (that then relax),
    the two kinds of motion seen in realignment traces.
    """
    phi = 0.95
    steps = rng.standard_normal((n, 6)) * motion_mm * np.sqrt(1 - phi ** 2)
    jerks = (rng.random((n, 1)) < 0.02) * rng.standard_normal((n, 6)) * 3 * motion_mm
    steps += jerks
    out = np.zeros((n, 6))
    for t in range(n):
        out[t] = (phi * out[t - 1] if t else 0) + steps[t]
    out[:, 3:] /= HEAD_RADIUS_MM  # rotations in radians (about motion_mm of arc at 50 mm)
    return out


def framewise_displacement(motion: np.ndarray) -> np.ndarray:
    """Power et al. (2012) FD: sum of absolute backward differences, rotations on a 50 mm sphere."""
    diff = np.abs(np.diff(motion, axis=0))
    fd = diff[:, :3].sum(1) + HEAD_RADIUS_MM * diff[:, 3:].sum(1)
    return np.concatenate([[np.nan], fd])


def run_noise(n: int, loadings: np.ndarray, grid: BrainGrid, cfg: SimulationConfig,
              rng: np.random.Generator) -> np.ndarray:
    """(n, n_brain) float32 noise with unit variance per voxel: AR(1) in time, correlated in space.

    Three independent parts, all with the same AR(1) time course (so the
    single-trial beta noise the SNR is calibrated on is unchanged): a share
    ``noise_smooth_fraction`` of the variance is white noise smoothed with a
    Gaussian of FWHM ``noise_smooth_fwhm_mm`` over the whole grid, a share
    ``noise_shared_fraction`` is ``noise_shared_rank`` global time courses
    with smooth spatial ``loadings``, and the rest is independent per voxel
    (thermal noise).
    """
    f32 = np.float32
    shared = cfg.noise_shared_fraction if len(loadings) else 0.0
    smooth = cfg.noise_smooth_fraction
    e = rng.standard_normal((n, int(grid.mask.sum())), dtype=f32)
    e *= f32(np.sqrt(max(0.0, 1 - smooth - shared)))
    if smooth > 0:
        fwhm = cfg.noise_smooth_fwhm_mm / cfg.voxel_size_mm
        chunk = 32  # volumes smoothed at a time (bounded memory)
        for a in range(0, n, chunk):
            fields = smooth_fields(rng.standard_normal((min(chunk, n - a), *grid.shape), dtype=f32), fwhm)
            e[a: a + chunk] += f32(np.sqrt(smooth)) * fields[:, grid.mask]
    if shared > 0:
        e += (rng.standard_normal((n, len(loadings)), dtype=f32) * f32(np.sqrt(shared))) @ loadings
    scale = f32(np.sqrt(1 - cfg.ar_rho ** 2))
    e[1:] *= scale
    for t in range(1, n):
        e[t] += f32(cfg.ar_rho) * e[t - 1]
    return e


# ----------------------------------------------------------------------------- subject

@dataclass
class SubjectModel:
    """One subject's voxel tuning and noise-free response amplitudes (% signal change)."""

    voxels: pd.DataFrame  # ground-truth table, one row per region voxel
    brain_index: np.ndarray  # column of each region voxel in the brain-mask order
    amplitudes: dict[str, np.ndarray]  # modality -> (n_voxels_modality, n_stimuli)
    voxel_rows: dict[str, np.ndarray]  # modality -> rows of ``voxels`` that respond
    stimulus_ids: dict[str, list[str]]
    semantic_weights: np.ndarray | None
    motion_leak: np.ndarray  # (12, n_brain): weights of motion params and their derivatives
    physio_weights: np.ndarray  # (2, n_brain)
    hrf_cumulative: np.ndarray  # (n_voxels, L + 1): each region voxel's own HRF, as running sums
    shared_loadings: np.ndarray  # (noise_shared_rank, n_brain): spatial maps of the shared noise components


def build_subject(subject: str, regions: pd.DataFrame, brain_index: np.ndarray, grid: BrainGrid, stim: StudyStimuli,
                  feats: StimulusFeatures, beta_sd: dict[str, float], cfg: SimulationConfig, seed: int) -> SubjectModel:
    tuning_cfg = em.TuningConfig(shared_fraction=cfg.tuning_shared_fraction)
    mixer = em.LatentMixer(_rng(seed, "tuning-shared"), _rng(seed, "tuning", subject), cfg.tuning_shared_fraction)
    table, weights = em.draw_tuning(regions, len(cfg.image_categories), cfg.image_clusters, N_MELS, cfg.semantic_dim,
                                    mixer, tuning_cfg)
    rng = _rng(seed, "subject", subject)
    # raw tuning curves over each modality's stimuli, standardised per voxel
    z: dict[str, np.ndarray] = {}
    region = table["region"].to_numpy()
    ids: dict[str, list[str]] = {m: stim.table.loc[stim.table["modality"] == m, "stimulus_id"].tolist()
                                 for m in cfg.modalities}
    if feats.gabor is not None:
        ev, hv = region == "early_visual", region == "higher_visual"
        img_z = np.zeros((len(table), feats.gabor.shape[0]))
        if ev.any():
            img_z[ev] = em.standardize_rows(em.early_visual_responses(table[ev], feats.gabor, GABOR_CPI))
        if hv.any():
            img_z[hv] = em.standardize_rows(em.higher_visual_responses(
                weights["higher_visual_category"], weights["higher_visual_cluster"], feats.category, feats.cluster, tuning_cfg))
        z["image"] = img_z
    if feats.semantic is not None:
        la = region == "language"
        sem_z = np.zeros((len(table), feats.semantic.shape[0]))
        if la.any():
            sem_z[la] = em.standardize_rows(weights["language_semantic"] @ feats.semantic.T)
        z["sentence"] = sem_z
    if feats.modulation is not None:
        au = region == "auditory"
        aud_z = np.zeros((len(table), feats.modulation.shape[0]))
        if au.any():
            aud_z[au] = em.standardize_rows(em.auditory_responses(
                weights["auditory_best_bin"], weights["auditory_pref_log_rate"], weights["auditory_pref_log_scale"],
                feats.modulation, feats.channel_rates, feats.channel_scales))
            table.loc[au, "best_frequency_hz"] = np.interp(weights["auditory_best_bin"], np.arange(N_MELS), feats.mel_centres_hz)
        z["audio"] = aud_z
    # signal size: per-voxel single-trial SNR around beta_snr, noise fixed (module docstring)
    snr = cfg.beta_snr * np.exp(cfg.snr_spread * rng.standard_normal(len(table)) - cfg.snr_spread ** 2 / 2)
    signal_sd = snr * cfg.noise_pct * np.array([_calibration_factor(r, beta_sd) for r in region])
    # a share of every region's voxels is untuned: an evoked response of the same size to every
    # stimulus, nothing that tells stimuli apart (exactly round(share * n) per region)
    tuned = np.ones(len(table), bool)
    for name in em.REGIONS:
        members = np.flatnonzero(region == name)
        tuned[rng.permutation(members)[: int(round(cfg.untuned_fraction * len(members)))]] = False
    table["tuned"] = tuned
    table["noise_sd_pct"] = cfg.noise_pct
    table["mean_response_pct"] = tuning_cfg.mean_response_ratio * signal_sd
    signal_sd = np.where(tuned, signal_sd, 0.0)
    table["signal_sd_pct"] = signal_sd
    table["beta_snr"] = np.where(tuned, snr, 0.0)
    # each voxel's HRF: SPM's double gamma with its peak and undershoot shapes and undershoot ratio
    # drawn around the canonical (6, 16, 1/6), per subject (a shift shared by its voxels) and per voxel;
    # the peak latency then varies by about +-1 s (Handwerker et al., 2004). The GLM stays canonical.
    j = cfg.hrf_variability
    subject_shift = rng.standard_normal(2)
    vox = rng.standard_normal((3, len(table)))
    table["hrf_peak_shape"] = np.clip(6.0 + j * (0.5 * subject_shift[0] + 0.6 * vox[0]), 4.5, 8.5)
    table["hrf_undershoot_shape"] = np.clip(16.0 + j * (1.0 * subject_shift[1] + 1.5 * vox[1]), 12.0, 22.0)
    table["hrf_undershoot_ratio"] = np.clip((1 / 6) * np.exp(j * 0.3 * vox[2]), 0.05, 0.4)
    hrf_cum = double_gamma_cumulative(HRF_DT, table["hrf_peak_shape"].to_numpy(), table["hrf_undershoot_shape"].to_numpy(),
                                      table["hrf_undershoot_ratio"].to_numpy()).astype(np.float32)
    amplitudes, rows = {}, {}
    for m in cfg.modalities:
        responds = np.array([m in em.REGION_MODALITIES[r] for r in region])
        if m == "image":
            zz = z["image"][responds]
        elif m == "text":
            zz = z["sentence"][responds]
        else:  # audio: auditory voxels hear the sound, language voxels understand the sentence
            zz = np.where((region[responds] == "language")[:, None], z["sentence"][responds], z["audio"][responds])
        amplitudes[m] = (table["mean_response_pct"].to_numpy()[responds, None]
                         + signal_sd[responds, None] * zz).astype(np.float32)
        rows[m] = np.flatnonzero(responds)
    n_brain = int(grid.mask.sum())
    edge = 1.0 + 2.0 * grid.edge
    leak = rng.standard_normal((12, n_brain)) * cfg.motion_leak_pct * edge[None]
    leak[6:] *= 2.0  # spin-history effects follow the motion derivatives
    tissue = np.where(grid.csf, 3.0, np.where(grid.white_matter, 0.5, 1.0))
    physio = cfg.physio_pct * tissue[None] * (1 + 0.3 * rng.standard_normal((2, n_brain)))
    leak, physio = leak.astype(np.float32), physio.astype(np.float32)
    # shared noise components: smooth random maps (three times the noise field's FWHM), each voxel's
    # loadings scaled to unit total variance
    rank = cfg.noise_shared_rank
    loadings = np.zeros((rank, n_brain), np.float32)
    if rank:
        maps = smooth_fields(rng.standard_normal((rank, *grid.shape)).astype(np.float32),
                             3 * cfg.noise_smooth_fwhm_mm / cfg.voxel_size_mm)[:, grid.mask]
        loadings = (maps / np.sqrt((maps ** 2).sum(0, keepdims=True))).astype(np.float32)
    return SubjectModel(table, brain_index, amplitudes, rows, ids,
                        weights.get("language_semantic"), leak, physio, hrf_cum, loadings)


def smooth_fields(fields: np.ndarray, fwhm_voxels: float) -> np.ndarray:
    """Gaussian-smooth each 3-D field of ``fields`` (..., X, Y, Z) in place, keeping unit variance.

    White noise of unit variance stays unit variance (the kernel is divided by
    the root of its summed squares), so the smoothing changes the noise's
    spatial correlation (neighbours at distance d correlate by
    exp(-d^2 / (4 sigma^2))), not its size.
    """
    from scipy import ndimage

    if fwhm_voxels <= 0:
        return fields
    sigma = fwhm_voxels / np.sqrt(8 * np.log(2))
    radius = int(np.ceil(4 * sigma))
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-x ** 2 / (2 * sigma ** 2))
    kernel = (kernel / np.sqrt((kernel ** 2).sum())).astype(np.float32)
    for axis in range(fields.ndim - 3, fields.ndim):
        ndimage.convolve1d(fields, kernel, axis=axis, mode="reflect", output=fields)
    return fields


def _calibration_factor(region: str, beta_sd: Mapping[str, float]) -> float:
    """Beta noise factor of the task a region's SNR is set on: its primary modality, else another it hears or sees."""
    for m in (em.PRIMARY_MODALITY[region], *em.REGION_MODALITIES[region]):
        if m in beta_sd:
            return beta_sd[m]
    return float("nan")  # the region is not driven by any simulated modality


def simulate_run(design: RunDesign, model: SubjectModel, modality: str, grid: BrainGrid, cfg: SimulationConfig,
                 rng: np.random.Generator) -> tuple[np.ndarray, pd.DataFrame]:
    """One run: (n_volumes, n_brain) float32 BOLD intensities and its confounds table."""
    n, n_brain = design.n_volumes, int(grid.mask.sum())
    f32 = np.float32
    ts = run_noise(n, model.shared_loadings, grid, cfg, rng)
    ts *= f32(cfg.noise_pct)
    # slow drift: a linear trend and the three slowest cosines, random per voxel
    drift = np.column_stack([np.linspace(-1, 1, n), cosine_drift(n, cfg.tr, cutoff=128.0)[:, :3] * np.sqrt(n / 2)])
    drift_w = rng.standard_normal((drift.shape[1], n_brain), dtype=f32) * f32(cfg.drift_pct / np.sqrt(drift.shape[1]))
    ts += drift.astype(f32) @ drift_w
    # head motion leaks in through its parameters and their derivatives (spin history)
    motion = simulate_motion(n, cfg.motion_mm, rng)
    motion_mm = motion.copy()
    motion_mm[:, 3:] *= HEAD_RADIUS_MM
    motion_mm -= motion_mm.mean(0)
    deriv = np.vstack([np.zeros((1, 6)), np.diff(motion_mm, axis=0)])
    ts += np.column_stack([motion_mm, np.abs(deriv)]).astype(f32) @ model.motion_leak
    # physiological fluctuations shared across the brain, strongest in CSF
    physio = np.zeros((n, 2))
    innov = rng.standard_normal((n, 2))
    for t in range(n):
        physio[t] = (0.8 * physio[t - 1] if t else 0) + 0.6 * innov[t]
    ts += physio.astype(f32) @ model.physio_weights
    # task signal: every trial's HRF regressor times the voxel's amplitude for that stimulus
    col = {sid: i for i, sid in enumerate(model.stimulus_ids[modality])}
    stim_index = np.array([col[s] for s in design.events["stimulus_id"]], int)
    rows = model.voxel_rows[modality]
    signal = varied_trial_signal(design.events["onset"].to_numpy(), design.events["duration"].to_numpy(), n, cfg.tr,
                                 model.hrf_cumulative[rows], model.amplitudes[modality][:, stim_index], dt=HRF_DT)
    ts[:, model.brain_index[rows]] += signal
    ts *= f32(0.01)
    ts += f32(1)
    ts *= grid.baseline.astype(f32)[None]
    confounds = pd.DataFrame({
        "global_signal": ts.mean(1, dtype=np.float64),
        "csf": ts[:, grid.csf].mean(1, dtype=np.float64),
        "white_matter": ts[:, grid.white_matter].mean(1, dtype=np.float64),
    })
    for j, name in enumerate(MOTION_COLUMNS):
        confounds[name] = motion[:, j]
        confounds[f"{name}_derivative1"] = np.concatenate([[np.nan], np.diff(motion[:, j])])
    confounds["framewise_displacement"] = framewise_displacement(motion)
    return ts, confounds


# ----------------------------------------------------------------------------- writing

def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _write_json(path: Path, obj: Any) -> None:
    _write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def _write_tsv(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep="\t", index=False, na_rep="n/a", float_format="%.6g", lineterminator="\n")


def write_volumes(path: Path, values: np.ndarray, grid: BrainGrid, tr: float | None = None, slope: float = 1.0) -> None:
    """Write brain-voxel ``values`` as a .nii.gz in MNI space (see ``nifti_gz_bytes``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(nifti_gz_bytes(values, grid, tr, slope))


def nifti_gz_bytes(values: np.ndarray, grid: BrainGrid, tr: float | None = None, slope: float = 1.0) -> bytes:
    """Brain-voxel ``values`` as the bytes of a .nii.gz in MNI space, reproducibly.

    ``values`` is (n_volumes, n_brain) for a 4-D image or (n_brain,) for a 3-D
    one, in brain-mask order; voxels outside the mask are 0. Integer data get
    ``scl_slope`` = ``slope``, ``scl_inter`` 0 (intensity = stored value * slope).
    The file is streamed through zlib (gzip container, mtime 0, no file name),
    without nibabel's chunked copies: the same values always give the same bytes.
    """
    import nibabel as nib

    values = np.asarray(values)
    n_vol = values.shape[0] if values.ndim == 2 else None
    shape = grid.shape + ((n_vol,) if n_vol is not None else ())
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(values.dtype)
    hdr.set_data_shape(shape)
    hdr.set_xyzt_units("mm", "sec")
    zooms = tuple(float(z) for z in np.abs(np.diag(grid.affine)[:3]))
    hdr.set_zooms(zooms + ((float(tr),) if n_vol is not None else ()))
    hdr.set_sform(grid.affine, code=4)  # NIFTI_XFORM_MNI_152
    hdr.set_qform(grid.affine, code=4)
    if np.issubdtype(values.dtype, np.integer):
        hdr.set_slope_inter(slope, 0.0)
    hdr["vox_offset"] = 352
    head = io.BytesIO()
    hdr.write_to(head)  # 348-byte header + 4-byte extension flag
    # NIfTI stores x fastest: each volume in Fortran order, volumes one after another
    where = np.ravel_multi_index(np.nonzero(grid.mask), grid.shape, order="F")
    flat = np.zeros((n_vol or 1, int(np.prod(grid.shape))), values.dtype)
    flat[:, where] = values.reshape(n_vol or 1, -1)
    # wbits 31: gzip container. Run-length matching only (Z_RLE): on noisy int16 data it is
    # faster than level-1 deflate and 8% smaller (the zeros outside the brain are long runs)
    packer = zlib.compressobj(1, zlib.DEFLATED, 31, 9, zlib.Z_RLE)
    view = memoryview(flat.reshape(-1).view(np.uint8))
    parts = [packer.compress(head.getvalue().ljust(352, b"\0"))]
    parts += [packer.compress(view[i: i + (1 << 24)]) for i in range(0, len(view), 1 << 24)]
    parts.append(packer.flush())
    return b"".join(parts)


QUANTA_PER_NOISE_SD = 5  # int16 steps per noise sd: rounding adds 1/300 of the noise variance


def bold_quantum(cfg: SimulationConfig) -> float:
    """Intensity step of the stored int16 BOLD (its ``scl_slope``), a fifth of the noise sd."""
    return float(np.float32(cfg.noise_pct / 100 * cfg.baseline / QUANTA_PER_NOISE_SD))


def _quantize(bold: np.ndarray, quantum: float) -> np.ndarray:
    """int16 steps of ``quantum`` (overwrites ``bold``, which is not needed afterwards)."""
    bold *= np.float32(1.0 / quantum)
    np.rint(bold, out=bold)
    np.clip(bold, -32768, 32767, out=bold)
    return bold.astype(np.int16)


README = """# cortexflow simulated study

A simulated fMRI experiment written by `cortexflow simulate` (seed {seed}). Subjects
viewed grey-scale images (task `{task_image}`), listened to spoken sentences (task
`{task_audio}`) and read sentences (task `{task_text}`), one modality per run.

- `sub-*/func/*_events.tsv`: the experiment's events, their columns described in
  `task-*_events.json` (BIDS). Raw BOLD images are not included: only the preprocessed
  derivatives, whose sidecars hold the acquisition (RepetitionTime).
- `derivatives/fmriprep/`: preprocessed BOLD in {space} space ({voxel} mm, int16 with
  scl_slope {slope}), brain masks and confound tables named as fMRIPrep names them.
- `stimuli/`: every stimulus; `stimuli/stimuli.tsv` lists them with their train/test
  split (paths relative to `stimuli/`).
- `derivatives/ground_truth/`: what the simulation knows and a real study cannot
  (see its README).

Generated data; no person was scanned. License: CC0.
"""

GROUND_TRUTH_README = """# Ground truth of the simulated study

Files
- `space-{space}_desc-regions_dseg.nii.gz` + `desc-regions_dseg.tsv`: which voxels belong to which
  simulated region (0 = none). Regions are spheres of radius {radius} mm around the Seitzman et al.
  (2018) ROI centres (nilearn, offline) of networks {networks}, inside the brain mask; a voxel near
  several centres belongs to the nearest. Visual ROIs with centre y <= {early_y} mm are early visual.
- `sub-XX/sub-XX_voxels.tsv`: one row per region voxel (`voxel` = row number used below):
  region, network, roi (index in nilearn's Seitzman list), grid indices i j k, MNI x y z (mm),
  tuning (pRF position/size in image half-widths with y up, preferred orientation in degrees,
  orientation selectivity (von Mises kappa), preferred spatial frequency in cycles/image; preferred
  category index into {categories}; best frequency, preferred modulation rate and scale), `tuned`
  (False for the untuned share of each region: same response to every stimulus), the voxel's own
  HRF (`hrf_peak_shape`, `hrf_undershoot_shape`, `hrf_undershoot_ratio` of SPM's double gamma; the
  canonical is 6, 16, 1/6), and
  noise_sd_pct (noise sd, % of baseline), signal_sd_pct (sd of the response across stimuli, 0 when
  untuned), mean_response_pct, beta_snr (signal sd / expected single-trial beta noise sd, set on the design of the
  region's primary task: language voxels on reading; when they listen, scale by the ratio of the tasks'
  `beta_noise_factor`). Drift, motion and physiological noise come on top unless regressed out.
- `sub-XX/sub-XX_responses.npz`: noise-free response amplitudes (% signal change at plateau) per
  modality: `<modality>` (voxels x stimuli, float32), `<modality>_voxels` (rows of voxels.tsv),
  `<modality>_ids` (stimulus ids); `language_semantic_weights` (language voxels x semantic dims).
- `features.npz`: stimulus features the voxels were driven by (image category and appearance
  cluster, sentence semantic vectors, ids).
- `simulation.json`: the full configuration, seed, and the expected single-trial beta noise sd per
  unit time-series noise for each task's design (`beta_noise_factor`).

Signal model (per voxel, in % of baseline): task signal (trial amplitudes convolved with the voxel's
own HRF) + slow drift + head-motion leakage (motion parameters and their derivatives, 3x stronger on
the brain's edge) + a shared physiological signal (strongest in CSF) + noise, AR(1) in time
(rho = {rho}) and correlated in space: {smooth:.0%} of its variance a Gaussian-smoothed field
(FWHM {fwhm} mm), {shared:.0%} {rank} global components with smooth spatial loadings, the rest
independent per voxel.
"""


def _write_stimuli(root: Path, stim: StudyStimuli, cfg: SimulationConfig) -> None:
    from PIL import Image
    from scipy.io import wavfile

    table = stim.table
    if stim.images is not None:
        (root / "images").mkdir(parents=True, exist_ok=True)
        for sid, img in zip(table.loc[table["modality"] == "image", "stimulus_id"], stim.images):
            Image.fromarray(np.round(img * 255).astype(np.uint8), mode="L").save(root / "images" / f"{sid}.png", format="PNG")
    if stim.waveforms is not None:
        (root / "audio").mkdir(parents=True, exist_ok=True)
        for sid, wav in zip(table.loc[table["modality"] == "audio", "stimulus_id"], stim.waveforms):
            wavfile.write(root / "audio" / f"{sid}.wav", cfg.sample_rate, np.round(np.clip(wav, -1, 1) * 32767).astype(np.int16))
    if "text" in cfg.modalities:
        text = table[table["modality"] == "text"][["stimulus_id", "text"]]
        _write_tsv(root / "text" / "sentences.tsv", text)
    _write_tsv(root / "stimuli.tsv", table)


def _region_labels(regions: pd.DataFrame, brain_index: np.ndarray, n_brain: int) -> np.ndarray:
    """(n_brain,) uint8 region label of each brain voxel (0 = none, else 1 + index in REGIONS)."""
    labels = np.zeros(n_brain, np.uint8)
    for idx, name in enumerate(em.REGIONS, start=1):
        labels[brain_index[(regions["region"] == name).to_numpy()]] = idx
    return labels


def simulate_study(out_dir: str | Path, config: SimulationConfig | Mapping[str, Any] | None = None, seed: int = 0,
                   workers: int = 1) -> Path:
    """Write the simulated study to ``out_dir`` (replaced atomically) and return its path.

    ``config`` is a SimulationConfig or the ``simulate:`` config section (a dict).
    The same config and seed give byte-identical files, with any number of ``workers``
    (processes simulating subjects side by side).
    """
    from threadpoolctl import threadpool_limits

    cfg = SimulationConfig.from_params(config)
    # one BLAS thread: the matrices here are small, and on a loaded machine OpenBLAS's
    # spinning threads made a 264 x 130 pseudo-inverse take seconds instead of milliseconds
    with threadpool_limits(limits=1, user_api="blas"):
        return _simulate_study(Path(out_dir), cfg, seed, workers)


def _simulate_study(out_dir: Path, cfg: SimulationConfig, seed: int, workers: int = 1) -> Path:
    start = time.perf_counter()
    grid = build_grid(cfg.voxel_size_mm, cfg.baseline)
    rois = seitzman_rois(cfg)
    regions = em.region_voxels(grid.mask, grid.affine, rois, cfg.roi_radius_mm)
    flat_index = -np.ones(grid.shape, int)
    flat_index[grid.mask] = np.arange(int(grid.mask.sum()))
    brain_index = flat_index[regions["i"], regions["j"], regions["k"]]
    log.info("grid %s at %.0f mm: %d brain voxels; regions: %s", grid.shape, cfg.voxel_size_mm, grid.mask.sum(),
             regions["region"].value_counts().to_dict())
    stim = build_stimuli(cfg, seed)
    feats = compute_features(stim, cfg, seed)
    log.info("stimuli: %s (%.1f s)", stim.table.groupby(["modality", "split"]).size().to_dict(), time.perf_counter() - start)

    with atomic_dir(out_dir) as root:
        _write_json(root / "dataset_description.json", {
            "Name": "cortexflow simulated study", "BIDSVersion": "1.9.0", "DatasetType": "raw", "License": "CC0",
            "Authors": ["cortexflow simulate (generated data)"],
            "GeneratedBy": [{"Name": "cortexflow simulate", "Description": f"seed {seed}"}]})
        _write_tsv(root / "participants.tsv", pd.DataFrame({"participant_id": [f"sub-{s}" for s in cfg.subject_labels]}))
        _write_text(root / "README", README.format(seed=seed, task_image=cfg.tasks.get("image", "-"),
                                                   task_audio=cfg.tasks.get("audio", "-"), task_text=cfg.tasks.get("text", "-"),
                                                   space=SPACE, voxel=cfg.voxel_size_mm, slope=bold_quantum(cfg)))
        _write_json(root / "derivatives" / "fmriprep" / "dataset_description.json", {
            "Name": "cortexflow simulated study: fMRIPrep-style derivatives", "BIDSVersion": "1.9.0",
            "DatasetType": "derivative", "GeneratedBy": [{"Name": "cortexflow simulate"}]})
        # fMRIPrep's confounds tables are not (yet) in the BIDS specification: fMRIPrep-style outputs
        # list them in .bidsignore so the validator (bids-validator-deno -r) accepts the derivative
        _write_text(root / "derivatives" / "fmriprep" / ".bidsignore", "*_desc-confounds_timeseries.tsv\n")
        _write_stimuli(root / "stimuli", stim, cfg)
        for m in cfg.modalities:
            cats = sorted(stim.table.loc[stim.table["modality"] == m, "category"].unique())
            _write_json(root / f"task-{cfg.tasks[m]}_events.json", events_sidecar(m, cats))
        truth = root / "derivatives" / "ground_truth"

        designs = plan_designs(stim.table, cfg, seed)
        beta_sd = beta_noise_factors(designs, cfg)
        log.info("single-trial beta noise sd per unit time-series noise: %s", {m: round(v, 3) for m, v in beta_sd.items()})

        mask_bytes = nifti_gz_bytes(np.ones(int(grid.mask.sum()), np.uint8), grid)
        subject_args = [(root, s, {m: designs[(s, m)] for m in cfg.modalities}, regions, brain_index, grid, stim, feats,
                         beta_sd, cfg, seed, mask_bytes) for s in cfg.subject_labels]
        workers = max(1, min(int(workers), len(subject_args)))
        if workers == 1:
            for args in tqdm(subject_args, desc="simulate subjects", unit="subject", disable=None):
                log.info("sub-%s: %d runs written in %.1f s", args[1], *_simulate_subject(*args))
        else:
            # subjects in parallel processes: each draws from its own streams (_rng(seed, ..., subject, ...)),
            # so the files are the same bytes whatever the number of workers (tests/test_simulate.py)
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(_simulate_subject, *args): args[1] for args in subject_args}
                for future in tqdm(as_completed(futures), total=len(futures), desc="simulate subjects",
                                   unit="subject", disable=None):
                    log.info("sub-%s: %d runs written in %.1f s", futures[future], *future.result())

        _write_study_truth(truth, regions, brain_index, grid, stim, feats, beta_sd, cfg, seed)
    log.info("wrote %s in %.1f s", out_dir, time.perf_counter() - start)
    return out_dir


def _simulate_subject(root: Path, subject: str, designs: Mapping[str, list[RunDesign]], regions: pd.DataFrame,
                      brain_index: np.ndarray, grid: BrainGrid, stim: StudyStimuli, feats: StimulusFeatures,
                      beta_sd: Mapping[str, float], cfg: SimulationConfig, seed: int,
                      mask_bytes: bytes) -> tuple[int, float]:
    """One subject's runs and ground truth into ``root``; returns (runs written, seconds). Its random
    numbers come from streams of its own, so subjects can be simulated in any order or in parallel."""
    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):  # as simulate_study, also in a worker process
        runs = _simulate_subject_runs(root, subject, designs, regions, brain_index, grid, stim, feats, beta_sd, cfg,
                                      seed, mask_bytes)
    return runs, time.perf_counter() - start


def _simulate_subject_runs(root: Path, subject: str, designs: Mapping[str, list[RunDesign]], regions: pd.DataFrame,
                           brain_index: np.ndarray, grid: BrainGrid, stim: StudyStimuli, feats: StimulusFeatures,
                           beta_sd: Mapping[str, float], cfg: SimulationConfig, seed: int, mask_bytes: bytes) -> int:
    model = build_subject(subject, regions, brain_index, grid, stim, feats, beta_sd, cfg, seed)
    jobs = [(m, r) for m in cfg.modalities for r in range(cfg.runs[m])]
    # compress and write each BOLD run on a second thread while the next run is simulated
    # (zlib releases the GIL); the bytes do not depend on the order of the writes
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending: list[Future] = []
        for done, (m, r) in enumerate(jobs):
            design = designs[m][r]
            bold, confounds = simulate_run(design, model, m, grid, cfg, _rng(seed, "run", subject, m, r))
            while pending and (pending[0].done() or len(pending) >= 2):  # at most 2 runs wait in memory
                pending.pop(0).result()  # re-raises a failed write here
            pending.append(_write_run(root, subject, m, r + 1, design, _quantize(bold, bold_quantum(cfg)), confounds,
                                      mask_bytes, stim.table, grid, cfg, writer))
            del bold
            # progress (a worker process forked on Linux logs to the stage's log as the parent does)
            log.info("sub-%s: run %d/%d simulated (%s run-%02d)", subject, done + 1, len(jobs), cfg.tasks[m], r + 1)
        for f in pending:
            f.result()
    _write_subject_truth(root / "derivatives" / "ground_truth" / f"sub-{subject}", subject, model)
    return len(jobs)


def plan_designs(stimuli: pd.DataFrame, cfg: SimulationConfig, seed: int) -> dict[tuple[str, str], list[RunDesign]]:
    """Every subject's runs of every modality: {(subject, modality): [RunDesign per run]}."""
    designs = {}
    for s in cfg.subject_labels:
        for m in cfg.modalities:
            table = stimuli[stimuli["modality"] == m]
            designs[(s, m)] = design_runs(table.loc[table["split"] == "train", "stimulus_id"].tolist(),
                                          table.loc[table["split"] == "test", "stimulus_id"].tolist(),
                                          cfg.runs[m], cfg, m, _rng(seed, "design", s, m))
    return designs


def beta_noise_factors(designs: Mapping[tuple[str, str], list[RunDesign]], cfg: SimulationConfig) -> dict[str, float]:
    """Per modality, the sd of single-trial LSA beta noise per unit AR(1) time-series noise.

    The root-mean-square over all trials of subject 01's runs, i.e. the noise
    sd across trials that a decoder sees; the SNR calibration uses it.
    """
    out = {}
    for m in cfg.modalities:
        k2 = [beta_noise_sd(lsa_design(d.events, d.n_volumes, cfg.tr), cfg.ar_rho)[: len(d.events)] ** 2
              for d in designs[(cfg.subject_labels[0], m)]]
        out[m] = float(np.sqrt(np.mean(np.concatenate(k2))))
    return out


def _write_study_truth(truth: Path, regions: pd.DataFrame, brain_index: np.ndarray, grid: BrainGrid,
                       stim: StudyStimuli, feats: StimulusFeatures, beta_sd: Mapping[str, float],
                       cfg: SimulationConfig, seed: int) -> None:
    """The subject-independent ground truth: region labels, stimulus features, settings, README."""
    write_volumes(truth / f"space-{SPACE}_desc-regions_dseg.nii.gz",
                  _region_labels(regions, brain_index, int(grid.mask.sum())), grid)
    _write_tsv(truth / "desc-regions_dseg.tsv", pd.DataFrame({"index": range(1, len(em.REGIONS) + 1), "name": em.REGIONS}))
    arrays: dict[str, Any] = {}
    if feats.category is not None:
        arrays.update(image_ids=stim.table.loc[stim.table["modality"] == "image", "stimulus_id"].to_numpy(str),
                      image_category=feats.category, image_cluster=feats.cluster,
                      image_category_names=np.array(cfg.image_categories))
    if feats.semantic is not None:
        arrays.update(sentence_text=np.array(stim.sentences), sentence_semantic=feats.semantic.astype(np.float32))
    _save_npz(truth / "features.npz", arrays)
    _write_json(truth / "simulation.json", {"seed": seed, "config": cfg.to_dict(), "beta_noise_factor": dict(beta_sd),
                                           "space": SPACE, "regions": regions["region"].value_counts().sort_index().to_dict()})
    _write_text(truth / "README.md", GROUND_TRUTH_README.format(
        space=SPACE, radius=cfg.roi_radius_mm, networks=dict(cfg.networks), early_y=cfg.early_visual_max_y,
        categories=list(cfg.image_categories), rho=cfg.ar_rho, smooth=cfg.noise_smooth_fraction,
        fwhm=cfg.noise_smooth_fwhm_mm, shared=cfg.noise_shared_fraction if cfg.noise_shared_rank else 0.0,
        rank=cfg.noise_shared_rank))
    # the simulation's own files (arrays, settings, voxel tables) have no BIDS name
    _write_text(truth / ".bidsignore", "features.npz\nsimulation.json\nsub-*/sub-*_voxels.tsv\nsub-*/sub-*_responses.npz\n")
    _write_json(truth / "dataset_description.json", {
        "Name": "cortexflow simulated study: ground truth", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "cortexflow simulate"}]})


def _write_run(root: Path, subject: str, modality: str, run: int, design: RunDesign, bold: np.ndarray,
               confounds: pd.DataFrame, mask_bytes: bytes, stimuli: pd.DataFrame, grid: BrainGrid,
               cfg: SimulationConfig, writer: ThreadPoolExecutor) -> Future:
    """Write one run's files; the BOLD image is written by ``writer`` (returned future)."""
    task = cfg.tasks[modality]
    stem = bids_stem(subject, task, run)
    func = root / "derivatives" / "fmriprep" / f"sub-{subject}" / "func"
    func.mkdir(parents=True, exist_ok=True)
    future = writer.submit(write_volumes, func / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz", bold, grid, cfg.tr,
                           bold_quantum(cfg))
    (func / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz").write_bytes(mask_bytes)
    # no Sources: there is no raw BOLD to point at (the validator flags links to missing files)
    _write_json(func / f"{stem}_space-{SPACE}_desc-preproc_bold.json",
                {"RepetitionTime": cfg.tr, "SkullStripped": False, "TaskName": task})
    _write_tsv(func / f"{stem}_desc-confounds_timeseries.tsv", confounds)
    lookup = stimuli.set_index("stimulus_id").loc[design.events["stimulus_id"]]
    events = design.events.assign(trial_type=lookup["category"].to_numpy(), modality=modality,
                                  stim_file=lookup["path"].to_numpy())
    raw = root / f"sub-{subject}" / "func"
    # the raw folder holds events only: a _bold.json there without its BOLD image is invalid BIDS
    # (SIDECAR_WITHOUT_DATAFILE); the columns are described once per task (task-<t>_events.json)
    _write_tsv(raw / f"{stem}_events.tsv", events[["onset", "duration", "trial_type", "stimulus_id", "modality", "stim_file"]])
    return future


def events_sidecar(modality: str, categories: list[str]) -> dict[str, Any]:
    """The top-level ``task-<task>_events.json``: every events column described (BIDS inheritance)."""
    return {
        "onset": {"Description": "Stimulus onset from the first volume's acquisition", "Units": "s"},
        "duration": {"Description": "How long the stimulus was shown or played", "Units": "s"},
        "trial_type": {"Description": "Stimulus category (also the category column of stimuli/stimuli.tsv)",
                       "Levels": {c: f"a {c} stimulus" for c in categories}},
        "stimulus_id": {"Description": "Stimulus identifier, a row of stimuli/stimuli.tsv (BEP044 stim_id)"},
        "modality": {"Description": "Stimulus modality of this task",
                     "Levels": {modality: {"image": "grey-scale image", "audio": "spoken sentence",
                                           "text": "written sentence"}[modality]}},
        "stim_file": {"Description": "The stimulus file, relative to the dataset's stimuli/ folder"},
        "StimulusPresentation": {"OperatingSystem": "none (simulated)", "SoftwareName": "cortexflow simulate"},
    }


def _save_npz(path: Path, arrays: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _write_subject_truth(folder: Path, subject: str, model: SubjectModel) -> None:
    table = model.voxels.copy()
    table.insert(0, "voxel", np.arange(len(table)))
    _write_tsv(folder / f"sub-{subject}_voxels.tsv", table)
    arrays: dict[str, Any] = {}
    for m, amp in model.amplitudes.items():
        arrays[m] = amp
        arrays[f"{m}_voxels"] = model.voxel_rows[m]
        arrays[f"{m}_ids"] = np.array(model.stimulus_ids[m])
    if model.semantic_weights is not None:
        arrays["language_semantic_weights"] = model.semantic_weights.astype(np.float32)
    _save_npz(folder / f"sub-{subject}_responses.npz", arrays)


def simulate_study_stage(*, out: str, params: dict, seed: int = 0, threads: int = 1) -> None:
    """Simulate the default study: a BIDS dataset with fMRIPrep derivatives, stimuli and ground truth.

    ``params`` is the ``simulate:`` section of the workflow config (see
    cortexflow.data.simulate.SimulationConfig for every key and its default). With ``threads`` > 1,
    that many processes simulate subjects side by side (the same files).
    """
    simulate_study(out, SimulationConfig.from_params(params), seed, workers=threads)
