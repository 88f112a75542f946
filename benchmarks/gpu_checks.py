"""The checks of benchmarks/gpu_smoke.sh that need no Snakemake: kill and resume a
training run, train_decoder under torchrun, and one NSD-size training step.

    python benchmarks/gpu_checks.py prepare WORK               # tiny inputs of train_decoder (CPU, seconds)
    python benchmarks/gpu_checks.py kill-resume WORK --device cuda
    python benchmarks/gpu_checks.py torchrun WORK --device cuda --nproc 2
    python benchmarks/gpu_checks.py step --device cuda --size nsd

Each check prints one ``FIGURE`` line and, with ``--table FILE``, appends a row to
a Markdown table that gpu_smoke.sh prints at the end; a failed check exits 1.

- ``prepare`` writes what ``train_decoder`` reads, made here without Snakemake
  or the study simulator: 48 random 16 px images (stimuli.tsv), a make_dataset
  folder of random voxels, and a VAE and latent cache made by the real
  ``pretrain_vae`` and ``encode_latents`` stages.
- ``kill-resume`` starts ``cortexflow train-decoder`` as its own process, sends
  SIGTERM (what a SLURM time limit sends) once the first checkpoint is on disk,
  checks that the process stopped with "SIGTERM at step k", runs the same command
  again and checks that it "resumed ... at step k" and finished; then trains the
  same decoder uninterrupted and compares the weights (bit-identical on the CPU;
  on a GPU the difference is printed, since CUDA's backward kernels need not be
  deterministic).
- ``torchrun`` runs ``train-decoder`` under ``torchrun --nproc-per-node N`` and
  checks that the trainer ran data-parallel over N processes. NCCL refuses two
  processes on one GPU (NCCL >= 2.5: "Duplicate GPU detected"), so on a machine
  with fewer GPUs than processes this check runs the processes on the CPU (gloo)
  and says so.
- ``step`` times the training step of the image decoder of docs/nsd-scale.yaml
  (15,000 voxels, 256 px images, DiT-B/2-like, batch 256 in bf16 autocast; halved
  until it fits) or, with ``--size small``, of a tiny one: median of the timed
  steps after warm-up, peak memory, FLOPs of one step counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (matrix products, convolutions,
  attention: the forward and backward passes), achieved TFLOP/s and its share of
  the card's dense bf16 peak (a table of known cards; ``GPU_BF16_PEAK_TFLOPS``
  overrides).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Dense bf16 tensor-core peak (TFLOP/s, no sparsity) by the name torch reports; the first match counts.
BF16_PEAK_TFLOPS = [
    ("H200", 989.4), ("GH200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4),
    ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.1), ("L40", 181.0), ("L4", 121.0),
    ("A10G", 70.0), ("A10", 125.0), ("A6000", 154.8), ("RTX 4090", 165.2), ("RTX 3090", 71.0),
]

DECODER = {"hidden_dim": 32, "depth": 2, "num_heads": 2, "n_tokens": 4, "batch_size": 8, "warmup_steps": 5,
           "learning_rate": 1e-3, "prior_conditioning": False, "ema_decay": 0.99}


def _row(table: Path | None, check: str, result: str, seconds: float, detail: str) -> None:
    print(f"FIGURE {check}: {result} in {seconds:.1f} s; {detail}", flush=True)
    if table is not None:
        with open(table, "a") as f:
            f.write(f"| {check} | {result} | {seconds:.1f} | {detail} |\n")


# ----------------------------------------------------------------------------- inputs


def prepare(work: Path, n_images: int = 48, size: int = 16, n_voxels: int = 40) -> dict[str, str]:
    """The inputs of train_decoder for the image modality, in ``work``."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from cortexflow.stages.vae import encode_latents_stage, pretrain_vae_stage

    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = work / "stimuli" / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in range(n_images):
        Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8), mode="L").save(images / f"img-{n}.png")
        rows.append({"stimulus_id": f"img-{n}", "modality": "image", "path": f"images/img-{n}.png",
                     "split": "train" if n < n_images - 8 else "test"})
    stimuli = work / "stimuli" / "stimuli.tsv"
    pd.DataFrame(rows).to_csv(stimuli, sep="\t", index=False)

    from bench_memory import write_random_dataset  # benchmarks/ is on sys.path: scripts run from there

    dataset = write_random_dataset(work / "dataset", [r["stimulus_id"] for r in rows if r["split"] == "train"],
                                   [r["stimulus_id"] for r in rows if r["split"] == "test"], n_voxels=n_voxels,
                                   n_repeats=2, seed=1)

    vae_params = {"image": {"hidden_dims": [8, 16], "steps": 20, "batch_size": 8, "warmup_steps": 2}}
    vae, latents = work / "vae_image.pt", work / "latents_image.npz"
    pretrain_vae_stage(stimuli=str(stimuli), modality="image", out=str(vae), params=vae_params, device="cpu")
    encode_latents_stage(stimuli=str(stimuli), modality="image", vae=str(vae), out=str(latents), params=vae_params,
                         device="cpu")
    paths = {"stimuli": str(stimuli), "dataset": str(dataset), "vae": str(vae), "latents": str(latents)}
    (work / "inputs.json").write_text(json.dumps(paths))
    return paths


def _inputs(work: Path) -> dict[str, str]:
    path = work / "inputs.json"
    return json.loads(path.read_text()) if path.is_file() else prepare(work)


def decoder_command(work: Path, device: str, steps: int, checkpoint_every: int, out: Path, ckpt: Path,
                    log: Path, launcher: list[str] | None = None) -> list[str]:
    """``cortexflow train-decoder`` for the tiny image decoder on ``work``'s inputs."""
    inputs = _inputs(work)
    params = {"image": {**DECODER, "steps": steps, "checkpoint_every": checkpoint_every}}
    launcher = launcher or [sys.executable, "-m", "cortexflow.cli"]
    return [*launcher, "train-decoder", "--dataset", inputs["dataset"], "--modality", "image",
            "--stimuli", inputs["stimuli"], "--latents", inputs["latents"], "--vae", inputs["vae"],
            "--out", str(out), "--checkpoint-dir", str(ckpt), "--params", json.dumps(params), "--seed", "0",
            "--threads", "1", "--device", device, "--log", str(log)]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


# ----------------------------------------------------------------------------- kill and resume


def kill_resume(work: Path, device: str, steps: int = 600, checkpoint_every: int = 25, timeout: float = 240.0,
                table: Path | None = None) -> dict:
    """SIGTERM a training run after its first checkpoint, rerun it, check that it resumed and finished."""
    import torch

    from cortexflow.models.io import load_model

    started = time.perf_counter()
    run = work / f"kill_resume_{device.replace(':', '')}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    out, ckpt = run / "decoder.pt", run / "checkpoints"
    first_log, second_log = run / "first.log", run / "second.log"
    cmd = decoder_command(work, device, steps, checkpoint_every, out, ckpt, first_log)
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while not (ckpt / "last.pt").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"no checkpoint appeared (exit {proc.returncode}):\n{proc.communicate()[0][-3000:]}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=timeout)[0]
    text = first_log.read_text() if first_log.exists() else output
    stopped = re.search(r"SIGTERM at step (\d+)", text)
    if proc.returncode == 0 or stopped is None:
        raise RuntimeError(f"the run was not stopped by SIGTERM (exit {proc.returncode}); it must be killed "
                           f"mid-run: raise --steps\n{output[-3000:]}")
    k = int(stopped.group(1))
    if out.exists() or not 0 < k < steps:
        raise RuntimeError(f"stopped at step {k} of {steps} but {'the output exists' if out.exists() else 'out of range'}")

    cmd = decoder_command(work, device, steps, checkpoint_every, out, ckpt, second_log)
    second = subprocess.run(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=timeout)
    text = second_log.read_text() if second_log.exists() else second.stdout
    resumed = re.search(r"resumed \S+ at step (\d+)", text)
    finished = re.search(rf"trained steps (\d+)-{steps}\b", text)
    if second.returncode != 0 or resumed is None or int(resumed.group(1)) != k or finished is None or not out.exists():
        raise RuntimeError(f"the rerun did not resume at step {k} and finish (exit {second.returncode}):\n"
                           f"{second.stdout[-3000:]}")

    whole = run / "uninterrupted"
    cmd = decoder_command(work, device, steps, checkpoint_every, whole / "decoder.pt", whole / "checkpoints",
                          whole / "log.txt")
    subprocess.run(cmd, env=_env(), check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    a, b = load_model(out).state_dict(), load_model(whole / "decoder.pt").state_dict()
    max_diff = max(float((a[n].float() - b[n].float()).abs().max()) if a[n].numel() else 0.0 for n in a)
    identical = all(torch.equal(a[n], b[n]) for n in a)
    if device == "cpu" and not identical:
        raise RuntimeError(f"the resumed run's weights differ from the uninterrupted run's (max |diff| {max_diff:.3g})")
    result = {"stopped_at": k, "steps": steps, "identical": identical, "max_abs_diff": max_diff,
              "seconds": time.perf_counter() - started}
    _row(table, f"kill and resume ({device})", "ok", result["seconds"],
         f"SIGTERM at step {k} of {steps}, rerun resumed at {k} and finished; weights vs uninterrupted run: "
         + ("bit-identical" if identical else f"max abs diff {max_diff:.2g}"))
    return result


# ----------------------------------------------------------------------------- torchrun


def torchrun(work: Path, device: str, nproc: int = 2, steps: int = 40, timeout: float = 300.0,
             table: Path | None = None) -> dict:
    """train-decoder under torchrun with ``nproc`` processes; checks the trainer ran over all of them."""
    import torch

    started = time.perf_counter()
    note = ""
    if device.startswith("cuda") and torch.cuda.device_count() < nproc:
        note = (f"{torch.cuda.device_count()} GPU(s) for {nproc} processes: NCCL refuses two processes on one GPU "
                f"('Duplicate GPU detected'), so the processes ran on the CPU (gloo); ")
        device = "cpu"
    run = work / f"torchrun_{device.replace(':', '')}_{nproc}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    out, log = run / "decoder.pt", run / "log.txt"
    # as the workflow's decoder_launcher starts it (`--` ends torchrun's options)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                "--nproc-per-node", str(nproc), "--no-python", "--", sys.executable, "-m", "cortexflow.cli"]
    cmd = decoder_command(work, device, steps, steps, out, run / "checkpoints", log, launcher)
    proc = subprocess.run(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    text = (log.read_text() if log.exists() else "") + proc.stdout
    ddp = re.search(rf"trainer: (\S+) x {nproc} processes \(DDP\)", text)
    if proc.returncode != 0 or ddp is None or not out.exists():
        raise RuntimeError(f"torchrun train-decoder failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")
    backend = "nccl" if ddp.group(1).startswith("cuda") else "gloo"
    result = {"nproc": nproc, "device": ddp.group(1), "backend": backend, "seconds": time.perf_counter() - started}
    _row(table, f"torchrun train-decoder x{nproc}", "ok", result["seconds"],
         f"{note}rank 0 on {ddp.group(1)} ({backend}), {steps} steps, decoder written")
    return result


# ----------------------------------------------------------------------------- one training step


def _peak_tflops(device) -> float | None:
    import torch

    if os.environ.get("GPU_BF16_PEAK_TFLOPS"):
        return float(os.environ["GPU_BF16_PEAK_TFLOPS"])
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in name), None)


def _small_model(device):
    import torch

    from cortexflow.stages.decoder import _build_flow_decoder
    from cortexflow.stages.params import DecoderParams, VAEParams
    from cortexflow.stages.vae import _build_vae

    torch.manual_seed(0)
    vae = _build_vae("image", VAEParams(hidden_dims=[8, 16]), in_channels=3)
    p = DecoderParams(hidden_dim=32, depth=2, num_heads=2, n_tokens=4, batch_size=8)
    return _build_flow_decoder("image", p, 200, vae, {"image_size": 32}).to(device), p, 200


def step(device_name: str, size: str = "nsd", steps: int = 5, batch: int | None = None,
         table: Path | None = None) -> dict:
    """Time, peak memory and achieved TFLOP/s of one training step (see the module docstring)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cortexflow.models.types import BrainData
    from cortexflow.training.trainer import Trainer, TrainingConfig

    started = time.perf_counter()
    device = torch.device(device_name)
    if size == "nsd":
        import bench_nsd_scale as nsd

        model, p = nsd.build(device)
        n_voxels = nsd.N_VOXELS
    else:
        model, p, n_voxels = _small_model(device)
    n = batch or p.batch_size
    on_cuda = device.type == "cuda"
    bf16 = on_cuda and torch.cuda.is_bf16_supported()

    def sync():
        if on_cuda:
            torch.cuda.synchronize(device)

    while True:
        try:
            g = torch.Generator().manual_seed(0)
            z = torch.randn(n, *model.latent_shape, generator=g).to(device)
            brain = BrainData(voxels=torch.randn(n, n_voxels, generator=g).to(device),
                              prior=torch.randn(n, *model.latent_shape, generator=g).to(device) if p.prior_conditioning
                              else None)
            cfg = TrainingConfig(learning_rate=1e-4, batch_size=n, warmup_steps=10, max_steps=1000,
                                 device=str(device), mixed_precision="bf16" if bf16 else "no", ema_decay=0.9999)
            trainer = Trainer(model, cfg)
            if on_cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)

            def loss_fn(m, b):
                return m.training_loss_latents(*b)

            times = []
            for i in range(steps + 2):  # two warm-up steps
                sync()
                t0 = time.perf_counter()
                trainer._step((z, brain), loss_fn)
                sync()
                if i >= 2:
                    times.append(time.perf_counter() - t0)
            peak = (torch.cuda.max_memory_allocated(device) if on_cuda
                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
            counter = FlopCounterMode(display=False)
            with counter:
                trainer._step((z, brain), loss_fn)
            sync()
            break
        except torch.OutOfMemoryError:
            if n <= 1:
                raise
            n //= 2
            model.zero_grad(set_to_none=True)
            print(f"out of memory: batch halved to {n}", flush=True)
    seconds = statistics.median(times)
    flops = counter.get_total_flops()
    achieved = flops / seconds / 1e12
    peak_tflops = _peak_tflops(device)
    name = torch.cuda.get_device_name(device) if on_cuda else "CPU"
    result = {"device": name, "size": size, "batch": n, "step_s": seconds, "peak_memory_gib": peak / 2**30,
              "tflop_per_step": flops / 1e12, "achieved_tflops": achieved, "bf16_peak_tflops": peak_tflops,
              "share_of_peak": None if peak_tflops is None else achieved / peak_tflops,
              "precision": "bf16 autocast" if bf16 else "fp32", "seconds": time.perf_counter() - started}
    share = "" if peak_tflops is None else f" = {100 * achieved / peak_tflops:.1f}% of the {peak_tflops:.0f} bf16 peak"
    _row(table, f"{size} training step ({name})", "ok", result["seconds"],
         f"batch {n}, {result['precision']}: {seconds * 1e3:.1f} ms/step (median of {steps}), peak memory "
         f"{peak / 2**30:.2f} GiB, {flops / 1e9:.4g} GFLOP/step, {achieved:.4g} TFLOP/s{share}")
    return result


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    import logging

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="check", required=True)
    for name in ("prepare", "kill-resume", "torchrun"):
        s = sub.add_parser(name)
        s.add_argument("work", type=Path)
    for name in ("kill-resume", "torchrun", "step"):
        s = sub.choices.get(name) or sub.add_parser(name)
        s.add_argument("--device", default="cuda")
        s.add_argument("--table", type=Path, default=None)
        s.add_argument("--json", type=Path, default=None)
    sub.choices["kill-resume"].add_argument("--steps", type=int, default=600)
    sub.choices["torchrun"].add_argument("--nproc", type=int, default=2)
    sub.choices["step"].add_argument("--size", choices=("nsd", "small"), default="nsd")
    sub.choices["step"].add_argument("--steps", type=int, default=5)
    sub.choices["step"].add_argument("--batch", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        if args.check == "prepare":
            result = prepare(args.work)
        elif args.check == "kill-resume":
            result = kill_resume(args.work, args.device, steps=args.steps, table=args.table)
        elif args.check == "torchrun":
            result = torchrun(args.work, args.device, nproc=args.nproc, table=args.table)
        else:
            result = step(args.device, size=args.size, steps=args.steps, batch=args.batch, table=args.table)
    except Exception as e:  # one row per failed check; the script goes on with the next
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"FAILED {args.check}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        if getattr(args, "table", None) is not None:
            with open(args.table, "a") as f:
                f.write(f"| {args.check} | FAILED | - | {type(e).__name__}: {first[:200]} |\n")
        return 1
    if getattr(args, "json", None) is not None:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
