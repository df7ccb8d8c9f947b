"""The server's wire layer without models: audio codecs, and session / response / item shapes
validated strictly against the openai SDK's models in both dialects."""

from __future__ import annotations

import base64
import warnings

import numpy as np
import pytest
from server_support import validate_event

from realtime_pipeline.server.codecs import (
    AudioDecodeError,
    AudioDecoder,
    AudioEncoder,
    alaw_decode,
    alaw_encode,
    ulaw_decode,
    ulaw_encode,
)
from realtime_pipeline.server.protocol import (
    ContentPart,
    Dialect,
    ItemRecord,
    ProtocolError,
    SessionConfig,
    TurnDetection,
    event_name,
    parse_format,
    parse_turn_detection,
    render_item,
    render_response,
    render_session,
)

ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)


def test_g711_matches_the_reference_coder_on_every_sample():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # the CPython reference (gone in 3.13)
    raw = ALL_SAMPLES.tobytes()
    assert ulaw_encode(ALL_SAMPLES) == audioop.lin2ulaw(raw, 2)
    assert alaw_encode(ALL_SAMPLES) == audioop.lin2alaw(raw, 2)
    codes = bytes(range(256))
    assert ulaw_decode(codes).tobytes() == audioop.ulaw2lin(codes, 2)
    assert alaw_decode(codes).tobytes() == audioop.alaw2lin(codes, 2)


@pytest.mark.parametrize("encode,decode", [(ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)])
def test_g711_round_trip_error_is_within_a_quantisation_step(encode, decode):
    tone = (np.sin(np.arange(8000) / 7.0) * 20000).astype(np.int16)
    error = np.abs(decode(encode(tone)).astype(np.int32) - tone)
    assert error.max() <= 1024  # the largest G.711 step at full scale
    assert np.corrcoef(decode(encode(tone)), tone)[0, 1] > 0.999


@pytest.mark.parametrize("wire", ["pcm16", "g711_ulaw", "g711_alaw"])
def test_streaming_decode_and_encode_keep_the_duration(wire):
    tone = (np.sin(np.arange(24_000) / 9.0) * 12000).astype(np.int16)
    encoder = AudioEncoder(wire, 24_000)
    pieces = [encoder.encode(tone[i : i + 2400]) for i in range(0, len(tone), 2400)]
    pieces.append(encoder.encode(tone[:0], last=True))
    decoder = AudioDecoder(wire, 16_000)
    decoded = np.concatenate([decoder.decode(piece)[0] for piece in pieces] + [decoder.flush()])
    assert abs(len(decoded) - 16_000) <= 4  # what the streaming resamplers held back came out at the flushes
    assert np.abs(decoded).max() > 8000


def test_decoder_rejects_bad_base64_and_half_samples():
    decoder = AudioDecoder("pcm16", 16_000)
    with pytest.raises(AudioDecodeError):
        decoder.decode("not base64 !!")
    with pytest.raises(AudioDecodeError):
        decoder.decode(base64.b64encode(b"\x01\x02\x03").decode())


def test_formats_parse_in_both_dialects():
    assert parse_format("g711_ulaw", "p") == "g711_ulaw"
    assert parse_format({"type": "audio/pcm", "rate": 24000}, "p") == "pcm16"
    assert parse_format({"type": "audio/pcma"}, "p") == "g711_alaw"
    for bad in ("mp3", {"type": "audio/pcm", "rate": 16000}, 3):
        with pytest.raises(ProtocolError):
            parse_format(bad, "p")


def test_turn_detection_parse_and_validation():
    assert parse_turn_detection(None, TurnDetection(), "p") is None
    parsed = parse_turn_detection({"type": "server_vad", "threshold": 0.7, "silence_duration_ms": 300}, TurnDetection(), "p")
    assert parsed == TurnDetection(threshold=0.7, silence_duration_ms=300)
    for bad in ({"threshold": 2}, {"silence_duration_ms": -1}, {"create_response": "yes"}, {"type": "magic"}, "on"):
        with pytest.raises(ProtocolError):
            parse_turn_detection(bad, TurnDetection(), "p")


CONFIGS = [
    SessionConfig(),
    SessionConfig(model="gpt-realtime", turn_detection=None, output_modalities=("text",), transcription=None),
    SessionConfig(input_format="g711_ulaw", output_format="g711_alaw", max_output_tokens=42, tool_choice={"type": "function", "name": "f"},
                  tools=({"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}},)),
]


@pytest.mark.parametrize("dialect", ["beta", "ga"])
@pytest.mark.parametrize("config", CONFIGS)
def test_session_objects_validate_strictly(dialect, config):
    session = render_session(config, Dialect(dialect), "sess_1")
    for kind in ("session.created", "session.updated"):
        validate_event({"type": kind, "event_id": "event_1", "session": session}, dialect)


@pytest.mark.parametrize("dialect", ["beta", "ga"])
def test_items_and_responses_validate_strictly(dialect):
    d = Dialect(dialect)
    items = [
        ItemRecord("item_1", "message", role="user", content=[ContentPart("input_audio", None)]),
        ItemRecord("item_2", "message", role="user", content=[ContentPart("input_text", "hi")]),
        ItemRecord("item_3", "message", role="assistant", status="incomplete", content=[ContentPart("output_audio", "Hello")]),
        ItemRecord("item_4", "message", role="assistant", content=[ContentPart("output_text", "Hello")]),
        ItemRecord("item_5", "message", role="system", content=[ContentPart("input_text", "Be brief.")]),
        ItemRecord("item_6", "function_call", call_id="call_1", name="f", arguments="{}"),
        ItemRecord("item_7", "function_call_output", call_id="call_1", output="42"),
    ]
    added = event_name("conversation.item.added", d)
    for item in items:
        validate_event({"type": added, "event_id": "e", "item": render_item(item, d), "previous_item_id": None}, dialect)
        validate_event({"type": "conversation.item.retrieved", "event_id": "e", "item": render_item(item, d)}, dialect)
    for status, details in (("in_progress", None), ("completed", None), ("cancelled", {"type": "cancelled", "reason": "turn_detected"})):
        response = render_response(
            "resp_1", status=status, config=SessionConfig(), dialect=d, output=items[2:4], conversation_id="conv_1",
            max_output_tokens="inf", modalities=("audio",), temperature=0.8, status_details=details,
            usage={"total_tokens": 3, "input_tokens": 1, "output_tokens": 2}, metadata={"k": "v"},
        )
        validate_event({"type": "response.done", "event_id": "e", "response": response}, dialect)


def test_event_names_per_dialect():
    assert event_name("response.output_audio.delta", Dialect.BETA) == "response.audio.delta"
    assert event_name("response.output_audio.delta", Dialect.GA) == "response.output_audio.delta"
    assert event_name("conversation.item.added", Dialect.BETA) == "conversation.item.created"
    assert event_name("conversation.item.done", Dialect.BETA) is None
    assert event_name("response.done", Dialect.BETA) == "response.done"
