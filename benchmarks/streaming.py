"""The streaming run: user turns in real time through the full pipeline into a paced virtual speaker."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from realtime_pipeline import voice_pipeline
from realtime_pipeline.audio import INPUT_SAMPLE_RATE_HZ
from realtime_pipeline.conversation import Conversation, ResponseStarted
from realtime_pipeline.frames import AudioFrame, Frame, SpeechStopped
from realtime_pipeline.io.outputs import MemoryOutput
from realtime_pipeline.io.sources import MemorySource
from realtime_pipeline.pipeline import Pipeline
from realtime_pipeline.response import Response
from realtime_pipeline.stage import Inbox, Outbox, StageContext
from realtime_pipeline.stages.vad import VADSettings
from realtime_pipeline.tracing import FIRST_SAMPLE_PLAYED, USER_SPEECH_END, Tracer

from .echo import EchoConfig, in_room, user_lead_ms
from .measure import Models
from .turns import Turn


class _RecordingOutbox:
    """Passes frames on, noting when each audio frame became available."""

    def __init__(self, outbox: Outbox, frames: list[tuple[int, float]]) -> None:
        self._outbox = outbox
        self._frames = frames

    async def send(self, frame: Frame) -> None:
        if isinstance(frame, AudioFrame):
            self._frames.append((frame.end_sample, frame.captured_at_s))
        await self._outbox.send(frame)


class RecordingSource(MemorySource):
    """A real-time :class:`MemorySource` that also records (end sample, capture time) of each frame."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frames: list[tuple[int, float]] = []

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        await super().run(ctx, inbox, _RecordingOutbox(outbox, self.frames))  # type: ignore[arg-type]

    def stream_start_s(self) -> float:
        """Monotonic time of stream sample 0: frames are paced from it and only ever late."""
        return min(captured - end / INPUT_SAMPLE_RATE_HZ for end, captured in self.frames)


@dataclass
class StreamingRun:
    pipeline: Pipeline
    source: RecordingSource
    output: MemoryOutput
    stopped: list[SpeechStopped] = field(default_factory=list)
    responses: dict[int, Response] = field(default_factory=dict)
    #: In the echo room: its condition, the room, and every conversation event in order.
    echo: EchoConfig | None = None
    room: Any = None
    events: list[Any] = field(default_factory=list)

    @property
    def tracer(self) -> Tracer:
        return self.pipeline.tracer


#: In the echo room, the longest wait for the conversation to go idle after a turn: without
#: protection the assistant answers its own echo, and would never stop.
ECHO_MAX_WAIT_S = 20.0


def build_streaming(turns: list[Turn], models: Models, *, system_prompt: str | None = None,
                    vad: VADSettings | None = None, echo: EchoConfig | None = None) -> StreamingRun:
    source = RecordingSource([t.samples for t in turns], INPUT_SAMPLE_RATE_HZ, realtime=True, wait_for_reply=True,
                             max_wait_s=ECHO_MAX_WAIT_S if echo is not None else None,
                             lead_silence_ms=user_lead_ms(echo, 300))
    output = MemoryOutput(models.tts.output_sample_rate_hz, paced=True)
    heard, room = in_room(source, output, echo)
    conversation = Conversation(system_prompt) if system_prompt else Conversation()
    pipeline = voice_pipeline(heard, output, vad=vad, turn=models.turn, asr=models.asr, llm=models.llm, tts=models.tts,
                              conversation=conversation, tracer=Tracer(), echo=echo.mode if echo is not None else "auto",
                              echo_path_fit=echo is not None and echo.path_fit,
                              echo_calibration=echo is None or echo.calibrate)
    run = StreamingRun(pipeline, source, output, echo=echo, room=room)

    def on_event(event: object) -> None:
        run.events.append(event)
        if isinstance(event, SpeechStopped):
            run.stopped.append(event)
        elif isinstance(event, ResponseStarted):
            run.responses[event.response.turn_id] = event.response

    conversation.add_listener(on_event)
    return run


async def play(run: StreamingRun, on_turn: Callable[[int], None] | None = None) -> None:
    """Run the pipeline to the end of the last reply; ``on_turn(k)`` when the source starts turn k (0-based)."""

    async def watch() -> None:
        seen = 0
        while True:
            started = len(run.source.turn_start_samples)
            while seen < started:
                if on_turn is not None:
                    on_turn(seen)
                seen += 1
            await anyio.sleep(0.1)

    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        await run.pipeline.run()
        group.cancel_scope.cancel()


def turn_records(run: StreamingRun, turns: list[Turn]) -> list[dict[str, Any]]:
    """One record per source turn, with the ground-truth speech end stamped into the tracer.

    Each VAD turn is assigned to the source turn its speech ended in. A source turn the
    VAD split in several gets the *last* one's reply (earlier ones were barged in on) as
    its measured turn; the user transcript joins all of them. ``USER_SPEECH_END`` is
    overwritten with the ground truth (last voiced sample by energy, at the moment the
    source played it); the VAD's own estimate stays in the record.
    """
    tracer = run.tracer
    starts = run.source.turn_start_samples
    stream_start_s = run.source.stream_start_s()
    by_turn: dict[int, list[int]] = {}
    for event in run.stopped:
        end_sample = event.audio_end_ms * INPUT_SAMPLE_RATE_HZ // 1000
        index = bisect.bisect_right(starts, end_sample) - 1
        if 0 <= index < len(turns):
            by_turn.setdefault(index, []).append(event.turn_id)
    records = []
    for index, turn in enumerate(turns):
        vad_ids = by_turn.get(index, [])
        answered = [i for i in vad_ids if (trace := tracer.turn(i)) is not None and FIRST_SAMPLE_PLAYED in trace.stamps]
        turn_id = answered[-1] if answered else (vad_ids[-1] if vad_ids else None)
        speech_end_s = stream_start_s + (starts[index] + turn.speech_end_sample) / INPUT_SAMPLE_RATE_HZ if index < len(starts) else None
        record: dict[str, Any] = {
            "index": index,
            "file": turn.name,
            "audio_s": round(turn.duration_s, 3),
            "speech_end_s_in_file": turn.speech_end_sample / INPUT_SAMPLE_RATE_HZ,
            "vad_turn_ids": vad_ids,
            "turn_id": turn_id,
            "reference": turn.reference,
            "transcript": " ".join(t for i in vad_ids if (t := _text(tracer, i, "user"))),
            "reply": _text(tracer, turn_id, "assistant") if turn_id is not None else "",
            "answered": bool(answered),
        }
        trace = tracer.turn(turn_id) if turn_id is not None else None
        if trace is not None and speech_end_s is not None:
            vad_end_s = trace.stamps.get(USER_SPEECH_END)
            tracer.stamp(turn_id, USER_SPEECH_END, speech_end_s, overwrite=True)
            record["vad_speech_end_error_ms"] = None if vad_end_s is None else round(1000.0 * (vad_end_s - speech_end_s), 1)
            record["stamps_s"] = dict(trace.ordered_stamps())
            record["stamps_ms"] = {name: round(1000.0 * (at - speech_end_s), 1) for name, at in trace.ordered_stamps()}
            record["spans_ms"] = {name: round(value, 1) for name, value in trace.breakdown_ms().items()}
            record["critical_path_ms"] = {name: round(value, 1) for name, value in trace.critical_path_ms().items()}
            record["counts"] = dict(trace.counts)  # prompt tokens evaluated, the final Whisper pass
        response = run.responses.get(turn_id) if turn_id is not None else None
        if response is not None:
            record["reply_played_s"] = round(response.played_ms / 1000.0, 3)
            record["reply_status"] = response.status.value
        records.append(record)
    return records


def _text(tracer: Tracer, turn_id: int | None, key: str) -> str:
    trace = tracer.turn(turn_id) if turn_id is not None else None
    return trace.texts.get(key, "").strip() if trace is not None else ""
