"""Latency tracer: monotonic stamps per turn, and the per-stage breakdown.

Stages call :meth:`Tracer.stamp` at every hop. The first stamp of a name in a
turn wins (a turn's *first* token, *first* audio), so stages can stamp
unconditionally. A disabled tracer costs one attribute check per call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

# The hops of one turn, in the order they happen.
USER_SPEECH_END = "user_speech_end"          # last voiced input sample (VAD's, or ground truth)
VAD_SPEECH_STOPPED = "vad_speech_stopped"    # VAD decided the user stopped
TURN_COMMITTED = "turn_committed"            # end of turn decided (the pipeline answers now)
ASR_FINAL = "asr_final"                      # final transcript ready
LLM_FIRST_TOKEN = "llm_first_token"
FIRST_CHUNK = "first_chunk"                  # first speakable text chunk
TTS_FIRST_AUDIO = "tts_first_audio"
FIRST_SAMPLE_PLAYED = "first_sample_played"  # first reply sample written to the output
RESPONSE_DONE = "response_done"
RESPONSE_CANCELLED = "response_cancelled"

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


@dataclass
class TurnTrace:
    turn_id: int
    stamps: dict[str, float] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)

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

    def note(self, turn_id: int, key: str, text: str) -> None:
        """Attach a text (user transcript, reply) to a turn's trace."""
        if not self.enabled:
            return
        trace = self.turns.setdefault(turn_id, TurnTrace(turn_id))
        trace.texts[key] = text

    def turn(self, turn_id: int) -> TurnTrace | None:
        return self.turns.get(turn_id)

    def summary_line(self, turn_id: int) -> str:
        """A one-line per-turn breakdown, e.g. for the CLI."""
        trace = self.turns.get(turn_id)
        if trace is None:
            return "latency: (no trace)"
        parts = []
        breakdown = trace.breakdown_ms()
        for name in (*STAGE_SPANS, *TOTAL_SPANS):
            if name in breakdown:
                parts.append(f"{name} {breakdown[name]:.0f} ms")
        return "latency: " + (" | ".join(parts) if parts else "(incomplete)")
