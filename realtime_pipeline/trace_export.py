"""Where traces go: JSON lines, a Chrome/Perfetto trace, a rich table, OpenTelemetry.

Everything here takes plain :class:`~.tracing.TurnTrace` lists, so a tracer's
turns (or any subset, or traces loaded back from JSON) export the same way.
rich and OpenTelemetry are imported only when their export is used.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .tracing import (
    FIRST_SAMPLE_PLAYED,
    RESPONSE_CANCELLED,
    RESPONSE_DONE,
    SEED_BUDGET_MS,
    STAGE_SPANS,
    TOTAL_SPANS,
    TURN_COMMITTED,
    USER_SPEECH_END,
    SpanStats,
    TraceSummary,
    TurnTrace,
)

if TYPE_CHECKING:
    from rich.table import Table

#: Perfetto tracks, top to bottom: the whole turn, each stage, then the reply being played.
TURN_TRACK = "turn"
REPLY_TRACK = "reply playing"
STAMPS_TRACK = "stamps"


# -- JSON lines ---------------------------------------------------------------
def jsonl_lines(traces: Iterable[TurnTrace]) -> Iterator[str]:
    """One compact JSON object per turn (see :meth:`TurnTrace.to_dict`)."""
    for trace in traces:
        yield json.dumps(trace.to_dict(), sort_keys=False)


def write_jsonl(traces: Iterable[TurnTrace], path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as handle:
        for line in jsonl_lines(traces):
            handle.write(line + "\n")


def read_jsonl(path: str | Path) -> list[TurnTrace]:
    """Traces back from :func:`write_jsonl` (e.g. to summarize runs together)."""
    traces = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            traces.append(TurnTrace(int(record["turn_id"]), dict(record["stamps_s"]), dict(record.get("texts", {}))))
    return traces


# -- Chrome / Perfetto trace-event JSON -------------------------------------------
def perfetto_trace(traces: Sequence[TurnTrace], *, process_name: str = "realtime_pipeline") -> dict[str, Any]:
    """Chrome trace-event JSON (the format ui.perfetto.dev and chrome://tracing open).

    One process; one thread (track) per stage plus a ``turn`` track (user speech
    end → first reply sample, i.e. voice-to-voice) and a ``reply playing`` track
    (first sample → response done/cancelled). Each turn is one complete event
    (``ph: X``) per track, named after the turn (a stage whose end came before its
    start, work done ahead, is drawn end → start and named "ahead by N ms"); every
    stamp is also an instant event on the ``stamps`` track. Times are
    microseconds from the earliest stamp.
    """
    traces = [t for t in traces if t.stamps]
    origin_s = min((min(t.stamps.values()) for t in traces), default=0.0)
    tracks = [TURN_TRACK, *STAGE_SPANS, REPLY_TRACK, STAMPS_TRACK]
    tid = {name: index + 1 for index, name in enumerate(tracks)}
    pid = 1
    events: list[dict[str, Any]] = [
        {"ph": "M", "pid": pid, "tid": 0, "name": "process_name", "args": {"name": process_name}},
    ]
    for name in tracks:
        events.append({"ph": "M", "pid": pid, "tid": tid[name], "name": "thread_name", "args": {"name": name}})
        events.append({"ph": "M", "pid": pid, "tid": tid[name], "name": "thread_sort_index", "args": {"sort_index": tid[name]}})

    def us(at_s: float) -> float:
        return round((at_s - origin_s) * 1e6, 3)

    def span(track: str, trace: TurnTrace, start: str, end: str) -> None:
        if start not in trace.stamps or end not in trace.stamps:
            return
        begin_s, end_s = trace.stamps[start], trace.stamps[end]
        ms = 1000.0 * (end_s - begin_s)
        name = f"turn {trace.turn_id}"
        if ms < 0:  # work done ahead (e.g. the LLM answered a transcript preview): drawn end → start
            name += f" (ahead by {-ms:.0f} ms)"
            begin_s, end_s = end_s, begin_s
        events.append({
            "ph": "X", "pid": pid, "tid": tid[track], "name": name, "cat": track,
            "ts": us(begin_s), "dur": round((end_s - begin_s) * 1e6, 3),
            "args": {"turn_id": trace.turn_id, "from": start, "to": end, "ms": round(ms, 3), **trace.texts},
        })

    for trace in traces:
        span(TURN_TRACK, trace, *TOTAL_SPANS["voice_to_voice"])
        for name, (start, end) in STAGE_SPANS.items():
            span(name, trace, start, end)
        end_stamp = RESPONSE_CANCELLED if RESPONSE_CANCELLED in trace.stamps else RESPONSE_DONE
        span(REPLY_TRACK, trace, FIRST_SAMPLE_PLAYED, end_stamp)
        for name, at_s in trace.ordered_stamps():
            events.append({"ph": "i", "s": "t", "pid": pid, "tid": tid[STAMPS_TRACK], "name": name,
                           "ts": us(at_s), "args": {"turn_id": trace.turn_id}})
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"clock": "time.monotonic", "origin_s": origin_s}}


def write_perfetto(traces: Sequence[TurnTrace], path: str | Path, *, process_name: str = "realtime_pipeline") -> None:
    Path(path).write_text(json.dumps(perfetto_trace(traces, process_name=process_name)), encoding="utf-8")


# -- rich tables --------------------------------------------------------------
def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _budget(budget_ms: Mapping[str, tuple[float, float]] | None, name: str) -> str:
    if not budget_ms or name not in budget_ms:
        return ""
    low, high = budget_ms[name]
    return f"{low:.0f}" if low == high else f"{low:.0f}–{high:.0f}"


def summary_table(
    summary: TraceSummary,
    *,
    budget_ms: Mapping[str, tuple[float, float]] | None = SEED_BUDGET_MS,
    title: str = "latency per stage (ms)",
    critical_path: bool = False,
) -> Table:
    """Stages then totals, one row each: n, p50, p95, max, and the budget beside them.

    With ``critical_path`` the stage rows are what each stage added to the wait
    (:meth:`TurnTrace.critical_path_ms`) instead of the raw spans.
    """
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("span")
    table.add_column("from → to", style="dim")
    for column in ("n", "p50", "p95", "max"):
        table.add_column(column, justify="right")
    if budget_ms:
        table.add_column("budget", justify="right", style="cyan")

    def row(name: str, ends: tuple[str, str], stats: SpanStats, style: str | None = None) -> None:
        cells = [name, f"{ends[0]} → {ends[1]}", str(stats.count), _ms(stats.p50_ms), _ms(stats.p95_ms), _ms(stats.max_ms)]
        if budget_ms:
            cells.append(_budget(budget_ms, name))
        table.add_row(*cells, style=style)

    for name, stats in (summary.critical_path if critical_path else summary.stages).items():
        row(name, STAGE_SPANS[name], stats)
    table.add_section()
    for name, stats in summary.totals.items():
        row(name, TOTAL_SPANS[name], stats, style="bold")
    return table


def turns_table(traces: Sequence[TurnTrace], *, title: str = "latency per turn (ms)") -> Table:
    """One row per turn, one column per span, plus the user's words."""
    from rich.table import Table

    names = [*STAGE_SPANS, *TOTAL_SPANS]
    table = Table(title=title, title_justify="left")
    table.add_column("turn", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("user said", overflow="ellipsis", no_wrap=True, max_width=40)
    for trace in traces:
        breakdown = trace.breakdown_ms()
        table.add_row(str(trace.turn_id), *(_ms(breakdown.get(n)) for n in names), trace.texts.get("user", ""))
    return table


# -- OpenTelemetry --------------------------------------------------------------
def export_opentelemetry(traces: Sequence[TurnTrace], *, tracer_provider: Any = None) -> int:
    """Emit each turn as a ``voice_turn`` span with one child span per stage; returns the spans emitted.

    Uses the global tracer provider unless one is given. Monotonic stamps are
    mapped to wall-clock nanoseconds with the offset between the two clocks now.
    Raises ImportError with an install hint when ``opentelemetry-api`` is missing.
    """
    try:
        from opentelemetry import trace as otel_trace
    except ImportError as error:
        raise ImportError("OpenTelemetry export needs the opentelemetry-api package (pip install opentelemetry-sdk)") from error

    otel_tracer = otel_trace.get_tracer("realtime_pipeline", tracer_provider=tracer_provider)
    offset_ns = time.time_ns() - time.monotonic_ns()

    def ns(at_s: float) -> int:
        return int(at_s * 1e9) + offset_ns

    emitted = 0
    for trace in traces:
        if not trace.stamps:
            continue
        start_s = trace.stamps.get(USER_SPEECH_END, trace.stamps.get(TURN_COMMITTED, min(trace.stamps.values())))
        end_s = max(trace.stamps.values())
        attributes: dict[str, Any] = {"turn_id": trace.turn_id}
        attributes.update({f"latency.{name}_ms": value for name, value in trace.breakdown_ms().items()})
        attributes.update({f"text.{key}": value for key, value in trace.texts.items()})
        root = otel_tracer.start_span("voice_turn", start_time=ns(start_s), attributes=attributes)
        context = otel_trace.set_span_in_context(root)
        for name, (start, end) in STAGE_SPANS.items():
            if start in trace.stamps and end in trace.stamps:
                child = otel_tracer.start_span(name, context=context, start_time=ns(trace.stamps[start]),
                                               attributes={"turn_id": trace.turn_id})
                child.end(end_time=ns(max(trace.stamps[end], trace.stamps[start])))
                emitted += 1
        for name, at_s in trace.ordered_stamps():
            root.add_event(name, timestamp=ns(at_s))
        root.end(end_time=ns(end_s))
        emitted += 1
    return emitted
