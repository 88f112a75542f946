"""Fixed feature extractors for two-way identification and the text baseline.

Two-way identification (MindEye, Scotti et al. 2023; Brain-Diffuser, Ozcelik &
VanRullen 2023) compares a reconstruction with every test stimulus in the space
of some feature extractor. The extractor must not be one of this pipeline's
trained models, or the metric would reward the decoder for matching its own
autoencoder's biases. Nor may it be close to the simulated study's own
encoding model, or a linear readout of the voxels would score it well for free.
Four are provided:

- ``randconv`` (default, the ``two_way_id_feature`` metric): a fixed
  random-weight convolutional network (three 3x3 conv + ReLU + average-pool
  stages, He-initialised from a fixed seed, never trained), features of its
  second and third stages, each unit-normalised across channels at every
  position as LPIPS does. Untrained deep networks are a known perceptual
  similarity baseline (Zhang et al. 2018, "The unreasonable effectiveness of
  deep features as a perceptual metric", evaluate randomly initialised
  networks beside trained ones). A brief search of the package index found no
  light package that ships pretrained image-network weights inside it, and
  nothing may download at run time; with local weights, ``alexnet`` or
  ``torchscript`` (below) are the choice for real data. It is not an oriented-energy model: its
  filters are random, not tuned Gabors, and its deeper stages combine them
  non-linearly over space. Because the simulated early visual cortex encodes
  Gabor energy, HOG is close to what the voxels carry (a ridge from the ROI
  voxels straight to HOG identifies held-out images far better than one to
  these features; docs/simulator.md, "How hard the default study is"), so it is no longer
  the default.
- ``hog``: scikit-image's histogram of oriented gradients on the grayscale
  image, reported as the extra row ``two_way_id_hog``. Generous on the
  simulated study: HOG is an oriented-gradient energy, the kind of feature the
  simulator's early visual voxels are built from.
- ``alexnet``: the convolutional trunk of AlexNet (Krizhevsky et al. 2012), the
  network MindEye reports as "AlexNet(2)" and "AlexNet(5)". Its layers are
  indexed exactly as ``torchvision.models.alexnet().features``, so the
  state_dict that torchvision distributes (``alexnet-owt-7be5be79.pth``) loads as
  it is from a local file: ``{kind: alexnet, weights: /path/alexnet.pth,
  layer: 11}``. torchvision itself is not needed.
- ``torchscript``: any TorchScript module saved with ``torch.jit.save`` that maps
  a normalised (B, 3, S, S) batch to features: ``{kind: torchscript, weights:
  /path/model.pt}``.

Nothing is ever downloaded; a missing weights file is an input error.

The text features (hashed character n-grams) serve both the text two-way
identification and the ridge baseline's target space (``ridge.py``), so the
two use one definition.
"""

from __future__ import annotations

import logging
import re
import unicodedata
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from cortexflow.errors import CortexflowInputError
from cortexflow.sections import from_mapping

log = logging.getLogger("cortexflow.evaluation.features")

# ImageNet statistics that AlexNet-style networks were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's AlexNet.features: output index after each ReLU/pool. MindEye's
# AlexNet(2) is the output of index 4 and AlexNet(5) that of index 11.
ALEXNET_LAYERS = (1, 2, 4, 5, 7, 9, 11, 12)


# --------------------------------------------------------------------------- text


_NOT_WORD = re.compile(r"[^\w\s']")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower-case, strip accents' combining marks and punctuation, collapse spaces.

    Applied to both reference and hypothesis before CER/WER/BLEU, as speech and
    semantic-decoding evaluations do (Tang et al. 2023), so a decoder is not
    charged for capitalisation or a missing full stop.
    """
    text = str(text)
    if not text.isascii():  # NFKD leaves ASCII as it is, and ASCII has no combining marks
        text = unicodedata.normalize("NFKD", text)
        text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return _SPACES.sub(" ", _NOT_WORD.sub(" ", text.lower())).strip()


# n-gram -> hash bucket, per feature width: the text baseline's beam search hashes the same few
# thousand n-grams millions of times (cortexflow.models.baselines.conditioned_decode)
_NGRAM_BUCKETS: dict[int, dict[str, int]] = {}
# text -> its n-grams' buckets, per feature config: the beam search also scores the same prefixes
# over and over (each guidance weight, each beam); the rows it builds from them are the same bits
_TEXT_BUCKETS: dict[tuple, dict[str, np.ndarray]] = {}
_TEXT_MEMO_SIZE = 200_000


@dataclass(frozen=True)
class CharNgramConfig:
    """Hashed character n-gram features (the "hashing trick", Weinberger et al. 2009).

    ``ngram_range`` is inclusive. Hashing uses CRC-32, which, unlike Python's
    ``hash``, is the same in every process, so features are reproducible.
    """

    ngram_range: tuple[int, int] = (2, 3)
    n_features: int = 2048
    normalize: bool = True

    @classmethod
    def from_params(cls, params: dict | None, key: str = "text_features") -> "CharNgramConfig":
        """From a config mapping ``{ngram_range: [2, 3], n_features: 2048, normalize: true}``."""
        return from_mapping(cls, params, key)


def _ngrams(s: str, n: int):
    """The n-grams of ``s`` in order, ``s[i:i + n]`` for each i, concatenated by C-level ``map``s
    (several times faster than slicing in a Python loop)."""
    last = len(s) - n + 1
    if last <= 0:  # shorter than n: none (s[:last] would count from the end)
        return ()
    grams = s[:last]
    for k in range(1, n):
        grams = map(str.__add__, grams, s[k:k + last])
    return grams


def _bucket_ids(text: str, lo: int, hi: int, width: int, normalize: bool) -> np.ndarray:
    """The hash bucket of each of ``text``'s character n-grams (lo..hi), as int32."""
    s = normalize_text(text) if normalize else text
    if not s:
        return np.zeros(0, dtype=np.int32)
    s = f" {s} "
    buckets = _NGRAM_BUCKETS.setdefault(width, {})
    if len(buckets) > 1_000_000:  # bounded: a long run over many distinct n-grams starts the memo afresh
        buckets.clear()
    grams: list[str] = []
    for n in range(lo, hi + 1):
        grams.extend(_ngrams(s, n))
    for gram in set(grams).difference(buckets):
        buckets[gram] = zlib.crc32(gram.encode("utf-8")) % width
    return np.fromiter(map(buckets.__getitem__, grams), dtype=np.int32, count=len(grams))


def char_ngram_features(texts: list[str] | np.ndarray, config: CharNgramConfig = CharNgramConfig()) -> np.ndarray:
    """(N, n_features) float32 term frequencies, each row L2-normalised.

    Each sentence is padded with one space on both sides so word boundaries
    give n-grams of their own. An empty sentence gives a zero row.
    """
    lo, hi = config.ngram_range
    if not 1 <= lo <= hi:
        raise CortexflowInputError(f"ngram_range must be 1 <= min <= max, got {config.ngram_range}",
                                   fix="set e.g. ngram_range: [2, 3]")
    width = config.n_features
    memo = _TEXT_BUCKETS.setdefault((lo, hi, width, config.normalize), {})
    if len(memo) > _TEXT_MEMO_SIZE:  # bounded, as _NGRAM_BUCKETS is
        memo.clear()
    rows = []
    for text in texts:
        key = str(text)
        ids = memo.get(key)
        if ids is None:
            ids = memo[key] = _bucket_ids(key, lo, hi, width, config.normalize)
        rows.append(ids)
    counts = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))  # n-grams per text
    flat = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, dtype=np.int64)
    flat += np.repeat(np.arange(len(texts), dtype=np.int64) * width, counts)
    # integer counts, exactly what adding 1.0 per n-gram gives in float32 (counts stay far below 2**24)
    out = np.bincount(flat, minlength=len(texts) * width)
    out = out.astype(np.float32).reshape(len(texts), width)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


# -------------------------------------------------------------------------- images


def to_grayscale(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> (N, H, W), with scikit-image's ``rgb2gray`` weights.

    MindEye computes SSIM on ``rgb2gray`` images; the weights (ITU-R BT.709:
    0.2125, 0.7154, 0.0721) are those of ``skimage.color.rgb2gray``.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise CortexflowInputError(f"expected images shaped (N, C, H, W) with C in (1, 3), got {images.shape}")
    if images.shape[1] == 1:
        return images[:, 0].astype(np.float64)
    weights = np.array([0.2125, 0.7154, 0.0721])
    return np.einsum("nchw,c->nhw", images.astype(np.float64), weights)


class ImageFeatureExtractor(Protocol):
    name: str

    def __call__(self, images: np.ndarray) -> np.ndarray:  # (N, C, H, W) in [0, 1] -> (N, D)
        ...


@dataclass
class HOGFeatures:
    """Histogram of oriented gradients (Dalal & Triggs 2005) of the grayscale image.

    A fixed, training-free descriptor of local edge structure: it ignores the
    phase-free blur that a posterior-mean reconstruction has, and rewards
    getting edges in the right place. ``pixels_per_cell=None`` (the default)
    lays a 4 x 4 grid of cells over the image whatever its size (8 x 8 pixels
    per cell at 32 x 32), so the descriptor means the same at every resolution.
    """

    orientations: int = 9
    pixels_per_cell: tuple[int, int] | None = None
    cells_per_block: tuple[int, int] = (2, 2)
    name: str = field(default="hog", init=False)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        from skimage.feature import hog

        gray = to_grayscale(images)
        h, w = gray.shape[1:]
        cell = tuple(self.pixels_per_cell) if self.pixels_per_cell is not None else (max(1, h // 4), max(1, w // 4))
        need = (cell[0] * self.cells_per_block[0], cell[1] * self.cells_per_block[1])
        if h < need[0] or w < need[1]:
            raise CortexflowInputError(
                f"images of {h}x{w} pixels are smaller than one HOG block ({need[0]}x{need[1]})",
                fix="lower evaluation.image_features.pixels_per_cell")
        return np.stack([
            hog(g, orientations=self.orientations, pixels_per_cell=cell,
                cells_per_block=tuple(self.cells_per_block), block_norm="L2-Hys", feature_vector=True)
            for g in gray
        ]).astype(np.float32)


@dataclass
class RandomConvFeatures:
    """A fixed random-weight convolutional network (the default independent feature space).

    The grayscale image is resized to ``input_size`` (bilinear, antialiased),
    centred (``(x - 0.5) / 0.25``) and passed through ``len(channels)`` stages
    of 3x3 convolution (reflect padding, no bias), ReLU and 2x2 average
    pooling. Weights are drawn once from ``numpy.random.default_rng(seed)``
    with He scaling (std sqrt(2 / fan_in)), so they are the same on every
    machine and torch version. The outputs of the stages in ``layers``
    (1-based) are unit-normalised across channels at every position (LPIPS,
    Zhang et al. 2018), divided by the root of their number of positions so
    each stage weighs the same, flattened and concatenated. Computed in
    float64, so an image's features do not depend on the batch it is in.
    """

    channels: tuple[int, ...] = (32, 64, 128)
    layers: tuple[int, ...] = (2, 3)
    input_size: int = 32
    seed: int = 0
    name: str = field(default="randconv", init=False)

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.layers = tuple(int(x) for x in self.layers)
        if not self.channels or min(self.channels) < 1:
            raise CortexflowInputError(f"randconv channels must be positive integers, got {self.channels}",
                                       fix="set evaluation.image_features.channels, e.g. [32, 64, 128]")
        if not self.layers or not all(1 <= x <= len(self.channels) for x in self.layers):
            raise CortexflowInputError(f"randconv layers must lie in 1..{len(self.channels)}, got {self.layers}",
                                       fix="set evaluation.image_features.layers, e.g. [2, 3]")
        if self.input_size < 2 ** len(self.channels):
            raise CortexflowInputError(f"randconv input_size {self.input_size} is too small for "
                                       f"{len(self.channels)} pooling stages",
                                       fix=f"use input_size >= {2 ** len(self.channels)}")
        rng = np.random.default_rng(self.seed)
        self._weights = []
        fan_in = 1
        for c in self.channels:
            self._weights.append(rng.standard_normal((c, fan_in, 3, 3)) * np.sqrt(2.0 / (9 * fan_in)))
            fan_in = c

    def __call__(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        gray = to_grayscale(np.asarray(images))
        weights = [torch.as_tensor(w, dtype=torch.float64) for w in self._weights]
        out = []
        with torch.no_grad():
            for start in range(0, len(gray), batch_size):
                x = torch.as_tensor(gray[start:start + batch_size], dtype=torch.float64)[:, None]
                if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
                    x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                                      align_corners=False, antialias=True)
                x = (x - 0.5) / 0.25
                parts = []
                for stage, w in enumerate(weights, start=1):
                    x = F.avg_pool2d(torch.relu(F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), w)), 2)
                    if stage in self.layers:
                        unit = x / (x.norm(dim=1, keepdim=True) + 1e-10)
                        parts.append(unit.flatten(1) / np.sqrt(x.shape[-1] * x.shape[-2]))
                out.append(torch.cat(parts, 1).numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def _alexnet_trunk():
    """AlexNet's convolutional trunk, laid out as ``torchvision.models.alexnet().features``."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


class TorchFeatures:
    """Features of a pretrained network read from a local file.

    Images are resized to ``input_size`` (bilinear, antialiased), grayscale is
    replicated to three channels, and ImageNet normalisation is applied, as the
    network was trained with. Features are the flattened output.
    """

    def __init__(self, module, *, name: str, input_size: int = 224, batch_size: int = 32):
        self.module = module.eval()
        self.name = name
        self.input_size = int(input_size)
        self.batch_size = int(batch_size)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        out = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                x = torch.as_tensor(np.asarray(images[start:start + self.batch_size], dtype=np.float32))
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)
                x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                                  align_corners=False, antialias=True)
                out.append(self.module((x - mean) / std).flatten(1).float().numpy())
        return np.concatenate(out)


def load_alexnet_features(weights: str | Path, layer: int = 11, input_size: int = 224) -> TorchFeatures:
    """AlexNet features up to and including ``features[layer]`` from a local state_dict.

    Accepts torchvision's full AlexNet state_dict (``features.*`` keys are used,
    ``classifier.*`` ignored) or one of the trunk alone (keys ``0.weight``...).
    """
    import torch

    path = Path(weights)
    if not path.is_file():
        raise CortexflowInputError("AlexNet weights file not found", path=path,
                                   fix="point evaluation.image_features.weights at a local torchvision AlexNet "
                                       "state_dict, or use kind: hog")
    if layer not in ALEXNET_LAYERS:
        raise CortexflowInputError(f"AlexNet layer {layer} is not a ReLU or pooling output",
                                   fix=f"choose one of {list(ALEXNET_LAYERS)} (MindEye uses 4 and 11)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if any(k.startswith("features.") for k in state):
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    trunk = _alexnet_trunk()
    try:
        trunk.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CortexflowInputError(f"not an AlexNet state_dict ({str(e).splitlines()[0]})", path=path,
                                   fix="use torchvision's alexnet weights (alexnet-owt-7be5be79.pth)") from None
    log.info("image features: AlexNet layer %d from %s", layer, path)
    return TorchFeatures(trunk[: layer + 1], name=f"alexnet{layer}", input_size=input_size)


def load_torchscript_features(weights: str | Path, input_size: int = 224) -> TorchFeatures:
    """Any TorchScript feature network saved with ``torch.jit.save``."""
    import torch

    path = Path(weights)
    if not path.is_file():
        raise CortexflowInputError("TorchScript feature network not found", path=path,
                                   fix="point evaluation.image_features.weights at a file saved with torch.jit.save")
    try:
        with warnings.catch_warnings():  # recent torch marks TorchScript deprecated; loading still works
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as e:
        raise CortexflowInputError(f"not a TorchScript file ({str(e).splitlines()[0]})", path=path,
                                   fix="save the network with torch.jit.save(torch.jit.script(model), path)") from None
    log.info("image features: TorchScript network %s", path)
    return TorchFeatures(module, name=f"torchscript:{path.stem}", input_size=input_size)


def make_image_features(spec: dict | None = None) -> ImageFeatureExtractor:
    """Build the extractor described by ``evaluation.image_features``.

    ``{kind: randconv, channels=[32, 64, 128], layers=[2, 3], input_size=32,
    seed=0}`` (default),
    ``{kind: hog, orientations=9, pixels_per_cell=None (a 4 x 4 grid),
    cells_per_block=[2, 2]}``,
    ``{kind: alexnet, weights, layer=11, input_size=224}`` or
    ``{kind: torchscript, weights, input_size=224}``.
    """
    spec = dict(spec or {})
    kind = spec.pop("kind", "randconv")
    allowed = {"randconv": {"channels", "layers", "input_size", "seed"},
               "hog": {"orientations", "pixels_per_cell", "cells_per_block"},
               "alexnet": {"weights", "layer", "input_size"}, "torchscript": {"weights", "input_size"}}
    if kind in allowed and set(spec) - allowed[kind]:
        raise CortexflowInputError(f"unknown image_features parameters {sorted(set(spec) - allowed[kind])} "
                                   f"for kind '{kind}'", fix=f"use {sorted(allowed[kind])}")
    if kind == "randconv":
        return RandomConvFeatures(channels=tuple(spec.get("channels", (32, 64, 128))),
                                  layers=tuple(spec.get("layers", (2, 3))),
                                  input_size=int(spec.get("input_size", 32)), seed=int(spec.get("seed", 0)))
    if kind == "hog":
        cell = spec.get("pixels_per_cell")
        return HOGFeatures(orientations=int(spec.get("orientations", 9)),
                           pixels_per_cell=None if cell is None else (int(cell[0]), int(cell[1])),
                           cells_per_block=tuple(spec.get("cells_per_block", (2, 2))))
    if kind in ("alexnet", "torchscript"):
        if not spec.get("weights"):
            raise CortexflowInputError(f"image_features kind '{kind}' needs a local weights file",
                                       fix="set evaluation.image_features.weights, or use kind: randconv")
        if kind == "alexnet":
            return load_alexnet_features(spec["weights"], int(spec.get("layer", 11)), int(spec.get("input_size", 224)))
        return load_torchscript_features(spec["weights"], int(spec.get("input_size", 224)))
    raise CortexflowInputError(f"unknown image feature extractor '{kind}'", fix="use randconv, hog, alexnet or torchscript")
