"""Single-trial GLM: design and betas against nilearn, LSS against its definition, errors."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cortexflow.errors import CortexflowInputError
from cortexflow.preprocess.glm import GLMConfig, build_design, cosine_drift, single_trial_betas
from cortexflow.preprocess.hrf import HRF_MODELS, event_regressors, frame_times, gamma_difference_hrf, gamma_pdf

TR = 2.0
N_SCANS = 150
N_TRIALS = 20
CONFOUNDS = ["trans_x", "rot_z", "csf"]


def _events(n_trials: int = N_TRIALS, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    onsets = np.arange(n_trials) * 13.0 + 4.0 + rng.uniform(0, 3, n_trials)
    return pd.DataFrame({
        "onset": onsets,
        "duration": rng.choice([1.0, 2.0, 3.0], n_trials),
        "trial_type": [f"t{i:02d}" for i in range(n_trials)],
        "stimulus_id": [f"stim{i % 7}" for i in range(n_trials)],
        "modality": "image",
    })


def _confounds(seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.normal(size=(N_SCANS, len(CONFOUNDS))).cumsum(axis=0) * 0.1, columns=CONFOUNDS)


def _run(n_vox: int = 120, seed: int = 2, noise: float = 5.0):
    """A synthetic run built from the design: (bold (T, V) float32, true trial betas, events, confounds)."""
    rng = np.random.default_rng(seed)
    events, confounds = _events(), _confounds()
    design = build_design(events, confounds, N_SCANS, TR, {"confounds": CONFOUNDS}).matrix.to_numpy()
    coef = rng.normal(scale=20.0, size=(design.shape[1], n_vox))
    coef[-1] = 1000.0 + rng.uniform(0, 200, n_vox)  # baseline intensity
    bold = design @ coef + rng.normal(scale=noise, size=(N_SCANS, n_vox))
    return bold.astype(np.float32), coef[:N_TRIALS], events, confounds


def test_trial_regressors_and_drifts_match_nilearn_design():
    from nilearn.glm.first_level import make_first_level_design_matrix

    events = _events()
    # an event at the very start, one of zero duration, one running past the last frame time
    events.loc[0, ["onset", "duration"]] = [0.0, 0.0]
    events.loc[N_TRIALS - 1, ["onset", "duration"]] = [N_SCANS * TR - 5.0, 4.0]
    times = frame_times(N_SCANS, TR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = make_first_level_design_matrix(times, events[["onset", "duration", "trial_type"]],
                                                   hrf_model="spm", drift_model="cosine", high_pass=0.02)
    ours = event_regressors(events["onset"], events["duration"], times, gamma_difference_hrf(TR))
    np.testing.assert_allclose(ours, reference[[f"t{i:02d}" for i in range(N_TRIALS)]].to_numpy(), atol=1e-12)
    drift_cols = [c for c in reference.columns if c.startswith("drift")] + ["constant"]
    np.testing.assert_allclose(cosine_drift(N_SCANS, TR, 0.02), reference[drift_cols].to_numpy(), atol=1e-12)
    # the late trial's response is only partly sampled but not lost
    assert 0 < ours[:, -1].max() < 0.1


def test_gamma_density_is_scipy_s_bit_for_bit_and_the_hrfs_are_nilearn_s():
    """hrf.gamma_pdf stands in for scipy.stats.gamma.pdf (whose import alone cost every GLM job 1.2 s):
    the same numbers to the last bit, on the HRF's grids and at the edges of the support."""
    from nilearn.glm.first_level import glover_hrf, spm_hrf
    from scipy.stats import gamma

    rng = np.random.default_rng(0)
    for tr, oversampling in ((2.0, 50), (1.6, 16), (0.8, 50)):
        dt = tr / oversampling
        t = np.linspace(0, 32.0, int(np.rint(32.0 / dt)))
        for shape, scale in ((6.0, 1.0), (16.0, 1.0), (6.0 / 0.9, 0.9), (12.0 / 0.9, 0.9)):
            assert np.array_equal(gamma_pdf(t, shape, loc=dt, scale=scale), gamma.pdf(t, shape, loc=dt, scale=scale))
    x = np.concatenate([[-1.0, 0.0, 1e-300, 1e-12, 1.0, 50.0, 800.0], rng.gamma(3.0, 2.0, 200)])
    for shape in (0.5, 1.0, 1.5, 7.3):
        for loc, scale in ((0.0, 1.0), (0.3, 2.5)):
            assert np.array_equal(gamma_pdf(x, shape, loc, scale), gamma.pdf(x, shape, loc=loc, scale=scale)), shape
    # the two HRF models against nilearn's own, sample for sample
    assert set(HRF_MODELS) >= {"spm", "glover"}
    for tr in (2.0, 1.5):
        np.testing.assert_allclose(gamma_difference_hrf(tr, model="spm"), spm_hrf(tr), rtol=0, atol=1e-15)
        np.testing.assert_allclose(gamma_difference_hrf(tr, model="glover"), glover_hrf(tr), rtol=0, atol=1e-15)


@pytest.mark.parametrize("scaling, nilearn_scaling", [("raw", False), ("psc", 0)])
def test_lsa_betas_agree_with_nilearn_first_level_model(scaling, nilearn_scaling):
    """Same design, OLS: betas agree to 1e-4 of their range.

    Both designs agree to 1e-12 (test above); what is left is float32 storage of
    the BOLD image that nilearn reads (relative precision ~6e-8, amplified by the
    design's conditioning), so 1e-4 relative is loose enough to be stable and
    ~100x tighter than any modelling difference (e.g. another HRF gives > 1e-2).
    """
    from nilearn.glm.first_level import FirstLevelModel

    bold, _, events, confounds = _run()
    shape = (6, 5, 4)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    img = nib.Nifti1Image(bold.T.reshape(shape + (N_SCANS,)), affine)
    mask = nib.Nifti1Image(np.ones(shape, np.uint8), affine)
    betas, trials = single_trial_betas(bold, events, confounds, TR,
                                       {"confounds": CONFOUNDS, "signal_scaling": scaling})
    model = FirstLevelModel(t_r=TR, hrf_model="spm", drift_model="cosine", high_pass=GLMConfig().high_pass, noise_model="ols",
                            signal_scaling=nilearn_scaling, mask_img=mask, minimize_memory=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(img, events=events[["onset", "duration", "trial_type"]], confounds=confounds)
        reference = np.stack([
            model.compute_contrast(f"t{i:02d}", output_type="effect_size").get_fdata().reshape(-1)
            for i in range(N_TRIALS)])
    scale = np.abs(reference).max()
    assert np.abs(betas - reference).max() <= 1e-4 * scale
    assert list(trials["stimulus_id"]) == list(events["stimulus_id"])
    assert betas.dtype == np.float32


def test_lsa_betas_are_unbiased_with_the_ols_standard_error():
    """OLS theory: beta_k - truth_k ~ N(0, noise² ||pinv(X)_k||²); check mean and spread."""
    noise = 1.0
    bold, truth, events, confounds = _run(noise=noise)
    params = {"confounds": CONFOUNDS, "signal_scaling": "raw"}
    betas, _ = single_trial_betas(bold, events, confounds, TR, params)
    design = build_design(events, confounds, N_SCANS, TR, params).matrix.to_numpy()
    standard_error = noise * np.linalg.norm(np.linalg.pinv(design)[:N_TRIALS], axis=1)
    z = (betas - truth) / standard_error[:, None]  # 2,400 draws of N(0, 1) if correct
    assert abs(z.mean()) < 0.1
    assert 0.93 < z.std() < 1.07


def test_psc_betas_are_raw_betas_over_voxel_mean():
    bold, _, events, confounds = _run()
    raw, _ = single_trial_betas(bold, events, confounds, TR, {"confounds": CONFOUNDS, "signal_scaling": "raw"})
    psc, _ = single_trial_betas(bold, events, confounds, TR, {"confounds": CONFOUNDS})
    np.testing.assert_allclose(psc, 100 * raw / bold.astype(np.float64).mean(axis=0), rtol=1e-4, atol=1e-5)


def test_lss_equals_one_least_squares_fit_per_trial():
    bold, _, events, confounds = _run(n_vox=40)
    params = {"confounds": CONFOUNDS, "signal_scaling": "raw", "method": "lss"}
    betas, _ = single_trial_betas(bold, events, confounds, TR, params)
    design = build_design(events, confounds, N_SCANS, TR, params)
    trial_x, nuisance = design.trial_regressors, design.nuisance
    expected = np.empty_like(betas)
    for k in range(N_TRIALS):  # the definition (Mumford et al. 2012): one model per trial
        others = np.delete(trial_x, k, axis=1).sum(axis=1, keepdims=True)
        X = np.hstack([trial_x[:, [k]], others, nuisance])
        expected[k] = np.linalg.lstsq(X, bold.astype(np.float64), rcond=None)[0][0]
    np.testing.assert_allclose(betas, expected, rtol=1e-4, atol=1e-3)
    lsa, _ = single_trial_betas(bold, events, confounds, TR, {**params, "method": "lsa"})
    assert np.abs(lsa - betas).max() > 1e-2  # a different estimator, not LSA under another name


def test_non_stimulus_events_are_nuisance_and_trials_are_sorted_by_onset():
    events = _events().iloc[::-1].reset_index(drop=True)
    extra = pd.DataFrame({"onset": [30.0, 150.0], "duration": [0.5, 0.5], "trial_type": ["response"] * 2,
                          "stimulus_id": ["n/a", None], "modality": ["n/a"] * 2})
    design = build_design(pd.concat([events, extra]), None, N_SCANS, TR, {"confounds": []})
    assert design.n_trials == N_TRIALS
    assert "event_response" in design.matrix.columns
    assert np.all(np.diff(design.trials["onset"]) > 0)
    assert list(design.trials["trial"]) == list(range(N_TRIALS))


def test_leading_missing_confounds_are_zero_and_later_ones_are_errors():
    bold, _, events, confounds = _run(n_vox=10)
    confounds = confounds.assign(framewise_displacement=np.r_[np.nan, np.abs(np.random.default_rng(0).normal(size=N_SCANS - 1))])
    params = {"confounds": CONFOUNDS + ["framewise_displacement"]}
    design = build_design(events, confounds, N_SCANS, TR, params)
    assert design.matrix["confound_framewise_displacement"].iloc[0] == 0.0
    confounds.loc[50, "csf"] = np.nan
    with pytest.raises(CortexflowInputError, match="csf"):
        single_trial_betas(bold, events, confounds, TR, params, sources={"confounds": "run_confounds.tsv"})


def test_missing_confound_names_file_and_available_columns():
    bold, _, events, confounds = _run(n_vox=10)
    with pytest.raises(CortexflowInputError) as err:
        single_trial_betas(bold, events, confounds, TR, {"confounds": ["white_matter"]},
                           sources={"confounds": "sub-01_desc-confounds_timeseries.tsv"})
    message = str(err.value)
    assert "sub-01_desc-confounds_timeseries.tsv" in message and "white_matter" in message
    assert "trans_x" in message and "Fix:" in message


def test_events_past_the_run_are_clipped_and_earlier_ones_an_error(caplog):
    """The design is that of the events as the run measured them: a trial starting after the
    last volume is dropped (a warning names it), an event running on after it is cut."""
    bold, _, events, confounds = _run(n_vox=10)
    run_seconds = N_SCANS * TR
    late = events.copy()
    extra = pd.DataFrame({"onset": [run_seconds + 10, run_seconds - 4], "duration": [2.0, 10.0],
                          "trial_type": ["stim", "fixation"], "stimulus_id": ["s_late", None]})
    late = pd.concat([late, extra], ignore_index=True)
    with caplog.at_level("WARNING", logger="cortexflow"):
        betas, trials = single_trial_betas(bold, late, confounds, TR, {"confounds": CONFOUNDS},
                                           sources={"events": "run_events.tsv"})
    assert "s_late" not in set(trials["stimulus_id"]) and len(trials) == len(events)
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "run_events.tsv: 1 event(s) start after the run's end" in text and "cut there" in text
    # the fixation cut at the run's end models exactly what the run measured
    cut = pd.concat([events, extra.iloc[[1]].assign(duration=4.0)], ignore_index=True)
    same, _ = single_trial_betas(bold, cut, confounds, TR, {"confounds": CONFOUNDS})
    np.testing.assert_array_equal(betas, same)
    early = events.copy()
    early.loc[3, "onset"] = -2.0
    with pytest.raises(CortexflowInputError, match=r"run_events\.tsv.*start before the first volume"):
        single_trial_betas(bold, early, confounds, TR, {"confounds": CONFOUNDS}, sources={"events": "run_events.tsv"})


@pytest.mark.parametrize("corruption, pattern", [("nan", "2 of 10 voxels contain NaN"),
                                                 ("constant", "1 of 10 voxels are constant")])
def test_nan_and_constant_voxels_are_errors(corruption, pattern):
    bold, _, events, confounds = _run(n_vox=10)
    if corruption == "nan":
        bold[5, 2] = np.nan
        bold[9, 7] = np.inf
    else:
        bold[:, 4] = 1000.0
    with pytest.raises(CortexflowInputError, match=pattern) as err:
        single_trial_betas(bold, events, confounds, TR, {"confounds": CONFOUNDS}, sources={"bold": "bold.nii.gz"})
    assert "bold.nii.gz" in str(err.value)


def test_too_few_volumes_and_collinear_trials_are_errors():
    bold, _, events, confounds = _run(n_vox=10)
    dense = pd.DataFrame({"onset": np.arange(24) * 2.0, "duration": 1.0, "stimulus_id": "s", "modality": "image"})
    with pytest.raises(CortexflowInputError, match="too few volumes"):
        # 24 trials + 3 confounds + 1 drift + constant in 30 volumes leave 1 degree of freedom
        single_trial_betas(bold[:30], dense, confounds.iloc[:30], TR, {"confounds": CONFOUNDS})
    # LSS needs only 2 trial columns + nuisance per model, so the same run is estimable with it
    lss, _ = single_trial_betas(bold[:30], dense, confounds.iloc[:30], TR, {"confounds": CONFOUNDS, "method": "lss"})
    assert lss.shape == (24, 10) and np.isfinite(lss).all()
    after_last = pd.concat([events, pd.DataFrame({"onset": [N_SCANS * TR - 1.0], "duration": [0.5],
                                                  "stimulus_id": ["late"], "modality": ["image"]})])
    with pytest.raises(CortexflowInputError, match="no response inside the run"):
        single_trial_betas(bold, after_last, confounds, TR, {"confounds": CONFOUNDS, "method": "lss"})
    twin = pd.concat([events, events.iloc[[4]]], ignore_index=True)
    with pytest.raises(CortexflowInputError, match="rank-deficient"):
        single_trial_betas(bold, twin, confounds, TR, {"confounds": CONFOUNDS})
    # LSS models each trial against the others, so duplicated onsets only cost precision
    betas, _ = single_trial_betas(bold, twin, confounds, TR, {"confounds": CONFOUNDS, "method": "lss"})
    assert np.isfinite(betas).all()


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(CortexflowInputError, match="unknown keys"):
        GLMConfig.from_params({"hrf": "spm"})
    with pytest.raises(CortexflowInputError, match="method"):
        GLMConfig.from_params({"method": "ridge"})
    assert GLMConfig.from_params({"confounds": ["csf"]}).confounds == ("csf",)
