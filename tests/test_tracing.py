"""The tracer on a fake clock: stamps, spans, percentiles, and every export's format."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from rich.console import Console

from realtime_pipeline import Conversation, Pipeline, Tracer
from realtime_pipeline.stage import Inbox, Outbox, Stage, StageContext
from realtime_pipeline.trace_export import (
    STAMPS_TRACK,
    TURN_TRACK,
    export_opentelemetry,
    jsonl_lines,
    perfetto_trace,
    read_jsonl,
    summary_table,
    turns_table,
)
from realtime_pipeline.tracing import (
    ASR_FINAL,
    FIRST_CHUNK,
    FIRST_SAMPLE_PLAYED,
    LLM_FIRST_TOKEN,
    RESPONSE_CANCELLED,
    RESPONSE_DONE,
    SEED_BUDGET_MS,
    STAGE_SPANS,
    TOTAL_SPANS,
    TTS_FIRST_AUDIO,
    TURN_COMMITTED,
    USER_SPEECH_END,
    VAD_SPEECH_STOPPED,
    SpanStats,
    percentile,
)


class FakeClock:
    def __init__(self, start_s: float = 100.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance_ms(self, ms: float) -> None:
        self.now_s += ms / 1000.0


#: A turn's hops, each this many ms after the previous one.
HOPS_MS = [
    (USER_SPEECH_END, 0), (VAD_SPEECH_STOPPED, 500), (TURN_COMMITTED, 0), (ASR_FINAL, 40), (LLM_FIRST_TOKEN, 60),
    (FIRST_CHUNK, 100), (TTS_FIRST_AUDIO, 50), (FIRST_SAMPLE_PLAYED, 20), (RESPONSE_DONE, 3000),
]


def play_turn(tracer: Tracer, clock: FakeClock, turn_id: int, *, scale: float = 1.0, user: str = "hello") -> None:
    for name, after_ms in HOPS_MS:
        clock.advance_ms(after_ms * scale)
        tracer.stamp(turn_id, name)
    tracer.note(turn_id, "user", user)
    tracer.note(turn_id, "assistant", "hi there")
    clock.advance_ms(1000)  # the user listens, then speaks again


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def traced(clock: FakeClock) -> Tracer:
    tracer = Tracer(clock=clock)
    for turn_id, scale in ((1, 1.0), (2, 2.0), (3, 0.5)):
        play_turn(tracer, clock, turn_id, scale=scale, user=f"turn {turn_id}")
    return tracer


def test_first_stamp_wins_unless_overwritten(clock: FakeClock) -> None:
    tracer = Tracer(clock=clock)
    tracer.stamp(1, LLM_FIRST_TOKEN)
    clock.advance_ms(30)
    tracer.stamp(1, LLM_FIRST_TOKEN)
    assert tracer.turn(1).stamps[LLM_FIRST_TOKEN] == pytest.approx(100.0)
    tracer.stamp(1, USER_SPEECH_END, 99.5)
    tracer.stamp(1, USER_SPEECH_END, 99.8, overwrite=True)
    assert tracer.turn(1).stamps[USER_SPEECH_END] == pytest.approx(99.8)
    assert tracer.turn(2) is None


def test_disabled_tracer_records_nothing(clock: FakeClock) -> None:
    tracer = Tracer(enabled=False, clock=clock)
    play_turn(tracer, clock, 1)
    assert tracer.turns == {}
    assert tracer.summary().turns == 0
    assert tracer.summary().stages == {}


def test_breakdown_of_one_turn(traced: Tracer) -> None:
    breakdown = traced.turn(1).breakdown_ms()
    assert breakdown == pytest.approx({
        "endpoint": 500, "asr": 40, "llm": 60, "tts": 150, "playback": 20,
        "voice_to_voice": 770, "after_endpoint": 270,
    })
    assert traced.turn(2).breakdown_ms()["voice_to_voice"] == pytest.approx(1540)
    line = traced.summary_line(1)
    assert "asr 40 ms" in line and "voice_to_voice 770 ms" in line


def test_incomplete_turn_has_only_the_spans_it_has_both_ends_of(clock: FakeClock) -> None:
    tracer = Tracer(clock=clock)
    tracer.stamp(1, TURN_COMMITTED)
    clock.advance_ms(25)
    tracer.stamp(1, ASR_FINAL)
    assert tracer.turn(1).breakdown_ms() == pytest.approx({"asr": 25})
    summary = tracer.summary()
    assert list(summary.stages) == ["asr"] and summary.totals == {}


def test_critical_path_counts_work_done_ahead_as_zero(clock: FakeClock) -> None:
    tracer = Tracer(clock=clock)
    for name, after_ms in [(USER_SPEECH_END, 0), (LLM_FIRST_TOKEN, 400), (TURN_COMMITTED, 100), (ASR_FINAL, 30),
                           (TTS_FIRST_AUDIO, 50), (FIRST_SAMPLE_PLAYED, 20)]:  # the LLM answered a preview
        clock.advance_ms(after_ms)
        tracer.stamp(1, name)
    trace = tracer.turn(1)
    assert trace.breakdown_ms()["llm"] == pytest.approx(-130.0)
    assert trace.breakdown_ms()["tts"] == pytest.approx(180.0)
    path = trace.critical_path_ms()
    assert path == pytest.approx({"endpoint": 500, "asr": 30, "llm": 0, "tts": 50, "playback": 20})
    assert sum(path.values()) == pytest.approx(trace.breakdown_ms()["voice_to_voice"])
    summary = tracer.summary()
    assert summary.critical_path["llm"].p50_ms == 0.0 and summary.stages["llm"].p50_ms == pytest.approx(-130.0)
    console = Console(record=True, width=200)
    console.print(summary_table(summary, critical_path=True))
    assert "-130" not in console.export_text()
    llm = [e for e in perfetto_trace(tracer.traces())["traceEvents"] if e.get("cat") == "llm"]
    assert len(llm) == 1 and llm[0]["dur"] == pytest.approx(130_000.0) and llm[0]["args"]["ms"] == pytest.approx(-130.0)
    assert llm[0]["name"] == "turn 1 (ahead by 130 ms)"


def test_critical_path_equals_spans_without_work_ahead(traced: Tracer) -> None:
    for trace in traced.traces():
        spans = trace.breakdown_ms()
        assert trace.critical_path_ms() == pytest.approx({name: spans[name] for name in STAGE_SPANS})


def test_percentiles_interpolate_linearly() -> None:
    values = [100.0, 200.0, 300.0, 400.0, 1000.0]
    assert percentile(values, 50) == pytest.approx(300.0)
    assert percentile(values, 95) == pytest.approx(400.0 + 0.8 * 600.0)
    stats = SpanStats.of(values)
    assert (stats.count, stats.min_ms, stats.max_ms, stats.mean_ms) == (5, 100.0, 1000.0, pytest.approx(400.0))
    assert SpanStats.of([42.0]).p50_ms == SpanStats.of([42.0]).p95_ms == 42.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_across_turns(traced: Tracer) -> None:
    summary = traced.summary()
    assert summary.turns == 3
    assert list(summary.stages) == list(STAGE_SPANS)
    assert list(summary.totals) == list(TOTAL_SPANS)
    v2v = summary.totals["voice_to_voice"]
    assert v2v.count == 3
    assert v2v.p50_ms == pytest.approx(770.0)  # turns: 770, 1540, 385
    assert v2v.p95_ms == pytest.approx(770.0 + 0.9 * 770.0)
    assert v2v.p95_ms >= v2v.p50_ms
    assert traced.summary([1]).totals["voice_to_voice"].p95_ms == pytest.approx(770.0)
    as_dict = summary.to_dict()
    assert as_dict["stages"]["asr"]["p50"] == pytest.approx(40.0)
    json.dumps(as_dict)


def test_jsonl_one_valid_record_per_turn(traced: Tracer, tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    traced.write_jsonl(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert [r["turn_id"] for r in records] == [1, 2, 3]
    assert list(records[0]["stamps_s"]) == [name for name, _ in HOPS_MS]
    assert records[0]["spans_ms"]["voice_to_voice"] == pytest.approx(770.0)
    assert records[1]["texts"] == {"user": "turn 2", "assistant": "hi there"}
    loaded = read_jsonl(path)
    assert [t.stamps for t in loaded] == [t.stamps for t in traced.traces()]
    assert list(jsonl_lines([])) == []


def test_perfetto_trace_is_valid_trace_event_json(traced: Tracer, tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    traced.write_perfetto(path)
    trace = json.loads(path.read_text(encoding="utf-8"))
    events = trace["traceEvents"]
    assert trace["displayTimeUnit"] == "ms"
    for event in events:
        assert event["ph"] in {"M", "X", "i"}
        assert isinstance(event["pid"], int) and isinstance(event["tid"], int) and isinstance(event["name"], str)
        if event["ph"] in {"X", "i"}:
            assert isinstance(event["ts"], (int, float)) and event["ts"] >= 0
        if event["ph"] == "X":
            assert event["dur"] >= 0
        if event["ph"] == "i":
            assert event["s"] in {"t", "p", "g"}
    tracks = {e["args"]["name"]: e["tid"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert set(STAGE_SPANS) <= set(tracks) and TURN_TRACK in tracks and STAMPS_TRACK in tracks
    assert len(set(tracks.values())) == len(tracks)
    for stage in STAGE_SPANS:  # each stage a track, each turn one span on it, in order, never overlapping
        spans = sorted((e for e in events if e["ph"] == "X" and e["tid"] == tracks[stage]), key=lambda e: e["ts"])
        assert [e["name"] for e in spans] == ["turn 1", "turn 2", "turn 3"]
        for earlier, later in zip(spans, spans[1:]):
            assert earlier["ts"] + earlier["dur"] <= later["ts"]
    asr = next(e for e in events if e["ph"] == "X" and e["tid"] == tracks["asr"] and e["name"] == "turn 2")
    assert asr["dur"] == pytest.approx(80_000.0)  # µs
    turn_spans = [e for e in events if e["ph"] == "X" and e["tid"] == tracks[TURN_TRACK]]
    assert turn_spans[0]["ts"] == 0 and turn_spans[0]["dur"] == pytest.approx(770_000.0)
    instants = [e for e in events if e["ph"] == "i"]
    assert len(instants) == 3 * len(HOPS_MS)


def test_perfetto_of_no_turns_is_still_valid() -> None:
    trace = perfetto_trace([])
    assert all(e["ph"] == "M" for e in trace["traceEvents"])
    json.dumps(trace)


def test_rich_tables_show_spans_and_budget(traced: Tracer) -> None:
    console = Console(record=True, width=200)
    console.print(traced.table())
    console.print(turns_table(traced.traces()))
    console.print(summary_table(traced.summary(), budget_ms=None))
    text = console.export_text()
    for name in (*STAGE_SPANS, *TOTAL_SPANS):
        assert name in text
    low, high = SEED_BUDGET_MS["after_endpoint"]
    assert f"{low:.0f}–{high:.0f}" in text
    assert "1463" in text  # voice-to-voice p95
    assert "turn 3" in text


def test_attach_stamps_response_done_and_cancelled(clock: FakeClock) -> None:
    tracer = Tracer(clock=clock)
    conversation = Conversation()
    detach = tracer.attach(conversation)
    done = conversation.begin_response(1, "hello")
    clock.advance_ms(10)
    conversation.complete_response(done)
    cancelled = conversation.begin_response(2, "and then")
    clock.advance_ms(10)
    conversation.cancel_response("turn_detected")
    assert tracer.turn(1).stamps == {RESPONSE_DONE: pytest.approx(100.01)}
    assert tracer.turn(2).stamps == {RESPONSE_CANCELLED: pytest.approx(100.02)}
    assert cancelled.cancelled
    detach()
    conversation.complete_response(conversation.begin_response(3, "again"))
    assert tracer.turn(3) is None


class _Idle(Stage):
    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        async for frame in inbox:
            await outbox.send(frame)


def test_pipeline_tracer_sees_response_ends() -> None:
    pipeline = Pipeline([_Idle()])
    response = pipeline.conversation.begin_response(7, "hi")
    pipeline.conversation.complete_response(response)
    assert RESPONSE_DONE in pipeline.tracer.turn(7).stamps


def test_opentelemetry_export_makes_a_span_per_turn_and_stage(traced: Tracer) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    emitted = traced.export_opentelemetry(tracer_provider=provider)
    spans = exporter.get_finished_spans()
    assert emitted == len(spans) == 3 * (1 + len(STAGE_SPANS))
    roots = [s for s in spans if s.name == "voice_turn"]
    assert sorted(s.attributes["turn_id"] for s in roots) == [1, 2, 3]
    root = next(s for s in roots if s.attributes["turn_id"] == 2)
    assert root.attributes["text.user"] == "turn 2"
    assert root.attributes["latency.voice_to_voice_ms"] == pytest.approx(1540.0)
    asr = next(s for s in spans if s.name == "asr" and s.attributes["turn_id"] == 2)
    assert asr.parent.span_id == root.context.span_id
    assert (asr.end_time - asr.start_time) / 1e6 == pytest.approx(80.0, abs=0.01)
    assert [e.name for e in root.events] == [name for name, _ in HOPS_MS]


def test_opentelemetry_missing_raises_an_install_hint(traced: Tracer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ImportError, match="opentelemetry"):
        export_opentelemetry(traced.traces())
