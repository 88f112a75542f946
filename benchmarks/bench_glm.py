"""Single-trial betas: cortexflow vs nilearn's FirstLevelModel on the same simulated run.

Simulates one realistic run in memory (default: 300 volumes, TR 1.5 s, ~25k
brain voxels, 70 trials, 9 fMRIPrep-style confounds), then estimates one beta
per trial per voxel

* with ``cortexflow.preprocess.glm.single_trial_betas`` (LSA, and LSS), starting
  from the 4-D image in memory (masking included, design built from the events);
* with ``nilearn.glm.first_level.FirstLevelModel(noise_model="ols")`` fitted on
  the *same* design matrix (``design_matrices=[X]``), betas read the documented
  way, one ``compute_contrast(..., output_type="effect_size")`` per trial; and,
  as nilearn's lower bound, the fit alone.

Both use percent-signal-change scaling (nilearn's ``signal_scaling=0``). Time
is the best of ``--repeats`` (nilearn) or ``--fast-repeats`` (cortexflow)
wall-clock runs, the least disturbed by other work on a shared machine; peak memory is the peak of
Python-tracked allocations (``tracemalloc``, which sees NumPy buffers) in a
separate run, above what was allocated before the call. The largest absolute
beta difference to nilearn is printed with the betas' range.

    python benchmarks/bench_glm.py [--voxels 25000] [--volumes 300] [--trials 70] [--threads 1]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import time
import tracemalloc
import warnings

import nibabel as nib
import numpy as np
import pandas as pd

from cortexflow.preprocess.glm import DEFAULT_CONFOUNDS, build_design, single_trial_betas


def simulate_run(n_vox: int, n_scans: int, n_trials: int, tr: float, seed: int = 0):
    """A 4-D float32 run on an ellipsoid brain mask, its events and confounds."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil((n_vox / (np.pi / 6)) ** (1 / 3))) + 2
    c = (np.indices((side, side, side)) - (side - 1) / 2) / ((side - 1) / 2)
    radius = 1.0
    while (np.sum((c ** 2).sum(0) <= radius ** 2)) > n_vox:  # shrink the ball to ~n_vox voxels
        radius -= 0.002
    mask = (c ** 2).sum(0) <= radius ** 2
    usable = n_scans * tr - 20.0
    spacing = (usable - 4.0) / n_trials  # a jittered rapid event-related design
    onsets = 4.0 + spacing * (np.arange(n_trials) + rng.uniform(0.0, 0.5, n_trials))
    events = pd.DataFrame({"onset": onsets, "duration": 1.0, "trial_type": [f"trial_{i:03d}" for i in range(n_trials)],
                           "stimulus_id": [f"s{i:03d}" for i in range(n_trials)], "modality": "image"})
    confounds = pd.DataFrame(rng.normal(size=(n_scans, len(DEFAULT_CONFOUNDS))).cumsum(0) * 0.05,
                             columns=list(DEFAULT_CONFOUNDS))
    confounds["framewise_displacement"] = np.abs(confounds["framewise_displacement"])
    design = build_design(events, confounds, n_scans, tr, {}).matrix
    n_in = int(mask.sum())
    coef = rng.normal(scale=5.0, size=(design.shape[1], n_in))
    coef[-1] = 800 + 200 * rng.random(n_in)
    bold = design.to_numpy() @ coef + rng.normal(scale=8.0, size=(n_scans, n_in))
    data = np.zeros(mask.shape + (n_scans,), dtype=np.float32)
    data[mask] = bold.T
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    return (nib.Nifti1Image(data, affine), nib.Nifti1Image(mask.astype(np.uint8), affine),
            events, confounds, design)


def cortexflow_betas(img, mask, events, confounds, tr, method):
    inside = np.asanyarray(mask.dataobj) > 0
    bold_2d = np.asanyarray(img.dataobj)[inside].T
    return single_trial_betas(bold_2d, events, confounds, tr, {"method": method})[0]


def nilearn_betas(img, mask, design, tr, n_trials, contrasts=True):
    from nilearn.glm.first_level import FirstLevelModel

    model = FirstLevelModel(t_r=tr, noise_model="ols", signal_scaling=0, mask_img=mask, minimize_memory=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(img, design_matrices=[design])
        if not contrasts:
            return None
        inside = np.asanyarray(mask.dataobj) > 0
        return np.stack([np.asanyarray(model.compute_contrast(name, output_type="effect_size").dataobj)[inside]
                         for name in design.columns[:n_trials]])


def measure(fn, repeats):
    """(result, best wall time in s, peak tracemalloc MiB above the starting point)."""
    times, result = [], None
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return result, min(times), peak / 2 ** 20


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=25000)
    parser.add_argument("--volumes", type=int, default=300)
    parser.add_argument("--trials", type=int, default=70)
    parser.add_argument("--tr", type=float, default=1.5)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of nilearn (slow)")
    parser.add_argument("--fast-repeats", type=int, default=10, help="timed runs of cortexflow")
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads for both (default: leave as is)")
    args = parser.parse_args(argv)
    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=args.threads, user_api="blas")

    img, mask, events, confounds, design = simulate_run(args.voxels, args.volumes, args.trials, args.tr)
    n_vox = int(np.asanyarray(mask.dataobj).sum())
    print(f"run: {args.volumes} volumes x {n_vox} voxels, {args.trials} trials, design {design.shape[1]} columns; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, BLAS threads "
          f"{args.threads or 'default'}, load average {os.getloadavg()[0]:.1f}, numpy {np.__version__}\n")

    rows = []
    ref, t_nl, m_nl = measure(lambda: nilearn_betas(img, mask, design, args.tr, args.trials), args.repeats)
    _, t_fit, m_fit = measure(lambda: nilearn_betas(img, mask, design, args.tr, args.trials, contrasts=False), args.repeats)
    scale = float(np.abs(ref).max())
    for method in ("lsa", "lss"):
        betas, t, m = measure(lambda: cortexflow_betas(img, mask, events, confounds, args.tr, method), args.fast_repeats)
        diff = f"{np.abs(betas - ref).max():.1e}" if method == "lsa" else "(other estimator)"
        rows.append((f"cortexflow `single_trial_betas` ({method.upper()})", t, m, diff, t_nl / t))
    rows.append(("nilearn `FirstLevelModel` fit + 1 effect-size contrast per trial", t_nl, m_nl, "reference", 1.0))
    rows.append(("nilearn `FirstLevelModel` fit only (no betas out)", t_fit, m_fit, "", t_nl / t_fit))

    print("| method | time (s) | peak memory (MiB, tracemalloc) | max abs beta diff vs nilearn | speed-up (nilearn fit + contrasts time / this time) |")
    print("|---|---|---|---|---|")
    for name, t, m, diff, speed in rows:
        print(f"| {name} | {t:.3f} | {m:.0f} | {diff} | {speed:.1f}x |")
    print(f"\nbetas are in percent signal change; their largest magnitude is {scale:.2f}")


if __name__ == "__main__":
    main()
