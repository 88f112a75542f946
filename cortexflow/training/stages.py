"""The model stages of the workflow: pretrain_vae, encode_latents, train_decoder, sample.

Each function reads its inputs, calls the library and writes its outputs
atomically; parameters come from the config's ``vae`` and ``decoder`` sections
(one sub-section per modality). The data path they implement:

- ``pretrain_vae``: one autoencoder per continuous modality, trained on the
  training stimuli only (test stimuli are never seen, not even unsupervised).
- ``encode_latents``: every stimulus -> the VAE's posterior mean, normalised per
  channel with training-set statistics (as Stable Diffusion scales its latents,
  Rombach et al. 2022) so that flow matching starts from noise of the data's
  scale; cached once and shared by all subjects.
- ``train_decoder``: brain -> latent with a DiT trained by rectified flow, or
  brain -> bytes for text; optionally conditioned on the out-of-fold ridge
  prediction of the latent (DECODING-PROTOTYPE.md: a small network learns the
  linear map from ~1,000 noisy trials worse than ridge does, so it is given it).
- ``sample``: held-out stimuli -> reconstructions by the decoder (one sample and
  the mean of several, an estimate of the posterior mean), by ridge, and the
  VAE's reconstruction of the truth (the pipeline's ceiling).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from cortexflow import _io
from cortexflow.errors import CortexflowInputError

log = logging.getLogger("cortexflow.training.stages")

CONTINUOUS = ("image", "audio")


# --------------------------------------------------------------------------- parameters


def _from_dict(cls, values: dict | None, section: str):
    """Dataclass ``cls`` from a config sub-section, naming unknown keys."""
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CortexflowInputError(f"unknown key(s) {unknown} in the config section {section}",
                                   fix=f"use only {sorted(known)}")
    return cls(**values)


@dataclass
class AudioFeatures:
    """How waveforms become the log-mel spectrograms the audio models see."""

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 500
    n_mels: int = 32
    n_frames: int = 64  # cropped / padded to this many frames (a multiple of the VAE's factor)
    f_min: float = 30.0
    f_max: float | None = 8000.0


@dataclass
class VAEParams:
    """Config ``vae.<modality>``: the autoencoder and how long to train it."""

    latent_channels: int = 4
    hidden_dims: list[int] = field(default_factory=lambda: [32, 64])
    kl_weight: float = 1e-4
    steps: int = 500
    batch_size: int = 64
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    augment_flips: bool = True
    audio: AudioFeatures = field(default_factory=AudioFeatures)


@dataclass
class DecoderParams:
    """Config ``decoder.<modality>``: the brain decoder, its training and sampling."""

    hidden_dim: int = 128
    depth: int = 4
    num_heads: int = 4
    patch_size: int = 2
    n_tokens: int = 8
    encoder_dropout: float = 0.3
    encoder_input_dropout: float = 0.1
    prior_conditioning: bool = True
    cond_drop_prob: float = 0.1
    steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 200
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    grad_accum_steps: int = 1  # micro-batches per step: batch_size / grad_accum_steps rows in memory at once
    compile: bool = False  # torch.compile the training loss (pays off on long GPU runs only)
    # text
    max_len: int = 64
    # which training trials to fit on: "all" (final model) or "train" (the fit fold,
    # leaving the val fold for design decisions)
    fit_on: str = "all"


@dataclass
class SamplingParams:
    """Config ``sampling.<modality>``: how rule ``sample`` draws reconstructions
    from a trained decoder. Kept apart from ``decoder`` so that editing these
    reruns sampling and evaluation, not training."""

    # DiT + rectified flow (image, audio)
    num_steps: int = 25
    solver: str = "euler"
    cfg_scale: float = 2.0
    shift: float = 1.0
    n_samples: int = 8  # samples per test trial: "dit" is the first, "dit_mean<n>" their mean
    precision: str = "auto"  # auto | fp32 | bf16 (cortexflow.models.flow.sampling_dtype)
    # autoregressive text
    temperature: float = 0.0  # 0: greedy decoding
    top_k: int = 0
    top_p: float = 1.0
    # test trials per forward pass (bounds memory; samples do not depend on it)
    batch_size: int = 64


_MOVED_TO_SAMPLING = {f.name for f in fields(SamplingParams)} - {"batch_size"}


def _modality_params(params: dict, modality: str, cls, section: str):
    if modality not in params:
        raise CortexflowInputError(f"the config section {section} has no entry for modality {modality!r}",
                                   fix=f"add {section}: {{{modality}: {{...}}}} (an empty mapping takes the defaults)")
    sub = dict(params[modality] or {})
    moved = sorted(set(sub) & _MOVED_TO_SAMPLING) if cls is DecoderParams else []
    if moved:
        raise CortexflowInputError(f"{moved} in the config section {section}.{modality} are sampling settings",
                                   fix=f"move them to sampling: {{{modality}: {{...}}}} (so that editing them "
                                       "reruns sampling, not training)")
    if cls is VAEParams and "audio" in sub:
        sub["audio"] = _from_dict(AudioFeatures, sub["audio"], f"{section}.{modality}.audio")
    return _from_dict(cls, sub, f"{section}.{modality}")


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CortexflowInputError(f"device {device!r} was asked for but CUDA is not available",
                                   fix="set device: cpu (or auto) in the config, or run on a GPU node")
    return torch.device(device)


# --------------------------------------------------------------------------- stimuli


def _bids_root(stimuli: str | Path) -> Path:
    """stimuli.tsv lives in <bids_root>/stimuli/."""
    return Path(stimuli).resolve().parent.parent


def load_stimulus_arrays(stimuli: str | Path, modality: str, audio: AudioFeatures | None = None,
                         split: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, arrays, splits) of one modality's stimuli as the models see them.

    Images: (N, C, H, W) float32 in [0, 1]. Audio: log-mel (N, n_mels, n_frames).
    """
    from cortexflow.data.bids import load_stimuli, load_stimulus

    table = load_stimuli(_bids_root(stimuli))
    table = table[table["modality"] == modality]
    if split is not None:
        table = table[table["split"] == split]
    if table.empty:
        raise CortexflowInputError(f"no {modality} stimuli{'' if split is None else f' in the {split} split'}",
                                   path=stimuli, fix=f"list {modality} stimuli in stimuli.tsv")
    root = _bids_root(stimuli)
    items = [load_stimulus(root, row) for _, row in table.iterrows()]
    if modality == "image":
        arrays = np.stack([np.asarray(x, dtype=np.float32) for x in items])
    elif modality == "audio":
        arrays = waveforms_to_mels([w for w, _ in items], [sr for _, sr in items], audio or AudioFeatures(),
                                   source=stimuli)
    else:
        raise CortexflowInputError(f"modality {modality!r} has no continuous stimuli", fix="use image or audio")
    return table["stimulus_id"].to_numpy(str), arrays, table["split"].to_numpy(str)


def waveforms_to_mels(waveforms: list[np.ndarray], rates: list[int], cfg: AudioFeatures,
                      source: str | Path | None = None) -> np.ndarray:
    """Log-mel spectrograms (N, n_mels, n_frames), cropped or zero-padded (in waveform) to n_frames."""
    from cortexflow.models.audio import waveform_to_mel

    bad = sorted({int(r) for r in rates} - {cfg.sample_rate})
    if bad:
        raise CortexflowInputError(f"audio stimuli are sampled at {bad} Hz, the models expect {cfg.sample_rate} Hz",
                                   path=source, fix="resample the WAV files or set vae.audio.audio.sample_rate")
    n_samples = (cfg.n_frames - 1) * cfg.hop_length
    batch = np.zeros((len(waveforms), n_samples), dtype=np.float32)
    for i, w in enumerate(waveforms):
        w = np.asarray(w, dtype=np.float32)[:n_samples]
        batch[i, : len(w)] = w
    mel = waveform_to_mel(torch.from_numpy(batch), sample_rate=cfg.sample_rate, n_fft=cfg.n_fft,
                          hop_length=cfg.hop_length, n_mels=cfg.n_mels, f_min=cfg.f_min, f_max=cfg.f_max)
    return mel[..., : cfg.n_frames].numpy().astype(np.float32)


# --------------------------------------------------------------------------- VAE


def _build_vae(modality: str, p: VAEParams, in_channels: int):
    from cortexflow.models.vae import AudioVAE, LatentVAE, VAEConfig

    if modality == "image":
        return LatentVAE(VAEConfig(in_channels=in_channels, latent_channels=p.latent_channels,
                                   hidden_dims=list(p.hidden_dims), kl_weight=p.kl_weight))
    return AudioVAE(n_mels=p.audio.n_mels, latent_channels=p.latent_channels, hidden_dim=p.hidden_dims[-1],
                    n_downsample=len(p.hidden_dims), kl_weight=p.kl_weight)


def pretrain_vae_stage(*, stimuli: str, modality: str, out: str, params: dict, seed: int = 0, threads: int = 1,
                       device: str = "cpu") -> None:
    """Train the autoencoder of one continuous modality on its training stimuli."""
    from cortexflow.models.io import save_model
    from cortexflow.training.trainer import Trainer, TrainingConfig, batch_indices, seed_everything

    _io.set_threads(threads)
    # torch seeds each new process at random: seed before the model draws its initial weights
    seed_everything(seed)
    if modality not in CONTINUOUS:
        raise CortexflowInputError(f"pretrain_vae is for image or audio, not {modality!r}")
    p = _modality_params(params, modality, VAEParams, "vae")
    ids, x, _ = load_stimulus_arrays(stimuli, modality, p.audio, split="train")
    # Spectrograms are normalised with training statistics; images stay in [0, 1].
    if modality == "audio":
        norm = {"mean": float(x.mean()), "std": float(x.std() + 1e-6)}
    else:
        norm = {"mean": 0.0, "std": 1.0}
    data = torch.from_numpy((x - norm["mean"]) / norm["std"])
    log.info("pretrain_vae %s: %d training stimuli of shape %s", modality, len(data), tuple(data.shape[1:]))

    vae = _build_vae(modality, p, in_channels=data.shape[1])
    cfg = TrainingConfig(learning_rate=p.learning_rate, batch_size=p.batch_size, warmup_steps=p.warmup_steps,
                         max_steps=p.steps, use_ema=False, seed=seed, device=device, log_every=max(1, p.steps // 10),
                         checkpoint_every=max(1, p.steps))
    trainer = Trainer(vae, cfg)

    def batch_fn(step: int, generator: torch.Generator) -> torch.Tensor:
        xb = data[batch_indices(step, len(data), p.batch_size, seed)]
        if p.augment_flips and modality == "image":
            flip = torch.rand(len(xb), generator=generator) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        return xb

    def loss_fn(model, xb):
        recon, mu, logvar = model(xb)
        return model.loss(xb, recon, mu, logvar)[0]

    trainer.fit(batch_fn, steps=p.steps, loss_fn=loss_fn)
    vae.eval()
    _, recon = _encode_decode(vae, data[:256], batch_size=256)
    mse = float(np.mean((recon - data[:256].numpy()) ** 2))
    log.info("pretrain_vae %s: training-set reconstruction MSE %.4g (normalised units)", modality, mse)
    save_model(vae.cpu(), out, extra={"modality": modality, "norm": norm, "params": asdict(p),
                                      "train_recon_mse": mse})
    log.info("wrote %s", out)


def _load_vae(path: str | Path):
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
    model, extra = _load_vae(vae)
    model.to(_device(device))
    audio = AudioFeatures(**extra["params"]["audio"])
    ids, x, splits = load_stimulus_arrays(stimuli, modality, audio)
    norm = extra["norm"]
    xn = torch.from_numpy((x - norm["mean"]) / norm["std"])
    mu, recon = _encode_decode(model, xn, batch_size=256)
    recon = recon * norm["std"] + norm["mean"]
    if modality == "image":
        recon = np.clip(recon, 0.0, 1.0)
    _io.save_npz(out, ids=ids, latents=mu.astype(np.float32), targets=x.astype(np.float32),
                 vae_reconstructions=recon.astype(np.float32), splits=splits,
                 norm_mean=np.float32(norm["mean"]), norm_std=np.float32(norm["std"]))
    test = splits != "train"
    log.info("encode_latents %s: %d stimuli -> latents %s; VAE reconstruction MSE train %.4g, test %.4g; wrote %s",
             modality, len(ids), mu.shape[1:], float(np.mean((recon[~test] - x[~test]) ** 2)),
             float(np.mean((recon[test] - x[test]) ** 2)) if test.any() else float("nan"), out)


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


@dataclass
class Latents:
    """The cached output of ``encode_latents``."""

    ids: np.ndarray
    latents: np.ndarray
    targets: np.ndarray
    vae_reconstructions: np.ndarray
    norm_mean: float
    norm_std: float

    def rows(self, stimulus_ids: np.ndarray, source: str | Path) -> np.ndarray:
        """Row index of each stimulus id; a missing id is an error naming the file."""
        index = {s: i for i, s in enumerate(self.ids)}
        missing = sorted({s for s in stimulus_ids if s not in index})
        if missing:
            raise CortexflowInputError(f"{len(missing)} stimulus ids have no latent (e.g. {missing[:3]})", path=source,
                                       fix="rerun encode_latents on the stimuli.tsv the dataset was made from")
        return np.asarray([index[s] for s in stimulus_ids])


def load_latents(path: str | Path) -> Latents:
    with np.load(path, allow_pickle=False) as f:
        return Latents(f["ids"], f["latents"], f["targets"], f["vae_reconstructions"], float(f["norm_mean"]),
                       float(f["norm_std"]))


# --------------------------------------------------------------------------- decoders


def _training_rows(dataset, fit_on: str, source: str | Path) -> np.ndarray:
    if fit_on == "all":
        return np.ones(len(dataset.train), dtype=bool)
    if fit_on == "train":
        return (dataset.train["fold"] == "train").to_numpy()
    raise CortexflowInputError(f"decoder.fit_on must be 'all' or 'train', got {fit_on!r}", path=source)


def _oof_prior(X: np.ndarray, Y: np.ndarray, groups: np.ndarray, alpha: float, seed: int) -> np.ndarray:
    """Out-of-fold ridge predictions of ``Y``: each trial predicted by a ridge that never saw its stimulus,
    so the prior seen in training is as noisy as the one seen at test time."""
    from cortexflow.evaluation.ridge import cross_val_predict_ridge

    return cross_val_predict_ridge(X, Y, n_folds=5, alphas=(alpha,), seed=seed, groups=groups)


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
                          warmup_steps=p.warmup_steps, max_steps=p.steps, ema_decay=p.ema_decay, use_ema=True,
                          seed=seed, device=device, log_every=max(1, p.steps // 20),
                          checkpoint_every=p.checkpoint_every, grad_accum_steps=p.grad_accum_steps,
                          compile=p.compile)


def train_decoder_stage(*, dataset: str, modality: str, out: str, checkpoint_dir: str, params: dict, seed: int = 0,
                        threads: int = 1, device: str = "cpu", latents: str | None = None, vae: str | None = None,
                        ridge: str | None = None, stimuli: str | None = None) -> None:
    """Train one subject's brain decoder for one modality (resumes from ``checkpoint_dir``).

    Launched by torchrun with several processes (``torchrun --nproc-per-node N
    --no-python cortexflow train-decoder ...``), the processes train one model
    data-parallel (``cortexflow.training.distributed``); rank 0 writes ``out``.
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
    p = _modality_params(params, modality, DecoderParams, "decoder")
    _device(device)  # fail early on a CUDA request without CUDA
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
    vae_model, extra = _load_vae(vae)
    extra = {**extra, "image_size": int(lat.targets.shape[-1])}
    model = _build_flow_decoder(modality, p, X.shape[1], vae_model, extra)
    model.set_latent_stats(torch.from_numpy(Y))
    prior = None
    if p.prior_conditioning:
        if ridge is None:
            raise CortexflowInputError("decoder.prior_conditioning is on but no --ridge baseline was given",
                                       fix="pass the fit_baseline output, or set prior_conditioning: false")
        from cortexflow.evaluation.ridge import load_ridge

        alpha = load_ridge(ridge).alpha_
        prior = torch.from_numpy(_oof_prior(X, Y, stim_ids, alpha, seed))
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


def _final_loss(result) -> float | None:
    return float(np.mean(result.losses[-50:])) if result.losses else None


def _train_text_decoder(X: np.ndarray, stim_ids: np.ndarray, p: DecoderParams, stimuli: str | None, out: str,
                        checkpoint_dir: str, seed: int, device: str, is_main: bool = True) -> None:
    from cortexflow.evaluation.ridge import load_sentences
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


# --------------------------------------------------------------------------- sampling


def sample_stage(*, dataset: str, modality: str, decoder: str, out: str, params: dict, seed: int = 0,
                 threads: int = 1, device: str = "cpu", latents: str | None = None, vae: str | None = None,
                 ridge: str | None = None, stimuli: str | None = None, ground_truth: str | None = None) -> None:
    """Reconstruct every held-out stimulus with the decoder and with ridge; store the truth and the ceiling.

    With ``ground_truth`` (a simulated subject's ``derivatives/ground_truth/sub-XX``
    folder) and ``ridge``, also the noise ceiling: the same ridge decoder fitted and
    applied on the simulator's noise-free responses (``noise_ceiling.py``).
    """
    from cortexflow.evaluation.noise_ceiling import predict_without_noise
    from cortexflow.evaluation.ridge import load_ridge, load_sentences
    from cortexflow.models.inference import reconstruct_in_batches, texts_in_batches
    from cortexflow.models.io import load_model
    from cortexflow.preprocess.dataset import load_dataset

    _io.set_threads(threads)
    p = _modality_params(params, modality, SamplingParams, "sampling")
    data = load_dataset(dataset)
    X = data.X_test.astype(np.float32)
    ids = data.test["stimulus_id"].to_numpy(str)
    model = load_model(decoder, map_location=_device(device))
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
