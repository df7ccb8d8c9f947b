"""The start sound: the echo canceller learns the room before the first reply.

A session's first replies are where barge-in under echo is slow: the double-talk filter
(:mod:`.double_talk`) has heard no echo yet, and a user who interrupts 400 ms into a reply
leaves it ~0.3 s of echo alone per reply (in twelve live barge-in runs the first four
interruptions took a median 353 ms, the later ones 123 ms). Speech is also a poor signal to learn a room from
(its spectrum is coloured and keeps changing); noise is the textbook one. So when the session
starts the echo stage plays a short, soft noise (pink above 100 Hz, fades in and out: a
breath-like "shh") and, once its echo is over, fits the echo path on all of it by least squares
(:class:`StartSoundFit`), which then starts the double-talk filter; what the fit left of the
sound's echo keeps the near-end detector's line up (:data:`START_LEAK_MARGIN_DB`), since a
reply's first frames, drawn on, understate a reverberant room's leak.

Measured (docs/echo.md, "The start sound"): offline (``python -m benchmarks.echo_sim --long-every 0``,
8 sessions) barge-in p50 / p95 214 / 1109 ms without it, 115 / 415 ms with it, the first two
interruptions of a session 300 → 142 ms (median), no self-interruption either way; live (twelve
barge-in runs each) the first four 353 → 186 ms, p95 578 → 534 ms, the users' WER 0.266 → 0.215
(0.180 without echo), no self-interruption either way. The NLMS
alone on 1-2 s of this noise removes only 4-13 dB; a least-squares fit on 0.3 s of it more than 20 dB,
one on all of it 55 dB of the first reply's echo (:class:`StartSoundFit`).

It also lets AEC3 hear the room before the first reply: without it AEC3 let that reply's echo
through often enough for the VAD to pause it (``python -m benchmarks.first_reply``, 16 Piper replies
in each of three rooms: 5 of 48 first replies without it, none with it, 4 of the 5 in the reverberant
room; after a user's first turn, spoken over the sound or not, 9 of 96 against 1 of 96; docs/echo.md, "On by default again").

:class:`CalibrationSchedule` says, frame by frame on the microphone's clock, when the sound and
its echo are over (the stage then fits them). A user who talks over it is heard only if louder
than its echo (the stage is half duplex meanwhile); a fit on the sound with a voice over it did
not beat the filter in the case measured (tests/test_echo_real.py), and the session then learns
from the replies, as without it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .double_talk import NEAR_END_PERCENTILE, band_levels_db
from .echo_path_fit import FIT_GAIN_DB, FIT_MAX_DELAY_MS, fit_echo_path

#: The sound's length: 800 ms left the detector 50 frames of echo alone after the fit's first
#: 300 ms (500 ms left too few: its line was not drawn before the first reply).
CALIBRATION_MS = 800
#: Its level (RMS): under a reply's (Piper's voice is -20 to -16 dBFS), over a quiet room's noise.
CALIBRATION_DBFS = -26.0
#: After the sound, the echo's tail: the longest delay fitted plus the room's reverberation.
CALIBRATION_TAIL_MS = 400
#: Give up waiting for the sound to play (an output that plays nothing) after this long.
CALIBRATION_WAIT_MS = 3000
#: Band of the noise: below 100 Hz a laptop speaker plays nothing, above 7.5 kHz the 16 kHz input hears nothing.
CALIBRATION_BAND_HZ = (100.0, 7500.0)
FADE_MS = 50
#: :class:`StartSoundFit`'s FIR, from just before the echo's delay. On two recorded live sessions
#: (the issue's room) a fit on the whole sound and its tail left the first reply's echo 44 dB down
#: (median, speech band) with 150 ms, 55 dB with 250 ms and 400 ms, against 28 dB for the filter the
#: running fits left (docs/echo.md, "One fit on the whole start sound"); 250 ms keeps the system
#: small enough to solve in ~10 ms.
CALIBRATION_FIR_MS = 250
#: Fewer frames of the sound's echo than this (a user talked over most of it): no fit.
CALIBRATION_MIN_FRAMES = 30
#: After the fit, the near-end detector's line stays this far over what the fit left of the start
#: sound's echo (:meth:`StartSoundFit.leak_db`). The line is drawn from the first reply's first 30
#: frames of echo alone, before its reverberation has built up: in the reverberant room (50 ms,
#: RT60 500 ms) the 250 ms FIR left the sound's echo 36 dB down (p90, speech band), the reply's
#: first 30 frames 43 dB, so the line sat at its lowest point (then -35 dB) and the reply's leak reached
#: -32 dB a second in and paused it (``benchmarks.first_reply --rooms 1`` on 64 cached Piper
#: replies: 2 paused with the line over the sound's leak by 0 or 2 dB, none with 4 or 6 dB). In the
#: issue's room and the 180 ms one the fit left 54-55 dB, so the line's own lowest point binds.
START_LEAK_MARGIN_DB = 6.0


def calibration_sound(sample_rate_hz: int, *, duration_ms: int = CALIBRATION_MS, level_dbfs: float = CALIBRATION_DBFS,
                      seed: int = 0) -> np.ndarray:
    """The start sound as int16 at ``sample_rate_hz``: pink noise in :data:`CALIBRATION_BAND_HZ`,
    ``level_dbfs`` RMS, :data:`FADE_MS` fades (no click)."""
    if sample_rate_hz <= 0 or duration_ms <= 2 * FADE_MS:
        raise ValueError(f"need a positive rate and more than {2 * FADE_MS} ms, got {sample_rate_hz} Hz, {duration_ms} ms")
    count = sample_rate_hz * duration_ms // 1000
    spectrum = np.fft.rfft(np.random.default_rng(seed).normal(size=count))
    frequencies = np.fft.rfftfreq(count, 1.0 / sample_rate_hz)
    low, high = CALIBRATION_BAND_HZ
    spectrum *= np.where((frequencies >= low) & (frequencies <= high), 1.0 / np.sqrt(np.maximum(frequencies, low) / low), 0.0)
    noise = np.fft.irfft(spectrum, count)
    fade = sample_rate_hz * FADE_MS // 1000
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, fade))
    noise[:fade] *= ramp
    noise[-fade:] *= ramp[::-1]
    noise *= 32768.0 * 10 ** (level_dbfs / 20) / np.sqrt(np.mean(noise**2))
    return np.clip(np.round(noise), -32768, 32767).astype(np.int16)


class CalibrationSchedule:
    """When the start sound and its echo are over, on the microphone's clock (10 ms frames).

    Over once :data:`CALIBRATION_TAIL_MS` after the sound's length has passed from its first
    audible frame, or after :data:`CALIBRATION_WAIT_MS` if nothing ever played."""

    def __init__(self, *, sound_ms: int = CALIBRATION_MS, tail_ms: int = CALIBRATION_TAIL_MS,
                 wait_ms: int = CALIBRATION_WAIT_MS, frame_ms: int = 10) -> None:
        self.length_frames = (sound_ms + tail_ms) // frame_ms
        self.wait_frames = wait_ms // frame_ms
        self._frames = 0
        self._since_audible: int | None = None
        self.over = False
        #: The sound was heard in the reference (it played).
        self.played = False

    def step(self, far_audible: bool) -> bool:
        """One frame; True while calibrating."""
        if self.over:
            return False
        self._frames += 1
        if self._since_audible is None and far_audible:
            self._since_audible = 0
            self.played = True
        if self._since_audible is not None:
            self._since_audible += 1
            self.over = self._since_audible >= self.length_frames
        else:
            self.over = self._frames >= self.wait_frames
        return not self.over


class StartSoundFit:
    """The echo path fitted once on the whole start sound and its echo, by least squares.

    The sound is pink noise, the best signal to learn a room from, and it is over within 1.2 s;
    fitting it while it plays (:class:`~.echo_path_fit.EchoPathFit`, fits every 100 ms, each judged
    on the last 100 ms of echo alone) left the double-talk filter removing 28 dB of the first reply's
    echo (median over its echo alone, speech band; two recorded live sessions in the issue's room),
    and the near-end detector's line stood so high that a user 20 dB under the reply waited 390 ms
    for a louder syllable. One fit over all of it, when it is over, removed 55 dB
    (:data:`CALIBRATION_FIR_MS`). The frames it fits are those the calibration's half-duplex gate
    took for echo, one stretch without holes when nobody speaks: the fit windows the reference by the same mask
    (the autocorrelation method, :func:`~.echo_path_fit.fit_echo_path`), which is exact inside a
    stretch and fits scattered frames badly (the stage's echo-alone frames, AEC3 removing 20 dB,
    skip the sound's first 120 ms and its tail: 16 dB on the same reply). A user louder than the
    echo is left out by the gate; one under it is noise to the fit, which then gains less and may
    lose to the running filter: :meth:`fit` is judged in-sample against it and must win by
    :data:`~.echo_path_fit.FIT_GAIN_DB` (the in-sample optimism of 4000 taps on ~1 s is ~1 dB).
    """

    def __init__(self, *, tail: int, block: int, sample_rate_hz: int, fir_ms: int = CALIBRATION_FIR_MS,
                 min_frames: int = CALIBRATION_MIN_FRAMES) -> None:
        if tail <= 0 or block <= 0 or tail % block:
            raise ValueError(f"the tail ({tail} samples) must be whole blocks of {block}")
        self.tail = tail
        self.block = block
        self.fir = fir_ms * sample_rate_hz // 1000
        self.max_delay = FIT_MAX_DELAY_MS * sample_rate_hz // 1000
        self.min_frames = min_frames
        self._reference: list[np.ndarray] = []
        self._capture: list[np.ndarray] = []
        self._echo: list[bool] = []
        #: How much less the fit left than the running filter on the sound's echo, in dB (None: no fit yet).
        self.gain_db: float | None = None
        self._left: np.ndarray | None = None  # what the fit left of the sound's echo, sample by sample

    def add(self, reference: np.ndarray, capture: np.ndarray, echo: bool) -> None:
        """One block: what played, what the microphone heard, and whether that was the echo alone."""
        if len(reference) != self.block or len(capture) != self.block:
            raise ValueError(f"blocks of {self.block} samples, got {len(reference)} and {len(capture)}")
        self._reference.append(np.asarray(reference, dtype=np.float64))
        self._capture.append(np.asarray(capture, dtype=np.float64))
        self._echo.append(bool(echo))

    @property
    def echo_frames(self) -> int:
        return sum(self._echo)

    def fit(self, running_taps: np.ndarray) -> np.ndarray | None:
        """Taps over the whole tail (from lag 0) if the fit left :data:`~.echo_path_fit.FIT_GAIN_DB`
        less of the sound's echo than ``running_taps`` (the filter as it is), else None."""
        if len(running_taps) != self.tail:
            raise ValueError(f"{self.tail} running taps, got {len(running_taps)}")
        if self.echo_frames < self.min_frames:
            return None
        x, y = np.concatenate(self._reference), np.concatenate(self._capture)
        mask = np.repeat(np.asarray(self._echo, dtype=np.float64), self.block)
        found = fit_echo_path(x, y, mask, fir=self.fir, tail=self.tail, max_delay=self.max_delay,
                              lead=self.block // 5)  # from 2 ms before the direct path
        if found is None:
            return None
        start, fir = found
        fitted = np.zeros(self.tail)
        fitted[start : start + len(fir)] = fir
        residual = y - _convolved(x, fitted)
        left, before = float(np.sum((mask * residual) ** 2)), float(np.sum((mask * (y - _convolved(x, running_taps))) ** 2))
        if left <= 0.0:
            return None
        self.gain_db = float(10.0 * np.log10(max(before, 1e-9) / left))
        if self.gain_db < FIT_GAIN_DB:
            return None
        self._left = residual
        return fitted

    def leak_db(self, bands_hz: Sequence[tuple[int, int]], window_frames: int,
                percentile: float = NEAR_END_PERCENTILE) -> list[float] | None:
        """What the installed fit leaves of the sound's echo in each of ``bands_hz``, in the near-end
        detector's terms: the residual's level against the loudest block of what played over the
        last ``window_frames`` (:class:`~.double_talk.NearEndDetector`'s ``residual_db``), its
        ``percentile`` over the sound's echo frames (None: no fit was installed).

        The sound is steady noise, so its echo's reverberation is fully built up; a reply's first
        frames are not (their leak was 7 dB under this in the reverberant room, and rose over it
        within a second: the trace in :data:`START_LEAK_MARGIN_DB`)."""
        if self._left is None:
            return None
        x, levels = np.concatenate(self._reference), []
        far = np.array([band_levels_db(x[k * self.block : (k + 1) * self.block], bands_hz) for k in range(len(self._echo))])
        left = np.array([band_levels_db(self._left[k * self.block : (k + 1) * self.block], bands_hz)
                         for k, echo in enumerate(self._echo) if echo])
        loudest = np.array([far[max(0, k + 1 - window_frames) : k + 1].max(axis=0) for k, echo in enumerate(self._echo) if echo])
        for band in range(len(bands_hz)):
            levels.append(float(np.percentile(left[:, band] - loudest[:, band], percentile)))
        return levels


def _convolved(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """``x`` through the FIR ``taps``, as long as ``x`` (by FFT)."""
    size = 1 << int(np.ceil(np.log2(len(x) + len(taps))))
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(taps, size), size)[: len(x)]
