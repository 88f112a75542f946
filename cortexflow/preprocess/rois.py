"""Regions of interest on the BOLD grid, and the (trials x voxels) matrix they select.

Three ways to say where the regions are, for the modality being decoded:

* ``coords`` (the offline default): spheres around published ROI centres in MNI
  space — nilearn ships Seitzman et al. 2018 (*NeuroImage* 206:116290; 300 ROIs
  in 14 networks) without a download. Images use the ``Visual`` network, audio
  ``Auditory``, text ``DefaultMode``. A voxel inside several spheres belongs to
  the nearest centre, so it appears once.
* ``labels``: an integer labels image (an atlas the user brings, in the BOLD
  data's space) plus a TSV naming each index; the config lists the region names
  to keep per modality.
* ``mask``: one binary mask image per modality.

Labels and masks should be on the BOLD grid. An image with the BOLD's shape but
another affine is refused: that is almost always a header error (a shifted
origin silently moves every region), never a reason to resample. An image on
another grid (other shape or voxel size, e.g. a 1 mm atlas for 2 mm data) is
resampled with nearest-neighbour interpolation (labels must stay integers) only
when ``rois.allow_resampling`` is true, with a WARNING giving the shift between
the grids and each region's overlap with the brain mask. An image in another
space usually still resamples to *something*, so the check that catches it is
anatomical: most of the selected region voxels must fall inside the brain.

Which voxels are "in the brain" is read from the betas themselves: the GLM stage
writes zeros outside its brain mask, so a voxel is kept only where every run has
a non-zero beta (the intersection of the runs' masks).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from typing import Literal

from cortexflow.errors import CortexflowInputError
from cortexflow.sections import from_mapping

log = logging.getLogger("cortexflow.preprocess.rois")

VOXEL_COLUMNS = ["region", "network", "i", "j", "k", "x", "y", "z"]
DEFAULT_NETWORKS = {"image": ["Visual"], "audio": ["Auditory"], "text": ["DefaultMode"]}
ATLASES = ("seitzman_2018",)


@dataclass(frozen=True)
class ROIConfig:
    """The ``rois:`` section of the config.

    ``radius_mm`` (coords) defaults to 8 mm, the default simulated study's spheres
    (two 4 mm voxels; Seitzman et al. drew 5 mm spheres on 2 mm data).
    ``min_brain_overlap`` is the smallest fraction of the selected region
    voxels that must lie inside the brain; below it the image is taken to be in
    another space. ``allow_resampling`` lets a labels or mask image on another
    grid than the BOLD's be resampled to it (nearest neighbour); off by default,
    so a resampling is always a decision the config records.
    """

    source: Literal["coords", "labels", "mask"] = "coords"
    atlas: str = "seitzman_2018"
    radius_mm: float = 8.0
    networks: Mapping[str, Sequence[str]] = field(default_factory=lambda: dict(DEFAULT_NETWORKS))
    labels_img: str | None = None
    labels_table: str | None = None
    regions: Mapping[str, Sequence[str]] | None = None
    mask_img: Mapping[str, str] | None = None
    min_brain_overlap: float = 0.5
    allow_resampling: bool = False

    def __post_init__(self) -> None:
        fix = "correct the rois section of the config"
        if self.source not in ("coords", "labels", "mask"):
            raise CortexflowInputError(f"rois.source must be coords, labels or mask, not {self.source!r}", fix=fix)
        if self.source == "coords" and self.atlas not in ATLASES:
            raise CortexflowInputError(f"rois.atlas {self.atlas!r} is not available offline (known: {ATLASES})",
                                       fix="use atlas: seitzman_2018, or source: labels with your own atlas image")
        if not self.radius_mm > 0:
            raise CortexflowInputError("rois.radius_mm must be > 0", fix=fix)
        if self.source == "labels" and not (self.labels_img and self.labels_table and self.regions):
            raise CortexflowInputError("rois.source: labels needs labels_img, labels_table and regions", fix=fix)
        if self.source == "mask" and not self.mask_img:
            raise CortexflowInputError("rois.source: mask needs mask_img: {modality: path}", fix=fix)
        if not 0.0 <= self.min_brain_overlap <= 1.0:
            raise CortexflowInputError("rois.min_brain_overlap must lie in [0, 1]", fix=fix)
        if not isinstance(self.allow_resampling, bool):
            raise CortexflowInputError(f"rois.allow_resampling must be true or false, not {self.allow_resampling!r}", fix=fix)

    @classmethod
    def from_params(cls, params: ROIConfig | Mapping | None) -> ROIConfig:
        if isinstance(params, ROIConfig):
            return params
        return from_mapping(cls, params, "rois")


@dataclass
class RegionMap:
    """Regions on a voxel grid: ``labels[i, j, k]`` is 0 outside, r + 1 inside region r."""

    labels: np.ndarray
    affine: np.ndarray
    names: list[str]
    networks: list[str]
    resampled_from: str | None = None  # the image's path when it was resampled to this grid
    shift_mm: float = 0.0  # distance between the centres of that image's grid and this one

    def voxels(self, brain: np.ndarray | None = None) -> pd.DataFrame:
        """One row per region voxel (inside ``brain`` if given), grouped by region in
        region order, then in (i, j, k) order; columns ``region, network, i, j, k, x, y, z``."""
        keep = self.labels > 0 if brain is None else (self.labels > 0) & brain
        ijk = np.argwhere(keep)  # already in (i, j, k) order
        label = self.labels[tuple(ijk.T)]
        order = np.argsort(label, kind="stable")
        ijk, label = ijk[order], label[order]
        xyz = ijk @ self.affine[:3, :3].T + self.affine[:3, 3]
        return pd.DataFrame({
            "region": [self.names[r - 1] for r in label],
            "network": [self.networks[r - 1] for r in label],
            "i": ijk[:, 0].astype(np.int32), "j": ijk[:, 1].astype(np.int32), "k": ijk[:, 2].astype(np.int32),
            "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2],
        }, columns=VOXEL_COLUMNS)


def sphere_labels(centres_mm: np.ndarray, radius_mm: float, shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """Label image of spheres around ``centres_mm`` (n, 3): 0 outside, c + 1 for centre c.

    A voxel whose centre lies within ``radius_mm`` of several centres goes to the
    nearest one (ties to the lower index), so no voxel is counted twice.
    """
    shape = tuple(int(s) for s in shape[:3])
    inv = np.linalg.inv(affine)
    labels = np.zeros(shape, dtype=np.int32)
    best = np.full(shape, np.inf)
    # half-width of the sphere's bounding box in voxels, per axis
    half = np.ceil(radius_mm / np.sqrt((affine[:3, :3] ** 2).sum(axis=0))).astype(int) + 1
    for c, centre in enumerate(np.asarray(centres_mm, dtype=float)):
        ijk = np.rint(inv[:3, :3] @ centre + inv[:3, 3]).astype(int)
        lo = np.maximum(ijk - half, 0)
        hi = np.minimum(ijk + half + 1, shape)
        if np.any(lo >= hi):
            continue  # the sphere lies outside the grid
        grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), axis=-1)
        dist = np.linalg.norm(grid @ affine[:3, :3].T + affine[:3, 3] - centre, axis=-1)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        take = (dist <= radius_mm) & (dist < best[box])
        best[box] = np.where(take, dist, best[box])
        labels[box] = np.where(take, c + 1, labels[box])
    return labels


SEITZMAN_2018_FILE = Path("datasets") / "data" / "seitzman_2018_ROIs_300inVol_MNI_allInfo.txt"


def _seitzman_2018_table() -> pd.DataFrame:
    """The 300 Seitzman 2018 ROIs as nilearn ships them, in the order (and with the row
    numbers) of ``nilearn.datasets.fetch_coords_seitzman_2018()``: sorted by network, then y.

    Read from nilearn's package folder without importing ``nilearn.datasets``: that import
    (scikit-learn's utilities with it) took 2.1 of the 3.1 s of a tiny study's extract_rois
    job (measured), and every ROI job pays it. tests/test_rois.py checks the table against
    nilearn's own function.
    """
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    path = Path(next(iter(spec.submodule_search_locations))) / SEITZMAN_2018_FILE if spec else SEITZMAN_2018_FILE
    if not path.is_file():
        raise CortexflowInputError("the Seitzman 2018 coordinates that nilearn ships are not there", path=path,
                                   fix="install the pinned nilearn (requirements.txt)")
    rois = pd.read_csv(path, delimiter=" ").rename(columns={"netName": "network", "radius(mm)": "radius"})
    return rois.sort_values(by=["network", "y"])


def atlas_coordinates(atlas: str = "seitzman_2018") -> pd.DataFrame:
    """ROI centres of a bundled coordinate atlas: ``region, network, x, y, z`` (MNI mm)."""
    if atlas != "seitzman_2018":
        raise CortexflowInputError(f"unknown coordinate atlas {atlas!r}", fix=f"use one of {ATLASES}")
    table = _seitzman_2018_table()
    rois = table[["x", "y", "z"]].reset_index(names="index")
    networks = table["network"].to_numpy().astype(str)
    return pd.DataFrame({
        "region": [f"{net}_{int(idx):03d}" for net, idx in zip(networks, rois["index"])],
        "network": networks,
        "x": rois["x"].to_numpy(float), "y": rois["y"].to_numpy(float), "z": rois["z"].to_numpy(float),
    })


def coordinate_regions(cfg: ROIConfig, modality: str, shape: Sequence[int], affine: np.ndarray) -> RegionMap:
    """Spheres around the atlas ROIs of the networks configured for ``modality``."""
    wanted = list(cfg.networks.get(modality, []))
    if not wanted:
        raise CortexflowInputError(f"rois.networks has no entry for modality {modality!r}",
                                   fix=f"add e.g. networks: {{{modality}: [Visual]}}")
    table = atlas_coordinates(cfg.atlas)
    unknown = sorted(set(wanted) - set(table["network"]))
    if unknown:
        raise CortexflowInputError(f"networks {unknown} are not in {cfg.atlas}; known: {sorted(table['network'].unique())}",
                                   fix="correct rois.networks")
    table = table[table["network"].isin(wanted)].reset_index(drop=True)
    labels = sphere_labels(table[["x", "y", "z"]].to_numpy(), cfg.radius_mm, shape, affine)
    return RegionMap(labels, affine, list(table["region"]), list(table["network"]))


def _grid_shift_mm(shape_a, affine_a, shape_b, affine_b) -> float:
    """Distance in mm between the centres of two grids' fields of view."""
    def centre(shape, affine):  # noqa: ANN001, ANN202
        return affine[:3, :3] @ ((np.asarray(shape[:3], float) - 1) / 2) + affine[:3, 3]
    return float(np.linalg.norm(centre(shape_a, affine_a) - centre(shape_b, affine_b)))


def _resample_nearest(path: str, shape: Sequence[int], affine: np.ndarray, what: str, allow: bool = False):
    """The image on the BOLD grid (ints), its native data, and the shift in mm when it was resampled (else None)."""
    import nibabel as nib
    from nilearn.image import resample_img

    from cortexflow._io import image_data

    if not Path(path).exists():
        raise CortexflowInputError(f"{what} image does not exist", path=path, fix="correct the path in the rois config")
    try:
        img = nib.load(path)
    except Exception as e:  # nibabel raises several types for broken files
        raise CortexflowInputError(f"cannot read the {what} image as NIfTI ({type(e).__name__}: {e})", path=path,
                                   fix="re-export the file as .nii.gz") from None
    data = image_data(img, path, f"{what} image")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
        img = nib.Nifti1Image(data, img.affine, img.header)
    if data.ndim != 3:
        raise CortexflowInputError(f"{what} image must be 3-D, got shape {img.shape}", path=path,
                                   fix=f"pass a single-volume {what} image")
    if not np.all(np.isfinite(data)) or not np.allclose(data, np.rint(data)):
        raise CortexflowInputError(f"{what} image holds non-integer values", path=path,
                                   fix="pass an integer labels image or a binary mask (not a probability map)")
    same_shape = tuple(img.shape[:3]) == tuple(shape[:3])
    same_affine = np.allclose(img.affine, affine, atol=1e-3)
    if same_shape and same_affine:
        return np.rint(data).astype(np.int64), data, None
    shift = _grid_shift_mm(img.shape, img.affine, shape, affine)
    if same_shape:
        # Same array size, another affine: a header error (e.g. a wrong origin)
        # far more often than a deliberate grid; resampling would move every region.
        raise CortexflowInputError(
            f"the {what} image has the BOLD grid's shape {tuple(shape[:3])} but another affine "
            f"(its grid is shifted by {shift:.1f} mm; voxel sizes {_zooms(img.affine)} vs {_zooms(affine)} mm)",
            path=path, fix="correct the image's header (sform/qform) to the BOLD's affine, or use the atlas "
                           "image made for this space; it is never resampled silently")
    if not allow:
        raise CortexflowInputError(
            f"the {what} image is on another grid than the BOLD data (shape {tuple(img.shape[:3])} vs "
            f"{tuple(shape[:3])}, voxel sizes {_zooms(img.affine)} vs {_zooms(affine)} mm, centres {shift:.1f} mm apart)",
            path=path, fix="resample it to the BOLD grid yourself (nilearn.image.resample_to_img, "
                           "interpolation='nearest'), or set rois.allow_resampling: true")
    img = resample_img(img, target_affine=affine, target_shape=tuple(shape[:3]), interpolation="nearest",
                       force_resample=True, copy_header=True)
    return np.rint(np.asanyarray(img.dataobj)).astype(np.int64), data, shift


def _zooms(affine: np.ndarray) -> tuple[float, ...]:
    return tuple(round(float(z), 2) for z in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))


def labels_regions(cfg: ROIConfig, modality: str, shape: Sequence[int], affine: np.ndarray) -> RegionMap:
    """Regions named in ``cfg.regions[modality]`` from a labels image + names table."""
    table_path = str(cfg.labels_table)
    try:
        table = pd.read_csv(table_path, sep="\t")
    except FileNotFoundError:
        raise CortexflowInputError("labels table does not exist", path=table_path,
                                   fix="give a TSV with columns index and name") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise CortexflowInputError(f"cannot read the labels table as TSV ({e})", path=table_path,
                                   fix="write it as a TSV with columns index, name") from None
    if not {"index", "name"} <= set(table.columns):
        raise CortexflowInputError(f"labels table needs columns index and name, has {list(table.columns)}",
                                   path=table_path, fix="write the table as a TSV with columns index, name")
    wanted = list((cfg.regions or {}).get(modality, []))
    if not wanted:
        raise CortexflowInputError(f"rois.regions has no entry for modality {modality!r}",
                                   fix=f"list the region names for {modality} under rois.regions")
    names = dict(zip(table["name"].astype(str), table["index"].astype(int)))
    missing = [w for w in wanted if w not in names]
    if missing:
        raise CortexflowInputError(f"regions {missing} are not in the labels table (it has {len(names)} names, "
                                   f"e.g. {list(names)[:5]})", path=table_path, fix="correct rois.regions")
    grid_labels, native, shift = _resample_nearest(str(cfg.labels_img), shape, affine, "labels", cfg.allow_resampling)
    labels = np.zeros(grid_labels.shape, dtype=np.int32)
    for r, name in enumerate(wanted, start=1):
        if not np.any(native == names[name]):
            raise CortexflowInputError(f"region {name!r} (index {names[name]}) has no voxel in the labels image",
                                       path=cfg.labels_img, fix="check that the labels table belongs to this image")
        labels[grid_labels == names[name]] = r
    return RegionMap(labels, affine, wanted, wanted, resampled_from=None if shift is None else str(cfg.labels_img),
                     shift_mm=shift or 0.0)


def mask_regions(cfg: ROIConfig, modality: str, shape: Sequence[int], affine: np.ndarray) -> RegionMap:
    """One region: the mask image configured for ``modality``."""
    path = (cfg.mask_img or {}).get(modality)
    if not path:
        raise CortexflowInputError(f"rois.mask_img has no entry for modality {modality!r}",
                                   fix=f"add mask_img: {{{modality}: path/to/mask.nii.gz}}")
    grid, native, shift = _resample_nearest(str(path), shape, affine, "mask", cfg.allow_resampling)
    if not np.isin(np.unique(native), [0, 1]).all():
        raise CortexflowInputError("mask image is not binary", path=path, fix="pass a 0/1 mask (or use source: labels)")
    name = Path(path).name.split(".")[0]
    return RegionMap((grid > 0).astype(np.int32), affine, [name], [modality],
                     resampled_from=None if shift is None else str(path), shift_mm=shift or 0.0)


def build_regions(cfg: ROIConfig, modality: str, shape: Sequence[int], affine: np.ndarray) -> RegionMap:
    """The region map for ``modality`` on the grid (``shape``, ``affine``), from whichever source is configured."""
    build = {"coords": coordinate_regions, "labels": labels_regions, "mask": mask_regions}[cfg.source]
    return build(cfg, modality, shape, affine)


def select_voxels(regions: RegionMap, brain: np.ndarray, cfg: ROIConfig, source: str | None = None) -> pd.DataFrame:
    """The voxels table of ``regions`` inside ``brain``; refuses regions that miss the brain."""
    where = source or {"coords": f"{cfg.atlas} spheres", "labels": cfg.labels_img, "mask": "rois.mask_img"}[cfg.source]
    n_region = int((regions.labels > 0).sum())
    voxels = regions.voxels(brain)
    if n_region == 0 or len(voxels) == 0:
        raise CortexflowInputError(
            f"none of the {n_region} region voxels on the BOLD grid lies inside the brain", path=where,
            fix="the image is probably in another space than the BOLD data (use one in the same space, e.g. MNI152)")
    overlap = len(voxels) / n_region
    if regions.resampled_from is not None:
        inside = voxels["region"].value_counts()
        per_region = ", ".join(
            f"{name} {inside.get(name, 0) / max(int((regions.labels == r).sum()), 1):.0%}"
            for r, name in enumerate(regions.names, start=1))
        log.warning("resampled %s to the BOLD grid (rois.allow_resampling; grid centres %.1f mm apart); "
                    "share of each region's voxels inside the brain mask: %s", regions.resampled_from,
                    regions.shift_mm, per_region)
    if overlap < cfg.min_brain_overlap:
        raise CortexflowInputError(
            f"only {overlap:.0%} of the {n_region} region voxels lie inside the brain "
            f"(rois.min_brain_overlap = {cfg.min_brain_overlap:.0%})", path=where,
            fix="check that the image is in the space of the BOLD data, or lower rois.min_brain_overlap")
    present = set(voxels["region"])  # once: per name it cost seconds for 300 regions
    empty = [n for n in regions.names if n not in present]
    if empty:
        log.warning("%d region(s) have no voxel inside the brain and are left out: %s", len(empty), empty[:10])
    return voxels


def extract_rois_stage(
    *,
    betas: list[str],
    trials: list[str],
    out_betas: str,
    out_trials: str,
    out_voxels: str,
    params: dict,
) -> None:
    """Stack one task's runs into a (trials x ROI voxels) matrix, with its trials and voxels tables.

    ``betas``/``trials`` are the glm_betas outputs of the task's runs (in any
    order; they are stacked in run order). The modality comes from the trials
    tables' ``modality`` column.
    """
    import nibabel as nib

    from cortexflow import _io

    cfg = ROIConfig.from_params(params)
    if len(betas) != len(trials) or not betas:
        raise CortexflowInputError(f"got {len(betas)} betas files and {len(trials)} trials tables",
                                   fix="pass one trials table per betas image, in the same order")
    runs = []
    for b_path, t_path in zip(betas, trials):
        rerun = "rerun glm_betas for this run (delete the file first)"
        table = _io.read_parquet(t_path, "trials table", rerun)
        if not Path(b_path).is_file():
            raise CortexflowInputError("the betas image does not exist", path=b_path, fix="run glm_betas for this run first")
        try:
            img = nib.load(b_path)
        except Exception as e:  # nibabel raises several types for broken headers
            raise CortexflowInputError(f"cannot read the betas image ({type(e).__name__}: {e})", path=b_path,
                                       fix=rerun) from None
        n_vol = img.shape[3] if len(img.shape) == 4 else 1
        if n_vol != len(table):
            raise CortexflowInputError(f"{n_vol} beta volumes but {len(table)} rows in {t_path}", path=b_path,
                                       fix="pass the trials table written with this betas image")
        run = table["run"].iloc[0] if "run" in table and len(table) else len(runs)
        session = str(table["session"].iloc[0]) if "session" in table and len(table) else ""
        runs.append(((session, run), b_path, t_path, img, table))
    # sessions first, then runs (run 1 of ses-02 comes after run 2 of ses-01)
    runs.sort(key=lambda r: (r[0][0],) + ((0, int(r[0][1]), "") if str(r[0][1]).isdigit() else (1, 0, str(r[0][1]))))

    ref = runs[0][3]
    shape, affine = ref.shape[:3], ref.affine
    for _, b_path, _, img, _ in runs[1:]:
        if img.shape[:3] != shape or not np.allclose(img.affine, affine, atol=1e-3):
            raise CortexflowInputError(f"betas grid {img.shape[:3]} differs from {runs[0][1]} {shape}", path=b_path,
                                       fix="estimate all runs of a task in the same space and resolution")
    tables = pd.concat([r[4] for r in runs], ignore_index=True)
    modalities = tables["modality"].dropna().unique() if "modality" in tables else []
    if len(modalities) != 1:
        raise CortexflowInputError(f"the trials tables must name exactly one modality, found {list(modalities)}",
                                   path=runs[0][2], fix="give events.tsv a modality column (image, audio or text)")
    modality = str(modalities[0])

    volumes = [np.asarray(_io.image_data(r[3], r[1], "betas image", fix="rerun glm_betas for this run (delete the file first)"), dtype=np.float32).reshape(shape + (-1,)) for r in runs]
    brain = np.logical_and.reduce([np.any(v != 0, axis=3) for v in volumes])
    regions = build_regions(cfg, modality, shape, affine)
    voxels = select_voxels(regions, brain, cfg)
    index = tuple(voxels[["i", "j", "k"]].to_numpy().T)
    matrix = np.concatenate([v[index].T for v in volumes], axis=0).astype(np.float32)
    log.info("%s: %d trials x %d voxels in %d regions (%s, modality %s)", out_betas, matrix.shape[0],
             matrix.shape[1], voxels["region"].nunique(), cfg.source, modality)
    _io.save_npy(out_betas, matrix)
    _io.save_parquet(out_trials, tables)
    _io.save_parquet(out_voxels, voxels)
