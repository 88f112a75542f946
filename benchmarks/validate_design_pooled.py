"""Decide the decoder's settings on the validation fold, never on the test items (the design helper's variant: training seeds pooled per item, its own ridge-to-pixels and nearest-neighbour baselines computed before evalx's landed; docs/validation.md's design figures came from it; to be folded into validate_design.py).

After `make run` (or any complete run), this takes one subject's dataset, turns
its validation fold (held-out training trials, single trials of stimuli never
in the fit fold) into the "test" part of a new dataset folder, and runs the
workflow's own stages on it: ridge baseline and decoder (with any decoder
overrides) fitted on the fit fold only, then sampling at each guidance scale,
then scoring. Beside ridge to latents it scores the baselines of issue 12 that
need no extra stage: ridge to pixels and the nearest training stimulus (by the
ridge-predicted latent) and the mean of its 8 nearest, and prints each decoder
method's paired difference to every baseline. With several --seeds the
per-item scores are averaged over the training seeds first. Trained decoders
and recon files are kept under <work>/<tag>/seed<N>/ and reused.

    .venv/bin/python benchmarks/validate_design.py --results results/sim --subject 01 \\
        --modality image --tag h64 --cfg-scales 2 --seeds 0 1 2 \\
        --decoder-params '{"hidden_dim": 64, "steps": 2300, "learning_rate": 0.001}'
    .venv/bin/python benchmarks/validate_design.py --modality text --tag t600 --cfg-scales 0 \\
        --decoder-params '{"steps": 600}'

Measured on the shared 2-core machine (one thread, other jobs running): an
image DiT of hidden 64 / depth 4 / 2,300 steps trained in 249-721 s depending
on the load, sampling 21-55 s per setting; the text decoder at 600 steps 240 s.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cortexflow import _io
from cortexflow.config import load_config
from cortexflow.stages.baseline import fit_baseline_stage
from cortexflow.stages.decoder import train_decoder_stage
from cortexflow.stages.sample import sample_stage
from validate_design import validation_dataset  # this folder is on sys.path when run as a script


IMAGE_BASELINES = ("ridge", "ridge_pixels", "nn", "nn_mean8")
KEY_METRICS = ("ssim", "two_way_id_feature", "two_way_id_pixel", "pixcorr", "two_way_id_hog")


def image_baselines(data: Path, latents: Path, ridge: Path, baseline_params: dict, seed: int) -> dict[str, np.ndarray]:
    """The reviewer's baselines of issue 12 item 3, on the validation dataset (fit fold -> val fold).

    ridge_pixels: the workflow's ridge (CV-chosen penalty) from voxels to pixels directly;
    nn / nn_mean8: the VAE reconstruction of the training stimulus whose latent is nearest
    (Euclidean) to the ridge-predicted latent / the mean of the 8 nearest.
    """
    from cortexflow.models.latents import load_latents
    from cortexflow.models.ridge import RidgeConfig, RidgeDecoder, load_ridge

    lat = load_latents(latents)
    train = pd.read_parquet(data / "train.parquet")
    test = pd.read_parquet(data / "test.parquet")
    X, X_test = np.load(data / "X_train.npy"), np.load(data / "X_test.npy")
    train_ids = train["stimulus_id"].astype(str).to_numpy()
    test_rows = lat.rows(test["stimulus_id"].astype(str).to_numpy(), latents)
    pixels = lat.targets[lat.rows(train_ids, latents)]
    cfg = RidgeConfig.from_params(baseline_params)
    pix = RidgeDecoder(cfg.alphas, cfg.cv_folds, seed).fit(X, pixels, groups=train_ids)
    out = {"ridge_pixels": np.clip(pix.predict(X_test), 0.0, 1.0)}
    z_hat = load_ridge(ridge).predict(X_test).reshape(len(X_test), -1)
    uniq = np.unique(train_ids)
    bank_rows = lat.rows(uniq, latents)
    bank = lat.latents[bank_rows].reshape(len(uniq), -1)
    d = ((z_hat[:, None, :] - bank[None]) ** 2).sum(-1)
    order = np.argsort(d, axis=1)
    recon = lat.vae_reconstructions[bank_rows]
    out["nn"] = recon[order[:, 0]]
    out["nn_mean8"] = recon[order[:, :8]].mean(axis=1)
    out["truth_check"] = lat.targets[test_rows]
    return out


def score_recon(recon: Path, extra: dict[str, np.ndarray], modality: str, eval_params: dict, seed: int) -> pd.DataFrame:
    """Per-item scores of every method in the recon file plus the extra baselines."""
    from cortexflow.evaluation.evaluate import EvaluationConfig, Recon, score_items

    with np.load(recon) as f:
        arrays = {k: f[k] for k in f.files}
    ids, truth = arrays.pop("ids"), arrays.pop("truth")
    if "truth_check" in extra:
        assert np.allclose(extra["truth_check"], truth), "extra baselines are not in the recon's item order"
    arrays.update({k: v for k, v in extra.items() if k != "truth_check"})
    arrays.pop("noise_ceiling", None)
    return score_items(Recon(ids.astype(str), truth, arrays), modality, EvaluationConfig.from_params(eval_params), seed)


def paired_table(items: pd.DataFrame, methods: list[str], baselines: list[str], metrics, n_boot: int, seed: int) -> pd.DataFrame:
    from cortexflow.evaluation.bootstrap import bootstrap_indices, paired_bootstrap

    scores = {k: g.sort_values("item", kind="stable")["score"].to_numpy()
              for k, g in items.groupby(["method", "metric"])}
    n = items["item"].nunique()
    idx = bootstrap_indices(n, n_boot, seed)
    rows = []
    for metric in metrics:
        for m in methods:
            if (m, metric) not in scores:
                continue
            row = {"metric": metric, "method": m, "value": round(float(scores[(m, metric)].mean()), 3)}
            for b in baselines:
                if (b, metric) in scores:
                    r = paired_bootstrap(scores[(m, metric)], scores[(b, metric)], indices=idx)
                    flag = "+" if r.ci_low > 0 else ("-" if r.ci_high < 0 else "=")
                    row[f"- {b}"] = f"{r.value:+.3f} [{r.ci_low:+.3f},{r.ci_high:+.3f}]{flag}"
            rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results/sim")
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--subject", default="01")
    parser.add_argument("--modality", default="image", choices=["image", "audio", "text"])
    parser.add_argument("--stimuli", default="data/sim/bids/stimuli/stimuli.tsv", help="stimuli.tsv (text only)")
    parser.add_argument("--cfg-scales", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    parser.add_argument("--num-steps", type=int, nargs="+", default=None, help="sampling ODE steps (default: config)")
    parser.add_argument("--decoder-params", type=json.loads, default={},
                        help='JSON overrides of the decoder section, e.g. \'{"steps": 2500, "hidden_dim": 96}\'')
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default: the config's seed)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="default", help="names this design's work folder")
    parser.add_argument("--out", default=None, help="work folder (default: <results>/validation/sub-<s>_<modality>)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    results, m = Path(args.results), args.modality
    cfg = load_config(args.config)
    work = Path(args.out or results / "validation" / f"sub-{args.subject}_{m}")
    data = validation_dataset(results / "dataset" / f"sub-{args.subject}" / m, work / "dataset")
    text = m == "text"
    latents = None if text else results / "latents" / f"{m}.npz"
    vae = None if text else results / "models" / f"vae_{m}.pt"
    stimuli = args.stimuli if text else None

    ridge = work / "ridge.npz"
    if not ridge.exists():
        fit_baseline_stage(dataset=str(data), out=str(ridge), params=cfg["baseline"],
                           latents=None if text else str(latents), stimuli=stimuli, seed=cfg["seed"])
    extra = {}
    if m == "image":
        cache = work / "baselines.npz"
        if cache.exists():
            with np.load(cache) as f:
                extra = {k: f[k] for k in f.files}
        else:
            extra = image_baselines(data, latents, ridge, cfg["baseline"], cfg["seed"])
            _io.save_npz(cache, **extra)
    baselines = list(IMAGE_BASELINES) if m == "image" else ["ridge"]
    metrics = KEY_METRICS if m == "image" else ("cer", "wer", "bleu", "two_way_id") if text else ("mel_corr", "lsd", "two_way_id")
    params = {m: {**cfg["decoder"][m], **args.decoder_params, "fit_on": "all"}}
    print(f"design {args.tag}: decoder {params[m]}")
    seeds = args.seeds or [cfg["seed"]]
    num_steps = [0] if text else (args.num_steps or [cfg["sampling"][m].get("num_steps", 25)])
    per_setting: dict[str, list[pd.DataFrame]] = {}
    for seed in seeds:
        run = work / args.tag / f"seed{seed}"
        decoder = run / "decoder.pt"
        if not decoder.exists():
            start = time.perf_counter()
            train_decoder_stage(dataset=str(data), modality=m, out=str(decoder), checkpoint_dir=str(run / "checkpoints"),
                                params=params, seed=seed, threads=args.threads, stimuli=stimuli,
                                latents=None if text else str(latents), vae=None if text else str(vae),
                                ridge=str(ridge))
            print(f"seed {seed}: decoder training {time.perf_counter() - start:.0f} s ({args.threads} thread(s))")
        for scale in args.cfg_scales:
            for steps in num_steps:
                tag = f"cfg{scale:g}_n{steps}"
                recon = run / f"recon_{tag}.npz"
                if not recon.exists():
                    start = time.perf_counter()
                    sampling = {m: dict(cfg["sampling"][m]) if text else {**cfg["sampling"][m], "cfg_scale": scale, "num_steps": steps}}
                    sample_stage(dataset=str(data), modality=m, decoder=str(decoder), out=str(recon), params=sampling,
                                 seed=seed, threads=args.threads, latents=None if text else str(latents),
                                 vae=None if text else str(vae), ridge=str(ridge), stimuli=stimuli)
                    print(f"seed {seed} {tag}: sampling {time.perf_counter() - start:.0f} s")
                items = score_recon(recon, extra, m, cfg["evaluation"], cfg["seed"])
                items["seed"] = seed
                per_setting.setdefault(tag, []).append(items)

    n_items = len(pd.read_parquet(data / "test.parquet"))
    for tag, frames in per_setting.items():
        items = pd.concat(frames)
        # a design's score per item: the mean over training seeds (baselines do not depend on the seed)
        mean_items = items.groupby(["method", "metric", "item"], as_index=False)["score"].mean()
        methods = [x for x in ["dit", "dit_mean8", "decoder", *baselines, "ceiling", "chance"] if x in set(mean_items["method"])]
        table = paired_table(mean_items, methods, baselines, metrics, cfg["evaluation"].get("n_boot", 1000), cfg["seed"])
        print(f"\n== sub-{args.subject} {m} val fold ({n_items} items), design {args.tag}, {tag}, "
              f"seeds {seeds} (per-item mean over seeds); flag +/-: 95% paired interval above/below zero")
        with pd.option_context("display.width", 250, "display.max_columns", 20):
            print(table.to_string(index=False))


if __name__ == "__main__":
    main()
