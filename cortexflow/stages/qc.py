"""Stages of the quality-control figures (workflow/rules/qc.smk), shown in ``snakemake --report``.

Each stage reads the files another rule wrote (ROI voxel tables, datasets,
fMRIPrep confounds, one run's events, the loss curves) and draws one figure
with ``cortexflow.evaluation.qc_figures``:

- ``qc_rois``: a subject's regions of every task over the MNI152 template;
- ``qc_ncsnr``: a subject's ncsnr per region and modality;
- ``qc_motion``: a subject's framewise displacement per run;
- ``qc_design``: the single-trial design matrix of one run, as glm_betas builds it;
- ``training_curves``: the loss curves of every autoencoder and decoder.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cortexflow import _io
from cortexflow.errors import CortexflowInputError

log = logging.getLogger("cortexflow.stages.qc")

# the config section its stages' --params come from (cortexflow.stages.STAGES reads it)
STAGE_SECTIONS = {"qc_design": "glm"}


def _entity(path: str | Path, key: str) -> str | None:
    """A BIDS entity (``sub``, ``task``, ``run``...) of a file name."""
    m = re.search(rf"(?:^|_){key}-([a-zA-Z0-9]+)", Path(path).name)
    return m.group(1) if m else None


def qc_rois_stage(*, voxels: list[str], betas: list[str], out: str) -> None:
    """The regions of each task (extract_rois' voxels tables) over the MNI152 template, one row per
    task; ``betas``: one betas image per voxels table, in the same order, for the grid."""
    import nibabel as nib

    from cortexflow.evaluation.qc_figures import plot_rois

    if len(voxels) != len(betas):
        raise CortexflowInputError(f"got {len(voxels)} voxels tables and {len(betas)} betas images",
                                   fix="pass one betas image of each task, in the order of the voxels tables")
    rows = []
    for table_path, image_path in zip(voxels, betas):
        table = _io.read_parquet(table_path, "ROI voxels table", "rerun extract_rois (delete the file first)")
        missing = {"region", "network", "i", "j", "k"} - set(table.columns)
        if missing:
            raise CortexflowInputError(f"the voxels table lacks columns {sorted(missing)}", path=table_path,
                                       fix="rerun extract_rois with this cortexflow")
        header = nib.load(image_path)  # the grid only: no data are read
        labels = np.zeros(header.shape[:3], dtype=np.int16)
        names = list(dict.fromkeys(table["region"].astype(str)))
        codes = table["region"].astype(str).map({name: k + 1 for k, name in enumerate(names)}).to_numpy()
        labels[tuple(table[["i", "j", "k"]].to_numpy().T)] = codes
        networks = ", ".join(dict.fromkeys(table["network"].astype(str)))
        rows.append((f"task {_entity(table_path, 'task')} ({networks})", nib.Nifti1Image(labels, header.affine),
                     len(names)))
    subject = _entity(voxels[0], "sub") if voxels else None
    plot_rois(rows, out, title=f"sub-{subject}: regions of interest over the MNI152 template (z in mm)")


def qc_ncsnr_stage(*, datasets: list[str], out: str) -> None:
    """Each region's ncsnr (noise-ceiling SNR of make_dataset's voxels table), one panel per
    dataset (a subject's modalities)."""
    from cortexflow.evaluation.qc_figures import plot_ncsnr

    tables = {}
    for folder in datasets:
        path = Path(folder) / "voxels.parquet"
        table = _io.read_parquet(path, "dataset's voxels table", "rerun make_dataset (delete its folder first)")
        if not {"region", "ncsnr"} <= set(table.columns):
            raise CortexflowInputError("the voxels table has no region or ncsnr column", path=path,
                                       fix="rerun make_dataset with this cortexflow")
        tables[Path(folder).name] = table
    subject = Path(datasets[0]).parent.name if datasets else ""
    plot_ncsnr(tables, out, title=f"{subject}: noise-ceiling SNR per region (Allen et al. 2022)")


def _repetition_time(sidecar: str | None) -> float | None:
    if not sidecar or not Path(sidecar).is_file():
        return None
    try:
        tr = json.loads(Path(sidecar).read_text()).get("RepetitionTime")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return float(tr) if isinstance(tr, (int, float)) and tr > 0 else None


def qc_motion_stage(*, confounds: list[str], out: str, sidecars: tuple[str, ...] = ()) -> None:
    """Framewise displacement of each run (the ``framewise_displacement`` column of fMRIPrep's
    confounds), one panel per task; ``sidecars`` (the runs' BOLD JSON, same order) give the time axis."""
    from cortexflow.evaluation.qc_figures import plot_framewise_displacement

    if sidecars and len(sidecars) != len(confounds):
        raise CortexflowInputError(f"got {len(confounds)} confounds tables and {len(sidecars)} sidecars",
                                   fix="pass one sidecar per confounds table, in the same order, or none")
    runs: dict[str, list] = {}
    for i, path in enumerate(confounds):
        if not Path(path).is_file():
            raise CortexflowInputError("the confounds table does not exist", path=path,
                                       fix="fMRIPrep writes <run>_desc-confounds_timeseries.tsv beside the run")
        table = pd.read_csv(path, sep="\t", na_values=["n/a"])
        if "framewise_displacement" not in table.columns:
            log.warning("%s has no framewise_displacement column; its run is left out of the motion figure", path)
            continue
        run = "-".join(x for x in (_entity(path, "ses"), _entity(path, "run") or "1") if x)
        fd = pd.to_numeric(table["framewise_displacement"], errors="coerce").to_numpy(float)
        runs.setdefault(_entity(path, "task") or "?", []).append((run, fd, _repetition_time(
            sidecars[i] if sidecars else None)))
    subject = _entity(confounds[0], "sub") if confounds else None
    plot_framewise_displacement(runs, out, title=f"sub-{subject}: framewise displacement (fMRIPrep confounds)")


def qc_design_stage(*, bold: str, events: str, confounds: str, mask: str, out: str, params: dict,
                    sidecar: str | None = None, stimuli: str | None = None) -> None:
    """The single-trial design matrix of one run, built as glm_betas builds it (its ``glm``
    settings, confounds and drifts); the BOLD data are not read, only their header."""
    import dataclasses

    from cortexflow.data.bids import RunFiles, load_run, read_stimulus_table
    from cortexflow.evaluation.qc_figures import plot_design_matrix
    from cortexflow.preprocess.glm import GLMConfig, build_design, strategy_confounds

    cfg = GLMConfig.from_params(params)
    if sidecar is None:
        sidecar = str(Path(bold).with_name(Path(bold).name.split(".")[0] + ".json"))
    run = _entity(bold, "run")
    files = RunFiles(subject=_entity(bold, "sub") or "", task=_entity(bold, "task") or "",
                     run=int(run) if run and run.isdigit() else 1, bold=Path(bold), mask=Path(mask),
                     events=Path(events), confounds=Path(confounds), sidecar=Path(sidecar),
                     session=_entity(bold, "ses"))
    stimulus_ids = None if stimuli is None else set(read_stimulus_table(stimuli)["stimulus_id"])
    loaded = load_run(files, stimulus_ids)
    n_scans = int(loaded.bold.shape[3])
    table = loaded.confounds
    if cfg.confounds_strategy is not None:
        table = strategy_confounds(bold, cfg, confounds, n_scans)
        cfg = dataclasses.replace(cfg, confounds=tuple(table.columns))
    design = build_design(loaded.events, table, n_scans, float(loaded.tr), cfg,
                          sources={"bold": bold, "events": events, "confounds": confounds})
    name = Path(bold).name.split("_space-")[0]
    plot_design_matrix(design.matrix, design.n_trials, out,
                       title=f"{name}: {cfg.method.upper()} design, {design.n_trials} trials + "
                             f"{design.matrix.shape[1] - design.n_trials} nuisance columns, {n_scans} volumes "
                             f"(TR {float(loaded.tr):g} s)")


_VAE_CURVE = re.compile(r"vae_(?P<modality>[a-z]+)_curve")
_DECODER_CURVE = re.compile(r"sub-(?P<subject>[A-Za-z0-9]+)_(?P<modality>[a-z]+)_decoder_seed(?P<seed>\d+)_curve")


def training_curves_stage(*, curves: list[str], out: str) -> None:
    """Every loss curve (``vae_<modality>_curve.parquet``, ``sub-<s>_<modality>_decoder_seed<k>_curve.parquet``,
    as the training stages name them) in one figure, a panel per model kind and modality."""
    from cortexflow.evaluation.qc_figures import plot_training_curves

    found = []
    for path in curves:
        frame = _io.read_parquet(path, "loss curve", "rerun the training rule that wrote it (delete the file first)")
        stem = Path(path).name.split(".")[0]
        if (m := _VAE_CURVE.fullmatch(stem)) is not None:
            found.append(("vae", m["modality"], "autoencoder", frame))
        elif (m := _DECODER_CURVE.fullmatch(stem)) is not None:
            found.append(("decoder", m["modality"], f"sub-{m['subject']} seed {m['seed']}", frame))
        else:
            raise CortexflowInputError("not a loss curve name the training stages write", path=path,
                                       fix="pass vae_<modality>_curve.parquet or "
                                           "sub-<subject>_<modality>_decoder_seed<k>_curve.parquet files")
    plot_training_curves(found, out)
    log.info("%d loss curves in %s", len(found), out)
