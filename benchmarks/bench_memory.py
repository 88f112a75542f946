"""Peak host memory of ``train_decoder`` and ``sample`` as the images and samples grow (docs/memory.md).

How to run (from the repository root, with the project's virtualenv):

    .venv/bin/python benchmarks/bench_memory.py                          # this checkout
    .venv/bin/python benchmarks/bench_memory.py --before /path/to/old    # and an older checkout, side by side

Each configuration runs the stage function (``cortexflow.stages.decoder.train_decoder_stage``,
``cortexflow.stages.sample.sample_stage``) in a fresh Python process whose ``PYTHONPATH`` is the
checkout measured, and reads that process's peak resident set (``VmHWM`` in
/proc/self/status, the same as ``ru_maxrss``) at its end. The inputs are written once: a
tiny VAE pretrained for one step on 8 stimuli at 64 px RGB, a latent cache with N
stimuli (random latents, stimuli and VAE reconstructions of the right shapes: the
memory does not depend on their values), and a dataset with one trial per training
stimulus and 200 voxels. The models are tiny (DiT width 32, one block; one ODE step),
so the memory that grows is the data's: a 64 px RGB stimulus is 48 KiB in float32,
1/16 of a 256 px one.

- ``train_decoder`` (2 steps) with N training images: before, every process read the
  stimuli and their VAE reconstructions whole (2 x N x 48 KiB); memory-mapped, it
  reads the latents of its trials and the stimuli's shape.
- ``sample`` with n test items x k samples (a latent cache of 4,000 + n stimuli):
  before, all n x k samples were kept, with two copies, and the cache was read whole;
  now each batch of samples is reduced to the first and the mean as it is drawn.

It prints a markdown table and, with ``--json``, writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
PX = 64
N_VOXELS = 200
SAMPLE_CACHE = 4000  # training stimuli in the latent cache of the sample runs

TRAIN_SIZES = [1000, 4000, 16000]
SAMPLE_RUNS = [(500, 1), (500, 4), (500, 16), (125, 4), (2000, 4)]  # (test items, samples per item)

DECODER = {"image": {"hidden_dim": 32, "depth": 1, "num_heads": 2, "n_tokens": 2, "steps": 2, "batch_size": 8,
                     "warmup_steps": 1, "prior_conditioning": False, "checkpoint_every": 1000}}
VAE = {"image": {"hidden_dims": [8, 16], "steps": 1, "batch_size": 4, "warmup_steps": 1}}

_MEASURE = """
import json, resource, sys
kind, kwargs = sys.argv[1], json.loads(sys.argv[2])
if kind == "import":
    import cortexflow.stages.decoder, cortexflow.stages.sample
elif kind == "train":
    from cortexflow.stages.decoder import train_decoder_stage
    train_decoder_stage(**kwargs)
else:
    from cortexflow.stages.sample import sample_stage
    sample_stage(**kwargs)
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"vmhwm_kib": int(status["VmHWM"].split()[0]),
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _write_stimuli(root: Path) -> Path:
    from PIL import Image

    folder = root / "stimuli" / "images"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for n in range(8):
        Image.fromarray((rng.random((PX, PX, 3)) * 255).astype(np.uint8)).save(folder / f"img-{n}.png")
        rows.append({"stimulus_id": f"img-{n}", "modality": "image", "path": f"images/img-{n}.png",
                     "split": "train" if n < 6 else "test"})
    pd.DataFrame(rows).to_csv(root / "stimuli" / "stimuli.tsv", sep="\t", index=False)
    return root / "stimuli" / "stimuli.tsv"


def _write_latents(path: Path, n_train: int, n_test: int) -> list[str]:
    """A latent cache of n_train + n_test stimuli, written in chunks (random values, the right shapes)."""
    from cortexflow.models.latents import save_latents

    n = n_train + n_test
    ids = np.asarray([f"s{i:06d}" for i in range(n)])
    rng = np.random.default_rng(1)
    images = np.empty((n, 3, PX, PX), np.float32)
    for start in range(0, n, 1000):
        images[start:start + 1000] = rng.random((min(1000, n - start), 3, PX, PX), dtype=np.float32)
    save_latents(path, ids=ids, latents=rng.normal(size=(n, 4, PX // 4, PX // 4)).astype(np.float32),
                 targets=images, vae_reconstructions=images, splits=np.asarray(["train"] * n_train + ["test"] * n_test),
                 norm_mean=0.0, norm_std=1.0)
    return list(ids)


def write_random_dataset(folder: Path, train_ids: list[str], test_ids: list[str], *, n_voxels: int = N_VOXELS,
                         n_repeats: int = 1, seed: int = 2) -> Path:
    """A make_dataset folder of random voxels: one trial per training stimulus, every voxel selected
    (also the GPU check's dataset, benchmarks/gpu_checks.py)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    np.save(folder / "X_train.npy", rng.normal(size=(len(train_ids), n_voxels)).astype(np.float32))
    np.save(folder / "X_test.npy", rng.normal(size=(len(test_ids), n_voxels)).astype(np.float32))
    pd.DataFrame({"stimulus_id": train_ids, "run": 1, "fold": "train"}).to_parquet(folder / "train.parquet")
    pd.DataFrame({"stimulus_id": test_ids, "n_repeats": n_repeats}).to_parquet(folder / "test.parquet")
    pd.DataFrame({"region": "V1", "selected": [True] * n_voxels}).to_parquet(folder / "voxels.parquet")
    (folder / "dataset.json").write_text("{}")
    return folder


def _measure(checkout: Path, kind: str, **kwargs) -> float:
    """Peak resident set (MiB) of one stage call in a fresh process importing ``checkout``'s cortexflow."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _MEASURE, kind, json.dumps(kwargs)], env=env, cwd=checkout,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} {kwargs} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["vmhwm_kib"] / 1024


def inputs_in(work: Path) -> dict:
    """The paths ``setup`` writes under ``work``."""
    return {"stimuli": str(work / "stimuli" / "stimuli.tsv"), "vae": str(work / "vae.pt"),
            "decoder": str(work / "decoder.pt"),
            "train": {n: {"latents": str(work / f"latents_train{n}.npz"), "dataset": str(work / f"ds_train{n}")}
                      for n in TRAIN_SIZES},
            "sample": {n: {"latents": str(work / f"latents_test{n}.npz"), "dataset": str(work / f"ds_test{n}")}
                       for n in sorted({n for n, _ in SAMPLE_RUNS})}}


def setup(work: Path) -> dict:
    """The inputs of every configuration, written once under ``work``."""
    sys.path.insert(0, str(REPO))
    from cortexflow.stages.vae import pretrain_vae_stage

    inputs = inputs_in(work)
    stimuli = _write_stimuli(work)
    pretrain_vae_stage(stimuli=str(stimuli), modality="image", out=inputs["vae"], params=VAE)
    for n in TRAIN_SIZES:
        ids = _write_latents(Path(inputs["train"][n]["latents"]), n, 8)
        write_random_dataset(Path(inputs["train"][n]["dataset"]), ids[:n], ids[n:])
    for n_test in inputs["sample"]:
        ids = _write_latents(Path(inputs["sample"][n_test]["latents"]), SAMPLE_CACHE, n_test)
        write_random_dataset(Path(inputs["sample"][n_test]["dataset"]), ids[:SAMPLE_CACHE], ids[SAMPLE_CACHE:])
    # one decoder for every sample run (sampling does not depend on how the decoder was trained)
    first = inputs["train"][TRAIN_SIZES[0]]
    _measure(REPO, "train", dataset=first["dataset"], modality="image", out=inputs["decoder"],
             checkpoint_dir=str(work / "ckpt_setup"), params=DECODER, latents=first["latents"], vae=inputs["vae"])
    return inputs


def measure(label: str, checkout: Path, inputs: dict, work: Path) -> list[dict]:
    """Every configuration's peak resident set with ``checkout``'s cortexflow."""
    rows = [{"checkout": label, "stage": "import", "images": 0, "test_items": 0, "samples": 0,
             "peak_mib": _measure(checkout, "import")}]
    for n in TRAIN_SIZES:
        t0 = time.perf_counter()
        peak = _measure(checkout, "train", dataset=inputs["train"][n]["dataset"], modality="image",
                        out=str(work / f"decoder_{label}_{n}.pt"), checkpoint_dir=str(work / f"ckpt_{label}_{n}"),
                        params=DECODER, latents=inputs["train"][n]["latents"], vae=inputs["vae"])
        rows.append({"checkout": label, "stage": "train_decoder", "images": n, "test_items": 8, "samples": 0,
                     "peak_mib": peak, "seconds": time.perf_counter() - t0})
        print(rows[-1], flush=True)
    for n_test, k in SAMPLE_RUNS:
        t0 = time.perf_counter()
        sampling = {"image": {"num_steps": 1, "n_samples": k, "batch_size": 16}}
        peak = _measure(checkout, "sample", dataset=inputs["sample"][n_test]["dataset"], modality="image",
                        decoder=inputs["decoder"], out=str(work / f"recon_{label}_{n_test}_{k}.npz"),
                        params=sampling, latents=inputs["sample"][n_test]["latents"])
        rows.append({"checkout": label, "stage": "sample", "images": SAMPLE_CACHE + n_test, "test_items": n_test,
                     "samples": k, "peak_mib": peak, "seconds": time.perf_counter() - t0})
        print(rows[-1], flush=True)
    return rows


def run(checkouts: dict[str, Path], work: Path) -> list[dict]:
    inputs = setup(work)
    return [row for label, checkout in checkouts.items() for row in measure(label, checkout, inputs, work)]


def markdown(rows: list[dict]) -> str:
    frame = pd.DataFrame(rows)
    labels = list(dict.fromkeys(frame["checkout"]))
    keys = ["stage", "images", "test_items", "samples"]
    table = frame.pivot_table(index=keys, columns="checkout", values="peak_mib", sort=False).reset_index()
    lines = ["| stage | images in the cache | test items | samples per item | data (MiB) | "
             + " | ".join(f"peak RSS, {label} (MiB)" for label in labels) + " |",
             "|---" * (5 + len(labels)) + "|"]
    image_mib = 3 * PX * PX * 4 / 2**20
    for _, r in table.iterrows():
        if r["stage"] == "import":
            data = "-"
        elif r["stage"] == "train_decoder":  # the cache's stimuli + VAE reconstructions
            data = f"{2 * r['images'] * image_mib:,.0f} (cache)"
        else:  # all samples
            data = f"{r['test_items'] * r['samples'] * image_mib:,.0f} (samples)"
        lines.append(f"| {r['stage']} | {r['images']:,} | {r['test_items']:,} | {r['samples']} | {data} | "
                     + " | ".join(f"{r[label]:,.0f}" for label in labels) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--before", type=Path, help="an older checkout to measure side by side (its cortexflow/)")
    parser.add_argument("--work", type=Path, help="folder for the inputs (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    checkouts = {"before": args.before.resolve()} if args.before else {}
    checkouts["this checkout"] = REPO
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        rows = run(checkouts, Path(work))
    print(f"\n{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB memory\n")
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
