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

# the config section its stages' --params come from (cortexflow.stages.STAGES reads it)
STAGE_SECTIONS = "decoder"


def _training_rows(dataset, fit_on: str, source: str | Path) -> np.ndarray:
    if fit_on == "all":
        return np.ones(len(dataset.train), dtype=bool)
    if fit_on == "train":
        return (dataset.train["fold"] == "train").to_numpy()
    raise CortexflowInputError(f"decoder.fit_on must be 'all' or 'train', got {fit_on!r}", path=source)


def roi_sizes(voxels, source: str | Path | None = None) -> dict[str, int]:
    """Region -> voxel count from a dataset's ``voxels`` table (extract_rois' ``region``
    column), in column order; each region's voxels must be one block of columns,
    as extract_rois writes them, since the ROI encoder splits the voxel vector that way."""
    if "region" not in voxels.columns:
        raise CortexflowInputError("the dataset's voxels table has no 'region' column", path=source,
                                   fix="rebuild the dataset with make_dataset (it keeps each voxel's region), "
                                       "or set decoder.<modality>.encoder: global")
    regions = voxels["region"].astype(str).to_numpy()
    starts = np.flatnonzero(np.r_[True, regions[1:] != regions[:-1]])
    names = regions[starts]
    if len(set(names)) != len(names):
        raise CortexflowInputError("the voxels of a region are not contiguous columns", path=source,
                                   fix="rebuild the dataset with this cortexflow's extract_rois and make_dataset")
    counts = np.diff(np.r_[starts, len(regions)])
    return {str(n): int(c) for n, c in zip(names, counts)}


def build_brain_encoder(p: DecoderParams, n_voxels: int, voxels=None, source: str | Path | None = None):
    """The brain encoder that ``decoder.<modality>.encoder`` names: ``global`` (one
    projector of all voxels, ``n_tokens`` tokens) or ``roi`` (one projector and
    ``tokens_per_roi`` tokens per region of the dataset's voxels table)."""
    from cortexflow.models.brain_encoder import BrainEncoder, ROIBrainEncoder

    if p.encoder == "global":
        return BrainEncoder(n_voxels=n_voxels, cond_dim=p.hidden_dim, n_tokens=p.n_tokens,
                            dropout=p.encoder_dropout, input_dropout=p.encoder_input_dropout)
    if p.encoder == "roi":
        sizes = roi_sizes(voxels, source)
        if sum(sizes.values()) != n_voxels:
            raise CortexflowInputError(f"the regions hold {sum(sizes.values())} voxels but the data has {n_voxels}",
                                       path=source)
        return ROIBrainEncoder(sizes, cond_dim=p.hidden_dim, tokens_per_roi=p.tokens_per_roi,
                               hidden_dim=p.roi_hidden_dim, dropout=p.encoder_dropout,
                               input_dropout=p.encoder_input_dropout)
    raise CortexflowInputError(f"decoder.encoder must be 'global' or 'roi', got {p.encoder!r}", path=source)


def _build_flow_decoder(modality: str, p: DecoderParams, n_voxels: int, vae, extra: dict, encoder=None):
    from cortexflow.models.brain2audio import Brain2Audio
    from cortexflow.models.brain2img import Brain2Image
    from cortexflow.models.dit import DiTConfig
    from cortexflow.models.flow import FlowConfig

    if encoder is None:
        encoder = build_brain_encoder(p, n_voxels)
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


def latent_flow_batches(X: torch.Tensor, Y: torch.Tensor, batch_size: int, seed: int, *,
                        prior: torch.Tensor | None = None, subject_idx: torch.Tensor | None = None):
    """``(batch_fn, loss_fn)`` for ``Trainer.fit`` of a latent-flow decoder on voxels ``X`` and latents ``Y``
    (rows aligned; ``prior`` and ``subject_idx`` optional, in the same row order). Batch ``step`` is
    ``batch_indices(step, len(X), batch_size, seed)``, so a resumed run draws the same batches."""
    from cortexflow.models.types import BrainData
    from cortexflow.training.trainer import batch_indices

    def batch_fn(step: int, generator: torch.Generator):
        idx = batch_indices(step, len(X), batch_size, seed)
        return Y[idx], BrainData(voxels=X[idx], prior=None if prior is None else prior[idx],
                                 subject_idx=None if subject_idx is None else subject_idx[idx])

    def loss_fn(m, batch):
        y, brain = batch
        return m.training_loss_latents(y, brain)

    return batch_fn, loss_fn


def train_decoder_stage(*, dataset: str, modality: str, out: str, checkpoint_dir: str, params: dict, seed: int = 0,
                        threads: int = 1, device: str = "cpu", latents: str | None = None, vae: str | None = None,
                        ridge: str | None = None, stimuli: str | None = None) -> None:
    """Train one subject's brain decoder for one modality (resumes from ``checkpoint_dir``).

    Launched by torchrun with several processes (``torchrun --nproc-per-node N
    --no-python -- cortexflow train-decoder ...``, what rule train_decoder runs when
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
    from cortexflow.preprocess.dataset import load_dataset
    from cortexflow.training.trainer import Trainer, seed_everything

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
    encoder = build_brain_encoder(p, X.shape[1], data.voxels, dataset)
    model = _build_flow_decoder(modality, p, X.shape[1], vae_model, extra, encoder)
    model.set_latent_stats(torch.from_numpy(Y))
    prior = None
    if p.prior_conditioning:
        if ridge is None:
            raise CortexflowInputError("decoder.prior_conditioning is on but no --ridge baseline was given",
                                       fix="pass the fit_baseline output, or set prior_conditioning: false")
        from cortexflow.models.ridge import load_ridge

        # the baseline's out-of-fold predictions of the dataset's training trials, in its row order
        prior = torch.from_numpy(load_ridge(ridge).training_prior(data.train["stimulus_id"].to_numpy(str), ridge)[rows])
    batch_fn, loss_fn = latent_flow_batches(torch.from_numpy(X), torch.from_numpy(Y), p.batch_size, seed, prior=prior)
    trainer = Trainer(model, _training_config(p, seed, device))
    # the prior is an input like X and Y: a refitted baseline (other alphas, other folds) must not resume
    # a checkpoint trained on the old baseline's predictions
    tag_inputs = (X, Y) if prior is None else (X, Y, prior.numpy())
    result = trainer.fit(batch_fn, steps=p.steps, loss_fn=loss_fn, checkpoint_dir=checkpoint_dir,
                         run_tag=_run_tag(*tag_inputs, params=p))
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

