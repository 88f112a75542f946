"""The training stages on a hand-made stimulus set: same seed, same model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from PIL import Image

from cortexflow.models.io import load_model
from cortexflow.stages.vae import encode_latents_stage, pretrain_vae_stage


def _stimuli(root):
    folder = root / "stimuli" / "images"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for n in range(12):
        Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8), mode="L").save(folder / f"img-{n}.png")
        rows.append({"stimulus_id": f"img-{n}", "modality": "image", "path": f"images/img-{n}.png",
                     "split": "train" if n < 10 else "test"})
    pd.DataFrame(rows).to_csv(root / "stimuli" / "stimuli.tsv", sep="\t", index=False)
    return root / "stimuli" / "stimuli.tsv"


def test_pretrain_vae_with_the_same_seed_gives_the_same_weights(tmp_path):
    """Each process starts torch's generator at a random seed; the stage must not depend on it."""
    stimuli = _stimuli(tmp_path)
    params = {"image": {"hidden_dims": [8, 16], "steps": 3, "batch_size": 4, "warmup_steps": 1}}
    outs = []
    for run, global_seed in enumerate((1, 2)):
        torch.manual_seed(global_seed)  # what a fresh process would have
        outs.append(tmp_path / f"vae{run}.pt")
        pretrain_vae_stage(stimuli=str(stimuli), modality="image", out=str(outs[-1]), params=params, seed=7)
    a, b = (load_model(p).state_dict() for p in outs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(3)
    pretrain_vae_stage(stimuli=str(stimuli), modality="image", out=str(tmp_path / "other.pt"), params=params, seed=8)
    c = load_model(tmp_path / "other.pt").state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


def _vae_and_latents(root):
    """A tiny image stimulus set with its VAE (``root/vae.pt``) and latents (``root/latents.npz``), made by the
    stages themselves; returns the stimuli folder."""
    stimuli = _stimuli(root)
    vae_params = {"image": {"hidden_dims": [8, 16], "steps": 2, "batch_size": 4, "warmup_steps": 1}}
    pretrain_vae_stage(stimuli=str(stimuli), modality="image", out=str(root / "vae.pt"), params=vae_params)
    encode_latents_stage(stimuli=str(stimuli), modality="image", vae=str(root / "vae.pt"),
                         out=str(root / "latents.npz"), params=vae_params)
    return stimuli


def _dataset(folder, train_ids, test_ids, n_voxels=30, seed=0):
    """A make_dataset folder: every voxel selected, 2 repeats of each training stimulus."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    np.save(folder / "X_train.npy", rng.normal(size=(len(train_ids), n_voxels)).astype(np.float32))
    np.save(folder / "X_test.npy", rng.normal(size=(len(test_ids), n_voxels)).astype(np.float32))
    pd.DataFrame({"stimulus_id": train_ids, "run": 1, "fold": "train"}).to_parquet(folder / "train.parquet")
    pd.DataFrame({"stimulus_id": test_ids, "n_repeats": 2}).to_parquet(folder / "test.parquet")
    pd.DataFrame({"region": "V1", "selected": [True] * n_voxels}).to_parquet(folder / "voxels.parquet")
    (folder / "dataset.json").write_text("{}")
    return folder


def test_train_decoder_takes_its_prior_from_the_baseline_file(tmp_path):
    """The DiT's training prior is fit_baseline's out-of-fold prediction (a DAG edge), not a refit:
    a baseline fitted on other trials is refused, naming the file."""
    import pytest

    from cortexflow.errors import CortexflowInputError
    from cortexflow.models.ridge import load_ridge
    from cortexflow.stages.baseline import fit_baseline_stage
    from cortexflow.stages.decoder import train_decoder_stage

    stimuli = _vae_and_latents(tmp_path)
    train_ids = [f"img-{n}" for n in range(10)] * 2
    dataset = _dataset(tmp_path / "ds", train_ids, ["img-10", "img-11"])
    ridge = tmp_path / "ridge.npz"
    fit_baseline_stage(dataset=str(dataset), out=str(ridge), params={"cv_folds": 3, "alphas": [1.0, 10.0]},
                       latents=str(tmp_path / "latents.npz"))
    assert load_ridge(ridge).training_prior(np.asarray(train_ids)).shape[0] == len(train_ids)
    decoder_params = {"image": {"hidden_dim": 32, "depth": 1, "num_heads": 2, "n_tokens": 2, "steps": 2,
                                "batch_size": 4, "warmup_steps": 1}}
    common = dict(modality="image", params=decoder_params, latents=str(tmp_path / "latents.npz"),
                  vae=str(tmp_path / "vae.pt"), stimuli=str(stimuli))
    # another settings' checkpoints (a stale key) beside this run's, and a folder a user put there
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "0123456789ab").mkdir(parents=True)
    (checkpoints / "0123456789ab" / "last.pt").write_bytes(b"x" * 1000)
    (checkpoints / "notes").mkdir()
    (checkpoints / "notes" / "readme.txt").write_text("mine")
    train_decoder_stage(dataset=str(dataset), out=str(tmp_path / "decoder.pt"),
                        checkpoint_dir=str(checkpoints / "current"), ridge=str(ridge), **common)
    assert load_model(tmp_path / "decoder.pt").config.prior_conditioning
    # what a resume needs stays (a lost output is rebuilt from it); the stale key is gone
    assert sorted(p.name for p in checkpoints.iterdir()) == ["current", "notes"]
    assert sorted(p.name for p in (checkpoints / "current").iterdir()) == ["last.pt", "loss_curve.parquet"]
    assert (tmp_path / "decoder_curve.parquet").is_file()  # the curve beside the model

    other = _dataset(tmp_path / "other", train_ids[::-1], ["img-10", "img-11"], seed=1)
    with pytest.raises(CortexflowInputError, match="other training trials") as error:
        train_decoder_stage(dataset=str(other), out=str(tmp_path / "decoder2.pt"),
                            checkpoint_dir=str(tmp_path / "ckpt2"), ridge=str(ridge), **common)
    assert str(ridge) in str(error.value)


def test_a_refitted_baseline_does_not_resume_the_old_prior_s_checkpoint(tmp_path, caplog):
    """Snakemake reruns train_decoder when fit_baseline's output changes (other alphas, say); the
    checkpoint beside the output was trained on the old prior and must not be resumed as if finished."""
    import logging

    from cortexflow.stages.baseline import fit_baseline_stage
    from cortexflow.stages.decoder import train_decoder_stage

    stimuli = _vae_and_latents(tmp_path)
    dataset = _dataset(tmp_path / "ds", [f"img-{n}" for n in range(10)] * 2, ["img-10", "img-11"])
    common = dict(dataset=str(dataset), modality="image", latents=str(tmp_path / "latents.npz"),
                  vae=str(tmp_path / "vae.pt"), stimuli=str(stimuli), checkpoint_dir=str(tmp_path / "ckpt"),
                  params={"image": {"hidden_dim": 32, "depth": 1, "num_heads": 2, "n_tokens": 2, "steps": 2,
                                    "batch_size": 4, "warmup_steps": 1}})
    ridge = tmp_path / "ridge.npz"

    def train(alphas):
        fit_baseline_stage(dataset=str(dataset), out=str(ridge), params={"cv_folds": 3, "alphas": alphas},
                           latents=str(tmp_path / "latents.npz"))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="cortexflow.training.trainer"):
            train_decoder_stage(out=str(tmp_path / "decoder.pt"), ridge=str(ridge), **common)
        return caplog.text

    train([1.0])
    assert "resumed" in train([1.0]).lower()  # same inputs: the finished checkpoint is reused
    log = train([1e4])  # another prior
    assert "not resuming" in log and "run tag" in log


def test_pretrain_vae_interrupted_and_rerun_ends_with_the_uninterrupted_weights(tmp_path, monkeypatch):
    """pretrain_vae checkpoints beside its output: a job stopped by a time limit (SIGTERM) after
    step 3 of 6 resumes there on the rerun and ends with the weights of a run never stopped;
    a changed setting trains from scratch."""
    import os
    import signal

    import pytest

    from cortexflow.training import TrainingInterrupted
    from cortexflow.training import trainer as trainer_module

    stimuli = _stimuli(tmp_path)
    params = {"image": {"hidden_dims": [8, 16], "steps": 6, "batch_size": 4, "warmup_steps": 1}}
    pretrain_vae_stage(stimuli=str(stimuli), modality="image", out=str(tmp_path / "full.pt"), params=params, seed=7)

    ckpt = tmp_path / "checkpoints" / "vae_image"
    real_step = trainer_module.Trainer._step

    def step_then_sigterm_at_3(self, batch, loss_fn):
        loss = real_step(self, batch, loss_fn)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(trainer_module.Trainer, "_step", step_then_sigterm_at_3)
    out = tmp_path / "resumed.pt"
    with pytest.raises(TrainingInterrupted, match="step 3"):
        pretrain_vae_stage(stimuli=str(stimuli), modality="image", out=str(out), params=params, seed=7,
                           checkpoint_dir=str(ckpt))
    assert not out.exists() and (ckpt / "last.pt").exists()  # the checkpoint, not the output
    assert torch.load(ckpt / "last.pt", weights_only=True)["step"] == 3
    monkeypatch.setattr(trainer_module.Trainer, "_step", real_step)

    torch.manual_seed(123)  # a new process: another global seed
    steps_run = []
    monkeypatch.setattr(trainer_module.Trainer, "_step",
                        lambda self, b, f: (steps_run.append(self.step), real_step(self, b, f))[1])
    pretrain_vae_stage(stimuli=str(stimuli), modality="image", out=str(out), params=params, seed=7,
                       checkpoint_dir=str(ckpt))
    assert steps_run == [3, 4, 5]  # resumed at step 3
    a, b = load_model(tmp_path / "full.pt").state_dict(), load_model(out).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    steps_run.clear()  # another learning rate: the checkpoint is stale, training starts afresh
    other = {"image": {**params["image"], "learning_rate": 1e-3}}
    pretrain_vae_stage(stimuli=str(stimuli), modality="image", out=str(tmp_path / "other.pt"), params=other, seed=7,
                       checkpoint_dir=str(ckpt))
    assert steps_run == list(range(6))
