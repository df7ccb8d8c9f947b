"""What the speaker played, sample by sample on the monotonic clock: the echo's source.

An output records every block it plays here (:meth:`AudioOutput.loopback`), with
the time its first sample plays, and truncates what a flush dropped before it
played. Readers — the echo canceller's far-end reference, the echo room of the
tests and benchmarks — read it back by time, at the input rate, as a loopback
recording of the speaker would have captured it: silence where nothing played.

Samples are indexed absolutely, ``round(time_s * rate)``, so blocks written
back to back (a paced output schedules each at the end of the previous one)
are contiguous, and any reader's clock maps onto it without a shared origin.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_right

import numpy as np
import soxr

#: How much played audio is kept for readers (they read within a few hundred ms of now).
KEEP_S = 10.0


class Loopback:
    """Thread-safe record of the played signal at the output rate (the PortAudio callback writes it)."""

    def __init__(self, sample_rate_hz: int, *, keep_s: float = KEEP_S) -> None:
        if sample_rate_hz <= 0:
            raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
        self.sample_rate_hz = sample_rate_hz
        self._keep = int(keep_s * sample_rate_hz)
        self._lock = threading.Lock()
        self._starts: list[int] = []  # absolute start index of each block, ascending
        self._blocks: list[np.ndarray] = []

    def index(self, time_s: float) -> int:
        """Absolute sample index of a monotonic time."""
        return round(time_s * self.sample_rate_hz)

    def played(self, started_at_s: float, samples: np.ndarray) -> None:
        """``samples`` (int16, output rate) play from ``started_at_s`` on; later audio overwrites earlier."""
        if len(samples) == 0:
            return
        start = self.index(started_at_s)
        with self._lock:
            self._cut(start)
            self._starts.append(start)
            self._blocks.append(np.asarray(samples, dtype=np.int16).copy())
            horizon = start + len(samples) - self._keep
            while len(self._starts) > 1 and self._starts[0] + len(self._blocks[0]) < horizon:
                self._starts.pop(0)
                self._blocks.pop(0)

    def flushed(self, at_s: float) -> None:
        """Everything scheduled to play from ``at_s`` on was dropped (a barge-in flush)."""
        with self._lock:
            self._cut(self.index(at_s))

    def _cut(self, index: int) -> None:
        while self._starts and self._starts[-1] >= index:
            self._starts.pop()
            self._blocks.pop()
        if self._starts and self._starts[-1] + len(self._blocks[-1]) > index:
            self._blocks[-1] = self._blocks[-1][: index - self._starts[-1]]

    def read(self, start: int, count: int) -> np.ndarray:
        """Samples ``[start, start + count)`` by absolute index, as float32; zeros where nothing played."""
        out = np.zeros(count, dtype=np.float32)
        end = start + count
        with self._lock:
            first = max(0, bisect_right(self._starts, start) - 1)
            for block_start, block in zip(self._starts[first:], self._blocks[first:]):
                if block_start >= end:
                    break
                lo, hi = max(start, block_start), min(end, block_start + len(block))
                if lo < hi:
                    out[lo - start : hi - start] = block[lo - block_start : hi - block_start]
        return out


class LoopbackReader:
    """Reads a :class:`Loopback` at another rate on a fixed sample grid, without streaming lag.

    A streaming resampler holds back ~20 ms (soxr HQ, 22050 → 16000 Hz), which
    would put the far-end reference behind the echo it must cancel. Instead each
    block is resampled on its own with one block of context on each side, the
    blocks lying on whole periods of the two rates (20 ms for 22050/16000), so
    they join exactly (133 dB SNR against resampling the whole signal at once).
    Reading block ``k`` therefore needs the played signal up to one block after
    it: a paced output has it (it schedules 40 ms ahead).

    Sample ``n`` of the reader is at ``origin_s + n / rate_hz`` on the monotonic clock.
    """

    def __init__(self, loopback: Loopback, rate_hz: int, origin_s: float) -> None:
        self.loopback = loopback
        self.rate_hz = rate_hz
        source_hz = loopback.sample_rate_hz
        unit = rate_hz // math.gcd(rate_hz, source_hz)
        self.block = unit * max(1, math.ceil(rate_hz // 50 / unit))  # >= 20 ms, whole periods of both rates
        self.source_block = self.block * source_hz // rate_hz
        self._origin = loopback.index(origin_s)

    def _block(self, k: int) -> np.ndarray:
        # Not cached: a block read before its end has played may still change (a reply starting).
        if self.rate_hz == self.loopback.sample_rate_hz:
            return self.loopback.read(self._origin + k * self.block, self.block)
        wide = self.loopback.read(self._origin + (k - 1) * self.source_block, 3 * self.source_block)
        return soxr.resample(wide, self.loopback.sample_rate_hz, self.rate_hz, quality="HQ")[self.block : 2 * self.block]

    def read(self, start: int, count: int) -> np.ndarray:
        """Reader samples ``[start, start + count)`` as float32 (int16 scale)."""
        first, last = start // self.block, (start + count - 1) // self.block
        joined = np.concatenate([self._block(k) for k in range(first, last + 1)])
        offset = start - first * self.block
        return joined[offset : offset + count]
