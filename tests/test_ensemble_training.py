"""The stacked seed ensemble (cortexflow.training.ensemble, issue 24) trains each member
into the model its seed's own run gives.

Reference: each seed trained alone by ``Trainer.fit``, built and fed as the
``train_decoder`` stage builds and feeds it (``build_brain_encoder``,
``_build_flow_decoder``, ``_training_config``, ``latent_flow_batches``), with the
stage's default regularisation on (voxel and hidden dropout, condition dropout,
prior conditioning, EMA with warm-up, gradient clipping, weight decay groups).

Tolerance: ``rtol=1e-4, atol=1e-5`` on every weight and EMA weight after 30
steps. The members' random numbers are bit-for-bit their single runs' (same
generator streams, same draws); what differs is the order of float additions in
batched matmuls, per-member loss means and gradient norms, so the runs drift
apart by rounding only (measured: at most ~5e-7 on weights of order 0.1-1 after
30 steps, against ~0.1-1 between members), far inside the tolerance and far
outside what a shared initialisation or data order gives (the negative controls).
"""

from __future__ import annotations

import torch

from cortexflow.models.params import DecoderParams
from cortexflow.models.vae import LatentVAE, VAEConfig
from cortexflow.stages.decoder import _build_flow_decoder, _training_config, build_brain_encoder, latent_flow_batches
from cortexflow.training.ensemble import EnsembleTrainer, train_ensemble
from cortexflow.training.trainer import Trainer, seed_everything

N_VOXELS, N_TRIALS, STEPS = 40, 48, 30
SEEDS = [3, 4, 5]
RTOL, ATOL = 1e-4, 1e-5
PARAMS = DecoderParams(hidden_dim=32, depth=2, num_heads=2, n_tokens=4, steps=STEPS, batch_size=8, warmup_steps=5,
                       learning_rate=1e-3, checkpoint_every=1000)


def _data():
    g = torch.Generator().manual_seed(99)
    X = torch.randn(N_TRIALS, N_VOXELS, generator=g)
    Y = torch.randn(N_TRIALS, 2, 4, 4, generator=g)
    prior = torch.randn(N_TRIALS, 2, 4, 4, generator=g)
    return X, Y, prior


def _build(seed: int, Y: torch.Tensor):
    """A member as train_decoder builds it: global seeding, then the VAE and the encoder and the DiT."""
    seed_everything(seed)
    vae = LatentVAE(VAEConfig(in_channels=1, latent_channels=2, hidden_dims=[8]))
    model = _build_flow_decoder("image", PARAMS, N_VOXELS, vae, {"image_size": 8},
                                build_brain_encoder(PARAMS, N_VOXELS))
    model.set_latent_stats(Y)
    return model


def _single(seed: int, X, Y, prior, steps=STEPS):
    model = _build(seed, Y)
    batch_fn, loss_fn = latent_flow_batches(X, Y, PARAMS.batch_size, seed, prior=prior)
    trainer = Trainer(model, _training_config(PARAMS, seed, "cpu"))
    trainer.fit(batch_fn, steps=steps, loss_fn=loss_fn, progress=False)
    return model, trainer


def _ensemble(X, Y, prior, batch_seeds=SEEDS, init_seeds=SEEDS, steps=STEPS, checkpoint_dir=None):
    models = [_build(s, Y) for s in init_seeds]
    fns = [latent_flow_batches(X, Y, PARAMS.batch_size, s, prior=prior)[0] for s in batch_seeds]
    return train_ensemble(models, [_training_config(PARAMS, s, "cpu") for s in SEEDS], fns, steps=steps,
                          checkpoint_dir=checkpoint_dir)


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _weights(model) -> dict:
    return {n: p.detach() for n, p in model.named_parameters()}


def test_each_member_is_its_single_run():
    X, Y, prior = _data()
    ens, result = _ensemble(X, Y, prior)
    assert result.final_step == STEPS
    for m, seed in enumerate(SEEDS):
        single, trainer = _single(seed, X, Y, prior)
        member = _weights(ens.member(m))
        for name, w in _weights(single).items():
            torch.testing.assert_close(member[name], w, rtol=RTOL, atol=ATOL, msg=f"seed {seed}: {name}")
        ema = _weights(ens.ema_member(m))
        for name, w in trainer.ema.shadow.items():
            torch.testing.assert_close(ema[name], w, rtol=RTOL, atol=ATOL, msg=f"seed {seed}: EMA {name}")
        # the losses it logged are its single run's (same batches, same noise)
        mine = [r[1] for r in ens.curves[m].rows]
        theirs = [r[1] for r in trainer.curve.rows]
        assert len(mine) == len(theirs)
        torch.testing.assert_close(torch.tensor(mine), torch.tensor(theirs), rtol=RTOL, atol=ATOL)
    # the members are different models (own initialisation, data, noise): far beyond the tolerance
    assert _max_diff(_weights(ens.member(0)), _weights(ens.member(1))) > 1e-2


def test_shared_data_order_or_initialisation_would_be_caught():
    """Negative controls: the comparison above fails when a member gets another seed's batches
    or another seed's initial weights (so it checks what it claims to)."""
    X, Y, prior = _data()
    single, _ = _single(SEEDS[1], X, Y, prior, steps=10)
    reference = _weights(single)
    same_data, _ = _ensemble(X, Y, prior, batch_seeds=[SEEDS[0]] * 3, steps=10)
    same_init, _ = _ensemble(X, Y, prior, init_seeds=[SEEDS[0]] * 3, steps=10)
    for ens in (same_data, same_init):
        assert _max_diff(_weights(ens.member(1)), reference) > 100 * ATOL


def test_resumed_ensemble_equals_uninterrupted(tmp_path):
    X, Y, prior = _data()
    whole, _ = _ensemble(X, Y, prior, steps=20)
    _ensemble(X, Y, prior, steps=12, checkpoint_dir=tmp_path)  # stopped at step 12, checkpointed
    resumed, result = _ensemble(X, Y, prior, steps=20, checkpoint_dir=tmp_path)
    assert result.resumed and result.start_step == 12
    for m in range(len(SEEDS)):
        assert _max_diff(_weights(resumed.ema_member(m)), _weights(whole.ema_member(m))) == 0.0
        assert [r[:4] for r in resumed.curves[m].rows] == [r[:4] for r in whole.curves[m].rows]


def test_sigterm_checkpoints_and_a_rerun_resumes_to_the_same_models(tmp_path):
    """A time limit's SIGTERM mid-run: the ensemble checkpoints after the step in progress and raises
    TrainingInterrupted (the command exits 143); run again, it ends with the uninterrupted run's weights."""
    import os
    import signal

    import pytest

    from cortexflow.training.trainer import TrainingInterrupted

    X, Y, prior = _data()
    whole, _ = _ensemble(X, Y, prior, steps=20)
    models = [_build(s, Y) for s in SEEDS]
    fns = [latent_flow_batches(X, Y, PARAMS.batch_size, s, prior=prior)[0] for s in SEEDS]

    def killed_at_7(step, generator, fn=fns[0]):
        if step == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return fn(step, generator)

    trainer = EnsembleTrainer(models, [_training_config(PARAMS, s, "cpu") for s in SEEDS])
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match="step 8"):
        trainer.fit([killed_at_7, *fns[1:]], steps=20, checkpoint_dir=tmp_path)
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    resumed, result = _ensemble(X, Y, prior, steps=20, checkpoint_dir=tmp_path)
    assert result.resumed and result.start_step == 8
    for m in range(len(SEEDS)):
        assert _max_diff(_weights(resumed.ema_member(m)), _weights(whole.ema_member(m))) == 0.0


def test_members_must_share_settings():
    import pytest

    from cortexflow.errors import CortexflowInputError

    X, Y, prior = _data()
    models = [_build(s, Y) for s in SEEDS[:2]]
    configs = [_training_config(PARAMS, SEEDS[0], "cpu"), _training_config(PARAMS, SEEDS[1], "cpu")]
    configs[1].learning_rate = 2e-3
    with pytest.raises(CortexflowInputError, match="learning_rate"):
        EnsembleTrainer(models, configs)


def _stage_inputs(tmp_path):
    """What the decoder stages read, tiny: the stimuli (VAE and latents beside them), a dataset, the ridge prior."""
    from test_training_stages import _dataset, _vae_and_latents

    from cortexflow.stages.baseline import fit_baseline_stage

    stimuli = _vae_and_latents(tmp_path)
    dataset = _dataset(tmp_path / "ds", [f"img-{n}" for n in range(10)] * 2, ["img-10", "img-11"])
    ridge = tmp_path / "ridge.npz"
    fit_baseline_stage(dataset=str(dataset), out=str(ridge), params={"cv_folds": 3, "alphas": [1.0, 10.0]},
                       latents=str(tmp_path / "latents.npz"))
    return stimuli, dataset, ridge


def test_stage_level_ensemble_writes_each_seed_s_train_decoder_model(tmp_path):
    """train_decoder_seeds (here through the ``cortexflow`` command, as its rule runs it) writes, per seed,
    the model train_decoder writes for that seed (to tolerance), with its curve and final loss."""
    import json

    from cortexflow.models.io import load_model
    from cortexflow.stages.decoder import train_decoder_stage
    from cortexflow.cli import main

    stimuli, dataset, ridge = _stage_inputs(tmp_path)
    params = {"image": {"hidden_dim": 32, "depth": 1, "num_heads": 2, "n_tokens": 2, "steps": 12,
                        "batch_size": 4, "warmup_steps": 2}}
    common = dict(dataset=str(dataset), modality="image", params=params, latents=str(tmp_path / "latents.npz"),
                  vae=str(tmp_path / "vae.pt"), ridge=str(ridge))
    seeds = [0, 1]
    outs = [str(tmp_path / f"ens{s}.pt") for s in seeds]
    torch.manual_seed(123)  # a process's random start must not matter
    assert main(["train-decoder-seeds", "--dataset", str(dataset), "--modality", "image", "--stimuli", str(stimuli),
                 "--latents", str(tmp_path / "latents.npz"), "--vae", str(tmp_path / "vae.pt"), "--ridge", str(ridge),
                 "--seeds", *map(str, seeds), "--outs", *outs, "--checkpoint-dir", str(tmp_path / "ens_ckpt"),
                 "--params", json.dumps(params), "--device", "cpu"]) == 0
    for seed, out in zip(seeds, outs):
        single = tmp_path / f"single{seed}.pt"
        train_decoder_stage(out=str(single), seed=seed, checkpoint_dir=str(tmp_path / f"ckpt{seed}"),
                            stimuli=str(stimuli), **common)
        a, b = load_model(out).state_dict(), load_model(single).state_dict()
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=RTOL, atol=ATOL, msg=f"seed {seed}: {k}")
        assert (tmp_path / f"ens{seed}_curve.parquet").is_file()
        ens_extra, single_extra = load_model(out, return_extra=True)[1], load_model(single, return_extra=True)[1]
        assert ens_extra["params"] == single_extra["params"] and ens_extra["vae_extra"] == single_extra["vae_extra"]
        assert abs(ens_extra["final_loss"] - single_extra["final_loss"]) < 1e-4
    a, b = (load_model(o).state_dict() for o in outs)
    assert max((a[k] - b[k]).abs().max().item() for k in a if k.startswith("dit.")) > 1e-2


def test_with_cuda_the_stage_trains_the_seeds_in_turn_as_train_decoder_would(tmp_path, monkeypatch):
    """Where the job finds CUDA (device auto on a GPU machine), train_decoder_seeds trains each seed as
    train_decoder does, each in a checkpoint folder of its own that the others' pruning leaves alone.
    Here the device check answers cuda and the runs themselves train on the CPU: the same bytes as
    train_decoder's."""
    import cortexflow.stages.params as stage_params
    from cortexflow.models.io import load_model
    from cortexflow.stages.decoder import train_decoder_stage
    from cortexflow.stages.decoder_seeds import train_decoder_seeds_stage

    stimuli, dataset, ridge = _stage_inputs(tmp_path)
    params = {"image": {"hidden_dim": 32, "depth": 1, "num_heads": 2, "n_tokens": 2, "steps": 6,
                        "batch_size": 4, "warmup_steps": 2, "checkpoint_every": 3}}
    common = dict(dataset=str(dataset), modality="image", params=params,
                  latents=str(tmp_path / "latents.npz"), vae=str(tmp_path / "vae.pt"), ridge=str(ridge),
                  stimuli=str(stimuli), device="cpu")
    seeds, outs = [0, 1], [str(tmp_path / f"gpu{s}.pt") for s in (0, 1)]
    monkeypatch.setattr(stage_params, "resolve_device", lambda device: torch.device("cuda"))
    train_decoder_seeds_stage(outs=outs, seeds=seeds, checkpoint_dir=str(tmp_path / "key"), **common)
    monkeypatch.undo()
    for seed in seeds:
        assert (tmp_path / "key" / f"seed{seed}" / "run" / "last.pt").is_file()  # not pruned by the other seed
    for seed, out in zip(seeds, outs):
        single = tmp_path / f"single{seed}.pt"
        train_decoder_stage(out=str(single), seed=seed, checkpoint_dir=str(tmp_path / "singles" / f"ckpt{seed}"),
                            **common)
        a, b = load_model(out).state_dict(), load_model(single).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), seed
