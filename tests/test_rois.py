"""ROI extraction: spheres, labels and masks on the BOLD grid, and the extract_rois stage."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cortexflow.errors import CortexflowInputError
from cortexflow.preprocess.rois import (
    VOXEL_COLUMNS,
    ROIConfig,
    atlas_coordinates,
    build_regions,
    extract_rois_stage,
    select_voxels,
    sphere_labels,
)

# A 4 mm MNI-like grid and an ellipsoid "brain" covering the cortex.
SHAPE = (45, 54, 45)
AFFINE = np.array([[4.0, 0, 0, -90], [0, 4.0, 0, -126], [0, 0, 4.0, -72], [0, 0, 0, 1]])


def _world(shape=SHAPE, affine=AFFINE) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _brain() -> np.ndarray:
    xyz = _world()
    return ((xyz[..., 0] / 72) ** 2 + ((xyz[..., 1] + 18) / 92) ** 2 + ((xyz[..., 2] - 10) / 72) ** 2) <= 1


def test_spheres_hold_voxels_within_radius_once_each_nearest_centre():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    centres = np.array([[10.0, 10.0, 10.0], [16.0, 10.0, 10.0], [60.0, 60.0, 60.0]])
    labels = sphere_labels(centres, 5.0, (20, 20, 20), affine)
    dist = np.linalg.norm(_world((20, 20, 20), affine)[..., None, :] - centres, axis=-1)  # (..., 3)
    within = dist <= 5.0
    expected = np.where(within.any(-1), np.argmin(np.where(within, dist, np.inf), axis=-1) + 1, 0)
    np.testing.assert_array_equal(labels, expected)
    assert (labels == 1).sum() > 0 and (labels == 2).sum() > 0
    assert (labels == 3).sum() == 0  # a centre off the grid gives no voxel
    # the two overlapping spheres split the shared voxels at the midplane x = 13 mm
    xyz = _world((20, 20, 20), affine)
    assert np.all(xyz[labels == 1][:, 0] <= 13) and np.all(xyz[labels == 2][:, 0] >= 13)


def test_the_coordinates_are_nilearn_s_seitzman_2018_in_its_order():
    """atlas_coordinates reads nilearn's bundled file itself (importing nilearn.datasets cost every
    ROI job 2 s): the same 300 centres, networks, order and row numbers as nilearn's fetcher."""
    from nilearn.datasets import fetch_coords_seitzman_2018

    bunch = fetch_coords_seitzman_2018()
    ours = atlas_coordinates()
    assert len(ours) == 300 and {"Visual", "Auditory"} <= set(ours["network"])
    np.testing.assert_array_equal(ours[["x", "y", "z"]].to_numpy(), bunch.rois[["x", "y", "z"]].to_numpy(float))
    np.testing.assert_array_equal(ours["network"].to_numpy(), np.asarray(bunch.networks).astype(str))
    assert list(ours["region"]) == [f"{n}_{int(i):03d}" for n, i in zip(bunch.networks, bunch.rois.index)]
    assert ours["region"].is_unique


def test_coordinate_regions_follow_the_modality_networks():
    cfg = ROIConfig(radius_mm=6.0)
    atlas = atlas_coordinates().set_index("region")
    for modality, network in [("image", "Visual"), ("audio", "Auditory")]:
        voxels = select_voxels(build_regions(cfg, modality, SHAPE, AFFINE), _brain(), cfg)
        assert list(voxels.columns) == VOXEL_COLUMNS
        assert set(voxels["network"]) == {network}
        centres = atlas.loc[voxels["region"], ["x", "y", "z"]].to_numpy()
        assert np.all(np.linalg.norm(voxels[["x", "y", "z"]].to_numpy() - centres, axis=1) <= 6.0 + 1e-9)
        assert not voxels.duplicated(["i", "j", "k"]).any()
        np.testing.assert_allclose(voxels[["i", "j", "k"]].to_numpy() * 4.0 + AFFINE[:3, 3], voxels[["x", "y", "z"]])
    visual = select_voxels(build_regions(cfg, "image", SHAPE, AFFINE), _brain(), cfg)
    assert visual["y"].mean() < -60  # occipital


def _v1_box(xyz):
    return (np.abs(xyz[..., 0] - 20) < 10) & (np.abs(xyz[..., 1] + 80) < 10) & (np.abs(xyz[..., 2]) < 10)


def _a1_box(xyz):
    return (np.abs(xyz[..., 0] + 50) < 8) & (np.abs(xyz[..., 1] + 20) < 8) & (np.abs(xyz[..., 2] - 10) < 8)


def _labels_files(tmp_path, shift=(0.0, 0.0, 0.0)):
    """A 2 mm labels image (another grid than the BOLD's) with two boxes, and its names table."""
    affine = np.array([[2.0, 0, 0, -90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
    shape = (91, 109, 91)
    data = np.zeros(shape, np.int16)
    data[_v1_box(_world(shape, affine))] = 7
    data[_a1_box(_world(shape, affine))] = 3
    affine[:3, 3] += shift  # same array, another origin: an image in another space
    img_path, table_path = tmp_path / "atlas.nii.gz", tmp_path / "atlas.tsv"
    nib.save(nib.Nifti1Image(data, affine), img_path)
    pd.DataFrame({"index": [3, 7], "name": ["A1", "V1"]}).to_csv(table_path, sep="\t", index=False)
    return str(img_path), str(table_path)


def test_labels_are_resampled_to_the_bold_grid(tmp_path, caplog):
    img, table = _labels_files(tmp_path)
    cfg = ROIConfig(source="labels", labels_img=img, labels_table=table, regions={"image": ["V1"], "audio": ["A1", "V1"]})
    with pytest.raises(CortexflowInputError, match="another grid.*allow_resampling: true") as err:
        build_regions(cfg, "audio", SHAPE, AFFINE)  # a resampling must be asked for
    assert "atlas.nii.gz" in str(err.value)
    cfg = dataclasses.replace(cfg, allow_resampling=True)
    voxels = select_voxels(build_regions(cfg, "audio", SHAPE, AFFINE), _brain(), cfg)
    assert list(voxels["region"].unique()) == ["A1", "V1"]  # config order
    v1 = voxels[voxels["region"] == "V1"]
    # the 4 mm grid points are 2 mm grid points, so nearest-neighbour keeps exactly those inside the box
    expected = np.argwhere(_v1_box(_world()) & _brain())
    np.testing.assert_array_equal(np.sort(v1[["i", "j", "k"]].to_numpy(), axis=0), np.sort(expected, axis=0))
    assert len(v1) > 50
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "resampled" in r.getMessage()]
    assert warning and "atlas.nii.gz" in warning[0] and "A1 " in warning[0] and "V1 " in warning[0]
    assert set(select_voxels(build_regions(cfg, "image", SHAPE, AFFINE), _brain(), cfg)["region"]) == {"V1"}


def test_labels_in_another_space_and_unknown_names_are_refused(tmp_path):
    img, table = _labels_files(tmp_path, shift=(0.0, 400.0, 0.0))  # far outside the brain
    cfg = ROIConfig(source="labels", labels_img=img, labels_table=table, regions={"image": ["V1"]}, allow_resampling=True)
    with pytest.raises(CortexflowInputError, match="another space") as err:
        select_voxels(build_regions(cfg, "image", SHAPE, AFFINE), _brain(), cfg)
    assert "atlas.nii.gz" in str(err.value)
    cfg = ROIConfig(source="labels", labels_img=img, labels_table=table, regions={"image": ["V5"]})
    with pytest.raises(CortexflowInputError, match=r"\['V5'\] are not in the labels table"):
        build_regions(cfg, "image", SHAPE, AFFINE)


def test_same_shape_with_another_affine_is_refused_not_resampled(tmp_path):
    """A 12 mm shifted origin on the BOLD's own array size is a header error: resampling it
    would move every region by 12 mm and exit 0 with most ROI voxels wrong."""
    xyz = _world()
    data = np.zeros(SHAPE, np.int16)
    data[_v1_box(xyz)] = 7
    affine = AFFINE.copy()
    affine[1, 3] += 12.0
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "shifted.nii.gz")
    pd.DataFrame({"index": [7], "name": ["V1"]}).to_csv(tmp_path / "atlas.tsv", sep="\t", index=False)
    for allow in (False, True):  # not even when resampling is allowed
        cfg = ROIConfig(source="labels", labels_img=str(tmp_path / "shifted.nii.gz"), labels_table=str(tmp_path / "atlas.tsv"),
                        regions={"image": ["V1"]}, allow_resampling=allow)
        with pytest.raises(CortexflowInputError, match=r"shifted.nii.gz: .*same|shape .* but another affine") as err:
            build_regions(cfg, "image", SHAPE, AFFINE)
        assert "12.0 mm" in str(err.value) and "Fix:" in str(err.value)


def test_mask_source_and_its_checks(tmp_path):
    xyz = _world()
    mask = (np.linalg.norm(xyz - np.array([0.0, -90.0, 0.0]), axis=-1) <= 12).astype(np.uint8)
    path = tmp_path / "visual_mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, AFFINE), path)
    cfg = ROIConfig(source="mask", mask_img={"image": str(path)})
    voxels = select_voxels(build_regions(cfg, "image", SHAPE, AFFINE), _brain(), cfg)
    assert set(voxels["region"]) == {"visual_mask"}
    assert len(voxels) == int((mask.astype(bool) & _brain()).sum()) > 0
    nib.save(nib.Nifti1Image(mask * 0.7, AFFINE), tmp_path / "prob.nii.gz")
    with pytest.raises(CortexflowInputError, match="non-integer"):
        build_regions(ROIConfig(source="mask", mask_img={"image": str(tmp_path / "prob.nii.gz")}), "image", SHAPE, AFFINE)
    with pytest.raises(CortexflowInputError, match="no entry for modality 'audio'"):
        build_regions(cfg, "audio", SHAPE, AFFINE)


def test_config_errors():
    with pytest.raises(CortexflowInputError, match="not available offline"):
        ROIConfig(atlas="schaefer_2018")
    with pytest.raises(CortexflowInputError, match="unknown keys"):
        ROIConfig.from_params({"radius": 5})
    with pytest.raises(CortexflowInputError, match=r"networks \['Vision'\]"):
        build_regions(ROIConfig(networks={"image": ["Vision"]}), "image", SHAPE, AFFINE)


def test_extract_rois_stage_stacks_runs_in_run_order(tmp_path):
    rng = np.random.default_rng(0)
    brain = _brain()
    betas_paths, trials_paths, truth = [], [], {}
    for run, n_trials in [(2, 4), (1, 3)]:  # given out of order on purpose
        data = rng.normal(size=SHAPE + (n_trials,)).astype(np.float32) * brain[..., None]
        if run == 2:
            data[30, 5, 20] = 0.0  # this run's mask excludes one more voxel
        truth[run] = data
        b, t = tmp_path / f"run-{run}_betas.nii.gz", tmp_path / f"run-{run}_trials.parquet"
        nib.save(nib.Nifti1Image(data, AFFINE), b)
        pd.DataFrame({"trial": range(n_trials), "onset": np.arange(n_trials) * 10.0, "duration": 1.0,
                      "stimulus_id": [f"s{run}{i}" for i in range(n_trials)], "modality": "image",
                      "run": run}).to_parquet(t)
        betas_paths.append(str(b))
        trials_paths.append(str(t))
    out = {k: str(tmp_path / "out" / f"x_{k}") for k in ("betas.npy", "trials.parquet", "voxels.parquet")}
    extract_rois_stage(betas=betas_paths, trials=trials_paths, out_betas=out["betas.npy"], out_trials=out["trials.parquet"],
                       out_voxels=out["voxels.parquet"], params={"radius_mm": 8.0})
    matrix = np.load(out["betas.npy"])
    trials = pd.read_parquet(out["trials.parquet"])
    voxels = pd.read_parquet(out["voxels.parquet"])
    assert matrix.shape == (7, len(voxels)) and matrix.dtype == np.float32
    assert list(trials["run"]) == [1, 1, 1, 2, 2, 2, 2]
    ijk = tuple(voxels[["i", "j", "k"]].to_numpy().T)
    np.testing.assert_array_equal(matrix, np.concatenate([truth[1][ijk].T, truth[2][ijk].T]))
    assert np.all(matrix != 0)  # only voxels inside every run's mask
    assert set(voxels["network"]) == {"Visual"}
