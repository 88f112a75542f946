"""Image stimuli from the photos that ship with scikit-image and scikit-learn.

A set with real variety, not noise: crops of natural photographs (people,
animals, objects, scenes, textures, printed text), faces and non-face patches
from scikit-image's LFW subset, and handwritten digits from scikit-learn,
all grey-scale at one size. Test images come from source photos never used
for training (one held-out photo per photo category, ``TEST_PHOTOS``) and, for
faces, non-face patches and digits, from individual images never used for a
training image, so the two splits share no pixels and no source, as the
held-out images of NSD (Allen et al., 2022) share none with its training
images. Every category appears in both splits: no kind of stimulus is seen
only at test.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("cortexflow.data.stimuli")

def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()
    return load


def _skimage_first(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()[0]
    return load


def _sklearn_photo(index: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_images

        return load_sample_images().images[index]
    return load


# Photo name -> (loader, category). The loaders read files bundled in the wheels.
PHOTOS: dict[str, tuple[Callable[[], np.ndarray], str]] = {
    "astronaut": (_skimage("astronaut"), "person"),
    "camera": (_skimage("camera"), "person"),
    "chelsea": (_skimage("chelsea"), "animal"),
    "horse": (_skimage("horse"), "animal"),
    "coffee": (_skimage("coffee"), "object"),
    "rocket": (_skimage("rocket"), "object"),
    "clock": (_skimage("clock"), "object"),
    "coins": (_skimage("coins"), "object"),
    "flower": (_sklearn_photo(1), "object"),
    "motorcycle": (_skimage_first("stereo_motorcycle"), "object"),
    "china": (_sklearn_photo(0), "scene"),
    "moon": (_skimage("moon"), "scene"),
    "hubble_deep_field": (_skimage("hubble_deep_field"), "scene"),
    "retina": (_skimage("retina"), "scene"),
    "brick": (_skimage("brick"), "texture"),
    "grass": (_skimage("grass"), "texture"),
    "gravel": (_skimage("gravel"), "texture"),
    "immunohistochemistry": (_skimage("immunohistochemistry"), "texture"),
    "text": (_skimage("text"), "text"),
    "page": (_skimage("page"), "text"),
}
# Share of the image set drawn from each kind of source.
SOURCE_SHARES = {"lfw_face": 0.09, "lfw_nonface": 0.07, "digit": 0.2, "photo": 0.64}
IMAGE_CATEGORIES = ("face", "digit", "person", "animal", "object", "scene", "texture", "text")
# One source photo per photo category is held out: test crops are cut from these only,
# training crops from the others, so a test image never shares its source with a training one.
TEST_PHOTOS = ("camera", "horse", "clock", "moon", "gravel", "page")


@dataclass
class ImageSet:
    """Grey-scale images (N, H, W) float32 in [0, 1] with their labels."""

    images: np.ndarray
    category: list[str]
    source: list[str]
    split: list[str]

    def __len__(self) -> int:
        return len(self.images)


def _split_counts(n: int, shares: dict[str, float]) -> dict[str, int]:
    """Largest-remainder allocation of ``n`` items over ``shares``."""
    keys = list(shares)
    raw = np.array([shares[k] for k in keys], float)
    raw = raw / raw.sum() * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return dict(zip(keys, counts.tolist()))


def _to_gray(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.float64)
    elif a.dtype == np.uint8:
        a = a / 255.0
    if a.ndim == 3:
        a = a[..., :3] @ np.array([0.2125, 0.7154, 0.0721])  # ITU-R 709 luma, as skimage.rgb2gray
    return a.astype(np.float64)


def _resize(a: np.ndarray, size: int) -> np.ndarray:
    """Resample to ``size`` x ``size`` with a Lanczos kernel (anti-aliased when shrinking)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
    return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float64)


def _stretch(a: np.ndarray) -> np.ndarray:
    """Map the 1st-99th percentile to [0, 1] so low-contrast crops stay visible."""
    lo, hi = np.percentile(a, [1, 99])
    if hi - lo < 1e-6:
        return np.clip(a, 0, 1)
    return np.clip((a - lo) / (hi - lo), 0, 1)


def _photo_crops(photo: np.ndarray, n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    h, w = photo.shape
    out = []
    for _ in range(n):
        side = int(rng.uniform(0.15, 0.5) * min(h, w))
        side = max(size // 2, min(side, w, h))
        top = int(rng.integers(0, h - side + 1))
        left = int(rng.integers(0, w - side + 1))
        out.append(_stretch(_resize(photo[top: top + side, left: left + side], size)))
    return out


@functools.lru_cache(maxsize=1)
def _photos() -> dict[str, np.ndarray]:
    """Every photo in grey-scale (read once per process; callers only read them)."""
    return {name: _to_gray(loader()) for name, (loader, _) in PHOTOS.items()}


def make_image_set(n_train: int, n_test: int, size: int, rng: np.random.Generator) -> ImageSet:
    """``n_train`` + ``n_test`` grey-scale images with no source shared across splits."""
    from skimage.data import lfw_subset
    from sklearn.datasets import load_digits

    lfw = lfw_subset()  # 100 faces, then 100 non-face patches, 25 x 25
    pools = {"lfw_face": lfw[:100], "lfw_nonface": lfw[100:], "digit": load_digits().images / 16.0}
    images: list[np.ndarray] = []
    category: list[str] = []
    source: list[str] = []
    split: list[str] = []
    used = {k: rng.permutation(len(v)) for k, v in pools.items()}
    taken = {k: 0 for k in pools}
    photos = _photos()
    for part, n_part in (("test", n_test), ("train", n_train)):
        counts = _split_counts(n_part, SOURCE_SHARES)
        for kind in ("lfw_face", "lfw_nonface", "digit"):
            order = used[kind]
            take = order[taken[kind]: taken[kind] + counts[kind]]
            counts["photo"] += counts[kind] - len(take)  # a pool ran out: more photo crops instead
            taken[kind] += len(take)
            for idx in take:
                a = pools[kind][idx]
                images.append(_stretch(_resize(a, size)))
                category.append("face" if kind == "lfw_face" else "digit" if kind == "digit" else "scene")
                source.append(f"{kind}:{int(idx)}")
                split.append(part)
        names = [n for n in PHOTOS if (n in TEST_PHOTOS) == (part == "test")]
        per_photo = _split_counts(counts["photo"], {name: 1.0 for name in names})
        for name, k in per_photo.items():
            for crop in _photo_crops(photos[name], k, size, rng):
                images.append(crop)
                category.append(PHOTOS[name][1])
                source.append(f"photo:{name}")
                split.append(part)
    order = rng.permutation(len(images))  # ids must not reveal split or source
    return ImageSet(
        images=np.stack([images[i] for i in order]).astype(np.float32),
        category=[category[i] for i in order],
        source=[source[i] for i in order],
        split=[split[i] for i in order],
    )
