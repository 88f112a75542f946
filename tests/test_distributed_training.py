"""Data-parallel training on CPU: two gloo processes follow one process's run.

Each test spawns real processes (torch.multiprocessing) that join a gloo
process group the way torchrun's environment makes them join
(``cortexflow.training.distributed.init_from_env``).
"""

from __future__ import annotations

import os
import signal
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from cortexflow.training.trainer import Trainer, TrainingConfig, TrainingInterrupted, batch_indices

N_ITEMS, N_FEATURES, BATCH = 48, 6, 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Regression(nn.Module):
    """A deterministic loss (no dropout, no noise): one process and two must agree to rounding."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(N_FEATURES, 16), nn.Tanh(), nn.Linear(16, 1))

    def training_loss(self, x, y):
        return ((self.net(x).squeeze(-1) - y) ** 2).mean()


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_ITEMS, N_FEATURES, generator=g)
    return x, torch.sin(x.sum(1))


def _run(steps: int, accum: int = 1, checkpoint_dir=None, seed: int = 0, sigterm_at: int | None = None):
    x, y = _data()
    torch.manual_seed(seed)
    model = Regression()
    cfg = TrainingConfig(learning_rate=1e-2, batch_size=BATCH, warmup_steps=2, max_steps=10, use_ema=True,
                         ema_decay=0.9, device="cpu", seed=seed, log_every=3, checkpoint_every=3,
                         grad_accum_steps=accum)
    trainer = Trainer(model, cfg)

    def batch_fn(step, generator):
        if step == sigterm_at:  # what a time limit does to this process, while it draws batch `step`
            os.kill(os.getpid(), signal.SIGTERM)
        idx = batch_indices(step, N_ITEMS, BATCH, seed)
        return x[idx], y[idx]

    result = trainer.fit(batch_fn, steps=steps, checkpoint_dir=checkpoint_dir, progress=False)
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    return result.losses, params


def _worker(rank: int, world: int, port: int, out_dir: str, task: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from cortexflow.training.distributed import init_from_env

    ctx, device = init_from_env("cpu")
    assert ctx.world_size == world and ctx.rank == rank and device == "cpu"
    try:
        if task == "curve":
            losses, params = _run(10)
        elif task == "resume":
            full_losses, full_params = _run(10)
            torch.save({"losses": full_losses, "params": full_params}, os.path.join(out_dir, f"full-rank{rank}.pt"))
            ckpt = os.path.join(out_dir, "ckpt")
            _run(6, checkpoint_dir=ckpt)  # stops at step 6 (a killed job)...
            losses, params = _run(10, checkpoint_dir=ckpt)  # ... and a rerun resumes
        elif task == "no_cond_drop":
            losses, params = _decoder_run(cond_drop_prob=0.0)
        else:
            losses, params = _decoder_run()
        torch.save({"losses": losses, "params": params}, os.path.join(out_dir, f"{task}-rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _decoder_run(cond_drop_prob: float = 0.1):
    """The real image decoder under DDP (random times and noise in its loss, dropout, a frozen VAE)."""
    from cortexflow.models.brain2img import build_brain2img
    from cortexflow.models.types import BrainData

    torch.manual_seed(0)
    model = build_brain2img(n_voxels=20, img_size=16, hidden_dim=32, depth=1, num_heads=2, in_channels=1,
                            vae_hidden_dims=(8, 8), prior_conditioning=True, cond_drop_prob=cond_drop_prob)
    g = torch.Generator().manual_seed(1)
    voxels, latents = torch.randn(32, 20, generator=g), torch.randn(32, 4, 4, 4, generator=g)
    cfg = TrainingConfig(learning_rate=1e-3, batch_size=8, warmup_steps=1, max_steps=4, device="cpu", log_every=2)

    def batch_fn(step, generator):
        idx = batch_indices(step, 32, 8, 0)
        return latents[idx], BrainData(voxels=voxels[idx], prior=latents[idx] * 0.5)

    result = Trainer(model, cfg).fit(batch_fn, loss_fn=lambda m, b: m.training_loss_latents(*b), progress=False)
    return result.losses, torch.cat([p.detach().flatten() for p in model.parameters()])


def _spawn(tmp_path, task: str, world: int = 2) -> list[dict]:
    mp.start_processes(_worker, args=(world, _free_port(), str(tmp_path), task), nprocs=world, join=True,
                       start_method="spawn")
    return [torch.load(tmp_path / f"{task}-rank{r}.pt") for r in range(world)]


def test_two_gloo_processes_follow_the_one_process_loss_curve(tmp_path):
    one_losses, one_params = _run(10)
    ranks = _spawn(tmp_path, "curve")
    for r in ranks:  # every rank logs the global (all-reduced) loss and holds the same weights
        assert len(r["losses"]) == 10
        torch.testing.assert_close(torch.tensor(r["losses"]), torch.tensor(one_losses), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["params"], one_params, rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    initial = torch.cat([p.detach().flatten() for p in Regression().parameters()])
    assert (one_params - initial).abs().max() > 1e-3  # the weights did move


def test_two_processes_resume_exactly(tmp_path):
    resumed = _spawn(tmp_path, "resume")
    uninterrupted = [torch.load(tmp_path / f"full-rank{r}.pt") for r in range(2)]
    assert (tmp_path / "ckpt" / "last.pt").exists()
    for a, b in zip(uninterrupted, resumed):
        assert b["losses"] == a["losses"][6:]
        assert torch.equal(a["params"], b["params"])


def test_the_image_decoder_trains_under_ddp(tmp_path):
    ranks = _spawn(tmp_path, "decoder")
    assert len(ranks[0]["losses"]) == 4 and all(torch.isfinite(torch.tensor(ranks[0]["losses"])))
    assert ranks[0]["losses"] == ranks[1]["losses"]  # the all-reduced loss
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])  # DDP kept the replicas in step


def test_without_condition_dropout_the_decoder_trains_under_ddp(tmp_path):
    """cond_drop_prob: 0 left the null condition a trainable parameter that no loss reaches, and DDP
    stopped at the second step ("Expected to have finished reduction ...")."""
    ranks = _spawn(tmp_path, "no_cond_drop")
    assert len(ranks[0]["losses"]) == 4 and all(torch.isfinite(torch.tensor(ranks[0]["losses"])))
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])


def _sigterm_worker(rank: int, world: int, port: int, out_dir: str):
    """Rank 1 gets SIGTERM while it draws batch 4, rank 0 would get it a step later (batch 5)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    # a short timeout: ranks that fall out of step fail in seconds instead of hanging for 30 minutes
    dist.init_process_group("gloo", timeout=timedelta(seconds=20))
    try:
        full_losses, full_params = _run(10)
        ckpt = os.path.join(out_dir, "ckpt")
        try:
            _run(10, checkpoint_dir=ckpt, sigterm_at={0: 5, 1: 4}[rank])
            stopped = "not stopped"
        except TrainingInterrupted as e:
            stopped = str(e)
        written = torch.load(os.path.join(ckpt, "last.pt"), weights_only=True)["step"]
        losses, params = _run(10, checkpoint_dir=ckpt)  # the rerun
        torch.save({"stopped": stopped, "written": written, "losses": losses, "params": params,
                    "full_losses": full_losses, "full_params": full_params},
                   os.path.join(out_dir, f"sigterm-rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_sigterm_one_step_apart_stops_every_rank_after_the_same_step_and_resumes_exactly(tmp_path):
    """A time limit's SIGTERM reaches the processes at different steps. Each stopping on its own
    entered other collectives than the rest (no checkpoint, a crash); they vote after every step,
    so all stop after step 5 (the step during which rank 1 was signalled), rank 0 writes the
    checkpoint off-schedule (checkpoint_every=3), and the rerun continues exactly."""
    mp.start_processes(_sigterm_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    ranks = [torch.load(tmp_path / f"sigterm-rank{r}.pt") for r in range(2)]
    for r in ranks:
        assert "SIGTERM at step 5" in r["stopped"] and r["written"] == 5
        assert r["losses"] == r["full_losses"][5:]
        assert torch.equal(r["params"], r["full_params"])
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])


def test_gradient_accumulation_follows_the_full_batch():
    full_losses, full_params = _run(10)
    acc_losses, acc_params = _run(10, accum=4)
    torch.testing.assert_close(torch.tensor(acc_losses), torch.tensor(full_losses), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(acc_params, full_params, rtol=1e-5, atol=1e-6)


def test_a_batch_that_does_not_split_evenly_is_an_input_error():
    from cortexflow.errors import CortexflowInputError

    with pytest.raises(CortexflowInputError, match="multiple of 3"):
        _run(1, accum=3)


def test_no_host_sync_per_step(monkeypatch):
    """Losses are read back once per log interval, not once per step (cortexflow calls no .item())."""
    import traceback

    calls = {"n": 0}
    real = torch.Tensor.tolist

    def counting_tolist(self):
        calls["n"] += 1
        return real(self)

    item_calls = {"n": 0}
    real_item = torch.Tensor.item

    def counting_item(self):
        # torch's own CPU AdamW reads its step counter with .item() (the fused CUDA one does not)
        caller = traceback.extract_stack()[-2].filename
        item_calls["n"] += "/cortexflow/" in caller
        return real_item(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    losses, _ = _run(9)  # log_every=3 -> 3 read-backs
    assert len(losses) == 9
    assert calls["n"] == 3 and item_calls["n"] == 0


def test_torch_compile_option_trains_like_eager():
    import shutil

    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    if not os.environ.get("CORTEXFLOW_TEST_COMPILE"):
        pytest.skip("compiling takes about 70 s on the 2-core test machine (measured); "
                    "set CORTEXFLOW_TEST_COMPILE=1 to run it")
    x, y = _data()
    losses = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = Regression()
        cfg = TrainingConfig(learning_rate=1e-2, batch_size=BATCH, warmup_steps=2, max_steps=4, use_ema=False,
                             device="cpu", compile=compiled, log_every=4)
        trainer = Trainer(model, cfg)
        losses[compiled] = trainer.fit(lambda s, g: (x[batch_indices(s, N_ITEMS, BATCH, 0)],
                                                     y[batch_indices(s, N_ITEMS, BATCH, 0)]), progress=False).losses
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=1e-4, atol=1e-5)


def test_torchrun_passes_the_stage_options_of_the_workflow_s_launcher_to_the_stage():
    """decoder_launcher's command, parsed by torchrun's own parser: without `--` after its options,
    torchrun reads the stage's `--log` as one of its own and stops ("ambiguous option")."""
    import re
    import shlex
    from pathlib import Path

    from torch.distributed.run import get_args_parser

    common = (Path(__file__).resolve().parents[1] / "workflow" / "rules" / "common.smk").read_text()
    launcher = re.search(r'return f"(torchrun [^"]+)"', common).group(1).replace("{n_gpus}", "2")
    stage = ["train-decoder", "--dataset", "d", "--out", "o.pt", "--seed", "0", "--device", "cuda", "--log", "x.log"]
    args = get_args_parser().parse_args(shlex.split(launcher)[1:] + stage)
    assert args.nproc_per_node == "2" and args.no_python and args.training_script == "cortexflow"
    assert args.training_script_args == stage
