"""Wire audio formats of the Realtime API: pcm16 24 kHz, G.711 μ-law and A-law 8 kHz.

Audio arrives in small base64 pieces, so resampling is streaming (one soxr
stream per direction and session): cutting a stream into pieces must not add
clicks at the piece boundaries.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import numpy as np

from ..audio import StreamResampler

#: Realtime API format names (beta) and their sample rates.
FORMAT_RATES_HZ = {"pcm16": 24_000, "g711_ulaw": 8_000, "g711_alaw": 8_000}
#: GA format objects' ``type`` → beta name.
GA_FORMAT_NAMES = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}
BETA_TO_GA_FORMAT = {beta: ga for ga, beta in GA_FORMAT_NAMES.items()}


class AudioDecodeError(ValueError):
    """Client audio that is not valid base64 or not whole samples."""


def b64decode_strict(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise AudioDecodeError(f"audio is not valid base64 ({error})") from None


# -- G.711 (ITU-T), vectorised ---------------------------------------------------------
_BIAS = 0x84


def ulaw_encode(samples: np.ndarray) -> bytes:
    x = samples.astype(np.int32) >> 2  # 14-bit, as in the reference coder
    sign = np.where(x < 0, 0x80, 0)
    x = np.minimum(np.abs(x), 8158) + 0x21
    exponent = np.clip(np.floor(np.log2(x)).astype(np.int32) - 5, 0, 7)
    mantissa = (x >> (exponent + 1)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    u = ~np.frombuffer(data, dtype=np.uint8).astype(np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def alaw_encode(samples: np.ndarray) -> bytes:
    x = samples.astype(np.int32) >> 3  # 13-bit
    sign = np.where(x >= 0, 0x80, 0)
    x = np.where(x < 0, -x - 1, x)
    x = np.minimum(x, 0x0FFF)
    exponent = np.where(x < 32, 0, np.floor(np.log2(np.maximum(x, 1))).astype(np.int32) - 4)
    exponent = np.clip(exponent, 0, 7)
    mantissa = np.where(exponent == 0, x >> 1, x >> exponent) & 0x0F
    return (((sign | (exponent << 4) | mantissa) ^ 0x55) & 0xFF).astype(np.uint8).tobytes()


def alaw_decode(data: bytes) -> np.ndarray:
    a = np.frombuffer(data, dtype=np.uint8).astype(np.int32) ^ 0x55
    sign = a & 0x80
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(sign != 0, magnitude, -magnitude).astype(np.int16)


@dataclass
class AudioDecoder:
    """Client audio (one wire format) → int16 mono at ``target_rate_hz``, streaming."""

    format: str
    target_rate_hz: int

    def __post_init__(self) -> None:
        self.rate_hz = FORMAT_RATES_HZ[self.format]
        self._resampler = StreamResampler(self.rate_hz, self.target_rate_hz)

    def decode(self, data: str) -> tuple[np.ndarray, int]:
        """Base64 audio → (samples at the target rate, number of wire samples)."""
        raw = b64decode_strict(data)
        if self.format == "pcm16":
            if len(raw) % 2:
                raise AudioDecodeError(f"pcm16 audio must be whole 16-bit samples, got {len(raw)} bytes")
            wire = np.frombuffer(raw, dtype="<i2").astype(np.int16)
        elif self.format == "g711_ulaw":
            wire = ulaw_decode(raw)
        else:
            wire = alaw_decode(raw)
        return self._resampler(wire), len(wire)

    def flush(self) -> np.ndarray:
        """The samples the resampler still holds back (at a commit), then start a fresh stream."""
        return self._resampler.flush()


@dataclass
class AudioEncoder:
    """int16 mono at ``source_rate_hz`` → base64 in one wire format, streaming."""

    format: str
    source_rate_hz: int

    def __post_init__(self) -> None:
        self.rate_hz = FORMAT_RATES_HZ[self.format]
        self._resampler = StreamResampler(self.source_rate_hz, self.rate_hz)

    def encode(self, samples: np.ndarray, *, last: bool = False) -> str:
        """Base64 of ``samples`` in the wire format; ``last`` also flushes the resampler (end of a response)."""
        samples = self._resampler(samples, last=last)
        if self.format == "pcm16":
            raw = np.asarray(samples, dtype="<i2").tobytes()
        elif self.format == "g711_ulaw":
            raw = ulaw_encode(samples)
        else:
            raw = alaw_encode(samples)
        return base64.b64encode(raw).decode("ascii")
