"""Cost of the image decoder at the size of a Natural Scenes Dataset subject (docs/nsd-scale.md).

How to run (from the repository root, with the project's virtualenv):

    .venv/bin/python benchmarks/bench_nsd_scale.py                 # CPU, batches 2 and 4
    .venv/bin/python benchmarks/bench_nsd_scale.py --device cuda --batches 32 64 128 --bf16

The model is the one docs/nsd-scale.yaml asks the workflow for (read from it):
15,000 voxels, 256 px RGB images through a 3-level VAE (32 x 32 x 4 latents), a
DiT-B/2-like decoder (hidden 768, depth 12, 12 heads, patch 2: 256 latent
tokens, 16 brain tokens, prior conditioning on the ridge latent), built by the
workflow's own ``_build_vae`` and ``_build_flow_decoder``. Measured, per batch size:

- train step: one ``Trainer._step`` (brain encoder + DiT forward with 10% condition
  dropout, backward, gradient clipping, AdamW, EMA), median after one warm-up;
- peak memory: CPU: the process's peak resident set (``ru_maxrss``), which
  never goes down, so batch sizes run in increasing order and the model's
  resident size after building is printed first; CUDA:
  ``torch.cuda.max_memory_allocated`` during the steps;
- FLOPs: ``torch.utils.flop_counter`` over one forward + backward of the loss
  (matrix products and attention, which are nearly all of it);
- sampling: one guided DiT evaluation (the batch twice, conditional and
  unconditional), what each of the ODE's steps costs.

It prints a table and, with ``--json``, writes the figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cortexflow.models.types import BrainData  # noqa: E402
from cortexflow.stages.decoder import _build_flow_decoder  # noqa: E402
from cortexflow.stages.params import DecoderParams, VAEParams, modality_params  # noqa: E402
from cortexflow.stages.vae import _build_vae  # noqa: E402
from cortexflow.training.trainer import Trainer, TrainingConfig  # noqa: E402

N_VOXELS = 15_000
IMAGE_SIZE = 256
CONFIG = Path(__file__).resolve().parents[1] / "docs" / "nsd-scale.yaml"


def build(device: torch.device):
    """The VAE and decoder of docs/nsd-scale.yaml, built as the workflow's stages build them."""
    config = yaml.safe_load(CONFIG.read_text())
    vae_params = modality_params(config["vae"], "image", VAEParams, "vae")
    p = modality_params(config["decoder"], "image", DecoderParams, "decoder")
    torch.manual_seed(0)
    vae = _build_vae("image", vae_params, in_channels=3)
    model = _build_flow_decoder("image", p, N_VOXELS, vae, {"image_size": IMAGE_SIZE})
    return model.to(device), p


def batch(model, n: int, device):
    g = torch.Generator().manual_seed(n)
    z = torch.randn(n, *model.latent_shape, generator=g)
    brain = BrainData(voxels=torch.randn(n, N_VOXELS, generator=g), prior=torch.randn(n, *model.latent_shape, generator=g))
    return z.to(device), brain.to(device)


def peak_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def loss_fn(m, b):
    return m.training_loss_latents(*b)


def measure(model, device, n: int, steps: int, bf16: bool) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    cfg = TrainingConfig(learning_rate=1e-4, batch_size=n, warmup_steps=10, max_steps=1000, device=str(device),
                         mixed_precision="bf16" if bf16 else "no", ema_decay=0.9999)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(model, cfg)
    data = batch(model, n, device)
    times = []
    for _ in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        float(trainer._step(data, loss_fn))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    train_peak = peak_mb(device)

    counter = FlopCounterMode(display=False)
    with counter:
        loss = loss_fn(model, data)
        loss.backward()
    model.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()

    model.eval()
    brain = data[1]
    with torch.inference_mode():
        g, tokens = model.encode_brain(brain)
        prior = model._prior(brain, n)
        velocity = model.flow_matcher.velocity_fn(model.dit, g, tokens, 2.0, model.uncond_global, model.uncond_tokens,
                                                   prior=prior, precision="bf16" if bf16 else "fp32")
        x, t = data[0], torch.full((), 0.5, device=device)
        velocity(x, t)  # warm-up
        sample_times = []
        for _ in range(max(2, steps)):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            velocity(x, t)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            sample_times.append(time.perf_counter() - t0)
    model.train()
    return {"batch": n, "train_step_s": statistics.median(times[1:]), "train_peak_mb": train_peak,
            "train_gflop_per_step": flops / 1e9, "guided_dit_eval_s": statistics.median(sample_times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per batch size (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (what training does on a GPU)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, _ = build(device)
    params = {name: sum(p.numel() for p in getattr(model, name).parameters()) / 1e6
              for name in ("brain_encoder", "dit", "vae")}
    print(f"device {device}, {args.threads} threads, torch {torch.__version__}; latent {model.latent_shape}, "
          f"{(model.latent_shape[1] // 2) ** 2} tokens; parameters (M): "
          + ", ".join(f"{k} {v:.1f}" for k, v in params.items()))
    print(f"resident after building the model: {peak_mb(torch.device('cpu')):.0f} MiB")
    rows = []
    for n in sorted(args.batches):
        row = measure(model, device, n, args.steps, args.bf16)
        rows.append(row)
        print(f"batch {n:4d}: train step {row['train_step_s']:.2f} s, peak memory {row['train_peak_mb']:.0f} MiB, "
              f"{row['train_gflop_per_step']:.0f} GFLOP/step ({row['train_gflop_per_step'] / n:.1f} per sample), "
              f"guided DiT evaluation {row['guided_dit_eval_s']:.2f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "threads": args.threads, "params_m": params,
                                         "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
