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
    for bad in ({"threshold": 2}, {"silence_duration_ms": -1}, {"create_response": "yes"}, {"type": "magic"}, "on",
                {"type": "semantic_vad", "eagerness": "eager"}):
        with pytest.raises(ProtocolError):
            parse_turn_detection(bad, TurnDetection(), "p")


def test_semantic_vad_maps_eagerness_and_server_vad_keeps_its_exact_silence():
    from realtime_pipeline.server.client_events import ClientEventsMixin

    semantic = parse_turn_detection({"type": "semantic_vad", "eagerness": "high"}, TurnDetection(), "p")
    assert (semantic.type, semantic.eagerness) == ("semantic_vad", "high")
    rendered = render_session(SessionConfig(turn_detection=semantic), Dialect.GA, "s")["audio"]["input"]["turn_detection"]
    assert rendered == {"type": "semantic_vad", "eagerness": "high", "create_response": True, "interrupt_response": True}
    settings = ClientEventsMixin._vad_settings(semantic).turn_taking
    assert (settings.mode, settings.max_silence_ms) == ("semantic", 2000)
    auto = ClientEventsMixin._vad_settings(parse_turn_detection({"type": "semantic_vad"}, None, "p")).turn_taking
    assert auto.max_silence_ms == 4000  # auto = medium, OpenAI's 4 s cap
    fixed = ClientEventsMixin._vad_settings(parse_turn_detection({"type": "server_vad", "silence_duration_ms": 650}, semantic, "p"))
    assert fixed.turn_taking.mode == "silence" and fixed.turn_taking.silence_ms == 650


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


# -- limits and fair sharing, without models ------------------------------------------------
def test_priority_lock_serves_waiters_by_priority_then_arrival():
    import threading
    import time

    from realtime_pipeline.server.engines import Priority, PriorityLock

    lock = PriorityLock()
    lock.acquire(Priority.NORMAL)
    order: list[str] = []

    def wait(name: str, level: Priority) -> None:
        lock.acquire(level)
        order.append(name)
        lock.release()

    threads = []
    for name, level in (("partial", Priority.PARTIAL_TRANSCRIPT), ("later", Priority.LATER_CLAUSE), ("final", Priority.FINAL_TRANSCRIPT),
                        ("first", Priority.FIRST_CLAUSE), ("final2", Priority.FINAL_TRANSCRIPT)):
        thread = threading.Thread(target=wait, args=(name, level))
        thread.start()
        threads.append(thread)
        deadline = time.monotonic() + 5
        while len(lock._waiting) < len(threads) and time.monotonic() < deadline:
            time.sleep(0.001)
    lock.release()
    for thread in threads:
        thread.join(5)
    assert order == ["final", "final2", "first", "later", "partial"]


def test_long_audio_is_cut_in_pauses_into_short_slices():
    from realtime_pipeline.server.engines import ASR_SLICE_S, slice_points

    rate = 16_000
    audio = (np.sin(np.arange(rate * 30) / 5.0) * 10000).astype(np.int16)
    for pause_s in (6.5, 12.0, 19.0, 25.5):  # 200 ms pauses between "words"
        audio[int(pause_s * rate) : int((pause_s + 0.2) * rate)] = 0
    cuts = slice_points(audio, rate)
    bounds = [0, *cuts, len(audio)]
    assert all(b - a <= ASR_SLICE_S * rate for a, b in zip(bounds, bounds[1:]))
    assert all(audio[cut - 80 : cut + 80].any() == False for cut in cuts)  # noqa: E712 - each cut is in a pause
    assert slice_points(audio[: 5 * rate], rate) == []


def test_event_inspection_repairs_lone_surrogates_and_refuses_deep_nesting():
    import json

    from realtime_pipeline.server.limits import MAX_EVENT_DEPTH, inspect_event

    text = '{"type": "x", "a": ["hi \\ud800"], "k\\udfff": {"b": "\\ud83d\\ude00 ok"}}'
    data = inspect_event(text, json.loads(text))
    assert data == {"type": "x", "a": ["hi \ufffd"], "k\ufffd": {"b": "\U0001f600 ok"}}
    json.dumps(data).encode("utf-8")  # encodable everywhere now
    deep = "[" * (MAX_EVENT_DEPTH + 1) + "]" * (MAX_EVENT_DEPTH + 1)
    with pytest.raises(ProtocolError) as error:
        inspect_event(deep, json.loads(deep))
    assert error.value.code == "invalid_json" and str(MAX_EVENT_DEPTH) in error.value.message


def test_tool_limits_name_the_limit():
    from realtime_pipeline.server.limits import MAX_SCHEMA_DEPTH, MAX_TOOLS, check_tools

    tool = {"name": "f", "parameters": {"type": "object", "properties": {}}}
    check_tools([tool] * MAX_TOOLS, "tools")
    with pytest.raises(ProtocolError, match=str(MAX_TOOLS)) as many:
        check_tools([tool] * (MAX_TOOLS + 1), "tools")
    assert many.value.code == "array_above_max_length"
    node: dict = {"type": "string"}
    for _ in range(MAX_SCHEMA_DEPTH):
        node = {"type": "array", "items": node}
    with pytest.raises(ProtocolError, match=f"{MAX_SCHEMA_DEPTH} levels") as deep:
        check_tools([{"name": "f", "parameters": node}], "tools")
    assert deep.value.code == "invalid_function_parameters" and deep.value.param == "tools[0].parameters"


def test_history_is_trimmed_to_fit_the_context_oldest_first():
    from realtime_pipeline.server.limits import MESSAGE_OVERHEAD_TOKENS, fit_messages

    def words(text: str) -> int:
        return len(text.split())

    system = {"role": "system", "content": "be brief"}
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i} " + "w " * 99} for i in range(10)]
    fitted = fit_messages([system, *history], words, 2 + 4 * (100 + MESSAGE_OVERHEAD_TOKENS) + MESSAGE_OVERHEAD_TOKENS)
    assert fitted[0] == system and [m["content"].split()[0] for m in fitted[1:]] == ["m6", "m7", "m8", "m9"]
    assert fitted[1]["role"] == "user"
    alone = fit_messages([system, {"role": "user", "content": "old " * 500 + "newest words"}], words, 60)
    assert alone[1]["content"].endswith("newest words") and words(alone[1]["content"]) <= 60
    assert fit_messages([system, *history], words, 10**6) == [system, *history]


def test_bounded_cache_forgets_the_oldest():
    from realtime_pipeline.server.limits import BoundedCache

    cache = BoundedCache(2)
    cache["a"], cache["b"], cache["c"] = 1, 2, 3
    assert list(cache) == ["b", "c"]


def test_priority_lock_does_not_starve_a_long_waiter(monkeypatch):
    import threading
    import time

    from realtime_pipeline.server import engines
    from realtime_pipeline.server.engines import Priority, PriorityLock

    monkeypatch.setitem(engines.PRIORITY_DELAY_S, Priority.PARTIAL_TRANSCRIPT, 0.05)
    lock = PriorityLock()
    lock.acquire(Priority.FINAL_TRANSCRIPT)
    order: list[str] = []

    def wait(name: str, level: Priority) -> None:
        lock.acquire(level)
        order.append(name)
        lock.release()

    partial = threading.Thread(target=wait, args=("partial", Priority.PARTIAL_TRANSCRIPT))
    partial.start()
    time.sleep(0.1)  # past the partial's delay: a final arriving now comes after it
    final = threading.Thread(target=wait, args=("final", Priority.FINAL_TRANSCRIPT))
    final.start()
    deadline = time.monotonic() + 5
    while len(lock._waiting) < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    lock.release()
    partial.join(5)
    final.join(5)
    assert order == ["partial", "final"]
