"""Microphone and speaker through sounddevice (PortAudio), imported only when used.

The rest of the library works on machines without PortAudio or a sound card;
using these there raises :class:`AudioDeviceError` saying what is missing.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

import anyio
import numpy as np

from ..audio import INPUT_SAMPLE_RATE_HZ
from ..frames import AudioFrame
from ..stage import Inbox, Outbox, Stage, StageContext
from .outputs import AudioOutput, PlayedBlock

log = logging.getLogger(__name__)


class AudioDeviceError(RuntimeError):
    """No usable audio device (or no PortAudio); the message says what to do."""


def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as error:  # raised when the PortAudio library is missing
        raise AudioDeviceError(
            f"PortAudio is not available ({error}); install it (Debian: apt-get install libportaudio2) "
            "or use files: --input turn.wav --output reply.wav"
        ) from None
    return sounddevice


def _open_stream(kind: str, factory: Any, **kwargs: Any) -> Any:
    sd = _sounddevice()
    try:
        stream = factory(sd)(**kwargs)
        stream.start()
        return stream
    except sd.PortAudioError as error:
        raise AudioDeviceError(
            f"no usable audio {kind} device ({error}); use files instead: --input turn.wav --output reply.wav"
        ) from None


class MicrophoneSource(Stage):
    """Live microphone input as 20 ms frames at 16 kHz.

    The PortAudio callback must never block, so frames go through a bounded
    deque: if the pipeline falls behind, the oldest audio is dropped and
    counted in :attr:`dropped_frames`. Each frame is stamped with the time its first
    sample reached the converter (PortAudio's ADC time), the clock the echo canceller
    aligns the speaker's loopback on; ``voice_pipeline`` puts one after it (``hears_output``).
    """

    name = "source"
    hears_output = True

    def __init__(self, device: int | str | None = None, *, frame_ms: int = 20, max_queued_frames: int = 100) -> None:
        self.device = device
        self.frame_samples = INPUT_SAMPLE_RATE_HZ * frame_ms // 1000
        self.dropped_frames = 0
        self._frames: collections.deque[tuple[np.ndarray, float]] = collections.deque(maxlen=max_queued_frames)
        self._stream: Any = None

    def _callback(self, data: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if len(self._frames) == self._frames.maxlen:
            self.dropped_frames += 1
        now = time.monotonic()
        adc_s = _monotonic(time_info, "inputBufferAdcTime", now)
        self._frames.append((data[:, 0].copy(), now if adc_s is None else adc_s + frames / INPUT_SAMPLE_RATE_HZ))

    async def setup(self, ctx: StageContext) -> None:
        self._stream = _open_stream(
            "input",
            lambda sd: sd.InputStream,
            samplerate=INPUT_SAMPLE_RATE_HZ,
            channels=1,
            dtype="int16",
            blocksize=self.frame_samples,
            device=self.device,
            callback=self._callback,
        )

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        position = 0
        while True:
            while self._frames:
                samples, captured_at = self._frames.popleft()
                await outbox.send(AudioFrame(samples, INPUT_SAMPLE_RATE_HZ, position, captured_at))
                position += len(samples)
            await anyio.sleep(0.005)

    async def aclose(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


def _monotonic(time_info: Any, field: str, now_s: float) -> float | None:
    """PortAudio's ``field`` (an ADC or DAC time, on the stream's clock) on the monotonic clock;
    None where the host API gives no times (it reports 0 then)."""
    try:
        at, current = float(getattr(time_info, field)), float(time_info.currentTime)
    except (AttributeError, TypeError, ValueError):
        return None
    return now_s + (at - current) if at > 0 and current > 0 else None


class SpeakerOutput(AudioOutput):
    """The default (or a chosen) output device. Blocks are queued for the PortAudio
    callback; :meth:`flush` empties that queue so a barge-in silences it at once.

    The loopback gets what each callback really handed the device (silence included),
    at the time PortAudio says it reaches the converter: the echo canceller's reference.
    """

    records_writes = False

    def __init__(self, sample_rate_hz: int, *, device: int | str | None = None, buffer_ms: int = 60) -> None:
        super().__init__(sample_rate_hz, paced=True, buffer_ms=buffer_ms)
        self.device = device
        self._queue: collections.deque[np.ndarray] = collections.deque()
        self._lock = threading.Lock()
        self._stream: Any = None

    def _callback(self, out: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        out.fill(0)
        filled = 0
        with self._lock:
            while filled < frames and self._queue:
                block = self._queue[0]
                take = min(frames - filled, len(block))
                out[filled : filled + take, 0] = block[:take]
                filled += take
                if take == len(block):
                    self._queue.popleft()
                else:
                    self._queue[0] = block[take:]
        if self._loopback is not None:
            now = time.monotonic()
            dac_s = _monotonic(time_info, "outputBufferDacTime", now)
            self._loopback.played(now + self.latency_s if dac_s is None else dac_s, out[:, 0])

    @property
    def latency_s(self) -> float:
        """The device's output latency (PortAudio's estimate), when it gives no DAC times."""
        try:
            return float(self._stream.latency) if self._stream is not None else 0.0
        except (AttributeError, TypeError, ValueError):
            return 0.0

    async def open(self) -> None:
        self._stream = _open_stream(
            "output",
            lambda sd: sd.OutputStream,
            samplerate=self.sample_rate_hz,
            channels=1,
            dtype="int16",
            device=self.device,
            latency="low",
            callback=self._callback,
        )

    def _consume(self, block: PlayedBlock) -> None:
        with self._lock:
            self._queue.append(block.samples)

    def _truncate(self, samples: int) -> None:
        with self._lock:
            self._queue.clear()

    async def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
