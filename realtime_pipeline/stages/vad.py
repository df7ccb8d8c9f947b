"""Voice activity detection on webrtcvad, with the Realtime API's server-VAD knobs."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from ..audio import AudioFormatError
from ..frames import AudioFrame, SpeechPaused, SpeechResumed, SpeechStarted, SpeechStopped
from ..stage import Inbox, Outbox, Stage, StageContext
from ..tracing import TURN_COMMITTED, USER_SPEECH_END, VAD_SPEECH_STOPPED

VAD_RATES_HZ = (8000, 16000, 32000, 48000)


@dataclass(frozen=True)
class VADSettings:
    """Server-VAD settings (names as in the OpenAI Realtime API where it has them).

    ``threshold`` is the share of voiced 20 ms frames, within the last
    ``min_speech_ms``, needed to call it speech (webrtcvad itself only gives a
    voiced/unvoiced decision per frame, tuned by ``aggressiveness`` 0–3).
    ``pause_ms`` is when the turn *might* be over: the ASR starts the final
    transcription then, so it is ready when ``silence_duration_ms`` commits it.
    """

    aggressiveness: int = 2
    threshold: float = 0.6
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    min_speech_ms: int = 100
    pause_ms: int = 100
    frame_ms: int = 20

    def __post_init__(self) -> None:
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0..3, got {self.aggressiveness}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.frame_ms not in (10, 20, 30):
            raise ValueError(f"frame_ms must be 10, 20 or 30 (webrtcvad), got {self.frame_ms}")
        for name in ("prefix_padding_ms", "silence_duration_ms", "min_speech_ms", "pause_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.pause_ms > self.silence_duration_ms:
            raise ValueError("pause_ms must not exceed silence_duration_ms")


class WebRTCVAD(Stage):
    """Forwards the audio and adds SpeechStarted / SpeechPaused / SpeechStopped.

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

    def is_voiced(self, frame: np.ndarray, sample_rate_hz: int) -> bool:
        return self._vad.is_speech(frame.tobytes(), sample_rate_hz)

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        s = self.settings
        conversation, tracer = ctx.conversation, ctx.tracer
        window_frames = max(1, s.min_speech_ms // s.frame_ms)
        recent: deque[tuple[bool, int]] = deque(maxlen=window_frames)  # (voiced, frame start ms)
        pending = np.zeros(0, dtype=np.int16)
        pending_start = 0
        rate = 0
        in_speech = False
        turn_id = 0
        last_voiced_end_ms = 0
        last_voiced_at_s = 0.0
        silence_ms = 0
        paused = False
        voiced_ms = 0  # voiced audio in the current turn

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
                voiced = self.is_voiced(chunk, rate)
                recent.append((voiced, start_ms))
                if not in_speech:
                    voiced_count = sum(v for v, _ in recent)
                    if voiced and len(recent) == window_frames and voiced_count / window_frames >= s.threshold:
                        first_voiced_ms = next(ms for v, ms in recent if v)
                        in_speech, paused, silence_ms = True, False, 0
                        last_voiced_end_ms, last_voiced_at_s = end_ms, frame.captured_at_s
                        turn_id = conversation.new_turn_id()
                        event = SpeechStarted(turn_id, max(0, first_voiced_ms - s.prefix_padding_ms))
                        conversation.user_speech_started(event)
                        voiced_ms = voiced_count * s.frame_ms
                        conversation.user_speech_progress(turn_id, voiced_ms)
                        await outbox.send(event)
                    continue
                if voiced:
                    last_voiced_end_ms, last_voiced_at_s = end_ms, frame.captured_at_s
                    voiced_ms += s.frame_ms
                    conversation.user_speech_progress(turn_id, voiced_ms)
                    if paused:
                        conversation.user_speech_resumed(turn_id)
                        await outbox.send(SpeechResumed(turn_id))
                    silence_ms, paused = 0, False
                    continue
                silence_ms += s.frame_ms
                if not paused and silence_ms >= s.pause_ms:
                    paused = True
                    await outbox.send(SpeechPaused(turn_id, last_voiced_end_ms))
                if silence_ms >= s.silence_duration_ms:
                    in_speech = False
                    recent.clear()
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
            tracer.stamp(turn_id, USER_SPEECH_END, last_voiced_at_s)
            tracer.stamp(turn_id, TURN_COMMITTED)
            event = SpeechStopped(turn_id, last_voiced_end_ms)
            conversation.user_speech_stopped(event)
            await outbox.send(event)
