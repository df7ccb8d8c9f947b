"""The speculation state machine: a reply prepared during the end-of-turn silence.

Resumed speech cancels it, a turn committed with the same transcript keeps it
(it plays at once, and is never answered twice), a changed transcript
restarts it. Deterministic: a scripted VAD/ASR, the real LLM stage's loop on
a scripted model, the real chunker and player, a fake TTS.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import anyio
import pytest

from fakes import FakeTTS
from realtime_pipeline import (
    Conversation,
    MemoryOutput,
    Pipeline,
    Player,
    Response,
    ResponseStatus,
    SentenceChunker,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
    Stage,
    TranscriptFinal,
    TranscriptPreview,
)
from realtime_pipeline.conversation import UserMessage
from realtime_pipeline.llm_engine import BlockingEngine
from realtime_pipeline.responder import Responder


class EchoEngine(BlockingEngine):
    """A scripted model that echoes the user's last words."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def stream_reply(self, messages, token, *, max_tokens=None, temperature=None) -> Iterator[str]:
        asked = messages[-1]["content"]
        self.asked.append(asked)
        for word in f"You said {asked}. That is all.".split(" "):
            if token.cancelled:
                return
            time.sleep(0.002)
            yield word + " "


class EchoLLM(Responder):
    """The real responder loop on :class:`EchoEngine`."""

    def __init__(self) -> None:
        super().__init__(EchoEngine())

    @property
    def asked(self) -> list[str]:
        return self.engine.asked


class ScriptedTurn(Stage):
    """Plays the VAD's and the ASR's part of one user turn, step by step."""

    name = "user"

    def __init__(self, steps):
        self.steps = steps
        self.stopped_at_s: float | None = None

    async def run(self, ctx, inbox, outbox):
        conversation = ctx.conversation
        turn = conversation.new_turn_id()
        for kind, *args in self.steps:
            if kind == "start":
                event = SpeechStarted(turn, 0)
                conversation.user_speech_started(event)
                await outbox.send(event)
            elif kind == "preview":
                await outbox.send(TranscriptPreview(turn, args[0], args[1]))
            elif kind == "resume":
                conversation.user_speech_resumed(turn)
                await outbox.send(SpeechResumed(turn))
            elif kind == "stop":
                event = SpeechStopped(turn, args[0])
                self.stopped_at_s = time.monotonic()
                conversation.user_speech_stopped(event)
                await outbox.send(event)
            elif kind == "final":
                await outbox.send(TranscriptFinal(turn, args[0], 0, args[1]))
            elif kind == "until_ready":  # the held reply has audio waiting for the commit
                with anyio.fail_after(30):
                    while not (conversation.speculative.held and conversation.speculative.held.response.chunks):
                        await anyio.sleep(0.005)
            elif kind == "sleep":
                await anyio.sleep(args[0])
        with anyio.fail_after(30):
            await conversation.wait_idle()


async def run_turn(steps):
    conversation = Conversation()
    llm = EchoLLM()
    output = MemoryOutput(16000)
    user = ScriptedTurn(steps)
    pipeline = Pipeline([user, llm, SentenceChunker(), FakeTTS(ms_per_char=5), Player(output)], conversation=conversation)
    await pipeline.run()
    responses = [item for item in conversation.items if isinstance(item, Response)]
    users = [item.text for item in conversation.items if isinstance(item, UserMessage)]
    return conversation, llm, output, user, responses, users


@pytest.mark.anyio
async def test_a_turn_committed_as_previewed_plays_the_prepared_reply_once():
    conversation, llm, output, user, responses, users = await run_turn([
        ("start",), ("preview", "hello there", 1000), ("until_ready",),
        ("stop", 1000), ("final", "hello there", 1000),
    ])
    assert llm.asked == ["hello there"], "answered once, from the preview"
    assert users == ["hello there"]
    assert len(responses) == 1 and responses[0].status is ResponseStatus.DONE
    assert conversation.speculation_hits == 1 and conversation.speculation_misses == 0
    # prepared before the commit, held, then played from the commit on
    assert output.blocks and output.blocks[0].started_at_s >= user.stopped_at_s
    assert len(output.audio(responses[0].id)) > 0


@pytest.mark.anyio
async def test_resumed_speech_cancels_the_prepared_reply_and_the_turn_goes_on():
    conversation, llm, output, user, responses, users = await run_turn([
        ("start",), ("preview", "hello", 1000), ("until_ready",),
        ("resume",), ("sleep", 0.05),
        ("preview", "hello there friend", 2000), ("until_ready",), ("stop", 2000), ("final", "hello there friend", 2000),
    ])
    assert llm.asked == ["hello", "hello there friend"]
    assert users == ["hello there friend"], "the voided preview left nothing in the history"
    assert [r.status for r in responses] == [ResponseStatus.DONE]
    assert conversation.speculation_misses == 1 and conversation.speculation_hits == 1
    played = {block.response_id for block in output.blocks}
    assert played == {responses[0].id}, "no audio of the voided reply was played"


@pytest.mark.anyio
async def test_a_changed_final_transcript_restarts_the_reply():
    conversation, llm, output, user, responses, users = await run_turn([
        ("start",), ("preview", "hello", 1000), ("until_ready",),
        ("stop", 1000), ("final", "hello again", 1000),
    ])
    assert llm.asked == ["hello", "hello again"]
    assert users == ["hello again"]
    assert responses[-1].user_text == "hello again" and responses[-1].status is ResponseStatus.DONE
    assert all(r.status is ResponseStatus.CANCELLED for r in responses[:-1])
    assert conversation.speculation_misses == 1 and conversation.speculation_hits == 0


@pytest.mark.anyio
async def test_a_stop_elsewhere_than_the_preview_discards_it():
    conversation, llm, output, user, responses, users = await run_turn([
        ("start",), ("preview", "hello", 1000), ("until_ready",),
        ("stop", 1500), ("final", "hello you", 1500),
    ])
    assert llm.asked == ["hello", "hello you"]
    assert users == ["hello you"]
    assert [r.user_text for r in responses] == ["hello you"]
    assert conversation.speculation_misses == 1
    assert {block.response_id for block in output.blocks} == {responses[0].id}


@pytest.mark.anyio
async def test_without_speculation_the_reply_waits_for_the_final():
    conversation = Conversation(speculation=False)
    llm = EchoLLM()
    output = MemoryOutput(16000)
    user = ScriptedTurn([("start",), ("preview", "hello", 1000), ("sleep", 0.05), ("stop", 1000), ("final", "hello", 1000)])
    await Pipeline([user, llm, SentenceChunker(), FakeTTS(), Player(output)], conversation=conversation).run()
    assert llm.asked == ["hello"]
    assert conversation.speculation_hits == 0 and conversation.speculation_misses == 0
