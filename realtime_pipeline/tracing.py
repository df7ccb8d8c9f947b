"""Latency tracer: monotonic stamps per turn, and the per-stage breakdown.

Stages call :meth:`Tracer.stamp` at every hop. The first stamp of a name in a
turn wins (a turn's *first* token, *first* audio), so stages can stamp
unconditionally. A disabled tracer costs one attribute check per call.

:meth:`Tracer.summary` gives the cross-turn percentiles as a
:class:`TraceSummary`; :mod:`.trace_export` writes JSON lines, a
Chrome/Perfetto trace, a rich table and (if installed) OpenTelemetry spans.
See docs/latency.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rich.table import Table

    from .conversation import Conversation

# The hops of one turn, in the order they happen.
USER_SPEECH_END = "user_speech_end"          # last voiced input sample (VAD's, or ground truth)
VAD_SPEECH_STOPPED = "vad_speech_stopped"    # VAD decided the user stopped
TURN_COMMITTED = "turn_committed"            # end of turn decided (the pipeline answers now)
ASR_PREVIEW = "asr_preview"                  # early final ready during the end-of-turn silence
ASR_FINAL = "asr_final"                      # final transcript ready
LLM_FIRST_TOKEN = "llm_first_token"
FIRST_CHUNK = "first_chunk"                  # first speakable text chunk
TTS_FIRST_AUDIO = "tts_first_audio"
FIRST_SAMPLE_PLAYED = "first_sample_played"  # first reply sample written to the output
RESPONSE_DONE = "response_done"
RESPONSE_CANCELLED = "response_cancelled"

# Counts of a turn (Tracer.count): the reply's prompt, in tokens, as llama.cpp read it.
PROMPT_TOKENS = "prompt_tokens"                        # the whole prompt
PROMPT_TOKENS_CACHED = "prompt_tokens_cached"          # reused from the KV cache
PROMPT_TOKENS_EVALUATED = "prompt_tokens_evaluated"    # evaluated for this reply (the rest)

STAMP_ORDER = (
    USER_SPEECH_END, VAD_SPEECH_STOPPED, TURN_COMMITTED, ASR_FINAL, LLM_FIRST_TOKEN,
    FIRST_CHUNK, TTS_FIRST_AUDIO, FIRST_SAMPLE_PLAYED, RESPONSE_DONE, RESPONSE_CANCELLED,
)

# name -> (from stamp, to stamp): the spans the breakdown reports.
STAGE_SPANS: dict[str, tuple[str, str]] = {
    "endpoint": (USER_SPEECH_END, TURN_COMMITTED),
    "asr": (TURN_COMMITTED, ASR_FINAL),
    "llm": (ASR_FINAL, LLM_FIRST_TOKEN),
    "tts": (LLM_FIRST_TOKEN, TTS_FIRST_AUDIO),
    "playback": (TTS_FIRST_AUDIO, FIRST_SAMPLE_PLAYED),
}
TOTAL_SPANS: dict[str, tuple[str, str]] = {
    "voice_to_voice": (USER_SPEECH_END, FIRST_SAMPLE_PLAYED),
    "after_endpoint": (TURN_COMMITTED, FIRST_SAMPLE_PLAYED),
}

#: The seed material's latency budget per span, (low, high) in ms. It leaves the
#: end-of-turn silence out, so its total is compared with ``after_endpoint``.
SEED_BUDGET_MS: dict[str, tuple[float, float]] = {
    "asr": (50.0, 100.0),
    "llm": (50.0, 150.0),
    "tts": (50.0, 100.0),
    "playback": (20.0, 20.0),
    "after_endpoint": (190.0, 390.0),
}


@dataclass
class TurnTrace:
    turn_id: int
    stamps: dict[str, float] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def span_ms(self, start: str, end: str) -> float | None:
        if start in self.stamps and end in self.stamps:
            return 1000.0 * (self.stamps[end] - self.stamps[start])
        return None

    def breakdown_ms(self) -> dict[str, float]:
        """Every stage and total span this turn has both ends of, in milliseconds."""
        spans = {**STAGE_SPANS, **TOTAL_SPANS}
        result = {}
        for name, (start, end) in spans.items():
            value = self.span_ms(start, end)
            if value is not None:
                result[name] = value
        return result

    def critical_path_ms(self) -> dict[str, float]:
        """What each stage of STAGE_SPANS *added* to the wait, in ms: never negative, sums to the total.

        A stage's raw span goes negative when its work started ahead (e.g. the
        LLM answering a transcript preview before the final transcript): here
        such a stage adds 0 and the next stage counts from the latest stamp
        reached so far. Without work ahead this equals the raw spans.
        """
        result: dict[str, float] = {}
        reached: float | None = None
        for name, (start, end) in STAGE_SPANS.items():
            if end not in self.stamps:
                continue
            if reached is None:
                if start not in self.stamps:
                    continue
                reached = self.stamps[start]
            result[name] = max(0.0, 1000.0 * (self.stamps[end] - reached))
            reached = max(reached, self.stamps[end])
        return result

    def ordered_stamps(self) -> list[tuple[str, float]]:
        """The stamps in hop order (known names first, then any others by time)."""
        known = [(name, self.stamps[name]) for name in STAMP_ORDER if name in self.stamps]
        extra = sorted(((n, t) for n, t in self.stamps.items() if n not in STAMP_ORDER), key=lambda item: item[1])
        return known + extra

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record: absolute monotonic stamps (s), spans and critical path (ms), texts."""
        return {
            "turn_id": self.turn_id,
            "stamps_s": dict(self.ordered_stamps()),
            "spans_ms": self.breakdown_ms(),
            "critical_path_ms": self.critical_path_ms(),
            "texts": dict(self.texts),
            "counts": dict(self.counts),
        }


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100), linearly interpolated like numpy's default."""
    if not values:
        raise ValueError("percentile of no values")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


@dataclass(frozen=True)
class SpanStats:
    """One span across turns, in milliseconds."""

    count: int
    p50_ms: float
    p95_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def of(cls, values_ms: Sequence[float]) -> SpanStats:
        values = list(values_ms)
        return cls(
            count=len(values),
            p50_ms=percentile(values, 50),
            p95_ms=percentile(values, 95),
            mean_ms=float(np.mean(values)),
            min_ms=float(min(values)),
            max_ms=float(max(values)),
        )

    def to_dict(self) -> dict[str, float]:
        return {"count": self.count, "p50": self.p50_ms, "p95": self.p95_ms, "mean": self.mean_ms,
                "min": self.min_ms, "max": self.max_ms}


@dataclass(frozen=True)
class TraceSummary:
    """Cross-turn percentiles by span name: ``stages`` (raw STAGE_SPANS), ``totals``
    (TOTAL_SPANS) and ``critical_path`` (:meth:`TurnTrace.critical_path_ms`).

    A span appears only if at least one turn has both its ends.
    """

    turns: int
    stages: dict[str, SpanStats]
    totals: dict[str, SpanStats]
    critical_path: dict[str, SpanStats] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "turns": self.turns,
            "stages": {name: stats.to_dict() for name, stats in self.stages.items()},
            "totals": {name: stats.to_dict() for name, stats in self.totals.items()},
            "critical_path": {name: stats.to_dict() for name, stats in self.critical_path.items()},
        }


def summarize(traces: Iterable[TurnTrace]) -> TraceSummary:
    """Percentiles of every stage and total span over ``traces``."""
    traces = list(traces)

    def collect(spans: Mapping[str, tuple[str, str]]) -> dict[str, SpanStats]:
        result = {}
        for name, (start, end) in spans.items():
            values = [v for v in (t.span_ms(start, end) for t in traces) if v is not None]
            if values:
                result[name] = SpanStats.of(values)
        return result

    paths = [t.critical_path_ms() for t in traces]
    critical = {name: SpanStats.of(values) for name in STAGE_SPANS
                if (values := [path[name] for path in paths if name in path])}
    return TraceSummary(len(traces), collect(STAGE_SPANS), collect(TOTAL_SPANS), critical)


class Tracer:
    def __init__(self, *, enabled: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = enabled
        self.clock = clock
        self.turns: dict[int, TurnTrace] = {}

    def now(self) -> float:
        return self.clock()

    def stamp(self, turn_id: int, name: str, at_s: float | None = None, *, overwrite: bool = False) -> None:
        """Record ``name`` for ``turn_id`` at ``at_s`` (default: now). The first stamp wins."""
        if not self.enabled:
            return
        trace = self.turns.get(turn_id)
        if trace is None:
            trace = self.turns[turn_id] = TurnTrace(turn_id)
        if overwrite or name not in trace.stamps:
            trace.stamps[name] = self.clock() if at_s is None else at_s

    def count(self, turn_id: int, name: str, value: int) -> None:
        """Record a count for ``turn_id`` (e.g. :data:`PROMPT_TOKENS_EVALUATED`); the last one wins."""
        if not self.enabled:
            return
        trace = self.turns.setdefault(turn_id, TurnTrace(turn_id))
        trace.counts[name] = value

    def note(self, turn_id: int, key: str, text: str) -> None:
        """Attach a text (user transcript, reply) to a turn's trace."""
        if not self.enabled:
            return
        trace = self.turns.setdefault(turn_id, TurnTrace(turn_id))
        trace.texts[key] = text

    def turn(self, turn_id: int) -> TurnTrace | None:
        return self.turns.get(turn_id)

    def attach(self, conversation: Conversation) -> Callable[[], None]:
        """Stamp RESPONSE_DONE / RESPONSE_CANCELLED from ``conversation``'s events; returns the detach function."""
        from .conversation import ResponseDone, ResponseInterrupted

        def on_event(event: object) -> None:
            if isinstance(event, ResponseDone):
                self.stamp(event.response.turn_id, RESPONSE_DONE)
            elif isinstance(event, ResponseInterrupted):
                self.stamp(event.response.turn_id, RESPONSE_CANCELLED)

        return conversation.add_listener(on_event)

    def traces(self, turn_ids: Iterable[int] | None = None) -> list[TurnTrace]:
        """The turns' traces in turn order (all of them, or those of ``turn_ids`` that exist)."""
        ids = sorted(self.turns) if turn_ids is None else [i for i in turn_ids if i in self.turns]
        return [self.turns[i] for i in ids]

    def summary(self, turn_ids: Iterable[int] | None = None) -> TraceSummary:
        """Cross-turn p50/p95 of every span (over all turns, or ``turn_ids``)."""
        return summarize(self.traces(turn_ids))

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per turn (see :meth:`TurnTrace.to_dict`)."""
        return [trace.to_dict() for trace in self.traces()]

    def write_jsonl(self, path: str | Path) -> None:
        """One JSON object per turn per line."""
        from .trace_export import write_jsonl

        write_jsonl(self.traces(), path)

    def write_perfetto(self, path: str | Path) -> None:
        """A Chrome trace-event JSON file for ui.perfetto.dev: a track per stage, a span per turn."""
        from .trace_export import write_perfetto

        write_perfetto(self.traces(), path)

    def table(self, *, budget_ms: Mapping[str, tuple[float, float]] | None = SEED_BUDGET_MS) -> Table:
        """The cross-turn summary as a rich table, beside ``budget_ms``."""
        from .trace_export import summary_table

        return summary_table(self.summary(), budget_ms=budget_ms)

    def export_opentelemetry(self, tracer_provider: Any = None) -> int:
        """Emit each turn as an OpenTelemetry span with a child per stage; needs ``opentelemetry-api``."""
        from .trace_export import export_opentelemetry

        return export_opentelemetry(self.traces(), tracer_provider=tracer_provider)

    def summary_line(self, turn_id: int) -> str:
        """A one-line per-turn breakdown, e.g. for the CLI."""
        trace = self.turns.get(turn_id)
        if trace is None:
            return "latency: (no trace)"
        parts = []
        added = trace.critical_path_ms()  # what each stage added: work done ahead counts 0
        totals = trace.breakdown_ms()
        for name in STAGE_SPANS:
            if name in added:
                parts.append(f"{name} {added[name]:.0f} ms")
        for name in TOTAL_SPANS:
            if name in totals:
                parts.append(f"{name} {totals[name]:.0f} ms")
        return "latency: " + (" | ".join(parts) if parts else "(incomplete)")
