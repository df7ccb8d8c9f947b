"""The Realtime server against the official openai SDK, with the real models on real speech.

One server (uvicorn on 127.0.0.1, a free port) for the module; every event a
test receives is validated strictly against the SDK's model for its type, in
the connection's dialect (see server_support.Client).
"""

from __future__ import annotations

import base64
import json

import anyio
import numpy as np
import pytest
from conftest import normalize_text
from openai import AsyncOpenAI
from server_support import Client, RunningServer, heard_as, speech_24k, types_of
from websockets.exceptions import InvalidStatus

from realtime_pipeline.server import Engines, ServerOptions, SessionOptions
from realtime_pipeline.server.protocol import MAX_APPEND_BYTES

pytestmark = [pytest.mark.models, pytest.mark.anyio]

#: Short replies keep the paced (real-time) audio of each response to a few seconds.
SHORT = 16


@pytest.fixture(scope="module")
def server(engines: Engines):
    with RunningServer(engines, ServerOptions(session=SessionOptions(output_lead_ms=300))) as running:
        yield running


def connect(server: RunningServer, dialect: str, api_key: str = "local"):
    client = AsyncOpenAI(api_key=api_key, websocket_base_url=server.base_url)
    realtime = client.beta.realtime if dialect == "beta" else client.realtime
    return realtime.connect(model="gpt-realtime")


async def opened(connection, dialect: str) -> Client:
    client = Client(connection, dialect)
    created = await client.until("session.created", 30)
    assert created["session"]["model"] == "gpt-realtime"  # the URL's model is reported
    await client.until("conversation.created", 30)
    return client


async def update(client: Client, session: dict) -> dict:
    if client.dialect == "ga":
        session = {"type": "realtime", **session}
    await client.send({"type": "session.update", "session": session})
    return (await client.until("session.updated", 30))["session"]


def short_reply(dialect: str, **extra: object) -> dict:
    key = "max_response_output_tokens" if dialect == "beta" else "max_output_tokens"
    return {key: SHORT, **extra}


async def spoken_turn(client: Client, clip: str) -> dict:
    """Speak ``clip`` (24 kHz pcm16) with server VAD; returns what the turn produced."""
    start = len(client.events)
    await client.append_audio(speech_24k(clip))
    done = await client.until("response.done", 180)
    events = client.since(start)
    transcript = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
    return {"events": events, "types": types_of(events), "transcript": transcript["transcript"], "done": done}


@pytest.mark.parametrize("dialect", ["beta", "ga"])
async def test_spoken_turn_from_real_speech(server, dialect):
    async with connect(server, dialect) as connection:
        client = await opened(connection, dialect)
        session = await update(client, {"instructions": "Answer in one short sentence.", **(
            {"max_response_output_tokens": SHORT} if dialect == "beta" else {"max_output_tokens": SHORT})})
        assert session["instructions"] == "Answer in one short sentence."
        turn = await spoken_turn(client, "ps_librivox_0880.wav")
        types = turn["types"]
        order = [
            "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
            client.name("item_added"), "conversation.item.input_audio_transcription.completed", "response.created",
            "response.output_item.added", "response.content_part.added", client.name("audio_delta"),
            client.name("audio_done"), client.name("transcript_done"), "response.content_part.done",
            "response.output_item.done", "response.done",
        ]
        positions = [types.index(name) for name in order]
        assert positions == sorted(positions), types
        assert heard_as(turn["transcript"], "he was not an ill disposed young man"), turn["transcript"]
        started = next(e for e in turn["events"] if e["type"] == "input_audio_buffer.speech_started")
        stopped = next(e for e in turn["events"] if e["type"] == "input_audio_buffer.speech_stopped")
        committed = next(e for e in turn["events"] if e["type"] == "input_audio_buffer.committed")
        assert started["item_id"] == stopped["item_id"] == committed["item_id"]
        assert 0 <= started["audio_start_ms"] < stopped["audio_end_ms"]
        done = turn["done"]["response"]
        assert done["status"] == "completed"
        audio = b"".join(base64.b64decode(e["delta"]) for e in turn["events"] if e["type"] == client.name("audio_delta"))
        assert len(audio) > 24_000 * 2 * 0.3  # at least 0.3 s of 24 kHz pcm16
        transcript = next(e for e in turn["events"] if e["type"] == client.name("transcript_done"))["transcript"]
        assert transcript.strip()
        assert done["output"][0]["content"][0]["transcript"] == transcript
        deltas = [e for e in turn["events"] if e["type"] in (client.name("audio_delta"), client.name("transcript_delta"))]
        assert {e["response_id"] for e in deltas} == {done["id"]}
        assert {e["item_id"] for e in deltas} == {done["output"][0]["id"]}
        if dialect == "ga":
            assert "conversation.item.done" in types
        else:
            assert "conversation.item.done" not in types


@pytest.mark.parametrize("dialect", ["beta", "ga"])
async def test_semantic_vad_spoken_turn_from_real_speech(server, dialect):
    """semantic_vad: Smart Turn and the LLM decide the end of the turn; the events are the same."""
    async with connect(server, dialect) as connection:
        client = await opened(connection, dialect)
        turn_detection = {"type": "semantic_vad", "eagerness": "high"}
        config = {"turn_detection": turn_detection} if dialect == "beta" else {"audio": {"input": {"turn_detection": turn_detection}}}
        session = await update(client, {**config, **(
            {"max_response_output_tokens": SHORT} if dialect == "beta" else {"max_output_tokens": SHORT})})
        detection = session["turn_detection"] if dialect == "beta" else session["audio"]["input"]["turn_detection"]
        assert detection["type"] == "semantic_vad" and detection["eagerness"] == "high"
        start = len(client.events)
        await client.append_audio(speech_24k("ps_librivox_0880.wav"), trailing_silence_ms=2500)  # high: 2 s at most
        done = await client.until("response.done", 180)
        types = types_of(client.since(start))
        order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
                 "conversation.item.input_audio_transcription.completed", "response.created", "response.done"]
        positions = [types.index(name) for name in order]
        assert positions == sorted(positions), types
        assert types.count("input_audio_buffer.speech_stopped") == 1, types  # one turn: not cut in its pauses
        assert done["response"]["status"] == "completed"


@pytest.mark.parametrize("dialect", ["beta", "ga"])
async def test_text_turn(server, dialect):
    async with connect(server, dialect) as connection:
        client = await opened(connection, dialect)
        await client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is the capital of France?"}]}})
        added = await client.until(client.name("item_added"), 30)
        assert added["item"]["content"][0]["text"] == "What is the capital of France?"
        modalities = {"modalities": ["text"]} if dialect == "beta" else {"output_modalities": ["text"]}
        start = len(client.events)
        await client.send({"type": "response.create", "response": short_reply(dialect, **modalities, metadata={"case": "text"})})
        done = await client.until("response.done", 120)
        events = client.since(start)
        types = types_of(events)
        assert client.name("audio_delta") not in types
        text = "".join(e["delta"] for e in events if e["type"] == client.name("text_delta"))
        assert text.strip()
        assert next(e for e in events if e["type"] == client.name("text_done"))["text"] == text
        assert done["response"]["status"] == "completed"
        assert done["response"]["metadata"] == {"case": "text"}
        assert done["response"]["output"][0]["content"][0]["text"] == text
        assert done["response"]["usage"]["output_tokens"] > 0


async def test_manual_turn_commit_then_response_create(server):
    async with connect(server, "ga") as connection:
        client = await opened(connection, "ga")
        session = await update(client, {"audio": {"input": {"turn_detection": None}}})
        assert session["audio"]["input"]["turn_detection"] is None
        start = len(client.events)
        await client.append_audio(speech_24k("ps_goforward.wav"), trailing_silence_ms=300)
        await client.send({"type": "input_audio_buffer.commit", "event_id": "evt_commit"})
        await client.send({"type": "response.create", "response": short_reply("ga")})
        done = await client.until("response.done", 180)
        events = client.since(start)
        types = types_of(events)
        assert "input_audio_buffer.speech_started" not in types  # no VAD: the client decides the turn
        committed = next(e for e in events if e["type"] == "input_audio_buffer.committed")
        transcript = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
        assert transcript["item_id"] == committed["item_id"]
        assert heard_as(transcript["transcript"], "go forward ten meters"), transcript["transcript"]
        assert types.index("conversation.item.input_audio_transcription.completed") < types.index("response.created")
        assert done["response"]["status"] == "completed"
        assert "response.output_audio.delta" in types
        await client.send({"type": "conversation.item.retrieve", "item_id": committed["item_id"]})
        retrieved = await client.until("conversation.item.retrieved", 30)
        assert heard_as(retrieved["item"]["content"][0]["transcript"], "go forward ten meters"), retrieved["item"]["content"][0]["transcript"]


async def test_g711_ulaw_in_and_out(server):
    from realtime_pipeline.audio import resample
    from realtime_pipeline.server.codecs import ulaw_decode, ulaw_encode

    async with connect(server, "beta") as connection:
        client = await opened(connection, "beta")
        session = await update(client, {"input_audio_format": "g711_ulaw", "output_audio_format": "g711_ulaw", "turn_detection": None})
        assert session["input_audio_format"] == session["output_audio_format"] == "g711_ulaw"
        speech = resample(speech_24k("ps_goforward.wav"), 24_000, 8_000)
        for start in range(0, len(speech), 800):
            await client.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(ulaw_encode(speech[start : start + 800])).decode()})
        await client.send({"type": "input_audio_buffer.commit"})
        await client.send({"type": "response.create", "response": {"max_response_output_tokens": SHORT}})
        start = len(client.events)
        done = await client.until("response.done", 180)
        transcript = next(e for e in client.events if e["type"] == "conversation.item.input_audio_transcription.completed")
        assert heard_as(transcript["transcript"], "go forward ten meters"), transcript["transcript"]
        assert done["response"]["status"] == "completed" and done["response"]["output_audio_format"] == "g711_ulaw"
        reply = ulaw_decode(b"".join(base64.b64decode(e["delta"]) for e in client.since(start) if e["type"] == "response.audio.delta"))
        assert len(reply) > 8_000 * 0.3  # one byte per sample at 8 kHz
        assert float(np.sqrt(np.mean(reply.astype(np.float64) ** 2))) > 300  # speech, not silence or noise


async def test_cancel(server):
    async with connect(server, "beta") as connection:
        client = await opened(connection, "beta")
        await client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me a long story about a dragon."}]}})
        await client.send({"type": "response.create", "response": {"max_response_output_tokens": 200}})
        created = await client.until("response.created", 60)
        await client.until("response.audio.delta", 60)
        await client.send({"type": "response.create", "event_id": "evt_second"})
        error = await client.until("error", 60)
        assert error["error"]["code"] == "conversation_already_has_active_response"
        assert error["error"]["event_id"] == "evt_second"
        await client.send({"type": "response.cancel", "event_id": "evt_cancel"})
        done = await client.until("response.done", 60)
        assert done["response"]["id"] == created["response"]["id"]
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        assert done["response"]["output"][0]["status"] == "incomplete"
        # nothing of the cancelled response follows, and the session answers the next request
        await client.send({"type": "response.create", "response": {"modalities": ["text"], "max_response_output_tokens": 8}})
        created_next = await client.until("response.created", 60)
        start = len(client.events)
        await client.until("response.done", 120)
        late = [e for e in client.since(start) if e.get("response_id") == created["response"]["id"]]
        assert late == []
        assert created_next["response"]["id"] != created["response"]["id"]


@pytest.mark.parametrize("dialect", ["beta", "ga"])
async def test_truncate_trims_the_assistant_item_to_what_was_heard(server, dialect):
    async with connect(server, dialect) as connection:
        client = await opened(connection, dialect)
        await client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Describe the sea in two sentences."}]}})
        await client.send({"type": "response.create", "response": short_reply(dialect)})
        done = await client.until("response.done", 120)
        item = done["response"]["output"][0]
        full = item["content"][0]["transcript"]
        audio_ms = sum(len(base64.b64decode(e["delta"])) for e in client.events if e["type"] == client.name("audio_delta")) // 48
        assert audio_ms > 600 and len(full.split()) > 2
        await client.send({"type": "conversation.item.truncate", "item_id": item["id"], "content_index": 0, "audio_end_ms": audio_ms + 500, "event_id": "evt_past"})
        error = await client.until("error", 30)
        assert error["error"]["event_id"] == "evt_past" and error["error"]["param"] == "audio_end_ms"
        await client.send({"type": "conversation.item.truncate", "item_id": item["id"], "content_index": 0, "audio_end_ms": 300})
        truncated = await client.until("conversation.item.truncated", 30)
        assert truncated["audio_end_ms"] == 300 and truncated["item_id"] == item["id"]
        await client.send({"type": "conversation.item.retrieve", "item_id": item["id"]})
        heard = (await client.until("conversation.item.retrieved", 30))["item"]["content"][0]["transcript"]
        assert len(heard.split()) < len(full.split())
        assert full.split()[: len(heard.split())] == heard.split()


async def test_barge_in_cancels_the_response_with_turn_detected(server):
    async with connect(server, "ga") as connection:
        client = await opened(connection, "ga")
        await update(client, {"audio": {"input": {"turn_detection": {"type": "server_vad", "create_response": False, "interrupt_response": True}}}})
        await client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me a long story about a dragon."}]}})
        await client.send({"type": "response.create", "response": {"max_output_tokens": 200}})
        created = await client.until("response.created", 60)
        await client.until("response.output_audio.delta", 60)
        start = len(client.events)
        await client.append_audio(speech_24k("mfa_thoughts.wav"))
        done = await client.until("response.done", 60)
        events = client.since(start)
        types = types_of(events)
        assert types.index("input_audio_buffer.speech_started") < types.index("response.done")
        assert done["response"]["id"] == created["response"]["id"]
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
        generated = "".join(e["delta"] for e in client.events if e["type"] == "response.output_audio_transcript.delta")
        heard = done["response"]["output"][0]["content"][0]["transcript"]
        assert len(heard) < len(generated.strip())  # the history keeps what was played, not all that was written
        # the interrupting speech is committed and transcribed; create_response=false: no new response
        transcript = await client.until("conversation.item.input_audio_transcription.completed", 60)
        assert "thousand thoughts" in normalize_text(transcript["transcript"])
        await anyio.sleep(1.0)
        await client.send({"type": "conversation.item.retrieve", "item_id": transcript["item_id"]})
        await client.until("conversation.item.retrieved", 30)
        assert "response.created" not in types_of(client.since(start))


async def test_bad_input_gets_an_error_and_the_session_goes_on(server):
    async with connect(server, "ga") as connection:
        client = await opened(connection, "ga")
        await update(client, {"audio": {"input": {"turn_detection": None}}})

        async def expect_error(event_id: str | None, code: str) -> dict:
            error = await client.until("error", 60)
            assert error["error"]["event_id"] == event_id, error
            assert error["error"]["code"] == code, error
            return error

        await client.send_raw("{not json")
        await expect_error(None, "invalid_json")
        await client.send_raw('{"type": "no.such.event", "event_id": "evt_unknown"}')
        await expect_error("evt_unknown", "unknown_event_type")
        await client.send_raw('{"event_id": "evt_no_type"}')
        await expect_error("evt_no_type", "missing_required_parameter")
        await client.send_raw('{"type": "input_audio_buffer.append", "event_id": "evt_no_audio"}')
        assert (await expect_error("evt_no_audio", "missing_required_parameter"))["error"]["param"] == "audio"
        await client.send_raw('{"type": "conversation.item.truncate", "event_id": "evt_no_item", "content_index": 0, "audio_end_ms": 10}')
        assert (await expect_error("evt_no_item", "missing_required_parameter"))["error"]["param"] == "item_id"
        await client.send_raw('{"type": "input_audio_buffer.append", "event_id": "evt_b64", "audio": "***not base64***"}')
        await expect_error("evt_b64", "invalid_audio")
        await client.send_raw('{"type": "input_audio_buffer.append", "event_id": "evt_odd", "audio": "AAAA"}')  # 3 bytes
        await expect_error("evt_odd", "invalid_audio")
        too_big = base64.b64encode(bytes(MAX_APPEND_BYTES + 3)).decode()
        await client.send_raw('{"type": "input_audio_buffer.append", "event_id": "evt_big", "audio": "' + too_big + '"}')
        await expect_error("evt_big", "audio_too_large")
        await client.send({"type": "input_audio_buffer.commit", "event_id": "evt_empty"})
        await expect_error("evt_empty", "input_audio_buffer_commit_empty")
        await client.append_audio(speech_24k("ps_cards_001.wav"), trailing_silence_ms=0)
        await client.send({"type": "input_audio_buffer.clear"})
        await client.until("input_audio_buffer.cleared", 30)
        await client.send({"type": "input_audio_buffer.commit", "event_id": "evt_cleared"})
        await expect_error("evt_cleared", "input_audio_buffer_commit_empty")  # the clear dropped the audio
        await client.send({"type": "conversation.item.truncate", "event_id": "evt_unknown_item", "item_id": "item_nope", "content_index": 0, "audio_end_ms": 10})
        await expect_error("evt_unknown_item", "item_truncate_invalid_item_id")
        await client.send({"type": "response.cancel", "event_id": "evt_cancel_none"})
        await expect_error("evt_cancel_none", "response_cancel_not_active")
        await client.send_raw('{"type": "session.update", "event_id": "evt_bad_vad", "session": {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 7}}}}}')
        await expect_error("evt_bad_vad", "invalid_value")
        await client.send_raw('{"type": "response.create", "event_id": "evt_bad_choice", "response": {"tool_choice": {"type": "function", "name": "missing"}}}')
        await expect_error("evt_bad_choice", "invalid_value")
        # still alive: a manual turn and a text response work
        await client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}})
        await client.send({"type": "response.create", "response": {"output_modalities": ["text"], "max_output_tokens": 8}})
        done = await client.until("response.done", 120)
        assert done["response"]["status"] == "completed"


async def test_two_sessions_at_once_stay_apart(server):
    results: dict[str, dict] = {}

    async def talk(dialect: str, clip: str) -> None:
        async with connect(server, dialect) as connection:
            client = await opened(connection, dialect)
            await update(client, {"instructions": "Answer in a few words."})
            results[clip] = await spoken_turn(client, clip)
            own_item = results[clip]["done"]["response"]["output"][0]["id"]
            results[clip]["own_item"] = own_item
            results[clip]["client"] = client

    async with anyio.create_task_group() as group:
        group.start_soon(talk, "beta", "ps_goforward.wav")
        group.start_soon(talk, "ga", "ps_forever_2.wav")
    assert heard_as(results["ps_goforward.wav"]["transcript"], "go forward ten meters"), results["ps_goforward.wav"]["transcript"]
    assert heard_as(results["ps_forever_2.wav"]["transcript"], "feels like these days go on forever"), results["ps_forever_2.wav"]["transcript"]
    for clip in results:
        assert results[clip]["done"]["response"]["status"] == "completed"
        assert types_of(results[clip]["events"]).count("conversation.item.input_audio_transcription.completed") == 1
    # an item of one session does not exist in another
    async with connect(server, "ga") as connection:
        client = await opened(connection, "ga")
        await client.send({"type": "conversation.item.retrieve", "event_id": "evt_other", "item_id": results["ps_goforward.wav"]["own_item"]})
        error = await client.until("error", 30)
        assert error["error"]["code"] == "item_retrieve_invalid_item_id" and error["error"]["event_id"] == "evt_other"


async def test_function_call_round_trip(server):
    tool = {"type": "function", "name": "get_weather", "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    async with connect(server, "ga") as connection:
        client = await opened(connection, "ga")
        await update(client, {"tools": [tool], "tool_choice": "required", "output_modalities": ["text"]})
        await client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is the weather in Paris?"}]}})
        start = len(client.events)
        await client.send({"type": "response.create"})
        done = await client.until("response.done", 120)
        events = client.since(start)
        call = next(e for e in events if e["type"] == "response.function_call_arguments.done")
        assert call["name"] == "get_weather"
        assert isinstance(json.loads(call["arguments"])["city"], str)
        assert done["response"]["output"][0]["type"] == "function_call"
        assert done["response"]["output"][0]["call_id"] == call["call_id"]
        await client.send({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": call["call_id"], "output": '{"temperature_c": 21, "sky": "sunny"}'}})
        await client.send({"type": "response.create", "response": {"tool_choice": "none", "max_output_tokens": SHORT}})
        answer = await client.until("response.done", 120)
        assert answer["response"]["status"] == "completed"
        assert answer["response"]["output"][0]["type"] == "message"


async def test_api_key_is_checked_when_configured(engines):
    with RunningServer(engines, ServerOptions(api_key="sekrit")) as keyed:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(keyed, "ga", api_key="wrong") as connection:
                await Client(connection, "ga").until("session.created", 10)
        assert refused.value.response.status_code == 403
        async with connect(keyed, "ga", api_key="sekrit") as connection:
            await opened(connection, "ga")


async def test_items_create_retrieve_delete(server):
    async with connect(server, "beta") as connection:
        client = await opened(connection, "beta")

        def text_item(item_id: str, role: str, text: str) -> dict:
            kind = "text" if role == "assistant" else "input_text"
            return {"id": item_id, "type": "message", "role": role, "content": [{"type": kind, "text": text}]}

        await client.send({"type": "conversation.item.create", "item": text_item("item_a", "user", "first")})
        first = await client.until("conversation.item.created", 30)
        assert first["previous_item_id"] is None and first["item"]["id"] == "item_a"
        await client.send({"type": "conversation.item.create", "item": text_item("item_b", "assistant", "second")})
        assert (await client.until("conversation.item.created", 30))["previous_item_id"] == "item_a"
        await client.send({"type": "conversation.item.create", "previous_item_id": "root", "item": text_item("item_s", "system", "Be brief.")})
        assert (await client.until("conversation.item.created", 30))["previous_item_id"] is None
        await client.send({"type": "conversation.item.create", "event_id": "evt_dup", "item": text_item("item_a", "user", "again")})
        error = await client.until("error", 30)
        assert error["error"]["code"] == "item_create_duplicate_item_id" and error["error"]["event_id"] == "evt_dup"
        await client.send({"type": "conversation.item.retrieve", "item_id": "item_b"})
        retrieved = await client.until("conversation.item.retrieved", 30)
        assert retrieved["item"]["role"] == "assistant" and retrieved["item"]["content"][0] == {"type": "text", "text": "second"}
        await client.send({"type": "conversation.item.delete", "item_id": "item_a"})
        assert (await client.until("conversation.item.deleted", 30))["item_id"] == "item_a"
        await client.send({"type": "conversation.item.retrieve", "event_id": "evt_gone", "item_id": "item_a"})
        error = await client.until("error", 30)
        assert error["error"]["code"] == "item_retrieve_invalid_item_id" and error["error"]["event_id"] == "evt_gone"
        await client.send({"type": "conversation.item.truncate", "event_id": "evt_text", "item_id": "item_b", "content_index": 0, "audio_end_ms": 0})
        error = await client.until("error", 30)
        assert error["error"]["param"] == "content_index" and error["error"]["event_id"] == "evt_text"  # a text item has no audio


async def test_long_audio_item_is_transcribed_in_slices_cut_in_pauses(server):
    from realtime_pipeline.server.engines import ASR_SLICE_S

    gap = np.zeros(24 * 600, dtype=np.int16)
    clips = [("ps_goforward.wav", "go forward ten meters"), ("ps_forever_2.wav", "feels like these days go on forever"),
             ("ps_librivox_0880.wav", "he was not an ill disposed young man")]
    audio = np.concatenate([part for name, _ in clips for part in (speech_24k(name), gap)])
    assert len(audio) > 24_000 * ASR_SLICE_S  # more than one slice
    async with connect(server, "ga") as connection:
        client = await opened(connection, "ga")
        await update(client, {"audio": {"input": {"turn_detection": None}}})
        await client.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
            {"type": "input_audio", "audio": base64.b64encode(audio.astype("<i2").tobytes()).decode()}]}})
        transcript = await client.until("conversation.item.input_audio_transcription.completed", 120)
    assert heard_as(transcript["transcript"], " ".join(text for _, text in clips)), transcript["transcript"]
