"""Where user audio comes from: memory or WAV files (see :mod:`.device` for the microphone).

A source plays user *turns*: each turn's audio, then silence (what a
microphone hears while the user listens) until the reply has been played,
then the next turn. Paced in real time (20 ms frames at wall-clock pace, like
a microphone) or as fast as the pipeline takes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
import numpy as np

from ..audio import INPUT_SAMPLE_RATE_HZ, check_samples, read_wav, resample
from ..frames import AudioFrame
from ..stage import Inbox, Outbox, Stage, StageContext


class PacedEmitter:
    """Sends audio downstream as 20 ms frames, keeping the stream position.

    Paced (``realtime=True``) a frame goes out once its last sample has been
    "spoken", like a microphone; otherwise as fast as the pipeline takes it.
    Sources and scripted users share it.
    """

    def __init__(self, outbox: Outbox, *, realtime: bool = True, frame_ms: int = 20) -> None:
        self.outbox = outbox
        self.realtime = realtime
        self.rate_hz = INPUT_SAMPLE_RATE_HZ
        self.frame_samples = self.rate_hz * frame_ms // 1000
        self.position = 0
        self.started_at = anyio.current_time()  # anyio's clock: the pacing reference
        self._silence = np.zeros(self.frame_samples, dtype=np.int16)

    async def emit(self, samples: np.ndarray) -> None:
        for offset in range(0, len(samples), self.frame_samples):
            frame = samples[offset : offset + self.frame_samples]
            if self.realtime:
                await anyio.sleep_until(self.started_at + (self.position + len(frame)) / self.rate_hz)
            await self.outbox.send(AudioFrame(frame, self.rate_hz, self.position, time.monotonic()))
            self.position += len(frame)

    async def silence(self, ms: int) -> None:
        await self.emit(np.zeros(ms * self.rate_hz // 1000, dtype=np.int16))

    async def silence_until(self, condition: Callable[[], bool], *, limit_s: float | None = None) -> bool:
        """Emit silence frame by frame until ``condition()``; False if ``limit_s`` ran out first."""
        deadline = None if limit_s is None else time.monotonic() + limit_s
        while not condition():
            if deadline is not None and time.monotonic() > deadline:
                return False
            await self.emit(self._silence)
        return True


class MemorySource(Stage):
    name = "source"

    def __init__(
        self,
        turns: Sequence[np.ndarray],
        sample_rate_hz: int,
        *,
        realtime: bool = True,
        wait_for_reply: bool = True,
        frame_ms: int = 20,
        lead_silence_ms: int = 300,
        trailing_silence_ms: int = 1000,
        gap_ms: int = 300,
        max_wait_s: float | None = None,
    ) -> None:
        """``trailing_silence_ms`` follows each turn (it must exceed the VAD's silence duration);
        with ``wait_for_reply`` the source then waits until the conversation is idle (at most
        ``max_wait_s`` in real time: an assistant that hears itself never is) and adds
        ``gap_ms`` before the next turn."""
        if not turns:
            raise ValueError("a source needs at least one turn of audio")
        if sample_rate_hz <= 0:
            raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
        self.turns = [
            resample(check_samples(turn, what=f"turn {index + 1}"), sample_rate_hz, INPUT_SAMPLE_RATE_HZ)
            for index, turn in enumerate(turns)
        ]
        self.realtime = realtime
        self.wait_for_reply = wait_for_reply
        self.frame_samples = INPUT_SAMPLE_RATE_HZ * frame_ms // 1000
        self.lead_silence_ms = lead_silence_ms
        self.trailing_silence_ms = trailing_silence_ms
        self.gap_ms = gap_ms
        self.max_wait_s = max_wait_s
        #: Turns after which the conversation was not idle within ``max_wait_s``.
        self.wait_timeouts = 0
        #: Stream position (in input samples) where each turn's audio starts.
        self.turn_start_samples: list[int] = []

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        conversation = ctx.conversation
        mic = PacedEmitter(outbox, realtime=self.realtime, frame_ms=self.frame_samples * 1000 // INPUT_SAMPLE_RATE_HZ)

        def replied(heard_up_to: int) -> bool:
            # the VAD must have heard the turn before "idle" means anything
            return conversation.audio_processed_samples >= heard_up_to and conversation.idle

        await mic.silence(self.lead_silence_ms)
        for index, turn in enumerate(self.turns):
            self.turn_start_samples.append(mic.position)
            await mic.emit(turn)
            await mic.silence(self.trailing_silence_ms)
            if self.wait_for_reply:
                heard_up_to = mic.position
                if self.realtime:  # a microphone hears silence while the reply plays
                    if not await mic.silence_until(lambda: replied(heard_up_to), limit_s=self.max_wait_s):
                        self.wait_timeouts += 1
                else:
                    while not replied(heard_up_to):
                        if conversation.user_speaking:  # the end of turn is still open: it needs the silence
                            await mic.emit(np.zeros(mic.frame_samples, dtype=np.int16))
                            await anyio.sleep(mic.frame_samples / mic.rate_hz)  # at real pace: the end-of-turn scores can come
                        else:
                            await anyio.sleep(0.01)
                if index + 1 < len(self.turns):
                    await mic.silence(self.gap_ms)


class WavFileSource(MemorySource):
    """User turns from WAV files (16-bit PCM mono, any rate), one file per turn."""

    def __init__(self, paths: Sequence[str | Path], **options: object) -> None:
        if not paths:
            raise ValueError("a WAV source needs at least one file")
        loaded = [read_wav(path) for path in paths]
        turns = [resample(samples, rate, INPUT_SAMPLE_RATE_HZ) for samples, rate in loaded]
        super().__init__(turns, INPUT_SAMPLE_RATE_HZ, **options)  # type: ignore[arg-type]
        self.paths = [Path(path) for path in paths]
