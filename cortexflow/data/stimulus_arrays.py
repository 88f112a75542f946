"""Stimuli as the models see them: image arrays, log-mel spectrograms, sentences.

Read from a BIDS root's ``stimuli/stimuli.tsv`` (docs/contracts.md). Used by the
model stages (``cortexflow.stages``) and the ridge baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cortexflow.errors import CortexflowInputError


@dataclass
class AudioFeatures:
    """How waveforms become the log-mel spectrograms the audio models see."""

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 500
    n_mels: int = 32
    n_frames: int = 64  # cropped / padded to this many frames (a multiple of the VAE's factor)
    f_min: float = 30.0
    f_max: float | None = 8000.0


def _bids_root(stimuli: str | Path) -> Path:
    """stimuli.tsv lives in <bids_root>/stimuli/."""
    return Path(stimuli).resolve().parent.parent


def load_stimulus_arrays(stimuli: str | Path, modality: str, audio: AudioFeatures | None = None,
                         split: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, arrays, splits) of one modality's stimuli as the models see them.

    Images: (N, C, H, W) float32 in [0, 1]. Audio: log-mel (N, n_mels, n_frames).
    """
    from cortexflow.data.bids import load_stimuli, load_stimulus

    table = load_stimuli(_bids_root(stimuli))
    table = table[table["modality"] == modality]
    if split is not None:
        table = table[table["split"] == split]
    if table.empty:
        raise CortexflowInputError(f"no {modality} stimuli{'' if split is None else f' in the {split} split'}",
                                   path=stimuli, fix=f"list {modality} stimuli in stimuli.tsv")
    root = _bids_root(stimuli)
    items = [load_stimulus(root, row) for _, row in table.iterrows()]
    if modality == "image":
        arrays = np.stack([np.asarray(x, dtype=np.float32) for x in items])
    elif modality == "audio":
        arrays = waveforms_to_mels([w for w, _ in items], [sr for _, sr in items], audio or AudioFeatures(),
                                   source=stimuli)
    else:
        raise CortexflowInputError(f"modality {modality!r} has no continuous stimuli", fix="use image or audio")
    return table["stimulus_id"].to_numpy(str), arrays, table["split"].to_numpy(str)


def waveforms_to_mels(waveforms: list[np.ndarray], rates: list[int], cfg: AudioFeatures,
                      source: str | Path | None = None) -> np.ndarray:
    """Log-mel spectrograms (N, n_mels, n_frames), cropped or zero-padded (in waveform) to n_frames."""
    from cortexflow.models.audio import waveform_to_mel

    bad = sorted({int(r) for r in rates} - {cfg.sample_rate})
    if bad:
        raise CortexflowInputError(f"audio stimuli are sampled at {bad} Hz, the models expect {cfg.sample_rate} Hz",
                                   path=source, fix="resample the WAV files or set vae.audio.audio.sample_rate")
    n_samples = (cfg.n_frames - 1) * cfg.hop_length
    batch = np.zeros((len(waveforms), n_samples), dtype=np.float32)
    for i, w in enumerate(waveforms):
        w = np.asarray(w, dtype=np.float32)[:n_samples]
        batch[i, : len(w)] = w
    import torch

    mel = waveform_to_mel(torch.from_numpy(batch), sample_rate=cfg.sample_rate, n_fft=cfg.n_fft,
                          hop_length=cfg.hop_length, n_mels=cfg.n_mels, f_min=cfg.f_min, f_max=cfg.f_max)
    return mel[..., : cfg.n_frames].numpy().astype(np.float32)


def load_sentences(stimuli: str | Path) -> dict[str, str]:
    """stimulus_id -> sentence, from a BIDS root, its ``stimuli/`` folder or a TSV.

    The TSV (``stimuli/stimuli.tsv``, or ``stimuli/text/sentences.tsv`` when the
    former has no ``text`` column) needs columns ``stimulus_id`` and ``text``.
    """
    path = Path(stimuli)
    if path.is_dir():
        folder = path / "stimuli" if (path / "stimuli" / "stimuli.tsv").is_file() else path
        candidates = [folder / "stimuli.tsv", folder / "text" / "sentences.tsv"]
    else:
        candidates = [path, path.parent / "text" / "sentences.tsv"]
    for tsv in candidates:
        if tsv.is_file():
            table = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
            if {"stimulus_id", "text"} <= set(table.columns):
                if "modality" in table.columns:
                    table = table[table["modality"].isin(["text", ""])]
                return dict(zip(table["stimulus_id"], table["text"]))
    raise CortexflowInputError("no table with columns stimulus_id and text found", path=path,
                               fix="pass the BIDS root or stimuli/stimuli.tsv with a 'text' column")

