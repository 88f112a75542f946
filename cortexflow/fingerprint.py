"""Fingerprints of the source code each workflow stage runs.

Snakemake reruns a job when its params, inputs or shell command change, but it
cannot see the Python modules the command imports (DESIGN.md, "Reruns after
edits"). Each rule therefore puts ``stage_fingerprint(rule)`` into its params:
a hash of exactly the ``cortexflow`` source files that stage depends on, so an
edit of ``models/dit.py`` reruns ``train_decoder`` and what follows, and nothing
upstream.

Only the content of ``.py`` files counts (not timestamps, not ``__pycache__``),
so a checkout on another machine or a ``touch`` does not rerun anything.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

# rule -> source files and packages (relative to the cortexflow package) whose
# code decides that rule's outputs: the rule's module in ``stages/`` and the
# library code it calls. Shared plumbing (_io, errors, cli, config, the stage
# table in stages/__init__.py) is left out on purpose: it moves files and
# arguments, not numbers.
# A listed path that does not exist counts as "absent", so creating it later
# (e.g. splitting a helper into its own module) also reruns the stage.
STAGE_SOURCES: dict[str, tuple[str, ...]] = {
    "simulate_study": ("stages/simulate.py", "data/simulate.py", "data/stimuli.py", "data/speech.py",
                       "data/sentences.py", "data/encoding_model.py", "data/hrf.py"),
    "glm_betas": ("stages/preprocess.py", "preprocess/glm.py", "preprocess/glmsingle.py", "preprocess/hrf.py",
                  "data/bids.py"),
    "extract_rois": ("stages/preprocess.py", "preprocess/rois.py"),
    "make_dataset": ("stages/preprocess.py", "preprocess/dataset.py", "data/bids.py"),
    "pretrain_vae": ("stages/vae.py", "stages/params.py", "data/stimulus_arrays.py", "data/bids.py",
                     "models/vae.py", "models/audio.py", "models/io.py", "training/"),
    "encode_latents": ("stages/vae.py", "stages/params.py", "data/stimulus_arrays.py", "data/bids.py",
                       "models/vae.py", "models/audio.py", "models/io.py", "models/latents.py"),
    "train_decoder": ("stages/decoder.py", "stages/vae.py", "stages/params.py", "data/stimulus_arrays.py",
                      "models/", "training/"),
    "fit_baseline": ("stages/baseline.py", "data/stimulus_arrays.py", "models/ridge.py", "models/latents.py",
                     "evaluation/features.py"),
    "sample": ("stages/sample.py", "stages/params.py", "data/stimulus_arrays.py", "models/",
               "evaluation/noise_ceiling.py", "evaluation/features.py"),
    "evaluate": ("stages/evaluate.py", "evaluation/evaluate.py", "evaluation/metrics.py", "evaluation/bootstrap.py",
                 "evaluation/features.py"),
    "summarize": ("stages/evaluate.py", "evaluation/summary.py", "evaluation/figures.py"),
}


def package_root() -> Path:
    """The folder of the ``cortexflow`` package that is imported (and therefore run)."""
    return Path(__file__).resolve().parent


def _source_files(root: Path, module_path: str) -> list[Path]:
    path = root / module_path
    if path.is_dir():
        return sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
    return [path]


def source_fingerprint(*module_paths: str, root: str | Path | None = None) -> str:
    """A short hash of the content of the given cortexflow source files/packages.

    ``module_paths`` are relative to the package folder (``"models/dit.py"``,
    ``"training/"``); a folder stands for every ``.py`` file below it. The hash
    covers each file's path relative to the package and its bytes, so renaming,
    adding or editing a file changes it; a missing path is hashed as absent.
    """
    if not module_paths:
        raise ValueError("source_fingerprint needs at least one module path")
    root = package_root() if root is None else Path(root)
    digest = hashlib.sha256()
    seen: set[Path] = set()
    for module_path in module_paths:
        for file in _source_files(root, module_path):
            if file in seen:
                continue
            seen.add(file)
            digest.update(file.relative_to(root).as_posix().encode())
            digest.update(b"\0")
            digest.update(file.read_bytes() if file.is_file() else b"<absent>")
            digest.update(b"\0")
    return digest.hexdigest()[:16]


def stage_fingerprint(rule: str, root: str | Path | None = None) -> str:
    """The fingerprint of the sources that workflow rule ``rule`` depends on."""
    try:
        sources = STAGE_SOURCES[rule]
    except KeyError:
        raise KeyError(f"no source list for rule {rule!r}; known: {', '.join(sorted(STAGE_SOURCES))}") from None
    return source_fingerprint(*sources, root=root)
