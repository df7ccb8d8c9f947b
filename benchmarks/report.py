"""The benchmark's report: the JSON summary, the terminal tables and the chart."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from realtime_pipeline.trace_export import summary_table
from realtime_pipeline.tracing import (
    FIRST_CHUNK,
    LLM_FIRST_TOKEN,
    SEED_BUDGET_MS,
    STAGE_SPANS,
    TOTAL_SPANS,
    TTS_FIRST_AUDIO,
    SpanStats,
    TraceSummary,
    TurnTrace,
)

#: The ``tts`` stage span split in two: waiting for a speakable clause, then synthesizing it.
DETAIL_SPANS = {
    "llm_to_first_chunk": (LLM_FIRST_TOKEN, FIRST_CHUNK),
    "first_chunk_to_tts_audio": (FIRST_CHUNK, TTS_FIRST_AUDIO),
}


def stats(values: Sequence[float | None]) -> dict[str, float] | None:
    present = [v for v in values if v is not None]
    return SpanStats.of(present).to_dict() if present else None


def summary_json(trace_summary: TraceSummary, traces: Sequence[TurnTrace]) -> dict[str, Any]:
    """``voice_to_voice_ms``, ``after_endpoint_ms``, ``stages``, ``spans_ms`` and ``detail_ms`` (p50/p95 and more, ms).

    ``stages`` is what each stage added to the wait (its critical-path share, never
    negative); ``spans_ms`` the raw stamp-to-stamp spans, negative for work done
    ahead (the LLM answering a transcript preview before the final transcript).
    """
    totals = {f"{name}_ms": (s.to_dict() if (s := trace_summary.totals.get(name)) else None) for name in TOTAL_SPANS}
    stages = {name: (s.to_dict() if (s := trace_summary.critical_path.get(name)) else None) for name in STAGE_SPANS}
    raw = {name: (s.to_dict() if (s := trace_summary.stages.get(name)) else None) for name in STAGE_SPANS}
    detail = {name: stats([t.span_ms(start, end) for t in traces]) for name, (start, end) in DETAIL_SPANS.items()}
    return {**totals, "stages": stages, "spans_ms": raw, "detail_ms": detail}


def _fmt(value: float | None, spec: str = ".0f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def print_report(console: Console, report: dict[str, Any], trace_summary: TraceSummary) -> None:
    summary = report["summary"]
    config = report["config"]
    console.print(f"[bold]{report['command']}[/bold]")
    console.print(
        f"{summary['turns']} turns ({summary['turns_answered']} answered) from {config['audio_dir']}, "
        f"replies capped at {config['max_tokens']} tokens, end of turn: {_end_of_turn(summary)}, "
        f"{summary['conversation_s']:.0f} s of conversation"
    )
    console.print(summary_table(trace_summary, budget_ms=SEED_BUDGET_MS, critical_path=True,
                                title="streaming latency: what each stage added to the wait (ms); budget = seed material"))
    detail = summary["detail_ms"]
    console.print("  tts split: " + ", ".join(
        f"{name} p50 {_fmt(values['p50'])} / p95 {_fmt(values['p95'])} ms" for name, values in detail.items() if values))

    table = Table(title="models and machine", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rtf = summary["rtf"]
    table.add_row("ASR real-time factor (compute s / audio s)", _fmt(rtf["asr"], ".3f"))
    table.add_row("LLM real-time factor (compute s / reply speech s)", _fmt(rtf["llm"], ".3f"))
    table.add_row("TTS real-time factor (compute s / speech s)", _fmt(rtf["tts"], ".3f"))
    table.add_row("LLM output (text pieces ≈ tokens per s of generation)", _fmt(rtf["llm_pieces_per_s"], ".0f"))
    table.add_row("ASR passes (partials + finals)", str(rtf["asr_passes"]))
    table.add_row("CPU seconds per minute of conversation", _fmt(summary["cpu_s_per_min"], ".1f"))
    table.add_row("peak RSS (MB)", _fmt(summary["peak_rss_mb"], ".0f"))
    table.add_row("cold start: load + warm up all models (s)", _fmt(summary["cold_start_s"], ".1f"))
    machine = config["machine"]
    table.add_row("machine load average before / after the run",
                  f"{machine['load_average_1min_before']:.1f} / {machine['load_average_1min_after']:.1f} "
                  f"on {machine['cpus']} CPUs")
    table.add_row("word error rate, streaming user transcripts", _fmt(summary["wer"], ".3f"))
    speculation = summary.get("speculation") or {}
    if speculation.get("enabled"):
        table.add_row("speculative replies (prepared in the end-of-turn silence): hits / misses",
                      f"{speculation['hits']} / {speculation['misses']}")
    asr = summary.get("asr") or {}
    if asr:
        table.add_row("Whisper passes (window) · partials skipped · early finals used / wasted · loop fallbacks",
                      f"{asr['passes']} ({asr['window']}) · {asr['partials_skipped']} · "
                      f"{asr['early_finals_used']} / {asr['early_finals_wasted']} · {asr['window_fallbacks']}")
    if summary.get("wer_baseline") is not None:
        table.add_row("word error rate, whole-utterance transcripts (baseline)", _fmt(summary["wer_baseline"], ".3f"))
    console.print(table)

    baseline = summary["baseline"]
    if baseline["ran"]:
        table = Table(title="time to first audio, from user speech end (ms)", title_justify="left")
        for column in ("approach", "n", "p50", "p95", "max"):
            table.add_column(column, justify="left" if column == "approach" else "right")
        for label, values in (("streaming (voice-to-voice)", summary["voice_to_voice_ms"]),
                              ("sequential baseline", baseline["time_to_first_audio_ms"])):
            if values:
                table.add_row(label, str(values["count"]), _fmt(values["p50"]), _fmt(values["p95"]), _fmt(values["max"]))
        console.print(table)
        console.print(f"baseline / streaming (p50): [bold]{_fmt(baseline['ratio'], '.1f', '×')}[/bold]")
    print_turn_taking(console, summary)
    barge_in = summary.get("barge_in_ms")
    if isinstance(barge_in, dict):
        console.print(f"barge-in, user speech onset → reply silent: p50 {_fmt(barge_in.get('p50'))} ms, "
                      f"p95 {_fmt(barge_in.get('p95'))} ms (benchmarks/barge_in.py)")


def _end_of_turn(summary: dict[str, Any]) -> str:
    turn = summary.get("turn_taking") or {}
    settings = turn.get("settings") or {}
    if turn.get("mode") == "silence":
        return f"fixed silence {settings.get('silence_ms')} ms"
    if turn.get("mode") == "semantic":
        return (f"semantic ({settings.get('min_silence_ms')}–{settings.get('max_silence_ms')} ms, "
                f"threshold {settings.get('threshold')}, weights {settings.get('weights')})")
    return "?"


def print_turn_taking(console: Console, summary: dict[str, Any]) -> None:
    turn = summary.get("turn_taking")
    if not turn:
        return
    wait = turn.get("wait_after_end_ms") or {}
    error = turn.get("vad_speech_end_error_ms") or {}
    costs = ", ".join(f"{name} p50 {_fmt(v['p50'], '.0f')} / p95 {_fmt(v['p95'], '.0f')} ms"
                      for name, v in (turn.get("model_cost_per_call") or {}).items() if v)
    console.print(
        f"turn-taking ({_end_of_turn(summary)}): [bold]{turn['cut_offs']} of {turn['files']} files cut off[/bold]"
        f" · commit after the true end p50 {_fmt(wait.get('p50'))} / p95 {_fmt(wait.get('p95'))} ms"
        f" · VAD speech-end error p50 {_fmt(error.get('p50'))} ms" + (f" · model cost per call: {costs}" if costs else ""))
    if turn["cut_off_files"]:
        console.print("  cut off: " + ", ".join(turn["cut_off_files"]))


def turn_table(records: Sequence[dict[str, Any]]) -> Table:
    names = [*STAGE_SPANS, *TOTAL_SPANS]
    table = Table(title="per turn (ms; stages: what each added to the wait)", title_justify="left")
    table.add_column("file", no_wrap=True)
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("heard", overflow="ellipsis", no_wrap=True, max_width=32)
    for record in records:
        spans = {**record.get("spans_ms", {}), **record.get("critical_path_ms", {})}
        table.add_row(record["file"], *(_fmt(spans.get(n)) for n in names), record["transcript"])
    return table


def write_chart(path: str | Path, traces: Sequence[TurnTrace], baseline_ms: Sequence[float]) -> None:
    """Left: a waterfall of the median voice-to-voice turn (raw stamps). Right: box plots across
    turns of what each stage added to the wait, and of the totals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*STAGE_SPANS, *TOTAL_SPANS]
    complete = [t for t in traces if "voice_to_voice" in t.breakdown_ms()]
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1.2, 1]})
    if complete:
        ordered = sorted(complete, key=lambda t: t.breakdown_ms()["voice_to_voice"])
        median = ordered[len(ordered) // 2]
        origin = median.stamps[STAGE_SPANS["endpoint"][0]]
        rows = list(STAGE_SPANS.items()) + [(n, TOTAL_SPANS[n]) for n in TOTAL_SPANS]
        for row, (name, (start, end)) in enumerate(rows):
            if start in median.stamps and end in median.stamps:
                begin_ms = 1000.0 * (median.stamps[start] - origin)
                width_ms = 1000.0 * (median.stamps[end] - median.stamps[start])
                left.barh(row, width_ms, left=begin_ms, color=f"C{row}")
                left.text(begin_ms + width_ms, row, f" {width_ms:.0f} ms", va="center", fontsize=8)
        left.set_yticks(range(len(rows)), [name for name, _ in rows])
        left.invert_yaxis()
        left.set_xlabel("ms after the user stopped speaking")
        user = median.texts.get("user", "")
        left.set_title(f"turn {median.turn_id} (median voice-to-voice): {user[:40]!r}", fontsize=9)
    per_turn = [{**t.breakdown_ms(), **t.critical_path_ms()} for t in traces]
    data = [[spans[n] for spans in per_turn if n in spans] for n in names]
    labels = list(names)
    if baseline_ms:
        data.append(list(baseline_ms))
        labels.append("baseline\nfirst audio")
    kept = [(label, values) for label, values in zip(labels, data) if values]
    if kept:
        right.boxplot([values for _, values in kept], vert=False)
        right.set_yticks(range(1, len(kept) + 1), [label for label, _ in kept])
        right.invert_yaxis()
        right.set_xscale("symlog", linthresh=100)
        right.set_xlim(left=0)
        right.set_xlabel("ms (linear to 100, log above)")
        right.set_title("per span, all turns", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
