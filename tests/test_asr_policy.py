"""The streaming ASR's scheduling, with a scripted VAD and a simulated slow Whisper.

Partials are skipped (never queued) when passes are slower than speech, the
final is never skipped, an early final started at SpeechPaused is announced
as a preview and reused at SpeechStopped, and SpeechResumed voids it.
"""

from __future__ import annotations

import threading
import time

import anyio
import numpy as np
import pytest

from realtime_pipeline import (
    AudioFrame,
    Pipeline,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
    Stage,
    TranscriptFinal,
    TranscriptPartial,
    TranscriptPreview,
    WhisperASR,
)

RATE = 16000


class SlowWhisper(WhisperASR):
    """WhisperASR with the model replaced by a fixed-cost fake pass that reports its clip length."""

    def __init__(self, pass_s: float, **options):
        super().__init__(**options)
        self.pass_s = pass_s
        self.running = 0
        self.max_running = 0
        self.passes: list[int] = []
        self._lock = threading.Lock()

    async def setup(self, ctx):
        pass

    def transcribe(self, samples: np.ndarray) -> str:
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        time.sleep(self.pass_s)
        with self._lock:
            self.running -= 1
            self.passes.append(len(samples))
        return f"clip of {len(samples) * 1000 // RATE} ms"


class ScriptedVAD(Stage):
    """Plays a script of ("audio", ms) and VAD events, pacing audio in real time."""

    name = "scripted"

    def __init__(self, script):
        self.script = script

    async def run(self, ctx, inbox, outbox):
        position = 0
        frame = RATE // 50
        for step in self.script:
            if step[0] == "audio":
                for _ in range(step[1] // 20):
                    await anyio.sleep(0.02)
                    await outbox.send(AudioFrame(np.full(frame, 100, dtype=np.int16), RATE, position))
                    position += frame
            elif step[0] == "wait":
                await anyio.sleep(step[1])
            else:
                await outbox.send(step[1])


class Frames(Stage):
    name = "frames"

    def __init__(self):
        self.frames = []

    async def run(self, ctx, inbox, outbox):
        async for frame in inbox:
            self.frames.append(frame)


async def run_script(asr: SlowWhisper, script) -> list:
    sink = Frames()
    await Pipeline([ScriptedVAD(script), asr, sink]).run()
    return sink.frames


@pytest.mark.anyio
async def test_partials_are_skipped_not_queued_when_whisper_is_slower_than_speech():
    asr = SlowWhisper(pass_s=0.5, partial_interval_ms=200, tail_ms=0)
    script = [("event", SpeechStarted(1, 0)), ("audio", 3000), ("event", SpeechPaused(1, 3000)),
              ("audio", 300), ("event", SpeechStopped(1, 3000))]
    frames = await run_script(asr, script)

    partials = [f for f in frames if isinstance(f, TranscriptPartial)]
    finals = [f for f in frames if isinstance(f, TranscriptFinal)]
    assert asr.max_running == 1, "passes never overlap"
    assert asr.stats.partials_skipped > 0
    # 3 s of speech, a partial wanted every 0.2 s, but a pass takes 0.5 s: at most one pass per 0.5 s ran
    assert 1 <= asr.stats.partials_run <= 3000 // 500 + 1
    assert len(partials) == asr.stats.partials_run
    # the final is never skipped and covers the whole turn
    assert len(finals) == 1 and finals[0].text == "clip of 3000 ms"


@pytest.mark.anyio
async def test_early_final_is_previewed_and_reused_when_the_turn_ends_as_paused():
    asr = SlowWhisper(pass_s=0.1, partial_interval_ms=None, tail_ms=0)
    script = [("event", SpeechStarted(1, 0)), ("audio", 1000), ("event", SpeechPaused(1, 1000)),
              ("audio", 800), ("event", SpeechStopped(1, 1000))]
    frames = await run_script(asr, script)

    kinds = [type(f) for f in frames]
    previews = [f for f in frames if isinstance(f, TranscriptPreview)]
    finals = [f for f in frames if isinstance(f, TranscriptFinal)]
    assert len(previews) == 1 and previews[0].text == "clip of 1000 ms"
    assert kinds.index(TranscriptPreview) < kinds.index(SpeechStopped), "preview came during the silence"
    assert len(finals) == 1 and finals[0].text == previews[0].text
    assert asr.stats.finals_run == 1 and asr.stats.early_finals_used == 1  # one pass served both


@pytest.mark.anyio
async def test_resumed_speech_voids_the_early_final_and_the_turn_goes_on():
    asr = SlowWhisper(pass_s=0.3, partial_interval_ms=None, tail_ms=0)
    script = [
        ("event", SpeechStarted(1, 0)), ("audio", 1000),
        ("event", SpeechPaused(1, 1000)), ("audio", 100),
        ("event", SpeechResumed(1)), ("audio", 1000),
        ("event", SpeechPaused(1, 2100)), ("audio", 500),
        ("event", SpeechStopped(1, 2100)),
    ]
    frames = await run_script(asr, script)

    previews = [f for f in frames if isinstance(f, TranscriptPreview)]
    finals = [f for f in frames if isinstance(f, TranscriptFinal)]
    assert [p.audio_end_ms for p in previews] == [2100], "the voided early final was never announced"
    assert len(finals) == 1 and finals[0].text == "clip of 2100 ms"
    assert asr.stats.early_finals_wasted == 1 and asr.stats.early_finals_used == 1


@pytest.mark.anyio
async def test_a_turn_that_ends_without_a_pause_still_gets_its_final():
    asr = SlowWhisper(pass_s=0.05, partial_interval_ms=None, tail_ms=0)
    script = [("event", SpeechStarted(1, 0)), ("audio", 600), ("event", SpeechStopped(1, 600))]
    frames = await run_script(asr, script)
    finals = [f for f in frames if isinstance(f, TranscriptFinal)]
    assert [f.text for f in finals] == ["clip of 600 ms"]
    assert not any(isinstance(f, TranscriptPreview) for f in frames)


class LevelWhisper(SlowWhisper):
    """Reports the loudest sample of what it was given."""

    def transcribe(self, samples: np.ndarray) -> str:
        return f"peak {int(np.abs(samples).max()) if samples.size else 0}"


@pytest.mark.anyio
async def test_the_asr_transcribes_what_the_echo_stage_meant_for_it():
    # the echo stage mutes the VAD's signal until it is sure the user talks over a reply, and
    # gives the ASR the linear residual there (AudioFrame.asr_samples)
    class Muted(Stage):
        name = "scripted"

        async def run(self, ctx, inbox, outbox):
            await outbox.send(SpeechStarted(1, 0))
            for index in range(25):
                gated = np.zeros(RATE // 50, dtype=np.int16)
                await outbox.send(AudioFrame(gated, RATE, index * RATE // 50,
                                             asr_samples=np.full(RATE // 50, 700, dtype=np.int16) if index < 5 else None))
            await outbox.send(SpeechStopped(1, 500))

    sink = Frames()
    await Pipeline([Muted(), LevelWhisper(pass_s=0.0, partial_interval_ms=None, tail_ms=0), sink]).run()
    finals = [f for f in sink.frames if isinstance(f, TranscriptFinal)]
    assert [f.text for f in finals] == ["peak 700"]
