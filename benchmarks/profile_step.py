"""Where one training step of each decoder spends its time (issue 24).

    .venv/bin/python benchmarks/profile_step.py --out docs/profile_step.md            # 1 thread
    .venv/bin/python benchmarks/profile_step.py --threads 2 --out /tmp/p2.md --models image

For each decoder built as ``train_decoder`` builds it (config.yaml's ``decoder``
section; benchmarks/_decoders.py) -- the image DiT, the audio DiT, the text
decoder and the image VAE (pretrain_vae) -- one full ``Trainer`` step (forward,
backward, gradient clipping, AdamW, scheduler, EMA) is

- timed without the profiler: median steps/s over ``--steps`` steps after warm-up;
- counted with ``torch.utils.flop_counter.FlopCounterMode`` (forward + backward;
  the optimizer's and EMA's elementwise work is not counted: it is O(params));
- profiled with ``torch.profiler`` (CPU, ``--profile-steps`` steps): the top
  operators by self CPU time, and the share of self CPU time inside matrix
  products (addmm, mm, bmm, matmul, linear, scaled dot-product attention,
  convolutions, forward and backward) against every other operator, and the
  share of the step's wall time that is in no operator at all (Python, autograd
  engine bookkeeping, the profiler's own cost).

The machine's fp32 peak is the best of five 2048^3 ``torch.mm`` on the same
thread count; achieved GFLOP/s = FLOPs per step x steps/s, and its ratio to
that peak. Writes a markdown report to ``--out`` and the numbers as JSON beside
it (``.json``). Each table is labelled with the load average when it was taken:
on a shared machine the numbers are only as good as the load allows.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _decoders  # noqa: E402

MATMUL = re.compile(r"addmm|^aten::mm$|bmm|matmul|linear|scaled_dot_product|conv|^aten::mm_")


def is_matmul(name: str) -> bool:
    return bool(MATMUL.search(name))


def _timed_steps(trainer, batch_fn, loss_fn, n: int) -> list[float]:
    times = []
    for _ in range(n):
        batch = batch_fn(trainer.step, trainer.data_generator)
        t0 = time.perf_counter()
        trainer._step(batch, loss_fn)
        times.append(time.perf_counter() - t0)
    return times


def count_flops(trainer, batch_fn, loss_fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    batch = batch_fn(trainer.step, trainer.data_generator)
    with FlopCounterMode(display=False) as counter:
        trainer._step(batch, loss_fn)
    return int(counter.get_total_flops())


def profile_model(name: str, steps: int, profile_steps: int, warmup: int, top: int) -> dict:
    model, cfg, batch_fn, loss_fn, info = _decoders.SETUPS[name]()
    trainer = _decoders.make_trainer(model, cfg)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    _timed_steps(trainer, batch_fn, loss_fn, warmup)
    flops = count_flops(trainer, batch_fn, loss_fn)
    times = _timed_steps(trainer, batch_fn, loss_fn, steps)
    sec = statistics.median(times)

    from torch.profiler import ProfilerActivity, profile

    batches = [batch_fn(trainer.step + i, trainer.data_generator) for i in range(profile_steps)]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for b in batches:
            trainer._step(b, loss_fn)
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    rows = []
    for e in events:
        rows.append({"op": e.key, "self_us": e.self_cpu_time_total, "calls": e.count})
    rows.sort(key=lambda r: -r["self_us"])
    total_self = sum(r["self_us"] for r in rows)
    mm_self = sum(r["self_us"] for r in rows if is_matmul(r["op"]))
    ops_per_step = sum(r["calls"] for r in rows) / profile_steps
    wall_us = wall * 1e6
    return {
        "model": name,
        "trainable_params": params,
        "batch_size": cfg.batch_size,
        "flops_per_step": flops,
        "steps_per_s": 1.0 / sec,
        "ms_per_step": 1e3 * sec,
        "gflops_achieved": flops / sec / 1e9,
        "profiled_ms_per_step": wall_us / 1e3 / profile_steps,
        "op_calls_per_step": ops_per_step,
        "self_ms_per_step": total_self / 1e3 / profile_steps,
        "matmul_self_ms_per_step": mm_self / 1e3 / profile_steps,
        "matmul_share_of_op_time": mm_self / total_self if total_self else 0.0,
        "matmul_share_of_wall": mm_self / wall_us,
        "outside_ops_share_of_wall": max(0.0, 1.0 - total_self / wall_us),
        "top_ops": [{**r, "ms_per_step": r["self_us"] / 1e3 / profile_steps,
                     "share": r["self_us"] / total_self, "matmul": is_matmul(r["op"])} for r in rows[:top]],
    }


def to_markdown(report: dict) -> str:
    out = [f"# One training step per decoder ({report['threads']} thread(s))", "",
           f"Taken {report['when']}, {report['load_before']} before, {report['load_after']} after; "
           f"torch {report['torch']}; `{report['command']}`.", "",
           f"fp32 matmul peak (best 2048^3 `torch.mm`, {report['threads']} thread(s)): "
           f"**{report['peak_gflops']:.1f} GFLOP/s**.", "",
           "| model | params | batch | GFLOP/step | steps/s | ms/step | GFLOP/s | of peak | ops/step "
           "| matmul share of op time | matmul share of wall | outside ops |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["models"]:
        out.append(f"| {r['model']} | {r['trainable_params'] / 1e6:.2f} M | {r['batch_size']} "
                   f"| {r['flops_per_step'] / 1e9:.3f} | {r['steps_per_s']:.1f} | {r['ms_per_step']:.1f} "
                   f"| {r['gflops_achieved']:.1f} | {r['gflops_achieved'] / report['peak_gflops']:.0%} "
                   f"| {r['op_calls_per_step']:.0f} | {r['matmul_share_of_op_time']:.0%} "
                   f"| {r['matmul_share_of_wall']:.0%} | {r['outside_ops_share_of_wall']:.0%} |")
    out += ["", "steps/s and ms/step: without the profiler (median step). The shares come from the profiled "
            "steps (the profiler adds its own cost per operator, so they overstate the non-matmul part "
            "somewhat); `outside ops`: wall time of the profiled steps in no operator (Python, autograd "
            "engine, profiler).", ""]
    for r in report["models"]:
        out += [f"## {r['model']}: top operators by self CPU time", "",
                "| op | calls/step | self ms/step | share | matmul-like |", "|---|---:|---:|---:|:-:|"]
        for o in r["top_ops"]:
            out.append(f"| `{o['op']}` | {o['calls'] / report['profile_steps']:.0f} | {o['ms_per_step']:.3f} "
                       f"| {o['share']:.1%} | {'yes' if o['matmul'] else ''} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="markdown report (the JSON goes beside it)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", nargs="+", default=list(_decoders.SETUPS), choices=list(_decoders.SETUPS))
    ap.add_argument("--steps", type=int, default=40, help="timed steps (median)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--profile-steps", type=int, default=10)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    load_before = _decoders.load_label()
    peak = _decoders.matmul_peak(args.threads)
    models = []
    for name in args.models:
        print(f"profiling {name} ...", file=sys.stderr, flush=True)
        models.append(profile_model(name, args.steps, args.profile_steps, args.warmup, args.top))
    report = {
        "threads": args.threads, "torch": torch.__version__, "peak_gflops": peak,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"), "load_before": load_before, "load_after": _decoders.load_label(),
        "profile_steps": args.profile_steps, "command": "python " + " ".join(["benchmarks/profile_step.py", *sys.argv[1:]]),
        "models": models,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_markdown(report) + "\n")
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    print(to_markdown(report))


if __name__ == "__main__":
    main()
