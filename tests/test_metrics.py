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
    CharNgramConfig, HOGFeatures, _alexnet_trunk, char_ngram_features, load_alexnet_features,
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


# -------------------------------------------------------- feature extractors


def test_hog_cells_follow_the_image_size():
    # default: a 4 x 4 grid of cells -> 3 x 3 blocks of 2 x 2 cells x 9 orientations
    for side in (8, 16, 32):
        assert HOGFeatures()(np.random.default_rng(0).random((2, 1, side, side))).shape == (2, 324)
    assert HOGFeatures(pixels_per_cell=(8, 8))(np.zeros((2, 1, 16, 16))).shape == (2, 36)
    with pytest.raises(CortexflowInputError):
        HOGFeatures(pixels_per_cell=(8, 8))(np.zeros((2, 1, 8, 8)))


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
