"""Function calling on the real embedded models: SmolLM2-135M writes the calls, Piper speaks
the answers, Whisper hears the questions.

What is asserted is what the library guarantees (a forced or required call happens; arguments
parse and match the schema; the result reaches the history and the spoken answer; a barge-in
cancels the call). Which tool the model picks under ``auto`` is the model's choice and is only
checked to be a valid outcome.
"""

from __future__ import annotations

import json
from typing import Literal

import anyio
import jsonschema
import numpy as np
import pytest

from conftest import normalize_text
from realtime_pipeline import (
    CancelToken,
    Conversation,
    MemoryOutput,
    MemorySource,
    Pipeline,
    Player,
    ResponseStatus,
    SentenceChunker,
    Stage,
    StageContext,
    Tracer,
    TranscriptFinal,
    voice_pipeline,
)
from realtime_pipeline.audio import INPUT_SAMPLE_RATE_HZ, resample
from realtime_pipeline.conversation import FunctionCall, FunctionCallOutput, ResponseDone, UserMessage
from realtime_pipeline.io.sources import PacedEmitter
from realtime_pipeline.response import Response
from realtime_pipeline.stages.chunker import speakable
from realtime_pipeline.stages.llm import LlamaLLM
from realtime_pipeline.tools import ToolCallDone, ToolCallStarted, ToolChoice, ToolRegistry, ToolStatus

pytestmark = pytest.mark.models

WEATHER = {"temperature_c": 18, "conditions": "sunny with a light breeze"}


def get_weather(location: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict:
    """Get the current weather for a location.

    Args:
        location: The city, e.g. "Paris".
        unit: Temperature unit.
    """
    return {"location": location, **WEATHER}


def set_reminder(time: str, message: str) -> str:
    """Set a reminder.

    Args:
        time: When to remind the user, e.g. "7 pm".
        message: What to remind the user of.
    """
    return f"Reminder set for {time}: {message}"


# An explicit schema with the constraints the grammar must honour: integers, an enum, a
# boolean, a nested object with a bounded string and a bounded array of enums.
ALARM_SCHEMA = {
    "type": "object",
    "properties": {
        "hour": {"type": "integer"},
        "minute": {"type": "integer"},
        "repeat": {"type": "string", "enum": ["once", "daily", "weekdays"]},
        "vibrate": {"type": "boolean"},
        "label": {"type": "object", "properties": {"text": {"type": "string", "maxLength": 30}}, "required": ["text"], "additionalProperties": False},
        "days": {"type": "array", "items": {"type": "string", "enum": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]}, "maxItems": 7},
    },
    "required": ["hour", "minute", "repeat", "vibrate", "label"],
    "additionalProperties": False,
}


def set_alarm(**arguments: object) -> str:
    return "alarm set"


def registry() -> ToolRegistry:
    tools = ToolRegistry()
    tools.add(get_weather)
    tools.add(set_reminder, cancellable=False)
    tools.add(set_alarm, name="set_alarm", description="Set an alarm clock.", parameters=ALARM_SCHEMA)
    return tools


@pytest.fixture(scope="module")
def tool_llm() -> LlamaLLM:
    stage = LlamaLLM(seed=7, max_tokens=60, temperature=0.0, tools=registry(), max_tool_calls=1)
    anyio.run(stage.setup, StageContext(Conversation(), Tracer()))
    return stage


def chat(question: str) -> list[dict]:
    return Conversation().messages() + [{"role": "user", "content": question}]


REQUESTS = [
    ("get_weather", "What's the weather like in Paris today?"),
    ("get_weather", "Is it going to rain in London? Tell me in fahrenheit."),
    ("set_reminder", "Remind me at 7 pm to call my mother."),
    ("set_reminder", "Remind me at 7pm to call my mother."),
    ("set_alarm", "Wake me up at six thirty every weekday."),
    ("set_alarm", "What is the capital of France?"),  # the tool is forced even where it makes no sense
]


@pytest.mark.parametrize(("name", "question"), REQUESTS)
def test_forced_tool_choice_on_the_real_model_yields_schema_valid_arguments(tool_llm, name, question):
    tool = tool_llm.tools[name]
    arguments = tool_llm.arguments_text(chat(question), tool, CancelToken())
    data = json.loads(arguments)
    jsonschema.validate(data, dict(tool.parameters))
    assert tool.parse_arguments(arguments) is not None


def test_arguments_cut_off_by_the_token_budget_are_decoded_again_within_capped_strings(tool_llm, monkeypatch):
    monkeypatch.setattr(tool_llm.engine, "max_argument_tokens", 4)  # far too few: the first pass cannot finish
    for name, question in REQUESTS[2:5]:
        tool = tool_llm.tools[name]
        arguments = tool_llm.arguments_text(chat(question), tool, CancelToken())
        jsonschema.validate(json.loads(arguments), dict(tool.parameters))


def test_the_weather_arguments_come_from_the_request(tool_llm):
    tool = tool_llm.tools["get_weather"]
    arguments = json.loads(tool_llm.arguments_text(chat("What's the weather like in Paris today?"), tool, CancelToken()))
    assert arguments["location"].lower().startswith("paris")


@pytest.mark.parametrize("choice", ["required", "auto"])
def test_the_models_pick_is_always_a_valid_outcome(tool_llm, choice):
    for _, question in REQUESTS[:3]:
        picked = tool_llm.choose_tool(chat(question), tool_llm.tools, ToolChoice(choice), CancelToken())
        assert picked in tool_llm.tools.names or (choice == "auto" and picked is None)


class Finals(Stage):
    """Sends one final transcript per question, each after the previous reply."""

    name = "finals"

    def __init__(self, questions: list[str]) -> None:
        self.questions = questions

    async def run(self, ctx, inbox, outbox):
        for turn_id, question in enumerate(self.questions, start=1):
            await outbox.send(TranscriptFinal(turn_id, question, 0, 1000))
            await anyio.sleep(0.05)
            await ctx.conversation.wait_idle()


@pytest.mark.anyio
async def test_round_trip_on_the_real_model_call_result_and_spoken_answer(tool_llm, tts, monkeypatch):
    monkeypatch.setattr(tool_llm, "tool_choice", ToolChoice("function", "get_weather"))
    output = MemoryOutput(tts.output_sample_rate_hz)
    pipeline = Pipeline([Finals(["What's the weather like in Paris today?"]), tool_llm, SentenceChunker(), tts, Player(output)])
    events: list = []
    pipeline.conversation.add_listener(events.append)
    with anyio.fail_after(120):
        await pipeline.run()

    (started,) = [e for e in events if isinstance(e, ToolCallStarted)]
    (done,) = [e for e in events if isinstance(e, ToolCallDone)]
    jsonschema.validate(json.loads(started.call.arguments), dict(tool_llm.tools["get_weather"].parameters))
    assert done.result.status is ToolStatus.OK and WEATHER["conditions"] in done.result.output
    items = pipeline.conversation.items
    assert [type(item) for item in items] == [UserMessage, FunctionCall, FunctionCallOutput, Response]
    response = items[-1]
    assert response.status is ResponseStatus.DONE
    # the answer uses the result (greedy decoding: deterministic for this model and prompt)
    assert "sunny" in response.text.lower(), response.text
    # and it was spoken: every word of it went through Piper and was played
    assert " ".join(chunk.text for chunk in response.chunks).split() == speakable(response.text).split()
    assert len(output.audio(response.id)) == response.played_samples > 0


def speech(tts, text: str) -> np.ndarray:
    """``text`` spoken by the embedded Piper voice, at the input rate."""
    return resample(tts.synthesize(text, CancelToken()), tts.output_sample_rate_hz, INPUT_SAMPLE_RATE_HZ)


@pytest.mark.anyio
async def test_a_spoken_question_gets_a_spoken_answer_from_a_tool(tool_llm, asr, tts, monkeypatch):
    monkeypatch.setattr(tool_llm, "tool_choice", ToolChoice("required"))
    output = MemoryOutput(tts.output_sample_rate_hz)
    source = MemorySource([speech(tts, "What's the weather like in London today?")], INPUT_SAMPLE_RATE_HZ, realtime=False)
    pipeline = voice_pipeline(source, output, asr=asr, llm=tool_llm, tts=tts)
    events: list = []
    pipeline.conversation.add_listener(events.append)
    with anyio.fail_after(120):
        await pipeline.run()

    (response,) = [item for item in pipeline.conversation.items if isinstance(item, Response)]
    assert "weather" in normalize_text(response.user_text) and "london" in normalize_text(response.user_text)
    (started,) = [e for e in events if isinstance(e, ToolCallStarted)]
    assert started.call.name in tool_llm.tools.names  # which one is the model's pick; that one is called is ours
    jsonschema.validate(json.loads(started.call.arguments), dict(tool_llm.tools[started.call.name].parameters))
    assert response.status is ResponseStatus.DONE and response.text.strip()
    assert len(output.audio(response.id)) == response.played_samples > 0


class GatedSource(Stage):
    """A microphone in real time: turn 1, then silence until ``gate`` is set, turn 2, silence until idle."""

    name = "source"

    def __init__(self, first: np.ndarray, second: np.ndarray, gate: anyio.Event) -> None:
        self.first, self.second, self.gate = first, second, gate

    async def run(self, ctx, inbox, outbox):
        mic = PacedEmitter(outbox)
        conversation = ctx.conversation
        await mic.silence(300)
        await mic.emit(self.first)
        await mic.silence_until(self.gate.is_set)
        await mic.emit(self.second)
        await mic.silence(1000)
        heard = mic.position
        await mic.silence_until(lambda: conversation.audio_processed_samples >= heard and conversation.idle)


@pytest.mark.anyio
async def test_speaking_during_a_slow_tool_call_cancels_it_and_the_new_turn_is_answered(asr, tts):
    running = anyio.Event()
    outcome: list[str] = []
    tools = ToolRegistry()

    @tools.tool(timeout_s=60)
    async def get_weather(location: str) -> dict:
        """Get the current weather for a location (a slow service the first time)."""
        if not running.is_set():
            running.set()
            try:
                await anyio.sleep_forever()
            finally:
                outcome.append("stopped")
        return {"location": location, **WEATHER}

    llm = LlamaLLM(seed=7, max_tokens=40, temperature=0.0, tools=tools, tool_choice="get_weather", max_tool_calls=1)
    output = MemoryOutput(tts.output_sample_rate_hz)
    source = GatedSource(speech(tts, "What's the weather like in Paris?"), speech(tts, "Never mind, tell me about Berlin."), running)
    pipeline = voice_pipeline(source, output, asr=asr, llm=llm, tts=tts)
    events: list = []
    pipeline.conversation.add_listener(events.append)
    with anyio.fail_after(120):
        await pipeline.run()

    assert outcome == ["stopped"]  # the pending call was cancelled, not left running
    dones = [e for e in events if isinstance(e, ToolCallDone)]
    first_done = dones[0]
    assert first_done.result.status is ToolStatus.CANCELLED
    # cancelled as an interruption, or, if the barge-in policy took the speech for a false
    # interruption before Whisper had its words (a loaded CPU), superseded by its final transcript
    assert first_done.response.status is ResponseStatus.CANCELLED
    assert first_done.response.cancel_reason in ("turn_detected", "superseded")
    assert first_done.response.text == ""
    (answered,) = [e.response for e in events if isinstance(e, ResponseDone)]
    assert "berlin" in normalize_text(answered.user_text)
    # the second utterance may split into two VAD turns (a pause after "never mind"): a call made for
    # the first part is superseded; exactly one call belongs to the answer, and it succeeded
    (second_done,) = [d for d in dones[1:] if d.response is answered]
    assert second_done.result.status is ToolStatus.OK
    assert all(d.response.status is ResponseStatus.CANCELLED for d in dones[1:] if d is not second_done)
    assert answered.text.strip() and len(output.audio(answered.id)) == answered.played_samples > 0
