"""What a real fMRIPrep (23+) output folder holds, written from the simulated study's arrays.

``fmriprep_confounds`` turns the simulator's confounds table into the column set
fMRIPrep writes (``*_derivative1``, ``*_power2``, ``*_derivative1_power2`` with
``n/a`` in the first row of every derivative, ``framewise_displacement``,
``dvars``/``std_dvars``/``rmsd``, ``non_steady_state_outlier_XX``, ``cosine_XX``,
``a_comp_cor_XX``/``t_comp_cor_XX``, ``csf_wm``, ``tcompcor``) and the JSON
sidecar whose CompCor metadata nilearn's ``compcor`` strategy reads.
``real_format_study`` re-lays a simulated study in fMRIPrep 23's naming:
sessions, ``res-2``, a ``boldref``, ``T1w`` and ``fsaverage`` outputs beside the
MNI ones, those confounds, and events as real experiments log them (a fixation
row that outlasts the scan, ``n/a`` cells, a button-press column).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

SPACE = "MNI152NLin2009cAsym"
MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
N_ACOMPCOR = {"combined": 5, "CSF": 3, "WM": 3}
N_TCOMPCOR = 3


def _derivative(x: np.ndarray) -> np.ndarray:
    return np.r_[np.nan, np.diff(x)]


def fmriprep_confounds(sim: pd.DataFrame, tr: float, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """fMRIPrep's confounds table and its JSON sidecar, built around the simulator's columns
    (whose values are kept, so the default confounds give the same betas)."""
    rng = np.random.default_rng(seed)
    n = len(sim)
    out: dict[str, np.ndarray] = {}
    for base in ("global_signal", "csf", "white_matter", "csf_wm", "tcompcor", *MOTION):
        x = sim[base].to_numpy(float) if base in sim else rng.normal(1000.0, 1.0, n)
        d = _derivative(x)
        out[base], out[f"{base}_derivative1"] = x, d
        out[f"{base}_power2"], out[f"{base}_derivative1_power2"] = x**2, d**2
    out["framewise_displacement"] = sim["framewise_displacement"].to_numpy(float)
    out["rmsd"] = np.r_[np.nan, np.abs(rng.normal(0.05, 0.02, n - 1))]
    out["dvars"] = np.r_[np.nan, np.abs(rng.normal(20.0, 3.0, n - 1))]
    out["std_dvars"] = np.r_[np.nan, np.abs(rng.normal(1.0, 0.15, n - 1))]
    out["non_steady_state_outlier_00"] = (np.arange(n) == 0).astype(float)
    # cosine_XX: fMRIPrep's DCT basis of periods longer than 128 s
    k = np.arange(1, int(np.floor(2 * n * tr / 128.0)) + 1)
    times = np.arange(n)
    for j, kk in enumerate(k):
        out[f"cosine_{j:02d}"] = np.sqrt(2.0 / n) * np.cos(np.pi / n * (times + 0.5) * kk)
    meta: dict[str, dict] = {}
    index = 0
    for mask, count in N_ACOMPCOR.items():
        for _ in range(count):
            name = f"a_comp_cor_{index:02d}"
            out[name] = rng.normal(0.0, 1.0 / np.sqrt(n), n)
            meta[name] = {"Method": "aCompCor", "Mask": mask, "Retained": True,
                          "SingularValue": float(10.0 / (index + 1)), "VarianceExplained": 0.05,
                          "CumulativeVarianceExplained": 0.05 * (index + 1)}
            index += 1
    for j in range(N_TCOMPCOR):
        out[f"t_comp_cor_{j:02d}"] = rng.normal(0.0, 1.0 / np.sqrt(n), n)
        meta[f"t_comp_cor_{j:02d}"] = {"Method": "tCompCor", "Retained": True, "SingularValue": 1.0,
                                       "VarianceExplained": 0.02, "CumulativeVarianceExplained": 0.02 * (j + 1)}
    for name in ("framewise_displacement", "dvars", "std_dvars", "rmsd"):
        meta[name] = {"Description": name}
    return pd.DataFrame(out), meta


def write_confounds(path: Path, table: pd.DataFrame, meta: dict) -> None:
    """The TSV as fMRIPrep writes it (n/a for missing values) and its .json beside it."""
    table.to_csv(path, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2))


def _entities_of(name: str) -> dict[str, str]:
    return dict(re.findall(r"([a-z]+)-([A-Za-z0-9]+)", name.split(".")[0]))


def real_format_study(sim_bids: Path, out: Path, sessions: dict[tuple[str, int], tuple[str, int]]) -> Path:
    """``sim_bids`` (a simulated study) re-laid at ``out`` in fMRIPrep 23's naming.

    ``sessions`` maps (task, simulated run) to (session label, run in that session);
    e.g. {("images", 1): ("01", 1), ("images", 2): ("02", 1)} puts the two image
    runs in two sessions, both as run-01. Every BOLD run gets ``res-2`` MNI outputs
    (the ones to decode), a ``T1w`` run on another grid, a ``boldref``, fsaverage
    GIFTIs and fMRIPrep's confounds; its events get a fixation row that ends 4 s
    after the last volume, ``n/a`` cells and a response column.
    """
    shutil.copytree(sim_bids / "stimuli", out / "stimuli")
    shutil.copy(sim_bids / "dataset_description.json", out / "dataset_description.json")
    fmriprep = out / "derivatives" / "fmriprep"
    fmriprep.mkdir(parents=True)
    (fmriprep / "dataset_description.json").write_text(json.dumps(
        {"Name": "fMRIPrep - fMRI PREProcessing workflow", "BIDSVersion": "1.8.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.1"}]}))
    for bold in sorted((sim_bids / "derivatives" / "fmriprep").glob(f"sub-*/func/*_space-{SPACE}_desc-preproc_bold.nii.gz")):
        ent = _entities_of(bold.name)
        sub, task, sim_run = ent["sub"], ent["task"], int(ent["run"])
        ses, run = sessions.get((task, sim_run), ("01", sim_run))
        stem = f"sub-{sub}_ses-{ses}_task-{task}_run-{run:02d}"
        func = fmriprep / f"sub-{sub}" / f"ses-{ses}" / "func"
        raw = out / f"sub-{sub}" / f"ses-{ses}" / "func"
        func.mkdir(parents=True, exist_ok=True)
        raw.mkdir(parents=True, exist_ok=True)
        sim_stem = bold.name.split("_space-")[0]
        src = bold.parent
        mni = f"{stem}_space-{SPACE}_res-2"
        shutil.copy(bold, func / f"{mni}_desc-preproc_bold.nii.gz")
        shutil.copy(src / f"{sim_stem}_space-{SPACE}_desc-brain_mask.nii.gz", func / f"{mni}_desc-brain_mask.nii.gz")
        sidecar = json.loads((src / f"{sim_stem}_space-{SPACE}_desc-preproc_bold.json").read_text())
        sidecar.update({"SkullStripped": False, "SliceTimingCorrected": False})
        (func / f"{mni}_desc-preproc_bold.json").write_text(json.dumps(sidecar))
        img = nib.load(bold)
        ref = np.asanyarray(img.dataobj)[..., 0].astype(np.float32)
        nib.Nifti1Image(ref, img.affine).to_filename(func / f"{mni}_boldref.nii.gz")
        # the run in the subject's anatomy: another grid, the same run identity
        t1w_affine = np.diag([3.0, 3.0, 3.0, 1.0])
        t1w_affine[:3, 3] = [-60.0, -80.0, -50.0]
        t1w = np.zeros((8, 9, 7, img.shape[3]), np.float32) + 1000.0
        nib.Nifti1Image(t1w, t1w_affine).to_filename(func / f"{stem}_space-T1w_desc-preproc_bold.nii.gz")
        nib.Nifti1Image(np.ones((8, 9, 7), np.uint8), t1w_affine).to_filename(func / f"{stem}_space-T1w_desc-brain_mask.nii.gz")
        (func / f"{stem}_space-T1w_desc-preproc_bold.json").write_text(json.dumps(sidecar))
        nib.Nifti1Image(t1w[..., 0], t1w_affine).to_filename(func / f"{stem}_desc-coreg_boldref.nii.gz")
        for hemi in ("L", "R"):
            arrays = [nib.gifti.GiftiDataArray(np.zeros(12, np.float32), intent="NIFTI_INTENT_TIME_SERIES")
                      for _ in range(2)]
            nib.save(nib.gifti.GiftiImage(darrays=arrays), func / f"{stem}_hemi-{hemi}_space-fsaverage_bold.func.gii")
        tr = float(sidecar["RepetitionTime"])
        sim_confounds = pd.read_csv(src / f"{sim_stem}_desc-confounds_timeseries.tsv", sep="\t", na_values="n/a")
        table, meta = fmriprep_confounds(sim_confounds, tr, seed=sim_run)
        write_confounds(func / f"{stem}_desc-confounds_timeseries.tsv", table, meta)
        # events as an experiment logs them
        sim_events = sim_bids / f"sub-{sub}" / "func" / f"{sim_stem}_events.tsv"
        events = pd.read_csv(sim_events, sep="\t", dtype=str, keep_default_na=False)
        events["response_time"] = "n/a"
        events.loc[events.index[::3], "response_time"] = "0.74"
        run_seconds = img.shape[3] * tr
        fixation = {c: "n/a" for c in events.columns} | {"onset": f"{run_seconds - 6:g}", "duration": "10",
                                                         "trial_type": "fixation"}
        press = {c: "n/a" for c in events.columns} | {"onset": "3.2", "trial_type": "button_press"}
        events = pd.concat([events, pd.DataFrame([press, fixation])], ignore_index=True)
        events.to_csv(raw / f"{stem}_events.tsv", sep="\t", index=False)
        raw_bold = {"RepetitionTime": tr, "TaskName": task}
        (raw / f"{stem}_bold.json").write_text(json.dumps(raw_bold))
    return out
