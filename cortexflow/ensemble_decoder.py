"""Several seeds of one subject's flow decoder trained as one stacked model: ``train_decoder``'s
inputs and outputs, :mod:`cortexflow.training.ensemble`'s training (opt-in; issue 24; docs/speed.md).

    python -m cortexflow.ensemble_decoder --dataset D --modality image --latents L --vae V --ridge R \\
        --seeds 0 1 2 --outs s0.pt s1.pt s2.pt --checkpoint-dir ckpt --config config.yaml
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict

import torch

from cortexflow.errors import CortexflowInputError

log = logging.getLogger("cortexflow.ensemble_decoder")

__all__ = ["train_decoder_ensemble", "main"]


def train_decoder_ensemble(*, dataset: str, modality: str, outs: Sequence[str], seeds: Sequence[int],
                           checkpoint_dir: str | None, params: dict, threads: int = 1, latents: str,
                           vae: str, ridge: str | None = None, out_curves: Sequence[str] | None = None) -> None:
    """``train_decoder`` (cortexflow.stages.decoder) for several seeds of one subject at once: member
    ``seeds[m]`` is written to ``outs[m]`` (and its curve beside it, or to ``out_curves[m]``) as the
    stage writes a single run, EMA weights applied. Image and audio decoders with the global encoder.

    Opt-in and outside the workflow: it lives here, not in ``cortexflow.stages``, so the
    ``train_decoder`` rule's sources (and so its fingerprint and the default study) are unchanged,
    and not in ``cortexflow.training``, which (a library layer) imports no stage.
    Each member is built as the stage builds it: torch's generator seeded with its seed, then the
    VAE loaded and the encoder and the DiT built (the stage loads the dataset in between, which
    draws no random numbers).
    """
    import numpy as np

    from cortexflow import _io
    from cortexflow.models.io import save_model
    from cortexflow.models.latents import load_latents
    from cortexflow.models.params import DecoderParams
    from cortexflow.preprocess.dataset import load_dataset
    from cortexflow.stages.decoder import _build_flow_decoder, _run_tag, _training_config, \
        _training_rows, build_brain_encoder, latent_flow_batches
    from cortexflow.stages.params import modality_params
    from cortexflow.stages.vae import load_vae
    from cortexflow.training.history import curve_path
    from cortexflow.training.ensemble import train_ensemble
    from cortexflow.training.trainer import seed_everything

    if modality not in ("image", "audio"):
        raise CortexflowInputError(f"the ensemble trains image or audio decoders, not {modality!r}")
    if len(outs) != len(seeds) or len(set(seeds)) != len(seeds):
        raise CortexflowInputError(f"need one output per seed and distinct seeds, got {list(outs)} for {list(seeds)}")
    _io.set_threads(threads)
    p = modality_params(params, modality, DecoderParams, "decoder")
    data = load_dataset(dataset)
    rows = _training_rows(data, p.fit_on, dataset)
    X = data.X_train[rows].astype(np.float32)
    stim_ids = data.train["stimulus_id"].to_numpy(str)[rows]
    lat = load_latents(latents)
    Y = lat.latents[lat.rows(stim_ids, latents)]
    prior = None
    if p.prior_conditioning:
        if ridge is None:
            raise CortexflowInputError("decoder.prior_conditioning is on but no --ridge baseline was given")
        from cortexflow.models.ridge import load_ridge

        prior = torch.from_numpy(load_ridge(ridge).training_prior(data.train["stimulus_id"].to_numpy(str), ridge)[rows])
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
                                     checkpoint_dir=checkpoint_dir, run_tag=tag, name=f"{modality} x{len(seeds)}")
    for m, out in enumerate(outs):
        final = float(np.mean(result.losses[m][-50:])) if result.losses[m] else None  # as the stage's _final_loss
        save_model(trainer.ema_member(m).cpu(), out,
                   extra={"modality": modality, "params": asdict(p), "vae_extra": extras[m], "final_loss": final})
        trainer.curves[m].save(out_curves[m] if out_curves else curve_path(out))
        log.info("wrote %s (seed %d)", out, seeds[m])


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m cortexflow.ensemble_decoder``: :func:`train_decoder_ensemble` from the command line,
    with the train-decoder command's inputs and one ``--out`` per ``--seeds`` entry, e.g.

        python -m cortexflow.ensemble_decoder --dataset D --modality image --latents L --vae V --ridge R \\
            --seeds 0 1 2 --outs s0.pt s1.pt s2.pt --checkpoint-dir ckpt --config config.yaml --threads 1
    """
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m cortexflow.ensemble_decoder",
                                 description="train several seeds of one decoder as one stacked model")
    for name in ("dataset", "modality", "latents", "vae"):
        ap.add_argument(f"--{name}", required=True)
    ap.add_argument("--ridge")
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--outs", nargs="+", required=True)
    ap.add_argument("--out-curves", nargs="+")
    ap.add_argument("--checkpoint-dir")
    ap.add_argument("--threads", type=int, default=1)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--params", help="the decoder section as JSON")
    group.add_argument("--config", help="a workflow config file; its decoder section")
    args = ap.parse_args(argv)
    if args.config:
        import yaml

        with open(args.config) as fh:
            params = (yaml.safe_load(fh) or {}).get("decoder", {})
    else:
        params = json.loads(args.params) if args.params else {}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    train_decoder_ensemble(dataset=args.dataset, modality=args.modality, outs=args.outs, seeds=args.seeds,
                           checkpoint_dir=args.checkpoint_dir, params=params, threads=args.threads,
                           latents=args.latents, vae=args.vae, ridge=args.ridge, out_curves=args.out_curves)


if __name__ == "__main__":
    main()
