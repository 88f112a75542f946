"""One function per workflow rule.

Each stage reads files, calls the library, and writes its outputs atomically.
The registry below maps rule names to the functions that implement them; the
``cortexflow`` command line (``cortexflow.cli``) exposes every entry as a
subcommand whose options are the function's keyword arguments.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

# rule name -> (module, function, config section its ``params`` come from)
STAGES: dict[str, tuple[str, str, str | None]] = {
    "simulate_study": ("cortexflow.data.simulate", "simulate_study_stage", "simulate"),
    "glm_betas": ("cortexflow.preprocess.glm", "glm_betas_stage", "glm"),
    "extract_rois": ("cortexflow.preprocess.rois", "extract_rois_stage", "rois"),
    "make_dataset": ("cortexflow.preprocess.dataset", "make_dataset_stage", "dataset"),
    "pretrain_vae": ("cortexflow.training.stages", "pretrain_vae_stage", "vae"),
    "encode_latents": ("cortexflow.training.stages", "encode_latents_stage", "vae"),
    "train_decoder": ("cortexflow.training.stages", "train_decoder_stage", "decoder"),
    "fit_baseline": ("cortexflow.evaluation.ridge", "fit_baseline_stage", "baseline"),
    "sample": ("cortexflow.training.stages", "sample_stage", "sampling"),
    "evaluate": ("cortexflow.evaluation.evaluate", "evaluate_stage", "evaluation"),
    "summarize": ("cortexflow.evaluation.summary", "summarize_stage", "evaluation"),
}


def get_stage(name: str) -> Callable:
    """The function implementing rule ``name`` (dashes or underscores)."""
    key = name.replace("-", "_")
    if key not in STAGES:
        raise KeyError(f"unknown stage {name!r}; known: {', '.join(sorted(STAGES))}")
    module, func, _ = STAGES[key]
    return getattr(importlib.import_module(module), func)
