"""Turn-taking figures of a streaming run: cut-offs and the wait after the user's true end.

Every file of the run is one user turn. A file is *cut off* when the pipeline
committed a turn (SpeechStopped) and the user's speech went on after it (the
file gave more than one VAD turn), or when a reply sample played more than
:data:`CUT_OFF_MARGIN_MS` before the file's last voiced sample (by energy).
Works on any ``--audio-dir``: on natural utterances the cut-off rate counts the
turns the VAD split, on the pause corpus (tests/data/pauses) the pauses it
took for the end.
"""

from __future__ import annotations

from typing import Any

from realtime_pipeline.audio import INPUT_SAMPLE_RATE_HZ
from realtime_pipeline.stages.vad import VADSettings
from realtime_pipeline.tracing import FIRST_SAMPLE_PLAYED

from . import report as reporting
from .measure import Models

#: A reply that starts this much before the last voiced sample (by energy) talks over the user;
#: less is within the disagreement of the energy ground truth and the VAD about a faint last word.
CUT_OFF_MARGIN_MS = 250


def mark_cut_offs(run: Any, records: list[dict[str, Any]], turns: list[Any]) -> None:
    """Add ``cut_off`` and ``commits_before_end`` to each record of :func:`streaming.turn_records`."""
    starts = run.source.turn_start_samples
    stream_start_s = run.source.stream_start_s()
    for record, turn in zip(records, turns):
        index = record["index"]
        if index >= len(starts):
            record["cut_off"], record["commits_before_end"] = False, 0
            continue
        end_s = stream_start_s + (starts[index] + turn.speech_end_sample) / INPUT_SAMPLE_RATE_HZ
        early = record["vad_turn_ids"][:-1]  # committed, and then the user spoke on
        talked_over = False
        for turn_id in record["vad_turn_ids"]:
            trace = run.tracer.turn(turn_id)
            played = trace.stamps.get(FIRST_SAMPLE_PLAYED) if trace is not None else None
            if played is not None and played < end_s - CUT_OFF_MARGIN_MS / 1000:
                talked_over = True
        record["commits_before_end"] = len(early)
        record["cut_off"] = bool(early) or talked_over


def summary(records: list[dict[str, Any]], vad: VADSettings, models: Models) -> dict[str, Any]:
    """``summary.turn_taking``: files, cut-offs, the wait after the true end, the settings and model costs."""
    settings = vad.turn_taking
    cut = [r["file"] for r in records if r.get("cut_off")]
    waits = [r.get("spans_ms", {}).get("endpoint") for r in records if not r.get("cut_off")]
    costs: dict[str, Any] = {}
    if models.turn is not None and models.turn.cost_ms:
        costs["smart_turn_ms"] = reporting.stats(models.turn.cost_ms)
    if getattr(models.llm, "end_of_turn_cost_ms", None):
        costs["llm_end_of_turn_ms"] = reporting.stats(models.llm.end_of_turn_cost_ms)
    return {
        "files": len(records),
        "cut_offs": len(cut),
        "cut_off_rate": len(cut) / len(records) if records else None,
        "cut_off_files": cut,
        "wait_after_end_ms": reporting.stats(waits),
        "vad_speech_end_error_ms": reporting.stats([r.get("vad_speech_end_error_ms") for r in records]),
        "mode": settings.mode,
        "settings": {
            "silence_ms": settings.silence_ms,
            "min_silence_ms": settings.min_silence_ms,
            "max_silence_ms": settings.max_silence_ms,
            "fallback_silence_ms": settings.fallback_silence_ms,
            "threshold": settings.threshold,
            "weights": dict(settings.weights),
            "pause_ms": vad.pause_ms,
        },
        "model_cost_per_call": costs,
    }
