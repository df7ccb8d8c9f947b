"""OpenAIEngine and FailoverEngine against a real OpenAI-compatible server: ``python -m
llama_cpp.server`` serving the embedded SmolLM2 on 127.0.0.1 (tests/llama_server.py)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Literal

import anyio
import pytest

from conftest import SPEECH_DIR, normalize_text
from benchmarks.llama_server import MODEL_NAME, LlamaServer
from test_cli import run_cli
from realtime_pipeline import MemoryOutput, ResponseStatus, WavFileSource, read_wav, voice_pipeline
from realtime_pipeline.audio import speech_level_dbfs
from realtime_pipeline.response import Response
from realtime_pipeline.responder import LLM_ENGINE, EngineSwitchedEvent
from realtime_pipeline.cancellation import CancelToken
from realtime_pipeline.failover import NO_FIRST_TOKEN, PRIMARY_DOWN, PRIMARY_FAILED, FailoverEngine
from realtime_pipeline.llm_engine import EngineSwitched, LLMEngine, LLMEngineError, LLMRequest, TextPiece, ToolCallPiece
from realtime_pipeline.server.app import free_port
from realtime_pipeline.stages.openai_llm import OpenAIEngine, OpenAILLM
from realtime_pipeline.tools import ToolChoice, as_registry

pytestmark = pytest.mark.models

#: Guard against a hung stream (a test failure, not a timing threshold).
HANG_GUARD_S = 60.0
SYSTEM = {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."}


def question(text: str) -> list[dict[str, str]]:
    return [SYSTEM, {"role": "user", "content": text}]


CITIES = ("Paris", "London", "Tokyo")


def get_weather(city: Literal["Paris", "London", "Tokyo"]) -> str:
    """Get the current weather in a city.

    Args:
        city: The name of the city.
    """
    return f"Sunny and 24 degrees Celsius in {city}."


@pytest.fixture(scope="session")
def llama_server():
    """One model server for the whole test session (each test that kills or freezes a server starts its own)."""
    with LlamaServer() as server:
        yield server


async def collect(engine: LLMEngine, request: LLMRequest, token: CancelToken | None = None) -> list:
    with anyio.fail_after(HANG_GUARD_S):
        return [piece async for piece in engine.stream(request, token or CancelToken())]


def text_of(pieces: list) -> str:
    return "".join(piece.text for piece in pieces if isinstance(piece, TextPiece))


@pytest.mark.anyio
async def test_a_reply_streams_as_text_pieces_and_the_server_lists_the_model(llama_server):
    engine = OpenAIEngine(llama_server.base_url, max_tokens=24, temperature=0.0)
    await engine.start()
    try:
        assert engine.model == MODEL_NAME  # none given: the first one the server lists
        pieces = await collect(engine, LLMRequest(question("What is the capital of France?")))
        assert len(pieces) > 1 and all(isinstance(piece, TextPiece) for piece in pieces)
        assert text_of(pieces).strip()
    finally:
        await engine.aclose()


@pytest.mark.anyio
async def test_a_cancelled_token_ends_the_stream_and_the_server_serves_the_next_request(llama_server):
    engine = OpenAIEngine(llama_server.base_url, max_tokens=200, temperature=0.0)
    await engine.start()
    try:
        token = CancelToken()
        pieces = []
        with anyio.fail_after(HANG_GUARD_S):
            async for piece in engine.stream(LLMRequest(question("Tell me a long story about a dragon.")), token):
                pieces.append(piece)
                if len(pieces) == 3:
                    token.cancel("barge-in")
        assert len(pieces) == 3  # nothing after the cancel
        after = await collect(engine, LLMRequest(question("Say hello.")), CancelToken())
        assert text_of(after).strip()
    finally:
        await engine.aclose()


@pytest.mark.anyio
async def test_a_tool_call_round_trip_with_native_tools(llama_server):
    """A named tool_choice streams the call (llama.cpp's server decodes the arguments under the
    schema's grammar: an enum keeps the tiny model from rambling inside a string, which that
    grammar allows); its result in a ``tool`` message is read by the answer."""
    registry = as_registry([get_weather])
    engine = OpenAIEngine(llama_server.base_url, max_tokens=40, temperature=0.0)
    await engine.start()
    try:
        messages = question("What is the weather like in Paris?")
        pieces = await collect(engine, LLMRequest(messages, registry, ToolChoice("function", "get_weather")))
        assert pieces and all(isinstance(piece, ToolCallPiece) for piece in pieces)
        assert pieces[0].name == "get_weather" and pieces[0].call_id
        assert all(piece.name is None and piece.index == 0 for piece in pieces[1:])  # the name comes once
        arguments = "".join(piece.arguments for piece in pieces)
        parsed = registry["get_weather"].parse_arguments(arguments)  # strict JSON matching the schema
        assert parsed["city"] in CITIES
        result = get_weather(**parsed)
        follow_up = [
            *messages,
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": pieces[0].call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": pieces[0].call_id, "content": result},
        ]
        answer = await collect(engine, LLMRequest(follow_up, registry, ToolChoice("none")))
        assert answer and all(isinstance(piece, TextPiece) for piece in answer)
        assert text_of(answer).strip()
    finally:
        await engine.aclose()


@pytest.mark.anyio
async def test_a_wrong_port_fails_at_start_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    engine = OpenAIEngine(url)
    with pytest.raises(LLMEngineError, match="cannot reach the LLM server at " + url.replace(".", r"\.")):
        await engine.start()
    await engine.aclose()


@pytest.mark.anyio
async def test_a_wrong_path_fails_at_start_with_the_status_and_a_hint(llama_server):
    url = llama_server.base_url.removesuffix("/v1") + "/api"
    engine = OpenAIEngine(url)
    with pytest.raises(LLMEngineError) as raised:
        await engine.start()
    await engine.aclose()
    assert f"{url}/models answered HTTP 404" in str(raised.value) and "/v1" in str(raised.value)


@pytest.mark.anyio
async def test_an_error_answer_names_the_url_the_status_and_the_body(llama_server):
    engine = OpenAIEngine(llama_server.base_url, extra_body={"max_tokens": "many"})
    await engine.start()
    try:
        with pytest.raises(LLMEngineError) as raised:
            await collect(engine, LLMRequest(question("Hi")))
        message = str(raised.value)
        assert f"{llama_server.base_url}/chat/completions answered HTTP 5" in message or "answered HTTP 4" in message
        assert "max_tokens" in message  # the body's excerpt says what was wrong
    finally:
        await engine.aclose()


@pytest.fixture(scope="session")
def local_engine(llm):
    """The fallback: the local llama.cpp engine (conftest's loaded SmolLM2)."""
    return llm.engine


@pytest.mark.anyio
async def test_a_spoken_turn_is_answered_aloud_through_openai_llm(llama_server, asr, tts):
    """WAV in, reply audio out, the reply streamed by the remote server; the trace names it."""
    llm = OpenAILLM(llama_server.base_url, MODEL_NAME, max_tokens=40, temperature=0.0)
    output = MemoryOutput(tts.output_sample_rate_hz)
    pipeline = voice_pipeline(WavFileSource([SPEECH_DIR / "mfa_thoughts.wav"], realtime=False), output, asr=asr, llm=llm, tts=tts)
    try:
        with anyio.fail_after(HANG_GUARD_S):
            await pipeline.run()
    finally:
        await pipeline.aclose()
    responses = [item for item in pipeline.conversation.items if isinstance(item, Response)]
    assert len(responses) == 1 and responses[0].status is ResponseStatus.DONE
    assert "thousand thoughts" in normalize_text(responses[0].user_text) and responses[0].text.strip()
    audio = output.audio(responses[0].id)
    assert len(audio) / output.sample_rate_hz > 0.5 and speech_level_dbfs(audio, output.sample_rate_hz) > -30
    trace = pipeline.tracer.turn(responses[0].turn_id)
    assert trace.texts[LLM_ENGINE] == llm.remote.label and llama_server.base_url in trace.texts[LLM_ENGINE]


def test_a_server_killed_mid_reply_is_answered_for_by_the_fallback_and_nothing_hangs(local_engine):
    threads_before = set(threading.enumerate())
    with LlamaServer() as doomed:
        primary = OpenAIEngine(doomed.base_url, max_tokens=200, temperature=0.0, connect_retries=0)
        failover = FailoverEngine(primary, local_engine, first_token_timeout_s=30.0)

        async def main() -> tuple[list, int]:
            await failover.start()
            tasks_before = len(asyncio.all_tasks())
            pieces = []
            with anyio.fail_after(HANG_GUARD_S):
                async for piece in failover.stream(LLMRequest(question("Tell me a long story about a dragon.")), CancelToken()):
                    pieces.append(piece)
                    if len(pieces) == 2:
                        doomed.kill()
            leaked = len(asyncio.all_tasks()) - tasks_before
            await failover.aclose()
            return pieces, leaked

        pieces, leaked = anyio.run(main)
    switched = [piece for piece in pieces if isinstance(piece, EngineSwitched)]
    assert len(switched) == 1 and switched[0].reason.startswith(PRIMARY_FAILED + " mid-reply")
    assert switched[0].label == local_engine.label and switched[0].restart is False  # what was said stays
    at = pieces.index(switched[0])
    assert at >= 2 and text_of(pieces[:at]).strip()  # the primary's part
    assert text_of(pieces[at + 1 :]).strip()  # the fallback went on
    assert failover.answered_by == local_engine.label
    assert leaked == 0
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and {t for t in set(threading.enumerate()) - threads_before if t.is_alive()}:
        time.sleep(0.05)
    assert {t for t in set(threading.enumerate()) - threads_before if t.is_alive()} == set()


def test_a_frozen_server_is_answered_for_after_the_first_token_budget_then_skipped(local_engine):
    with LlamaServer() as frozen:
        primary = OpenAIEngine(frozen.base_url, max_tokens=24, temperature=0.0)
        failover = FailoverEngine(primary, local_engine, first_token_timeout_s=1.0, retry_primary_after_s=300.0)

        async def main() -> tuple[list, list]:
            await failover.start()
            frozen.freeze()  # accepts connections, answers nothing
            try:
                first = await collect(failover, LLMRequest(question("What is the capital of France?")))
                second = await collect(failover, LLMRequest(question("And of Italy?")))
            finally:
                frozen.thaw()
                await failover.aclose()
            return first, second

        first, second = anyio.run(main)
    assert isinstance(first[0], EngineSwitched) and first[0].reason.startswith(NO_FIRST_TOKEN) and first[0].restart
    assert text_of(first[1:]).strip() and not any(isinstance(piece, EngineSwitched) for piece in first[1:])
    # The primary was too slow: the next turn does not wait for it again.
    assert isinstance(second[0], EngineSwitched) and second[0].reason.startswith(PRIMARY_DOWN)
    assert text_of(second[1:]).strip()


@pytest.mark.anyio
async def test_a_spoken_turn_on_a_frozen_server_is_answered_by_the_local_model_and_the_trace_says_so(asr, tts, local_engine):
    with LlamaServer() as frozen:
        llm = OpenAILLM(frozen.base_url, MODEL_NAME, max_tokens=40, fallback=local_engine, first_token_timeout_s=1.0)
        output = MemoryOutput(tts.output_sample_rate_hz)
        pipeline = voice_pipeline(WavFileSource([SPEECH_DIR / "mfa_thoughts.wav"], realtime=False), output, asr=asr, llm=llm, tts=tts)
        switches = []
        pipeline.conversation.add_listener(lambda event: switches.append(event) if isinstance(event, EngineSwitchedEvent) else None)
        await pipeline.start()
        frozen.freeze()
        try:
            with anyio.fail_after(HANG_GUARD_S):
                await pipeline.run()
        finally:
            frozen.thaw()
            await pipeline.aclose()
    responses = [item for item in pipeline.conversation.items if isinstance(item, Response)]
    assert len(responses) == 1 and responses[0].status is ResponseStatus.DONE and responses[0].text.strip()
    assert len(output.audio(responses[0].id)) > 0
    assert [(event.response, event.label) for event in switches] == [(responses[0], local_engine.label)]
    assert switches[0].reason.startswith(NO_FIRST_TOKEN)
    note = pipeline.tracer.turn(responses[0].turn_id).texts[LLM_ENGINE]
    assert note.startswith(local_engine.label) and NO_FIRST_TOKEN in note


def test_failover_start_fails_when_the_primary_is_unreachable(local_engine):
    url = f"http://127.0.0.1:{free_port()}/v1"
    failover = FailoverEngine(OpenAIEngine(url, connect_retries=0), local_engine)
    with pytest.raises(LLMEngineError, match=url.replace(".", r"\.")):
        anyio.run(failover.start)


def test_an_openai_engine_refuses_a_url_without_a_scheme():
    with pytest.raises(ValueError, match="http://"):
        OpenAIEngine("127.0.0.1:8080/v1")


def test_the_api_key_comes_from_the_environment_and_is_sent_as_a_bearer_token(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("REALTIME_PIPELINE_LLM_API_KEY", raising=False)
    assert OpenAIEngine("http://127.0.0.1:1/v1")._headers() == {}  # a local server needs none
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setenv("REALTIME_PIPELINE_LLM_API_KEY", "sk-ours")
    assert OpenAIEngine("http://127.0.0.1:1/v1")._headers() == {"Authorization": "Bearer sk-ours"}
    assert OpenAIEngine("http://127.0.0.1:1/v1", api_key="sk-given")._headers() == {"Authorization": "Bearer sk-given"}


def test_the_request_body_carries_native_tools_and_the_choice():
    registry = as_registry([get_weather])
    engine = OpenAIEngine("http://127.0.0.1:1/v1", "m", max_tokens=50)
    body = engine.payload(LLMRequest(question("hi"), registry, ToolChoice("function", "get_weather"), max_tokens=7))
    assert body["tools"] == registry.schemas() and body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["max_tokens"] == 7 and body["stream"] is True and body["model"] == "m"
    assert "tools" not in engine.payload(LLMRequest(question("hi"), registry, ToolChoice("none")))
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}
    assert engine.payload(LLMRequest([call]))["messages"][0]["content"] == ""
    json.dumps(body)  # all of it is JSON


def test_the_cli_answers_through_the_remote_server_with_one_option(llama_server, tmp_path):
    reply = tmp_path / "reply.wav"
    result = run_cli("--input", str(SPEECH_DIR / "mfa_thoughts.wav"), "--output", str(reply), "--fast",
                     "--llm-base-url", llama_server.base_url, "--no-llm-fallback", "--max-tokens", "24", timeout_s=180)
    assert result.returncode == 0, result.stderr
    assert any(line.startswith("assistant: ") and line.strip() != "assistant:" for line in result.stdout.splitlines())
    samples, rate = read_wav(reply)
    assert len(samples) / rate > 0.5


def test_the_cli_names_a_wrong_llm_url_in_one_error_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = run_cli("--input", str(SPEECH_DIR / "mfa_thoughts.wav"), "--output", str(tmp_path / "reply.wav"), "--fast",
                     "--llm-base-url", url, "--no-llm-fallback", timeout_s=180)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and url in errors[0], result.stderr


@pytest.mark.anyio
async def test_four_concurrent_realtime_sessions_each_complete_a_spoken_turn_on_the_remote_llm(llama_server, engines):
    """The Realtime server's replies from the model server (one engine shared by the sessions)."""
    from openai import AsyncOpenAI
    from server_support import Client, RunningServer, speech_24k

    from realtime_pipeline.server import Engines, ServerOptions

    remote = OpenAIEngine(llama_server.base_url, MODEL_NAME, max_tokens=24, temperature=0.0)
    served = Engines(asr=engines.asr, llm=remote, tts=engines.tts, smart_turn=engines.smart_turn)
    await served.llm.start()
    clips = ["ps_goforward.wav", "ps_forever_2.wav", "ps_cards_001.wav", "mfa_thoughts.wav"]
    done: dict[str, dict] = {}

    async def talk(url: str, clip: str) -> None:
        sdk = AsyncOpenAI(api_key="local", websocket_base_url=url)
        async with sdk.realtime.connect(model="gpt-realtime") as connection:
            client = Client(connection, "ga")
            await client.until("session.created", 30)
            await client.send({"type": "session.update", "session": {"type": "realtime", "instructions": "Answer in a few words.", "max_output_tokens": 16}})
            await client.until("session.updated", 30)
            await client.append_audio(speech_24k(clip))
            done[clip] = {"done": await client.until("response.done", 180), "events": client.events}

    try:
        with RunningServer(served, ServerOptions(max_sessions=4)) as server:
            with anyio.fail_after(300):
                async with anyio.create_task_group() as group:
                    for clip in clips:
                        group.start_soon(talk, server.base_url, clip)
    finally:
        await remote.aclose()
    assert sorted(done) == sorted(clips)
    for clip, turn in done.items():
        response = turn["done"]["response"]
        assert response["status"] == "completed", (clip, response)
        audio_bytes = sum(len(event["delta"]) * 3 // 4 for event in turn["events"] if event["type"] == "response.output_audio.delta")
        assert audio_bytes > 24_000 * 2 * 0.3, clip  # at least 0.3 s of 24 kHz pcm16
        assert response["output"][0]["content"][0]["transcript"].strip()
