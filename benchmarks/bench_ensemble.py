"""Training throughput of the image DiT per seed: single runs against the stacked ensemble (issue 24).

    .venv/bin/python benchmarks/bench_ensemble.py                      # 1 and 2 threads, every variant
    .venv/bin/python benchmarks/bench_ensemble.py --threads 1 --variants single ensemble3
    .venv/bin/python benchmarks/bench_ensemble.py --out docs/bench_ensemble.md

The image decoder of config.yaml (``decoder.image``: 0.60 M trainable parameters,
batch 64; built by benchmarks/_decoders.py as ``train_decoder`` builds it, on
random data of the default study's shapes). Variants:

- ``single``: ``Trainer._step`` as the stage runs it (fp32, AdamW single-tensor,
  the default on the CPU). Three seeds trained one after another run at this
  rate per seed.
- ``single-foreach`` / ``single-fused``: the same with ``AdamW(foreach=True)`` /
  ``AdamW(fused=True)`` (same update, fewer and larger kernels).
- ``single-compile``: ``TrainingConfig(compile=True)``, the loss through
  ``torch.compile`` (inductor, C++ on the CPU); its compile time is reported
  apart and not counted in the rate.
- ``ensemble2`` / ``ensemble3``: :class:`cortexflow.training.ensemble.EnsembleTrainer`
  with 2 / 3 seeds stacked; per-seed rate = M x ensemble steps/s.
  ``ensemble3-compile``: the same with its stacked loss through ``torch.compile``.

Each variant: ``--warmup`` steps, then the median of ``--steps`` step times
(step = forward, backward, clipping, AdamW, schedule, EMA; batches drawn
outside the timer), wall clock and the process's CPU time. The variants take
their steps in turn (one step each, then again) over ``--rounds`` rounds, and
each keeps its best round (a shared machine's load comes and goes). Every table says the
load average before and after, and the CPU count: numbers taken beside other
jobs are not the machine's speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _decoders  # noqa: E402

VARIANTS = ("single", "single-foreach", "single-fused", "single-compile", "ensemble2", "ensemble3",
            "ensemble3-compile")
SEEDS = (0, 1, 2)


def _swap_optimizer(trainer, **kwargs) -> None:
    from cortexflow.training.trainer import WarmupCosineScheduler

    cfg = trainer.config
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in trainer.optimizer.param_groups]
    trainer.optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=cfg.betas, eps=cfg.eps, **kwargs)
    trainer.scheduler = WarmupCosineScheduler(trainer.optimizer, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)


def _single_runner(variant: str):
    model, cfg, batch_fn, loss_fn, _ = _decoders.flow_setup("image", SEEDS[0])
    if variant == "single-compile":
        cfg.compile = True
    trainer = _decoders.make_trainer(model, cfg)
    if variant == "single-foreach":
        _swap_optimizer(trainer, foreach=True)
    elif variant == "single-fused":
        _swap_optimizer(trainer, fused=True)

    def run() -> float:
        batch = batch_fn(trainer.step, trainer.data_generator)
        t0, c0 = time.perf_counter(), time.process_time()
        trainer._step(batch, loss_fn)
        return time.perf_counter() - t0, time.process_time() - c0

    return run, 1


def _ensemble_runner(m: int, compile: bool = False):
    from cortexflow.training.ensemble import EnsembleTrainer

    models, configs, fns = [], [], []
    for seed in SEEDS[:m]:
        model, cfg, batch_fn, _, _ = _decoders.flow_setup("image", seed)
        cfg.compile = compile
        models.append(model)
        configs.append(cfg)
        fns.append(batch_fn)
    trainer = EnsembleTrainer(models, configs)
    gens = [torch.Generator().manual_seed(s) for s in SEEDS[:m]]

    def run() -> float:
        batches = [fn(trainer.step, g) for fn, g in zip(fns, gens)]
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.train_step(batches)
        return time.perf_counter() - t0, time.process_time() - c0

    return run, m


def make_runner(variant: str):
    if variant.startswith("ensemble"):
        m, _, compiled = variant[len("ensemble"):].partition("-")
        return _ensemble_runner(int(m), compile=compiled == "compile")
    return _single_runner(variant)


def measure(threads: int, variants: list[str], steps: int, warmup: int, rounds: int) -> dict:
    torch.set_num_threads(threads)
    load_before = _decoders.load_label()
    runners, compile_s = {}, {}
    for v in variants:
        run, members = make_runner(v)
        t0 = time.perf_counter()
        for _ in range(warmup):
            run()
        if v.endswith("-compile"):
            compile_s[v] = time.perf_counter() - t0
        runners[v] = (run, members)
    best: dict[str, float] = {}
    best_cpu: dict[str, float] = {}
    for _ in range(rounds):
        # step by step in turn, so that a load that comes and goes falls on every variant alike
        times: dict[str, list[tuple[float, float]]] = {v: [] for v in runners}
        for _ in range(steps):
            for v, (run, _) in runners.items():
                times[v].append(run())
        for v, ts in times.items():
            best[v] = min(best.get(v, float("inf")), statistics.median(t[0] for t in ts))
            best_cpu[v] = min(best_cpu.get(v, float("inf")), statistics.median(t[1] for t in ts))
    rows = []
    base = 1.0 / best["single"] if "single" in best else None
    base_cpu = 1.0 / best_cpu["single"] if "single" in best_cpu else None
    for v in variants:
        members = runners[v][1]
        per_seed = members / best[v]
        rows.append({"variant": v, "members": members, "ms_per_step": 1e3 * best[v], "steps_per_s": 1.0 / best[v],
                     "per_seed_steps_per_s": per_seed, "speedup_vs_single": per_seed / base if base else None,
                     "cpu_ms_per_step": 1e3 * best_cpu[v], "cpu_per_seed_steps_per_s": members / best_cpu[v],
                     "cpu_speedup_vs_single": members / best_cpu[v] / base_cpu if base_cpu else None,
                     "warmup_s": compile_s.get(v)})
    return {"threads": threads, "load_before": load_before, "load_after": _decoders.load_label(),
            "when": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": rows}


def to_markdown(results: list[dict], command: str) -> str:
    out = [f"`{command}` (torch {torch.__version__}; image DiT of config.yaml, batch 64)", ""]
    for r in results:
        out += [f"**{r['threads']} thread(s)**, {r['when']}; {r['load_before']} before, {r['load_after']} after.", "",
                "| variant | seeds per step | ms/step | steps/s per seed | per seed vs single "
                "| CPU ms/step | per seed vs single, CPU time |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for row in r["rows"]:
            extra = f" (compile + warm-up {row['warmup_s']:.0f} s)" if row["warmup_s"] else ""
            speed = f"{row['speedup_vs_single']:.2f}x" if row["speedup_vs_single"] else ""
            cpu_speed = f"{row['cpu_speedup_vs_single']:.2f}x" if row["cpu_speedup_vs_single"] else ""
            out.append(f"| {row['variant']}{extra} | {row['members']} | {row['ms_per_step']:.1f} "
                       f"| {row['per_seed_steps_per_s']:.2f} | {speed} | {row['cpu_ms_per_step']:.1f} | {cpu_speed} |")
        out.append("")
    out += ["ms/step and steps/s: wall clock (median step, best round). CPU ms/step: the process's CPU time "
            "per step (all its threads), which another job's load inflates far less than the wall clock; "
            "with one thread it is the step's own compute time, with two it also counts threads "
            "spinning while they wait for each other.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", help="also write the markdown table here (and the JSON beside it)")
    args = ap.parse_args(argv)
    variants = list(args.variants)
    if "single" not in variants:
        variants.insert(0, "single")
    results = []
    for threads in args.threads:
        print(f"{threads} thread(s) ...", file=sys.stderr, flush=True)
        results.append(measure(threads, variants, args.steps, args.warmup, args.rounds))
    command = "python " + " ".join(["benchmarks/bench_ensemble.py", *sys.argv[1:]])
    text = to_markdown(results, command)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
