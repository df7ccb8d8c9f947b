"""Where user audio comes from: memory or WAV files (see :mod:`.device` for the microphone).

A source plays user *turns*: each turn's audio, then silence (what a
microphone hears while the user listens) until the reply has been played,
then the next turn. Paced in real time (20 ms frames at wall-clock pace, like
a microphone) or as fast as the pipeline takes it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import numpy as np

from ..audio import INPUT_SAMPLE_RATE_HZ, check_samples, read_wav, resample
from ..frames import AudioFrame
from ..stage import Inbox, Outbox, Stage, StageContext


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
    ) -> None:
        """``trailing_silence_ms`` follows each turn (it must exceed the VAD's silence duration);
        with ``wait_for_reply`` the source then waits until the conversation is idle and adds
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
        #: Stream position (in input samples) where each turn's audio starts.
        self.turn_start_samples: list[int] = []

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        rate = INPUT_SAMPLE_RATE_HZ
        position = 0
        started = anyio.current_time()
        silence = np.zeros(self.frame_samples, dtype=np.int16)

        async def emit(samples: np.ndarray) -> None:
            nonlocal position
            for offset in range(0, len(samples), self.frame_samples):
                frame = samples[offset : offset + self.frame_samples]
                if self.realtime:  # a frame is available once its last sample has been "spoken"
                    await anyio.sleep_until(started + (position + len(frame)) / rate)
                await outbox.send(AudioFrame(frame, rate, position, time.monotonic()))
                position += len(frame)

        async def wait_for_reply() -> None:
            conversation = ctx.conversation
            heard_up_to = position  # the VAD must have heard the turn before "idle" means anything
            while conversation.audio_processed_samples < heard_up_to or not conversation.idle:
                if self.realtime:
                    await emit(silence)
                else:
                    await anyio.sleep(0.01)

        await emit(np.zeros(self.lead_silence_ms * rate // 1000, dtype=np.int16))
        for index, turn in enumerate(self.turns):
            self.turn_start_samples.append(position)
            await emit(turn)
            await emit(np.zeros(self.trailing_silence_ms * rate // 1000, dtype=np.int16))
            if self.wait_for_reply:
                await wait_for_reply()
                if index + 1 < len(self.turns):
                    await emit(np.zeros(self.gap_ms * rate // 1000, dtype=np.int16))


class WavFileSource(MemorySource):
    """User turns from WAV files (16-bit PCM mono, any rate), one file per turn."""

    def __init__(self, paths: Sequence[str | Path], **options: object) -> None:
        if not paths:
            raise ValueError("a WAV source needs at least one file")
        loaded = [read_wav(path) for path in paths]
        turns = [resample(samples, rate, INPUT_SAMPLE_RATE_HZ) for samples, rate in loaded]
        super().__init__(turns, INPUT_SAMPLE_RATE_HZ, **options)  # type: ignore[arg-type]
        self.paths = [Path(path) for path in paths]
