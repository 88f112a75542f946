"""Stage of rule ``train_decoder_seeds`` (workflow/rules/models.smk): every training seed of
one subject's image (or audio) decoder in one job, trained on the CPU as one stacked model.

The default study trains three seeds of each subject's image DiT. On a CPU each of
those runs keeps a core busy with ~10,000 small operators per step; trained as one
stacked model (:class:`cortexflow.training.ensemble.EnsembleTrainer`), each operator
does the three seeds' work at once (docs/speed.md: 1.11x per seed alone on one core; in the
default run, two such jobs side by side on 2 cores, 68.9 core-minutes against 71.3 for six single runs).
Each member is the run its seed would have been alone in ``train_decoder``, to float
rounding (tests/test_ensemble_training.py): the same initial weights, batches and random
draws; only the order of additions in the batched products differs.

The workflow uses this rule where config ``seed_ensemble`` says so (``auto``: a CPU
run of a decoder with several seeds that the ensemble supports,
:func:`ensemble_unsupported`); everywhere else ``train_decoder`` trains one job per seed.
Should the job find CUDA after all (``device: auto`` on a GPU machine), it trains the
seeds one after the other as ``train_decoder`` would, each to its own checkpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from cortexflow.errors import CortexflowInputError
from cortexflow.models.params import DecoderParams

log = logging.getLogger("cortexflow.stages.decoder_seeds")

# the config section its stage's --params come from (cortexflow.stages.STAGES reads it)
STAGE_SECTIONS = "decoder"

__all__ = ["train_decoder_seeds_stage", "ensemble_unsupported"]


def ensemble_unsupported(modality: str, params: DecoderParams) -> str | None:
    """Why the seeds of ``decoder.<modality>`` (``params``) cannot train as one stacked model,
    or None when they can: the ensemble trains latent-flow decoders (image, audio) with the
    global brain encoder, without gradient accumulation, in fp32 on the CPU."""
    if modality not in ("image", "audio"):
        return f"the {modality} decoder is not a latent-flow DiT"
    if params.encoder != "global":
        return f"decoder.{modality}.encoder is {params.encoder!r} (the ensemble supports 'global')"
    if params.grad_accum_steps != 1:
        return f"decoder.{modality}.grad_accum_steps is {params.grad_accum_steps} (the ensemble supports 1)"
    return None


def train_decoder_seeds_stage(*, dataset: str, modality: str, outs: list[str], seeds: list[int], checkpoint_dir: str,
                              params: dict, threads: int = 1, device: str = "cpu", latents: str | None = None,
                              vae: str | None = None, ridge: str | None = None, stimuli: str | None = None,
                              out_curves: list[str] | None = None) -> None:
    """Train one subject's decoder for every seed in ``seeds`` at once, on the CPU, as one stacked model.

    Seed ``seeds[m]`` is written to ``outs[m]`` and its loss curve to ``out_curves[m]``
    (default: beside it), as ``train_decoder --seed seeds[m]`` writes a single run: the
    EMA weights, the same extras. Resumes the whole ensemble from ``checkpoint_dir``;
    on SIGTERM it checkpoints and stops (run again to resume). With CUDA (``device``
    cuda, or auto on a GPU machine) the seeds train one after the other as single runs.
    """
    from cortexflow.stages.decoder import train_decoder_stage
    from cortexflow.stages.params import modality_params, resolve_device

    seeds = [int(s) for s in seeds]
    if len(outs) != len(seeds) or len(set(seeds)) != len(seeds):
        raise CortexflowInputError(f"need one output per seed and distinct seeds, got {list(outs)} for {seeds}",
                                   fix="pass --outs with one file per --seeds entry")
    if out_curves is not None and len(out_curves) != len(seeds):
        raise CortexflowInputError(f"need one curve file per seed, got {list(out_curves)} for {seeds}")
    p = modality_params(params, modality, DecoderParams, "decoder")
    why = ensemble_unsupported(modality, p)
    if why:
        raise CortexflowInputError(f"the seeds of this decoder cannot train as one stacked model: {why}",
                                   fix="set seed_ensemble: false in the config (one train_decoder job per seed)")
    if resolve_device(device).type != "cpu":
        log.info("train_decoder_seeds: CUDA found, so seeds %s train one after the other as single runs "
                 "(config seed_ensemble: false gives each its own job)", seeds)
        for m, seed in enumerate(seeds):
            # each run's folder one level down: a finished run prunes its folder's siblings
            # (prune_stale_checkpoints), which must not be the other seeds' checkpoints
            train_decoder_stage(dataset=dataset, modality=modality, out=outs[m],
                                checkpoint_dir=str(Path(checkpoint_dir) / f"seed{seed}" / "run"), params=params,
                                seed=seed, threads=threads, device=device, latents=latents, vae=vae, ridge=ridge,
                                stimuli=stimuli, out_curve=out_curves[m] if out_curves else None)
        from cortexflow.training.checkpoint import prune_stale_checkpoints

        prune_stale_checkpoints(checkpoint_dir)
        return
    _train_on_cpu(dataset=dataset, modality=modality, outs=outs, seeds=seeds, checkpoint_dir=checkpoint_dir, p=p,
                  threads=threads, latents=latents, vae=vae, ridge=ridge, out_curves=out_curves)


def _train_on_cpu(*, dataset: str, modality: str, outs: Sequence[str], seeds: Sequence[int], checkpoint_dir: str,
                  p: DecoderParams, threads: int, latents: str | None, vae: str | None, ridge: str | None,
                  out_curves: Sequence[str] | None) -> None:
    import numpy as np
    import torch

    from cortexflow import _io
    from cortexflow.models.io import save_model
    from cortexflow.models.latents import load_latents
    from cortexflow.preprocess.dataset import load_dataset
    from cortexflow.stages.decoder import _build_flow_decoder, _run_tag, _training_config, _training_rows, \
        build_brain_encoder, latent_flow_batches
    from cortexflow.stages.vae import load_vae
    from cortexflow.training.checkpoint import prune_stale_checkpoints
    from cortexflow.training.ensemble import train_ensemble
    from cortexflow.training.history import curve_path
    from cortexflow.training.trainer import seed_everything

    for name, value in (("--latents", latents), ("--vae", vae)):
        if value is None:
            raise CortexflowInputError(f"train_decoder_seeds for {modality} needs {name}")
    _io.set_threads(threads)
    data = load_dataset(dataset)
    rows = _training_rows(data, p.fit_on, dataset)
    X = data.X_train[rows].astype(np.float32)
    stim_ids = data.train["stimulus_id"].to_numpy(str)[rows]
    log.info("train_decoder_seeds %s: seeds %s, %d training trials x %d voxels", modality, list(seeds), *X.shape)
    lat = load_latents(latents)
    Y = lat.latents[lat.rows(stim_ids, latents)]
    prior = None
    if p.prior_conditioning:
        if ridge is None:
            raise CortexflowInputError("decoder.prior_conditioning is on but no --ridge baseline was given",
                                       fix="pass the fit_baseline output, or set prior_conditioning: false")
        from cortexflow.models.ridge import load_ridge

        prior = torch.from_numpy(load_ridge(ridge).training_prior(data.train["stimulus_id"].to_numpy(str), ridge)[rows])
    # each member built as train_decoder builds its run: torch's generator seeded with the seed, then the VAE
    # loaded and the encoder and DiT built (the single run loads the dataset in between: it draws nothing)
    models, extras = [], []
    for seed in seeds:
        seed_everything(seed)
        vae_model, extra = load_vae(vae)
        extra = {**extra, "image_size": int(lat.targets.shape[-1])}
        encoder = build_brain_encoder(p, X.shape[1], data.voxels, dataset)
        model = _build_flow_decoder(modality, p, X.shape[1], vae_model, extra, encoder)
        model.set_latent_stats(torch.from_numpy(Y))
        models.append(model)
        extras.append(extra)
    fns = [latent_flow_batches(torch.from_numpy(X), torch.from_numpy(Y), p.batch_size, s, prior=prior)[0]
           for s in seeds]
    tag_inputs = (X, Y) if prior is None else (X, Y, prior.numpy())
    tag = _run_tag(*tag_inputs, params=p) + "-" + "-".join(map(str, seeds))
    trainer, result = train_ensemble(models, [_training_config(p, s, "cpu") for s in seeds], fns, steps=p.steps,
                                     checkpoint_dir=checkpoint_dir, run_tag=tag,
                                     name=f"{modality} seeds {', '.join(map(str, seeds))}",
                                     member_names=[Path(o).stem for o in outs])
    for m, out in enumerate(outs):
        final = float(np.mean(result.losses[m][-50:])) if result.losses[m] else None  # as train_decoder's
        save_model(trainer.ema_member(m).cpu(), out,
                   extra={"modality": modality, "params": asdict(p), "vae_extra": extras[m], "final_loss": final})
        curve = out_curves[m] if out_curves else curve_path(out)
        trainer.curves[m].save(curve)
        log.info("wrote %s (seed %d) and its loss curve %s", out, seeds[m], curve)
    prune_stale_checkpoints(checkpoint_dir)
