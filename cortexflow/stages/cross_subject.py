"""Stages of the ``cross_subject`` target (workflow/rules/cross_subject.smk).

Does a decoder trained on other subjects help a new subject with little data?
(MindEye2's question, Scotti et al. 2024, arXiv:2403.17188.)

- ``train_shared_decoder``: one flow decoder trained on every subject but the
  held-out one, each through its own voxel adapter into a shared space
  (:mod:`cortexflow.models.cross_subject`), all their training trials mixed.
- ``cross_subject_fit``: for the held-out subject and a budget of its first
  ``runs`` runs' training trials, either fine-tunes the shared decoder (a fresh
  adapter for this subject; ``init: shared``) or trains the same architecture
  from scratch on the same trials for the same number of steps (``init:
  scratch``; this job also fits ridge on those trials, the linear reference);
  then reconstructs the subject's test stimuli.
- ``cross_subject_curve``: scores every reconstruction and writes the
  data-efficiency curve (quality vs trials, 95% bootstrap intervals) and the
  paired differences fine-tuned − subject-alone over the same test items.

Neither arm conditions on a ridge prior (the default decoder does): the
question is what the shared weights bring, and a prior fitted on a run or two
of trials would mostly add noise to both arms. Nothing here is chosen on the
test items: the settings are fixed in the config before the curve is seen.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cortexflow import _io
from cortexflow.errors import CortexflowInputError
from cortexflow.models.latents import load_latents
from cortexflow.stages.decoder import (_build_flow_decoder, _final_loss, _run_tag, _training_config,
                                       latent_flow_batches)
from cortexflow.devices import resolve_device
from cortexflow.stages.params import CrossSubjectParams, DecoderParams
from cortexflow.stages.vae import load_vae

log = logging.getLogger("cortexflow.stages.cross_subject")

# the config section its stages' --params come from (cortexflow.stages.STAGES reads it)
STAGE_SECTIONS = "cross_subject"

INITS = ("shared", "scratch")


def _subject_data(dataset: str, latents_path: str, lat, rows: np.ndarray | None = None):
    """(X (n, voxels) float32, latents (n, ...), stimulus ids, the dataset) of a dataset's training trials."""
    from cortexflow.preprocess.dataset import load_dataset

    data = load_dataset(dataset)
    keep = np.ones(len(data.train), dtype=bool) if rows is None else rows(data)
    X = data.X_train[keep].astype(np.float32)
    ids = data.train["stimulus_id"].to_numpy(str)[keep]
    return X, lat.latents[lat.rows(ids, latents_path)], ids, data


def first_runs_rows(train: pd.DataFrame, runs: int, source: str | Path | None = None) -> np.ndarray:
    """Rows of the training trials in the subject's first ``runs`` runs (sessions, then run order)."""
    if "run" not in train.columns:
        raise CortexflowInputError("the dataset's train.parquet has no 'run' column", path=source,
                                   fix="rebuild the dataset with make_dataset")
    keys = train[["session", "run"]] if "session" in train.columns else train[["run"]]
    labels = keys.astype(str).agg("|".join, axis=1).to_numpy()

    def run_key(label: str):  # numbers as numbers: run 10 after run 2
        return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in label.split("|")]

    order = sorted(set(labels), key=run_key)
    if runs > len(order):
        raise CortexflowInputError(f"a budget of {runs} runs asked for, but the subject has {len(order)}",
                                   path=source, fix=f"keep cross_subject.runs at most {len(order)}")
    return np.isin(labels, order[:runs])


def _train(model, X: torch.Tensor, Y: torch.Tensor, subject_idx: torch.Tensor | None, p: DecoderParams,
           steps: int, seed: int, device: str, checkpoint_dir: str, tag: str, name: str = "train"):
    """Train ``model`` for ``steps`` steps on (X, Y); returns the mean of its last losses and the loss curve."""
    from cortexflow.training.trainer import Trainer

    batch_fn, loss_fn = latent_flow_batches(X, Y, p.batch_size, seed, subject_idx=subject_idx)

    config = _training_config(p, seed, device)
    config.max_steps = steps
    config.warmup_steps = min(config.warmup_steps, max(1, steps // 5))
    config.log_every = max(1, steps // 25)
    trainer = Trainer(model, config)
    trainer.name = name
    result = trainer.fit(batch_fn, steps=steps, loss_fn=loss_fn, checkpoint_dir=checkpoint_dir, run_tag=tag)
    if trainer.ema is not None:
        trainer.ema.apply_to(model)
    return _final_loss(result), trainer.curve


def _cross_subject_decoder(modality: str, p: DecoderParams, subject_voxels: dict[str, int], shared_dim: int, vae,
                           extra: dict):
    from cortexflow.models.cross_subject import CrossSubjectEncoder

    encoder = CrossSubjectEncoder(subject_voxels, shared_dim=shared_dim, cond_dim=p.hidden_dim, n_tokens=p.n_tokens,
                                  dropout=p.encoder_dropout, input_dropout=p.encoder_input_dropout)
    return _build_flow_decoder(modality, p, encoder.n_voxels, vae, extra, encoder)


def train_shared_decoder_stage(*, datasets: list[str], subjects: list[str], out: str, checkpoint_dir: str,
                               params: dict, latents: str, vae: str, seed: int = 0, threads: int = 1,
                               device: str = "cpu", out_curve: str | None = None) -> None:
    """Train one flow decoder on several subjects, each through its own voxel adapter.

    Its loss curve goes to ``out_curve`` (default ``<out stem>_curve.parquet`` beside ``out``).
    """
    from cortexflow.models.io import save_model
    from cortexflow.training.history import curve_path
    from cortexflow.training.trainer import seed_everything

    _io.set_threads(threads)
    seed_everything(seed)
    c = CrossSubjectParams.from_params(params)
    resolve_device(device)
    if len(datasets) != len(subjects) or not datasets:
        raise CortexflowInputError(f"train_shared_decoder needs one dataset per subject, got {len(datasets)} "
                                   f"datasets for subjects {subjects}")
    lat = load_latents(latents)
    parts = [_subject_data(d, latents, lat) for d in datasets]
    width = max(X.shape[1] for X, *_ in parts)
    X = np.zeros((sum(len(x) for x, *_ in parts), width), dtype=np.float32)
    row = 0
    for X_s, *_ in parts:  # zero-padded to the widest subject; each adapter reads its own columns
        X[row:row + len(X_s), :X_s.shape[1]] = X_s
        row += len(X_s)
    Y = np.concatenate([y for _, y, *_ in parts])
    subject_idx = np.concatenate([np.full(len(x), i) for i, (x, *_) in enumerate(parts)])
    p = c.decoder_params(c.shared_steps)
    vae_model, extra = load_vae(vae)
    extra = {**extra, "image_size": int(lat.targets.shape[-1])}
    model = _cross_subject_decoder(c.modality, p, {s: x.shape[1] for s, (x, *_) in zip(subjects, parts)},
                                   c.shared_dim, vae_model, extra)
    model.set_latent_stats(torch.from_numpy(Y))
    log.info("shared %s decoder on subjects %s: %d trials (%s)", c.modality, subjects, len(X),
             ", ".join(f"sub-{s} {len(x)}" for s, (x, *_) in zip(subjects, parts)))
    loss, curve = _train(model, torch.from_numpy(X), torch.from_numpy(Y), torch.from_numpy(subject_idx).long(), p,
                         c.shared_steps, seed, device, checkpoint_dir, _run_tag(X, Y, subject_idx, params=p),
                         name=Path(out).stem)
    save_model(model.cpu(), out, extra={"modality": c.modality, "subjects": list(subjects), "params": asdict(p),
                                       "vae_extra": extra, "final_loss": loss})
    curve.save(out_curve or curve_path(out))
    log.info("wrote %s and its loss curve %s", out, out_curve or curve_path(out))


def cross_subject_fit_stage(*, dataset: str, subject: str, runs: int, init: str, out: str, checkpoint_dir: str,
                            params: dict, latents: str, vae: str, shared: str | None = None, seed: int = 0,
                            threads: int = 1, device: str = "cpu", out_curve: str | None = None) -> None:
    """Train the held-out subject's decoder on the trials of its first N runs (N: ``runs``), from the
    shared decoder or from scratch, and reconstruct its test stimuli.

    The training phases' loss curves go to ``out_curve`` (default
    ``<out stem>_curve.parquet`` beside ``out``), one table with a ``phase``
    column and steps counted over both phases."""
    from cortexflow.training.history import curve_path
    from cortexflow.models.cross_subject import adapt_to_subject, set_trainable
    from cortexflow.models.inference import reconstruct_first_and_mean
    from cortexflow.models.io import load_model
    from cortexflow.models.ridge import RidgeDecoder
    from cortexflow.stages.sample import _decode_to_stimulus, _from_model_space
    from cortexflow.training.trainer import seed_everything

    _io.set_threads(threads)
    seed_everything(seed)
    c = CrossSubjectParams.from_params(params)
    resolve_device(device)
    if init not in INITS:
        raise CortexflowInputError(f"init must be one of {INITS}, got {init!r}")
    lat = load_latents(latents)
    X, Y, ids, data = _subject_data(dataset, latents, lat, lambda d: first_runs_rows(d.train, int(runs), dataset))
    p = c.decoder_params(c.finetune_steps)
    log.info("sub-%s, first %d run(s): %d training trials, init %s", subject, runs, len(X), init)
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    tag = _run_tag(X, Y, np.asarray([runs]), params=p)
    if init == "shared":
        if shared is None:
            raise CortexflowInputError("init shared needs --shared (the train_shared_decoder output)")
        model = adapt_to_subject(load_model(shared), subject, X.shape[1]).train()
        phases = [("adapter", c.adapter_steps), (c.finetune_trainable, c.finetune_steps - c.adapter_steps)]
    else:
        vae_model, extra = load_vae(vae)
        extra = {**extra, "image_size": int(lat.targets.shape[-1])}
        model = _cross_subject_decoder(c.modality, p, {subject: X.shape[1]}, c.shared_dim, vae_model, extra)
        model.set_latent_stats(Yt)
        phases = [("all", c.finetune_steps)]
    losses, curves, done, seconds = [], [], 0, 0.0
    for i, (which, steps) in enumerate(phases):
        if steps > 0:
            set_trainable(model, which)
            loss, curve = _train(model, Xt, Yt, None, p, steps, seed + i, device, f"{checkpoint_dir}/phase{i}",
                                 f"{tag}-{i}", name=f"{Path(out).stem} phase {i} ({which})")
            losses.append(loss)
            frame = curve.frame()  # steps and seconds counted from the start of the first phase
            curves.append(frame.assign(step=frame["step"] + done, elapsed_s=frame["elapsed_s"] + seconds,
                                       phase=f"{i}:{which}"))
            done, seconds = done + steps, seconds + curve.elapsed_s
    _io.save_parquet(out_curve or curve_path(out), pd.concat(curves, ignore_index=True))
    model.eval()

    # the test stimuli
    X_test = data.X_test.astype(np.float32)
    test_ids = data.test["stimulus_id"].to_numpy(str)
    rows = lat.rows(test_ids, latents)
    s = c.sampling_params()
    k = max(1, s.n_samples)
    first, mean = reconstruct_first_and_mean(
        model, torch.from_numpy(X_test), to_stimulus=lambda x: _from_model_space(x, lat, c.modality),
        batch_size=s.batch_size, seed=seed, num_samples=k, num_steps=s.num_steps, cfg_scale=s.cfg_scale,
        solver=s.solver, shift=s.shift, precision=s.precision, noise_scale=s.noise_scale)
    arrays = {"ids": test_ids, "truth": lat.targets[rows], "dit": first}
    if mean is not None:
        arrays[f"dit_mean{k}"] = mean
    if init == "scratch":  # the linear reference on the same trials
        ridge = RidgeDecoder(seed=seed).fit(X, Y.reshape(len(Y), -1), groups=ids)
        z = ridge.predict(X_test).reshape(len(X_test), *Y.shape[1:]).astype(np.float32)
        arrays["ridge"] = _decode_to_stimulus(model, z, lat, c.modality, s.batch_size)
    _io.save_npz(out, **arrays)
    _io.save_json(Path(out).with_suffix(".json"), {"subject": subject, "runs": int(runs), "init": init,
                                                   "n_trials": int(len(X)), "final_losses": losses})
    log.info("wrote %s (%d test stimuli, methods %s)", out, len(test_ids), sorted(set(arrays) - {"ids", "truth"}))


def _parse_recon_name(path: str) -> tuple[str, str, int, int]:
    """(subject, init, runs, n_trials) of a cross_subject_fit output, from its JSON beside it."""
    import json

    meta_path = Path(path).with_suffix(".json")
    if not meta_path.is_file():
        raise CortexflowInputError("the cross-subject reconstruction has no JSON beside it", path=path,
                                   fix="rerun cross_subject_fit")
    meta = json.loads(meta_path.read_text())
    return str(meta["subject"]), str(meta["init"]), int(meta["runs"]), int(meta["n_trials"])


def cross_subject_curve_stage(*, recons: list[str], out_curve: str, out_comparisons: str, out_markdown: str,
                              out_figure: str, params: dict, evaluation: str | None = None, seed: int = 0) -> None:
    """Score every held-out reconstruction; write the quality-vs-trials curve and the
    paired differences fine-tuned − subject-alone (and − ridge) at each budget.
    ``evaluation``: the config's evaluation section as JSON (metrics' settings)."""
    import json

    from cortexflow.evaluation.bootstrap import bootstrap_ci, bootstrap_indices, paired_bootstrap
    from cortexflow.evaluation.evaluate import EvaluationConfig, load_recon, score_items

    c = CrossSubjectParams.from_params(params)
    ev = EvaluationConfig.from_params({**(json.loads(evaluation) if evaluation else {}), "n_boot": c.n_boot})
    scores: dict[tuple[str, int], dict[tuple[str, str], pd.Series]] = {}
    trials: dict[tuple[str, int], int] = {}
    for path in recons:
        subject, init, runs, n_trials = _parse_recon_name(path)
        recon = load_recon(path, c.modality)
        items = score_items(recon, c.modality, ev, seed)
        items = items[items["method"] != "chance"] if init == "shared" else items
        cell = scores.setdefault((subject, runs), {})
        trials[(subject, runs)] = n_trials
        for (method, metric), g in items.groupby(["method", "metric"]):
            arm = method if method in ("ridge", "chance") else f"{init}:{method}"
            cell[(arm, metric)] = g.set_index("item")["score"].sort_index()
    curve, comps = [], []
    for (subject, runs), cell in sorted(scores.items()):
        n_items = len(next(iter(cell.values())))
        indices = bootstrap_indices(n_items, ev.n_boot, seed)
        for (arm, metric), s in cell.items():
            r = bootstrap_ci(s.to_numpy(), confidence=ev.confidence, indices=indices)
            curve.append((subject, runs, trials[(subject, runs)], arm, metric, r.value, r.ci_low, r.ci_high, r.n))
        for (arm, metric), s in cell.items():
            if not arm.startswith("shared:"):
                continue
            method = arm.split(":", 1)[1]
            for ref in (f"scratch:{method}", "ridge"):
                if (ref, metric) in cell:
                    b = cell[(ref, metric)]
                    if not s.index.equals(b.index):
                        raise CortexflowInputError(f"sub-{subject} runs {runs}: {arm} and {ref} scored different "
                                                   "test items", fix="rerun cross_subject_fit for both arms")
                    r = paired_bootstrap(s.to_numpy(), b.to_numpy(), confidence=ev.confidence, indices=indices)
                    comps.append((subject, runs, trials[(subject, runs)], metric, arm, ref, r.value, r.ci_low,
                                  r.ci_high, r.n))
    curve_df = pd.DataFrame(curve, columns=["subject", "runs", "n_trials", "method", "metric", "value", "ci_low",
                                            "ci_high", "n"])
    comp_df = pd.DataFrame(comps, columns=["subject", "runs", "n_trials", "metric", "method_a", "method_b", "diff",
                                           "ci_low", "ci_high", "n"])
    _io.save_parquet(out_curve, curve_df)
    _io.save_parquet(out_comparisons, comp_df)
    with _io.atomic_write(out_markdown) as tmp:
        tmp.write_text(curve_markdown(curve_df, comp_df))
    _curve_figure(curve_df, out_figure)
    log.info("wrote %s, %s, %s, %s", out_curve, out_comparisons, out_markdown, out_figure)


def curve_markdown(curve: pd.DataFrame, comps: pd.DataFrame) -> str:
    """The curve and the paired differences as Markdown tables."""
    lines = ["# Cross-subject data efficiency", "",
             "Per held-out subject and budget (its first k runs): test-set means with 95% bootstrap intervals; "
             "`shared:` is the shared decoder fine-tuned on those trials, `scratch:` the same architecture "
             "trained on them alone for the same steps, `ridge` ridge regression on them.", ""]
    for metric, g in curve.groupby("metric", sort=False):
        lines += [f"## {metric}", "", "| subject | runs | trials | method | value [95% CI] |", "|---|---|---|---|---|"]
        for r in g.sort_values(["subject", "runs", "method"]).itertuples():
            lines.append(f"| {r.subject} | {r.runs} | {r.n_trials} | {r.method} | "
                         f"{r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] |")
        lines.append("")
    lines += ["## Paired differences (same test items)", "",
              "| subject | runs | trials | metric | a − b | diff [95% CI] |", "|---|---|---|---|---|---|"]
    for r in comps.sort_values(["subject", "metric", "method_a", "method_b", "runs"]).itertuples():
        lines.append(f"| {r.subject} | {r.runs} | {r.n_trials} | {r.metric} | {r.method_a} − {r.method_b} | "
                     f"{r.diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}] |")
    return "\n".join(lines) + "\n"


def _curve_figure(curve: pd.DataFrame, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(curve["metric"]))
    subjects = sorted(curve["subject"].unique())
    fig, axes = plt.subplots(len(subjects), len(metrics), figsize=(3.2 * len(metrics), 2.8 * len(subjects)),
                             squeeze=False)
    for i, subject in enumerate(subjects):
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            g = curve[(curve["subject"] == subject) & (curve["metric"] == metric)]
            for method, m in g.groupby("method"):
                m = m.sort_values("n_trials")
                ax.plot(m["n_trials"], m["value"], marker="o", label=method)
                ax.fill_between(m["n_trials"], m["ci_low"], m["ci_high"], alpha=0.15)
            ax.set_xscale("log")
            ax.set_title(f"sub-{subject} {metric}", fontsize=9)
            ax.set_xlabel("training trials of the held-out subject", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    with _io.atomic_write(out) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
