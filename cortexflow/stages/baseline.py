"""Stage of rule ``fit_baseline`` (workflow/rules/models.smk): the ridge baseline
(``cortexflow.models.ridge``) of one subject and modality.

Besides the fitted model, the output holds the out-of-fold predictions of the
training trials from the baseline's own grouped cross-validation: the prior that
``train_decoder`` conditions the DiT on.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cortexflow.data.stimulus_arrays import load_sentences
from cortexflow.errors import CortexflowInputError
from cortexflow.evaluation.features import char_ngram_features
from cortexflow.models.latents import latent_targets
from cortexflow.models.ridge import RidgeConfig, RidgeDecoder

log = logging.getLogger("cortexflow.stages.baseline")

# the config section its stages' --params come from (cortexflow.stages.STAGES reads it)
STAGE_SECTIONS = "baseline"


def _load_training_set(dataset: str | Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Training trials (train and val folds) on the dataset's *selected* voxels.

    Read through ``load_dataset``, as the decoder and the sample stage read it,
    so the baseline's columns are the voxels its ``predict`` will be given.
    """
    from cortexflow.preprocess.dataset import load_dataset

    folder = Path(dataset)
    for name in ("X_train.npy", "train.parquet", "X_test.npy", "test.parquet", "voxels.parquet", "dataset.json"):
        if not (folder / name).is_file():
            raise CortexflowInputError("dataset file missing", path=folder / name, fix="run the make_dataset stage first")
    data = load_dataset(folder)
    X, table = data.X_train, data.train
    if "stimulus_id" not in table.columns:
        raise CortexflowInputError("no 'stimulus_id' column", path=folder / "train.parquet",
                                   fix="rerun the make_dataset stage")
    if X.ndim != 2 or len(X) != len(table):
        raise CortexflowInputError(f"X_train has shape {X.shape} but train.parquet has {len(table)} rows",
                                   path=folder / "X_train.npy", fix="rerun the make_dataset stage")
    log.info("dataset %s: %d training trials x %d selected voxels", folder, *X.shape)
    return X, table


def fit_baseline_stage(*, dataset: str, out: str, params: dict, latents: str | None = None,
                       stimuli: str | None = None, seed: int = 0, out_baselines: str | None = None) -> None:
    """Fit the ridge baseline of one subject and modality and save it as .npz.

    Image/audio: voxels -> VAE latents (``latents``). Text: voxels -> character
    n-gram embedding of the sentence (``stimuli``), decoded by retrieval.

    With ``out_baselines``, also the other baselines (``cortexflow.models.baselines``):
    per-target ridge to the latents, ridge to pixels (image), the training stimuli
    for nearest-neighbour retrieval, and for text the character n-gram LM, all
    fitted on the same training trials with hyper-parameters from grouped CV.
    """
    start = time.perf_counter()
    config = RidgeConfig.from_params(params)
    X, table = _load_training_set(dataset)
    stimulus_ids = table["stimulus_id"].astype(str).to_numpy()
    decoder = RidgeDecoder(config.alphas, config.cv_folds, seed)
    if latents is not None:
        Y = latent_targets(latents, stimulus_ids)
        log.info("ridge targets: latents %s from %s", Y.shape[1:], latents)
        decoder.fit(X, Y, groups=stimulus_ids)
    elif stimuli is not None:
        sentences = load_sentences(stimuli)
        missing = sorted(set(stimulus_ids) - set(sentences))
        if missing:
            raise CortexflowInputError(f"{len(missing)} training stimuli have no sentence (e.g. {missing[:3]})",
                                       path=stimuli, fix="check stimuli.tsv against the dataset")
        Y = char_ngram_features([sentences[s] for s in stimulus_ids], config.text_features)
        log.info("ridge targets: character %s-gram embeddings (%d features)",
                 config.text_features.ngram_range, config.text_features.n_features)
        decoder.fit(X, Y, groups=stimulus_ids)
        # no decoder takes a text prior: the out-of-fold embeddings (trials x n_features) are not kept
        text_oof = decoder.oof_predictions_
        decoder.oof_predictions_ = decoder.training_ids_ = None
        unique_ids = np.unique(stimulus_ids)
        decoder.candidate_ids = unique_ids
        decoder.candidate_texts = np.asarray([sentences[s] for s in unique_ids], dtype=str)
        decoder.text_features = config.text_features
    else:
        raise CortexflowInputError("fit_baseline needs latents (image, audio) or stimuli (text)",
                                   fix="pass --latents results/<study>/latents/<modality>.npz or --stimuli <bids root>")
    decoder.save(out)
    log.info("wrote %s in %.1f s", out, time.perf_counter() - start)
    if out_baselines is not None:
        _fit_other_baselines(X, stimulus_ids, config, seed, out_baselines, latents=latents, stimuli=stimuli,
                             text_oof=text_oof if latents is None else None,
                             latent_oof=decoder.oof_predictions_ if latents is not None else None)


def _fit_other_baselines(X: np.ndarray, stimulus_ids: np.ndarray, config: RidgeConfig, seed: int, out: str, *,
                         latents: str | None, stimuli: str | None, text_oof: np.ndarray | None = None,
                         latent_oof: np.ndarray | None = None) -> None:
    from cortexflow.models.baselines import FittedBaselines, choose_lm_weight, fit_ngram_lm, fit_ridge_per_target
    from cortexflow.models.ridge import grouped_folds
    from cortexflow.models.latents import load_latents

    start = time.perf_counter()
    unique_ids = np.unique(stimulus_ids)
    fitted = FittedBaselines(training_ids=unique_ids, nn_k=8 if config.nn_k == "auto" else config.nn_k,
                             nn_source="vae" if config.nn_source == "auto" else config.nn_source)
    if latents is not None:
        lat = load_latents(latents)
        rows = lat.rows(stimulus_ids, latents)
        if latent_oof is not None and "auto" in (config.nn_k, config.nn_source):
            _tune_retrieval(fitted, lat, latents, stimulus_ids, latent_oof, config, seed)
        fitted.ridge_pt, _ = fit_ridge_per_target(X, lat.latents[rows], config.alphas, config.cv_folds,
                                                  groups=stimulus_ids, seed=seed)
        if lat.targets.ndim == 4:  # images: voxels -> pixels, no VAE
            pixels = RidgeDecoder(config.alphas, config.cv_folds, seed).fit(X, lat.targets[rows], groups=stimulus_ids)
            from cortexflow.models.baselines import LinearMap

            fitted.ridge_pixels = LinearMap(pixels.coef_, pixels.intercept_, np.asarray([pixels.alpha_]),
                                            pixels.target_shape)
    else:
        sentences = load_sentences(stimuli)
        lm, info = fit_ngram_lm([sentences[s] for s in unique_ids], n_folds=config.cv_folds, seed=seed)
        fitted.ngram_lm, fitted.lm_order, fitted.lm_add_k = lm.most_probable(), info["order"], info["add_k"]
        log.info("n-gram LM's most probable sentence: %r", fitted.ngram_lm)
        if text_oof is not None:  # the ridge's own grouped folds: its out-of-fold predictions never saw the trial
            folds = grouped_folds(len(stimulus_ids), config.cv_folds, stimulus_ids, seed)
            fitted.lm_weight, _ = choose_lm_weight(sentences, stimulus_ids, text_oof, folds, info["order"],
                                                   info["add_k"], config.text_features, seed=seed)
    fitted.save(out)
    log.info("wrote %s in %.1f s", out, time.perf_counter() - start)


def _tune_retrieval(fitted, lat, latents: str, stimulus_ids: np.ndarray, oof: np.ndarray, config: RidgeConfig,
                    seed: int) -> None:
    """Choose nn_mean<k>'s k and source on the training trials' out-of-fold ridge predictions, scored by
    SSIM (images) or mel correlation (audio), as the decoder's knobs were chosen on held-out trials."""
    from cortexflow.evaluation import metrics as M
    from cortexflow.models.baselines import choose_retrieval
    from cortexflow.models.ridge import grouped_folds

    start = time.perf_counter()
    candidates = fitted.training_ids
    sources = {"vae": lat.vae_reconstructions, "original": lat.targets}  # memory-mapped: read as needed
    if config.nn_source != "auto":
        sources = {config.nn_source: sources[config.nn_source]}
    grid = (config.nn_k,) if config.nn_k != "auto" else config.nn_k_grid
    score = M.ssim if lat.targets.ndim == 4 else M.mel_correlation
    folds = grouped_folds(len(stimulus_ids), config.cv_folds, stimulus_ids, seed)  # the ridge's own folds
    crow = lat.rows(candidates, latents)
    k, source, table = choose_retrieval(oof, stimulus_ids, folds, candidates, np.asarray(lat.latents[crow]), sources,
                                        lat.targets, score, grid, candidate_rows=crow,
                                        truth_rows=lat.rows(stimulus_ids, latents))
    fitted.nn_k, fitted.nn_source, fitted.nn_tuning = k, source, table
    log.info("nn_mean<k> chosen on %d training trials' out-of-fold predictions (%s, %.1f s): k=%d, %s\n%s",
             int(table["n_trials"].iloc[0]), score.__name__, time.perf_counter() - start, k, source,
             table.to_string(index=False))
