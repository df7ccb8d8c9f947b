"""Audio helpers: checked WAV reading/writing, format validation, resampling (soxr)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import soxr

#: The rate the input side (VAD, ASR) works at.
INPUT_SAMPLE_RATE_HZ = 16_000


class AudioFormatError(ValueError):
    """Audio that the pipeline cannot take, with the reason in the message."""


def check_samples(samples: object, *, what: str = "audio") -> np.ndarray:
    """Return ``samples`` as a 1-D int16 array, or raise naming what is wrong.

    Float audio is rejected rather than guessed at: its scale (±1.0 or
    ±32768) is ambiguous. Convert with :func:`float_to_int16`.
    """
    if not isinstance(samples, np.ndarray):
        raise AudioFormatError(f"{what}: expected a numpy int16 array, got {type(samples).__name__}")
    if samples.dtype.kind == "f":
        raise AudioFormatError(
            f"{what}: float samples ({samples.dtype}); the pipeline takes int16 PCM, "
            "convert with realtime_pipeline.audio.float_to_int16()"
        )
    if samples.dtype != np.int16:
        raise AudioFormatError(f"{what}: {samples.dtype} samples; the pipeline takes int16 PCM")
    if samples.ndim == 2 and samples.shape[1] > 1:
        raise AudioFormatError(f"{what}: {samples.shape[1]} channels; the pipeline takes mono audio")
    if samples.ndim == 2:
        samples = samples[:, 0]
    if samples.ndim != 1:
        raise AudioFormatError(f"{what}: expected a 1-D array of samples, got shape {samples.shape}")
    if samples.size == 0:
        raise AudioFormatError(f"{what}: empty audio (no samples)")
    return samples


def float_to_int16(samples: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] to int16, clipping what is outside."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)


def resample(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Resample int16 mono audio with soxr (high quality, streaming-grade speed)."""
    if from_hz == to_hz:
        return samples
    return soxr.resample(samples, from_hz, to_hz, quality="HQ")


class StreamResampler:
    """int16 mono from ``from_hz`` to ``to_hz`` across chunks (soxr's stream: its filter runs over
    the chunk edges, no clicks); it holds a few ms back until :meth:`flush`. Equal rates pass
    through."""

    def __init__(self, from_hz: int, to_hz: int) -> None:
        self.from_hz, self.to_hz = from_hz, to_hz
        self._stream = self._new_stream()

    def _new_stream(self) -> soxr.ResampleStream | None:
        if self.from_hz == self.to_hz:
            return None
        return soxr.ResampleStream(self.from_hz, self.to_hz, 1, dtype="int16", quality="HQ")

    def __call__(self, samples: np.ndarray, *, last: bool = False) -> np.ndarray:
        """``samples`` resampled; ``last`` also gives what the stream held back and starts afresh
        (the next chunk is a new signal)."""
        samples = np.asarray(samples, dtype=np.int16)
        if self._stream is None:
            return samples
        out = self._stream.resample_chunk(samples, last=last)
        if last:
            self._stream = self._new_stream()  # the next chunk starts a new signal
        return out

    def flush(self) -> np.ndarray:
        """What the stream still holds back; it then starts afresh."""
        return self(np.zeros(0, dtype=np.int16), last=True)


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a mono 16-bit PCM WAV file as (int16 samples, sample rate), checking everything."""
    path = Path(path)
    if not path.exists():
        raise AudioFormatError(f"{path}: no such file")
    if not path.is_file():
        raise AudioFormatError(f"{path}: not a file")
    try:
        with wave.open(str(path), "rb") as wav:
            channels = wav.getnchannels()
            sample_width = wav.getsampwidth()
            rate = wav.getframerate()
            data = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as error:
        raise AudioFormatError(f"{path}: not a PCM WAV file ({error})") from None
    if sample_width != 2:
        raise AudioFormatError(
            f"{path}: {8 * sample_width}-bit samples; the pipeline takes 16-bit PCM "
            "(convert with: sox IN.wav -b 16 OUT.wav)"
        )
    if channels != 1:
        raise AudioFormatError(
            f"{path}: {channels} channels; the pipeline takes mono (convert with: sox IN.wav -c 1 OUT.wav)"
        )
    samples = np.frombuffer(data, dtype="<i2").astype(np.int16)
    if samples.size == 0:
        raise AudioFormatError(f"{path}: empty audio (no samples)")
    return samples, rate


def write_wav(path: str | Path, samples: np.ndarray, sample_rate_hz: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate_hz)
        wav.writeframes(np.asarray(samples, dtype="<i2").tobytes())


#: Below this level (−60 dBFS of full scale) the start of a reply is silence nobody hears.
LEADING_SILENCE_THRESHOLD = 0.001


def trim_leading_silence(samples: np.ndarray, sample_rate_hz: int, *, keep_ms: float = 5.0,
                         threshold: float = LEADING_SILENCE_THRESHOLD) -> np.ndarray:
    """``samples`` (int16 or float) without the silence before the first sound, but ``keep_ms``.

    Piper starts every utterance with 25-50 ms below −60 dBFS (measured on the embedded voice);
    on the first chunk of a reply that is pure voice-to-voice latency."""
    if samples.size == 0:
        return samples
    scale = 32768.0 if samples.dtype == np.int16 else 1.0
    loud = np.flatnonzero(np.abs(samples.astype(np.float32)) > threshold * scale)
    if loud.size == 0:
        return samples
    start = max(0, int(loud[0]) - int(keep_ms * sample_rate_hz / 1000))
    return samples[start:]


def rms_dbfs(samples: np.ndarray) -> float:
    """Loudness as RMS in dB relative to int16 full scale (-inf for silence)."""
    if samples.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(samples.astype(np.float64)))))
    return 20.0 * np.log10(rms / 32768.0) if rms > 0 else float("-inf")


def speech_level_dbfs(samples: np.ndarray, sample_rate_hz: int, *, window_ms: int = 20, range_db: float = 30.0) -> float:
    """Active speech level: RMS over the 20 ms windows within ``range_db`` of the loudest one.

    Unlike plain RMS it does not drop when a sentence has more pauses, so it
    is what chunk-to-chunk loudness should be matched on.
    """
    x = np.asarray(samples, dtype=np.float64)
    if samples.dtype == np.int16:
        x = x / 32768.0
    window = max(1, sample_rate_hz * window_ms // 1000)
    usable = len(x) // window * window
    if usable == 0:
        return rms_dbfs(np.asarray(samples))
    power = np.mean(np.square(x[:usable].reshape(-1, window)), axis=1)
    levels = 10.0 * np.log10(power + 1e-12)
    active = power[levels >= levels.max() - range_db]
    return float(10.0 * np.log10(np.mean(active) + 1e-12))
