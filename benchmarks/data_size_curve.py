"""How many training trials the image decoder's lead needs (docs/analysis-plan.md, section 7).

Measured on the **validation fold** of a finished study, never on its test items.
For each subject, the validation fold (the held-out single training trials,
``fold == "val"`` in the dataset's train.parquet, made into "test" items exactly as
``validate_design.validation_dataset`` does: a stimulus shown twice there is
averaged) is decoded from **nested subsets** of the fit-fold trials. For each
(subject, size) the workflow's own stages run on a dataset folder whose train part
is the subset:

1. ``fit_baseline_stage`` with the study's ``baseline`` section: ridge, and the
   other baselines, among them the tuned retrieval baseline ``nn_mean<k>``, whose
   k and source (``nn_k`` / ``nn_source``: ``auto`` in the default config) are
   chosen again on the subset's own out-of-fold predictions;
2. ``train_decoder_stage``: ONE image decoder with the study's ``decoder.image``
   settings (``seeds`` dropped, ``fit_on: all`` = every trial of the subset), seed
   ``--seed`` (default: the study's ``seed``, the workflow's training run 0);
3. ``sample_stage`` with the study's ``sampling.image`` settings, seeded as the
   workflow seeds training run 0's sampling (the training seed);
4. ``evaluate_stage`` with the study's ``evaluation`` section (``resample_by: unit``
   in the default config) and the study's stimuli.tsv, so every item has its family
   and its unit (a training photo's crops are one unit), as the workflow's
   ``evaluate`` rule passes ``--stimuli``.

The study's trained image VAE (``<results>/models/vae_image.pt``) and its latents
(``<results>/latents/image.npz``) are reused, as validate_design.py reuses them:
they were fitted on the training stimuli (both folds), so the VAE has seen the
validation images, as it has in validate_design.py; only the brain decoders and
baselines are refitted per subset.

Reported, per (subject, size): the SSIM paired difference of the one-sample
decoder (``dit``) and of the mean of its samples (``dit_mean<n>``, ``dit_mean8``
with the default sampling) against the retrieval baseline ``nn_mean<k>`` tuned on
that subset (which k and source were chosen is in the columns ``nn_k`` /
``nn_source``), pooled over the validation items (the evaluate stage's own
comparisons.parquet; pooled rows resample units within each family) and per
family (``summary.category_table`` with ``grouping="family"``, as the summarize
stage computes the per-family statements: units resampled within the family).
Then the plan's statement: the smallest subset at which the pooled one-sample
lead's interval lies above zero for every subject evaluated ("the lead needs
about N trials"), or that no subset reaches it.

    .venv/bin/python benchmarks/data_size_curve.py [--results results/sim] [--config config.yaml] \\
        [--subjects 01 02] [--sizes 250 500 1000 1800] [--seed 0] [--threads 2] \\
        [--decoder-params '{"steps": 200}'] [--out results/sim/data_size]

Writes, under ``--out`` (default ``<results>/data_size``), atomically:

- ``data_size.parquet``: one row per (subject, size, family or ``pooled``,
  decoder method): ``subject, size, n_trials, n_fit_trials, family, method,
  baseline, comparison, nn_k, nn_source, metric, value, ci_low, ci_high, n,
  resample_unit, decoder_value, baseline_value`` (``value`` is the paired
  difference decoder - baseline, ``n`` what the bootstrap's ``n`` counts: items);
- ``data_size.md``: the same as a table, with the statement;
- ``sub-<s>_fit_order.parquet``: each subject's permutation of the fit trials
  (``rank``, ``train_row``: the row in the study's train.parquet, ``stimulus_id``);
  subset N is ``rank < N``;
- ``work/sub-<s>_validation/``: the validation dataset (rebuilt on every run);
  ``work/sub-<s>_n<N>_<key>/``: each run's dataset folder, models, recon and
  evaluation files, and its ``rows.parquet``. ``<key>`` hashes everything the
  run depends on (the subset's trials, the config sections, the overrides and
  seeds, the validation items, and the path, size and time of the study's
  X_train, latents and VAE), so a killed run resumes: a finished (subject, size)
  is read back from its rows.parquet, a half-finished one reuses every stage
  output it already has (and the decoder resumes from its checkpoints), and a
  changed setting gets a new folder instead of stale files.

Decisions the plan leaves open (section 7):

- The subsets: one permutation of the fit-fold trials (train.parquet's rows with
  ``fold == "train"``, in file order) drawn by ``numpy.random.default_rng(seed)``
  with ``seed`` the study's ``seed`` (``--subset-seed`` changes it), the same rule
  for every subject; subset N is its first N trials, so the subsets are nested.
  They are subsets of trials, as the plan says; in the default study every
  training image is shown once, so trials and stimuli coincide. A size above the
  number of fit trials uses all of them (logged, and ``n_trials`` < ``size`` in
  the table). Sizes are labelled by the requested N.
- The decoder's training length is the study's (``decoder.image.steps``) at every
  size: smaller subsets are seen for more epochs, nothing is re-tuned per size.
- The evaluation uses the validation items' units and families from stimuli.tsv,
  where the validation items are training stimuli (photo crops of the training
  photos share a unit).
- "for both subjects" is read as "for every subject evaluated" (both, by default);
  the statement takes the smallest size that meets it, and names any larger size
  that does not (a curve need not be monotone).
- The stimuli table is ``<repo>/<data.bids_root or data/<study>/bids>/stimuli/stimuli.tsv``
  (``data/<study>/nsd`` for NSD), the workflow's ``STIMULI_TSV``, with ``<repo>``
  the folder holding ``results/<study>``; ``--stimuli`` names another.

Cost (not measured at the default's size): per (subject, size) one decoder
training (validate_design.py measured 238 s for 2,500 steps of the default image
DiT on 2 threads, so about 7-8 min for 4,600 steps) plus the baseline fit,
sampling (8 samples, 25 Euler steps) and evaluation; 2 subjects x 4 sizes is
about 8 trainings, roughly 1-1.5 h on 2 threads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # validate_design, beside this file

from cortexflow import _io  # noqa: E402
from cortexflow.config import load_config  # noqa: E402
from cortexflow.evaluation.evaluate import EvaluationConfig, evaluate_stage, is_decoder_method  # noqa: E402
from cortexflow.evaluation.summary import category_table  # noqa: E402
from cortexflow.evaluation.units import load_item_units  # noqa: E402
from cortexflow.models.baselines import load_baselines  # noqa: E402
from cortexflow.stages.baseline import fit_baseline_stage  # noqa: E402
from cortexflow.stages.decoder import train_decoder_stage  # noqa: E402
from cortexflow.stages.sample import sample_stage  # noqa: E402
from validate_design import validation_dataset  # noqa: E402

log = logging.getLogger("data_size_curve")

MODALITY = "image"
METRIC = "ssim"
POOLED = "pooled"
DEFAULT_SIZES = (250, 500, 1000, 1800)
COLUMNS = ["subject", "size", "n_trials", "n_fit_trials", "family", "method", "baseline", "comparison", "nn_k",
           "nn_source", "metric", "value", "ci_low", "ci_high", "n", "resample_unit", "decoder_value",
           "baseline_value"]
# the plan's reference point, cited beside the curve (docs/analysis-plan.md, section 7)
EARLIER_STUDY = ("The earlier 800-image, three-subject study (a tie: SSIM one sample -.03, intervals holding zero) "
                 "is the point this curve must agree with.")


# ------------------------------------------------------------------ subsets


def fit_order(train: pd.DataFrame, seed: int) -> pd.DataFrame:
    """One fixed random order of the fit-fold trials: columns ``rank``, ``train_row`` (row of
    ``train``), ``stimulus_id``. Subset N is ``rank < N``, so every subset holds the smaller ones."""
    fit_rows = np.flatnonzero((train["fold"] == "train").to_numpy())
    order = fit_rows[np.random.default_rng(seed).permutation(len(fit_rows))]
    return pd.DataFrame({"rank": np.arange(len(order)), "train_row": order,
                         "stimulus_id": train["stimulus_id"].astype(str).to_numpy()[order]})


def subset_rows(order: pd.DataFrame, size: int) -> np.ndarray:
    """Rows of train.parquet in subset ``size`` (all fit trials if it asks for more), in rank order."""
    return order["train_row"].to_numpy()[:size]


def subset_dataset(dataset: Path, validation: Path, rows: np.ndarray, out: Path) -> Path:
    """A dataset folder: train part = the study dataset's ``rows`` (fit-fold trials), test part =
    ``validation``'s (the val fold as validate_design.validation_dataset builds it)."""
    train = pd.read_parquet(dataset / "train.parquet")
    X = np.load(dataset / "X_train.npy", mmap_mode="r")
    _io.save_npy(out / "X_train.npy", np.ascontiguousarray(X[rows]))
    _io.save_parquet(out / "train.parquet", train.iloc[rows].reset_index(drop=True))
    for name in ("X_test.npy",):
        _io.save_npy(out / name, np.load(validation / name))
    for name in ("test.parquet", "voxels.parquet"):
        _io.save_parquet(out / name, pd.read_parquet(validation / name))
    summary = json.loads((validation / "dataset.json").read_text())
    _io.save_json(out / "dataset.json", {**summary, "fit_subset_trials": int(len(rows))})
    return out


# ------------------------------------------------------------------ the study


def study_subjects(results: Path) -> list[str]:
    """Every subject with an image dataset in the study's results."""
    return sorted(p.parent.name.removeprefix("sub-") for p in (results / "dataset").glob(f"sub-*/{MODALITY}")
                  if p.is_dir())


def stimuli_table(results: Path, cfg: dict) -> Path:
    """The workflow's STIMULI_TSV (workflow/rules/common.smk) for a study whose results are ``results``
    (``<repo>/results/<study>``): relative paths of the config are taken from ``<repo>``."""
    repo = results.resolve().parent.parent
    data = cfg["data"]
    if data.get("source") == "nsd":
        root = Path(f"data/{cfg['study']}/nsd")
    else:
        root = Path(data.get("bids_root") or f"data/{cfg['study']}/bids")
    return root / "stimuli" / "stimuli.tsv" if root.is_absolute() else repo / root / "stimuli" / "stimuli.tsv"


def _identity(path: Path) -> list:
    """A study input as the cache key sees it: where it is, its size and when it was written (a retrained
    VAE or a rebuilt dataset gets new folders)."""
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def run_key(**facts) -> str:
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:10]


# ------------------------------------------------------------------ one (subject, size)


def lead_rows(summary: pd.DataFrame, comparisons: pd.DataFrame, items: pd.DataFrame, stimuli: Path,
              evaluation: dict, seed: int, baseline: str) -> pd.DataFrame:
    """Each decoder method's SSIM paired difference against ``baseline``: pooled (the evaluate stage's
    comparisons) and per family (``category_table`` by family, as the summarize stage computes it)."""
    config = EvaluationConfig.from_params(evaluation)
    decoders = sorted(m for m in items["method"].unique() if is_decoder_method(m))
    mean = summary.set_index(["method", "metric"])["value"]
    rows = []
    for r in comparisons[(comparisons["metric"] == METRIC) & comparisons["method_a"].isin(decoders)
                         & (comparisons["method_b"] == baseline)].itertuples():
        rows.append({"family": POOLED, "method": r.method_a, "value": r.diff, "ci_low": r.ci_low,
                     "ci_high": r.ci_high, "n": r.n, "resample_unit": r.resample_unit,
                     "decoder_value": mean[(r.method_a, METRIC)], "baseline_value": mean[(baseline, METRIC)]})
    units = load_item_units(stimuli, np.sort(items["item"].astype(str).unique()))
    families = dict(zip(units.items, units.family))
    best = pd.DataFrame(columns=["subject", "modality", "metric", "baseline"])  # unused when grouping by family
    scored = items[items["metric"] == METRIC]
    by_family = category_table(scored, families, best, subject="", modality=MODALITY, config=config, seed=seed,
                               units=units if config.resample_by == "unit" else None, grouping="family")
    own = by_family[by_family["baseline"] == ""].set_index(["category", "method"])["value"]
    for r in by_family[(by_family["baseline"] == baseline) & by_family["method"].isin(decoders)].itertuples():
        rows.append({"family": r.category, "method": r.method, "value": r.value, "ci_low": r.ci_low,
                     "ci_high": r.ci_high, "n": r.n, "resample_unit": r.resample_unit,
                     "decoder_value": own[(r.category, r.method)], "baseline_value": own[(r.category, baseline)]})
    return pd.DataFrame(rows)


def run_one(*, subject: str, size: int, order: pd.DataFrame, dataset: Path, validation: Path, work_root: Path,
            cfg: dict, decoder_params: dict, seed: int, threads: int, stimuli: Path, latents: Path,
            vae: Path) -> pd.DataFrame:
    """The workflow's stages on one nested subset; its rows of the table (read back if done before)."""
    rows = subset_rows(order, size)
    n_fit = len(order)
    if size > n_fit:
        log.warning("sub-%s: size %d exceeds the %d fit-fold trials: using all %d", subject, size, n_fit, n_fit)
    decoder_section = {**{k: v for k, v in (cfg["decoder"][MODALITY] or {}).items() if k != "seeds"},
                       **decoder_params, "fit_on": "all"}
    sampling = {MODALITY: dict(cfg["sampling"][MODALITY] or {})}
    key = run_key(trials=order["stimulus_id"].to_numpy()[:size].tolist(), rows=rows.tolist(),
                  baseline=cfg["baseline"], decoder=decoder_section, sampling=sampling, evaluation=cfg["evaluation"],
                  study_seed=cfg["seed"], seed=seed, validation=pd.read_parquet(validation / "test.parquet")
                  ["stimulus_id"].tolist(), inputs=[_identity(p) for p in (dataset / "X_train.npy", latents, vae)])
    work = work_root / f"sub-{subject}_n{size:04d}_{key}"
    done = work / "rows.parquet"
    if done.is_file():
        log.info("sub-%s, %d trials: done before (%s), reused", subject, len(rows), work)
        return pd.read_parquet(done)
    start = time.perf_counter()
    log.info("sub-%s, size %d (%d trials): %s", subject, size, len(rows), work)
    data = work / "dataset"
    if not (data / "dataset.json").is_file():  # dataset.json is written last
        subset_dataset(dataset, validation, rows, data)
    ridge, baselines = work / "ridge.npz", work / "baselines.npz"
    if not baselines.is_file():
        fit_baseline_stage(dataset=str(data), out=str(ridge), params=cfg["baseline"], latents=str(latents),
                           seed=cfg["seed"], out_baselines=str(baselines))
    fitted = load_baselines(baselines)
    tuned = f"nn_mean{fitted.nn_k}"
    log.info("sub-%s, size %d: baselines fitted (%.0f s); retrieval tuned on the subset: %s of the %s images",
             subject, size, time.perf_counter() - start, tuned, fitted.nn_source)
    decoder = work / "decoder.pt"
    if not decoder.is_file():
        train_decoder_stage(dataset=str(data), modality=MODALITY, out=str(decoder),
                            checkpoint_dir=str(work / "checkpoints"), params={MODALITY: decoder_section}, seed=seed,
                            threads=threads, latents=str(latents), vae=str(vae), ridge=str(ridge))
    log.info("sub-%s, size %d: decoder trained (%.0f s elapsed)", subject, size, time.perf_counter() - start)
    recon = work / "recon.npz"
    if not recon.is_file():
        sample_stage(dataset=str(data), modality=MODALITY, decoder=str(decoder), out=str(recon), params=sampling,
                     seed=seed, threads=threads, latents=str(latents), vae=str(vae), ridge=str(ridge),
                     baselines=str(baselines))
    summary, items, comparisons = work / "summary.parquet", work / "items.parquet", work / "comparisons.parquet"
    if not comparisons.is_file():  # evaluate_stage writes it last
        evaluate_stage(recon=[str(recon)], out_summary=str(summary), out_items=str(items),
                       out_comparisons=str(comparisons), subject=subject, modality=MODALITY,
                       params=cfg["evaluation"], seed=cfg["seed"], stimuli=str(stimuli))
    table = lead_rows(pd.read_parquet(summary), pd.read_parquet(comparisons), pd.read_parquet(items), stimuli,
                      cfg["evaluation"], cfg["seed"], tuned)
    table = table.assign(subject=subject, size=int(size), n_trials=len(rows), n_fit_trials=n_fit, baseline=tuned,
                         comparison=table["method"] + " - " + tuned, nn_k=int(fitted.nn_k),
                         nn_source=fitted.nn_source, metric=METRIC)[COLUMNS]
    _io.save_parquet(done, table)
    log.info("sub-%s, size %d: done in %.0f s", subject, size, time.perf_counter() - start)
    return table


# ------------------------------------------------------------------ the statement and the report


def lead_statement(table: pd.DataFrame, method: str = "dit") -> tuple[int | None, str]:
    """The plan's statement: the smallest size at which the pooled ``method`` lead's interval lies
    above zero (``ci_low > 0``) for every subject of ``table``; (None, ...) if no size does."""
    pooled = table[(table["family"] == POOLED) & (table["method"] == method)]
    subjects = sorted(pooled["subject"].astype(str).unique())
    if not subjects:
        return None, f"no pooled {method} rows to decide on"
    who = "both subjects" if len(subjects) == 2 else f"every subject ({', '.join('sub-' + s for s in subjects)})"
    leads = {}
    for size, group in pooled.groupby("size", sort=True):
        above = set(group.loc[group["ci_low"] > 0, "subject"].astype(str))
        leads[int(size)] = above >= set(subjects)
    reached = [s for s, ok in leads.items() if ok]
    if not reached:
        return None, (f"No subset reaches it: at no size ({', '.join(map(str, leads))} trials) is the pooled "
                      f"one-sample ({method}) SSIM lead over the tuned retrieval baseline's interval above zero "
                      f"for {who}.")
    first = min(reached)
    text = (f"The lead needs about {first} trials: {first} is the smallest subset at which the pooled one-sample "
            f"({method}) SSIM lead over the tuned retrieval baseline's interval is above zero for {who}.")
    later = [s for s, ok in leads.items() if s > first and not ok]
    if later:
        text += f" (Not at every larger size: not at {', '.join(map(str, later))}.)"
    return first, text


def _ci(r) -> str:
    return f"{r.value:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"


def markdown(table: pd.DataFrame, statement: str, *, study: str, evaluation: dict) -> str:
    confidence = EvaluationConfig.from_params(evaluation).confidence
    methods = sorted(table["method"].unique(), key=lambda m: (m != "dit", m))
    lines = [f"# Data size: the image decoder's SSIM lead on the validation fold ({study})", "",
             "docs/analysis-plan.md, section 7. Nested subsets of the fit-fold trials; per subset the baselines are "
             "refitted (the retrieval baseline `nn_mean<k>` tuned again on the subset) and one decoder is trained "
             f"(one seed); the difference is decoder minus the tuned `nn_mean<k>`, paired over the validation "
             f"items, with its {confidence:.0%} interval over units.", "",
             "| subject | size | trials | family | items | unit | retrieval | "
             + " | ".join(f"{m} − retrieval" for m in methods) + " |",
             "|" + "---|" * (7 + len(methods))]
    family_order = {POOLED: ""}
    keyed = table.assign(_f=table["family"].map(lambda f: family_order.get(f, f)))
    for (subject, size, _, family), group in keyed.groupby(["subject", "size", "_f", "family"], sort=True):
        by_method = {r.method: r for r in group.itertuples()}
        first = next(iter(by_method.values()))
        cells = [_ci(by_method[m]) if m in by_method else "" for m in methods]
        name = f"**{family}**" if family == POOLED else family
        lines.append(f"| sub-{subject} | {size} | {first.n_trials} | {name} | {first.n} | {first.resample_unit} | "
                     f"nn_mean{first.nn_k} ({first.nn_source}) | " + " | ".join(cells) + " |")
    short = table.drop_duplicates(["subject", "size"]).query("n_trials < size")
    if len(short):
        lines += ["", "Sizes above a subject's fit-fold trials used all of them: "
                  + ", ".join(f"sub-{r.subject} {r.size} -> {r.n_trials}" for r in short.itertuples()) + "."]
    lines += ["", f"**Statement.** {statement}", "", EARLIER_STUDY, ""]
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results/sim", help="a finished study's results folder")
    parser.add_argument("--config", default="config.yaml", help="the study's config")
    parser.add_argument("--subjects", nargs="+", default=None, help="default: every subject of the study")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES),
                        help="numbers of fit-fold trials (nested subsets)")
    parser.add_argument("--seed", type=int, default=None, help="training seed (default: the study's seed)")
    parser.add_argument("--subset-seed", type=int, default=None,
                        help="seed of the fit trials' permutation (default: the study's seed)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decoder-params", type=json.loads, default={},
                        help='JSON overrides of decoder.image, e.g. \'{"steps": 2500}\'')
    parser.add_argument("--stimuli", default=None, help="the study's stimuli.tsv (default: as the workflow finds it)")
    parser.add_argument("--out", default=None, help="default: <results>/data_size")
    return parser.parse_args(argv)


def main(argv=None) -> pd.DataFrame:
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    log.setLevel(logging.INFO)
    start = time.perf_counter()
    results = Path(args.results)
    cfg = load_config(args.config)
    seed = cfg["seed"] if args.seed is None else args.seed
    subset_seed = cfg["seed"] if args.subset_seed is None else args.subset_seed
    out = Path(args.out or results / "data_size")
    stimuli = Path(args.stimuli) if args.stimuli else stimuli_table(results, cfg)
    latents, vae = results / "latents" / f"{MODALITY}.npz", results / "models" / f"vae_{MODALITY}.pt"
    for path, what in ((stimuli, "stimuli table"), (latents, "image latents"), (vae, "image VAE")):
        if not path.is_file():
            raise SystemExit(f"{path}: the study's {what} is missing (is {results} a finished study?)")
    subjects = args.subjects or study_subjects(results)
    if not subjects:
        raise SystemExit(f"{results}/dataset: no subject has an image dataset")
    sizes = sorted(set(args.sizes))
    log.info("study %s, subjects %s, sizes %s, training seed %d, subset seed %d, out %s", results, subjects, sizes,
             seed, subset_seed, out)
    tables = []
    for subject in subjects:
        dataset = results / "dataset" / f"sub-{subject}" / MODALITY
        validation = out / "work" / f"sub-{subject}_validation"
        validation_dataset(dataset, validation)  # rebuilt every time (cheap): it follows the study's dataset
        order = fit_order(pd.read_parquet(dataset / "train.parquet"), subset_seed)
        _io.save_parquet(out / f"sub-{subject}_fit_order.parquet", order)
        log.info("sub-%s: %d fit-fold trials, %d validation items", subject, len(order),
                 len(pd.read_parquet(validation / "test.parquet")))
        for size in sizes:
            tables.append(run_one(subject=subject, size=size, order=order, dataset=dataset, validation=validation,
                                  work_root=out / "work", cfg=cfg, decoder_params=args.decoder_params, seed=seed,
                                  threads=args.threads, stimuli=stimuli, latents=latents, vae=vae))
            log.info("%.0f s elapsed", time.perf_counter() - start)
    table = pd.concat(tables, ignore_index=True)
    _, statement = lead_statement(table)
    text = markdown(table, statement, study=results.name, evaluation=cfg["evaluation"])
    _io.save_parquet(out / "data_size.parquet", table)
    with _io.atomic_write(out / "data_size.md") as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(text)
    log.info("wrote %s and %s in %.0f s", out / "data_size.parquet", out / "data_size.md", time.perf_counter() - start)
    return table


if __name__ == "__main__":
    main()
