"""The QC figure stages on small hand-made inputs: what they read, what they refuse, and that
each writes a PNG (the end-to-end test checks them in the tiny study's report)."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cortexflow.errors import CortexflowInputError
from cortexflow.stages import STAGES
from cortexflow.stages.qc import (qc_motion_stage, qc_ncsnr_stage, qc_rois_stage, training_curves_stage,
                                  _entity)
from cortexflow.training.history import LossCurve

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG and path.stat().st_size > 5000


def test_every_qc_rule_has_a_stage():
    for rule in ("qc_rois", "qc_ncsnr", "qc_motion", "qc_design", "training_curves"):
        assert STAGES[rule][0] == "cortexflow.stages.qc", rule
    assert STAGES["qc_design"][2] == "glm"  # its --params are the glm section


def test_training_curves_reads_the_names_the_training_stages_write(tmp_path):
    paths = []
    for name, loss in (("vae_image", 1.0), ("sub-01_image_decoder_seed0", 2.0), ("sub-01_text_decoder_seed1", 3.0)):
        curve = LossCurve()
        for k, step in enumerate((10, 20, 30)):
            curve.append(step, loss / (k + 1), 1e-3, 0.5, 1.5 * step)
        paths.append(str(curve.save(tmp_path / f"{name}_curve.parquet")))
    out = tmp_path / "training_curves.png"
    training_curves_stage(curves=paths, out=str(out))
    assert _is_png(out)
    LossCurve().save(tmp_path / "model_curve.parquet")
    with pytest.raises(CortexflowInputError, match="not a loss curve name"):
        training_curves_stage(curves=[str(tmp_path / "model_curve.parquet")], out=str(out))


def _confounds(path, fd):
    pd.DataFrame({"trans_x": np.zeros(len(fd)), "framewise_displacement": fd}).to_csv(
        path, sep="\t", index=False, na_rep="n/a")
    return str(path)


def test_motion_reads_fd_per_run_and_leaves_out_runs_without_it(tmp_path, caplog):
    rng = np.random.default_rng(0)
    fd = np.r_[np.nan, np.abs(rng.normal(0.1, 0.1, 59))]
    runs = [_confounds(tmp_path / f"sub-01_task-images_run-0{r}_desc-confounds_timeseries.tsv", fd) for r in (1, 2)]
    no_fd = tmp_path / "sub-01_task-text_run-01_desc-confounds_timeseries.tsv"
    pd.DataFrame({"trans_x": np.zeros(40)}).to_csv(no_fd, sep="\t", index=False)
    sidecars = []
    for r in (1, 2, 3):
        sidecar = tmp_path / f"run{r}.json"
        sidecar.write_text('{"RepetitionTime": 2.0}')
        sidecars.append(str(sidecar))
    out = tmp_path / "motion.png"
    with caplog.at_level(logging.WARNING):
        qc_motion_stage(confounds=[*runs, str(no_fd)], out=str(out), sidecars=tuple(sidecars))
    assert _is_png(out)
    assert any("no framewise_displacement column" in r.getMessage() for r in caplog.records)
    with pytest.raises(CortexflowInputError, match="does not exist"):
        qc_motion_stage(confounds=[str(tmp_path / "missing.tsv")], out=str(out))
    with pytest.raises(CortexflowInputError, match="one sidecar per confounds table"):
        qc_motion_stage(confounds=runs, out=str(out), sidecars=tuple(sidecars))


def test_ncsnr_per_region_and_a_dataset_without_it(tmp_path):
    rng = np.random.default_rng(1)
    folders = []
    for modality in ("image", "audio"):
        folder = tmp_path / "sub-01" / modality
        folder.mkdir(parents=True)
        regions = np.repeat([f"{modality}_roi{k}" for k in range(4)], 30)
        ncsnr = np.abs(rng.normal(0.3, 0.2, len(regions)))
        ncsnr[0] = np.inf  # a voxel without noise variance is left out, not plotted at infinity
        pd.DataFrame({"region": regions, "ncsnr": ncsnr}).to_parquet(folder / "voxels.parquet")
        folders.append(str(folder))
    out = tmp_path / "ncsnr.png"
    qc_ncsnr_stage(datasets=folders, out=str(out))
    assert _is_png(out)
    bad = tmp_path / "sub-01" / "text"
    bad.mkdir()
    pd.DataFrame({"region": ["a"]}).to_parquet(bad / "voxels.parquet")
    with pytest.raises(CortexflowInputError, match="no region or ncsnr column"):
        qc_ncsnr_stage(datasets=[str(bad)], out=str(out))


def test_rois_are_drawn_on_the_betas_grid(tmp_path):
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-90, -126, -72]
    betas = tmp_path / "sub-01_task-images_run-01_betas.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((46, 55, 46, 2), np.float32), affine), betas)
    # two spheres' voxels around MNI (-20, -90, 0) and (20, -90, 0)
    rows = []
    for name, centre in (("V1_left", (-20, -90, 0)), ("V1_right", (20, -90, 0))):
        ijk = np.round((np.array(centre) - affine[:3, 3]) / 4).astype(int)
        for d in np.argwhere(np.ones((3, 3, 3))) - 1:
            i, j, k = ijk + d
            rows.append((name, "Visual", i, j, k))
    voxels = tmp_path / "sub-01_task-images_voxels.parquet"
    pd.DataFrame(rows, columns=["region", "network", "i", "j", "k"]).to_parquet(voxels)
    out = tmp_path / "rois.png"
    qc_rois_stage(voxels=[str(voxels)], betas=[str(betas)], out=str(out))
    assert _is_png(out)
    with pytest.raises(CortexflowInputError, match="1 voxels tables and 2 betas"):
        qc_rois_stage(voxels=[str(voxels)], betas=[str(betas), str(betas)], out=str(out))


def test_bids_entities_of_file_names():
    name = "data/sub-01/func/sub-01_ses-2_task-images_run-03_desc-confounds_timeseries.tsv"
    assert (_entity(name, "sub"), _entity(name, "ses"), _entity(name, "task"), _entity(name, "run")) == \
        ("01", "2", "images", "03")
    assert _entity("sub-01_task-images_bold.nii.gz", "run") is None
