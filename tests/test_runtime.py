"""Runtime unit tests with fake stages: ordering, backpressure, cancellation, errors, leaks, trio."""

from __future__ import annotations

import threading
import time

import anyio
import numpy as np
import pytest

from realtime_pipeline import (
    AudioFrame,
    Conversation,
    MemoryOutput,
    Pipeline,
    Player,
    ReplyAudio,
    ResponseEnd,
    ResponseStatus,
    Stage,
    StageError,
    TextDelta,
    TranscriptFinal,
    send_unless_cancelled,
)
from realtime_pipeline.frames import Frame


class ListSource(Stage):
    name = "source"

    def __init__(self, frames: list[Frame], *, hold_s: float = 0.0) -> None:
        self.frames = frames
        self.hold_s = hold_s
        self.sent = 0

    async def run(self, ctx, inbox, outbox):
        for frame in self.frames:
            await outbox.send(frame)
            self.sent += 1
        await anyio.sleep(self.hold_s)


class Passthrough(Stage):
    def __init__(self, name: str) -> None:
        self.name = name

    async def run(self, ctx, inbox, outbox):
        async for frame in inbox:
            await outbox.send(frame)


class Collector(Stage):
    name = "collector"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.received: list[tuple[float, Frame]] = []

    async def run(self, ctx, inbox, outbox):
        async for frame in inbox:
            if self.delay_s:
                await anyio.sleep(self.delay_s)
            self.received.append((time.monotonic(), frame))


class Boom(Stage):
    name = "boom"

    async def run(self, ctx, inbox, outbox):
        count = 0
        async for frame in inbox:
            count += 1
            if count == 3:
                raise RuntimeError("model exploded")
            await outbox.send(frame)


class ThreadedResponder(Stage):
    """Answers each final transcript with ``tokens`` deltas, each made in a worker thread."""

    name = "responder"

    def __init__(self, tokens: int = 50, token_s: float = 0.005) -> None:
        self.tokens = tokens
        self.token_s = token_s

    def _make_token(self, index: int, token) -> str | None:
        if token.cancelled:  # the check inside the worker thread, between tokens
            return None
        time.sleep(self.token_s)
        return f"w{index} "

    answers_turns = True

    async def run(self, ctx, inbox, outbox):
        async for frame in inbox:
            if not isinstance(frame, TranscriptFinal):
                await outbox.send(frame)
                continue
            response = ctx.conversation.begin_response(frame.turn_id, frame.text)
            for index in range(self.tokens):
                piece = await anyio.to_thread.run_sync(self._make_token, index, response.token)
                if piece is None:
                    break
                response.add_text(piece)
                await send_unless_cancelled(outbox, TextDelta(response, piece))
            await send_unless_cancelled(outbox, ResponseEnd(response))


class ToneSynth(Stage):
    """Fake TTS: every delta becomes 40 ms of tone."""

    name = "synth"
    rate_hz = 16000

    async def run(self, ctx, inbox, outbox):
        async for frame in inbox:
            if isinstance(frame, TextDelta):
                samples = (np.sin(np.arange(640) / 5.0) * 8000).astype(np.int16)
                frame.response.add_chunk(frame.text, len(samples), self.rate_hz)
                await send_unless_cancelled(outbox, ReplyAudio(frame.response, samples, self.rate_hz, 0, frame.text))
            else:
                await send_unless_cancelled(outbox, frame)


def audio_frames(count: int) -> list[Frame]:
    return [AudioFrame(np.full(320, i, dtype=np.int16), 16000, i * 320) for i in range(count)]


@pytest.mark.anyio
async def test_frames_arrive_in_order_through_every_stage():
    frames = audio_frames(100)
    collector = Collector()
    pipeline = Pipeline([ListSource(frames), Passthrough("a"), Passthrough("b"), collector], queue_capacity=3)
    await pipeline.run()
    assert [frame for _, frame in collector.received] == frames


@pytest.mark.anyio
async def test_a_full_queue_makes_the_producer_wait():
    capacity = 4
    source = ListSource(audio_frames(200))
    collector = Collector(delay_s=0.001)
    pipeline = Pipeline([source, Passthrough("a"), collector], queue_capacity=capacity)
    in_flight: list[int] = []
    sizes: list[int] = []

    async def watch():
        while True:
            in_flight.append(source.sent - len(collector.received))
            sizes.extend(pipeline.queue_sizes())
            await anyio.sleep(0.002)

    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        await pipeline.run()
        group.cancel_scope.cancel()
    assert len(collector.received) == 200
    assert max(sizes) <= capacity
    # two queues of `capacity`, plus one frame held by each of the two consumers
    assert max(in_flight) <= 2 * capacity + 2
    assert max(in_flight) >= capacity  # the slow consumer did fill the queues


@pytest.mark.anyio
async def test_no_frame_of_a_cancelled_response_reaches_the_output_after_the_cancel():
    output = MemoryOutput(16000, paced=True)
    after_player = Collector()
    final = TranscriptFinal(1, "hello", 0, 1000)
    pipeline = Pipeline(
        [ListSource([final], hold_s=1.0), ThreadedResponder(), ToneSynth(), Player(output), after_player],
        queue_capacity=4,
    )
    cancelled_at: list[float] = []

    async def cancel_soon():
        await anyio.sleep(0.3)
        response = pipeline.conversation.cancel_response("turn_detected")
        assert response is not None
        cancelled_at.append(time.monotonic())

    async with anyio.create_task_group() as group:
        group.start_soon(cancel_soon)
        await pipeline.run()

    response = pipeline.conversation.items[-1]
    assert response.status is ResponseStatus.CANCELLED
    assert output.blocks, "some audio played before the cancel"
    last_played = output.blocks[-1]
    assert last_played.started_at_s <= cancelled_at[0]
    late = [frame for at, frame in after_player.received if getattr(frame, "response", None) is response and at > cancelled_at[0]]
    assert late == []
    # the response generated fewer than its 50 tokens: the worker thread saw the token
    assert len(response.text.split()) < 50
    # the history keeps what was heard, not what was generated
    assert response.history_text() == response.heard_text()
    assert len(response.heard_text().split()) <= len(response.text.split())


@pytest.mark.anyio
async def test_a_failing_stage_stops_the_pipeline_with_its_name_and_leaves_nothing_behind():
    threads_before = set(threading.enumerate())
    collector = Collector()
    pipeline = Pipeline(
        [ListSource(audio_frames(50), hold_s=5.0), Passthrough("a"), Boom(), collector],
        queue_capacity=2,
    )
    started = time.monotonic()
    with pytest.raises(StageError) as caught:
        await pipeline.run()
    assert caught.value.stage_name == "boom"
    assert "model exploded" in str(caught.value)
    assert time.monotonic() - started < 4.0, "the source's 5 s sleep was cancelled, not waited for"
    assert pipeline.conversation.token.cancelled
    assert len(collector.received) == 2
    leftover = set(threading.enumerate()) - threads_before
    assert all(not thread.is_alive() or thread.daemon for thread in leftover)


def test_no_task_or_thread_survives_a_run():
    """After anyio.run returns, every worker thread the stages used is gone."""
    threads_before = set(threading.enumerate())

    async def main():
        output = MemoryOutput(16000)
        pipeline = Pipeline([ListSource([TranscriptFinal(1, "hi", 0, 500)]), ThreadedResponder(tokens=5), ToneSynth(), Player(output)])
        await pipeline.run()
        assert pipeline.conversation.items[-1].status is ResponseStatus.DONE

    anyio.run(main)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and set(threading.enumerate()) - threads_before:
        time.sleep(0.05)
    assert set(threading.enumerate()) - threads_before == set()


def test_a_pipeline_runs_under_trio():
    result: dict[str, object] = {}

    async def main():
        output = MemoryOutput(16000, paced=True)
        conversation = Conversation()
        pipeline = Pipeline(
            [ListSource([TranscriptFinal(1, "hi", 0, 500)]), ThreadedResponder(tokens=4), ToneSynth(), Player(output)],
            conversation=conversation,
        )
        await pipeline.run()
        result["status"] = conversation.items[-1].status
        result["samples"] = len(output.audio())

    anyio.run(main, backend="trio")
    assert result["status"] is ResponseStatus.DONE
    assert result["samples"] == 4 * 640


@pytest.mark.anyio
async def test_stop_ends_a_running_pipeline_at_once():
    pipeline = Pipeline([ListSource([], hold_s=30.0), Passthrough("a")])

    async def stop_soon():
        await anyio.sleep(0.1)
        pipeline.stop()

    started = time.monotonic()
    async with anyio.create_task_group() as group:
        group.start_soon(stop_soon)
        await pipeline.run()
    assert time.monotonic() - started < 5.0


def test_pipeline_rejects_bad_wiring():
    with pytest.raises(ValueError, match="at least one stage"):
        Pipeline([])
    with pytest.raises(ValueError, match="unique"):
        Pipeline([Passthrough("x"), Passthrough("x")])
    with pytest.raises(ValueError, match="queue_capacity"):
        Pipeline([Passthrough("x")], queue_capacity=0)
