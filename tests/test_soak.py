"""Soak: 300 consecutive barge-ins on fake stages, then nothing may be left behind."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import anyio
import anyio.lowlevel
import numpy as np
from fakes import FakeTTS, ScriptedLLM, ScriptedUser, UserTurn

from realtime_pipeline import (
    Conversation,
    MemoryOutput,
    Pipeline,
    Player,
    ResponseStatus,
    SentenceChunker,
)
from realtime_pipeline.conversation import ResponseDone, ResponseInterrupted

BARGE_INS = 300
REPLY = "One two three four, five six seven eight. Nine ten eleven twelve."
PHASES = ("generating", "synthesizing", "playing", "paused_then_words")


def test_300_consecutive_barge_ins_leave_no_task_thread_queue_or_response_behind():
    threads_before = set(threading.enumerate())
    result: dict = {}

    async def main() -> None:
        tasks_before = len(asyncio.all_tasks())
        conversation = Conversation()
        llm = ScriptedLLM([REPLY], token_delay_s=0.002)
        tts = FakeTTS(ms_per_char=5, synth_s=0.01)
        output = MemoryOutput(16000, paced=True)
        player = Player(output)
        user_turns: list[UserTurn] = [UserTurn("start")]

        def trigger(k: int):
            """Turn k interrupts turn k-1's reply in phase k % 4 (or, if that phase was missed, while it plays)."""
            phase = PHASES[k % len(PHASES)]

            def condition(c: Conversation) -> bool:
                response = c.active_response
                if response is None or response.turn_id != user.turn_ids[k - 1]:
                    return False
                if phase == "generating" and llm.generating is response:
                    return True
                if phase == "synthesizing" and tts.in_flight is not None and tts.in_flight.response is response:
                    return True
                return response.played_ms >= 30

            return condition

        for k in range(1, BARGE_INS + 1):
            partial = "wait" if PHASES[k % len(PHASES)] == "paused_then_words" else None
            user_turns.append(UserTurn(f"question {k}", when=trigger(k), voiced_ms=100, partial=partial))
        user = ScriptedUser(user_turns)
        pipeline = Pipeline([user, llm, SentenceChunker(), tts, player], conversation=conversation, queue_capacity=8)
        events: list = []
        sizes_at_done: list[list[int]] = []

        def on_event(event: object) -> None:
            events.append(event)
            if isinstance(event, ResponseDone):
                sizes_at_done.append(pipeline.queue_sizes())

        conversation.add_listener(on_event)
        with anyio.fail_after(240):
            await pipeline.run()
        await anyio.lowlevel.checkpoint()
        result.update(
            tasks_leaked=len(asyncio.all_tasks()) - tasks_before,
            responses=llm.responses,
            events=events,
            sizes_at_done=sizes_at_done,
            live=list(conversation._live),
            token_children=len(conversation.token._children),
            watched=len(player._watched),
            replay=len(player._replay),
            output=output,
            tts=tts,
        )

    anyio.run(main)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and set(threading.enumerate()) - threads_before:
        time.sleep(0.05)
    assert set(threading.enumerate()) - threads_before == set(), "worker threads outlived the run"
    assert result["tasks_leaked"] == 0

    responses = result["responses"]
    assert len(responses) == BARGE_INS + 1
    # every response ended exactly once: the first 300 interrupted by the user, the last played to the end
    ended = Counter(
        event.response.id for event in result["events"] if isinstance(event, (ResponseDone, ResponseInterrupted))
    )
    assert all(ended[response.id] == 1 for response in responses)
    assert all(r.status is ResponseStatus.CANCELLED and r.cancel_reason == "turn_detected" for r in responses[:-1])
    assert responses[-1].status is ResponseStatus.DONE
    output, tts = result["output"], result["tts"]
    assert np.array_equal(output.audio(responses[-1].id), tts.audio(responses[-1]))
    # no cancelled audio after each stop, and the speaker played exactly what was counted as heard
    for response in responses[:-1]:
        assert len(output.audio(response.id)) == response.played_samples
        interrupted = next(e for e in result["events"] if isinstance(e, ResponseInterrupted) and e.response is response)
        later = [b for b in output.blocks if b.response_id == response.id and b.started_at_s > interrupted.at_s]
        assert later == []
    # nothing piled up: queues empty once the last reply was played, no state kept per response
    assert result["sizes_at_done"][-1] == [0, 0, 0, 0]
    assert result["live"] == [] and result["token_children"] == 0
    assert result["watched"] == 0 and result["replay"] == 0
