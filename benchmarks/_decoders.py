"""Shared by benchmarks/profile_step.py and benchmarks/bench_ensemble.py: the decoders
as ``train_decoder`` (cortexflow/stages/decoder.py) builds them, on random data of
the default study's shapes, and a ``Trainer`` step on them.

Built through the stage's own helpers (``build_brain_encoder``, ``_build_flow_decoder``,
``_training_config``, ``latent_flow_batches``, ``build_brain2text``) with the
settings of config.yaml's ``decoder`` and ``vae`` sections, so a change of the
models or of the config is what gets measured. The data are random: a training
step's cost depends on the shapes, not the values. ``n_voxels`` defaults to 1150,
which gives the 0.60 M trainable parameters of the default study's image decoder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

N_VOXELS = 1150
N_TRIALS = 1500
IMAGE_SIZE = 32


def config_sections(config: str | Path = ROOT / "config.yaml") -> dict:
    with open(config) as fh:
        return yaml.safe_load(fh)


def decoder_params(modality: str, config: dict | None = None, **overrides):
    from cortexflow.stages.params import DecoderParams, modality_params

    cfg = config if config is not None else config_sections()
    p = modality_params(cfg.get("decoder", {}), modality, DecoderParams, "decoder")
    for k, v in overrides.items():
        setattr(p, k, v)
    return p


def build_vae(modality: str, config: dict | None = None):
    from cortexflow.stages.params import VAEParams, modality_params
    from cortexflow.stages.vae import _build_vae

    cfg = config if config is not None else config_sections()
    vp = modality_params(cfg.get("vae", {}), modality, VAEParams, "vae")
    return _build_vae(modality, vp, in_channels=1), vp


def flow_setup(modality: str, seed: int = 0, n_voxels: int = N_VOXELS, n_trials: int = N_TRIALS,
               config: dict | None = None, **overrides):
    """(model, training config, batch_fn, loss_fn, data) for a flow decoder, built as the stage builds it
    (global seeding before the encoder, the stage's DecoderParams, prior conditioning on)."""
    from cortexflow.stages.decoder import _build_flow_decoder, _training_config, build_brain_encoder, \
        latent_flow_batches
    from cortexflow.stages.params import SamplingParams  # noqa: F401  (the stage's import path)
    from cortexflow.training.trainer import seed_everything

    p = decoder_params(modality, config, **overrides)
    seed_everything(seed)
    vae, vp = build_vae(modality, config)
    if modality == "image":
        extra = {"image_size": IMAGE_SIZE}
    else:
        from dataclasses import asdict

        extra = {"params": {"audio": asdict(vp.audio)}}
    # data first (as the stage loads it before building), from their own generator
    g = torch.Generator().manual_seed(1234)
    X = torch.randn(n_trials, n_voxels, generator=g)
    seed_everything(seed)
    encoder = build_brain_encoder(p, n_voxels)
    model = _build_flow_decoder(modality, p, n_voxels, vae, extra, encoder)
    Y = torch.randn(n_trials, *model.latent_shape, generator=g)
    prior = torch.randn(n_trials, *model.latent_shape, generator=g) if p.prior_conditioning else None
    model.set_latent_stats(Y)
    batch_fn, loss_fn = latent_flow_batches(X, Y, p.batch_size, seed, prior=prior)
    return model, _training_config(p, seed, "cpu"), batch_fn, loss_fn, {"X": X, "Y": Y, "prior": prior, "p": p}


def text_setup(seed: int = 0, n_voxels: int = N_VOXELS, n_trials: int = N_TRIALS, config: dict | None = None):
    from cortexflow.models.brain2text import build_brain2text, encode_texts
    from cortexflow.models.types import BrainData
    from cortexflow.stages.decoder import _training_config
    from cortexflow.training.trainer import batch_indices, seed_everything

    p = decoder_params("text", config)
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "under", "bright", "sky"]
    texts = [" ".join(rng.choice(words, size=rng.integers(4, 12))) for _ in range(n_trials)]
    tokens, _ = encode_texts(texts, p.max_len)
    X = torch.randn(n_trials, n_voxels, generator=torch.Generator().manual_seed(1234))
    seed_everything(seed)
    model = build_brain2text(n_voxels=n_voxels, max_len=p.max_len, hidden_dim=p.hidden_dim, depth=p.depth,
                             n_heads=p.num_heads, n_brain_tokens=p.n_tokens, encoder_dropout=p.encoder_dropout,
                             dropout=0.1)

    def batch_fn(step, generator):
        idx = batch_indices(step, n_trials, p.batch_size, seed)
        return tokens[idx], BrainData(voxels=X[idx])

    def loss_fn(m, batch):
        y, brain = batch
        return m.training_loss(y, brain)

    return model, _training_config(p, seed, "cpu"), batch_fn, loss_fn, {"p": p}


def vae_setup(seed: int = 0, n_images: int = N_TRIALS, config: dict | None = None):
    """The image VAE as pretrain_vae trains it (no EMA, its own schedule), on random images."""
    from cortexflow.stages.vae import vae_batch_fn, vae_loss, vae_training_config
    from cortexflow.training.trainer import seed_everything

    seed_everything(seed)
    vae, vp = build_vae("image", config)
    data = torch.rand(n_images, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1234))
    batch_fn = vae_batch_fn(data, vp, seed, flips=vp.augment_flips)
    return vae, vae_training_config(vp, seed, "cpu"), batch_fn, vae_loss, {"p": vp}


SETUPS = {
    "image": lambda seed=0, **kw: flow_setup("image", seed, **kw),
    "audio": lambda seed=0, **kw: flow_setup("audio", seed, **kw),
    "text": lambda seed=0, **kw: text_setup(seed, **kw),
    "vae_image": lambda seed=0, **kw: vae_setup(seed, **kw),
}


def make_trainer(model, cfg):
    """A ``Trainer`` as the stage makes it, started as ``fit`` starts a fresh run."""
    from cortexflow.training.trainer import Trainer, seed_everything

    trainer = Trainer(model, cfg)
    seed_everything(cfg.seed)
    trainer.data_generator.manual_seed(cfg.seed)
    return trainer


def matmul_peak(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of the best of ``repeats`` fp32 n^3 matmuls on ``threads`` threads."""
    torch.set_num_threads(threads)
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.mm(a, b)
    import time

    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def load_label() -> str:
    import os

    la = os.getloadavg()
    return f"load average {la[0]:.2f}, {la[1]:.2f}, {la[2]:.2f} on {os.cpu_count()} CPUs"
