"""A corpus of hostile inputs over raw WebSockets: each gets a clear error (or is repaired),
nothing crashes, and the same session then completes a valid turn (no input poisons it).

One real server for the corpus; each case runs in its own session, so a case that poisoned
its session would fail its own valid turn.
"""

from __future__ import annotations

import base64
import json
import logging

import anyio
import numpy as np
import pytest
from server_support import RawClient, RunningServer
from websockets.asyncio.client import connect as ws_connect

from realtime_pipeline.server import Engines, ServerOptions, SessionOptions
from realtime_pipeline.server.codecs import ulaw_encode
from realtime_pipeline.server.limits import MAX_EVENT_DEPTH, MAX_ITEM_AUDIO_S, MAX_SCHEMA_DEPTH, MAX_TOOLS
from realtime_pipeline.server.protocol import MAX_APPEND_BYTES

pytestmark = [pytest.mark.models, pytest.mark.anyio]

HUGE = "x" * 200_000
TOOL = {"type": "function", "name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}}


def ev(kind: str, **fields: object) -> str:
    return json.dumps({"type": kind, **fields})


def session(**fields: object) -> str:
    return ev("session.update", session={"type": "realtime", **fields})


def user_item(text: str, **extra: object) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}], **extra}


def item(spec: object, **fields: object) -> str:
    return ev("conversation.item.create", item=spec, **fields)


def nested(depth: int) -> dict:
    node: dict = {"type": "string"}
    for _ in range(depth):
        node = {"type": "object", "properties": {"a": node}}
    return node


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def audio_item(data: bytes) -> str:
    return item({"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": b64(data)}]})


#: (case id, messages sent in order, the error code the last one gets, None: accepted).
CORPUS: list[tuple[str, list[str], str | None]] = [
    ("not json", ["{not json"], "invalid_json"),
    ("json array", ["[]"], "invalid_json"),
    ("json string", ['"hello"'], "invalid_json"),
    ("json null", ["null"], "invalid_json"),
    ("empty message", [""], "invalid_json"),
    ("nested arrays 100k deep", ["[" * 100_000 + "]" * 100_000], "invalid_json"),
    ("nested objects past the depth limit", [session(metadata=nested(MAX_EVENT_DEPTH))], "invalid_json"),
    ("no type", ['{"event_id": "e"}'], "missing_required_parameter"),
    ("type not a string", ['{"type": 42}'], "missing_required_parameter"),
    ("unknown type", [ev("no.such.event")], "unknown_event_type"),
    ("session missing", [ev("session.update")], "missing_required_parameter"),
    ("session not an object", [ev("session.update", session="x")], "invalid_value"),
    ("instructions 200k characters", [session(instructions=HUGE)], "string_above_max_length"),
    ("instructions not a string", [session(instructions=42)], "invalid_value"),
    ("10,000 tools", [session(tools=[{**TOOL, "name": f"f{i}"} for i in range(10_000)])], "array_above_max_length"),
    ("tools past the count limit", [session(tools=[{**TOOL, "name": f"f{i}"} for i in range(MAX_TOOLS + 1)])], "array_above_max_length"),
    ("tool schema 300 levels deep", [session(tools=[{**TOOL, "parameters": nested(300)}], tool_choice="required")], "invalid_json"),
    ("tool schema past the depth limit", [session(tools=[{**TOOL, "parameters": nested(MAX_SCHEMA_DEPTH)}], tool_choice="required")], "invalid_function_parameters"),
    ("tool schema 100 KB", [session(tools=[{**TOOL, "parameters": {"type": "object", "description": "y" * 100_000}}])], "invalid_function_parameters"),
    ("tool with an unresolvable $ref", [session(tools=[{**TOOL, "parameters": {"type": "object", "properties": {"a": {"$ref": "#/nope"}}}}])], "invalid_value"),
    ("tool without a name", [session(tools=[{"type": "function", "parameters": {}}])], "invalid_value"),
    ("tools not a list", [session(tools="all")], "invalid_value"),
    ("tool_choice names no tool", [session(tools=[TOOL], tool_choice={"type": "function", "name": "missing"})], "invalid_value"),
    ("tool_choice required without tools", [session(tool_choice="required")], "invalid_value"),
    ("temperature 5", [session(temperature=5)], "invalid_value"),
    ("temperature NaN", ['{"type": "session.update", "session": {"temperature": NaN}}'], "invalid_value"),
    ("max tokens 0", [session(max_output_tokens=0)], "invalid_value"),
    ("max tokens Infinity", ['{"type": "session.update", "session": {"max_output_tokens": Infinity}}'], "invalid_value"),
    ("max tokens a billion", [session(max_output_tokens=10**9)], "invalid_value"),
    ("modalities empty", [session(output_modalities=[])], "invalid_value"),
    ("modalities video", [session(output_modalities=["video"])], "invalid_value"),
    ("audio format mp3", [session(audio={"input": {"format": {"type": "audio/mp3"}}})], "invalid_value"),
    ("pcm at 16 kHz", [session(audio={"input": {"format": {"type": "audio/pcm", "rate": 16000}}})], "invalid_value"),
    ("audio not an object", [session(audio="loud")], "invalid_value"),
    ("audio.input not an object", [session(audio={"input": 3})], "invalid_value"),
    ("vad threshold 7", [session(audio={"input": {"turn_detection": {"type": "server_vad", "threshold": 7}}})], "invalid_value"),
    ("vad type magic", [session(audio={"input": {"turn_detection": {"type": "magic"}}})], "invalid_value"),
    ("vad silence negative", [session(audio={"input": {"turn_detection": {"silence_duration_ms": -5}}})], "invalid_value"),
    ("turn detection a string", [session(audio={"input": {"turn_detection": "on"}})], "invalid_value"),
    ("transcription session", [session(type="transcription")], "invalid_value"),
    ("transcription a string", [session(audio={"input": {"transcription": "yes"}})], "invalid_value"),
    ("append without audio", [ev("input_audio_buffer.append")], "missing_required_parameter"),
    ("append audio a number", [ev("input_audio_buffer.append", audio=42)], "invalid_value"),
    ("append not base64", [ev("input_audio_buffer.append", audio="***")], "invalid_audio"),
    ("append half a sample", [ev("input_audio_buffer.append", audio="AAAA")], "invalid_audio"),
    ("append over 15 MiB", [ev("input_audio_buffer.append", audio=b64(bytes(MAX_APPEND_BYTES + 3)))], "audio_too_large"),
    ("commit nothing", [ev("input_audio_buffer.commit")], "input_audio_buffer_commit_empty"),
    ("commit 50 ms", [ev("input_audio_buffer.append", audio=b64(bytes(2400))), ev("input_audio_buffer.commit")], "input_audio_buffer_commit_empty"),
    ("item missing", [ev("conversation.item.create")], "missing_required_parameter"),
    ("item not an object", [item("x")], "invalid_value"),
    ("item type image", [item({"type": "image"})], "invalid_value"),
    ("item role god", [item({"type": "message", "role": "god", "content": []})], "invalid_value"),
    ("item content not a list", [item({"type": "message", "role": "user", "content": "hi"})], "invalid_value"),
    ("item part not an object", [item({"type": "message", "role": "user", "content": ["hi"]})], "invalid_value"),
    ("item part input_image", [item({"type": "message", "role": "user", "content": [{"type": "input_image"}]})], "invalid_value"),
    ("item text missing", [item({"type": "message", "role": "user", "content": [{"type": "input_text"}]})], "missing_required_parameter"),
    ("user item 200k characters", [item(user_item(HUGE))], "string_above_max_length"),
    ("system item 200k characters", [item({"type": "message", "role": "system", "content": [{"type": "input_text", "text": HUGE}]})], "string_above_max_length"),
    ("assistant item 200k characters", [item({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": HUGE}]})], "string_above_max_length"),
    ("system items past half the context", [
        item({"type": "message", "role": "system", "content": [{"type": "input_text", "text": "rule " * 400}]}),
        item({"type": "message", "role": "system", "content": [{"type": "input_text", "text": "rule " * 400}]}),
        item({"type": "message", "role": "system", "content": [{"type": "input_text", "text": "rule " * 400}]}),
    ], "string_above_max_length"),
    ("tool output 200k characters", [item({"type": "function_call_output", "call_id": "c", "output": HUGE})], "string_above_max_length"),
    ("tool output without call_id", [item({"type": "function_call_output", "output": "1"})], "missing_required_parameter"),
    ("item audio not base64", [item({"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": "***"}]})], "invalid_audio"),
    ("item audio over 15 MiB", [audio_item(bytes(MAX_APPEND_BYTES + 4))], "audio_too_large"),
    ("item audio past the duration limit (g711)", [
        session(audio={"input": {"format": {"type": "audio/pcmu"}}}),
        audio_item(ulaw_encode(np.zeros(int(8000 * (MAX_ITEM_AUDIO_S + 10)), dtype=np.int16))),
    ], "audio_too_large"),
    ("unknown previous_item_id", [item(user_item("hi"), previous_item_id="item_nope")], "item_create_invalid_previous_item_id"),
    ("duplicate item id", [item(user_item("hi", id="item_dup")), item(user_item("again", id="item_dup"))], "item_create_duplicate_item_id"),
    ("retrieve unknown item", [ev("conversation.item.retrieve", item_id="item_nope")], "item_retrieve_invalid_item_id"),
    ("retrieve item id a number", [ev("conversation.item.retrieve", item_id=5)], "invalid_value"),
    ("delete unknown item", [ev("conversation.item.delete", item_id="item_nope")], "item_delete_invalid_item_id"),
    ("truncate unknown item", [ev("conversation.item.truncate", item_id="item_nope", content_index=0, audio_end_ms=0)], "item_truncate_invalid_item_id"),
    ("truncate without content_index", [item(user_item("hi", id="item_t")), ev("conversation.item.truncate", item_id="item_t", audio_end_ms=0)], "missing_required_parameter"),
    ("truncate a user item", [item(user_item("hi", id="item_u")), ev("conversation.item.truncate", item_id="item_u", content_index=0, audio_end_ms=0)], "invalid_value"),
    ("response not an object", [ev("response.create", response="now")], "invalid_value"),
    ("response instructions a number", [ev("response.create", response={"instructions": 42})], "invalid_value"),
    ("response instructions 200k characters", [ev("response.create", response={"instructions": HUGE})], "string_above_max_length"),
    ("response with 10,000 tools", [ev("response.create", response={"tools": [{**TOOL, "name": f"f{i}"} for i in range(10_000)]})], "array_above_max_length"),
    ("response out of band", [ev("response.create", response={"conversation": "none"})], "unsupported"),
    ("response metadata not strings", [ev("response.create", response={"metadata": {"a": 1}})], "invalid_value"),
    ("response modalities x", [ev("response.create", response={"output_modalities": ["x"]})], "invalid_value"),
    ("cancel with no response", [ev("response.cancel")], "response_cancel_not_active"),
    ("cancel an unknown response", [ev("response.cancel", response_id="resp_nope")], "response_cancel_not_active"),
    ("output_audio_buffer.clear", [ev("output_audio_buffer.clear")], "unsupported"),
    ("transcription_session.update", [ev("transcription_session.update", session={})], "unsupported"),
    # accepted: repaired or trimmed, and the session goes on
    ("lone surrogate in user text", ['{"type": "conversation.item.create", "item": {"type": "message", "role": "user", '
                                     '"content": [{"type": "input_text", "text": "hi \\ud800 there"}]}}'], None),
    ("lone surrogate in instructions", ['{"type": "session.update", "session": {"instructions": "Be brief \\udfff."}}'], None),
    ("lone surrogate in a key", ['{"type": "response.create", "response": {"metadata": {"k\\ud800": "v"}, "output_modalities": ["text"], "max_output_tokens": 2}}'], None),
    ("every optional field null", ['{"type": "response.create", "response": {"instructions": null, "tools": null, "tool_choice": null, '
                                   '"temperature": null, "max_output_tokens": 2, "output_modalities": ["text"], "metadata": null}}'], None),
    ("history longer than the context", [item(user_item("lorem " * 200)) for _ in range(8)], None),
]


@pytest.fixture(scope="module")
def server(engines: Engines):
    with RunningServer(engines, ServerOptions(session=SessionOptions(output_lead_ms=300))) as running:
        yield running


async def valid_turn(client: RawClient) -> dict:
    await client.send({"type": "conversation.item.create", "item": user_item("Say hello.")})
    await client.send({"type": "response.create", "response": {"output_modalities": ["text"], "max_output_tokens": 4}})
    while True:
        event = await client.next(120)
        assert event["type"] != "error", f"the session was poisoned: {event}"
        if event["type"] == "response.done":
            return event


@pytest.mark.parametrize("messages,code", [pytest.param(m, c, id=name) for name, m, c in CORPUS])
async def test_bad_input_gets_a_clear_error_and_the_session_lives_on(server, caplog, messages, code):
    caplog.set_level(logging.WARNING)
    async with ws_connect(f"{server.base_url}/realtime", max_size=None) as connection:
        client = RawClient(connection, "ga")
        await client.until("conversation.created", 30)
        await client.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}})
        await client.until("session.updated", 30)
        for index, text in enumerate(messages):
            await client.send_raw(text)
            if index < len(messages) - 1 or code is None:
                continue  # a setup step (or an accepted input): any error shows up below
            error = await client.until("error", 60)
            assert error["error"]["code"] == code, error
            assert error["error"]["type"] != "server_error" and error["error"]["message"], error
            assert "Traceback" not in error["error"]["message"]
        if code is None and any('"response.create"' in text for text in messages):
            await client.until("response.done", 120)  # the accepted input started a response of its own
        done = await valid_turn(client)
        assert done["response"]["status"] == "completed", done
        assert done["response"]["output"][0]["type"] == "message"  # answered (a tiny model may answer with nothing)
        errors = [e for e in client.events if e["type"] == "error"]
        assert len(errors) == (0 if code is None else 1), errors  # setup steps were all accepted
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert not tracebacks, tracebacks[0].getMessage()
