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

Each image belongs to a *family* (``digit``, ``face``, ``nonface``,
``deadleaves``, ``photo``) with its own *independent unit*: a digit, face,
non-face patch or dead-leaves image is an independent item; the crops of one
source photo are not independent of each other, so a photo crop's unit is its
source photo (``image_units``; docs/analysis-plan.md). The ``deadleaves``
family draws every image independently from a dead-leaves model, a
scale-invariant model of natural-image statistics (Lee, Mumford & Huang 2001).
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


def _matplotlib_photo(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import matplotlib.cbook
        import matplotlib.image

        return matplotlib.image.imread(matplotlib.cbook.get_sample_data(name))
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
    # the natural photos that came after the first study (docs/analysis-plan.md): every other
    # bundled image is synthetic, clip art or a duplicate (skimage's cat is chelsea)
    "grace_hopper": (_matplotlib_photo("grace_hopper.jpg"), "person"),
    "microaneurysms": (_skimage("microaneurysms"), "texture"),
    "cell": (_skimage("cell"), "texture"),
}
IMAGE_CATEGORIES = ("face", "digit", "person", "animal", "object", "scene", "texture", "text")
DEADLEAVES = "deadleaves"  # the category (and family) of dead-leaves images
# Held-out source photos: test crops are cut from these only, training crops from the others,
# so a test image never shares its source with a training one. Every photo category keeps at
# least one training photo. 12 of the 23 photos (docs/analysis-plan.md, section 2).
TEST_PHOTOS = ("camera", "grace_hopper", "horse", "clock", "coins", "rocket", "moon", "hubble_deep_field",
               "gravel", "brick", "microaneurysms", "page")
# Share of each split drawn from each kind of source; a pool that runs out is made up with photo crops.
TRAIN_SHARES = {"lfw_face": 0.09, "lfw_nonface": 0.07, "digit": 0.2, DEADLEAVES: 0.2, "photo": 0.44}
TEST_SHARES = {"lfw_face": 0.1, "lfw_nonface": 0.1, "digit": 0.2, DEADLEAVES: 0.2, "photo": 0.4}
# The first studies (up to commit 1b6a44d): 20 photos, one held out per category, no dead leaves,
# the same shares in both splits. ``make_image_set(..., **LEGACY_DESIGN)`` draws them bit for bit.
LEGACY_DESIGN = {
    "photos": tuple(list(PHOTOS)[:20]),
    "test_photos": ("camera", "horse", "clock", "moon", "gravel", "page"),
    "train_shares": {"lfw_face": 0.09, "lfw_nonface": 0.07, "digit": 0.2, "photo": 0.64},
    "test_shares": {"lfw_face": 0.09, "lfw_nonface": 0.07, "digit": 0.2, "photo": 0.64},
}
# Source kind (the part of ``source`` before the colon) -> family.
FAMILIES = {"digit": "digit", "lfw_face": "face", "lfw_nonface": "nonface", DEADLEAVES: DEADLEAVES, "photo": "photo"}


@dataclass
class ImageSet:
    """Grey-scale images (N, H, W) float32 in [0, 1] with their labels."""

    images: np.ndarray
    category: list[str]
    source: list[str]
    split: list[str]

    def __len__(self) -> int:
        return len(self.images)


def image_family(source: str) -> str | None:
    """The family of an image from its ``source`` (``photo:moon`` -> ``photo``); None if unknown."""
    return FAMILIES.get(str(source).split(":", 1)[0])


def image_units(items: list[str], sources: list[str | None]) -> tuple[list[str], list[str]]:
    """Each item's family and independent unit: a photo crop's unit is its source photo, every
    other item is its own unit. Items without a known source are their own unit (family ``item``)."""
    families, units = [], []
    for item, source in zip(items, sources):
        family = image_family(source) if isinstance(source, str) else None
        families.append(family or "item")
        units.append(str(source) if family == "photo" else str(item))
    return families, units


def dead_leaves(size: int, rng: np.random.Generator, *, r_min: float = 1.0, r_max: float | None = None,
                supersample: int = 2, max_discs: int = 8192, chunk: int = 128) -> np.ndarray:
    """One dead-leaves image: opaque discs of uniform grey fall on the image, the first on top.

    Radii follow p(r) ~ r^-3 between ``r_min`` and ``r_max`` pixels (default the image side),
    which makes the model scale-invariant with a power spectrum close to 1/f^2, as natural
    images have (Lee, Mumford & Huang 2001). Drawn ``supersample`` times larger and resampled
    down, so edges are anti-aliased. Discs are drawn ``chunk`` at a time until every pixel is
    covered; pixels still bare after ``max_discs`` (a vanishing share) take the mean grey.
    """
    n = size * supersample
    r_max = float(size if r_max is None else r_max)
    a, b = r_min ** -2.0, r_max ** -2.0
    centres = np.arange(n) + 0.5
    grey = np.full((n, n), np.nan)
    for _ in range(0, max_discs, chunk):
        r = (a - rng.random(chunk) * (a - b)) ** -0.5 * supersample  # inverse CDF of p(r) ~ r^-3
        cy, cx, level = rng.uniform(0, n, chunk), rng.uniform(0, n, chunk), rng.random(chunk)
        inside = ((centres[None, :, None] - cy[:, None, None]) ** 2
                  + (centres[None, None, :] - cx[:, None, None]) ** 2) <= (r * r)[:, None, None]
        first = inside.argmax(axis=0)  # the earliest disc of this chunk over each pixel lies on top
        fill = np.isnan(grey) & inside.any(axis=0)
        grey[fill] = level[first[fill]]
        if not np.isnan(grey).any():
            break
    grey[np.isnan(grey)] = 0.5
    return _resize(grey, size)


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


def check_image_design(photos: tuple[str, ...], test_photos: tuple[str, ...], shares: dict[str, dict[str, float]]) -> None:
    """Raise a CortexflowInputError naming the config keys if the image design cannot be drawn."""
    from cortexflow.errors import CortexflowInputError

    fix = "correct simulate.image_photos / image_test_photos / image_train_shares / image_test_shares"
    unknown = sorted(set(photos) - set(PHOTOS)) + sorted(set(test_photos) - set(photos))
    if unknown:
        raise CortexflowInputError(f"unknown or unused source photos {unknown} (known: {sorted(PHOTOS)})", fix=fix)
    for part, part_shares in shares.items():
        bad = sorted(set(part_shares) - set(FAMILIES))
        if bad or any(v < 0 for v in part_shares.values()) or sum(part_shares.values()) <= 0:
            raise CortexflowInputError(f"image {part} shares {part_shares} must be >= 0 over {sorted(FAMILIES)} "
                                       f"with a positive sum", fix=fix)
    for part, held_out in (("test", True), ("train", False)):
        if shares[part].get("photo", 0) > 0 and not [n for n in photos if (n in test_photos) == held_out]:
            raise CortexflowInputError(f"no source photo left for the {part} split", fix=fix)


@functools.lru_cache(maxsize=1)
def _photos() -> dict[str, np.ndarray]:
    """Every photo in grey-scale (read once per process; callers only read them)."""
    return {name: _to_gray(loader()) for name, (loader, _) in PHOTOS.items()}


def make_image_set(n_train: int, n_test: int, size: int, rng: np.random.Generator, *,
                   photos: tuple[str, ...] | None = None, test_photos: tuple[str, ...] = TEST_PHOTOS,
                   train_shares: dict[str, float] | None = None, test_shares: dict[str, float] | None = None,
                   deadleaves_rng: np.random.Generator | None = None) -> ImageSet:
    """``n_train`` + ``n_test`` grey-scale images with no source shared across splits.

    ``photos`` (default every photo of ``PHOTOS``) are the source photos in use, ``test_photos``
    the held-out ones among them; ``train_shares`` / ``test_shares`` the share of each kind of
    source per split (``TRAIN_SHARES``, ``TEST_SHARES``). Dead-leaves images are drawn from
    ``deadleaves_rng`` (a stream of their own, so a design without them draws every other image
    exactly as before), each from a seed of its own.
    """
    from skimage.data import lfw_subset
    from sklearn.datasets import load_digits

    lfw = lfw_subset()  # 100 faces, then 100 non-face patches, 25 x 25
    pools = {"lfw_face": lfw[:100], "lfw_nonface": lfw[100:], "digit": load_digits().images / 16.0}
    images: list[np.ndarray] = []
    category: list[str] = []
    source: list[str] = []
    split: list[str] = []
    photos = tuple(PHOTOS) if photos is None else tuple(photos)
    shares = {"train": dict(TRAIN_SHARES if train_shares is None else train_shares),
              "test": dict(TEST_SHARES if test_shares is None else test_shares)}
    check_image_design(photos, test_photos, shares)
    if any(part.get(DEADLEAVES, 0) > 0 for part in shares.values()) and deadleaves_rng is None:
        deadleaves_rng = np.random.default_rng([int(rng.integers(2 ** 32)), 0xDEAD])
    used = {k: rng.permutation(len(v)) for k, v in pools.items()}
    taken = {k: 0 for k in pools}
    photo_arrays = _photos()
    for part, n_part in (("test", n_test), ("train", n_train)):
        counts = _split_counts(n_part, shares[part])
        for kind in ("lfw_face", "lfw_nonface", "digit"):
            order = used[kind]
            take = order[taken[kind]: taken[kind] + counts.get(kind, 0)]
            counts["photo"] = counts.get("photo", 0) + counts.get(kind, 0) - len(take)  # a pool ran out: more photo crops instead
            taken[kind] += len(take)
            for idx in take:
                a = pools[kind][idx]
                images.append(_stretch(_resize(a, size)))
                category.append("face" if kind == "lfw_face" else "digit" if kind == "digit" else "scene")
                source.append(f"{kind}:{int(idx)}")
                split.append(part)
        names = [n for n in photos if (n in test_photos) == (part == "test")]
        per_photo = _split_counts(counts["photo"], {name: 1.0 for name in names})
        for name, k in per_photo.items():
            for crop in _photo_crops(photo_arrays[name], k, size, rng):
                images.append(crop)
                category.append(PHOTOS[name][1])
                source.append(f"photo:{name}")
                split.append(part)
        for draw in range(counts.get(DEADLEAVES, 0)):
            image_seed = int(deadleaves_rng.integers(2 ** 63))
            images.append(_stretch(dead_leaves(size, np.random.default_rng(image_seed))))
            category.append(DEADLEAVES)
            source.append(f"{DEADLEAVES}:{part}{draw:04d}")
            split.append(part)
    order = rng.permutation(len(images))  # ids must not reveal split or source
    return ImageSet(
        images=np.stack([images[i] for i in order]).astype(np.float32),
        category=[category[i] for i in order],
        source=[source[i] for i in order],
        split=[split[i] for i in order],
    )
