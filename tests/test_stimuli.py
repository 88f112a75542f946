"""Stimuli and the encoding model's features: real variety, split hygiene, tuning that means what it says."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cortexflow.data import encoding_model as em
from cortexflow.data.hrf import beta_noise_sd, spm_hrf, trial_regressors
from cortexflow.data.sentences import (
    CATEGORIES,
    content_words,
    generate_sentences,
    sentence_features,
    word_category,
    word_embeddings,
)
from cortexflow.data.speech import SpeechConfig, synthesize_many
from cortexflow.data.stimuli import (
    DEADLEAVES,
    IMAGE_CATEGORIES,
    LEGACY_DESIGN,
    PHOTOS,
    TEST_PHOTOS,
    dead_leaves,
    image_units,
    make_image_set,
)


@pytest.fixture(scope="module")
def images():
    return make_image_set(60, 12, 32, np.random.default_rng(0))


def test_image_set_has_variety_and_no_leak_across_splits(images):
    x = images.images
    assert x.shape == (72, 32, 32) and x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    assert images.split.count("test") == 12
    assert set(images.category) <= set(IMAGE_CATEGORIES) | {DEADLEAVES} and len(set(images.category)) >= 6
    assert x.std(axis=(1, 2)).min() > 0.05  # every image has contrast: photos, faces, digits, not blanks
    flat = x.reshape(len(x), -1)
    z = (flat - flat.mean(1, keepdims=True)) / flat.std(1, keepdims=True)
    corr = z @ z.T / flat.shape[1]
    train = np.array(images.split) == "train"
    assert corr[~train][:, train].max() < 0.9  # no test image is a near-copy of a training image
    # no source (photo, face, non-face patch, digit sample) supplies both splits
    src = pd.Series(images.source)
    assert not set(src[~train]) & set(src[train])
    assert {s.split(":")[1] for s in src[~train] if s.startswith("photo:")} <= set(TEST_PHOTOS)
    # no category is seen only at test
    cat = pd.Series(images.category)
    assert set(cat[~train]) <= set(cat[train])
    again = make_image_set(60, 12, 32, np.random.default_rng(0))
    assert np.array_equal(again.images, x) and again.source == images.source


def test_default_size_test_set_covers_every_category_from_held_out_sources():
    images = make_image_set(300, 300, 32, np.random.default_rng(3))
    train = np.array(images.split) == "train"
    cat = pd.Series(images.category)
    assert set(cat[~train]) == set(cat[train]) == set(IMAGE_CATEGORIES) | {DEADLEAVES}
    # every photo category has a held-out photo and at least one training photo
    for category in {c for _, c in PHOTOS.values()}:
        names = [n for n, (_, c) in PHOTOS.items() if c == category]
        assert set(names) & set(TEST_PHOTOS) and set(names) - set(TEST_PHOTOS), category
    # the families of the analysis plan, with their test counts; crops spread evenly over 12 photos
    families, units = image_units([str(i) for i in range(len(images))], images.source)
    test_families = pd.Series(families)[~train].value_counts().to_dict()
    assert test_families == {"photo": 120, "digit": 60, DEADLEAVES: 60, "face": 30, "nonface": 30}
    test_units = pd.Series(units)[~train]
    photo_units = test_units[pd.Series(families)[~train] == "photo"]
    assert photo_units.nunique() == len(TEST_PHOTOS) == 12 and set(photo_units.value_counts()) == {10}
    other = test_units[pd.Series(families)[~train] != "photo"]
    assert other.is_unique  # every digit, face, patch and dead-leaves image is its own unit


def test_legacy_design_draws_no_dead_leaves_and_holds_out_one_photo_per_category():
    images = make_image_set(200, 50, 32, np.random.default_rng(3), **LEGACY_DESIGN)
    assert DEADLEAVES not in images.category
    held_out = {s.split(":")[1] for s, sp in zip(images.source, images.split) if sp == "test" and s.startswith("photo:")}
    assert held_out <= set(LEGACY_DESIGN["test_photos"]) and len(LEGACY_DESIGN["test_photos"]) == 6
    assert {s.split(":")[1] for s in images.source if s.startswith("photo:")} <= set(LEGACY_DESIGN["photos"])


def test_dead_leaves_are_scale_invariant_independent_draws():
    a, b = dead_leaves(32, np.random.default_rng(1)), dead_leaves(32, np.random.default_rng(1))
    assert np.array_equal(a, b) and not np.array_equal(a, dead_leaves(32, np.random.default_rng(2)))
    stack = np.stack([dead_leaves(32, np.random.default_rng(i)) for i in range(24)])
    power = (np.abs(np.fft.fft2(stack - stack.mean(axis=(1, 2), keepdims=True))) ** 2).mean(0)
    fy, fx = np.meshgrid(np.fft.fftfreq(32), np.fft.fftfreq(32), indexing="ij")
    f = np.hypot(fy, fx)
    band = (f > 0.05) & (f < 0.35)
    slope = np.polyfit(np.log(f[band]), np.log(power[band]), 1)[0]
    assert -2.6 < slope < -1.6  # power falls about as 1/f^2, as in natural images
    # occlusion, not blending: most pixels keep one disc's grey exactly (flat regions)
    big = dead_leaves(32, np.random.default_rng(3), supersample=1)
    assert np.mean(np.abs(np.diff(big, axis=1)) < 1e-6) > 0.3


def test_sentences_are_distinct_grammatical_and_reproducible():
    sentences = generate_sentences(300, np.random.default_rng(1))
    assert len(set(sentences)) == 300 and sentences == generate_sentences(300, np.random.default_rng(1))
    for s in sentences:
        words = s[:-1].split()
        assert s[0].isupper() and s.endswith(".") and 3 <= len(words) <= 7
        for article, nxt in zip(words, words[1:]):
            if article.lower() in ("a", "an"):
                assert (article.lower() == "an") == (nxt[0] in "aeiou"), s
        cats = [word_category(w) for w in content_words(s)]
        assert None not in cats and cats.count("PEOPLE") + cats.count("ANIMALS") >= 1, s


def test_words_of_one_category_have_similar_embeddings():
    emb = word_embeddings(16, seed=0)

    def cos(a, b):
        return float(emb[a] @ emb[b] / np.linalg.norm(emb[a]) / np.linalg.norm(emb[b]))
    within = np.mean([cos(a, b) for a in CATEGORIES["FOOD"] for b in CATEGORIES["FOOD"] if a != b])
    across = np.mean([cos(a, b) for a in CATEGORIES["FOOD"] for b in CATEGORIES["VEHICLES"]])
    assert within > 0.5 and abs(across) < within - 0.3
    f = sentence_features(["The dog ate an apple.", "A cat ate the bread.", "The pilot fixed a truck."], emb)
    assert np.corrcoef(f)[0, 1] > np.corrcoef(f)[0, 2]


def test_speech_is_real_reproducible_and_fixed_length():
    config = SpeechConfig(duration=2.0)
    texts = ["The dog ran across the field.", "A baker cooked the soup."]
    wav = synthesize_many(texts, config)
    assert wav.shape == (2, 32000) and wav.dtype == np.float32
    assert np.array_equal(wav, synthesize_many(texts, config))
    assert np.abs(wav[:, :1600]).max() > 0.05  # speech starts at the onset (silence trimmed)
    assert not np.allclose(wav[0], wav[1])
    spec = np.abs(np.fft.rfft(wav[0])) ** 2
    freqs = np.fft.rfftfreq(32000, 1 / 16000)
    assert spec[(freqs > 100) & (freqs < 4000)].sum() > 0.8 * spec.sum()  # energy in the speech band


def test_gabor_energy_is_orientation_and_phase_selective():
    yy, xx = np.mgrid[0:32, 0:32]
    vertical = 0.5 + 0.5 * np.cos(2 * np.pi * 4 * xx / 32)  # 4 cycles/image, varies along x
    shifted = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * xx / 32)
    e = em.gabor_energy(np.stack([vertical, shifted]).astype(np.float32))  # (2, O, F, 16, 16)
    per_filter = e[0, :, :, 4:12, 4:12].mean((-1, -2))
    assert np.unravel_index(per_filter.argmax(), per_filter.shape) == (0, 1)  # orientation 0, 4 cycles/image
    centre = e[:, :, :, 4:12, 4:12].mean((1, 2, 3, 4))
    assert np.allclose(centre[0], centre[1], rtol=0.05)  # energy ignores phase (away from the borders)


def test_early_visual_voxel_sees_its_receptive_field():
    left = np.zeros((32, 32), np.float32)
    left[:, :16] = np.random.default_rng(0).random((32, 16))
    right = left[:, ::-1].copy()
    energy = em.gabor_energy(np.stack([left, right]))
    voxels = pd.DataFrame({"prf_x": [-0.6, 0.6], "prf_y": [0.0, 0.0], "prf_size": [0.15, 0.15],
                           "pref_orientation_deg": [0.0, 0.0], "orientation_selectivity": [0.5, 0.5], "pref_sf_cpi": [8.0, 8.0]})
    r = em.early_visual_responses(voxels, energy, (2.0, 4.0, 8.0))
    assert r[0, 0] > 3 * r[0, 1] and r[1, 1] > 3 * r[1, 0]  # left pRF: left stimulus; right pRF: right
    # retinotopy: the left hemisphere sees the right visual field, dorsal voxels the lower field
    x, y, size = em.retinotopic_position(np.array([[-20.0, -90.0, 20.0], [20.0, -75.0, -10.0]]))
    assert x[0] > 0 > x[1] and y[0] < 0 < y[1] and size[1] > size[0]


def test_auditory_voxel_prefers_its_best_frequency():
    t = np.arange(32000) / 16000
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)  # 4 Hz amplitude modulation
    tones = np.stack([envelope * np.sin(2 * np.pi * f * t) for f in (300.0, 3000.0)]).astype(np.float32)
    spec, centres = em.log_mel(tones, 16000, n_mels=32)
    energy, channels = em.modulation_energy(spec, 100.0, 31 / np.log2(centres[-1] / centres[0]))
    rates = np.array([c[0] for c in channels], float)
    scales = np.array([c[1] for c in channels], float)
    bins = np.array([np.argmin(np.abs(centres - 300)), np.argmin(np.abs(centres - 3000))], float)
    r = em.auditory_responses(bins, np.log2([4.0, 4.0]), np.log2([0.5, 0.5]), energy, rates, scales)
    assert r[0, 0] > 2 * r[0, 1] and r[1, 1] > 2 * r[1, 0]


def test_region_voxels_are_spheres_assigned_to_the_nearest_centre():
    mask = np.ones((10, 10, 10), bool)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    rois = pd.DataFrame({"x": [16.0, 24.0], "y": [16.0, 16.0], "z": [16.0, 16.0], "region": ["a", "b"],
                         "network": ["n", "n"], "roi": [0, 1]})
    v = em.region_voxels(mask, affine, rois, radius=4.0)
    assert len(v) == 7 + 7 - 1  # two 7-voxel spheres sharing one voxel, given to one centre only
    d = np.linalg.norm(v[["x", "y", "z"]].to_numpy() - rois.loc[v["roi"], ["x", "y", "z"]].to_numpy(), axis=1)
    other = np.linalg.norm(v[["x", "y", "z"]].to_numpy() - rois.loc[1 - v["roi"], ["x", "y", "z"]].to_numpy(), axis=1)
    assert (d <= 4.0).all() and (d <= other).all()


def test_trial_regressors_and_beta_noise_match_direct_computation():
    dt = 0.1
    x = trial_regressors([10.0, 30.0], [3.0, 200.0], 60, 2.0, dt=dt)
    fine = np.arange(int(120 / dt) + 1) * dt
    box = ((fine >= 10.0) & (fine < 13.0)).astype(float)
    ref = np.convolve(box, spm_hrf(dt))[: len(fine)][np.round(np.arange(60) * 2.0 / dt).astype(int)]
    assert np.allclose(x[:, 0], ref, atol=1e-12)
    assert abs(x[-1, 1] - 1.0) < 0.02  # a long block settles at height 1 (the HRF integrates to 1)
    design = np.column_stack([x, np.ones(60)])
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((60, 20000))
    for t in range(1, 60):
        noise[t] = 0.4 * noise[t - 1] + np.sqrt(1 - 0.4 ** 2) * noise[t]
    betas = np.linalg.lstsq(design, noise, rcond=None)[0]
    assert np.allclose(betas.std(1), beta_noise_sd(design, 0.4), rtol=0.03)


def test_schema_defaults_keep_the_first_design_and_config_yaml_is_the_plans():
    import yaml
    from pathlib import Path

    from cortexflow.data.simulate import SimulationConfig
    from cortexflow.data.stimuli import TEST_SHARES, TRAIN_SHARES

    default = SimulationConfig()
    assert tuple(default.image_photos) == LEGACY_DESIGN["photos"] and default.image_test == 150
    assert tuple(default.image_test_photos) == LEGACY_DESIGN["test_photos"]
    assert dict(default.image_train_shares) == LEGACY_DESIGN["train_shares"] == dict(default.image_test_shares)
    assert default.image_categories == IMAGE_CATEGORIES
    # the default study (config.yaml) is the study of docs/analysis-plan.md
    path = Path(__file__).resolve().parents[1] / "config.yaml"
    plan = yaml.safe_load(path.read_text())
    cfg = SimulationConfig.from_params(plan["simulate"])
    assert set(cfg.image_photos) == set(PHOTOS) and tuple(cfg.image_test_photos) == TEST_PHOTOS
    assert dict(cfg.image_train_shares) == TRAIN_SHARES and dict(cfg.image_test_shares) == TEST_SHARES
    assert cfg.image_test == 300 and cfg.image_categories == IMAGE_CATEGORIES + (DEADLEAVES,)
    assert plan["baseline"] == {"nn_k": "auto", "nn_source": "auto"} and plan["evaluation"]["resample_by"] == "unit"
