"""Acoustic echo cancellation on the local path: the microphone no longer hears the assistant.

With a speaker and a microphone on one machine the microphone hears every
reply; without this the VAD takes the assistant's voice for the user and the
reply interrupts itself. :class:`EchoCancellation` is a stage between the
source and the VAD running WebRTC's AEC3 (the ``pywebrtc-audio`` package, the
``[aec]`` extra) on 10 ms frames at 16 kHz. Its far-end reference is exactly
what the output played: the output's :class:`~.io.loopback.Loopback`, read on
the microphone's clock (sample ``n`` of the input was captured at
``origin + n / 16000``), resampled from the output rate without streaming lag,
and silent where nothing played (gaps, flushed audio). AEC3 finds the acoustic
delay itself.

Package choice (docs/echo.md): ``pywebrtc-audio`` and ``livekit``'s
``rtc.AudioProcessingModule`` both run AEC3 in-process without a server;
on real speech over a real Piper reply in the echo room, pywebrtc-audio
removed more echo (ERLE 37 against 31 dB at 0 dB, 100 ms) at the same cost
(0.1 ms per 10 ms frame) and depends on numpy only.

A user quieter than the echo is suppressed by AEC3 too; :mod:`.double_talk`
finds them in a linear echo canceller's residual and passes that instead.

Without the package, :class:`EchoGate` is the fallback: while the assistant
is audible, microphone frames that are not clearly louder than its echo could
be are muted, and barge-in needs
:attr:`~.interruption.InterruptionSettings.min_interruption_while_speaking_ms`
of voiced audio; :func:`echo_stage` logs once which one runs.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import anyio
import numpy as np

from .audio import INPUT_SAMPLE_RATE_HZ
from .double_talk import HIGH_BAND_HZ, SPEECH_BAND_HZ, BandNoiseFloor, NearEndDetector, TwoPathEchoFilter, band_levels_db
from .echo_calibration import START_LEAK_MARGIN_DB, CalibrationSchedule, StartSoundFit, calibration_sound
from .echo_path_fit import FIT_DETECTOR_FRAMES, EchoPathFit
from .frames import AudioFrame
from .io.loopback import LoopbackReader
from .io.outputs import AudioOutput
from .stage import Inbox, Outbox, Stage, StageContext

log = logging.getLogger(__name__)

AEC_PACKAGE = "pywebrtc-audio"
INSTALL_HINT = "pip install 'realtime_pipeline[aec]'"
#: AEC3 works on 10 ms frames.
FRAME_MS = 10


class EchoCancellerUnavailable(RuntimeError):
    """The AEC package is not installed (or does not load); the message says how to get it."""


def _import_backend() -> ModuleType:
    """The AEC3 binding (a function, so tests can make the import fail)."""
    import pywebrtc_audio

    return pywebrtc_audio


def load_backend() -> ModuleType:
    try:
        return _import_backend()
    except ImportError as error:  # also an OSError from a broken binary wheel, re-raised as ImportError by Python
        raise EchoCancellerUnavailable(
            f"echo cancellation needs the {AEC_PACKAGE} package ({error}); install it with: {INSTALL_HINT}"
        ) from None


def aec_available() -> bool:
    try:
        load_backend()
    except EchoCancellerUnavailable:
        return False
    return True


class EchoCanceller:
    """WebRTC AEC3 (with its high-pass filter; no noise suppression or gain control, which
    would change what the ASR hears) on mono int16 audio in 10 ms frames, returned
    :attr:`latency_samples` late."""

    def __init__(self, sample_rate_hz: int = INPUT_SAMPLE_RATE_HZ) -> None:
        backend = load_backend()
        self.sample_rate_hz = sample_rate_hz
        self.frame_samples = sample_rate_hz * FRAME_MS // 1000
        self._apm = self._processor(backend)
        #: AEC3 returns the capture this many samples late (its 64-sample block framing: 128 at
        #: 16 kHz, 8 ms), measured once on a probe rather than assumed from the package's internals.
        self.latency_samples = self._measure_latency(backend)

    def _processor(self, backend: ModuleType) -> Any:
        return backend.AudioProcessor(self.sample_rate_hz, 1, echo_cancellation=True, high_pass_filter=True, stream_delay_ms=0)

    def _measure_latency(self, backend: ModuleType, frames: int = 20) -> int:
        """The lag at which a fresh processor's output best matches its input (noise, no far end)."""
        probe = self._processor(backend)
        noise = np.random.default_rng(0).normal(0.0, 3000.0, frames * self.frame_samples)
        capture = np.clip(np.round(noise), -32768, 32767).astype(np.int16)
        silence = np.zeros(self.frame_samples, dtype=np.int16)
        out = np.concatenate([probe.process(capture[i : i + self.frame_samples], silence)
                              for i in range(0, len(capture), self.frame_samples)]).astype(np.float64)
        span = len(capture) - 2 * self.frame_samples
        scores = [float(np.dot(out[lag : lag + span], capture[:span])) for lag in range(2 * self.frame_samples)]
        return int(np.argmax(scores))

    def process(self, capture: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """The capture without the echo of ``reference`` (same length, a multiple of 10 ms; the
        reference sample ``i`` played when capture sample ``i`` was recorded)."""
        if len(capture) != len(reference) or len(capture) % self.frame_samples:
            raise ValueError(f"capture and reference must be equal multiples of {self.frame_samples} samples, "
                             f"got {len(capture)} and {len(reference)}")
        return self._apm.process(np.ascontiguousarray(capture, dtype=np.int16), np.ascontiguousarray(reference, dtype=np.int16))


@dataclass(frozen=True)
class ProcessedFrame:
    """Energies (sums of squares, int16 scale) of one frame: into the stage, out of AEC3 (the
    same as ``in_energy`` without it), out of the stage; and of its far-end reference."""

    start_sample: int
    samples: int
    in_energy: float
    aec_energy: float
    out_energy: float
    reference_energy: float


def _energy(samples: np.ndarray) -> float:
    return float(np.sum(samples.astype(np.float64) ** 2))


#: Muted frames carry white noise this loud instead of digital zeros: after seconds of exact
#: zeros webrtcvad missed the start of words. Measured offline in the echo room (the 30 bundled
#: recordings spoken 8 s into a Piper reply, 0 dB, 100 ms; AEC3, suppressor, double talk):
#: VAD onset p95 241 ms with zeros, 111 ms with noise at -90 dBFS (about 1 LSB), 164 ms at
#: -80 and 331 ms at -70 dBFS. No microphone delivers exact zeros either.
MUTED_NOISE_DBFS = -90.0


def muted(count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` samples of what a muted stretch sounds like (:data:`MUTED_NOISE_DBFS` white noise)."""
    return np.round(rng.normal(0.0, 32768.0 * 10 ** (MUTED_NOISE_DBFS / 20), count)).astype(np.int16)


#: Defaults of :class:`ResidualGate`, measured in the echo room (docs/echo.md).
GATE_WINDOW_MS = 400
GATE_MARGIN_DB = 6.0
GATE_AUDIBLE_DBFS = -60.0


class ResidualGate:
    """Mutes 10 ms frames that are no louder than the assistant's echo can be (a half-duplex
    echo suppressor): the fallback without AEC3, and behind AEC3 while it has not converged.

    While the assistant is audible (its played level within ``window_ms``, which covers
    the echo's delay and reverberation, is above ``audible_dbfs``), a frame is muted unless
    it is ``margin_db`` louder than the loudest recent reference frame plus the coupling
    (how much louder than that the input is on echo alone). The coupling starts at
    ``prior_coupling_db`` (0: the echo may be as loud as what played) and is then the 90th
    percentile of the last 500 frames judged echo (never below -40 dB); louder frames (the
    user) do not move it.
    """

    def __init__(self, *, window_ms: int = GATE_WINDOW_MS, margin_db: float = GATE_MARGIN_DB,
                 audible_dbfs: float = GATE_AUDIBLE_DBFS, prior_coupling_db: float = 0.0) -> None:
        self.margin_db = margin_db
        self.audible_dbfs = audible_dbfs
        self.prior_coupling_db = prior_coupling_db
        self._step = INPUT_SAMPLE_RATE_HZ * FRAME_MS // 1000
        self._reference_db: deque[float] = deque(maxlen=max(1, window_ms // FRAME_MS))
        self._coupling_db: deque[float] = deque(maxlen=500)
        self._rng = np.random.default_rng(0)
        self.muted_frames = 0

    @property
    def coupling_db(self) -> float:
        if len(self._coupling_db) < 50:
            return self.prior_coupling_db
        return max(-40.0, float(np.percentile(self._coupling_db, 90)))

    @staticmethod
    def _level_db(samples: np.ndarray) -> float:
        return float(10.0 * np.log10(np.mean(np.square(samples.astype(np.float64))) / 32768.0**2 + 1e-12))

    def process(self, capture: np.ndarray, reference: np.ndarray, raw: np.ndarray | None = None) -> np.ndarray:
        out = capture.copy()
        for offset in range(0, len(capture), self._step):
            mic_db = self._level_db(capture[offset : offset + self._step])
            self._reference_db.append(self._level_db(reference[offset : offset + self._step]))
            loudest_db = max(self._reference_db)
            if loudest_db < self.audible_dbfs:
                continue
            above_db = mic_db - loudest_db
            if above_db < self.coupling_db + self.margin_db:
                self._coupling_db.append(above_db)
                out[offset : offset + self._step] = muted(self._step, self._rng)
                self.muted_frames += 1
        return out


#: A frame AEC3 took this much out of is echo alone (a user as loud as the echo keeps it from
#: removing that much): the :class:`ResidualSuppressor` learns the coupling from such frames, and
#: the double-talk filter the echo path.
ECHO_ALONE_REMOVED_DB = 20.0
#: Default of :attr:`ResidualSuppressor.below_echo_db`: AEC3 leaves its residual 25-40 dB
#: under the echo it removed (ERLE, docs/echo.md), a user talking over the reply is near the
#: echo's level (double talk), so 20 dB under the echo separates them.
RESIDUAL_BELOW_ECHO_DB = 20.0


class ResidualSuppressor(ResidualGate):
    """Behind AEC3: mutes 10 ms frames of its output more than ``below_echo_db`` under the
    echo the microphone hears, while the assistant is audible.

    AEC3 leaves a quiet residual (its linear filter is shorter than a room's reverberation,
    and it needs a moment to find the delay): at -45 to -60 dBFS over digital silence, and
    webrtcvad, which does not look at the level, calls it voiced. The echo's level is the
    loudest recent reference frame plus the coupling, learnt on the frames AEC3 itself
    took 20 dB or more out of (echo alone: the 90th percentile of microphone minus
    reference over the last 500 of them; ``prior_coupling_db`` until 50 are seen).
    """

    def __init__(self, *, below_echo_db: float = RESIDUAL_BELOW_ECHO_DB, **options: Any) -> None:
        super().__init__(**options)
        self.below_echo_db = below_echo_db

    @property
    def coupling_db(self) -> float:
        if len(self._coupling_db) < 50:
            return self.prior_coupling_db
        return float(np.percentile(self._coupling_db, 90))

    def process(self, capture: np.ndarray, reference: np.ndarray, raw: np.ndarray | None = None) -> np.ndarray:
        """``capture`` is AEC3's output, ``raw`` what went into it."""
        assert raw is not None, "the suppressor compares AEC3's output with its input"
        out = capture.copy()
        for offset in range(0, len(capture), self._step):
            piece = slice(offset, offset + self._step)
            out_db, in_db = self._level_db(capture[piece]), self._level_db(raw[piece])
            self._reference_db.append(self._level_db(reference[piece]))
            loudest_db = max(self._reference_db)
            if loudest_db < self.audible_dbfs:
                continue
            if out_db < in_db - ECHO_ALONE_REMOVED_DB:
                self._coupling_db.append(in_db - loudest_db)
            if out_db < loudest_db + self.coupling_db - self.below_echo_db:
                out[piece] = muted(self._step, self._rng)
                self.muted_frames += 1
        return out


class _ReferenceStage(Stage):
    """Shared by the canceller and the gate: reads the output's loopback on the input's clock,
    in whole 10 ms frames, and records each frame's energies."""

    name = "aec"

    def __init__(self, output: AudioOutput, gate: ResidualGate | None, *, max_records: int = 200_000) -> None:
        self.output = output
        self.loopback = output.loopback()
        self.gate = gate
        self.records: deque[ProcessedFrame] = deque(maxlen=max_records)
        self._reader: LoopbackReader | None = None
        self._step = INPUT_SAMPLE_RATE_HZ * FRAME_MS // 1000
        self._carry = np.zeros(0, dtype=np.int16)
        #: What the ASR should hear of the frames :meth:`process` returned last, where it differs
        #: from them (None: the same): the double-talk path's linear residual where the VAD's
        #: signal is muted.
        self.for_asr: np.ndarray | None = None
        self._lagged: np.ndarray | None = None  # the last latency_samples of capture and reference
        #: None, or a list :meth:`process` appends each call's inputs to, on the output's clock:
        #: (first sample, microphone, reference, AEC3's output), int16 copies; what
        #: ``benchmarks.echo_replay`` needs to run the stage again on a live session.
        self.recording: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] | None = None

    @property
    def latency_samples(self) -> int:
        """How late :meth:`process`'s output is against its input, in samples (AEC3's framing)."""
        return 0

    def _aligned(self, capture: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``capture`` and ``reference`` :attr:`latency_samples` late, in step with AEC3's output.

        Everything after AEC3 works on that clock: the linear residual that replaces AEC3's
        output where the user talks over the reply, the levels the detector compares, the ASR's
        signal. Mixed on the input's clock, each switch between the two skipped or repeated 8 ms
        of the user's voice, and the detector compared AEC3's frame with the microphone's next."""
        lag = self.latency_samples
        if lag == 0:
            return capture, reference
        if self._lagged is None:
            self._lagged = np.zeros((2, lag), dtype=np.int16)
        joined = np.concatenate([self._lagged, np.stack([capture, reference]).astype(np.int16)], axis=1)
        self._lagged = joined[:, -lag:].copy()
        return joined[0, : len(capture)], joined[1, : len(capture)]

    def _cancel(self, capture: np.ndarray, reference: np.ndarray) -> np.ndarray:
        return capture

    def echo_unprotected(self) -> bool:
        """Whether the reply's echo may still reach the VAD: the conversation then asks a barge-in
        over an audible reply for ``min_interruption_while_speaking_ms`` of voiced audio."""
        return False

    def process(self, start: int, capture: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """Whole 10 ms frames of the microphone (``capture``, from input sample ``start``) and of
        what played at the same instants (``reference``) through AEC3 (if any), the gate (if
        any) and double talk; public so a recording can be processed offline (tests, tools).
        The result is :attr:`latency_samples` late: it starts at input sample ``start - latency_samples``
        (the first call's first ``latency_samples`` are silence from before the input began)."""
        cancelled = self._cancel(capture, reference)
        capture, reference = self._aligned(capture, reference)
        if self.recording is not None:
            self.recording.append((start - self.latency_samples, capture.copy(), reference.copy(), cancelled.copy()))
        out = self.gate.process(cancelled, reference, capture) if self.gate is not None else cancelled
        self.for_asr = None
        out = self._double_talk(capture, reference, cancelled, out)
        self.records.append(ProcessedFrame(start - self.latency_samples, len(capture), _energy(capture),
                                           _energy(cancelled), _energy(out), _energy(reference)))
        return out

    def _double_talk(self, capture: np.ndarray, reference: np.ndarray, cancelled: np.ndarray, out: np.ndarray) -> np.ndarray:
        return out

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        first = True
        async for frame in inbox:
            if not isinstance(frame, AudioFrame):
                await outbox.send(frame)
                continue
            if frame.sample_rate_hz != INPUT_SAMPLE_RATE_HZ:
                raise ValueError(f"echo cancellation works at {INPUT_SAMPLE_RATE_HZ} Hz, got a {frame.sample_rate_hz} Hz frame")
            if self._reader is None:  # input sample 0 on the monotonic clock (frames are only ever late)
                origin_s = frame.captured_at_s - frame.end_sample / INPUT_SAMPLE_RATE_HZ
                self._reader = LoopbackReader(self.loopback, INPUT_SAMPLE_RATE_HZ, origin_s)
            samples = np.concatenate([self._carry, frame.samples]) if self._carry.size else frame.samples
            start = frame.start_sample - len(self._carry)
            usable = len(samples) // self._step * self._step
            self._carry = samples[usable:]
            if usable == 0:
                continue
            capture = samples[:usable]
            reference = np.clip(np.round(self._reader.read(start, usable)), -32768, 32767).astype(np.int16)
            cleaned, for_asr = self.process(start, capture, reference), self.for_asr
            ctx.conversation.echo_unprotected = self.echo_unprotected()
            out_start = start - self.latency_samples
            if first:  # the stream starts where the input did, without the silence AEC3 returns first
                first = False
                cleaned, for_asr = cleaned[start - out_start :], None if for_asr is None else for_asr[start - out_start :]
                out_start = start
            await outbox.send(AudioFrame(cleaned, INPUT_SAMPLE_RATE_HZ, out_start, frame.captured_at_s, asr_samples=for_asr))


#: Default of :attr:`EchoCancellation.hangover_ms`: after a near-end frame the linear residual
#: keeps going to the VAD this long, so a word's weaker frames between loud ones are not cut
#: back to AEC3's gaps.
DOUBLE_TALK_HANGOVER_MS = 150
#: Frames quieter than this at the microphone are never judged near-end (nor learnt from):
#: between two words of the reply nothing is removed because there is nothing to remove.
DOUBLE_TALK_FLOOR_DBFS = -65.0
#: For :data:`DOUBLE_TALK_ONSET_MS` after the far end comes back (above
#: :data:`DOUBLE_TALK_ONSET_DBFS` after :data:`DOUBLE_TALK_PAUSE_MS` under
#: :data:`DOUBLE_TALK_PAUSED_DBFS`: a reply starting or resuming after a pause) near-end
#: frames get no hangover. There the filter's residual rises 1-2 dB over the detector's line
#: for 3 of 4 frames, 200-280 ms in, and the hangover then passed 150 ms of its echo leak
#: (-43 to -55 dBFS) to the VAD: both self-interruptions of a recorded barge-in run (seed 5).
#: Replayed over 14 recordings, this removed both and changed 4 of 71 barge-ins (three by
#: 20-40 ms, one pre-convergence one 1450 -> 1950 ms); a 300 ms guard with no decisions at all
#: removed one of the two (docs/echo.md).
DOUBLE_TALK_ONSET_MS = 300
DOUBLE_TALK_PAUSE_MS = 100
DOUBLE_TALK_ONSET_DBFS = -40.0
DOUBLE_TALK_PAUSED_DBFS = -50.0
#: A reply fades in: Piper's first 10 ms frames rise from -104 to -33 dBFS over 40 ms, so the far
#: end crosses :data:`DOUBLE_TALK_ONSET_DBFS` a few frames after it left the pause. Until
#: 2026-12-05 an onset needed the 100 ms just before that frame all under
#: :data:`DOUBLE_TALK_PAUSED_DBFS`, which the ramp's own frames were not: the guard never started
#: on a Piper reply, and a simulated session's replies paused on their echo 180-250 ms in, the
#: hangover passing the filter's leak (traced; docs/echo.md). Now the pause may have ended this long before.
DOUBLE_TALK_RAMP_MS = 50


#: AEC3 lets a reply's echo through now and then until it has heard this much of the far end
#: (its own initial state is as long: ``EchoCanceller3Config.filter.initial_state_seconds``, 2.5 s
#: of render). Without the start sound, a session's first reply paused on its own echo 0.7-1.6 s in
#: (5 of 48 replies in ``benchmarks.first_reply``, 4 of them in the reverberant room); until then
#: :meth:`EchoCancellation.echo_unprotected` asks for the fallback's longer barge-in threshold
#: (240 ms voiced): 17 of 144 first replies paused without it, 2 with it (the same command, with
#: and without ``--no-guard``, three users' cases; docs/echo.md). With the start sound it plays no part.
AEC3_LEARNING_MS = 2500


class EchoCancellation(_ReferenceStage):
    """AEC3 between the source and the VAD; the far end is ``output``'s loopback.

    A :class:`ResidualSuppressor` follows it (``residual_gate=False``: none): without it
    AEC3's quiet residual reached the VAD and paused the first reply of a 3-turn run.

    Double talk (on by default; ``double_talk=False`` is AEC3 alone; :mod:`..double_talk`):
    AEC3 also removes a user quieter than the echo, so a linear echo canceller runs beside
    it; frames where the user's voice is in its residual go on as that residual (the user
    plus the little echo a linear filter leaves), ``hangover_ms`` after the last such frame
    too (none in a far-end onset's first :data:`DOUBLE_TALK_ONSET_MS`). Once that filter has
    converged, the other frames are muted: AEC3's output there is only its residual, and
    with it webrtcvad heard the user later (VAD onset p50 350 against 80 ms in a simulated
    12-interruption session). A frame is never near-end while AEC3's own output sits at its
    floor (:data:`~.double_talk.AEC_FLOOR_MARGIN_DB`): with that veto replies paused on their
    own echo once in 336 simulated barge-ins (AEC3's own, AEC3 alone too) against 14, and in
    none of 14 live barge-in runs (3 of 18 before); barge-in p50 300 against 535 ms and WER 0.30
    against 0.40 for AEC3 alone on the same live seeds (docs/echo.md). The veto also held quiet
    users; the filter is two paths (:class:`~.double_talk.TwoPathEchoFilter`), so its leak holds
    still, and a residual :data:`~.double_talk.AEC_FLOOR_BYPASS_DB` over the line goes through.
    A band's residual at that band's noise floor (:class:`~.double_talk.BandNoiseFloor`) is no
    evidence of a voice.

    ``residual_for_asr``: where the VAD's signal is muted (converged, not judged near-end), the
    ASR gets the linear residual instead (:attr:`AudioFrame.asr_samples`): the user plus 25-45 dB
    less echo, so a user's first syllables, which the VAD hears only once the detector is sure,
    are in what Whisper transcribes.

    ``echo_path_fit`` (opt-in): least-squares fits over all the echo heard so far replace the
    linear filter's weights when they do better (:mod:`..echo_path_fit`): users who interrupt
    every reply 400 ms in leave the NLMS ~0.5 s of echo alone per reply, too little to converge.
    Live barge-in p50 / p95 213 / 442 against 363 / 1561 ms on the same six runs, but a reply
    paused on its own echo once in 84 attempts against none in 72 (docs/echo.md): not the
    default until that is understood.

    ``calibrate``: when the stage starts (:meth:`run`) it plays a short, soft noise and fits the
    echo path on it (:mod:`..echo_calibration`), so the double-talk filter knows the room before
    the first reply; offline, :meth:`start_calibration` gives the sound to feed through
    :meth:`process`. Needs the double-talk path.

    ``high_band``: a second detector (:attr:`near_end_high`) compares the residual with the far
    end in :data:`~.double_talk.HIGH_BAND_HZ`, with its own line, confirmation and AEC3 veto; a
    frame is near-end if either says so, and echo alone only if neither is above its line. Soft
    starts are consonants over 2 kHz, where a reply's echo has least. Live (eight barge-in seeds)
    p95 564 → 304 and 384 ms (two runs) and the users' WER 0.203 → 0.180 and 0.181, no
    self-interruption either way, none
    over the 30-turn echo-room conversation (docs/echo.md, "Soft starts over 2 kHz").
    """

    def __init__(self, output: AudioOutput, *, canceller: EchoCanceller | None = None, residual_gate: bool = True,
                 double_talk: bool = True, hangover_ms: int = DOUBLE_TALK_HANGOVER_MS, residual_for_asr: bool = True,
                 echo_path_fit: bool = False, calibrate: bool = True, high_band: bool = True) -> None:
        super().__init__(output, ResidualSuppressor() if residual_gate else None)
        self.calibrate = calibrate and double_talk
        #: The start sound's schedule while it plays (None: not calibrating, or over).
        self.calibration: CalibrationSchedule | None = None
        #: How the calibration went: None (none ran), else whether its sound played and a fit on it
        #: replaced the filter's weights.
        self.calibration_result: dict[str, bool] | None = None
        #: Least-squares fits of the echo path run all along (``echo_path_fit``), not only on the start sound.
        self.fits_all_along = echo_path_fit
        self._calibration_gate: ResidualGate | None = None
        self._start_fit: StartSoundFit | None = None
        #: How much less of the start sound's echo its fit left than the filter did, in dB (None: no fit).
        self.start_fit_gain_db: float | None = None
        #: What the start sound's fit left of its echo, per detector's band (None: no fit installed).
        self.start_fit_leak_db: list[float] | None = None
        self.residual_for_asr = residual_for_asr
        self.canceller = canceller
        self.linear = TwoPathEchoFilter() if double_talk else None
        self.near_end = NearEndDetector() if double_talk else None
        #: The detector in :data:`~.double_talk.HIGH_BAND_HZ` (None: ``high_band=False``, or AEC3 alone).
        self.near_end_high = NearEndDetector() if double_talk and high_band else None
        #: Frames passed as near-end on the high band's word alone.
        self.high_band_frames = 0
        self.fit = self._new_fit() if self.linear is not None and echo_path_fit else None
        self.hangover_frames = hangover_ms // FRAME_MS
        self._hangover = 0
        self._far_db: deque[float] = deque(maxlen=GATE_WINDOW_MS // FRAME_MS)
        # the detectors' bands (the speech band's first), and the far end's level in each, last 400 ms
        self._bands_hz = [SPEECH_BAND_HZ, HIGH_BAND_HZ] if self.near_end_high is not None else [SPEECH_BAND_HZ]
        self._far_bands_db = [deque(maxlen=GATE_WINDOW_MS // FRAME_MS) for _ in self._bands_hz]
        #: The residual's noise floor in each detector's band: a frame not over it is no evidence.
        self.noise_floor = BandNoiseFloor(len(self._bands_hz))
        self._quiet_frames = 0  # far-end frames in a row under DOUBLE_TALK_PAUSED_DBFS
        self._since_pause: int | None = None  # frames since the last pause ended (None: none pending)
        self._onset_frames = 0  # frames left of the current far-end onset (DOUBLE_TALK_ONSET_MS)
        self.double_talk_frames = 0
        #: 10 ms frames in which the far end was audible, so far (AEC3 has heard that much of the room).
        self.far_heard_frames = 0
        self._rng = np.random.default_rng(0)

    async def setup(self, ctx: StageContext) -> None:
        if self.canceller is None:
            self.canceller = EchoCanceller()

    def start_calibration(self, sample_rate_hz: int) -> np.ndarray:
        """Calibrate from now on: returns the start sound at ``sample_rate_hz``, to be played while
        the microphone's frames go through :meth:`process`; once its echo is over
        (:class:`~.echo_calibration.CalibrationSchedule`) the echo path is fitted on all of it
        (:class:`~.echo_calibration.StartSoundFit`)."""
        if self.linear is None:
            raise ValueError("calibration fits the double-talk path's filter: EchoCancellation(double_talk=True)")
        self.calibration = CalibrationSchedule()
        self._calibration_gate = ResidualGate()
        self._start_fit = StartSoundFit(tail=self.linear.partitions * self.linear.block, block=self._step,
                                        sample_rate_hz=INPUT_SAMPLE_RATE_HZ)
        self.calibration_result = {"played": False, "fit_installed": False}
        return calibration_sound(sample_rate_hz)

    def _new_fit(self) -> EchoPathFit:
        assert self.linear is not None
        return EchoPathFit(tail=self.linear.partitions * self.linear.block, block=self._step, audible_dbfs=GATE_AUDIBLE_DBFS)

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        sound = self.start_calibration(self.output.sample_rate_hz) if self.calibrate else None
        if self.fit is not None:
            self.fit.background = True  # live: a fit (15-70 ms) must not hold up the microphone's frames
        try:
            async with anyio.create_task_group() as group:
                if sound is not None:
                    group.start_soon(self._play, sound)
                await super().run(ctx, inbox, outbox)
        finally:
            if self.fit is not None:
                self.fit.close()

    async def _play(self, sound: np.ndarray) -> None:
        """The start sound, in 20 ms blocks (a barge-in flush drops only what is queued)."""
        block = self.output.sample_rate_hz // 50
        for offset in range(0, len(sound), block):
            await self.output.write(sound[offset : offset + block])

    @property
    def latency_samples(self) -> int:
        return self.canceller.latency_samples if self.canceller is not None else 0

    def _cancel(self, capture: np.ndarray, reference: np.ndarray) -> np.ndarray:
        assert self.canceller is not None, "setup() first"
        cancelled = self.canceller.process(capture, reference)  # checks the lengths: whole 10 ms frames
        power = np.mean(np.square(reference.reshape(-1, self._step).astype(np.float64)), axis=1) / 32768.0**2
        self.far_heard_frames += int(np.count_nonzero(power >= 10 ** (GATE_AUDIBLE_DBFS / 10)))
        return cancelled

    def echo_unprotected(self) -> bool:
        """Until AEC3 has heard :data:`AEC3_LEARNING_MS` of the far end, unless the start sound
        played: AEC3 that has not heard the room lets a reply's echo through now and then."""
        played = self.calibration_result is not None and self.calibration_result["played"]
        return not played and self.far_heard_frames < AEC3_LEARNING_MS // FRAME_MS

    def _double_talk(self, capture: np.ndarray, reference: np.ndarray, cancelled: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Near-end frames of ``out`` (AEC3 and the suppressor) replaced by the linear residual.

        The linear filter and the detector learn only from frames AEC3 took
        :data:`ECHO_ALONE_REMOVED_DB` or more out of: echo alone (a user as loud as the
        echo keeps AEC3 from removing that much). Learning from every frame not judged
        near-end let the user's voice in before the filter had converged (the barge-in
        benchmark's replies play ~0.5 s before the user speaks): it never converged.
        """
        if self.linear is None or self.near_end is None:
            return out
        out = out.copy()
        for offset in range(0, len(capture), self._step):
            piece = slice(offset, offset + self._step)
            residual = self.linear.cancel(capture[piece], reference[piece])
            learnt = self._double_talk_frame(piece, capture, reference, cancelled, out, residual)
            if self.calibration is not None:
                self._calibration_step(piece, capture, reference, out)
            if self.fit is not None:
                taps = self.fit.add(reference[piece], capture[piece], residual, learnt)
                if taps is not None:  # a least-squares fit beat the filter: it starts from there
                    self.linear.set_taps(taps)
                    for detector in self._detectors():
                        detector.relearn(FIT_DETECTOR_FRAMES)
        return out

    def _calibration_step(self, piece: slice, capture: np.ndarray, reference: np.ndarray, out: np.ndarray) -> None:
        """One frame of the start sound or its echo: half duplex (AEC3 has not heard the room yet
        and passed the first 100-200 ms of the noise's echo at the microphone's level, which
        webrtcvad took for a voice: a turn before anyone spoke), so only a user louder than the
        echo gets through. Once its echo is over, the echo path is fitted on all of it
        (:class:`~.echo_calibration.StartSoundFit`) and the fit replaces the filter's weights if it does better."""
        assert self.calibration is not None and self.calibration_result is not None and self._calibration_gate is not None
        assert self._start_fit is not None
        muted_before = self._calibration_gate.muted_frames
        self._calibration_gate.process(capture[piece], reference[piece])
        echo = self._calibration_gate.muted_frames > muted_before
        if echo:
            out[piece] = muted(self._step, self._rng)
            if self.for_asr is not None:
                self.for_asr[piece] = out[piece]
        self._start_fit.add(reference[piece], capture[piece], echo)
        if self.calibration.step(ResidualGate._level_db(reference[piece]) >= GATE_AUDIBLE_DBFS):
            return
        self._calibration_gate = None
        played = self.calibration.played
        self.calibration_result["played"] = played
        self.calibration = None
        taps = self._start_fit.fit(self.linear.taps()) if played else None  # ~10 ms, once a session
        self.start_fit_gain_db = self._start_fit.gain_db
        leaks_db = self._start_fit.leak_db(self._bands_hz, GATE_WINDOW_MS // FRAME_MS) if taps is not None else None
        self._start_fit = None
        if taps is not None:
            self.linear.set_taps(taps)
        self.start_fit_leak_db = leaks_db
        installed = taps is not None or (self.fit is not None and self.fit.installs > 0)
        self.calibration_result["fit_installed"] = installed
        if self.near_end is not None and played:
            # the line is drawn afresh on the first reply's echo, not kept from the noise's (echo_sim,
            # 8 sessions, --long-every 3: the first two interruptions' median 141 ms against 200 ms
            # when kept, replies paused on their own echo 2 either way); from as many frames as
            # without the sound if no fit was installed (a user spoke over it): the filter is the NLMS's
            # and never under what the fit left of the sound's echo, for as long as that filter runs: a
            # reply's first frames understate a reverberant room's leak (echo_calibration.START_LEAK_MARGIN_DB)
            for band, detector in enumerate(self._detectors()):
                floor_db = None if leaks_db is None else leaks_db[band] + START_LEAK_MARGIN_DB
                detector.relearn(FIT_DETECTOR_FRAMES if installed else detector.min_frames, leak_floor_db=floor_db)

    def _double_talk_frame(self, piece: slice, capture: np.ndarray, reference: np.ndarray, cancelled: np.ndarray,
                           out: np.ndarray, residual: np.ndarray) -> bool:
        """One 10 ms frame of :meth:`_double_talk`, written into ``out`` (and :attr:`for_asr`);
        whether the filter learnt from it (echo alone)."""
        assert self.linear is not None and self.near_end is not None
        level_db = ResidualGate._level_db
        far_db = level_db(reference[piece])
        self._far_db.append(far_db)
        for history, far_band_db in zip(self._far_bands_db, band_levels_db(reference[piece], self._bands_hz)):
            history.append(far_band_db)
        self._track_onset(far_db)
        linear_bands_db = band_levels_db(residual, self._bands_hz)
        self.noise_floor.update(linear_bands_db)  # every frame: between replies the residual is the room's noise
        if max(self._far_db) < GATE_AUDIBLE_DBFS:  # nothing plays: AEC3's output is the microphone
            self._hangover = 0
            for detector in self._detectors():
                detector.reset()
            return False
        mic_db, aec_db = level_db(capture[piece]), level_db(cancelled[piece])
        # compared in the speech band, where the filter has learnt the room (SPEECH_BAND_HZ), and in
        # the band soft starts are loudest in (HIGH_BAND_HZ): the residual against the loudest far-end
        # frame of the last 400 ms. A residual louder than the microphone is the filter's own error
        # (the echo of a reply's first word has not arrived yet), not a voice; nor is one at its band's
        # noise floor (double_talk.NOISE_FLOOR_MARGIN_DB).
        mic_bands_db = band_levels_db(capture[piece], self._bands_hz)
        relative_db, *high_relative = [linear - max(history) for linear, history in zip(linear_bands_db, self._far_bands_db)]
        filter_error, *high_error = [linear > mic + 1.0 for linear, mic in zip(linear_bands_db, mic_bands_db)]
        quiet, *high_quiet = self.noise_floor.quiet(linear_bands_db)
        near = self._decide(self.near_end, relative_db, filter_error or quiet, mic_db, aec_db)
        if self.near_end_high is not None:
            if self._decide(self.near_end_high, high_relative[0], high_error[0] or high_quiet[0], mic_db, aec_db) and not near:
                near = True
                self.high_band_frames += 1
        if near:
            self._hangover = 0 if self._onset_frames else self.hangover_frames
        elif self._hangover:
            self._hangover -= 1
        else:
            echo_alone = not any(d.above for d in self._detectors()) and aec_db < mic_db - ECHO_ALONE_REMOVED_DB
            learnt = mic_db > DOUBLE_TALK_FLOOR_DBFS and echo_alone
            if learnt:
                self.linear.adapt(residual)  # echo alone: learn the echo path, never the user's voice
                self.near_end.learn(relative_db, aec_db)
                if self.near_end_high is not None:
                    self.near_end_high.learn(high_relative[0], aec_db)
            if self.near_end.threshold_db is not None:
                if self.residual_for_asr and not filter_error:
                    if self.for_asr is None:
                        self.for_asr = out.copy()
                    self.for_asr[piece] = np.clip(np.round(residual), -32768, 32767).astype(np.int16)
                out[piece] = muted(self._step, self._rng)  # converged, not near-end: what AEC3 let through is echo
            return learnt
        out[piece] = np.clip(np.round(residual), -32768, 32767).astype(np.int16)
        if self.for_asr is not None:
            self.for_asr[piece] = out[piece]
        self.double_talk_frames += 1
        return False

    def _detectors(self) -> list[NearEndDetector]:
        return [d for d in (self.near_end, self.near_end_high) if d is not None]

    @staticmethod
    def _decide(detector: NearEndDetector, relative_db: float, no_evidence: bool, mic_db: float, aec_db: float) -> bool:
        """``no_evidence``: the frame says nothing of a voice (the filter's own error, or the noise floor)."""
        if no_evidence or mic_db <= DOUBLE_TALK_FLOOR_DBFS:
            detector.reset()
            return False
        return detector.is_near_end(relative_db, aec_db)

    def _track_onset(self, far_db: float) -> None:
        """Counts down :data:`DOUBLE_TALK_ONSET_MS` from each far-end onset (one 10 ms frame)."""
        self._quiet_frames = self._quiet_frames + 1 if far_db < DOUBLE_TALK_PAUSED_DBFS else 0
        if self._quiet_frames >= DOUBLE_TALK_PAUSE_MS // FRAME_MS:
            self._since_pause = 0
        elif self._since_pause is not None:
            self._since_pause += 1
        ramping = self._since_pause is not None and self._since_pause <= DOUBLE_TALK_RAMP_MS // FRAME_MS
        if far_db > DOUBLE_TALK_ONSET_DBFS and ramping:
            self._onset_frames = DOUBLE_TALK_ONSET_MS // FRAME_MS
            self._since_pause = None
        elif self._onset_frames:
            self._onset_frames -= 1


#: The fallback gate's coupling until it has learnt the room's: an echo up to 10 dB louder than
#: what played (a speaker next to the microphone) is muted from the first reply. With 0 dB (the
#: gate's own default) a +10 dB room let the first reply's echo through: with barge-in at 80 ms
#: voiced, 21 of 24 simulated sessions in three rooms paused their first reply on it, none with
#: +10 dB; quieter rooms learnt theirs before the first user spoke (the same outcomes at 0 and
#: -20 dB; ``benchmarks.echo_sim`` sessions, docs/echo.md, "The fallback's threshold").
FALLBACK_PRIOR_COUPLING_DB = 10.0


class EchoGate(_ReferenceStage):
    """The fallback without AEC3: only the :class:`ResidualGate` on the raw microphone.

    So the user interrupts by speaking over the echo, and the Conversation also asks for
    ``min_interruption_while_speaking_ms`` of voiced audio then
    (``Conversation.echo_unprotected``), against echo that gets through.
    """

    def __init__(self, output: AudioOutput, gate: ResidualGate | None = None) -> None:
        super().__init__(output, gate or ResidualGate(prior_coupling_db=FALLBACK_PRIOR_COUPLING_DB))

    def echo_unprotected(self) -> bool:
        return True

    @property
    def muted_frames(self) -> int:
        assert self.gate is not None
        return self.gate.muted_frames


_logged_missing = False


def echo_stage(output: AudioOutput, *, enabled: bool = True, echo_path_fit: bool = False, calibrate: bool = True) -> Stage:
    """The stage that keeps the assistant's voice out of the input: AEC3 if the package is
    installed and ``enabled`` (its start sound unless not ``calibrate``; ``echo_path_fit``, opt-in),
    else the :class:`EchoGate` fallback (logged once, with why)."""
    global _logged_missing
    if enabled:
        try:
            load_backend()
            return EchoCancellation(output, echo_path_fit=echo_path_fit, calibrate=calibrate)
        except EchoCancellerUnavailable as error:
            if not _logged_missing:
                log.warning("%s; until then barge-in over the assistant's voice uses the echo gate fallback "
                            "(speak over it, and longer: see docs/echo.md)", error)
                _logged_missing = True
    else:
        log.info("echo cancellation off (--no-aec): the echo gate fallback keeps the assistant's voice out")
    return EchoGate(output)


def stage_summary(stage: Any) -> dict[str, Any]:
    """What ran: ``aec`` (AEC3), ``gate`` (the fallback) or ``none``."""
    if isinstance(stage, EchoCancellation):
        return {"mode": "aec", "package": AEC_PACKAGE,
                "residual_gate_muted_frames": stage.gate.muted_frames if stage.gate is not None else None,
                "double_talk_frames": stage.double_talk_frames if stage.linear is not None else None,
                "double_talk_vetoed_frames": stage.near_end.vetoed_frames if stage.near_end is not None else None,
                "double_talk_high_band_frames": stage.high_band_frames if stage.near_end_high is not None else None,
                "double_talk_high_band_vetoed_frames": stage.near_end_high.vetoed_frames if stage.near_end_high is not None else None,
                "double_talk_filter_copies": getattr(stage.linear, "copies", None),
                "echo_path_fits": stage.fit.fits if stage.fit is not None else None,
                "echo_path_fits_installed": stage.fit.installs if stage.fit is not None else None,
                "calibration": stage.calibration_result,
                "start_fit_gain_db": None if stage.start_fit_gain_db is None else round(stage.start_fit_gain_db, 1),
                "start_fit_leak_db": None if stage.start_fit_leak_db is None else [round(v, 1) for v in stage.start_fit_leak_db]}
    if isinstance(stage, EchoGate):
        return {"mode": "gate", "muted_frames": stage.muted_frames}
    return {"mode": "none"}
