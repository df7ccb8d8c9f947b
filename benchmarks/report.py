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
                      f"p95 {_fmt(barge_in.get('p95'))} ms over {barge_in.get('measured', '-')} interruptions, "
                      f"leaked turns {barge_in.get('leaked_turns', '-')} (benchmarks/barge_in.py)")


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


# -- a long conversation: does latency stay flat? ----------------------------------------------
#: The last third's voice-to-voice p50 may be this much slower than the first's before a warning.
THIRD_SLOWDOWN_LIMIT = 1.15


def _p50(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return SpanStats.of(present).p50_ms if present else None


def by_conversation_third(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per third of the conversation (turns in order): p50 of ``voice_to_voice``, ``after_endpoint``,
    the ``llm`` span (what it added to the wait) and the reply's prompt tokens evaluated, and a
    ``warning`` when the last third's voice-to-voice p50 is more than 15 % above the first's."""
    count = len(records)
    bounds = [round(count * k / 3) for k in range(4)]
    thirds = []
    for k in range(3):
        part = records[bounds[k] : bounds[k + 1]]
        thirds.append({
            "turns": [bounds[k] + 1, bounds[k + 1]],
            "voice_to_voice_p50_ms": _p50([r.get("spans_ms", {}).get("voice_to_voice") for r in part]),
            "after_endpoint_p50_ms": _p50([r.get("spans_ms", {}).get("after_endpoint") for r in part]),
            "llm_p50_ms": _p50([r.get("critical_path_ms", {}).get("llm") for r in part]),
            "llm_span_p50_ms": _p50([r.get("spans_ms", {}).get("llm") for r in part]),
            "prompt_tokens_evaluated_p50": _p50([r.get("counts", {}).get("prompt_tokens_evaluated") for r in part]),
            "prompt_tokens_p50": _p50([r.get("counts", {}).get("prompt_tokens") for r in part]),
        })
    first, last = thirds[0]["voice_to_voice_p50_ms"], thirds[2]["voice_to_voice_p50_ms"]
    ratio = last / first if first and last is not None else None
    warning = None
    if ratio is not None and ratio > THIRD_SLOWDOWN_LIMIT:
        warning = (f"the last third of the conversation is {100 * (ratio - 1):.0f}% slower than the first "
                   f"(voice-to-voice p50 {last:.0f} vs {first:.0f} ms)")
    return {"thirds": thirds, "last_over_first_voice_to_voice": ratio, "warning": warning}


def _cause(stage: str, record: dict[str, Any]) -> str:
    """Why this turn's ``stage`` took long, from what its trace recorded."""
    counts = record.get("counts", {})
    spans = record.get("spans_ms", {})
    if stage == "endpoint":
        return f"end of turn decided {spans.get('endpoint', 0):.0f} ms after the speech ended"
    if stage == "asr":
        pass_ms = counts.get("asr_final_pass_ms")
        text = "the final Whisper pass ran after the commit"
        if "asr_preview" not in record.get("stamps_ms", {}):
            text += " (no early final usable: speech resumed or ended elsewhere)"
        if pass_ms is not None:
            text += f"; it took {pass_ms} ms"
        if counts.get("asr_window_fallbacks"):
            text += " with a full-window retry after a loop"
        return text
    if stage == "llm":
        evaluated, total = counts.get("prompt_tokens_evaluated"), counts.get("prompt_tokens")
        if evaluated is None:
            return "waiting for the LLM's first token"
        return f"first token after evaluating {evaluated} of {total} prompt tokens"
    if stage == "tts":
        stamps = record.get("stamps_ms", {})
        token, chunk, audio = stamps.get("llm_first_token"), stamps.get("first_chunk"), stamps.get("tts_first_audio")
        if token is None or chunk is None or audio is None:
            return "waiting for the first synthesized audio"
        return f"first speakable clause {chunk - token:.0f} ms after the first token, synthesized in {audio - chunk:.0f} ms"
    return "writing the first block to the output"


def worst_turns(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per stage, the turn where it added the most to the wait (file, turn number, ms, cause),
    and the worst turn by ``after_endpoint`` with the stage that dominated it."""
    worst: dict[str, Any] = {}
    for stage in STAGE_SPANS:
        candidates = [(r["critical_path_ms"][stage], r) for r in records if stage in r.get("critical_path_ms", {})]
        if candidates:
            value, record = max(candidates, key=lambda c: c[0])
            worst[stage] = {"turn": record["index"] + 1, "file": record["file"], "ms": value, "cause": _cause(stage, record)}
    totals = [(r["spans_ms"]["after_endpoint"], r) for r in records if "after_endpoint" in r.get("spans_ms", {})]
    if totals:
        value, record = max(totals, key=lambda c: c[0])
        path = {k: v for k, v in record.get("critical_path_ms", {}).items() if k != "endpoint"}
        stage = max(path, key=path.get) if path else None
        worst["after_endpoint"] = {
            "turn": record["index"] + 1, "file": record["file"], "ms": value, "stage": stage,
            "cause": _cause(stage, record) if stage else None,
        }
    return worst


def print_long_conversation(console: Console, summary: dict[str, Any]) -> None:
    """The per-third table, the warning, memory by turn and the worst turns."""
    thirds = summary.get("by_conversation_third")
    if thirds:
        table = Table(title="latency over the conversation, by third (p50)", title_justify="left")
        for column in ("turns", "voice_to_voice ms", "after_endpoint ms", "llm ms", "prompt tokens evaluated", "prompt tokens"):
            table.add_column(column, justify="right")
        for third in thirds["thirds"]:
            table.add_row(f"{third['turns'][0]}–{third['turns'][1]}", _fmt(third["voice_to_voice_p50_ms"]),
                          _fmt(third["after_endpoint_p50_ms"]), _fmt(third["llm_p50_ms"]),
                          _fmt(third["prompt_tokens_evaluated_p50"]), _fmt(third["prompt_tokens_p50"]))
        console.print(table)
        if thirds.get("warning"):
            console.print(f"[yellow]warning: {thirds['warning']}[/yellow]")
    rss = summary.get("peak_rss_mb_by_turn") or {}
    if rss:
        console.print("peak RSS by turn: " + ", ".join(f"after turn {turn}: {mb:.0f} MB" for turn, mb in rss.items()))
    for stage, worst in (summary.get("worst_turns") or {}).items():
        console.print(f"worst {stage}: turn {worst['turn']} ({worst['file']}) {worst['ms']:.0f} ms: {worst['cause']}")


def print_echo(console: Console, summary: dict[str, Any]) -> None:
    """``summary.echo``: the echo room, one column per mode (aec / gate / off)."""
    echo = summary.get("echo")
    if not echo:
        return
    room = next(iter(echo.values()))["room"]
    table = Table(title=f"echo room: delay {room['delay_ms']} ms, gain {room['gain_db']:g} dB, RT60 {room['rt60_ms']:g} ms",
                  title_justify="left")
    table.add_column("measure")
    for mode in echo:
        table.add_column(mode, justify="right")

    def barge(entry: dict[str, Any], key: str) -> str:
        values = (entry.get("barge_in") or {}).get("barge_in_ms") or {}
        return _fmt(values.get(key))

    rows = [
        ("self-interruptions (replies paused or cancelled by echo)", lambda e: str(e["self_interruptions"])),
        ("VAD turns on echo alone / answered", lambda e: f"{e['echo_turns']} / {e['echo_turns_answered']}"),
        ("ERLE (dB, user silent, echo > -50 dBFS): stage / AEC3 alone", lambda e: f"{_fmt(e['erle_db'], '.1f')} / {_fmt(e.get('erle_aec3_db'), '.1f')}"),
        ("WER of the user's turns", lambda e: _fmt(e["wer"], ".3f")),
        ("voice-to-voice p50 / p95 (ms)", lambda e: "-" if not e.get("voice_to_voice_ms") else
         f"{_fmt(e['voice_to_voice_ms']['p50'])} / {_fmt(e['voice_to_voice_ms']['p95'])}"),
        ("barge-in p50 / p95 (ms)", lambda e: f"{barge(e, 'p50')} / {barge(e, 'p95')}"),
        ("barge-in: self-interruptions", lambda e: str((e.get("barge_in") or {}).get("self_interruptions", "-"))),
        ("barge-in: WER of the speech over the reply", lambda e: _fmt((e.get("barge_in") or {}).get("wer"), ".3f")),
        ("turns waited out (not idle after 20 s)", lambda e: str(e.get("wait_timeouts", "-"))),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(entry) for entry in echo.values()))
    console.print(table)
