"""Helpers for the WebRTC tests: a WAV microphone track and a recording of the reply track."""

from __future__ import annotations

import asyncio
import fractions
import time

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from realtime_pipeline.audio import resample

RATE_HZ = 48_000
FRAME = RATE_HZ // 50  # 20 ms


class SpeechMicrophone(MediaStreamTrack):
    """A microphone that says the clips it is given (48 kHz), in real time, and silence in between."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue = np.zeros(0, dtype=np.int16)
        self._start_s: float | None = None
        self._timestamp = 0
        self.last_voiced_s: float | None = None  # when the last sample of the last clip was sent

    def say(self, samples: np.ndarray, rate_hz: int) -> float:
        """Queue a clip; returns its duration in seconds."""
        clip = resample(samples, rate_hz, RATE_HZ).astype(np.int16)
        self._queue = np.concatenate([self._queue, clip])
        return len(clip) / RATE_HZ

    @property
    def speaking(self) -> bool:
        return len(self._queue) > 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start_s is None:
            self._start_s = time.monotonic()
        else:
            self._timestamp += FRAME
            await asyncio.sleep(max(0.0, self._start_s + self._timestamp / RATE_HZ - time.monotonic()))
        samples = np.zeros(FRAME, dtype=np.int16)
        n = min(FRAME, len(self._queue))
        if n:
            samples[:n] = self._queue[:n]
            self._queue = self._queue[n:]
            if not len(self._queue):
                self.last_voiced_s = time.monotonic()
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME)
        frame.planes[0].update(samples.tobytes())
        frame.pts = self._timestamp
        frame.sample_rate = RATE_HZ
        frame.time_base = fractions.Fraction(1, RATE_HZ)
        return frame


class Recorder:
    """Reads a received audio track: (arrival time, 48 kHz mono int16) per frame."""

    def __init__(self) -> None:
        self.frames: list[tuple[float, np.ndarray]] = []
        self.task: asyncio.Task[None] | None = None

    def start(self, track: MediaStreamTrack) -> None:
        self.task = asyncio.get_running_loop().create_task(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE_HZ)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            frame.pts = None
            for out in resampler.resample(frame):
                self.frames.append((time.monotonic(), out.to_ndarray().reshape(-1).astype(np.int16)))

    def between(self, start_s: float, end_s: float) -> np.ndarray:
        parts = [samples for at, samples in self.frames if start_s <= at < end_s]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)

    def first_voiced_after(self, start_s: float, threshold: int = 300) -> float | None:
        for at, samples in self.frames:
            if at >= start_s and np.abs(samples.astype(np.int32)).max(initial=0) > threshold:
                return at
        return None
