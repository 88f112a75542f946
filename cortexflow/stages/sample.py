"""Stage of rule ``sample`` (workflow/rules/models.smk).

Held-out stimuli -> reconstructions by the decoder (one sample and the mean of
several, an estimate of the posterior mean) and by every baseline
(``ridge``, ``ridge_pt``, ``ridge_pixels``, ``nn``, ``nn_mean<k>``; text
``retrieval`` and ``ngram_lm``: ``cortexflow.models.baselines``), with the
truth, the VAE's reconstruction of the truth (the pipeline's ``ceiling``) and,
for a simulated study, ``noise_free_linear`` (the ridge decoder fitted and
applied on the simulator's noise-free responses). One recon file per training
seed of the decoder; the baselines do not depend on it and are the same in each.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from cortexflow import _io
from cortexflow.errors import CortexflowInputError
from cortexflow.models.latents import Latents, load_latents
from cortexflow.stages.params import SamplingParams, modality_params, resolve_device

log = logging.getLogger("cortexflow.stages.sample")

# the config section its stages' --params come from (cortexflow.stages.STAGES reads it)
STAGE_SECTIONS = "sampling"


def sample_stage(*, dataset: str, modality: str, decoder: str, out: str, params: dict, seed: int = 0,
                 threads: int = 1, device: str = "cpu", latents: str | None = None, vae: str | None = None,
                 ridge: str | None = None, stimuli: str | None = None, ground_truth: str | None = None,
                 baselines: str | None = None) -> None:
    """Reconstruct every held-out stimulus with the decoder and the baselines; store the truth and the ceiling.

    ``baselines`` is fit_baseline's second file (``models.baselines.FittedBaselines``).
    With ``ground_truth`` (a simulated subject's ``derivatives/ground_truth/sub-XX``
    folder) and ``ridge``, also ``noise_free_linear``: the same ridge decoder fitted
    and applied on the simulator's noise-free responses (``noise_free_linear.py``).
    """
    from cortexflow.evaluation.noise_free_linear import predict_without_noise
    from cortexflow.models.baselines import load_baselines
    from cortexflow.data.stimulus_arrays import load_sentences
    from cortexflow.models.ridge import load_ridge
    from cortexflow.models.inference import reconstruct_first_and_mean, texts_in_batches
    from cortexflow.models.io import load_model
    from cortexflow.preprocess.dataset import load_dataset

    _io.set_threads(threads)
    p = modality_params(params, modality, SamplingParams, "sampling")
    data = load_dataset(dataset)
    X = data.X_test.astype(np.float32)
    ids = data.test["stimulus_id"].to_numpy(str)
    model = load_model(decoder, map_location=resolve_device(device))
    baseline = load_ridge(ridge) if ridge is not None else None
    others = load_baselines(baselines) if baselines is not None else None
    arrays: dict[str, np.ndarray] = {"ids": ids}
    brain_x = torch.from_numpy(X)

    if modality == "text":
        sentences = load_sentences(stimuli) if stimuli else {}
        arrays["truth"] = np.asarray([sentences.get(s, "") for s in ids], dtype=str)
        greedy = p.temperature <= 0
        texts = texts_in_batches(model, brain_x, batch_size=p.batch_size, seed=seed,
                                 temperature=max(p.temperature, 1e-6), top_k=p.top_k or None, top_p=p.top_p,
                                 greedy=greedy)
        arrays["decoder"] = np.asarray(texts, dtype=str)
        if others is not None and others.ngram_lm is not None:  # the LM's prior: one sentence for every item
            arrays["ngram_lm"] = np.full(len(ids), others.ngram_lm, dtype=f"<U{max(1, len(others.ngram_lm))}")
        if baseline is not None:
            # ridge to the n-gram embedding, decoded as the nearest training sentence
            arrays["retrieval"] = np.asarray(baseline.predict_texts(X), dtype=str)
            if others is not None and others.ngram_lm is not None and sentences:
                arrays["ngram_lm_ridge"] = _guided_lm(baseline, others, sentences, X)
            if ground_truth is not None:
                from cortexflow.evaluation.features import char_ngram_features

                train_ids = _training_stimuli(data)
                if not sentences:
                    raise CortexflowInputError("noise_free_linear for text needs the sentences",
                                               fix="pass --stimuli with the study's stimuli.tsv")
                targets = char_ngram_features([sentences[s] for s in train_ids], baseline.text_features)
                arrays["noise_free_linear"] = np.asarray(predict_without_noise(ground_truth, modality, data.voxels,
                                                                           train_ids, targets, ids, baseline), dtype=str)
    else:
        lat = load_latents(latents)
        rows = lat.rows(ids, latents)
        arrays["truth"] = lat.targets[rows]
        arrays["ceiling"] = lat.vae_reconstructions[rows]
        prior = None
        if baseline is not None:
            z_ridge = baseline.predict(X).astype(np.float32)
            arrays["ridge"] = _decode_to_stimulus(model, z_ridge, lat, modality, p.batch_size)
            if model.config.prior_conditioning:
                prior = torch.from_numpy(z_ridge)
            if others is not None:
                arrays.update(_other_baselines(model, X, z_ridge, others, lat, modality, latents, p.batch_size))
            if ground_truth is not None:
                train_ids = _training_stimuli(data)
                z_clean = predict_without_noise(ground_truth, modality, data.voxels, train_ids,
                                                lat.latents[lat.rows(train_ids, latents)], ids, baseline)
                arrays["noise_free_linear"] = _decode_to_stimulus(model, z_clean.astype(np.float32), lat, modality,
                                                                  p.batch_size)
        k = max(1, p.n_samples)
        # batch by batch on the model's device; each trial's noise from its own seed; the samples reduced
        # to the first and the mean as they are drawn (models/inference.py)
        first, mean = reconstruct_first_and_mean(
            model, brain_x, prior, to_stimulus=lambda x: _from_model_space(x, lat, modality), batch_size=p.batch_size,
            seed=seed, num_samples=k, num_steps=p.num_steps, cfg_scale=p.cfg_scale, solver=p.solver, shift=p.shift,
            precision=p.precision, noise_scale=p.noise_scale)
        arrays["dit"] = first
        if mean is not None:
            arrays[f"dit_mean{k}"] = mean
    _io.save_npz(out, **arrays)
    log.info("sample %s: %d test stimuli, methods %s; wrote %s", modality, len(ids),
             sorted(k for k in arrays if k not in ("ids", "truth")), out)


def _other_baselines(model, X: np.ndarray, z_ridge: np.ndarray, others, lat: Latents, modality: str,
                     source: str, batch_size: int) -> dict[str, np.ndarray]:
    """ridge_pt and ridge_pixels predictions, and nn / nn_mean<k> retrieval by the ridge-predicted latent."""
    from cortexflow.models.baselines import nearest_by_correlation

    out = {}
    if others.ridge_pt is not None:
        out["ridge_pt"] = _decode_to_stimulus(model, others.ridge_pt.predict(X).astype(np.float32), lat, modality,
                                              batch_size)
    if others.ridge_pixels is not None:
        out["ridge_pixels"] = np.clip(others.ridge_pixels.predict(X), 0.0, 1.0).astype(np.float32)
    rows = lat.rows(others.training_ids, source)
    nearest = rows[nearest_by_correlation(z_ridge, lat.latents[rows], others.nn_k)]  # (n, k) rows of the cache
    out["nn"] = lat.vae_reconstructions[nearest[:, 0]]
    averaged = lat.targets if others.nn_source == "original" else lat.vae_reconstructions
    # a few test items at a time: the (n, k) neighbours at once would be k copies of the test set
    out[f"nn_mean{others.nn_k}"] = np.concatenate([averaged[nearest[i:i + batch_size]].mean(axis=1)
                                                   for i in range(0, len(nearest), batch_size)])
    return out


def _guided_lm(baseline, others, sentences: dict[str, str], X: np.ndarray) -> np.ndarray:
    """ngram_lm_ridge: the n-gram LM (refitted on the training sentences with the stored order and
    smoothing) guided by the ridge-predicted embedding of each test item."""
    from cortexflow.models.baselines import CharNgramLM, conditioned_decode

    lm = CharNgramLM(others.lm_order, others.lm_add_k).fit([sentences[s] for s in others.training_ids])
    predicted = baseline.predict(X).reshape(len(X), -1)
    return np.asarray([conditioned_decode(lm, p, baseline.text_features, others.lm_weight) for p in predicted],
                      dtype=str)


def _training_stimuli(data) -> np.ndarray:
    """The dataset's training stimuli (both folds, as the ridge baseline is fitted), each once."""
    return np.unique(data.train["stimulus_id"].to_numpy(str))


def _from_model_space(x: np.ndarray, lat: Latents, modality: str) -> np.ndarray:
    """Decoder outputs are in the VAE's input space; undo the spectrogram normalisation."""
    x = x * lat.norm_std + lat.norm_mean
    return np.clip(x, 0.0, 1.0) if modality == "image" else x


def _decode_to_stimulus(model, z: np.ndarray, lat: Latents, modality: str, batch_size: int) -> np.ndarray:
    from cortexflow.models.inference import decode_in_batches

    x = decode_in_batches(model, torch.from_numpy(z), batch_size).numpy()
    return _from_model_space(x, lat, modality)
