"""``python -m benchmarks.turn_sweep``: the end-of-turn trade-off table, fast.

Replays each file through the real VAD stage (with a turn that never ends),
records every pause inside the speech, and scores each pause once with the real
end-of-turn models — Smart Turn on the audio up to the moment it is asked, and
the LLM's end-of-turn token on Whisper's transcript of the same audio. Then
every setting of the state machine (:class:`~realtime_pipeline.turn_taking.EndOfTurn`)
is replayed on those pauses: where it would commit, whether that cuts the user
off, and how long after the true end of speech it commits. Model latency is
left out (scores arrive at once), so the waits are the detector's own; the
real-time benchmark (``python -m benchmarks.latency``) confirms the chosen
settings with everything running.

    python -m benchmarks.turn_sweep                       # natural turns + the pause corpus
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from realtime_pipeline.audio import INPUT_SAMPLE_RATE_HZ
from realtime_pipeline.conversation import DEFAULT_SYSTEM_PROMPT, Conversation
from realtime_pipeline.frames import AudioFrame, Frame, SpeechPaused, SpeechResumed, SpeechStarted
from realtime_pipeline.stage import StageContext
from realtime_pipeline.stages.asr import WhisperASR
from realtime_pipeline.stages.llm import LlamaLLM
from realtime_pipeline.stages.smart_turn import SmartTurnModel
from realtime_pipeline.stages.vad import VADSettings, WebRTCVAD
from realtime_pipeline.tracing import Tracer, percentile
from realtime_pipeline.turn_taking import AUDIO_MODEL, TEXT_MODEL, EndOfTurn, TurnScore, TurnTakingSettings

from .turn_taking import CUT_OFF_MARGIN_MS
from .turns import DEFAULT_AUDIO_DIR, Turn, load_turns

PAUSE_DIR = DEFAULT_AUDIO_DIR.parent / "pauses"
#: The ASR's ``tail_ms``: the transcribed clip keeps this much after the speech end.
ASR_TAIL_MS = 100


@dataclass
class Pause:
    start_ms: int          # end of the voiced audio before it (the VAD's refined end)
    end_ms: int            # where speech resumed, or the end of the file
    audio: float = 0.0     # Smart Turn's P(complete)
    text: float = 0.0      # the LLM's P(end-of-turn token)
    transcript: str = ""


@dataclass
class FilePauses:
    name: str
    corpus: str
    speech_end_ms: int
    pauses: list[Pause] = field(default_factory=list)


class _Recorder:
    def __init__(self, conversation: Conversation, events: list[tuple[Frame, int]]) -> None:
        self.conversation, self.events = conversation, events

    async def send(self, frame: Frame) -> None:
        if not isinstance(frame, AudioFrame):
            self.events.append((frame, self.conversation.audio_position_ms))


async def find_pauses(turn: Turn, vad_settings: VADSettings) -> tuple[list[tuple[int, int]], int]:
    """The (start, end) ms of every pause after the speech began, and where the speech began."""
    settings = VADSettings(**{**vad_settings.__dict__, "turn_taking": TurnTakingSettings.fixed_silence(10**9)})
    vad = WebRTCVAD(settings)
    conversation = Conversation()
    events: list[tuple[Frame, int]] = []
    send, receive = anyio.create_memory_object_stream[Frame](10**6)
    step = INPUT_SAMPLE_RATE_HZ * 20 // 1000
    for start in range(0, len(turn.samples) - step + 1, step):
        send.send_nowait(AudioFrame(turn.samples[start : start + step], INPUT_SAMPLE_RATE_HZ, start))
    send.close()
    await vad.run(StageContext(conversation, Tracer(enabled=False)), receive, _Recorder(conversation, events))  # type: ignore[arg-type]
    pauses: list[tuple[int, int]] = []
    speech_start = 0
    open_pause: int | None = None
    file_end_ms = 1000 * len(turn.samples) // INPUT_SAMPLE_RATE_HZ
    for event, position_ms in events:
        if isinstance(event, SpeechStarted) and not pauses and open_pause is None:
            speech_start = event.audio_start_ms
        elif isinstance(event, SpeechPaused):
            open_pause = event.audio_end_ms
        elif isinstance(event, SpeechResumed) and open_pause is not None:
            pauses.append((open_pause, position_ms))
            open_pause = None
    if open_pause is not None:
        pauses.append((open_pause, file_end_ms + 3000))  # the user said nothing more
    return pauses, speech_start


def score_pauses(turns: list[tuple[Turn, str]], vad: VADSettings, asr: WhisperASR, llm: LlamaLLM,
                 smart_turn: SmartTurnModel) -> list[FilePauses]:
    files = []
    for turn, corpus in turns:
        spans, speech_start_ms = anyio.run(find_pauses, turn, vad)
        record = FilePauses(turn.name, corpus, 1000 * turn.speech_end_sample // INPUT_SAMPLE_RATE_HZ)
        for start_ms, end_ms in spans:
            begin = speech_start_ms * INPUT_SAMPLE_RATE_HZ // 1000
            asked = (start_ms + vad.pause_ms) * INPUT_SAMPLE_RATE_HZ // 1000
            heard = turn.samples[begin:asked]
            if len(heard) < asked - begin:
                heard = np.concatenate([heard, np.zeros(asked - begin - len(heard), dtype=np.int16)])
            text = asr.transcribe(turn.samples[begin : (start_ms + ASR_TAIL_MS) * INPUT_SAMPLE_RATE_HZ // 1000])
            messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": text}]
            p_text = llm.engine.end_of_turn_probability_sync(messages) if text.strip() else 0.0
            record.pauses.append(Pause(start_ms, end_ms, smart_turn.predict(heard), p_text or 0.0, text))
        files.append(record)
        print(f"{corpus:8} {turn.name:36} " + " | ".join(
            f"{p.start_ms}-{p.end_ms} a={p.audio:.2f} t={p.text:.2f}" for p in record.pauses), file=sys.stderr)
    return files


def replay(file: FilePauses, settings: TurnTakingSettings) -> tuple[bool, int | None]:
    """(cut off, commit ms after the true end) of one file under ``settings``."""
    detector = EndOfTurn(settings)
    detector.speech_started(1, 10**6)  # pauses after too little speech never reach the sweep (the VAD skips them)
    for pause in file.pauses:
        detector.silence(pause.start_ms, pause.start_ms)
        for source, probability in ((AUDIO_MODEL, pause.audio), (TEXT_MODEL, pause.text)):
            detector.add_score(TurnScore(1, pause.start_ms, source, probability))
        required = detector.required_silence_ms(detector.probability)
        if pause.end_ms - pause.start_ms > required:
            commit_ms = pause.start_ms + required
            if pause is not file.pauses[-1] or commit_ms < file.speech_end_ms - CUT_OFF_MARGIN_MS:
                return True, None  # speech resumed after the commit, or the reply would start over the last words
            return False, commit_ms - file.speech_end_ms
        detector.voiced(pause.end_ms - pause.start_ms)
    return False, None


def sweep(files: list[FilePauses], grid: list[TurnTakingSettings]) -> list[dict[str, Any]]:
    rows = []
    for settings in grid:
        row: dict[str, Any] = {"settings": describe(settings)}
        for corpus in sorted({f.corpus for f in files}):
            results = [replay(f, settings) for f in files if f.corpus == corpus]
            waits = [w for cut, w in results if not cut and w is not None]
            row[corpus] = {
                "files": len(results),
                "cut_off_rate": round(sum(cut for cut, _ in results) / len(results), 3),
                "wait_p50_ms": round(percentile(waits, 50)) if waits else None,
                "wait_p95_ms": round(percentile(waits, 95)) if waits else None,
            }
        rows.append(row)
    return rows


def describe(s: TurnTakingSettings) -> str:
    if s.mode == "silence":
        return f"fixed silence {s.silence_ms} ms"
    weights = dict(s.weights)
    return (f"semantic min {s.min_silence_ms} max {s.max_silence_ms} threshold {s.threshold} "
            f"audio {weights.get(AUDIO_MODEL, 0):g} text {weights.get(TEXT_MODEL, 0):g}")


def default_grid() -> list[TurnTakingSettings]:
    grid = [TurnTakingSettings.fixed_silence(ms) for ms in (300, 500, 800, 1200, 2000)]
    for (audio, text), threshold, min_ms, max_ms in itertools.product(
            ((1, 0), (0, 1), (1, 0.5), (1, 1), (1, 2)), (0.3, 0.5, 0.7), (200,), (1500, 2000, 3000)):
        grid.append(TurnTakingSettings(min_silence_ms=min_ms, max_silence_ms=max_ms, threshold=threshold,
                                       weights=((AUDIO_MODEL, float(audio)), (TEXT_MODEL, float(text)))))
    return grid


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.turn_sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--natural-dir", type=Path, default=DEFAULT_AUDIO_DIR)
    parser.add_argument("--pause-dir", type=Path, default=PAUSE_DIR)
    parser.add_argument("--json", type=Path, help="write the scored pauses and the table as JSON")
    parser.add_argument("--scores", type=Path, help="replay the scored pauses of an earlier --json instead of scoring again")
    args = parser.parse_args(argv)
    if args.scores:
        saved = json.loads(args.scores.read_text(encoding="utf-8"))["files"]
        files = [FilePauses(f["name"], f["corpus"], f["speech_end_ms"], [Pause(**p) for p in f["pauses"]]) for f in saved]
    else:
        vad = VADSettings()
        turns = [(t, "natural") for t in load_turns(args.natural_dir)] + [(t, "pauses") for t in load_turns(args.pause_dir)]
        asr = WhisperASR()
        llm = LlamaLLM()
        smart_turn = SmartTurnModel()
        context = StageContext(Conversation(), Tracer(enabled=False))
        anyio.run(asr.setup, context)
        anyio.run(llm.setup, context)
        smart_turn.load()
        files = score_pauses(turns, vad, asr, llm, smart_turn)
    rows = sweep(files, default_grid())
    print(f"{'setting':64} {'natural cut-off':>15} {'wait p50/p95':>13} {'pauses cut-off':>15} {'wait p50/p95':>13}")
    for row in rows:
        n, p = row.get("natural", {}), row.get("pauses", {})
        print(f"{row['settings']:64} {n.get('cut_off_rate', 0):15.3f} {n.get('wait_p50_ms')!s:>6}/{n.get('wait_p95_ms')!s:<6} "
              f"{p.get('cut_off_rate', 0):15.3f} {p.get('wait_p50_ms')!s:>6}/{p.get('wait_p95_ms')!s:<6}")
    if args.json:
        args.json.write_text(json.dumps({"files": [f.__dict__ | {"pauses": [p.__dict__ for p in f.pauses]} for f in files],
                                         "table": rows}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
