"""Where reply audio goes: WAV file, memory, or (see :mod:`.device`) the speaker.

An output can be *paced*: it then consumes audio at real-time rate like a
sound card, keeping at most ``buffer_ms`` queued, so the player blocks as it
would on hardware, barge-in latency is realistic, and :meth:`AudioOutput.flush`
drops only what a card would still have had in its buffer.
"""

from __future__ import annotations

import time
import wave
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np

from .loopback import Loopback


@dataclass(frozen=True)
class PlayedBlock:
    """One block as the output played it: when its first sample played, and what it was."""

    started_at_s: float
    samples: np.ndarray
    response_id: str | None


class AudioOutput:
    """Base output. Subclasses implement :meth:`_consume`; pacing and flushing are shared.

    :meth:`loopback` is the record of what it played and when (the echo canceller's
    far-end reference); written blocks go there with their play time, unless the
    subclass knows better (the speaker records what its callback really played).
    """

    #: Whether :meth:`write` records blocks in the loopback (False: the subclass does).
    records_writes = True

    def __init__(self, sample_rate_hz: int, *, paced: bool = False, buffer_ms: int = 40) -> None:
        if sample_rate_hz <= 0:
            raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
        self.sample_rate_hz = sample_rate_hz
        self.paced = paced
        self.buffer_s = buffer_ms / 1000.0
        self._play_end_s = 0.0  # monotonic time at which everything written so far has played
        self._pending: list[tuple[float, int]] = []  # (end time, samples) of blocks not yet played
        self._loopback: Loopback | None = None

    def loopback(self) -> Loopback:
        """What this output played, on the monotonic clock (created on first use)."""
        if self._loopback is None:
            self._loopback = Loopback(self.sample_rate_hz)
        return self._loopback

    async def open(self) -> None:
        """Acquire the device or file. Default: nothing."""

    async def write(self, samples: np.ndarray, response_id: str | None = None) -> float:
        """Queue one block; returns the monotonic time its first sample plays.

        Paced outputs wait while more than ``buffer_ms`` is queued.
        """
        now = time.monotonic()
        start = max(now, self._play_end_s) if self.paced else now
        duration = len(samples) / self.sample_rate_hz
        self._play_end_s = start + duration
        if self.paced:
            self._pending = [(end, n) for end, n in self._pending if end > now]
            self._pending.append((self._play_end_s, len(samples)))
        self._consume(PlayedBlock(start, samples, response_id))
        if self._loopback is not None and self.records_writes:
            self._loopback.played(start, samples)
        if self.paced:
            await anyio.sleep(max(0.0, self._play_end_s - self.buffer_s - time.monotonic()))
        return start

    def flush(self) -> int:
        """Drop audio queued but not yet played; returns how many samples were dropped."""
        if not self.paced:
            return 0
        now = time.monotonic()
        dropped = 0
        for end, count in self._pending:
            if end > now:
                dropped += min(count, int((end - now) * self.sample_rate_hz))
        self._pending = []
        self._play_end_s = now
        if self._loopback is not None and self.records_writes:
            self._loopback.flushed(now)
        self._truncate(dropped)
        return dropped

    @property
    def playing_until_s(self) -> float:
        """Monotonic time at which everything written so far will have played (paced outputs)."""
        return self._play_end_s

    async def drain(self) -> None:
        """Wait until everything written has played."""
        if self.paced:
            await anyio.sleep(max(0.0, self._play_end_s - time.monotonic()))

    async def close(self) -> None:
        """Release the device or file. Default: nothing."""

    def _consume(self, block: PlayedBlock) -> None:
        raise NotImplementedError

    def _truncate(self, samples: int) -> None:
        """Forget the last ``samples`` consumed (they were flushed before playing)."""


class MemoryOutput(AudioOutput):
    """Keeps every block with its play time: for tests, benchmarks and apps."""

    def __init__(self, sample_rate_hz: int, *, paced: bool = False, buffer_ms: int = 40) -> None:
        super().__init__(sample_rate_hz, paced=paced, buffer_ms=buffer_ms)
        self.blocks: list[PlayedBlock] = []
        self.flushes: list[tuple[float, int]] = []  # (time, samples dropped)

    def _consume(self, block: PlayedBlock) -> None:
        self.blocks.append(block)

    def _truncate(self, samples: int) -> None:
        self.flushes.append((time.monotonic(), samples))
        while samples > 0 and self.blocks:
            last = self.blocks[-1]
            if len(last.samples) <= samples:
                samples -= len(last.samples)
                self.blocks.pop()
            else:
                self.blocks[-1] = PlayedBlock(last.started_at_s, last.samples[: len(last.samples) - samples], last.response_id)
                samples = 0

    def block_end_s(self, block: PlayedBlock) -> float:
        """When the last sample of ``block`` played."""
        return block.started_at_s + len(block.samples) / self.sample_rate_hz

    def played_until_s(self, response_id: str) -> float | None:
        """When the last played sample of a response ended: the speaker went silent for it (None: nothing played)."""
        ends = [self.block_end_s(b) for b in self.blocks if b.response_id == response_id and len(b.samples)]
        return max(ends) if ends else None

    def audio(self, response_id: str | None = None) -> np.ndarray:
        """Everything played (or only one response's audio), concatenated."""
        blocks = [b.samples for b in self.blocks if response_id is None or b.response_id == response_id]
        return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int16)


class WavFileOutput(AudioOutput):
    """Writes the reply audio to a WAV file, with ``gap_ms`` of silence between responses.

    Paced, it keeps the blocks that have not played yet in memory, so a flush
    (barge-in) removes them from the file as a sound card would never play them.
    """

    def __init__(self, path: str | Path, sample_rate_hz: int, *, paced: bool = False, gap_ms: int = 300) -> None:
        super().__init__(sample_rate_hz, paced=paced)
        self.path = Path(path)
        self.gap_samples = gap_ms * sample_rate_hz // 1000
        self._wav: wave.Wave_write | None = None
        self._last_response: str | None = None
        self._unplayed: list[PlayedBlock] = []
        self.samples_written = 0

    async def open(self) -> None:
        if self.path.parent and not self.path.parent.exists():
            raise FileNotFoundError(f"output folder {self.path.parent} does not exist")
        self._wav = wave.open(str(self.path), "wb")
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(self.sample_rate_hz)

    def _consume(self, block: PlayedBlock) -> None:
        assert self._wav is not None, "open() the output first"
        self._unplayed.append(block)
        now = time.monotonic()
        while self._unplayed and (
            not self.paced or self._unplayed[0].started_at_s + len(self._unplayed[0].samples) / self.sample_rate_hz <= now
        ):
            self._write_block(self._unplayed.pop(0))

    def _truncate(self, samples: int) -> None:
        while samples > 0 and self._unplayed:
            last = self._unplayed[-1]
            if len(last.samples) <= samples:
                samples -= len(last.samples)
                self._unplayed.pop()
            else:
                self._unplayed[-1] = PlayedBlock(last.started_at_s, last.samples[: len(last.samples) - samples], last.response_id)
                samples = 0

    def _write_block(self, block: PlayedBlock) -> None:
        assert self._wav is not None
        if self._last_response is not None and block.response_id != self._last_response:
            self._wav.writeframes(np.zeros(self.gap_samples, dtype="<i2").tobytes())
            self.samples_written += self.gap_samples
        self._last_response = block.response_id
        self._wav.writeframes(np.asarray(block.samples, dtype="<i2").tobytes())
        self.samples_written += len(block.samples)

    async def close(self) -> None:
        if self._wav is not None:
            for block in self._unplayed:
                self._write_block(block)
            self._unplayed = []
            self._wav.close()
            self._wav = None
