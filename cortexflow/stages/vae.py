"""Stages of rules ``pretrain_vae`` and ``encode_latents`` (workflow/rules/models.smk).

- ``pretrain_vae``: one autoencoder per continuous modality, trained on the
  training stimuli only (test stimuli are never seen, not even unsupervised).
- ``encode_latents``: every stimulus -> the VAE's posterior mean, cached once and
  shared by all subjects (``cortexflow.models.latents``). The decoders normalise
  latents per channel with training-set statistics themselves (as Stable
  Diffusion scales its latents, Rombach et al. 2022) so that flow matching
  starts from noise of the data's scale.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from cortexflow import _io
from cortexflow.data.stimulus_arrays import AudioFeatures, load_stimulus_arrays
from cortexflow.errors import CortexflowInputError
from cortexflow.models.latents import save_latents
from cortexflow.stages.params import CONTINUOUS, VAEParams, modality_params, resolve_device

log = logging.getLogger("cortexflow.stages.vae")

# the config section its stages' --params come from (cortexflow.stages.STAGES reads it)
STAGE_SECTIONS = "vae"


def _build_vae(modality: str, p: VAEParams, in_channels: int):
    from cortexflow.models.vae import AudioVAE, LatentVAE, VAEConfig

    if modality == "image":
        return LatentVAE(VAEConfig(in_channels=in_channels, latent_channels=p.latent_channels,
                                   hidden_dims=list(p.hidden_dims), kl_weight=p.kl_weight))
    return AudioVAE(n_mels=p.audio.n_mels, latent_channels=p.latent_channels, hidden_dim=p.hidden_dims[-1],
                    n_downsample=len(p.hidden_dims), kl_weight=p.kl_weight)


def pretrain_vae_stage(*, stimuli: str, modality: str, out: str, params: dict, seed: int = 0, threads: int = 1,
                       device: str = "cpu", checkpoint_dir: str | None = None, out_curve: str | None = None) -> None:
    """Train the autoencoder of one continuous modality on its training stimuli.

    Resumable like train_decoder: with ``checkpoint_dir`` (a folder beside the
    output, not the output) a checkpoint is written every twentieth of the run
    and on SIGTERM (a time limit), and a rerun continues from it, to the same
    weights as an uninterrupted run; a checkpoint of other settings or other
    stimuli is not resumed.

    Writes the model to ``out`` and its loss curve (one row per logged step,
    continued across resumes) to ``out_curve``, by default
    ``<out stem>_curve.parquet`` beside it.
    """
    from cortexflow.models.io import save_model
    from cortexflow.training.checkpoint import prune_stale_checkpoints
    from cortexflow.training.history import curve_path
    from cortexflow.training.trainer import Trainer, seed_everything

    _io.set_threads(threads)
    # torch seeds each new process at random: seed before the model draws its initial weights
    seed_everything(seed)
    if modality not in CONTINUOUS:
        raise CortexflowInputError(f"pretrain_vae is for image or audio, not {modality!r}")
    p = modality_params(params, modality, VAEParams, "vae")
    ids, x, _ = load_stimulus_arrays(stimuli, modality, p.audio, split="train")
    # Spectrograms are normalised with training statistics; images stay in [0, 1].
    if modality == "audio":
        norm = {"mean": float(x.mean()), "std": float(x.std() + 1e-6)}
    else:
        norm = {"mean": 0.0, "std": 1.0}
    data = torch.from_numpy((x - norm["mean"]) / norm["std"])
    log.info("pretrain_vae %s: %d training stimuli of shape %s", modality, len(data), tuple(data.shape[1:]))

    vae = _build_vae(modality, p, in_channels=data.shape[1])
    trainer = Trainer(vae, vae_training_config(p, seed, device))
    trainer.name = Path(out).stem
    batch_fn = vae_batch_fn(data, p, seed, flips=p.augment_flips and modality == "image")
    trainer.fit(batch_fn, steps=p.steps, loss_fn=vae_loss, checkpoint_dir=checkpoint_dir,
                run_tag=None if checkpoint_dir is None else _vae_run_tag(modality, p, ids, data))
    vae.eval()
    _, recon = _encode_decode(vae, data[:256], batch_size=256)
    mse = float(np.mean((recon - data[:256].numpy()) ** 2))
    log.info("pretrain_vae %s: training-set reconstruction MSE %.4g (normalised units)", modality, mse)
    save_model(vae.cpu(), out, extra={"modality": modality, "norm": norm, "params": asdict(p),
                                      "train_recon_mse": mse})
    trainer.curve.save(out_curve or curve_path(out))
    log.info("wrote %s and its loss curve %s", out, out_curve or curve_path(out))
    if checkpoint_dir is not None:
        prune_stale_checkpoints(checkpoint_dir)


def vae_training_config(p: VAEParams, seed: int, device: str):
    """pretrain_vae's training schedule: no EMA, ~50 log lines and ~20 checkpoints a run."""
    from cortexflow.training.trainer import TrainingConfig

    return TrainingConfig(learning_rate=p.learning_rate, batch_size=p.batch_size, warmup_steps=p.warmup_steps,
                          max_steps=p.steps, use_ema=False, seed=seed, device=device,
                          log_every=max(1, p.steps // 50), checkpoint_every=max(1, p.steps // 20))


def vae_batch_fn(data: torch.Tensor, p: VAEParams, seed: int, flips: bool):
    """The ``batch_fn`` of pretrain_vae: the seeded batch order over ``data``, each image mirrored
    left-right with probability 1/2 (drawn from the trainer's generator) when ``flips``."""
    from cortexflow.training.trainer import batch_indices

    def batch_fn(step: int, generator: torch.Generator) -> torch.Tensor:
        xb = data[batch_indices(step, len(data), p.batch_size, seed)]
        if flips:
            flip = torch.rand(len(xb), generator=generator) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        return xb

    return batch_fn


def vae_loss(model, xb: torch.Tensor) -> torch.Tensor:
    """The VAE's training loss on a batch (reconstruction + KL, as ``model.loss`` weighs them)."""
    recon, mu, logvar = model(xb)
    return model.loss(xb, recon, mu, logvar)[0]


def _vae_run_tag(modality: str, p: VAEParams, ids, data: torch.Tensor) -> str:
    """Identifies a VAE training run's inputs (settings, stimuli), so that a checkpoint of another is not resumed."""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps({"modality": modality, **asdict(p)}, sort_keys=True, default=str).encode())
    h.update("\n".join(map(str, ids)).encode())
    h.update(np.ascontiguousarray(data.numpy()).data)  # no copy (gigabytes at NSD size)
    return h.hexdigest()[:16]


def _encode_decode(vae, x: torch.Tensor, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(posterior means, their reconstructions) of ``x`` as numpy arrays, batch by batch on the VAE's device."""
    device = next(vae.parameters()).device
    mus, recons = [], []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            mu = vae.encode(x[i:i + batch_size].to(device))[1]
            mus.append(mu.cpu())
            recons.append(vae.decode(mu).cpu())
    return torch.cat(mus).numpy(), torch.cat(recons).numpy()


def load_vae(path: str | Path):
    """A trained autoencoder (in eval mode) and the extras ``pretrain_vae`` saved with it."""
    from cortexflow.models.io import load_model

    vae, extra = load_model(path, return_extra=True)
    vae.eval()
    return vae, extra


def encode_latents_stage(*, stimuli: str, modality: str, vae: str, out: str, params: dict, threads: int = 1,
                         device: str = "cpu") -> None:
    """Encode every stimulus of a modality to VAE latents (the posterior mean), cached once.

    The decoders normalise latents themselves (per-channel statistics of the
    training latents, set in ``train_decoder``), so raw latents are stored.
    """
    _io.set_threads(threads)
    model, extra = load_vae(vae)
    model.to(resolve_device(device))
    audio = AudioFeatures(**extra["params"]["audio"])
    ids, x, splits = load_stimulus_arrays(stimuli, modality, audio)
    norm = extra["norm"]
    xn = torch.from_numpy((x - norm["mean"]) / norm["std"])
    mu, recon = _encode_decode(model, xn, batch_size=256)
    recon = recon * norm["std"] + norm["mean"]
    if modality == "image":
        recon = np.clip(recon, 0.0, 1.0)
    save_latents(out, ids=ids, latents=mu, targets=x, vae_reconstructions=recon, splits=splits,
                 norm_mean=norm["mean"], norm_std=norm["std"])
    test = splits != "train"
    log.info("encode_latents %s: %d stimuli -> latents %s; VAE reconstruction MSE train %.4g, test %.4g; wrote %s",
             modality, len(ids), mu.shape[1:], float(np.mean((recon[~test] - x[~test]) ** 2)),
             float(np.mean((recon[test] - x[test]) ** 2)) if test.any() else float("nan"), out)

