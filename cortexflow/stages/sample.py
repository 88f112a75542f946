"""Stage of rule ``sample`` (workflow/rules/models.smk).

Held-out stimuli -> reconstructions by the decoder (one sample and the mean of
several, an estimate of the posterior mean) and by ridge, with the truth, the
VAE's reconstruction of the truth (the pipeline's ceiling) and, for a simulated
study, the noise ceiling.
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


def sample_stage(*, dataset: str, modality: str, decoder: str, out: str, params: dict, seed: int = 0,
                 threads: int = 1, device: str = "cpu", latents: str | None = None, vae: str | None = None,
                 ridge: str | None = None, stimuli: str | None = None, ground_truth: str | None = None) -> None:
    """Reconstruct every held-out stimulus with the decoder and with ridge; store the truth and the ceiling.

    With ``ground_truth`` (a simulated subject's ``derivatives/ground_truth/sub-XX``
    folder) and ``ridge``, also the noise ceiling: the same ridge decoder fitted and
    applied on the simulator's noise-free responses (``noise_ceiling.py``).
    """
    from cortexflow.evaluation.noise_ceiling import predict_without_noise
    from cortexflow.data.stimulus_arrays import load_sentences
    from cortexflow.models.ridge import load_ridge
    from cortexflow.models.inference import reconstruct_in_batches, texts_in_batches
    from cortexflow.models.io import load_model
    from cortexflow.preprocess.dataset import load_dataset

    _io.set_threads(threads)
    p = modality_params(params, modality, SamplingParams, "sampling")
    data = load_dataset(dataset)
    X = data.X_test.astype(np.float32)
    ids = data.test["stimulus_id"].to_numpy(str)
    model = load_model(decoder, map_location=resolve_device(device))
    baseline = load_ridge(ridge) if ridge is not None else None
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
        if baseline is not None:
            arrays["ridge"] = np.asarray(baseline.predict_texts(X), dtype=str)
            if ground_truth is not None:
                from cortexflow.evaluation.features import char_ngram_features

                train_ids = _training_stimuli(data)
                if not sentences:
                    raise CortexflowInputError("the text noise ceiling needs the sentences",
                                               fix="pass --stimuli with the study's stimuli.tsv")
                targets = char_ngram_features([sentences[s] for s in train_ids], baseline.text_features)
                arrays["noise_ceiling"] = np.asarray(predict_without_noise(ground_truth, modality, data.voxels,
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
            if ground_truth is not None:
                train_ids = _training_stimuli(data)
                z_clean = predict_without_noise(ground_truth, modality, data.voxels, train_ids,
                                                lat.latents[lat.rows(train_ids, latents)], ids, baseline)
                arrays["noise_ceiling"] = _decode_to_stimulus(model, z_clean.astype(np.float32), lat, modality,
                                                              p.batch_size)
        k = max(1, p.n_samples)
        # batch by batch on the model's device; each trial's noise from its own seed (models/inference.py)
        samples = reconstruct_in_batches(model, brain_x, prior, batch_size=p.batch_size, seed=seed, num_samples=k,
                                         num_steps=p.num_steps, cfg_scale=p.cfg_scale, solver=p.solver, shift=p.shift,
                                         precision=p.precision).numpy()
        samples = _from_model_space(samples, lat, modality)
        arrays["dit"] = samples[:, 0]
        if k > 1:
            arrays[f"dit_mean{k}"] = samples.mean(axis=1)
    _io.save_npz(out, **arrays)
    log.info("sample %s: %d test stimuli, methods %s; wrote %s", modality, len(ids),
             sorted(k for k in arrays if k not in ("ids", "truth")), out)


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
