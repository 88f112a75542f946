"""Offline speech synthesis with eSpeak NG, driven through ctypes.

``espeakng-loader`` ships libespeak-ng and its voice data in a wheel, so the
audio stimuli are spoken versions of the text stimuli without any download.
eSpeak is a formant synthesiser: robotic, but real, intelligible speech whose
spectro-temporal structure (formants, syllable rate, pitch contour) differs
from sentence to sentence, which is what the simulated auditory voxels see.

eSpeak NG keeps synthesiser state from one utterance to the next (the same
sentence spoken twice in one process gives different samples), but a fresh
process speaking the same sentences in the same order is reproducible to the
sample. ``synthesize_many`` therefore speaks a study's sentences in a new
Python process (``python -m cortexflow.data.speech``).
"""

from __future__ import annotations

import ctypes
import dataclasses
import io
import json
import logging
import subprocess
import sys
import threading
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("cortexflow.data.speech")

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_RATE = 1
_ESPEAK_PITCH = 3
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class SpeechConfig:
    voice: str = "en-us"
    words_per_minute: int = 190
    pitch: int = 50  # eSpeak's 0-100 scale
    sample_rate: int = 16000
    duration: float = 2.0  # seconds; clips are trimmed of silence, then padded/cut to this
    fade: float = 0.02  # seconds of cosine fade where a clip is cut


class _Espeak:
    """The process-wide eSpeak engine (the C library keeps global state)."""

    _lock = threading.Lock()
    _instance: "_Espeak | None" = None

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.native_rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if self.native_rate <= 0:
            raise RuntimeError("eSpeak NG failed to initialise (espeak_Initialize returned an error)")
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: ctypes does not
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n, events) -> int:  # noqa: ANN001 - ctypes signature
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    @classmethod
    def get(cls) -> "_Espeak":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def speak(self, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {voice!r}")
        self.lib.espeak_SetParameter(_ESPEAK_RATE, int(rate), 0)
        self.lib.espeak_SetParameter(_ESPEAK_PITCH, int(pitch), 0)
        self._chunks = []
        data = text.encode("utf-8")
        status = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        if status != 0 or not self._chunks:
            raise RuntimeError(f"eSpeak NG could not synthesise {text!r} (status {status})")
        return np.concatenate(self._chunks).astype(np.float32) / 32768.0


def synthesize(text: str, config: SpeechConfig = SpeechConfig()) -> np.ndarray:
    """Speak ``text``: float32 mono waveform at ``config.sample_rate``, exactly ``duration`` s long.

    Leading and trailing silence is trimmed so the speech starts at the onset;
    a clip longer than ``duration`` is cut with a short fade (and logged).
    """
    from scipy.signal import resample_poly

    with _Espeak._lock:
        engine = _Espeak.get()
        wav = engine.speak(text, config.voice, config.words_per_minute, config.pitch)
        native = engine.native_rate
    g = np.gcd(native, config.sample_rate)
    wav = resample_poly(wav, config.sample_rate // g, native // g).astype(np.float32)
    wav = trim_silence(wav, threshold=0.01)
    n = int(round(config.duration * config.sample_rate))
    if len(wav) > n:
        log.debug("speech for %r is %.2f s, cut to %.2f s", text, len(wav) / config.sample_rate, config.duration)
        wav = wav[:n].copy()
        k = max(1, int(config.fade * config.sample_rate))
        wav[-k:] *= 0.5 * (1 + np.cos(np.linspace(0, np.pi, k, dtype=np.float32)))
    out = np.zeros(n, np.float32)
    out[: len(wav)] = wav
    return out


def trim_silence(wav: np.ndarray, threshold: float) -> np.ndarray:
    """Drop leading/trailing samples whose magnitude stays below ``threshold``."""
    loud = np.flatnonzero(np.abs(wav) >= threshold)
    if loud.size == 0:
        return wav[:0]
    return wav[loud[0]: loud[-1] + 1]


class SpeechJob:
    """Sentences being spoken by a fresh eSpeak process; ``result()`` waits for the waveforms."""

    def __init__(self, sentences: list[str], config: SpeechConfig = SpeechConfig()):
        self._request = json.dumps({"config": dataclasses.asdict(config), "sentences": list(sentences)}).encode()
        self._process = subprocess.Popen([sys.executable, "-m", "cortexflow.data.speech"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def result(self) -> np.ndarray:
        """(n, samples) float32 waveforms."""
        out, err = self._process.communicate(self._request)
        if self._process.returncode != 0:
            raise RuntimeError(f"speech synthesis failed: {err.decode(errors='replace')[-2000:]}")
        return np.load(io.BytesIO(out))


def synthesize_many(sentences: list[str], config: SpeechConfig = SpeechConfig()) -> np.ndarray:
    """(n, samples) float32: every sentence spoken, reproducibly, by a fresh eSpeak process."""
    return SpeechJob(sentences, config).result()


def _serve() -> None:
    request = json.loads(sys.stdin.read())
    config = SpeechConfig(**request["config"])
    out = np.stack([synthesize(s, config) for s in request["sentences"]]) if request["sentences"] else np.zeros((0, 0), np.float32)
    buffer = io.BytesIO()
    np.save(buffer, out.astype(np.float32))
    sys.stdout.buffer.write(buffer.getvalue())


if __name__ == "__main__":
    _serve()
