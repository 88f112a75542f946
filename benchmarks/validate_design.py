"""Decide the decoder's settings on the validation fold, never on the test items.

After `make run` (or any complete run), this takes one subject's dataset, turns
its validation fold (held-out training trials, single trials of stimuli never
in the fit fold) into the "test" part of a new dataset folder, and runs the
workflow's own stages on it: ridge baseline and decoder (with any decoder
overrides) fitted on the fit fold only, then sampling at each guidance scale,
then the evaluation stage. It prints every baseline's scores on the validation
fold (ridge, ridge_pt, ridge_pixels, nn, nn_mean<k>: fit_baseline's), the
strongest baseline per metric there (the validation-fold choice of "best
baseline"), and, per guidance scale, the decoder's scores with its paired
difference to every baseline.

    .venv/bin/python benchmarks/validate_design.py --results results/sim --subject 01 \\
        --modality image --cfg-scales 1 2 3 [--decoder-params '{"steps": 2500}']

With ``--variants '{"global": {}, "roi": {"encoder": "roi"}}'`` it trains one
decoder per variant with the same budget and also prints each variant's paired
difference to the first over the same val items (how decoder.image.encoder was
chosen).

Costs one decoder training (measured: 238 s with the ridge fit for the default
image DiT, 2,500 steps, 2 threads) plus about 15 s of sampling and evaluation
per guidance scale.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cortexflow import _io
from cortexflow.config import load_config
from cortexflow.evaluation.evaluate import (EvaluationConfig, evaluate_stage, is_baseline_method, is_decoder_method,
                                            method_order)
from cortexflow.evaluation.summary import best_baselines
from cortexflow.stages.baseline import fit_baseline_stage
from cortexflow.stages.decoder import train_decoder_stage
from cortexflow.stages.sample import sample_stage


def validation_dataset(dataset: Path, out: Path) -> Path:
    """A dataset folder whose train part is the fit fold and whose test part is the val fold."""
    train = pd.read_parquet(dataset / "train.parquet")
    X = np.load(dataset / "X_train.npy")
    fit, val = (train["fold"] == "train").to_numpy(), (train["fold"] == "val").to_numpy()
    if not val.any():
        raise SystemExit(f"{dataset}: no val fold in train.parquet (dataset.val_fraction is 0)")
    _io.save_npy(out / "X_train.npy", X[fit])
    _io.save_parquet(out / "train.parquet", train[fit].reset_index(drop=True))
    # the val fold: one row per trial; a stimulus shown twice in it is averaged, as test repeats are
    X_val, ids = X[val], train.loc[val, "stimulus_id"].astype(str).to_numpy()
    order = pd.unique(ids)
    _io.save_npy(out / "X_test.npy", np.stack([X_val[ids == s].mean(axis=0) for s in order]))
    _io.save_parquet(out / "test.parquet", pd.DataFrame({"stimulus_id": order,
                                                         "n_repeats": [(ids == s).sum() for s in order]}))
    _io.save_parquet(out / "voxels.parquet", pd.read_parquet(dataset / "voxels.parquet"))
    summary = json.loads((dataset / "dataset.json").read_text())
    _io.save_json(out / "dataset.json", {**summary, "validation_of": str(dataset)})
    return out


def _variant_rows(summary: pd.DataFrame, comparisons: pd.DataFrame, scale: float, variant: str) -> list[dict]:
    rows = []
    for row in comparisons[comparisons["method_b"] == "ridge"].itertuples():
        value = summary[(summary["method"] == row.method_a) & (summary["metric"] == row.metric)]["value"].iloc[0]
        rows.append({"variant": variant, "cfg_scale": scale, "method": row.method_a, "metric": row.metric,
                     "value": value, "minus_ridge": f"{row.diff:+.3f} [{row.ci_low:+.3f}, {row.ci_high:+.3f}]"})
    return rows


def paired_variants(items: dict[str, pd.DataFrame], reference: str, n_boot: int, seed: int) -> pd.DataFrame:
    """Each variant minus ``reference``, per decoder method and metric, over the same val items
    (paired bootstrap, the evaluate stage's resampling)."""
    from cortexflow.evaluation.bootstrap import bootstrap_indices, paired_bootstrap
    from cortexflow.evaluation.evaluate import is_decoder_method

    ref = items[reference]
    rows = []
    for name, frame in items.items():
        if name == reference:
            continue
        for (method, metric), g in frame[frame["method"].map(is_decoder_method)].groupby(["method", "metric"]):
            a = g.set_index("item")["score"].sort_index()
            b = ref[(ref["method"] == method) & (ref["metric"] == metric)].set_index("item")["score"].sort_index()
            if not a.index.equals(b.index):
                raise SystemExit(f"variants {name} and {reference} were scored on different items")
            r = paired_bootstrap(a.to_numpy(), b.to_numpy(), indices=bootstrap_indices(len(a), n_boot, seed))
            rows.append({"variant": name, "minus": reference, "method": method, "metric": metric,
                         "value": float(a.mean()), "reference": float(b.mean()),
                         "diff [95% CI]": f"{r.value:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results/sim")
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--subject", default="01")
    parser.add_argument("--modality", default="image", choices=["image", "audio"])
    parser.add_argument("--cfg-scales", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    parser.add_argument("--noise-scales", type=float, nargs="+", default=[1.0],
                        help="sampling.noise_scale values, each sampled at every guidance scale (sampling only: "
                             "no retraining)")
    parser.add_argument("--decoder-params", type=json.loads, default={},
                        help='JSON overrides of the decoder section, e.g. \'{"steps": 2500}\'')
    parser.add_argument("--variants", type=json.loads, default=None,
                        help='JSON {name: decoder overrides}: train each (same budget, on top of --decoder-params) '
                             'and compare them pairwise on the val items, the first as reference, e.g. '
                             '\'{"global": {}, "roi": {"encoder": "roi"}}\'')
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="work folder (default: <results>/validation/sub-<s>_<modality>)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    results, m = Path(args.results), args.modality
    cfg = load_config(args.config)
    work = Path(args.out or results / "validation" / f"sub-{args.subject}_{m}")
    data = validation_dataset(results / "dataset" / f"sub-{args.subject}" / m, work / "dataset")
    latents, vae = results / "latents" / f"{m}.npz", results / "models" / f"vae_{m}.pt"
    variants = args.variants or {"": {}}

    ridge, baselines = work / "ridge.npz", work / "baselines.npz"
    fit_baseline_stage(dataset=str(data), out=str(ridge), params=cfg["baseline"], latents=str(latents), seed=cfg["seed"],
                       out_baselines=str(baselines))
    rows, items = [], {}
    for name, overrides in variants.items():
        tag_v = f"_{name}" if name else ""
        decoder = work / f"decoder{tag_v}.pt"
        start = time.perf_counter()
        train_decoder_stage(dataset=str(data), modality=m, out=str(decoder),
                            checkpoint_dir=str(work / f"checkpoints{tag_v}"),
                            params={m: {**cfg["decoder"][m], **args.decoder_params, **overrides, "fit_on": "all"}},
                            seed=cfg["seed"], threads=args.threads, latents=str(latents), vae=str(vae),
                            ridge=str(ridge))
        print(f"decoder{' ' + name if name else ''} on the fit fold: {time.perf_counter() - start:.0f} s")
        for scale, noise_scale in itertools.product(args.cfg_scales, args.noise_scales):
            tag = f"cfg{scale:g}{'' if noise_scale == 1 else f'_noise{noise_scale:g}'}{tag_v}"
            recon, out = work / f"recon_{tag}.npz", work / tag
            sampling = {m: {**cfg["sampling"][m], "cfg_scale": scale, "noise_scale": noise_scale}}
            sample_stage(dataset=str(data), modality=m, decoder=str(decoder), out=str(recon), params=sampling,
                         seed=cfg["seed"], threads=args.threads, latents=str(latents), vae=str(vae),
                         ridge=str(ridge), baselines=str(baselines))
            evaluate_stage(recon=[str(recon)], out_summary=str(out / "summary.parquet"),
                           out_items=str(out / "items.parquet"), out_comparisons=str(out / "comparisons.parquet"),
                           subject=args.subject, modality=m, params=cfg["evaluation"], seed=cfg["seed"])
            summary = pd.read_parquet(out / "summary.parquet")
            comparisons = pd.read_parquet(out / "comparisons.parquet")
            items.setdefault((scale, noise_scale), {})[name] = pd.read_parquet(out / "items.parquet")
            decoders = comparisons[comparisons["method_a"].map(is_decoder_method)
                                   & comparisons["method_b"].map(is_baseline_method)]
            for row in decoders.itertuples():
                value = summary[(summary["method"] == row.method_a)
                                & (summary["metric"] == row.metric)]["value"].iloc[0]
                rows.append({"variant": name, "cfg_scale": scale, "noise_scale": noise_scale,
                             "method": row.method_a, "metric": row.metric,
                             "value": value, "baseline": row.method_b,
                             "minus_baseline": f"{row.diff:+.3f} [{row.ci_low:+.3f}, {row.ci_high:+.3f}]"})
    if len(variants) > 1:
        reference = next(iter(variants))
        n_boot = int(cfg["evaluation"].get("n_boot", EvaluationConfig.n_boot))
        for (scale, noise_scale), by_variant in items.items():
            print(f"\nguidance {scale:g}, noise scale {noise_scale:g}: each variant minus {reference!r}, "
                  "paired over the val items\n")
            print(paired_variants(by_variant, reference, n_boot, cfg["seed"]).to_string(index=False))
    table = pd.DataFrame(rows)
    n_items = len(pd.read_parquet(data / "test.parquet"))
    base = summary[summary["method"].map(is_baseline_method)].pivot(index="metric", columns="method", values="value")
    print(f"\nsub-{args.subject} {m}, validation fold ({n_items} items): every baseline\n")
    print(base[method_order(base.columns)].to_string(float_format=lambda v: f"{v:.3f}"))
    best = best_baselines(summary.assign(subject=args.subject))
    print("\nstrongest baseline per metric on the validation fold: "
          + ", ".join(f"{r.metric} {r.baseline}" for r in best.itertuples()) + "\n")
    strongest = table.merge(best[["metric", "baseline"]], on=["metric", "baseline"])
    print("decoder against the validation fold's strongest baseline:\n")
    print(strongest.sort_values(["variant", "metric", "method", "cfg_scale", "noise_scale"]).to_string(index=False))
    out_table = work / "validation_comparisons.csv"
    table.to_csv(out_table, index=False)
    print(f"\ndecoder against every baseline: {out_table}")


if __name__ == "__main__":
    main()
