"""An echo room: the speaker's sound fed back into the microphone, for tests and benchmarks.

No machine here has a sound card, so the room stands between the output and
the input: every microphone frame is the user's audio plus the played signal
(the output's :class:`~.loopback.Loopback`, resampled to 16 kHz) ``delay_ms``
later, through a reverberant impulse response, scaled by ``gain_db``. It runs
in real time order: a frame is mixed when the source emits it, from audio
that played at least ``delay_ms`` before, so the echo of a block can only
appear after the block played (and a barge-in flush that dropped a block
before it played leaves no echo of it).

The impulse response is synthetic and deterministic: a direct path and an
exponentially decaying noise tail (``rt60_ms`` to fall by 60 dB), drawn from
``seed``, normalized to unit energy so ``gain_db`` is the echo's level relative
to the played signal. Pass ``impulse_response`` to use a measured one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..audio import INPUT_SAMPLE_RATE_HZ
from ..frames import AudioFrame, Frame
from ..stage import Inbox, Outbox, Stage, StageContext
from .loopback import Loopback, LoopbackReader
from .outputs import AudioOutput


def synthetic_impulse_response(
    *, rt60_ms: float = 300.0, length_ms: float = 400.0, direct_to_reverb_db: float = 3.0, seed: int = 0,
    sample_rate_hz: int = INPUT_SAMPLE_RATE_HZ,
) -> np.ndarray:
    """A room's impulse response: a unit direct path, then Gaussian noise decaying by 60 dB in
    ``rt60_ms`` (starting 1 ms after it), scaled so the direct path is ``direct_to_reverb_db``
    above the tail's energy; the whole normalized to unit energy. Same seed, same response."""
    if rt60_ms <= 0 or length_ms <= 0:
        raise ValueError(f"rt60_ms and length_ms must be positive, got {rt60_ms} and {length_ms}")
    count = max(1, int(sample_rate_hz * length_ms / 1000))
    rng = np.random.default_rng(seed)
    t_s = np.arange(count) / sample_rate_hz
    tail = rng.standard_normal(count) * np.exp(-np.log(1000.0) * t_s / (rt60_ms / 1000.0))
    tail[: sample_rate_hz // 1000 + 1] = 0.0
    tail *= np.sqrt(10 ** (-direct_to_reverb_db / 10) / max(float(np.sum(tail**2)), 1e-12))
    response = tail
    response[0] = 1.0
    return response / np.sqrt(np.sum(response**2))


@dataclass(frozen=True)
class EchoRoomSettings:
    """Where the microphone hears the speaker: ``delay_ms`` after it played (acoustic path plus
    device buffers; at least 20 ms, so the echo is computed from audio already played),
    ``gain_db`` relative to the played level, through ``impulse_response`` (16 kHz) or the
    synthetic one of ``rt60_ms`` and ``seed``."""

    delay_ms: int = 100
    gain_db: float = 0.0
    rt60_ms: float = 300.0
    seed: int = 0
    impulse_response: Any = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not 20 <= self.delay_ms <= 1000:
            raise ValueError(f"delay_ms must be between 20 and 1000, got {self.delay_ms}")
        if not -60.0 <= self.gain_db <= 20.0:
            raise ValueError(f"gain_db must be between -60 and 20, got {self.gain_db}")

    def response(self) -> np.ndarray:
        if self.impulse_response is not None:
            response = np.asarray(self.impulse_response, dtype=np.float64)
            if response.ndim != 1 or response.size == 0:
                raise ValueError("impulse_response must be a non-empty 1-D array (16 kHz)")
            return response
        return synthetic_impulse_response(rt60_ms=self.rt60_ms, seed=self.seed)


@dataclass(frozen=True)
class RoomFrame:
    """One mixed microphone frame: where it is in the input stream, and its parts' energies
    (sums of squares, int16 scale), so a benchmark knows what was echo and what was the user."""

    start_sample: int
    samples: int
    user_energy: float
    echo_energy: float


class EchoRoom:
    """Mixes the echo of ``output`` into microphone frames (16 kHz int16), in stream order."""

    def __init__(self, output: AudioOutput | Loopback, settings: EchoRoomSettings | None = None) -> None:
        self.settings = settings or EchoRoomSettings()
        self.loopback = output if isinstance(output, Loopback) else output.loopback()
        self.gain = 10 ** (self.settings.gain_db / 20)
        response = self.settings.response()
        self._response = response
        self._nfft = 1 << int(np.ceil(np.log2(len(response) + 2 * INPUT_SAMPLE_RATE_HZ // 50)))
        self._spectrum = np.fft.rfft(response, self._nfft)
        self._tail = np.zeros(len(response) - 1)
        self._reader: LoopbackReader | None = None
        self._next_sample: int | None = None
        self.frames: list[RoomFrame] = []

    def _convolve(self, speaker: np.ndarray) -> np.ndarray:
        """Overlap-add: this block's echo plus what earlier blocks' reverberation left over."""
        step = self._nfft - len(self._response) + 1
        out = np.empty(len(speaker))
        for offset in range(0, len(speaker), step):
            piece = speaker[offset : offset + step]
            full = np.fft.irfft(np.fft.rfft(piece, self._nfft) * self._spectrum, self._nfft)[: len(piece) + len(self._tail)]
            full[: len(self._tail)] += self._tail
            out[offset : offset + len(piece)] = full[: len(piece)]
            self._tail = full[len(piece) :].copy()
            if len(self._tail) < len(self._response) - 1:
                self._tail = np.pad(self._tail, (0, len(self._response) - 1 - len(self._tail)))
        return out

    def mix(self, frame: AudioFrame) -> AudioFrame:
        """``frame`` (the user) plus the echo of what played ``delay_ms`` before each of its samples."""
        if frame.sample_rate_hz != INPUT_SAMPLE_RATE_HZ:
            raise ValueError(f"the echo room works at {INPUT_SAMPLE_RATE_HZ} Hz, got a {frame.sample_rate_hz} Hz frame")
        if self._next_sample is not None and frame.start_sample != self._next_sample:
            raise ValueError(f"frames must follow each other: expected sample {self._next_sample}, got {frame.start_sample}")
        count = len(frame.samples)
        if self._reader is None:  # the stream's sample 0, on the clock the output plays on
            origin_s = frame.captured_at_s - frame.end_sample / INPUT_SAMPLE_RATE_HZ
            self._reader = LoopbackReader(self.loopback, INPUT_SAMPLE_RATE_HZ, origin_s - self.settings.delay_ms / 1000)
        self._next_sample = frame.end_sample
        speaker = self._reader.read(frame.start_sample, count).astype(np.float64)
        echo = self.gain * self._convolve(speaker)
        user = frame.samples.astype(np.float64)
        mixed = np.clip(np.round(user + echo), -32768, 32767).astype(np.int16)
        self.frames.append(RoomFrame(frame.start_sample, count, float(np.sum(user**2)), float(np.sum(echo**2))))
        return AudioFrame(mixed, frame.sample_rate_hz, frame.start_sample, frame.captured_at_s)


class _MixingOutbox:
    def __init__(self, outbox: Outbox, room: EchoRoom) -> None:
        self._outbox = outbox
        self._room = room

    async def send(self, frame: Frame) -> None:
        await self._outbox.send(self._room.mix(frame) if isinstance(frame, AudioFrame) else frame)


class EchoRoomSource(Stage):
    """Wraps a source stage: what it emits is what the user says, what leaves is what the
    microphone hears in the room. Its other attributes are the wrapped source's."""

    name = "source"
    #: The microphone hears the speaker: ``voice_pipeline`` puts echo cancellation after it.
    hears_output = True

    def __init__(self, source: Stage, room: EchoRoom) -> None:
        self.source = source
        self.room = room

    def __getattr__(self, name: str) -> Any:
        if name in ("source", "room"):
            raise AttributeError(name)
        return getattr(self.source, name)

    async def setup(self, ctx: StageContext) -> None:
        await self.source.setup(ctx)

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        await self.source.run(ctx, inbox, _MixingOutbox(outbox, self.room))  # type: ignore[arg-type]

    async def aclose(self) -> None:
        await self.source.aclose()
