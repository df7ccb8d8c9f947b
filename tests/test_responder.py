"""One Responder for every front end: the CLI's pipeline and the Realtime server answer a real
spoken turn through the same class (a copy on either side would not be counted), and the
responder's contract with its engine (tool-call pieces, a failing engine, engine switches)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio
import pytest
from conftest import SPEECH_DIR
from openai import AsyncOpenAI
from server_support import Client, RunningServer, speech_24k

from realtime_pipeline import MemoryOutput, Pipeline, WavFileSource, voice_pipeline
from realtime_pipeline.pipeline import StageError
from realtime_pipeline.conversation import Conversation, FunctionCall, FunctionCallOutput
from realtime_pipeline.frames import TranscriptFinal
from realtime_pipeline.llm_engine import BlockingEngine, EngineSwitched, LLMRequest, TextPiece, ToolCallPiece
from realtime_pipeline.responder import LLM_ENGINE, EngineSwitchedEvent, Responder, RunTools, ToolStrategy
from realtime_pipeline.server import ServerOptions, SessionOptions
from realtime_pipeline.server.responses import ClientTools
from realtime_pipeline.stage import Stage

from fakes import ScriptedUser, UserTurn


@pytest.fixture
def generations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tool strategy of every generation the Responder class runs (the server runs in another thread)."""
    seen: list[str] = []
    original = Responder._generation

    async def counted(self, ctx, response, outbox, request, strategy):  # type: ignore[no-untyped-def]
        seen.append(type(strategy).__name__)
        return await original(self, ctx, response, outbox, request, strategy)

    monkeypatch.setattr(Responder, "_generation", counted)
    return seen


@pytest.mark.models
@pytest.mark.anyio
async def test_the_cli_pipeline_and_the_server_answer_a_spoken_turn_through_the_same_responder(asr, llm, tts, engines, generations):
    output = MemoryOutput(tts.output_sample_rate_hz, paced=False)
    pipeline = voice_pipeline(WavFileSource([SPEECH_DIR / "mfa_thoughts.wav"], realtime=True), output, asr=asr, llm=llm, tts=tts)
    await pipeline.run()
    assert pipeline.conversation.entries()[-1].role == "assistant" and pipeline.conversation.entries()[-1].content
    assert generations and set(generations) == {"RunTools"}

    with RunningServer(engines, ServerOptions(session=SessionOptions(output_lead_ms=300))) as server:
        client = AsyncOpenAI(api_key="local", websocket_base_url=server.base_url)
        async with client.realtime.connect(model="gpt-realtime") as connection:
            events = Client(connection, "ga")
            await events.until("session.created", 30)
            await events.send({"type": "session.update", "session": {"type": "realtime", "max_output_tokens": 16}})
            await events.until("session.updated", 30)
            await events.append_audio(speech_24k("mfa_thoughts.wav"))
            done = await events.until("response.done", 180)
    assert done["response"]["status"] == "completed"
    assert "ClientTools" in generations  # the server's responses went through Responder too


# -- the responder's contract with an engine (scripted engines) ------------------------------------
class PieceEngine(BlockingEngine):
    """An engine whose stream is a script of pieces per generation (then plain text)."""

    label = "scripted"

    def __init__(self, scripts: list[list[object]]) -> None:
        self.scripts = scripts
        self.requests: list[LLMRequest] = []

    async def stream(self, request: LLMRequest, token) -> AsyncIterator[object]:  # type: ignore[override]
        self.requests.append(request)
        for piece in self.scripts.pop(0) if self.scripts else [TextPiece("Done.")]:
            await anyio.sleep(0)
            yield piece


class OneTurn(Stage):
    name = "user"

    def __init__(self, text: str) -> None:
        self.text = text

    async def run(self, ctx, inbox, outbox) -> None:
        await outbox.send(TranscriptFinal(turn_id=ctx.conversation.new_turn_id(), text=self.text, audio_start_ms=0, audio_end_ms=1000))


class Sink(Stage):
    name = "sink"

    def __init__(self) -> None:
        self.frames: list[object] = []

    async def run(self, ctx, inbox, outbox) -> None:
        async for frame in inbox:
            self.frames.append(frame)
            response = getattr(frame, "response", None)
            if type(frame).__name__ == "ResponseEnd" and response is not None:
                ctx.conversation.complete_response(response)


def weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@pytest.mark.anyio
async def test_tool_call_pieces_become_a_call_its_result_and_then_the_answer():
    engine = PieceEngine([
        [ToolCallPiece(0, name="weather", call_id="call_a"), ToolCallPiece(0, arguments='{"city": '), ToolCallPiece(0, arguments='"Paris"}')],
        [TextPiece("It is "), TextPiece("sunny.")],
    ])
    responder = Responder(engine, tools=[weather])
    pipeline = Pipeline([OneTurn("Weather in Paris?"), responder, Sink()])
    await pipeline.run()
    items = pipeline.conversation.items
    call = next(item for item in items if isinstance(item, FunctionCall))
    output = next(item for item in items if isinstance(item, FunctionCallOutput))
    assert (call.name, call.call_id, call.arguments) == ("weather", "call_a", '{"city": "Paris"}')
    assert output.call_id == "call_a" and output.output == "sunny in Paris"
    assert pipeline.conversation.entries()[-1].content == "It is sunny."
    assert engine.requests[0].tool_choice.mode == "auto" and len(engine.requests[0].tools) == 1
    # the second request carries the call and its result, in the Chat Completions form
    roles = [message["role"] for message in engine.requests[1].messages]
    assert roles[-2:] == ["assistant", "tool"]


@pytest.mark.anyio
async def test_a_restarted_argument_pass_voids_the_arguments_written_before():
    engine = PieceEngine([[ToolCallPiece(0, name="weather"), ToolCallPiece(0, arguments='{"city": "Parisssss'),
                           ToolCallPiece(0, restart=True), ToolCallPiece(0, arguments='{"city": "Rome"}')]])
    pipeline = Pipeline([OneTurn("Weather?"), Responder(engine, tools=[weather]), Sink()])
    await pipeline.run()
    call = next(item for item in pipeline.conversation.items if isinstance(item, FunctionCall))
    assert call.arguments == '{"city": "Rome"}'


@pytest.mark.anyio
async def test_an_engine_switch_is_in_the_trace_and_the_events():
    engine = PieceEngine([[EngineSwitched("local llama", "no first token within 1.5 s"), TextPiece("Hello.")]])
    events: list[object] = []
    conversation = Conversation()
    conversation.add_listener(events.append)
    pipeline = Pipeline([OneTurn("Hi"), Responder(engine), Sink()], conversation=conversation)
    await pipeline.run()
    switched = [event for event in events if isinstance(event, EngineSwitchedEvent)]
    assert [(event.label, event.reason) for event in switched] == [("local llama", "no first token within 1.5 s")]
    turn = switched[0].response.turn_id
    assert pipeline.tracer.turn(turn).texts[LLM_ENGINE] == "local llama (no first token within 1.5 s)"


@pytest.mark.anyio
async def test_a_failing_engine_stops_the_pipeline_with_a_stage_error_naming_the_llm():
    class Failing(PieceEngine):
        async def stream(self, request, token):  # type: ignore[override]
            raise RuntimeError("model exploded")
            yield  # pragma: no cover

    with pytest.raises(StageError) as raised:
        await Pipeline([OneTurn("Hi"), Responder(Failing([])), Sink()]).run()
    assert raised.value.stage_name == "llm" and "model exploded" in str(raised.value)


def test_the_pipeline_runs_tools_itself_and_the_server_hands_them_to_its_client():
    assert isinstance(Responder(PieceEngine([])).strategy, RunTools)
    assert issubclass(ClientTools, ToolStrategy) and not issubclass(ClientTools, RunTools)


@pytest.mark.anyio
async def test_a_listener_that_raises_is_logged_and_the_conversation_goes_on(caplog):
    def broken(event: object) -> None:
        raise ValueError("app bug")

    seen: list[object] = []
    conversation = Conversation()
    conversation.add_listener(broken)
    conversation.add_listener(seen.append)
    turns = [UserTurn("Hello there.")]
    with caplog.at_level(logging.ERROR, logger="realtime_pipeline.conversation"):
        pipeline = Pipeline([ScriptedUser(turns), Responder(PieceEngine([[TextPiece("Hi.")]])), Sink()], conversation=conversation)
        await pipeline.run()
    assert conversation.listener_errors > 0 and "app bug" in caplog.text
    assert seen and conversation.entries()[-1].content == "Hi."


@pytest.mark.models
@pytest.mark.anyio
async def test_the_server_speculates_in_the_pause_and_plays_the_held_reply_when_the_turn_ends_there(engines, monkeypatch):
    """A microphone-paced turn (semantic_vad): the reply is prepared from the ASR's preview during
    the end-of-turn silence, committed when the turn ends there, and the wire sees one ordinary
    response (events validated strictly by the SDK's models), the user's words once."""
    from realtime_pipeline.server.responses import ResponsesMixin

    committed: list[bool] = []
    commit = ResponsesMixin._commit_speculation

    def counted(self):  # type: ignore[no-untyped-def]
        commit(self)
        committed.append(self._speculating is not None and self._speculating.state is not None)

    monkeypatch.setattr(ResponsesMixin, "_commit_speculation", counted)
    with RunningServer(engines, ServerOptions(session=SessionOptions(output_lead_ms=300))) as server:
        client = AsyncOpenAI(api_key="local", websocket_base_url=server.base_url)
        async with client.realtime.connect(model="gpt-realtime") as connection:
            events = Client(connection, "ga")
            await events.until("session.created", 30)
            await events.send({"type": "session.update", "session": {
                "type": "realtime", "max_output_tokens": 16, "audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}})
            await events.until("session.updated", 30)
            start = len(events.events)
            await events.append_audio(speech_24k("mfa_thoughts.wav"), realtime=True, trailing_silence_ms=4000)
            done = await events.until("response.done", 120)
            turn = events.since(start)
    assert True in committed  # the reply that played was the speculative one
    assert done["response"]["status"] == "completed"
    assert sum(1 for e in turn if e["type"] == "response.created") == 1
    assert any(e["type"] == "response.output_audio.delta" for e in turn)
    user_items = [e for e in turn if e["type"] == "conversation.item.added" and e["item"].get("role") == "user"]
    assert len(user_items) == 1
    transcript = next(e for e in turn if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert "thousand thoughts" in transcript["transcript"].lower()
