"""Reconstruct many trials in bounded memory, with samples that do not depend on the batch size.

``model.reconstruct`` sends its whole input through the DiT and the VAE decoder at
once; at the size of a real study (about 1,000 test images x 8 samples at
256 px) that is more activation memory than a GPU has. The functions here cut
the trials into batches of ``batch_size`` and move each to the model's device.

Batch invariance: each trial's starting noise comes from its own generator,
seeded with ``(seed, trial index)`` (:func:`trial_noise`), so a trial gets the
same samples whether it is sampled alone, in batches of 7 or with all others.
One shared generator would hand trial ``i`` different numbers whenever the batch
boundaries moved. (Results still differ in the last bits between devices and
between batch sizes where a kernel's reduction order depends on the batch.)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from cortexflow.errors import CortexflowInputError
from cortexflow.models.types import BrainData

log = logging.getLogger("cortexflow.models.inference")

__all__ = ["decode_in_batches", "reconstruct_first_and_mean", "reconstruct_in_batches", "texts_in_batches",
           "trial_noise"]

# seed * _STRIDE + trial index: distinct streams for every (seed, trial) below 2**20 trials
_STRIDE = 1_048_573


def _check_batch_size(batch_size: int) -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise CortexflowInputError(f"batch_size must be a positive integer, got {batch_size!r}",
                                   fix="set sampling.<modality>.batch_size to e.g. 64")
    return batch_size


def trial_noise(seed: int, trials: range | list[int], num_samples: int, latent_shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise (len(trials), num_samples, *latent_shape) on the CPU; row ``i``
    depends only on ``seed`` and ``trials[i]``."""
    rows = []
    for trial in trials:
        g = torch.Generator().manual_seed(int(seed) * _STRIDE + int(trial))
        rows.append(torch.randn((num_samples, *latent_shape), generator=g))
    return torch.stack(rows)


def _batches(n: int, batch_size: int, what: str, progress: bool):
    starts = range(0, n, batch_size)
    n_batches = math.ceil(n / batch_size)
    log.info("%s: %d trials in %d batch(es) of up to %d", what, n, n_batches, batch_size)
    for k, start in enumerate(tqdm(starts, desc=what, unit="batch", disable=None if progress else True)):
        stop = min(n, start + batch_size)
        yield start, stop
        if n_batches > 1 and (k + 1) % max(1, n_batches // 10) == 0:
            log.info("%s: %d/%d trials done", what, stop, n)


def _reconstructed_batches(model, voxels: torch.Tensor, prior: torch.Tensor | None, batch_size: int, seed: int,
                           num_samples: int, progress: bool, noise_scale: float, sampling: dict):
    """(start, stop, stimuli (stop - start, num_samples, *stimulus_shape) on the CPU), batch by batch."""
    if not (isinstance(noise_scale, (int, float)) and 0.0 <= noise_scale <= 10.0):
        raise CortexflowInputError(f"noise_scale must be a number in [0, 10], got {noise_scale!r}",
                                   fix="use 1 to sample the learned distribution, below 1 for samples nearer its centre")
    batch_size = _check_batch_size(batch_size)
    n = voxels.shape[0]
    if prior is not None and prior.shape[0] != n:
        raise CortexflowInputError(f"prior has {prior.shape[0]} rows but voxels has {n}",
                                   fix="give one prior per trial, in the same order")
    for start, stop in _batches(n, batch_size, f"reconstruct {model.modality}", progress):
        brain = BrainData(voxels=voxels[start:stop], prior=None if prior is None else prior[start:stop])
        noise = trial_noise(seed, range(start, stop), num_samples, model.latent_shape) * float(noise_scale)
        result = model.reconstruct(brain, num_samples=num_samples, noise=noise, **sampling)
        x = result.output
        yield start, stop, (x if num_samples > 1 else x[:, None])


def reconstruct_in_batches(model, voxels: torch.Tensor, prior: torch.Tensor | None = None, *, batch_size: int = 64,
                           seed: int = 0, num_samples: int = 1, progress: bool = True, noise_scale: float = 1.0,
                           **sampling) -> torch.Tensor:
    """Stimuli (N, num_samples, *stimulus_shape) on the CPU for ``voxels`` (N, n_voxels).

    ``model`` is a latent-flow decoder (Brain2Image, Brain2Audio); ``sampling`` goes
    to its ``reconstruct`` (num_steps, cfg_scale, solver, shift, precision). Trial
    ``i``'s noise is ``trial_noise(seed, [i], ...)``, whatever ``batch_size``, times
    ``noise_scale`` (below 1: samples nearer the centre of the learned distribution).
    Holds every sample; :func:`reconstruct_first_and_mean` keeps only what the
    evaluation reads.
    """
    return torch.cat([x for _, _, x in _reconstructed_batches(model, voxels, prior, batch_size, seed, num_samples,
                                                               progress, noise_scale, sampling)])


def reconstruct_first_and_mean(model, voxels: torch.Tensor, prior: torch.Tensor | None = None, *,
                               to_stimulus: Callable[[np.ndarray], np.ndarray] | None = None, batch_size: int = 64,
                               seed: int = 0, num_samples: int = 1, progress: bool = True, noise_scale: float = 1.0,
                               **sampling) -> tuple[np.ndarray, np.ndarray | None]:
    """The first sample of each trial and the mean of its ``num_samples`` samples (None for one sample).

    The same samples as :func:`reconstruct_in_batches` (same arguments), each batch's
    mapped by ``to_stimulus`` (e.g. undoing a normalisation, clipping) and reduced as it
    is drawn: memory holds one batch of samples and the two (N, *stimulus_shape)
    results, not N x num_samples samples (at NSD scale, 1,000 test images x 8 samples at
    256 px, 6.3 GB and its copies). All samples of a trial are in one batch, and the mean
    over them is taken in the same order as on the full array, so the results are the
    same to the bit.
    """
    first = mean = None
    for start, stop, x in _reconstructed_batches(model, voxels, prior, batch_size, seed, num_samples, progress,
                                                  noise_scale, sampling):
        x = x.numpy()
        if to_stimulus is not None:
            x = to_stimulus(x)
        if first is None:
            first = np.empty((voxels.shape[0], *x.shape[2:]), dtype=x.dtype)
            mean = np.empty_like(first) if num_samples > 1 else None
        first[start:stop] = x[:, 0]
        if mean is not None:
            mean[start:stop] = x.mean(axis=1)
    return first, mean


def decode_in_batches(model, latents: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """``model.decode_latents`` of raw latents (N, *latent_shape) on the model's device, batch by batch; CPU output."""
    batch_size = _check_batch_size(batch_size)
    device = model.device
    with torch.inference_mode():
        parts = [model.decode_latents(latents[i:i + batch_size].to(device)).cpu()
                 for i in range(0, latents.shape[0], batch_size)]
    return torch.cat(parts)


def texts_in_batches(model, voxels: torch.Tensor, *, batch_size: int = 64, seed: int = 0, progress: bool = True,
                     **generation) -> list[str]:
    """``Brain2Text.reconstruct`` texts for ``voxels`` (N, n_voxels), batch by batch.

    Greedy decoding (the default) gives the same texts for any ``batch_size``.
    With ``temperature > 0`` batch ``b`` draws from a generator seeded with
    ``(seed, its first trial)``: reproducible for a given batch size, not across them.
    """
    batch_size = _check_batch_size(batch_size)
    texts: list[str] = []
    for start, stop in _batches(voxels.shape[0], batch_size, "reconstruct text", progress):
        g = torch.Generator().manual_seed(int(seed) * _STRIDE + start)
        result = model.reconstruct(BrainData(voxels=voxels[start:stop]), generator=g, **generation)
        texts.extend(result.metadata["texts"])
    return texts
