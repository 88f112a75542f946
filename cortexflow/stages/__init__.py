"""One function per workflow rule.

Each stage reads files, calls the library, and writes its outputs atomically.
The registry below maps rule names to the functions that implement them; the
``cortexflow`` command line (``cortexflow.cli``) exposes every entry as a
subcommand whose options are the function's keyword arguments.

The modules mirror ``workflow/rules/*.smk``:

- ``simulate`` (simulate.smk), ``preprocess`` (preprocess.smk) and ``evaluate``
  (evaluate.smk) re-export stage functions that live beside the library code
  they drive;
- models.smk's rules each have a module: ``vae`` (pretrain_vae,
  encode_latents), ``baseline`` (fit_baseline), ``decoder`` (train_decoder) and
  ``sample`` (sample), with their config sections' dataclasses in ``params``;
- ``cross_subject`` (cross_subject.smk): shared training across subjects and
  the data-efficiency curve of a held-out subject.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

# rule name -> (module, function, config section its ``params`` come from)
STAGES: dict[str, tuple[str, str, str | None]] = {
    "simulate_study": ("cortexflow.stages.simulate", "simulate_study_stage", "simulate"),
    "glm_betas": ("cortexflow.stages.preprocess", "glm_betas_stage", "glm"),
    "extract_rois": ("cortexflow.stages.preprocess", "extract_rois_stage", "rois"),
    "make_dataset": ("cortexflow.stages.preprocess", "make_dataset_stage", "dataset"),
    "pretrain_vae": ("cortexflow.stages.vae", "pretrain_vae_stage", "vae"),
    "encode_latents": ("cortexflow.stages.vae", "encode_latents_stage", "vae"),
    "train_decoder": ("cortexflow.stages.decoder", "train_decoder_stage", "decoder"),
    "fit_baseline": ("cortexflow.stages.baseline", "fit_baseline_stage", "baseline"),
    "sample": ("cortexflow.stages.sample", "sample_stage", "sampling"),
    "evaluate": ("cortexflow.stages.evaluate", "evaluate_stage", "evaluation"),
    "summarize": ("cortexflow.stages.evaluate", "summarize_stage", "evaluation"),
    # the cross_subject target (cross_subject.smk), not part of rule all
    "train_shared_decoder": ("cortexflow.stages.cross_subject", "train_shared_decoder_stage", "cross_subject"),
    "cross_subject_fit": ("cortexflow.stages.cross_subject", "cross_subject_fit_stage", "cross_subject"),
    "cross_subject_curve": ("cortexflow.stages.cross_subject", "cross_subject_curve_stage", "cross_subject"),
}


def get_stage(name: str) -> Callable:
    """The function implementing rule ``name`` (dashes or underscores)."""
    key = name.replace("-", "_")
    if key not in STAGES:
        raise KeyError(f"unknown stage {name!r}; known: {', '.join(sorted(STAGES))}")
    module, func, _ = STAGES[key]
    return getattr(importlib.import_module(module), func)
