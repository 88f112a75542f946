"""The latent cache: every stimulus's VAE latent, written once by ``encode_latents``.

One ``.npz`` per continuous modality (docs/contracts.md, "Files between stages")
with arrays ``ids``, ``latents`` (the VAE posterior means, raw), ``targets``
(the stimuli as the VAE saw them), ``vae_reconstructions``, ``splits`` and the
spectrogram normalisation ``norm_mean``/``norm_std``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cortexflow import _io
from cortexflow.errors import CortexflowInputError


def save_latents(out: str | Path, *, ids: np.ndarray, latents: np.ndarray, targets: np.ndarray,
                 vae_reconstructions: np.ndarray, splits: np.ndarray, norm_mean: float, norm_std: float) -> Path:
    """Write the latent cache atomically."""
    return _io.save_npz(out, ids=ids, latents=latents.astype(np.float32), targets=targets.astype(np.float32),
                        vae_reconstructions=vae_reconstructions.astype(np.float32), splits=splits,
                        norm_mean=np.float32(norm_mean), norm_std=np.float32(norm_std))


@dataclass
class Latents:
    """The cached output of ``encode_latents``."""

    ids: np.ndarray
    latents: np.ndarray
    targets: np.ndarray
    vae_reconstructions: np.ndarray
    norm_mean: float
    norm_std: float

    def rows(self, stimulus_ids: np.ndarray, source: str | Path) -> np.ndarray:
        """Row index of each stimulus id; a missing id is an error naming the file."""
        index = {s: i for i, s in enumerate(self.ids)}
        missing = sorted({s for s in stimulus_ids if s not in index})
        if missing:
            raise CortexflowInputError(f"{len(missing)} stimulus ids have no latent (e.g. {missing[:3]})", path=source,
                                       fix="rerun encode_latents on the stimuli.tsv the dataset was made from")
        return np.asarray([index[s] for s in stimulus_ids])


def load_latents(path: str | Path, *, mmap: bool = True) -> Latents:
    """The latent cache written by ``save_latents``.

    With ``mmap`` (the default) the arrays are memory-mapped (``_io.npz_memmap``): a stage
    reads from disk only the rows it indexes. At NSD scale the stimuli and their VAE
    reconstructions are 7.9 GB each (10,000 images at 256 px, float32), which every
    training process and ``sample`` would otherwise hold while using a few of their rows.
    """
    with np.load(path, allow_pickle=False) as f:
        ids, norm_mean, norm_std = f["ids"], float(f["norm_mean"]), float(f["norm_std"])
        if not mmap:
            return Latents(ids, f["latents"], f["targets"], f["vae_reconstructions"], norm_mean, norm_std)
    return Latents(ids, _io.npz_memmap(path, "latents"), _io.npz_memmap(path, "targets"),
                   _io.npz_memmap(path, "vae_reconstructions"), norm_mean, norm_std)


def latent_targets(latents: str | Path, stimulus_ids: np.ndarray) -> np.ndarray:
    """The latents of ``stimulus_ids`` (in that order), read from a latent cache file."""
    path = Path(latents)
    if not path.is_file():
        raise CortexflowInputError("latents file not found", path=path, fix="run the encode_latents stage first")
    with np.load(path, allow_pickle=False) as f:
        if "ids" not in f.files or "latents" not in f.files:
            raise CortexflowInputError("latents file needs arrays 'ids' and 'latents'", path=path,
                                       fix="rerun the encode_latents stage")
        ids, values = f["ids"].astype(str), f["latents"]
    index = {sid: i for i, sid in enumerate(ids)}
    missing = sorted({s for s in stimulus_ids if s not in index})
    if missing:
        raise CortexflowInputError(f"{len(missing)} training stimuli have no latent (e.g. {missing[:3]})", path=path,
                                   fix="encode latents for every stimulus of the dataset")
    return values[[index[s] for s in stimulus_ids]]

