"""Log-mel spectrograms and their inversion to waveforms, with torchaudio.

The representation is the log of a *magnitude* mel spectrogram,
``log(max(M |STFT(x)|, 1e-5))`` with Slaney-style mel filters (area-normalised,
Slaney mel scale: librosa's defaults), the input of HiFi-GAN-style vocoders
(Kong et al. 2020). A log scale is what the flow and the VAE should model: mel
energies span several orders of magnitude, and errors in dB are what is heard.

Inversion (:func:`mel_to_waveform`) undoes each step: ``exp``, a least-squares
inverse of the mel filterbank (``torchaudio.transforms.InverseMelScale``; the
``gelsd`` driver, because the filterbank is rank-deficient when mel bins are
narrower than FFT bins), then Griffin-Lim phase reconstruction (Griffin & Lim
1984; torchaudio's fast variant with momentum, Perraudin et al. 2013).

The minimum-norm least-squares spectrogram oscillates around zero, and
clipping its negative part loses much of the mel energy (0.56 log units mean
error on a test chirp). ``nnls_iter`` multiplicative updates of Lee & Seung
(2001) for non-negative least squares, ``S <- S * (F^T M) / (F^T F S)``,
started from that solution, bring the filterbank round trip to 0.04 and the
whole waveform round trip from 0.79 to 0.37 log units (80 mels, 32
Griffin-Lim iterations; what remains is the detail 80 mel bins cannot hold).

Defaults (16 kHz, n_fft 1024, hop 256) are the seed library's; pass the same
values to both directions.
"""

from __future__ import annotations

import functools
import logging

import torch

from cortexflow.errors import CortexflowInputError

log = logging.getLogger("cortexflow.models.audio")

__all__ = ["LOG_FLOOR", "waveform_to_mel", "mel_to_waveform", "n_frames"]

LOG_FLOOR = 1e-5  # magnitude floor before the log: -11.5 in log units, about -100 dB


def _torchaudio():
    try:
        import torchaudio
    except Exception as err:  # ImportError, or an extension that fails to load
        raise CortexflowInputError(
            f"torchaudio is needed for mel spectrograms but could not be imported ({err})",
            fix="install the audio extra: pip install 'cortexflow[audio]' (torchaudio matching your torch)",
        ) from err
    return torchaudio


@functools.lru_cache(maxsize=16)
def _mel_transform(sample_rate: int, n_fft: int, hop_length: int, n_mels: int, f_min: float, f_max: float | None):
    ta = _torchaudio()
    return ta.transforms.MelSpectrogram(
        sample_rate=sample_rate,
        n_fft=n_fft,
        hop_length=hop_length,
        n_mels=n_mels,
        f_min=f_min,
        f_max=f_max,
        power=1.0,
        center=True,
        norm="slaney",
        mel_scale="slaney",
    )


@functools.lru_cache(maxsize=16)
def _inverse_transforms(
    sample_rate: int, n_fft: int, hop_length: int, n_mels: int, f_min: float, f_max: float | None, n_iter: int
):
    ta = _torchaudio()
    inverse_mel = ta.transforms.InverseMelScale(
        n_stft=n_fft // 2 + 1,
        n_mels=n_mels,
        sample_rate=sample_rate,
        f_min=f_min,
        f_max=f_max,
        norm="slaney",
        mel_scale="slaney",
        driver="gelsd",
    )
    griffin_lim = ta.transforms.GriffinLim(
        n_fft=n_fft, hop_length=hop_length, n_iter=n_iter, power=1.0, momentum=0.99, rand_init=False
    )
    return inverse_mel, griffin_lim


def _check_params(sample_rate: int, n_fft: int, hop_length: int, n_mels: int) -> None:
    for name, value in (("sample_rate", sample_rate), ("n_fft", n_fft), ("hop_length", hop_length), ("n_mels", n_mels)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise CortexflowInputError(f"{name} must be a positive integer, got {value!r}")


def n_frames(n_samples: int, hop_length: int = 256) -> int:
    """Mel frames for a waveform of ``n_samples`` (centred STFT): ``1 + n_samples // hop_length``."""
    return 1 + n_samples // hop_length


def waveform_to_mel(
    waveform: torch.Tensor,
    *,
    sample_rate: int = 16000,
    n_fft: int = 1024,
    hop_length: int = 256,
    n_mels: int = 80,
    f_min: float = 0.0,
    f_max: float | None = None,
) -> torch.Tensor:
    """Waveform (B, samples) or (samples,) -> log-magnitude mel (B, n_mels, frames) or (n_mels, frames)."""
    _check_params(sample_rate, n_fft, hop_length, n_mels)
    if not isinstance(waveform, torch.Tensor) or waveform.ndim not in (1, 2) or not waveform.is_floating_point():
        raise CortexflowInputError(
            f"waveform must be a float tensor (batch, samples) or (samples,), got {_describe(waveform)}",
            fix="convert mono audio with torch.as_tensor(x, dtype=torch.float32); average stereo channels first",
        )
    mel = _mel_transform(sample_rate, n_fft, hop_length, n_mels, float(f_min), f_max).to(waveform.device)
    return torch.log(torch.clamp(mel(waveform.float()), min=LOG_FLOOR))


def mel_to_waveform(
    mel: torch.Tensor,
    *,
    sample_rate: int = 16000,
    n_fft: int = 1024,
    hop_length: int = 256,
    n_iter: int = 32,
    f_min: float = 0.0,
    f_max: float | None = None,
    length: int | None = None,
    nnls_iter: int = 50,
) -> torch.Tensor:
    """Log-magnitude mel (B, n_mels, frames) or (n_mels, frames) -> waveform (B, samples) or (samples,).

    ``length`` defaults to ``(frames - 1) * hop_length``, the inverse of :func:`n_frames`.
    Griffin-Lim starts from zero phase, so the result is deterministic.
    """
    if not isinstance(mel, torch.Tensor) or mel.ndim not in (2, 3) or not mel.is_floating_point():
        raise CortexflowInputError(
            f"mel must be a float tensor (batch, n_mels, frames) or (n_mels, frames), got {_describe(mel)}",
            fix="pass the log-mel spectrogram that waveform_to_mel or Brain2Audio.reconstruct returned",
        )
    n_mels = int(mel.shape[-2])
    _check_params(sample_rate, n_fft, hop_length, n_mels)
    if not isinstance(n_iter, int) or n_iter < 1:
        raise CortexflowInputError(f"n_iter must be a positive integer, got {n_iter!r}")
    inverse_mel, griffin_lim = _inverse_transforms(sample_rate, n_fft, hop_length, n_mels, float(f_min), f_max, n_iter)
    inverse_mel, griffin_lim = inverse_mel.to(mel.device), griffin_lim.to(mel.device)
    magnitude_mel = torch.exp(mel.detach().float())
    spectrogram = _nonnegative_refine(inverse_mel(magnitude_mel), magnitude_mel, inverse_mel.fb, nnls_iter)
    frames = mel.shape[-1]
    griffin_lim.length = (frames - 1) * hop_length if length is None else int(length)
    return griffin_lim(spectrogram)


def _nonnegative_refine(spectrogram: torch.Tensor, mel: torch.Tensor, fb: torch.Tensor, n_iter: int) -> torch.Tensor:
    """Lee-Seung multiplicative NNLS updates for ``min ||fb^T S - mel||, S >= 0``.

    spectrogram: (..., n_freq, frames) start (clipped to a small positive value,
    since multiplicative updates cannot leave zero); fb: (n_freq, n_mels).
    """
    s = spectrogram.clamp(min=1e-6)
    numerator = torch.einsum("fm,...mt->...ft", fb, mel)
    for _ in range(max(0, int(n_iter))):
        # fb (fb^T s) through the n_mels-dim space: cheaper than the (n_freq x n_freq) Gram matrix
        denominator = torch.einsum("fm,...mt->...ft", fb, torch.einsum("fm,...ft->...mt", fb, s))
        s = s * numerator / (denominator + 1e-12)
    return s


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"shape {tuple(x.shape)}, dtype {x.dtype}"
    return type(x).__name__
