"""Stage of rule ``train_decoder`` (workflow/rules/models.smk).

Brain -> latent with a DiT trained by rectified flow (image, audio), or brain ->
bytes for text. The flow decoders are optionally conditioned on the ridge
baseline's out-of-fold prediction of the latent, read from the ``fit_baseline``
output (a small network learns the linear map from ~1,000 noisy trials worse
than ridge does, so it is given it); each training trial's prior comes from a
ridge that never saw its stimulus, so it is as noisy as the test-time prior
(the ridge fitted on all training trials, used by ``sample``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from cortexflow import _io
from cortexflow.data.stimulus_arrays import AudioFeatures
from cortexflow.errors import CortexflowInputError
from cortexflow.models.latents import load_latents
from cortexflow.stages.params import DecoderParams, SamplingParams, modality_params, resolve_device
from cortexflow.stages.vae import load_vae
from cortexflow.training.checkpoint import prune_stale_checkpoints

log = logging.getLogger("cortexflow.stages.decoder")


def _training_rows(dataset, fit_on: str, source: str | Path) -> np.ndarray:
    if fit_on == "all":
        return np.ones(len(dataset.train), dtype=bool)
    if fit_on == "train":
        return (dataset.train["fold"] == "train").to_numpy()
    raise CortexflowInputError(f"decoder.fit_on must be 'all' or 'train', got {fit_on!r}", path=source)


def _build_flow_decoder(modality: str, p: DecoderParams, n_voxels: int, vae, extra: dict):
    from cortexflow.models.brain2audio import Brain2Audio
    from cortexflow.models.brain2img import Brain2Image
    from cortexflow.models.brain_encoder import BrainEncoder
    from cortexflow.models.dit import DiTConfig
    from cortexflow.models.flow import FlowConfig

    encoder = BrainEncoder(n_voxels=n_voxels, cond_dim=p.hidden_dim, n_tokens=p.n_tokens, dropout=p.encoder_dropout,
                           input_dropout=p.encoder_input_dropout)
    dit = DiTConfig(hidden_dim=p.hidden_dim, depth=p.depth, num_heads=p.num_heads, cond_dim=p.hidden_dim,
                    patch_size=p.patch_size)
    flow = FlowConfig(num_steps=SamplingParams.num_steps, cfg_scale=SamplingParams.cfg_scale)
    if modality == "image":
        return Brain2Image(n_voxels, int(extra["image_size"]), dit, None, flow, p.n_tokens, encoder, vae=vae,
                           prior_conditioning=p.prior_conditioning, cond_drop_prob=p.cond_drop_prob)
    audio = AudioFeatures(**extra["params"]["audio"])
    return Brain2Audio(n_voxels, audio.n_mels, audio.n_frames, p.hidden_dim, p.depth, p.num_heads, audio.sample_rate,
                       encoder, vae=vae, dit_config=dit, flow_config=flow, n_brain_tokens=p.n_tokens,
                       n_fft=audio.n_fft, hop_length=audio.hop_length, prior_conditioning=p.prior_conditioning,
                       cond_drop_prob=p.cond_drop_prob)


def _run_tag(*arrays: np.ndarray, params: DecoderParams) -> str:
    """Identifies a training run's inputs, so a checkpoint of another run is never resumed."""
    settings = asdict(params)
    settings.pop("compile")  # same trajectory compiled or not
    if settings["grad_accum_steps"] == 1:
        settings.pop("grad_accum_steps")  # tags of runs from before the option existed stay valid
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _training_config(p: DecoderParams, seed: int, device: str):
    from cortexflow.training.trainer import TrainingConfig

    return TrainingConfig(learning_rate=p.learning_rate, batch_size=p.batch_size, weight_decay=p.weight_decay,
                          warmup_steps=p.warmup_steps, max_steps=p.steps, ema_decay=p.ema_decay, use_ema=True, ema_warmup=True,
                          seed=seed, device=device, log_every=max(1, p.steps // 20),
                          checkpoint_every=p.checkpoint_every, grad_accum_steps=p.grad_accum_steps,
                          compile=p.compile)


def train_decoder_stage(*, dataset: str, modality: str, out: str, checkpoint_dir: str, params: dict, seed: int = 0,
                        threads: int = 1, device: str = "cpu", latents: str | None = None, vae: str | None = None,
                        ridge: str | None = None, stimuli: str | None = None) -> None:
    """Train one subject's brain decoder for one modality (resumes from ``checkpoint_dir``).

    Launched by torchrun with several processes (``torchrun --nproc-per-node N
    --no-python cortexflow train-decoder ...``, what rule train_decoder runs when
    the profile gives it N GPUs), the processes train one model data-parallel
    (``cortexflow.training.distributed``); rank 0 writes ``out``.
    """
    from cortexflow.training.distributed import init_from_env

    ctx, device = init_from_env(device)
    try:
        _train_decoder(dataset=dataset, modality=modality, out=out, checkpoint_dir=checkpoint_dir, params=params,
                       seed=seed, threads=threads, device=device, latents=latents, vae=vae, ridge=ridge,
                       stimuli=stimuli, is_main=ctx.is_main)
    finally:
        if ctx.enabled:
            torch.distributed.destroy_process_group()


def _train_decoder(*, dataset: str, modality: str, out: str, checkpoint_dir: str, params: dict, seed: int,
                   threads: int, device: str, latents: str | None, vae: str | None, ridge: str | None,
                   stimuli: str | None, is_main: bool) -> None:
    from cortexflow.models.io import save_model
    from cortexflow.models.types import BrainData
    from cortexflow.preprocess.dataset import load_dataset
    from cortexflow.training.trainer import Trainer, batch_indices, seed_everything

    _io.set_threads(threads)
    seed_everything(seed)  # before any model is built: its initial weights come from torch's global generator
    p = modality_params(params, modality, DecoderParams, "decoder")
    resolve_device(device)  # fail early on a CUDA request without CUDA
    data = load_dataset(dataset)
    rows = _training_rows(data, p.fit_on, dataset)
    X = data.X_train[rows].astype(np.float32)
    stim_ids = data.train["stimulus_id"].to_numpy(str)[rows]
    log.info("train_decoder %s: %d training trials x %d voxels", modality, *X.shape)

    if modality == "text":
        _train_text_decoder(X, stim_ids, p, stimuli, out, checkpoint_dir, seed, device, is_main)
        return
    if latents is None:
        raise CortexflowInputError(f"train_decoder for {modality} needs --latents (the encode_latents output)")
    if vae is None:
        raise CortexflowInputError(f"train_decoder for {modality} needs --vae (the pretrain_vae output)")
    lat = load_latents(latents)
    Y = lat.latents[lat.rows(stim_ids, latents)]
    vae_model, extra = load_vae(vae)
    extra = {**extra, "image_size": int(lat.targets.shape[-1])}
    model = _build_flow_decoder(modality, p, X.shape[1], vae_model, extra)
    model.set_latent_stats(torch.from_numpy(Y))
    prior = None
    if p.prior_conditioning:
        if ridge is None:
            raise CortexflowInputError("decoder.prior_conditioning is on but no --ridge baseline was given",
                                       fix="pass the fit_baseline output, or set prior_conditioning: false")
        from cortexflow.models.ridge import load_ridge

        # the baseline's out-of-fold predictions of the dataset's training trials, in its row order
        prior = torch.from_numpy(load_ridge(ridge).training_prior(data.train["stimulus_id"].to_numpy(str), ridge)[rows])
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)

    def batch_fn(step: int, generator: torch.Generator):
        idx = batch_indices(step, len(Xt), p.batch_size, seed)
        return Yt[idx], BrainData(voxels=Xt[idx], prior=None if prior is None else prior[idx])

    def loss_fn(m, batch):
        y, brain = batch
        return m.training_loss_latents(y, brain)

    trainer = Trainer(model, _training_config(p, seed, device))
    result = trainer.fit(batch_fn, steps=p.steps, loss_fn=loss_fn, checkpoint_dir=checkpoint_dir,
                         run_tag=_run_tag(X, Y, params=p))
    if trainer.ema is not None:
        trainer.ema.apply_to(model)
    if is_main:
        save_model(model.cpu(), out, extra={"modality": modality, "params": asdict(p), "vae_extra": extra,
                                           "final_loss": _final_loss(result)})
        log.info("wrote %s", out)
        prune_stale_checkpoints(checkpoint_dir)


def _final_loss(result) -> float | None:
    return float(np.mean(result.losses[-50:])) if result.losses else None


def _train_text_decoder(X: np.ndarray, stim_ids: np.ndarray, p: DecoderParams, stimuli: str | None, out: str,
                        checkpoint_dir: str, seed: int, device: str, is_main: bool = True) -> None:
    from cortexflow.data.stimulus_arrays import load_sentences
    from cortexflow.models.brain2text import build_brain2text, encode_texts
    from cortexflow.models.io import save_model
    from cortexflow.models.types import BrainData
    from cortexflow.training.trainer import Trainer, batch_indices

    if stimuli is None:
        raise CortexflowInputError("train_decoder for text needs --stimuli (stimuli.tsv with the sentences)")
    sentences = load_sentences(stimuli)
    missing = sorted(set(stim_ids) - set(sentences))
    if missing:
        raise CortexflowInputError(f"{len(missing)} text trials have no sentence (e.g. {missing[:3]})", path=stimuli)
    texts = [sentences[s] for s in stim_ids]
    tokens, _ = encode_texts(texts, p.max_len)
    model = build_brain2text(n_voxels=X.shape[1], max_len=p.max_len, hidden_dim=p.hidden_dim, depth=p.depth,
                             n_heads=p.num_heads, n_brain_tokens=p.n_tokens, encoder_dropout=p.encoder_dropout,
                             dropout=0.1)
    Xt = torch.from_numpy(X)

    def batch_fn(step: int, generator: torch.Generator):
        idx = batch_indices(step, len(Xt), p.batch_size, seed)
        return tokens[idx], BrainData(voxels=Xt[idx])

    def loss_fn(m, batch):
        y, brain = batch
        return m.training_loss(y, brain)

    trainer = Trainer(model, _training_config(p, seed, device))
    result = trainer.fit(batch_fn, steps=p.steps, loss_fn=loss_fn, checkpoint_dir=checkpoint_dir,
                         run_tag=_run_tag(X, tokens.numpy(), params=p))
    if trainer.ema is not None:
        trainer.ema.apply_to(model)
    if is_main:
        save_model(model.cpu(), out, extra={"modality": "text", "params": asdict(p),
                                           "final_loss": _final_loss(result)})
        log.info("wrote %s", out)
        prune_stale_checkpoints(checkpoint_dir)

