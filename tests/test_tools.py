"""Function calling without models: schemas, running calls (errors, timeouts, barge-in), and the
LLM stage's tool loop with a scripted model (decisions, arguments and replies are scripted; the
loop, the history, the guarantees and the rest of the pipeline are the real ones)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import anyio
import jsonschema
import pydantic
import pytest

from realtime_pipeline import CancelToken, Conversation, MemoryOutput, Pipeline, Player, ResponseStatus, SentenceChunker
from realtime_pipeline.conversation import FunctionCall, FunctionCallOutput, ResponseDone, UserMessage
from realtime_pipeline.stages.chunker import speakable
from realtime_pipeline.stages.llm import (
    TOOL_CALL_DONE,
    TOOL_CALL_STARTED,
    bounded_schema,
    json_gbnf,
    render_for_template,
    unenforced_keywords,
)
from realtime_pipeline.llm_engine import BlockingEngine
from realtime_pipeline.responder import Responder
from realtime_pipeline.tools import (
    Tool,
    ToolCall,
    ToolCallDone,
    ToolCallStarted,
    ToolChoice,
    ToolError,
    ToolRegistry,
    ToolStatus,
)

from fakes import FakeTTS, ScriptedUser, UserTurn, tokens_of

RATE_HZ = 16000


# -- tools used across the tests ------------------------------------------------------------
class Window(pydantic.BaseModel):
    start_hour: int
    end_hour: int = 24


def get_weather(location: str, unit: Literal["celsius", "fahrenheit"] = "celsius", days: int = 1) -> dict:
    """Get the current weather for a location.

    The forecast covers ``days`` days.

    Args:
        location: City name, e.g. "Paris".
        unit: Temperature unit.
        days: How many days to forecast.
    """
    return {"location": location, "temperature": 18 if unit == "celsius" else 64, "unit": unit, "conditions": "sunny", "days": days}


def set_reminder(time: str, message: str) -> str:
    """Set a reminder.

    Args:
        time: When, e.g. "7 pm".
        message: What to remind the user of.
    """
    return f"reminder set for {time}: {message}"


def weather_registry() -> ToolRegistry:
    tools = ToolRegistry()
    tools.add(get_weather)
    tools.add(set_reminder, cancellable=False)
    return tools


# -- schemas ----------------------------------------------------------------------------------
def test_schema_comes_from_type_hints_and_the_docstring():
    tool = Tool.from_function(get_weather)
    assert tool.name == "get_weather"
    assert tool.description == "Get the current weather for a location. The forecast covers ``days`` days."
    assert tool.parameters == {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "location": {"type": "string", "description": 'City name, e.g. "Paris".'},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius", "description": "Temperature unit."},
            "days": {"type": "integer", "default": 1, "description": "How many days to forecast."},
        },
        "required": ["location"],
    }
    jsonschema.Draft202012Validator.check_schema(tool.parameters)
    assert tool.schema() == {"type": "function", "function": {"name": "get_weather", "description": tool.description, "parameters": tool.parameters}}
    assert tool.realtime_schema() == {"type": "function", "name": "get_weather", "description": tool.description, "parameters": tool.parameters}

    # reST docstring, a nested model, constraints, optional values
    def plan_ok(window: Window, tags: list[str], note: Annotated[str, pydantic.Field(max_length=20)] = "", urgent: bool | None = None) -> str:
        """Plan something.

        :param window: The hours it may take.
        :param tags: Labels.
        """
        return ""

    schema = Tool.from_function(plan_ok, name="plan").parameters
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["required"] == ["window", "tags"]
    assert schema["properties"]["window"]["description"] == "The hours it may take."
    assert schema["properties"]["note"]["maxLength"] == 20
    assert schema["$defs"]["Window"]["required"] == ["start_hour"]
    jsonschema.validate({"window": {"start_hour": 9}, "tags": ["a"]}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"window": {"start_hour": 9}, "tags": ["a"], "note": "x" * 21}, schema)


def test_a_cancel_token_parameter_is_injected_not_part_of_the_schema():
    def slow_lookup(query: str, token: CancelToken) -> str:
        """Look something up."""
        return query

    tool = Tool.from_function(slow_lookup)
    assert tool.token_parameter == "token"
    assert list(tool.parameters["properties"]) == ["query"]


def test_an_explicit_schema_is_kept_and_checks_the_arguments():
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city"],
        "additionalProperties": False,
    }

    def forecast(**kwargs: object) -> str:
        return json.dumps(kwargs, sort_keys=True)

    tool = Tool.from_function(forecast, name="forecast", description="Forecast.", parameters=schema)
    assert tool.parameters == schema and tool.description == "Forecast."
    assert tool.parse_arguments('{"city": "Oslo", "days": 2}') == {"city": "Oslo", "days": 2}
    for bad in ('{"days": 2}', '{"city": "Oslo", "days": 0}', '{"city": "Oslo", "wind": 1}', "[1]", "{city"):
        with pytest.raises(ValueError):
            tool.parse_arguments(bad)


class Station:
    """Not a type pydantic can describe."""

    def __init__(self, code: str) -> None:
        self.code = code


def test_bad_tool_definitions_fail_at_registration():
    def opaque(station: Station) -> str:
        return ""

    def no_hint(location) -> str:  # type: ignore[no-untyped-def]
        return ""

    def var_args(*places: str) -> str:
        return ""

    tools = ToolRegistry([get_weather])
    with pytest.raises(ToolError, match="type hint"):
        tools.add(no_hint)
    with pytest.raises(ToolError, match="plain or keyword"):
        tools.add(var_args)
    with pytest.raises(ToolError, match="cannot build a JSON schema"):
        tools.add(opaque)
    with pytest.raises(ToolError, match="already registered"):
        tools.add(get_weather)
    with pytest.raises(ToolError, match="invalid JSON schema"):
        tools.add(set_reminder, parameters={"type": "object", "properties": {"time": {"type": "clock"}}})
    with pytest.raises(ToolError, match="type 'object'"):
        tools.add(set_reminder, parameters={"type": "string"})
    with pytest.raises(ToolError, match="tool name"):
        tools.add(set_reminder, name="set reminder")
    with pytest.raises(ToolError, match="timeout_s"):
        tools.add(set_reminder, timeout_s=0)
    assert tools.names == ["get_weather"]


def test_the_decorator_registers_and_returns_the_function():
    tools = ToolRegistry()

    @tools.tool
    def ping() -> str:
        """Answer pong."""
        return "pong"

    @tools.tool(timeout_s=2.5, cancellable=False)
    async def later(seconds: float) -> str:
        """Wait."""
        return "done"

    assert ping() == "pong"
    assert tools.names == ["ping", "later"]
    assert tools["later"].timeout_s == 2.5 and not tools["later"].cancellable
    assert tools["ping"].parameters["properties"] == {}
    assert [schema["function"]["name"] for schema in tools.schemas()] == ["ping", "later"]


def test_tool_choice_forms():
    tools = weather_registry()
    assert tools.resolve("auto") == ToolChoice("auto")
    assert tools.resolve("none") == ToolChoice("none")
    assert tools.resolve("required") == ToolChoice("required")
    assert tools.resolve("get_weather") == ToolChoice("function", "get_weather")
    assert tools.resolve({"type": "function", "name": "set_reminder"}) == ToolChoice("function", "set_reminder")
    assert tools.resolve({"type": "function", "function": {"name": "set_reminder"}}) == ToolChoice("function", "set_reminder")
    for bad in ("launch_rocket", {"type": "function"}, {"type": "tool", "name": "get_weather"}, "", 3):
        with pytest.raises(ToolError):
            tools.resolve(bad)  # type: ignore[arg-type]


# -- running calls ----------------------------------------------------------------------------
@pytest.mark.anyio
async def test_calls_return_results_and_every_failure_becomes_a_result():
    tools = weather_registry()

    @tools.tool
    async def broken(location: str) -> str:
        """Always fails."""
        raise RuntimeError(f"no station in {location}")

    @dataclass
    class Reading:
        celsius: float

    @tools.tool
    def reading() -> Reading:
        """Returns a dataclass."""
        return Reading(12.5)

    ok = await tools.call(ToolCall("get_weather", '{"location": "Paris", "days": "2"}'))
    assert ok.status is ToolStatus.OK and ok.ok
    assert json.loads(ok.output) == {"location": "Paris", "temperature": 18, "unit": "celsius", "conditions": "sunny", "days": 2}
    assert (await tools.call(ToolCall("set_reminder", '{"time": "7 pm", "message": "call mum"}'))).output == "reminder set for 7 pm: call mum"
    assert json.loads((await tools.call(ToolCall("reading", "{}"))).output) == {"celsius": 12.5}

    failed = await tools.call(ToolCall("broken", '{"location": "Atlantis"}', call_id="call_x"))
    assert failed.status is ToolStatus.ERROR and failed.call_id == "call_x"
    assert "RuntimeError: no station in Atlantis" in failed.output

    for arguments, problem in (('{"unit": "kelvin"}', "location"), ('{"location": "Rome", "wind": 3}', "wind"), ("not json", "JSON")):
        invalid = await tools.call(ToolCall("get_weather", arguments))
        assert invalid.status is ToolStatus.INVALID_ARGUMENTS and problem in invalid.output, invalid.output

    unknown = await tools.call(ToolCall("launch_rocket", "{}"))
    assert unknown.status is ToolStatus.UNKNOWN_TOOL and "launch_rocket" in unknown.output


@pytest.mark.anyio
async def test_a_slow_tool_times_out_async_or_sync():
    never = anyio.Event()
    release = threading.Event()
    tools = ToolRegistry()

    @tools.tool(timeout_s=0.05)
    async def hangs() -> str:
        """Never returns by itself."""
        await never.wait()
        return "unreachable"

    @tools.tool(timeout_s=0.05, cancellable=False)
    def blocks() -> str:
        """Blocks a worker thread."""
        release.wait(30)
        return "late"

    try:
        for name in ("hangs", "blocks"):
            result = await tools.call(ToolCall(name, "{}"))
            assert result.status is ToolStatus.TIMEOUT, result
            assert f"{name} did not finish within 0.05 s" in result.output
    finally:
        release.set()


@pytest.mark.anyio
async def test_a_cancellable_call_stops_on_cancel_and_a_non_cancellable_one_runs_on():
    started = anyio.Event()
    stopped: list[str] = []
    release = anyio.Event()
    tools = ToolRegistry()

    @tools.tool
    async def lookup() -> str:
        """Cancellable."""
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            stopped.append("lookup")
        return "unreachable"

    polling = threading.Event()

    @tools.tool
    def polls(token: CancelToken) -> str:
        """A sync tool that watches its token."""
        polling.set()
        while not token.cancelled:
            time.sleep(0.01)
        stopped.append("polls")
        return "stopped"

    @tools.tool(cancellable=False)
    async def commit() -> str:
        """Not cancellable."""
        started.set()
        await release.wait()
        return "committed"

    token = CancelToken()
    async with anyio.create_task_group() as group:
        results = []

        async def call(name: str) -> None:
            results.append(await tools.call(ToolCall(name, "{}"), token))

        group.start_soon(call, "lookup")
        await started.wait()
        token.cancel("turn_detected")
    assert results[0].status is ToolStatus.CANCELLED and stopped == ["lookup"]
    assert "interrupted" in results[0].output

    token = CancelToken()
    async with anyio.create_task_group() as group:
        results.clear()
        group.start_soon(call, "polls")
        assert await anyio.to_thread.run_sync(polling.wait, 30)
        token.cancel("turn_detected")
    assert results[0].status is ToolStatus.CANCELLED
    for _ in range(500):  # the abandoned thread notices its token by itself
        if "polls" in stopped:
            break
        await anyio.sleep(0.01)
    assert "polls" in stopped

    token, started = CancelToken(), anyio.Event()
    async with anyio.create_task_group() as group:
        results.clear()
        group.start_soon(call, "commit")
        await started.wait()
        token.cancel("turn_detected")
        await anyio.sleep(0.01)
        assert not results  # still running despite the cancel
        release.set()
    assert results[0].status is ToolStatus.OK and results[0].output == "committed"


# -- the LLM stage's tool loop with a scripted model ------------------------------------------
class ToolScriptedEngine(BlockingEngine):
    """Scripted blocking model calls.

    ``picks``: what each ``choose_tool`` returns, in order (then None);
    ``arguments``: the JSON each tool's arguments stream spells out;
    ``reply``: the answer, computed from the messages the model would see.
    """

    def __init__(self, picks: Sequence[str | None], arguments: dict[str, str], reply: Callable[[list[dict]], str]) -> None:
        self.picks = list(picks)
        self.arguments = arguments
        self.reply = reply
        self.decisions: list[ToolChoice] = []
        self.prompts: list[list[dict]] = []

    def choose_tool(self, messages, tools, choice, token) -> str | None:
        self.decisions.append(choice)
        return self.picks.pop(0) if self.picks else None

    def stream_arguments(self, messages, tool, token) -> Iterator[str]:
        text = self.arguments.get(tool.name, "{}")
        for start in range(0, len(text), 5):
            if token.cancelled:
                return
            yield text[start : start + 5]

    def stream_reply(self, messages, token, *, max_tokens=None, temperature=None) -> Iterator[str]:
        self.prompts.append(messages)
        for piece in tokens_of(self.reply(messages)):
            if token.cancelled:
                return
            yield piece


class ToolScriptedLLM(Responder):
    """The real tool loop (the Responder) over a :class:`ToolScriptedEngine`."""

    def __init__(
        self,
        *,
        picks: Sequence[str | None] = (),
        arguments: dict[str, str] | None = None,
        reply: Callable[[list[dict]], str] = lambda messages: "Okay.",
        **options: object,
    ) -> None:
        super().__init__(ToolScriptedEngine(picks, arguments or {}, reply), **options)  # type: ignore[arg-type]

    @property
    def decisions(self) -> list[ToolChoice]:
        return self.engine.decisions

    @property
    def prompts(self) -> list[list[dict]]:
        return self.engine.prompts


def answer_from_last_tool_result(messages: list[dict]) -> str:
    """Like a model that reads the result: the reply quotes the last tool message."""
    results = [m["content"] for m in messages if m["role"] == "tool"]
    return f"Here is what I found: {results[-1]}." if results else "I can answer that myself."


@dataclass
class ToolRun:
    conversation: Conversation
    llm: ToolScriptedLLM
    tts: FakeTTS
    output: MemoryOutput
    pipeline: Pipeline
    events: list

    def of(self, kind: type) -> list:
        return [event for event in self.events if isinstance(event, kind)]


async def run_turns(llm: ToolScriptedLLM, turns: Sequence[UserTurn], *, listener: Callable[[object], None] | None = None) -> ToolRun:
    conversation = Conversation()
    events: list = []
    conversation.add_listener(events.append)
    if listener is not None:
        conversation.add_listener(listener)
    tts = FakeTTS(ms_per_char=2)
    output = MemoryOutput(RATE_HZ)
    pipeline = Pipeline([ScriptedUser(turns), llm, SentenceChunker(), tts, Player(output)], conversation=conversation)
    with anyio.fail_after(60):  # a hang is a failure, not a timing threshold
        await pipeline.run()
    return ToolRun(conversation, llm, tts, output, pipeline, events)


def spoken_text(run: ToolRun, response) -> str:
    return " ".join(chunk.text for chunk in response.chunks)


@pytest.mark.anyio
async def test_round_trip_call_result_and_spoken_answer_with_a_scripted_model():
    llm = ToolScriptedLLM(
        tools=weather_registry(),
        picks=["get_weather"],
        arguments={"get_weather": '{"location": "Paris"}'},
        reply=answer_from_last_tool_result,
    )
    run = await run_turns(llm, [UserTurn("what's the weather in Paris")])

    (started,) = run.of(ToolCallStarted)
    (done,) = run.of(ToolCallDone)
    response = started.response
    assert started.call.name == "get_weather" and started.call.arguments == '{"location": "Paris"}'
    assert done.result.status is ToolStatus.OK
    assert json.loads(done.result.output)["conditions"] == "sunny"
    # history: user, call, result, then the answer; the model answered from the result
    kinds = [type(item) for item in run.conversation.items]
    assert kinds == [UserMessage, FunctionCall, FunctionCallOutput, type(response)]
    call_item, output_item = run.conversation.items[1:3]
    assert call_item.call_id == output_item.call_id == started.call.call_id
    assert output_item.output == done.result.output
    assert [m["role"] for m in llm.prompts[0]] == ["system", "user", "assistant", "tool"]
    assert llm.prompts[0][3]["content"] == done.result.output
    assert response.text == f"Here is what I found: {done.result.output}."
    # the answer was spoken and played to the end
    assert response.status is ResponseStatus.DONE
    assert spoken_text(run, response).split() == speakable(response.text).split()
    assert len(run.output.audio(response.id)) == response.played_samples > 0
    # the decisions: the first by the model (auto), then again auto after the result, which answered
    assert llm.decisions == [ToolChoice("auto"), ToolChoice("auto")]
    trace = run.pipeline.tracer.turn(response.turn_id)
    assert trace.stamps[TOOL_CALL_STARTED] <= trace.stamps[TOOL_CALL_DONE]
    # the next turn's prompt has the whole exchange, in order
    messages = run.conversation.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert messages[2]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"location": "Paris"}'}


@pytest.mark.anyio
async def test_a_failing_tool_becomes_a_result_the_model_speaks_about():
    tools = ToolRegistry()

    @tools.tool
    def get_weather(location: str) -> str:
        """Get the weather."""
        raise ConnectionError("weather service unreachable")

    llm = ToolScriptedLLM(tools=tools, picks=["get_weather"], arguments={"get_weather": '{"location": "Oslo"}'}, reply=answer_from_last_tool_result)
    run = await run_turns(llm, [UserTurn("weather in Oslo"), UserTurn("thanks")])

    (done,) = run.of(ToolCallDone)
    assert done.result.status is ToolStatus.ERROR
    assert "ConnectionError: weather service unreachable" in done.result.output
    first, second = [e.response for e in run.of(ResponseDone)]
    assert "weather service unreachable" in spoken_text(run, first)
    assert second.status is ResponseStatus.DONE  # the pipeline went on


@pytest.mark.anyio
async def test_a_slow_tool_times_out_and_the_answer_says_so():
    tools = ToolRegistry()
    never = anyio.Event()

    @tools.tool(timeout_s=0.05)
    async def get_weather(location: str) -> str:
        """Get the weather."""
        await never.wait()
        return "unreachable"

    llm = ToolScriptedLLM(tools=tools, picks=["get_weather"], arguments={"get_weather": '{"location": "Oslo"}'}, reply=answer_from_last_tool_result)
    run = await run_turns(llm, [UserTurn("weather in Oslo")])
    (done,) = run.of(ToolCallDone)
    assert done.result.status is ToolStatus.TIMEOUT
    (finished,) = run.of(ResponseDone)
    assert "did not finish within 0.05 s" in spoken_text(run, finished.response)


@pytest.mark.anyio
async def test_barge_in_cancels_a_cancellable_call_and_the_next_turn_is_answered():
    tools = ToolRegistry()
    running = anyio.Event()
    outcome: list[str] = []

    @tools.tool(timeout_s=30)
    async def get_weather(location: str) -> str:
        """Get the weather (slowly)."""
        running.set()
        try:
            await anyio.sleep_forever()
        except BaseException:
            outcome.append("cancelled")
            raise
        return "unreachable"

    llm = ToolScriptedLLM(tools=tools, picks=["get_weather"], arguments={"get_weather": '{"location": "Oslo"}'}, reply=answer_from_last_tool_result)
    turns = [UserTurn("weather in Oslo"), UserTurn("never mind, tell me a joke", when=lambda c: running.is_set())]
    run = await run_turns(llm, turns)

    assert outcome == ["cancelled"]
    (done,) = run.of(ToolCallDone)
    first = done.response
    assert done.result.status is ToolStatus.CANCELLED
    assert first.status is ResponseStatus.CANCELLED and first.cancel_reason == "turn_detected"
    assert first.text == "" and run.output.audio(first.id).size == 0
    (answered,) = run.of(ResponseDone)
    assert answered.response.text == f"Here is what I found: {done.result.output}."
    # the cancelled call and its result stay in the history, before the next turn
    roles = [m["role"] for m in run.conversation.messages()]
    assert roles == ["system", "user", "assistant", "tool", "user", "assistant"]


@pytest.mark.anyio
async def test_words_that_come_after_a_false_interruption_still_supersede_a_waiting_call():
    """The barge-in policy resumes a paused response when no words come in time; if they come
    later while a tool runs, the LLM stage is not reading frames, so the final transcript
    supersedes the waiting response right away instead of after the tool's timeout."""
    tools = ToolRegistry()
    running = anyio.Event()
    outcome: list[str] = []

    @tools.tool(timeout_s=30)
    async def get_weather(location: str) -> str:
        """Get the weather (slowly)."""
        running.set()
        try:
            await anyio.sleep_forever()
        finally:
            outcome.append("stopped")
        return "unreachable"

    llm = ToolScriptedLLM(tools=tools, picks=["get_weather"], arguments={"get_weather": '{"location": "Oslo"}'})
    slow_words = UserTurn("actually, tell me a joke", when=lambda c: running.is_set(), final_after_ms=3000)
    run = await run_turns(llm, [UserTurn("weather in Oslo"), slow_words])

    assert outcome == ["stopped"]
    (done,) = run.of(ToolCallDone)
    assert done.result.status is ToolStatus.CANCELLED
    assert [type(e).__name__ for e in run.events if getattr(e, "response", None) is done.response][-3:] == [
        "ResponseResumed", "ResponseInterrupted", "ToolCallDone",
    ]
    assert done.response.cancel_reason == "superseded"
    (answered,) = run.of(ResponseDone)
    assert answered.response.user_text == "actually, tell me a joke"


@pytest.mark.anyio
async def test_barge_in_during_a_non_cancellable_call_lets_the_next_turn_go_on():
    tools = ToolRegistry()
    running = anyio.Event()
    release = anyio.Event()
    finished: list[str] = []

    @tools.tool(cancellable=False, timeout_s=30)
    async def set_reminder(time: str, message: str) -> str:
        """Set a reminder (must not be cut halfway)."""
        running.set()
        await release.wait()
        finished.append(message)
        return f"reminder set for {time}"

    finished_when_answered: list[bool] = []

    def on_event(event: object) -> None:
        if isinstance(event, ResponseDone):  # the next turn is answered while the reminder is being set
            finished_when_answered.append(bool(finished))
            release.set()

    llm = ToolScriptedLLM(
        tools=tools,
        picks=["set_reminder"],
        arguments={"set_reminder": '{"time": "7 pm", "message": "call mum"}'},
        reply=lambda messages: "Sure.",
    )
    turns = [UserTurn("remind me at seven to call mum"), UserTurn("and what's the time", when=lambda c: running.is_set())]
    run = await run_turns(llm, turns, listener=on_event)

    assert finished_when_answered == [False]
    assert finished == ["call mum"]
    (done,) = run.of(ToolCallDone)
    assert done.result.status is ToolStatus.OK and done.response.status is ResponseStatus.CANCELLED
    (answered,) = run.of(ResponseDone)
    assert answered.response is not done.response
    # the late result went into the history next to its call, before the next turn
    items = run.conversation.items
    assert [type(item).__name__ for item in items] == ["UserMessage", "FunctionCall", "FunctionCallOutput", "Response", "UserMessage", "Response"]
    assert items[2].output == "reminder set for 7 pm"


@pytest.mark.anyio
async def test_consecutive_calls_are_bounded_by_max_tool_calls():
    llm = ToolScriptedLLM(
        tools=weather_registry(),
        picks=["get_weather"] * 10,
        arguments={"get_weather": '{"location": "Paris"}'},
        reply=answer_from_last_tool_result,
        max_tool_calls=2,
    )
    run = await run_turns(llm, [UserTurn("weather")])
    assert len(run.of(ToolCallDone)) == 2
    assert len(llm.decisions) == 2  # the third step was forced to answer without asking the model
    assert run.of(ResponseDone)[0].response.text.startswith("Here is what I found")


@pytest.mark.anyio
async def test_tool_choice_guarantees_hold_whatever_the_model_picks():
    arguments = {"get_weather": '{"location": "Paris"}', "set_reminder": '{"time": "9", "message": "x"}'}

    async def calls_made(**options: object) -> tuple[list[str], ToolScriptedLLM]:
        llm = ToolScriptedLLM(tools=weather_registry(), arguments=arguments, **options)  # type: ignore[arg-type]
        run = await run_turns(llm, [UserTurn("hello")])
        assert run.of(ResponseDone)
        return [event.call.name for event in run.of(ToolCallStarted)], llm

    # none: the model is never asked and nothing is called
    names, llm = await calls_made(tool_choice="none", picks=["get_weather"])
    assert names == [] and llm.decisions == []
    # a named tool: called without asking the model, then the follow-up decision is the model's
    names, llm = await calls_made(tool_choice="set_reminder", picks=[None])
    assert names == ["set_reminder"] and llm.decisions == [ToolChoice("auto")]
    # required: the model's pick among the tools...
    names, llm = await calls_made(tool_choice="required", picks=["set_reminder", None])
    assert names == ["set_reminder"] and llm.decisions[0] == ToolChoice("required")
    # ...and a tool is called even if the model picks none
    names, _ = await calls_made(tool_choice="required", picks=[None, None])
    assert names == ["get_weather"]
    # auto: a name that is no tool means "answer"
    names, _ = await calls_made(tool_choice="auto", picks=["launch_rocket"])
    assert names == []
    # follow-up "none": one call, then the answer without asking the model again
    names, llm = await calls_made(tool_choice="get_weather", followup_tool_choice="none", picks=["get_weather"])
    assert names == ["get_weather"] and llm.decisions == []


def test_stage_options_are_checked():
    with pytest.raises(ToolError):
        ToolScriptedLLM(tools=weather_registry(), tool_choice="launch_rocket")
    with pytest.raises(ToolError):
        ToolScriptedLLM(tools=weather_registry(), followup_tool_choice="required")
    with pytest.raises(ValueError):
        ToolScriptedLLM(tools=weather_registry(), max_tool_calls=-1)


# -- history rendering ----------------------------------------------------------------------
def test_history_with_tool_items_renders_for_plain_chat_templates():
    conversation = Conversation("Be brief.")
    response = conversation.begin_response(1, "weather in Paris?")
    conversation.add_item(FunctionCall(1, "call_a", "get_weather", '{"location": "Paris"}'), before=response)
    conversation.add_item(FunctionCallOutput(1, "call_a", '{"conditions": "sunny"}'), before=response)
    messages = conversation.messages()
    assert messages[1:] == [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": '{"conditions": "sunny"}'},
    ]
    rendered = render_for_template(messages)
    assert rendered == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "weather in Paris?"},
        {"role": "system", "content": 'Tool result of get_weather({"location": "Paris"}): {"conditions": "sunny"}\nAnswer the user with this result.'},
    ]
    # once answered, the result is a plain fact and the answer follows it
    response.add_text("It is sunny.")
    conversation.complete_response(response)
    rendered = render_for_template(conversation.messages())
    assert [m["role"] for m in rendered] == ["system", "user", "system", "assistant"]
    assert rendered[2]["content"].endswith('{"conditions": "sunny"}')
    # trimming never starts the history with a tool call or result: it cuts before a user message
    conversation.max_history_messages = 4
    assert [m["role"] for m in conversation.messages()] == ["system", "user", "assistant", "tool", "assistant"]
    conversation.max_history_messages = 3
    assert [m["role"] for m in conversation.messages()] == ["system", "user", "assistant", "tool", "assistant"]
    conversation.begin_response(2, "and tomorrow?")
    assert [m["role"] for m in conversation.messages()] == ["system", "user"]


# -- the argument grammar's schema helpers ----------------------------------------------------
def test_bounded_schema_caps_free_strings_and_arrays_and_bounds_the_json_length():
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "code": {"type": "string", "maxLength": 3},
            "unit": {"type": "string", "enum": ["c", "f"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "days": {"type": "integer"},
            "window": {"$ref": "#/$defs/Window"},
        },
        "required": ["city"],
        "additionalProperties": False,
        "$defs": {"Window": {"type": "object", "properties": {"open": {"type": "boolean"}}, "required": ["open"]}},
    }
    capped, max_chars = bounded_schema(schema, max_string_chars=10, max_items=2)
    properties = capped["properties"]
    assert properties["city"]["maxLength"] == 10 and properties["code"]["maxLength"] == 3
    assert "maxLength" not in properties["unit"]
    assert properties["tags"]["maxItems"] == 2 and properties["tags"]["items"]["maxLength"] == 10
    assert "maxLength" not in schema["properties"]["city"]  # the tool's own schema is untouched
    # the longest value the capped schema admits (every character escaped) fits the bound
    longest = {"city": "\x00"[:1] * 10, "code": '"' * 3, "unit": "c", "tags": ["\u0001" * 10] * 2, "days": -(10**15), "window": {"open": False}}
    jsonschema.validate(longest, capped)
    jsonschema.validate(longest, schema)
    assert len(json.dumps(longest, ensure_ascii=True)) <= max_chars

    assert bounded_schema({"type": "object", "properties": {"id": {"type": "string", "pattern": "^[a-z]+$"}}}, max_string_chars=5, max_items=2)[1] is None
    assert bounded_schema({"type": "object", "additionalProperties": True}, max_string_chars=5, max_items=2)[1] is None
    recursive = {"type": "object", "properties": {"child": {"$ref": "#/$defs/Node"}}, "$defs": {"Node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Node"}}}}}
    assert bounded_schema(recursive, max_string_chars=5, max_items=2)[1] is None


def test_keywords_the_grammar_cannot_enforce_are_found():
    schema = {
        "type": "object",
        "properties": {"minimum": {"type": "integer"}, "hour": {"type": "integer", "minimum": 0, "maximum": 23}, "tags": {"type": "array", "uniqueItems": True}},
        "$defs": {"X": {"type": "number", "multipleOf": 5}},
    }
    assert unenforced_keywords(schema) == {"minimum", "maximum", "uniqueItems", "multipleOf"}
    assert unenforced_keywords(Tool.from_function(get_weather).parameters) == set()


def test_the_argument_grammar_keeps_raw_control_characters_out_of_strings():
    # llama-cpp-python's converter admits any character but quote and backslash in a string;
    # strict JSON forbids raw control characters (a model rambling over several lines).
    gbnf = json_gbnf(json.dumps(Tool.from_function(set_reminder).parameters))
    (char_rule,) = [line for line in gbnf.splitlines() if line.startswith("char ::=")]
    assert char_rule.startswith('char ::= [^"\\\\\\x7F\\x00-\\x1F] |'), char_rule
