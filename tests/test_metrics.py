"""The field's metrics on cases whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity

from cortexflow.errors import CortexflowInputError
from cortexflow.evaluation import metrics as M
from cortexflow.evaluation.features import (
    CharNgramConfig, HOGFeatures, RandomConvFeatures, _alexnet_trunk, char_ngram_features, load_alexnet_features,
    load_torchscript_features, make_image_features, normalize_text, to_grayscale)


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    x = rng.random((12, 3, 16, 16))
    # smooth a little so SSIM is not dominated by pixel noise
    return (x + np.roll(x, 1, axis=2) + np.roll(x, 1, axis=3)) / 3


# ----------------------------------------------------------------- image


def test_identical_images_score_perfectly(images):
    assert np.allclose(M.pixcorr(images, images), 1.0)
    assert np.allclose(M.ssim(images, images), 1.0)
    assert np.all(M.two_way_identification(M.correlation_matrix(images, images)) == 1.0)
    feats = HOGFeatures()(images)
    assert np.all(M.two_way_identification(M.correlation_matrix(feats, feats)) == 1.0)


def test_pixcorr_is_pearson_and_invariant_to_affine_maps(images):
    assert np.allclose(M.pixcorr(2 * images + 1, images), 1.0)
    assert np.allclose(M.pixcorr(1 - images, images), -1.0)
    a, b = images[0].ravel(), images[1].ravel()
    assert M.pixcorr(images[:1], images[1:2])[0] == pytest.approx(np.corrcoef(a, b)[0, 1])


def test_ssim_matches_skimage_on_grayscale_with_mindeye_settings(images):
    recon = np.clip(images + np.random.default_rng(1).normal(0, 0.1, images.shape), 0, 1)
    ours = M.ssim(recon, images)
    for j in range(3):
        gray_r = rgb2gray(np.transpose(recon[j], (1, 2, 0)))
        gray_t = rgb2gray(np.transpose(images[j], (1, 2, 0)))
        ref = structural_similarity(gray_r, gray_t, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1.0)
        assert ours[j] == pytest.approx(ref, abs=1e-12)
    assert np.allclose(to_grayscale(images)[0], rgb2gray(np.transpose(images[0], (1, 2, 0))))


def test_ssim_of_flat_images_is_the_luminance_term():
    # No variance: SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1), C1 = (0.01 * data_range)^2
    a = np.full((1, 1, 16, 16), 0.2)
    b = np.full((1, 1, 16, 16), 0.6)
    c1 = 1e-4
    expected = (2 * 0.2 * 0.6 + c1) / (0.2 ** 2 + 0.6 ** 2 + c1)
    assert M.ssim(a, b)[0] == pytest.approx(expected, rel=1e-9)


def test_two_way_identification_hand_case_and_ties():
    corr = np.array([[0.9, 0.1, 0.5],
                     [0.2, 0.3, 0.4],
                     [0.0, 0.0, 0.0]])
    assert M.two_way_identification(corr).tolist() == [1.0, 0.5, 0.5]
    # order names the true column of each row
    assert M.two_way_identification(corr, order=np.array([1, 2, 0])).tolist() == [0.0, 1.0, 0.5]


def test_two_way_identification_matches_mindeye_formula():
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(30, 50))
    pred = truth + rng.normal(scale=2.0, size=truth.shape)
    ours = M.two_way_identification(M.correlation_matrix(pred, truth))
    # MindEye utils.two_way_identification: r = corrcoef(real, pred)[:N, N:]; success = r < diag(r)
    r = np.corrcoef(truth, pred)[:30, 30:]
    mindeye = (r < np.diag(r)).sum(0) / 29
    assert np.allclose(ours, mindeye)
    assert 0.6 < ours.mean() < 1.0


def test_shuffled_pairing_gives_chance_two_way_identification():
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(200, 64))
    pred = truth + rng.normal(scale=0.5, size=truth.shape)
    corr = M.correlation_matrix(pred, truth)
    assert M.two_way_identification(corr).mean() > 0.99
    shuffled = np.mean([M.two_way_identification(corr, M.derangement(200, rng)).mean() for _ in range(5)])
    assert shuffled == pytest.approx(0.5, abs=0.03)


def test_derangement_has_no_fixed_point():
    rng = np.random.default_rng(4)
    for n in (2, 3, 10):
        perm = M.derangement(n, rng)
        assert sorted(perm) == list(range(n)) and not np.any(perm == np.arange(n))
    with pytest.raises(CortexflowInputError):
        M.derangement(1, rng)


def test_constant_reconstruction_has_zero_correlation_not_nan(images):
    flat = np.full_like(images, 0.5)
    assert np.all(M.pixcorr(flat, images) == 0.0)
    assert np.allclose(M.two_way_identification(M.correlation_matrix(flat, images)), 0.5)


# ----------------------------------------------------------------- audio


def test_mel_metrics():
    rng = np.random.default_rng(5)
    mel = rng.normal(size=(6, 8, 20))
    assert np.allclose(M.mel_correlation(mel, mel), 1.0)
    assert np.allclose(M.log_spectral_distance(mel, mel), 0.0)
    # a constant offset of c natural-log magnitude units is |c| * 20 / ln 10 dB in every bin and frame
    assert np.allclose(M.log_spectral_distance(mel + 0.5, mel), 0.5 * 20 / math.log(10))
    assert np.allclose(M.log_spectral_distance(mel - 2.0, mel, db_per_unit=1.0), 2.0)


# ------------------------------------------------------------------ text


def test_character_and_word_error_rates_on_known_strings():
    assert M.edit_distance("sitting", "kitten") == 3
    assert M.character_error_rate(["sitting"], ["kitten"]).tolist() == [0.5]
    assert M.character_error_rate(["The cat."], ["the cat"]).tolist() == [0.0]  # normalised
    assert M.character_error_rate(["The cat."], ["the cat"], normalize=False)[0] == pytest.approx(2 / 7)
    wer = M.word_error_rate(["the cat sit on mat"], ["the cat sat on the mat"])
    assert wer[0] == pytest.approx(2 / 6)  # one substitution, one deletion
    assert M.word_error_rate(["a b c"], [""]).tolist() == [1.0]


def test_bleu_on_known_pairs():
    ref = "the cat sat on the mat"
    # p1 = 5/6; smoothed p2 = 4/6, p3 = 3/5, p4 = 2/4; equal lengths, no brevity penalty
    assert M.bleu(["the cat sat on a mat"], [ref])[0] == pytest.approx((5 / 6 * 4 / 6 * 3 / 5 * 2 / 4) ** 0.25)
    assert M.bleu([ref], [ref])[0] == pytest.approx(1.0)
    assert M.bleu(["dogs run fast"], [ref])[0] == 0.0
    # all precisions 1 but 2 words for 6: brevity penalty exp(1 - 6/2)
    assert M.bleu(["the cat"], [ref])[0] == pytest.approx(math.exp(-2.0))


def test_normalize_text():
    assert normalize_text("  Hello,   WORLD! Café ") == "hello world cafe"


def test_char_ngram_features_are_deterministic_unit_vectors():
    texts = ["the cat sat", "the cat sat", "a dog ran far away", ""]
    f = char_ngram_features(texts)
    assert f.shape == (4, 2048)
    assert np.allclose(np.linalg.norm(f[:3], axis=1), 1.0) and not f[3].any()
    assert np.array_equal(f[0], f[1])
    assert f[0] @ char_ngram_features(["the cat sat down"])[0] > f[0] @ f[2]
    # " the " has 4 bigrams (" t", "th", "he", "e ") and 3 trigrams (" th", "the", "he ")
    one = char_ngram_features(["the"], CharNgramConfig(n_features=1 << 20))[0]
    assert np.count_nonzero(one) == 7


def _features_as_first_written(texts, config):
    """char_ngram_features as it was first written (one float32 += per n-gram, text normalised by
    NFKD + combining-mark filter + two regex passes on every string): the reference the memoised,
    counted version must equal bit for bit, or the text baseline's decodes and the summaries move."""
    import re
    import unicodedata
    import zlib

    def normalize(text):
        text = unicodedata.normalize("NFKD", str(text))
        text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
        return re.sub(r"\s+", " ", re.sub(r"[^\w\s']", " ", text)).strip()

    lo, hi = config.ngram_range
    out = np.zeros((len(texts), config.n_features), dtype=np.float32)
    for row, text in enumerate(texts):
        s = normalize(text) if config.normalize else str(text)
        if not s:
            continue
        s = f" {s} "
        for n in range(lo, hi + 1):
            for i in range(len(s) - n + 1):
                out[row, zlib.crc32(s[i:i + n].encode("utf-8")) % config.n_features] += 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out, [normalize(t) for t in texts]


def test_char_ngram_features_equal_the_first_implementation_bit_for_bit():
    rng = np.random.default_rng(0)
    alphabet = list("abcdeé ,.'!?-\tXYZ") + ["\u0301", "ß", "İ", "ﬁ", "²", "日"]
    texts = ["".join(rng.choice(alphabet, size=rng.integers(0, 60))) for _ in range(300)]
    texts += ["", "   ", "Café au lait.", "a" * 500, "the the the the", "a", "ab", "!"]  # shorter than 6 padded
    for config in (CharNgramConfig(), CharNgramConfig(ngram_range=(1, 6), n_features=97),
                   CharNgramConfig(normalize=False, n_features=4096)):
        expected, normalized = _features_as_first_written(texts, config)
        got = char_ngram_features(texts, config)
        assert got.dtype == np.float32 and np.array_equal(got, expected), config
        # a second call hits the memos of n-gram buckets and of texts: still the same
        assert np.array_equal(char_ngram_features(np.array(texts, dtype=object), config), expected)
        # a batch of remembered and new texts, in another order, one row or many
        order = rng.permutation(len(texts))[:40]
        mixed = [texts[i] for i in order] + ["never seen before", "ab"]
        assert np.array_equal(char_ngram_features(mixed, config), _features_as_first_written(mixed, config)[0])
        assert np.array_equal(char_ngram_features(texts[5:6], config), expected[5:6])
    assert [normalize_text(t) for t in texts] == normalized
    assert char_ngram_features([], CharNgramConfig()).shape == (0, 2048)


# -------------------------------------------------------- feature extractors


def test_hog_cells_follow_the_image_size():
    # default: a 4 x 4 grid of cells -> 3 x 3 blocks of 2 x 2 cells x 9 orientations
    for side in (8, 16, 32):
        assert HOGFeatures()(np.random.default_rng(0).random((2, 1, side, side))).shape == (2, 324)
    assert HOGFeatures(pixels_per_cell=(8, 8))(np.zeros((2, 1, 16, 16))).shape == (2, 36)
    with pytest.raises(CortexflowInputError):
        HOGFeatures(pixels_per_cell=(8, 8))(np.zeros((2, 1, 8, 8)))


@pytest.fixture(scope="module")
def photos():
    """48 grey-scale 32 x 32 crops of real photographs, faces and digits (the simulator's stimuli)."""
    from cortexflow.data.stimuli import make_image_set

    return make_image_set(48, 0, 32, np.random.default_rng(0)).images[:, None].astype(np.float64)


def test_randconv_is_the_default_and_deterministic_whatever_the_batch(photos):
    extractor = make_image_features()
    assert isinstance(extractor, RandomConvFeatures) and extractor.name == "randconv"
    feats = extractor(photos)
    # stages 2 and 3 of a 32-64-128 net on 32 px: 64 x 8 x 8 + 128 x 4 x 4 values
    assert feats.shape == (48, 64 * 64 + 128 * 16) and np.isfinite(feats).all()
    assert np.array_equal(feats, make_image_features({"kind": "randconv"})(photos))  # same weights every time
    one_by_one = np.concatenate([extractor(photos[i:i + 1]) for i in range(len(photos))])
    assert np.allclose(feats, one_by_one, rtol=0, atol=1e-6)  # no dependence on the batch
    assert np.allclose(feats, extractor(photos, batch_size=7), rtol=0, atol=1e-6)
    # RGB goes through rgb2gray weights, so a grey image replicated to 3 channels gives the same features
    assert np.allclose(feats[:4], extractor(np.repeat(photos[:4], 3, axis=1)), atol=1e-6)
    other = make_image_features({"kind": "randconv", "seed": 1})(photos)
    assert not np.allclose(feats, other)  # the seed sets the weights
    with pytest.raises(CortexflowInputError):
        make_image_features({"kind": "randconv", "layers": [4]})
    with pytest.raises(CortexflowInputError):
        make_image_features({"kind": "randconv", "weights": "x.pt"})


def test_randconv_identifies_images_and_shuffles_give_chance(photos):
    feats = make_image_features()(photos)
    corr = M.correlation_matrix(feats, feats)
    order = np.arange(len(photos))
    assert M.two_way_identification(corr, order).mean() == 1.0  # identical images are always identified
    rng = np.random.default_rng(0)
    shuffled = np.mean([M.two_way_identification(corr, rng.permutation(len(photos))).mean() for _ in range(20)])
    assert abs(shuffled - 0.5) < 0.05
    # a mildly degraded copy (blur + noise) is still identified well above chance, and better than a
    # heavily degraded one: the space measures similarity, it is not a hash
    from scipy.ndimage import gaussian_filter

    def degrade(sigma, noise):
        x = gaussian_filter(photos, sigma=(0, 0, sigma, sigma)) + noise * rng.standard_normal(photos.shape)
        return np.clip(x, 0, 1)
    mild_corr = M.correlation_matrix(make_image_features()(degrade(1.0, 0.05)), feats)
    heavy_corr = M.correlation_matrix(make_image_features()(degrade(3.0, 0.4)), feats)
    assert M.two_way_identification(mild_corr, order).mean() > 0.9
    assert np.diag(mild_corr).mean() > np.diag(heavy_corr).mean() + 0.05


def test_alexnet_state_dict_loads_in_torchvision_layout(tmp_path, images):
    torch.manual_seed(0)
    trunk = _alexnet_trunk()
    state = {f"features.{k}": v for k, v in trunk.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(3, 3)  # torchvision's head is ignored
    path = tmp_path / "alexnet.pth"
    torch.save(state, path)
    extractor = make_image_features({"kind": "alexnet", "weights": str(path), "layer": 4, "input_size": 64})
    feats = extractor(images[:2])
    x = torch.nn.functional.interpolate(torch.as_tensor(images[:2], dtype=torch.float32), size=(64, 64),
                                        mode="bilinear", align_corners=False, antialias=True)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        expected = trunk[:5](x).flatten(1).numpy()
    assert extractor.name == "alexnet4"
    assert np.allclose(feats, expected, atol=1e-5)
    with pytest.raises(CortexflowInputError):
        load_alexnet_features(path, layer=3)
    with pytest.raises(CortexflowInputError):
        load_alexnet_features(tmp_path / "missing.pth")


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch 2.14 deprecates TorchScript; it still works
def test_torchscript_features(tmp_path, images):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2))
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    feats = load_torchscript_features(path, input_size=16)(images[:3])
    assert feats.shape == (3, 16)
    assert np.allclose(feats, make_image_features({"kind": "torchscript", "weights": str(path),
                                                   "input_size": 16})(images[:3]))
    with pytest.raises(CortexflowInputError):
        make_image_features({"kind": "torchscript"})
    with pytest.raises(CortexflowInputError):
        make_image_features({"kind": "clip"})
    with pytest.raises(CortexflowInputError, match="layer"):
        make_image_features({"kind": "hog", "layer": 4})
