"""``python -m benchmarks.latency``: the per-stage latency breakdown on real speech, in real time.

User turns (WAV files) are played at wall-clock pace in 20 ms frames into the
full pipeline on the embedded models, the replies into a virtual speaker that
consumes audio like a sound card; the source waits for each reply before the
next turn. "User speech end" is the last voiced sample of each file, by
energy. See docs/latency.md for what each number means.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from realtime_pipeline.conversation import DEFAULT_SYSTEM_PROMPT
from realtime_pipeline.pipeline import StageError
from realtime_pipeline.stages.asr import DEFAULT_WINDOW_MARGIN_S, WhisperASR
from realtime_pipeline.stages.llm import LlamaLLM
from realtime_pipeline.stages.tts import PiperTTS
from realtime_pipeline.stages.smart_turn import SmartTurn
from realtime_pipeline.stages.vad import VADSettings
from realtime_pipeline.turn_taking import AUDIO_MODEL, TEXT_MODEL, TurnTakingSettings
from realtime_pipeline.tracing import SEED_BUDGET_MS

from . import echo as echo_room
from . import report as reporting
from . import turn_taking
from .baseline import run_baseline
from .measure import Models, ModelTimer, UsageMeter, peak_rss_mb, word_error_rate
from .streaming import build_streaming, play, turn_records
from .turns import DEFAULT_AUDIO_DIR, load_turns

#: By default one long conversation of every bundled turn (30): latency must stay flat over
#: dozens of turns. Replies are played at real-time pace, so their cap sets the run time.
DEFAULT_LIMIT = 0
DEFAULT_MAX_TOKENS = 24
#: Peak RSS is noted after this many turns and at the end (memory must not grow with the history).
RSS_TURN = 10


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.latency",
        description="Latency of the full voice pipeline on real speech played in real time (see docs/latency.md).",
    )
    parser.add_argument("--audio-dir", type=Path, default=DEFAULT_AUDIO_DIR,
                        help="WAV files and a transcripts.tsv (filename<TAB>text); default: the bundled tests/data/speech")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                        help="number of turns, a random subset chosen with --seed (default 0 = all, one long conversation)")
    parser.add_argument("--seed", type=int, default=0, help="chooses the turns and seeds the LLM's sampling (default 0)")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                        help=f"longest reply in tokens (default {DEFAULT_MAX_TOKENS}: replies play in real time)")
    parser.add_argument("--turn-detection", choices=("semantic", "silence"), default="semantic",
                        help="end of turn: the semantic detector (Smart Turn + LLM scores; default) or a fixed silence")
    parser.add_argument("--silence-ms", type=int, default=TurnTakingSettings.silence_ms,
                        help="fixed end-of-turn silence, with --turn-detection silence (default %(default)s)")
    parser.add_argument("--min-silence-ms", type=int, default=TurnTakingSettings.min_silence_ms,
                        help="semantic: earliest commit, for a turn that sounds complete (default %(default)s)")
    parser.add_argument("--max-silence-ms", type=int, default=TurnTakingSettings.max_silence_ms,
                        help="semantic: longest wait, for a turn that sounds unfinished (default %(default)s)")
    parser.add_argument("--threshold", type=float, default=TurnTakingSettings.threshold,
                        help="semantic: probability of 'complete' that commits at the earliest (default %(default)s)")
    parser.add_argument("--weights", default=None, metavar="AUDIO,TEXT",
                        help="semantic: weights of the Smart Turn and LLM scores (default: %s)"
                        % ",".join(str(w) for _, w in TurnTakingSettings.weights))
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for each model")
    parser.add_argument("--no-speculation", action="store_true",
                        help="answer only the final transcript (no reply prepared during the end-of-turn silence)")
    parser.add_argument("--full-window", action="store_true",
                        help="Whisper passes on the full 30 s window instead of the clip-fitted one")
    parser.add_argument("--baseline", action="store_true",
                        help="also run the sequential approach (whole utterance → transcribe → generate → synthesize → play)")
    parser.add_argument("--barge-in", action="store_true", help="also run the barge-in scenario (benchmarks/barge_in.py)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the whole report as JSON")
    parser.add_argument("--chart", type=Path, metavar="PATH.png", help="write a waterfall of one turn and per-stage box plots")
    parser.add_argument("--trace", type=Path, metavar="PATH.json", help="write a Chrome/Perfetto trace (open in ui.perfetto.dev)")
    parser.add_argument("--jsonl", type=Path, metavar="PATH", help="write the tracer's per-turn records as JSON lines")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    echo_room.add_arguments(parser)
    return parser


def _barge_in_runner() -> Any:
    """``benchmarks.barge_in.run_barge_in``, or None when that module is not in this checkout.

    It is called as ``run_barge_in(models=Models, seed=int, console=rich Console)`` after the
    other runs, with the loaded models, and returns (or is a coroutine returning) a dict whose
    ``barge_in_ms`` entry becomes ``summary.barge_in_ms``; the whole dict goes to ``barge_in``.
    """
    try:
        from .barge_in import run_barge_in
    except ModuleNotFoundError as error:
        if error.name in (f"{__package__}.barge_in",):
            return None
        raise
    return run_barge_in


def vad_settings(args: argparse.Namespace) -> VADSettings:
    """The VAD and end-of-turn settings the command line asks for."""
    if args.turn_detection == "silence":
        return VADSettings(silence_duration_ms=args.silence_ms)
    weights = TurnTakingSettings.weights
    if args.weights:
        try:
            audio, text = (float(w) for w in args.weights.split(","))
        except ValueError:
            raise ValueError(f"--weights takes two numbers, AUDIO,TEXT; got {args.weights!r}") from None
        weights = ((AUDIO_MODEL, audio), (TEXT_MODEL, text))
    return VADSettings(turn_taking=TurnTakingSettings(
        min_silence_ms=args.min_silence_ms, max_silence_ms=args.max_silence_ms, threshold=args.threshold, weights=weights))


async def run(args: argparse.Namespace, command: str, console: Console) -> dict[str, Any]:
    turns = load_turns(args.audio_dir, limit=args.limit or None, seed=args.seed)
    echo_configs = echo_room.configs(args)
    load_before = os.getloadavg()[0]
    if load_before > 0.5 * (os.cpu_count() or 1):
        console.print(f"[yellow]warning: the machine is busy (load average {load_before:.1f} on {os.cpu_count()} CPUs); "
                      "latencies will be inflated[/yellow]")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, disable=args.quiet, transient=False)
    with progress:
        loading = progress.add_task("loading and warming up the models", total=1)
        cold_start_began = time.monotonic()
        vad = vad_settings(args)
        models = Models(
            WhisperASR(cpu_threads=args.threads, window_margin_s=None if args.full_window else DEFAULT_WINDOW_MARGIN_S),
            LlamaLLM(n_threads=args.threads, max_tokens=args.max_tokens, seed=args.seed, speculate=not args.no_speculation),
            PiperTTS(),
            SmartTurn() if AUDIO_MODEL in vad.turn_taking.sources else None,
        )
        streaming = build_streaming(turns, models, vad=vad, echo=echo_configs[0] if echo_configs else None)
        await streaming.pipeline.start()
        cold_start_s = time.monotonic() - cold_start_began
        progress.update(loading, completed=1)

        playing = progress.add_task("streaming: playing turns in real time", total=len(turns))
        timer = ModelTimer(models)
        meter = UsageMeter()
        rss_by_turn: dict[int, float] = {}

        def on_turn(k: int) -> None:
            progress.update(playing, completed=k, description=f"streaming: turn {k + 1} {turns[k].name}")
            note_rss(rss_by_turn, k)

        try:
            await play(streaming, on_turn=on_turn)
        finally:
            timer.remove()
        usage = meter.stop()
        rss_by_turn[len(turns)] = peak_rss_mb()
        progress.update(playing, completed=len(turns), description="streaming: done")
        records = turn_records(streaming, turns)
        turn_taking.mark_cut_offs(streaming, records, turns)

        baseline_records: list[dict[str, Any]] = []
        if args.baseline:
            sequential = progress.add_task("baseline: sequential, same models and turns", total=len(turns))
            endpoint_ms = [r.get("spans_ms", {}).get("endpoint") for r in records]
            baseline_records = await run_baseline(
                turns, models, [e if e is not None else float(args.silence_ms) for e in endpoint_ms],
                on_turn=lambda k: progress.update(sequential, completed=k))
            progress.update(sequential, completed=len(turns))

        barge_in: Any = None
        if args.barge_in:
            runner = _barge_in_runner()
            barge_in = runner(models=models, seed=args.seed, console=console,
                              **({"echo": echo_configs[0]} if echo_configs else {}))
            if inspect.isawaitable(barge_in):
                barge_in = await barge_in

        echo_summary = await echo_runs(args, turns, models, vad, echo_configs, streaming, records, barge_in,
                                       progress, console) if echo_configs else None

    tracer = streaming.tracer
    measured = [r["turn_id"] for r in records if r["turn_id"] is not None]
    trace_summary = tracer.summary(measured)
    streaming_first_audio = reporting.stats([r.get("spans_ms", {}).get("voice_to_voice") for r in records])
    baseline_first_audio = reporting.stats([r.get("time_to_first_audio_ms") for r in baseline_records])
    ratio = (baseline_first_audio["p50"] / streaming_first_audio["p50"]
             if baseline_first_audio and streaming_first_audio else None)
    summary: dict[str, Any] = {
        "turns": len(turns),
        "turns_answered": sum(1 for r in records if r["answered"]),
        **reporting.summary_json(trace_summary, tracer.traces(measured)),
        "budget_ms": {name: list(bounds) for name, bounds in SEED_BUDGET_MS.items()},
        "wer": word_error_rate([t.reference for t in turns], [r["transcript"] for r in records]),
        "wer_baseline": word_error_rate([t.reference for t in turns], [r["transcript"] for r in baseline_records])
        if baseline_records else None,
        "rtf": timer.report(),
        "cpu_s_per_min": usage.cpu_s_per_min,
        "cpu_s": usage.cpu_s,
        "conversation_s": usage.wall_s,
        "peak_rss_mb": peak_rss_mb(),
        "cold_start_s": cold_start_s,
        "baseline": {
            "ran": bool(args.baseline),
            "time_to_first_audio_ms": baseline_first_audio,
            "streaming_time_to_first_audio_ms": streaming_first_audio if args.baseline else None,
            "ratio": ratio,
        },
        "barge_in_ms": barge_in.get("barge_in_ms") if isinstance(barge_in, dict) else None,
        "echo": echo_summary,
        "turn_taking": turn_taking.summary(records, vad, models),
        "speculation": {
            "enabled": not args.no_speculation,
            "hits": streaming.pipeline.conversation.speculation_hits,
            "misses": streaming.pipeline.conversation.speculation_misses,
        },
        **long_conversation_summary(records, rss_by_turn, streaming.pipeline.conversation),
        "asr": {
            "window": "full" if args.full_window else "fitted",
            "passes": models.asr.stats.finals_run + models.asr.stats.partials_run,
            "partials_skipped": models.asr.stats.partials_skipped,
            "early_finals_used": models.asr.stats.early_finals_used,
            "early_finals_wasted": models.asr.stats.early_finals_wasted,
            "window_fallbacks": models.asr.stats.window_fallbacks,
        },
    }
    return {
        "command": command,
        "config": {
            "audio_dir": str(args.audio_dir),
            "files": [t.name for t in turns],
            "limit": args.limit,
            "seed": args.seed,
            "max_tokens": args.max_tokens,
            "turn_detection": args.turn_detection,
            "silence_ms": args.silence_ms,
            "threads": args.threads,
            "speculation": not args.no_speculation,
            "asr_window": "full" if args.full_window else "fitted",
            "echo": [dataclasses.asdict(c.room) | {"mode": c.mode, "path_fit": c.path_fit} for c in echo_configs],
            "system_prompt": DEFAULT_SYSTEM_PROMPT,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "load_average_1min_before": load_before, "load_average_1min_after": os.getloadavg()[0]},
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "summary": summary,
        "turns": records,
        "baseline_turns": baseline_records,
        "barge_in": barge_in,
        "_traces": tracer.traces(measured),
        "_trace_summary": trace_summary,
        "_tracer": tracer,
    }


async def echo_runs(args: argparse.Namespace, turns: list[Any], models: Models, vad: VADSettings,
                    configs: list[echo_room.EchoConfig], first: Any, first_records: list[dict[str, Any]],
                    first_barge_in: Any, progress: Progress, console: Console) -> dict[str, Any]:
    """``summary.echo``: one entry per echo mode; the first mode's run is the main report's,
    the others play the same turns again (and the barge-in scenario, with --barge-in)."""
    result: dict[str, Any] = {}
    for index, config in enumerate(configs):
        if index == 0:
            streaming, records, barge_in = first, first_records, first_barge_in
        else:
            task = progress.add_task(f"echo {config.label}: the same turns again", total=len(turns))
            streaming = build_streaming(turns, models, vad=vad, echo=config)
            await play(streaming, on_turn=lambda k, task=task: progress.update(task, completed=k))
            progress.update(task, completed=len(turns))
            records = turn_records(streaming, turns)
            barge_in = None
            if args.barge_in:
                barge_in = _barge_in_runner()(models=models, seed=args.seed, console=console, echo=config)
                if inspect.isawaitable(barge_in):
                    barge_in = await barge_in
        entry = echo_room.summary(config, streaming.room, streaming.pipeline, streaming.events)
        entry["wer"] = word_error_rate([t.reference for t in turns], [r["transcript"] for r in records])
        entry["turns_answered"] = sum(1 for r in records if r["answered"])
        entry["wait_timeouts"] = streaming.source.wait_timeouts
        v2v = reporting.stats([r.get("spans_ms", {}).get("voice_to_voice") for r in records])
        entry["voice_to_voice_ms"] = {k: v2v[k] for k in ("p50", "p95")} if v2v else None
        if isinstance(barge_in, dict):
            entry["barge_in"] = barge_in.get("echo_summary")
        result[config.mode] = entry
    return result


def note_rss(rss_by_turn: dict[int, float], started: int) -> None:
    """When turn ``started`` + 1 begins, ``started`` turns are done: note the peak RSS after RSS_TURN."""
    if started == RSS_TURN:
        rss_by_turn[RSS_TURN] = peak_rss_mb()


def long_conversation_summary(records: list[dict[str, Any]], rss_by_turn: dict[int, float],
                              conversation: Any) -> dict[str, Any]:
    """Does latency stay flat over the conversation: per third, memory by turn, the worst turns,
    the prompt tokens evaluated per turn and the history window's trims."""
    window = conversation.history_window
    return {
        "by_conversation_third": reporting.by_conversation_third(records),
        "peak_rss_mb_by_turn": dict(sorted(rss_by_turn.items())),
        "worst_turns": reporting.worst_turns(records),
        "prompt_tokens_evaluated": reporting.stats([r.get("counts", {}).get("prompt_tokens_evaluated") for r in records]),
        "history_window": {"budget_tokens": window.effective_budget_tokens, "trims": window.trims},
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = shlex.join(["python", "-m", "benchmarks.latency", *argv])
    console = Console(stderr=True)
    out = Console()
    if not out.is_terminal:
        out = Console(width=160)  # files and pipes: wide enough for the per-turn table
    if args.barge_in and _barge_in_runner() is None:
        console.print("error: --barge-in needs benchmarks/barge_in.py (run_barge_in), which is not in this checkout")
        return 2
    try:
        report = anyio.run(run, args, command, console)
    except (FileNotFoundError, ValueError) as error:
        console.print(f"error: {error}")
        return 2
    except StageError as error:
        console.print(f"error: {error}")
        return 1
    traces = report.pop("_traces")
    trace_summary = report.pop("_trace_summary")
    tracer = report.pop("_tracer")
    reporting.print_report(out, report, trace_summary)
    reporting.print_long_conversation(out, report["summary"])
    reporting.print_echo(out, report["summary"])
    out.print(reporting.turn_table(report["turns"]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
        console.print(f"report written to {args.json}")
    if args.trace:
        tracer.write_perfetto(args.trace)
        console.print(f"Perfetto trace written to {args.trace} (open it in https://ui.perfetto.dev)")
    if args.jsonl:
        tracer.write_jsonl(args.jsonl)
        console.print(f"trace records written to {args.jsonl}")
    if args.chart:
        baseline_ms = [r["time_to_first_audio_ms"] for r in report["baseline_turns"] if r.get("time_to_first_audio_ms") is not None]
        reporting.write_chart(args.chart, traces, baseline_ms)
        console.print(f"chart written to {args.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
