"""Voice activity detection on webrtcvad, with the Realtime API's server-VAD knobs.

The VAD finds where speech starts and pauses; *whether a pause ends the turn*
is :class:`~realtime_pipeline.turn_taking.EndOfTurn`'s decision, which this
stage drives on its audio clock and feeds with the end-of-turn models' scores
(:class:`~realtime_pipeline.turn_taking.TurnScore` events).

Speech-end precision: webrtcvad keeps calling frames voiced for its hangover
(``kOverHangMax`` frames once more than six were voiced: 80–100 ms at 20 ms
frames in modes 2–3) and through the decaying tail of the last word. A voiced
frame therefore counts as speech only if it is also loud for this turn
(:class:`SpeechLevel`), so a pause is timed from the real end of the words.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..audio import AudioFormatError
from ..frames import AudioFrame, SpeechPaused, SpeechResumed, SpeechStarted, SpeechStopped
from ..stage import Inbox, Outbox, Stage, StageContext
from ..tracing import TURN_COMMITTED, USER_SPEECH_END, VAD_SPEECH_STOPPED
from ..turn_taking import Decision, EndOfTurn, TurnScore, TurnTakingSettings

VAD_RATES_HZ = (8000, 16000, 32000, 48000)
#: :meth:`SpeechLevel.level_db` of a full-scale int16 square wave: dBFS = level_db - this.
FULL_SCALE_DB = 20.0 * float(np.log10(32768.0))


@dataclass(frozen=True)
class VADSettings:
    """Server-VAD settings (names as in the OpenAI Realtime API where it has them).

    ``threshold`` is the share of voiced 20 ms frames, within the last
    ``min_speech_ms``, needed to call it speech (webrtcvad itself only gives a
    voiced/unvoiced decision per frame, tuned by ``aggressiveness`` 0–3).
    ``pause_ms`` is when the turn *might* be over: the ASR starts the final
    transcription and the end-of-turn models score the pause then.
    ``min_level_dbfs``: quieter 20 ms frames are never voiced. webrtcvad ignores the level:
    after digital silence it called the echo canceller's -90 dBFS muted frames voiced, four
    in a row three times in a 30-turn echo-room recording (each one a false start over a
    playing reply). Speech at -70 dBFS is 40 dB under a normal microphone level.
    ``turn_taking`` decides when a pause ends the turn (the semantic detector by
    default); ``silence_duration_ms``, if given, selects the fixed silence
    instead (``TurnTakingSettings.fixed_silence``), as the Realtime API's
    ``server_vad`` means it.
    """

    aggressiveness: int = 2
    threshold: float = 0.6
    prefix_padding_ms: int = 300
    silence_duration_ms: int | None = None
    min_speech_ms: int = 100
    pause_ms: int = 100
    frame_ms: int = 20
    min_level_dbfs: float = -70.0
    turn_taking: TurnTakingSettings = field(default_factory=TurnTakingSettings)

    def __post_init__(self) -> None:
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0..3, got {self.aggressiveness}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.frame_ms not in (10, 20, 30):
            raise ValueError(f"frame_ms must be 10, 20 or 30 (webrtcvad), got {self.frame_ms}")
        if not -120.0 <= self.min_level_dbfs <= 0.0:
            raise ValueError(f"min_level_dbfs must be between -120 and 0, got {self.min_level_dbfs}")
        for name in ("prefix_padding_ms", "min_speech_ms", "pause_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.silence_duration_ms is not None:
            if self.silence_duration_ms < 0:
                raise ValueError("silence_duration_ms must not be negative")
            object.__setattr__(self, "turn_taking", TurnTakingSettings.fixed_silence(self.silence_duration_ms))
        earliest = self.turn_taking.silence_ms if self.turn_taking.mode == "silence" else self.turn_taking.min_silence_ms
        if self.pause_ms > earliest:
            raise ValueError(f"pause_ms ({self.pause_ms}) must not exceed the shortest end-of-turn silence ({earliest})")


class SpeechLevel:
    """Which voiced frames are loud enough to be words, for the turn at hand.

    A frame is speech if its level is within ``range_db`` of the turn's loud
    frames (the 90th percentile of the last 5 s of speech) and ``floor_margin_db``
    above the background (the 20th percentile of the last 2 s outside speech).
    Measured on the 30 bundled recordings against the energy ground truth of the
    benchmark: it moves the VAD's speech end from p50 +110 ms to about +20 ms
    (``vad_speech_end_error_ms`` in docs/latency.md).
    """

    def __init__(self, *, range_db: float = 30.0, floor_margin_db: float = 10.0) -> None:
        self.range_db = range_db
        self.floor_margin_db = floor_margin_db
        self._speech: deque[float] = deque(maxlen=250)
        self._background: deque[float] = deque(maxlen=100)

    @staticmethod
    def level_db(samples: np.ndarray) -> float:
        return float(10.0 * np.log10(np.mean(np.square(samples.astype(np.float64))) + 1e-9))

    def background(self, level_db: float) -> None:
        self._background.append(level_db)

    def new_turn(self) -> None:
        self._speech.clear()

    def speech(self, level_db: float) -> None:
        self._speech.append(level_db)

    def is_loud(self, level_db: float) -> bool:
        floor = float(np.percentile(self._background, 20)) if self._background else -120.0
        loud = float(np.percentile(self._speech, 90)) if self._speech else level_db
        return level_db >= max(floor + self.floor_margin_db, loud - self.range_db)


class WebRTCVAD(Stage):
    """Forwards the audio and adds SpeechStarted / SpeechPaused / SpeechResumed / SpeechStopped.

    Also tells the conversation at once when speech starts and stops, how much
    voiced audio the turn has so far (the barge-in threshold) and how far the
    input has been processed (the false-interruption clock): those direct calls
    are the barge-in path, they do not wait in any queue.
    """

    name = "vad"

    def __init__(self, settings: VADSettings | None = None) -> None:
        import webrtcvad

        self.settings = settings or VADSettings()
        self._vad = webrtcvad.Vad(self.settings.aggressiveness)
        #: The end-of-turn state machine (its settings can be swapped between turns).
        self.end_of_turn = EndOfTurn(self.settings.turn_taking)

    def is_voiced(self, frame: np.ndarray, sample_rate_hz: int) -> bool:
        return self._vad.is_speech(frame.tobytes(), sample_rate_hz)

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        s = self.settings
        conversation, tracer = ctx.conversation, ctx.tracer
        end_of_turn = self.end_of_turn

        def on_event(event: object) -> None:
            if isinstance(event, TurnScore):
                end_of_turn.add_score(event)

        remove_listener = conversation.add_listener(on_event)
        window_frames = max(1, s.min_speech_ms // s.frame_ms)
        recent: deque[tuple[bool, int]] = deque(maxlen=window_frames)  # (voiced, frame start ms)
        level = SpeechLevel()
        pending = np.zeros(0, dtype=np.int16)
        pending_start = 0
        rate = 0
        in_speech = False
        turn_id = 0
        last_voiced_end_ms = 0
        last_voiced_at_s = 0.0
        paused = False
        voiced_ms = 0  # voiced audio in the current turn

        try:
            async for frame in inbox:
                await outbox.send(frame)
                if not isinstance(frame, AudioFrame):
                    continue
                if frame.sample_rate_hz not in VAD_RATES_HZ:
                    raise AudioFormatError(
                        f"VAD input at {frame.sample_rate_hz} Hz; webrtcvad takes {VAD_RATES_HZ} (resample first)"
                    )
                if frame.samples.dtype != np.int16:
                    raise AudioFormatError(f"VAD input is {frame.samples.dtype}; it takes int16 PCM")
                if rate and frame.sample_rate_hz != rate:
                    raise AudioFormatError(f"VAD input changed rate from {rate} to {frame.sample_rate_hz} Hz")
                rate = frame.sample_rate_hz
                if pending.size == 0:
                    pending_start = frame.start_sample
                pending = np.concatenate([pending, frame.samples]) if pending.size else frame.samples
                step = rate * s.frame_ms // 1000
                while pending.size >= step:
                    chunk, pending = pending[:step], pending[step:]
                    start_ms = pending_start * 1000 // rate
                    end_ms = start_ms + s.frame_ms
                    pending_start += step
                    level_db = level.level_db(chunk)
                    # webrtcvad sees every frame (its noise model adapts on them; skipping the quiet
                    # ones cut off 7 of the 26 pause-corpus files against 3), then the floor applies
                    voiced = self.is_voiced(chunk, rate) and level_db - FULL_SCALE_DB >= s.min_level_dbfs
                    recent.append((voiced, start_ms))
                    if not in_speech:
                        level.background(level_db)
                        voiced_count = sum(v for v, _ in recent)
                        if voiced and len(recent) == window_frames and voiced_count / window_frames >= s.threshold:
                            first_voiced_ms = next(ms for v, ms in recent if v)
                            in_speech, paused = True, False
                            last_voiced_end_ms, last_voiced_at_s = end_ms, frame.captured_at_s
                            level.new_turn()
                            level.speech(level_db)
                            turn_id = conversation.new_turn_id()
                            end_of_turn.speech_started(turn_id, voiced_count * s.frame_ms)
                            event = SpeechStarted(turn_id, max(0, first_voiced_ms - s.prefix_padding_ms))
                            conversation.user_speech_started(event)
                            voiced_ms = voiced_count * s.frame_ms
                            conversation.user_speech_progress(turn_id, voiced_ms)
                            await outbox.send(event)
                        continue
                    if voiced:
                        voiced_ms += s.frame_ms
                        conversation.user_speech_progress(turn_id, voiced_ms)
                    if voiced and level.is_loud(level_db):
                        level.speech(level_db)
                        last_voiced_end_ms, last_voiced_at_s = end_ms, frame.captured_at_s
                        end_of_turn.voiced(s.frame_ms)
                        if paused:
                            conversation.user_speech_resumed(turn_id)
                            await outbox.send(SpeechResumed(turn_id))
                        paused = False
                        continue
                    end_of_turn.silence(last_voiced_end_ms, end_ms)
                    if not paused and end_of_turn.silence_ms >= s.pause_ms and end_of_turn.scorable:
                        paused = True
                        await outbox.send(SpeechPaused(turn_id, last_voiced_end_ms))
                    if end_of_turn.decide() is Decision.COMMIT:
                        in_speech = False
                        recent.clear()
                        end_of_turn.committed()
                        now = tracer.now()
                        tracer.stamp(turn_id, USER_SPEECH_END, last_voiced_at_s)
                        tracer.stamp(turn_id, VAD_SPEECH_STOPPED, now)
                        tracer.stamp(turn_id, TURN_COMMITTED, now)
                        event = SpeechStopped(turn_id, last_voiced_end_ms)
                        conversation.user_speech_stopped(event)
                        await outbox.send(event)
                conversation.audio_processed_samples = pending_start + pending.size
                conversation.advance_audio(pending_start * 1000 // rate)

            if in_speech:  # the input ended mid-turn: close the turn so it gets answered
                end_of_turn.committed()
                tracer.stamp(turn_id, USER_SPEECH_END, last_voiced_at_s)
                tracer.stamp(turn_id, TURN_COMMITTED)
                event = SpeechStopped(turn_id, last_voiced_end_ms)
                conversation.user_speech_stopped(event)
                await outbox.send(event)
        finally:
            remove_listener()
