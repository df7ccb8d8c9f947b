"""FailoverEngine's decisions with scripted engines (the real servers: tests/test_openai_llm.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import pytest

from realtime_pipeline.cancellation import CancelToken
from realtime_pipeline.failover import CONTINUE_NOTE, NO_FIRST_TOKEN, PRIMARY_DOWN, PRIMARY_FAILED, FailoverEngine, PrimaryHealth
from realtime_pipeline.llm_engine import EngineSwitched, LLMEngine, LLMEngineError, LLMRequest, TextPiece, ToolCallPiece


@dataclass
class ScriptedEngine:
    """Yields ``pieces`` (an exception instance is raised there; a float is a sleep), records requests."""

    label: str
    pieces: list = field(default_factory=list)
    max_tokens: int = 50
    requests: list = field(default_factory=list)
    closed: int = 0
    score: float | None = None

    async def start(self) -> None:
        pass

    async def stream(self, request, token):
        self.requests.append(request)
        try:
            for piece in self.pieces:
                if isinstance(piece, BaseException):
                    raise piece
                if isinstance(piece, float):
                    with token.scope():  # a real engine stops waiting once the turn is cancelled
                        await anyio.sleep(piece)
                    continue
                if token.cancelled:
                    return
                yield piece
        finally:
            self.closed += 1

    def check_tools(self, tools):
        pass

    def count_tokens(self, text):
        return len(text)

    def prompt_budget_tokens(self, max_tokens, tools):
        return None if self.label == "remote" else 500

    async def end_of_turn_probability(self, messages):
        return self.score

    def prompt_tokens(self):
        return None

    async def aclose(self) -> None:
        pass


REQUEST = LLMRequest([{"role": "user", "content": "Hi"}])


async def run(engine, token=None):
    with anyio.fail_after(10):
        return [piece async for piece in engine.stream(REQUEST, token or CancelToken())]


def test_the_engines_fit_the_protocol():
    assert isinstance(ScriptedEngine("x"), LLMEngine)
    assert isinstance(FailoverEngine(ScriptedEngine("a"), ScriptedEngine("b")), LLMEngine)


@pytest.mark.anyio
async def test_a_primary_that_answers_is_passed_through_untouched():
    primary, fallback = ScriptedEngine("remote", [TextPiece("Hello"), TextPiece(" there")]), ScriptedEngine("local", [TextPiece("no")])
    failover = FailoverEngine(primary, fallback)
    assert await run(failover) == [TextPiece("Hello"), TextPiece(" there")]
    assert fallback.requests == [] and failover.answered_by == "remote" and primary.closed == 1


@pytest.mark.anyio
async def test_a_silent_primary_is_dropped_after_the_budget_and_the_fallback_answers_from_the_start():
    primary, fallback = ScriptedEngine("remote", [5.0, TextPiece("late")]), ScriptedEngine("local", [TextPiece("Local")])
    pieces = await run(FailoverEngine(primary, fallback, first_token_timeout_s=0.05))
    assert pieces[0] == EngineSwitched("local", pieces[0].reason, True) and pieces[0].reason.startswith(NO_FIRST_TOKEN)
    assert pieces[1:] == [TextPiece("Local")] and primary.closed == 1
    assert fallback.requests == [REQUEST]


@pytest.mark.anyio
async def test_a_failure_after_text_is_continued_by_the_fallback_with_what_was_said():
    primary = ScriptedEngine("remote", [TextPiece("The capital"), TextPiece(" is"), LLMEngineError("connection reset")])
    fallback = ScriptedEngine("local", [TextPiece(" Paris.")])
    pieces = await run(FailoverEngine(primary, fallback))
    assert pieces[:2] == [TextPiece("The capital"), TextPiece(" is")]
    assert isinstance(pieces[2], EngineSwitched) and pieces[2].restart is False
    assert pieces[2].reason.startswith(PRIMARY_FAILED + " mid-reply") and "connection reset" in pieces[2].reason
    assert pieces[3:] == [TextPiece(" Paris.")]
    asked = fallback.requests[0].messages
    assert asked[:-2] == REQUEST.messages
    assert asked[-2] == {"role": "assistant", "content": "The capital is"} and asked[-1]["content"] == CONTINUE_NOTE


@pytest.mark.anyio
async def test_a_failure_during_a_tool_call_voids_it_and_the_fallback_answers_from_the_start():
    primary = ScriptedEngine("remote", [ToolCallPiece(0, "get_weather", '{"ci'), LLMEngineError("dropped")])
    fallback = ScriptedEngine("local", [ToolCallPiece(0, "get_weather", '{"city": "Paris"}')])
    pieces = await run(FailoverEngine(primary, fallback))
    assert isinstance(pieces[1], EngineSwitched) and pieces[1].restart is True
    assert fallback.requests == [REQUEST]  # asked anew: nothing was said


@pytest.mark.anyio
async def test_a_failed_primary_is_skipped_until_its_retry_time_then_asked_again():
    now = [0.0]
    primary = ScriptedEngine("remote", [LLMEngineError("HTTP 503")])
    fallback = ScriptedEngine("local", [TextPiece("ok")])
    failover = FailoverEngine(primary, fallback, retry_primary_after_s=30.0, clock=lambda: now[0])
    first = await run(failover)
    assert first[0].reason.startswith(PRIMARY_FAILED) and len(primary.requests) == 1
    now[0] = 29.0
    second = await run(failover)
    assert second[0].reason.startswith(PRIMARY_DOWN) and len(primary.requests) == 1  # not asked
    now[0] = 30.0
    primary.pieces = [TextPiece("back")]
    assert await run(failover) == [TextPiece("back")] and failover.health.usable()


@pytest.mark.anyio
async def test_a_cancelled_turn_does_not_fail_over():
    token = CancelToken()
    primary, fallback = ScriptedEngine("remote", [5.0]), ScriptedEngine("local", [TextPiece("x")])
    failover = FailoverEngine(primary, fallback, first_token_timeout_s=2.0)
    pieces: list = []

    async def consume():
        pieces.extend(await run(failover, token))

    async with anyio.create_task_group() as group:
        group.start_soon(consume)
        await anyio.sleep(0.05)
        token.cancel("barge-in")
    assert pieces == [] and fallback.requests == [] and failover.health.usable()


@pytest.mark.anyio
async def test_a_consumer_that_stops_reading_closes_the_primary_stream():
    primary = ScriptedEngine("remote", [TextPiece("a"), TextPiece("b"), TextPiece("c")])
    failover = FailoverEngine(primary, ScriptedEngine("local"))
    stream = failover.stream(REQUEST, CancelToken())
    assert await stream.__anext__() == TextPiece("a")
    await stream.aclose()
    assert primary.closed == 1


@pytest.mark.anyio
async def test_the_budget_and_scores_are_the_safer_of_the_two():
    primary, fallback = ScriptedEngine("remote", score=None), ScriptedEngine("local", score=0.8)
    failover = FailoverEngine(primary, fallback)
    assert failover.prompt_budget_tokens(50, []) == 500  # the local model's: the history must fit it
    assert await failover.end_of_turn_probability([]) == 0.8  # the remote cannot score: the local one does
    assert failover.label == "remote" and failover.max_tokens == 50


def test_primary_health_is_a_clock_driven_state_machine():
    now = [100.0]
    health = PrimaryHealth(10.0, lambda: now[0])
    assert health.usable()
    health.failed("timeout")
    assert not health.usable() and health.reason == "timeout"
    now[0] = 110.0
    assert health.usable()
    health.answered()
    assert health.failed_at is None


def test_a_budget_must_be_positive():
    with pytest.raises(ValueError, match="first_token_timeout_s"):
        FailoverEngine(ScriptedEngine("a"), ScriptedEngine("b"), first_token_timeout_s=0)


@pytest.mark.anyio
async def test_a_primary_that_stalls_mid_reply_is_continued_by_the_fallback():
    primary = ScriptedEngine("remote", [TextPiece("The capital"), 5.0, TextPiece(" never")])
    fallback = ScriptedEngine("local", [TextPiece(" is Paris.")])
    pieces = await run(FailoverEngine(primary, fallback, stall_timeout_s=0.05))
    assert pieces[0] == TextPiece("The capital") and pieces[-1] == TextPiece(" is Paris.")
    assert isinstance(pieces[1], EngineSwitched) and pieces[1].restart is False and "no piece for" in pieces[1].reason
    assert primary.closed == 1
