"""Double talk: hearing the user while the assistant's echo is louder than they are.

AEC3's residual echo suppressor treats everything under the echo's level as
echo: in the echo room at 0 dB a user 5-20 dB quieter than the reply stays at
AEC3's -62 dBFS floor until the reply itself goes quiet (measured: 380 ms after
the user's first word on ps_librivox_0880, so barge-in p50 was 390 ms against
60 ms without echo). The user is in the microphone signal all along; only the
suppressor removes them.

So a linear echo canceller runs beside AEC3: :class:`LinearEchoFilter`
subtracts its estimate of the echo and keeps everything else (the user plus the
echo it could not model, 25-45 dB down in the echo room after a few seconds of
reply). :class:`NearEndDetector` compares that residual with what it is on
echo alone: frames where it is clearly louder hold someone else's voice. Those
frames go on as the linear residual instead of AEC3's output, so the VAD hears
the user when they start, and the ASR hears their words rather than AEC3's
gaps (WER 0.05 against 0.89 on a user 1.6 dB under a real Piper reply,
``tests/test_echo_real.py``).

The filter must learn the room first: until it removes 12 dB of echo the stage is
AEC3 and its suppressor alone, as before. The NLMS needs a few seconds of echo alone
for that, which users who interrupt early do not leave it (0.5 s per reply in the
barge-in benchmark); least-squares fits over all the echo heard so far can replace its
weights when they do better (:mod:`.echo_path_fit`, opt-in: ``EchoCancellation(echo_path_fit=True)``).

On by default (AEC3 alone: ``EchoCancellation(double_talk=False)``, ``--no-double-talk``). Its
residual used to pause replies on their own echo now and then; the fixes: comparing in the
speech band (:data:`SPEECH_BAND_HZ`), the VAD's level floor, no hangover in a reply's onset
(``echo_cancel.DOUBLE_TALK_ONSET_MS``) and, last, no near-end frame while AEC3's own output is
at its floor (:data:`AEC_FLOOR_MARGIN_DB`): AEC3 holds a quiet user back, but it does not pass
echo, so it vetoes the residual's mistakes (docs/echo.md). The veto held the quiet users too; the
filter is now two paths (:class:`TwoPathEchoFilter`), whose leak holds still, and a residual far
over the line goes through the veto (:data:`AEC_FLOOR_BYPASS_DB`); a residual at its band's noise
floor is no voice (:class:`BandNoiseFloor`).

No maintained package exposes a linear echo estimate: the AEC3 bindings
(pywebrtc-audio, livekit) return only the suppressed signal, and the speexdsp
bindings on PyPI are source builds or ctypes over a system library. The filter
is the textbook one (overlap-save partitioned-block frequency-domain NLMS, the
structure of speexdsp's MDF and AEC3's own linear stage), in numpy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from .audio import INPUT_SAMPLE_RATE_HZ

#: Default of :attr:`LinearEchoFilter.tail_ms`: the echo's delay plus the room's
#: reverberation that the filter models. 400 ms converged faster than 600 ms in the echo
#: room (delay 100 ms, RT60 300 ms: ERLE 25 dB after 4 s of reply against 20 dB) and
#: covers delays up to ~200 ms with the loudest part of the reverberation.
LINEAR_TAIL_MS = 400
#: Default of :attr:`LinearEchoFilter.step`: normalized step size (0 < step < 2).
LINEAR_STEP = 1.0


class LinearEchoFilter:
    """Overlap-save partitioned-block frequency-domain NLMS on 10 ms blocks.

    :meth:`process` returns the microphone minus the filter's echo estimate; the
    filter adapts unless told not to (during double talk the user's voice would
    pull it away from the echo path), at ``step`` normalized by the reference's
    power over the whole tail, per frequency bin.
    """

    def __init__(self, *, tail_ms: int = LINEAR_TAIL_MS, step: float = LINEAR_STEP,
                 sample_rate_hz: int = INPUT_SAMPLE_RATE_HZ, block_ms: int = 10) -> None:
        if not 0.0 < step < 2.0:
            raise ValueError(f"step must be in (0, 2), got {step}")
        self.block = sample_rate_hz * block_ms // 1000
        self.partitions = max(1, tail_ms * sample_rate_hz // 1000 // self.block)
        self.tail_ms = tail_ms
        self.step = step
        bins = self.block + 1
        self._weights = np.zeros((self.partitions, bins), dtype=np.complex128)
        self._spectra = np.zeros((self.partitions, bins), dtype=np.complex128)
        self._power = np.zeros(bins)  # sum over partitions of |spectrum|^2
        self._previous = np.zeros(self.block)
        # regularisation: a reference at -70 dBFS over the tail does not move the filter
        self._floor = self.partitions * (2 * self.block) * (32768.0 * 10 ** (-70 / 20)) ** 2

    def cancel(self, capture: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """One block (``self.block`` samples each): the capture minus the estimated echo of
        ``reference`` (float64, int16 scale). Then :meth:`adapt` (or not) before the next block."""
        if len(capture) != self.block or len(reference) != self.block:
            raise ValueError(f"blocks of {self.block} samples, got {len(capture)} and {len(reference)}")
        x = reference.astype(np.float64)
        spectrum = np.fft.rfft(np.concatenate([self._previous, x]))
        self._previous = x
        self._power += np.abs(spectrum) ** 2 - np.abs(self._spectra[-1]) ** 2
        self._spectra = np.roll(self._spectra, 1, axis=0)
        self._spectra[0] = spectrum
        estimate = np.fft.irfft(np.sum(self._weights * self._spectra, axis=0), n=2 * self.block)[self.block:]
        return capture.astype(np.float64) - estimate

    def adapt(self, residual: np.ndarray) -> None:
        """Move the filter towards the echo path from the last block's ``residual``."""
        error = np.fft.rfft(np.concatenate([np.zeros(self.block), residual]))
        gradient = np.conj(self._spectra) * (self.step * error / (np.maximum(self._power, 0.0) + self._floor))
        taps = np.fft.irfft(gradient, n=2 * self.block, axis=1)
        taps[:, self.block:] = 0.0  # the gradient constraint: a linear, not circular, convolution
        self._weights += np.fft.rfft(taps, axis=1)

    def set_taps(self, taps: np.ndarray) -> None:
        """Replaces the echo path estimate with ``taps``: the impulse response over the whole tail
        (``partitions * block`` samples from lag 0), e.g. a known one (``echo_sim --oracle-filter``)."""
        if len(taps) != self.partitions * self.block:
            raise ValueError(f"{self.partitions * self.block} taps, got {len(taps)}")
        parts = np.asarray(taps, dtype=np.float64).reshape(self.partitions, self.block)
        self._weights = np.fft.rfft(np.concatenate([parts, np.zeros_like(parts)], axis=1), axis=1)

    def taps(self) -> np.ndarray:
        """The echo path estimate as an impulse response over the whole tail (:meth:`set_taps`'s form)."""
        return np.fft.irfft(self._weights, n=2 * self.block, axis=1)[:, : self.block].ravel()

    def set_weights(self, other: LinearEchoFilter) -> None:
        """Takes ``other``'s echo path estimate (the same tail and block)."""
        if other._weights.shape != self._weights.shape:
            raise ValueError(f"weights of shape {self._weights.shape}, got {other._weights.shape}")
        self._weights = other._weights.copy()

    def process(self, capture: np.ndarray, reference: np.ndarray, *, adapt: bool = True) -> np.ndarray:
        """:meth:`cancel` then :meth:`adapt`."""
        residual = self.cancel(capture, reference)
        if adapt:
            self.adapt(residual)
        return residual


#: :class:`TwoPathEchoFilter`: the paths' residuals are compared over this many frames learnt as
#: echo alone; the foreground takes the background's weights when the background's residual was
#: :data:`TWO_PATH_COPY_DB` lower over them, and the background starts again from the foreground's
#: when it was :data:`TWO_PATH_RESET_DB` higher (it learnt a voice).
TWO_PATH_FRAMES = 20
TWO_PATH_COPY_DB = 1.0
TWO_PATH_RESET_DB = 6.0


class TwoPathEchoFilter:
    """Two :class:`LinearEchoFilter` s: the background adapts on every frame it is given; the
    foreground, whose residual the caller gets, takes the background's weights only once they
    did better on the last :data:`TWO_PATH_FRAMES` of those frames (the two-path echo canceller,
    Ochiai et al., 1977). The same interface as :class:`LinearEchoFilter`.

    Why: the frames the stage learns from as echo alone include quiet users (AEC3 removes a voice
    20-40 dB under the echo, which is the stage's test for echo alone: ``mfa_whisper2`` gave 103
    such frames in one simulated session), and an NLMS step of 1 fits each of them into the echo
    path, so the filter's leak rose and fell from reply to reply. In the simulator a filter whose
    misalignment holds still at -30 dB heard users at p95 160 ms and paused no reply; the single
    NLMS paused replies unless AEC3's floor vetoed its near-end frames, and the veto held the quiet
    users too (docs/echo.md, "What bounds the p95"). With two paths the veto can let a residual far
    over the line through (:data:`AEC_FLOOR_BYPASS_DB`). The cost is one more :meth:`cancel` per
    block, the foreground never adapts: 0.36 against 0.40 ms per 10 ms block for one filter's
    ``process`` (median over 5 s, load 1.4; the same within the noise).
    """

    def __init__(self, *, tail_ms: int = LINEAR_TAIL_MS, step: float = LINEAR_STEP,
                 sample_rate_hz: int = INPUT_SAMPLE_RATE_HZ, block_ms: int = 10) -> None:
        self.foreground, self.background = (LinearEchoFilter(tail_ms=tail_ms, step=step, sample_rate_hz=sample_rate_hz,
                                                             block_ms=block_ms) for _ in range(2))
        self.block, self.partitions = self.foreground.block, self.foreground.partitions
        self.tail_ms, self.step = tail_ms, step
        self._background_residual: np.ndarray | None = None
        self._energies: deque[tuple[float, float]] = deque(maxlen=TWO_PATH_FRAMES)
        #: Times the foreground took the background's weights, and the background was reset.
        self.copies = 0
        self.resets = 0

    def cancel(self, capture: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """The foreground's residual; both paths see every block, so their histories stay whole."""
        self._background_residual = self.background.cancel(capture, reference)
        return self.foreground.cancel(capture, reference)

    def adapt(self, residual: np.ndarray) -> None:
        """The block just cancelled was echo alone: the background learns from it and the paths are
        compared (``residual``: the foreground's, from :meth:`cancel`)."""
        background = self._background_residual
        if background is None:
            raise RuntimeError("adapt() comes after cancel(), once per block")
        self._background_residual = None
        self.background.adapt(background)
        self._energies.append((float(np.sum(np.square(residual))) + 1e-3, float(np.sum(np.square(background))) + 1e-3))
        if len(self._energies) < TWO_PATH_FRAMES:
            return
        foreground_energy = sum(f for f, _ in self._energies)
        background_energy = sum(b for _, b in self._energies)
        if background_energy * 10 ** (TWO_PATH_COPY_DB / 10) < foreground_energy:
            self.foreground.set_weights(self.background)
            self.copies += 1
            self._energies.clear()
        elif background_energy > foreground_energy * 10 ** (TWO_PATH_RESET_DB / 10):
            self.background.set_weights(self.foreground)
            self.resets += 1
            self._energies.clear()

    def taps(self) -> np.ndarray:
        """The foreground's echo path estimate (:meth:`LinearEchoFilter.taps`)."""
        return self.foreground.taps()

    def set_taps(self, taps: np.ndarray) -> None:
        """Both paths start from ``taps`` (:meth:`LinearEchoFilter.set_taps`)."""
        self.foreground.set_taps(taps)
        self.background.set_taps(taps)
        self._energies.clear()

    def process(self, capture: np.ndarray, reference: np.ndarray, *, adapt: bool = True) -> np.ndarray:
        """:meth:`cancel` then :meth:`adapt`."""
        residual = self.cancel(capture, reference)
        if adapt:
            self.adapt(residual)
        return residual


#: The band in which :class:`NearEndDetector`'s caller compares the residual with the far end.
#: A reply's voice hardly excites the filter at the bottom and top of the spectrum, so its
#: weights there stay unlearnt (misalignment -16 dB under 500 Hz and -12 dB above 4 kHz against
#: -40 dB in between, 30-turn benchmark recording). A reply stopping dead (end of a sentence, a
#: flush) sends a click through the room that only those weights would cancel: 60-130 ms after
#: each hard stop the broadband residual rose to 20-27 dB under the far end (ERLE 22 dB on such
#: tails against 44 dB while playing) and paused replies. Over that recording's echo-alone frames
#: the residual's maximum relative to the far end was -27 dB broadband, -37 dB in 200-4000 Hz
#: and -42 dB in 300-3500 Hz; on the barge-in recordings the narrower band found fewer of the
#: user's frames (76-78 against 81-82 % at the same false-alarm rate), so 200-4000 Hz. 10 ms frames
#: resolve 100 Hz: half a cycle of a 50 Hz hum still counts, 18 dB down.
SPEECH_BAND_HZ = (200, 4000)


#: A second band in which the residual is compared with the far end, by a detector of its own
#: (``EchoCancellation(high_band=True)``, the default). Users who start softly start with
#: consonants ("this", "so", a whisper) whose energy is over 2 kHz, where a voiced reply's echo,
#: and with it the filter's leak, has least: in the first 150 ms of such starts (echo_sim, the
#: 100 ms room) the user stood 8-28 dB over the leak's echo-alone level in 2-4 kHz and -28 to +4 dB
#: in the whole speech band. ``python -m benchmarks.echo_sim --sessions 16 --first-seed 8``
#: (2026-12-05): barge-in p95 522 → 410 ms and users missed 13 → 3 (every user 400 ms into a
#: reply), 457 → 261 ms and 5 → 0 (every third later), self-interruptions 2 → 0 and 0 → 0; live
#: (``benchmarks.barge_in``, eight seeds) p95 564 → 304 and 384 ms, the users' WER 0.203 → 0.18.
#: 2-7.5 kHz did as well offline, but above 4 kHz the filter's weights are the least learnt
#: and a reply stopping dead sends its click there (:data:`SPEECH_BAND_HZ`).
HIGH_BAND_HZ = (2000, 4000)


def band_levels_db(samples: np.ndarray, bands_hz: Sequence[tuple[int, int]] = (SPEECH_BAND_HZ,), *,
                   sample_rate_hz: int = INPUT_SAMPLE_RATE_HZ) -> list[float]:
    """Level of ``samples`` (int16 scale) within each of ``bands_hz``, in dB relative to full
    scale, from one spectrum.

    A Hann window keeps most energy outside a band out of it; not all of it at 10 ms
    (a 50 Hz hum still reads 18 dB down, :data:`SPEECH_BAND_HZ`)."""
    window = np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(np.asarray(samples, dtype=np.float64) * window)) ** 2
    resolution_hz = sample_rate_hz / len(samples)
    # Parseval, with the window's power: a full-band signal's band level matches its share of the power
    scale = 2.0 / (len(samples) * float(np.sum(window**2)))
    levels = []
    for low_hz, high_hz in bands_hz:
        low, high = int(np.ceil(low_hz / resolution_hz)), int(high_hz // resolution_hz) + 1
        power = scale * float(np.sum(spectrum[low:high]))
        levels.append(float(10.0 * np.log10(power / 32768.0**2 + 1e-12)))
    return levels


def band_level_db(samples: np.ndarray, *, band_hz: tuple[int, int] = SPEECH_BAND_HZ,
                  sample_rate_hz: int = INPUT_SAMPLE_RATE_HZ) -> float:
    """Level of ``samples`` within ``band_hz`` (:func:`band_levels_db` for one band)."""
    return band_levels_db(samples, (band_hz,), sample_rate_hz=sample_rate_hz)[0]


#: Defaults of :class:`NearEndDetector`, measured offline in the echo room (the 30 bundled
#: recordings spoken 8 s into a Piper reply; AEC3, suppressor and this; docs/echo.md). At 0 dB,
#: 100 ms, VAD onset p50/p95 with single-frame decisions: margin 6 dB 80/111 ms, 8 dB 80/206 ms
#: (history 150 frames; with 500 the threshold lagged the filter's convergence: p95 444 ms);
#: with the confirmation below 100/215 ms (clean speech: 60/80 ms; AEC3 alone 440/745 ms).
#: 4 dB since stop 35 (6 before; stop 34 had it and withdrew it with the fit), with the veto's
#: bypass at 6 dB: the start sound's one fit (:class:`~.echo_calibration.StartSoundFit`) leaves the
#: first replies' echo 55 dB down instead of 28, so the line no longer has a half-learnt filter's
#: leak to sit over. Live (eight barge-in seeds, the issue's room; stop 34's runs, lowest point
#: -35 dB) p50 / p95 105 / 164 ms against 105 / 203 at 6 dB with the fit and 108 / 297 before it, no
#: self-interruption; with the lowest point at -40 (stop 35) 103 / 123 and 103 / 124 ms in two runs.
#: The two-turn echo-room run of ``tests/test_benchmark_smoke.py`` (a session's first two replies)
#: paused on its echo in 0 of 20 runs (both stops). In stop 33, without the fit, 4 dB paused it in
#: 5 of 20 and was withdrawn (docs/echo.md, "One fit on the whole start sound").
NEAR_END_MARGIN_DB = 4.0
NEAR_END_PERCENTILE = 90.0
NEAR_END_HISTORY_FRAMES = 150
#: A frame is near-end only if ``[0]`` of the last ``[1]`` frames (this one included) were above
#: the threshold: single frames of echo above it (the filter's misadjustment, a reply's onset)
#: paused replies twice in a 12-interruption barge-in run when one frame was enough.
NEAR_END_CONFIRM = (3, 4)
#: The threshold never goes below this (residual relative to the far end): once the filter removed
#: 45 dB, its residual's own fluctuations crossed p90 + 6 dB, and webrtcvad, which ignores the
#: level, took the -65 dBFS echo passed on for a voice. -35 dB until stop 35; -40 since, with the
#: line also kept over what the start sound's fit left (:meth:`NearEndDetector.relearn`): the soft
#: starts that set the live p95 (``mfa_surround``, ``mfa_longstop``, ``mfa_theother``) begin 1-7 dB
#: under -35. Without that floor -40 paused a reply on its echo in the reverberant room
#: (``echo_sim`` seed 19, in stop 34 and again here with the floor dropped once the line's history
#: was full); with it none in 1056 simulated attempts (docs/echo.md, "The line over what the fit left").
#: (The larger bursts after a reply stops dead: :data:`SPEECH_BAND_HZ`.)
NEAR_END_LOWEST_THRESHOLD_DB = -40.0
#: A frame is not near-end while AEC3's own output sits at its floor: within this many dB of the
#: 90th percentile of its level on the frames learnt as echo alone. AEC3's suppressor is slow to
#: let a user through (that is why this detector exists), but it did not pass echo: in simulated
#: barge-ins the 20 ms chunks this path passed with the user silent had AEC3 at -94 to -92 dBFS
#: (p10-p90; its floor, the microphone 40-80 dB louder), those with the user speaking at -89 to
#: -20 dBFS (median -38). ``python -m benchmarks.echo_sim`` over 336 attempts (docs/echo.md):
#: replies paused on their own echo 14 times without the veto, once with it (AEC3's own, before
#: it had heard the room); barge-in p50 +0-110 ms (still 130-220 ms under AEC3 alone's).
AEC_FLOOR_MARGIN_DB = 1.0
#: ...unless the residual stands this far over the detector's line: the filter's own leak stood
#: 0.3-4 dB over a line 6 dB over its p90 where it paused replies (traced in the simulator), a quiet
#: user held at AEC3's floor 10-30 dB (``mfa_whisper2`` with the true echo path). With
#: :class:`TwoPathEchoFilter` and that line, 10 dB here: no reply paused on its echo over seeds 0-39
#: (960 attempts) and barge-in p95 160-409 ms against 247-444 ms (docs/echo.md, "Two paths"). 6 dB
#: since stop 35, with the line at 4 dB (:data:`NEAR_END_MARGIN_DB`): the veto still holds the
#: residual up to the same height over the echo alone's p90 (10 dB), and the simulator paused no reply
#: on its echo in 1056 attempts (stop 34's replies: p95 118-161 ms against 159-409 before; stop 35's,
#: with the -40 dB lowest point and the fit's leak floor: 120-190 ms, none paused either).
AEC_FLOOR_BYPASS_DB = 6.0


class NearEndDetector:
    """Decides, per 10 ms frame, whether the microphone holds more than the echo.

    ``residual_db`` is the linear filter's residual level minus the loudest far-end frame
    of the last 400 ms. On echo alone it sits near minus the filter's ERLE (and the room's
    coupling); with the user talking the residual is mostly the user, so it is far higher.
    A frame is near-end speech when ``residual_db`` is ``margin_db`` above the
    ``percentile`` of the last ``history`` frames judged echo alone: a short history follows
    the filter as it converges. Until ``min_frames`` such frames are seen, or while that
    percentile is above ``-min_removed_db`` (the filter has not converged), no frame is: the
    caller then keeps AEC3's output, as without the detector.
    """

    def __init__(self, *, margin_db: float = NEAR_END_MARGIN_DB, percentile: float = NEAR_END_PERCENTILE,
                 history: int = NEAR_END_HISTORY_FRAMES, min_frames: int = 100, min_removed_db: float = 12.0,
                 confirm_frames: int = NEAR_END_CONFIRM[0], within_frames: int = NEAR_END_CONFIRM[1],
                 lowest_threshold_db: float = NEAR_END_LOWEST_THRESHOLD_DB,
                 aec_floor_margin_db: float | None = AEC_FLOOR_MARGIN_DB,
                 aec_floor_bypass_db: float | None = AEC_FLOOR_BYPASS_DB) -> None:
        if not 1 <= confirm_frames <= within_frames:
            raise ValueError(f"need 1 <= confirm_frames <= within_frames, got {confirm_frames} and {within_frames}")
        self.confirm_frames = confirm_frames
        self.lowest_threshold_db = lowest_threshold_db
        self._above: deque[bool] = deque(maxlen=within_frames)
        #: The last frame was above the threshold (near-end or not yet confirmed): not echo alone.
        self.above = False
        self.margin_db = margin_db
        self.percentile = percentile
        self.min_frames = min_frames
        #: Frames of echo alone the line is drawn from: ``min_frames``, fewer after :meth:`relearn`.
        self.line_min_frames = min_frames
        self.min_removed_db = min_removed_db
        self._echo_alone: deque[float] = deque(maxlen=history)
        self._threshold_db: float | None = None  # recomputed when the history changes
        self.aec_floor_margin_db = aec_floor_margin_db
        self.aec_floor_bypass_db = aec_floor_bypass_db
        self._aec_alone: deque[float] = deque(maxlen=history)
        self._aec_floor_db: float | None = None
        #: What the filter now in place was measured to leave (:meth:`relearn`): the line stays over
        #: it (None: only ``lowest_threshold_db``).
        self.leak_floor_db: float | None = None
        self.near_end_frames = 0
        #: Frames the residual called near-end while AEC3 was at its floor (not passed).
        self.vetoed_frames = 0

    @property
    def threshold_db(self) -> float | None:
        """``residual_db`` above which a frame is near-end speech (None: not converged yet)."""
        return self._threshold_db

    @property
    def aec_floor_db(self) -> float | None:
        """AEC3's output level on echo alone (None: not learnt, or no AEC3 levels given)."""
        return self._aec_floor_db

    def _update_threshold(self) -> None:
        self._threshold_db = None
        if len(self._echo_alone) >= self.line_min_frames:
            typical = float(np.percentile(self._echo_alone, self.percentile))
            if typical <= -self.min_removed_db:
                self._threshold_db = max(typical + self.margin_db, self.lowest_threshold_db,
                                         -np.inf if self.leak_floor_db is None else self.leak_floor_db)
        if len(self._aec_alone) >= self.min_frames:
            self._aec_floor_db = float(np.percentile(self._aec_alone, self.percentile))

    def is_near_end(self, residual_db: float, aec_db: float | None = None) -> bool:
        """One frame while the far end is audible: does it hold near-end speech?

        ``aec_db`` is AEC3's output level for the frame: near AEC3's floor
        (:data:`AEC_FLOOR_MARGIN_DB`) the answer is no, unless the residual stands
        :data:`AEC_FLOOR_BYPASS_DB` over the line."""
        threshold = self.threshold_db
        above = threshold is not None and residual_db > threshold
        self.above = above
        self._above.append(above)
        if above and sum(self._above) >= self.confirm_frames:
            floor = self._aec_floor_db
            far_over = (self.aec_floor_bypass_db is not None and threshold is not None
                        and residual_db > threshold + self.aec_floor_bypass_db)
            if (aec_db is not None and floor is not None and self.aec_floor_margin_db is not None
                    and aec_db < floor + self.aec_floor_margin_db and not far_over):
                self.vetoed_frames += 1
                return False
            self.near_end_frames += 1
            return True
        return False

    def relearn(self, min_frames: int, *, leak_floor_db: float | None = None) -> None:
        """The filter was replaced (``echo_path_fit``): what the former one left on echo alone says
        nothing of the new one. The line is drawn afresh from ``min_frames`` frames of echo alone
        (a fit changes the filter at once, the NLMS over seconds); until then no frame is
        near-end. Keeping the former line meanwhile decided sooner (echo_sim, users 400 ms into
        every reply: later barge-ins p50 244 against 277 ms) but paused replies on their own
        echo in 2 of 6 live barge-in runs: a fit can beat the NLMS on the 100 ms it is judged on
        and still leave more than it on other echo (the 150 ms FIR ends before the room's tail).
        ``leak_floor_db``: what the new filter was measured to leave on echo alone (the start sound:
        :data:`~.echo_calibration.START_LEAK_MARGIN_DB`); the line stays over it for as long as this
        filter runs, not only until its history is full of the reply's echo: dropped then, with the
        lowest point at -40 dB, a reply in the reverberant room paused on its echo later in the
        session (``echo_sim`` seed 19). None: nothing known."""
        if min_frames < 1:
            raise ValueError(f"min_frames must be at least 1, got {min_frames}")
        self.leak_floor_db = leak_floor_db
        self._echo_alone.clear()
        self.line_min_frames = min(self.line_min_frames, min_frames)
        self._update_threshold()

    def reset(self) -> None:
        """The far end went quiet (or the frame is not evidence): confirmation starts afresh."""
        self._above.clear()
        self.above = False

    def learn(self, residual_db: float, aec_db: float | None = None) -> None:
        """A frame the caller knows is echo alone (``aec_db``: AEC3's output level on it)."""
        self._echo_alone.append(residual_db)
        if aec_db is not None:
            self._aec_alone.append(aec_db)
        self._update_threshold()


#: A band's residual within this many dB of the band's noise floor (:class:`BandNoiseFloor`) is no
#: evidence of a voice: at the end of a reply, with white noise at -78 dBFS at the microphone, the
#: high band's line (the leak relative to a reply with little energy over 2 kHz) came down to the
#: noise's own level, and the noise paused the reply (``echo_sim --noise-dbfs -78``, seed 4). A voice
#: at its band's noise floor is not one to stop the reply for.
NOISE_FLOOR_MARGIN_DB = 6.0
#: :class:`BandNoiseFloor`: the floor is this percentile of the residual's level over the last
#: :data:`NOISE_FLOOR_HISTORY_FRAMES` 10 ms frames (5 s: between replies and words the residual is
#: the microphone's noise), recomputed every 10 frames.
NOISE_FLOOR_PERCENTILE = 10.0
NOISE_FLOOR_HISTORY_FRAMES = 500


class BandNoiseFloor:
    """The residual's noise floor per band, from every frame (the far end playing or not): its
    :data:`NOISE_FLOOR_PERCENTILE` over the last :data:`NOISE_FLOOR_HISTORY_FRAMES`. :meth:`quiet`
    says which bands of a frame stand less than ``margin_db`` over it (none until ``min_frames``)."""

    def __init__(self, bands: int, *, margin_db: float = NOISE_FLOOR_MARGIN_DB, percentile: float = NOISE_FLOOR_PERCENTILE,
                 history: int = NOISE_FLOOR_HISTORY_FRAMES, min_frames: int = 50, every_frames: int = 10) -> None:
        if bands < 1 or min_frames < 1 or every_frames < 1:
            raise ValueError(f"need bands, min_frames and every_frames >= 1, got {bands}, {min_frames} and {every_frames}")
        self.bands = bands
        self.margin_db = margin_db
        self.percentile = percentile
        self.min_frames = min_frames
        self.every_frames = every_frames
        self._levels: deque[Sequence[float]] = deque(maxlen=history)
        self._count = 0
        self._floor_db: np.ndarray | None = None

    @property
    def floor_db(self) -> list[float] | None:
        """The floor per band in dBFS (None: fewer than ``min_frames`` frames so far)."""
        return None if self._floor_db is None else [float(v) for v in self._floor_db]

    def update(self, levels_db: Sequence[float]) -> None:
        """One frame's residual level per band (dBFS)."""
        if len(levels_db) != self.bands:
            raise ValueError(f"{self.bands} band levels, got {len(levels_db)}")
        self._levels.append(tuple(levels_db))
        self._count += 1
        if len(self._levels) >= self.min_frames and (self._floor_db is None or self._count % self.every_frames == 0):
            self._floor_db = np.percentile(np.array(self._levels), self.percentile, axis=0)

    def quiet(self, levels_db: Sequence[float]) -> list[bool]:
        """Per band: does the frame stand less than ``margin_db`` over the floor?"""
        if self._floor_db is None:
            return [False] * self.bands
        return [level < floor + self.margin_db for level, floor in zip(levels_db, self._floor_db)]
