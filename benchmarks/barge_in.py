"""Barge-in benchmark: real speech interrupts real replies, measured at the virtual speaker.

The scenario: a spoken question (``examples/audio/question.wav``) is answered by
the full pipeline on the embedded models; once the reply has played
``interrupt_after_ms``, a real speech file from ``tests/data/speech`` starts, fed
in real time like a microphone. That file is itself a question: its reply is
interrupted by the next file, and so on. The output is a paced
:class:`MemoryOutput` (a virtual sound card), so what it recorded is what a
listener would have heard, and when.

Per interruption:

* ``barge_in_ms``: user speech onset (ground truth, :func:`speech_onset_sample`: the first
  20 ms of the file within 30 dB of its speech level and 15 dB over its noise floor) → the end of the last block
  of the interrupted response that the speaker actually played;
* leaked: any block of that response played after it was stopped (its pause, or
  its cancel if it was never paused). Must be 0 (``leaked_turns``).

An interruption is measured only when the reply was still playing at the user's
onset; when the VAD stopped it before (on a breath, the recording's noise floor)
it is counted in ``vad_before_onset`` instead, so no latency is negative.
``measured`` is the number of interruptions measured. ``resumed_by_timeout``
counts pauses that ``false_interruption_ms`` ended before the ASR delivered the
words (then their late words still interrupt).

``python -m benchmarks.barge_in`` runs it (``--help`` for options);
``python -m benchmarks.barge_in --measure-threshold`` prints the measurement
behind ``min_interruption_ms`` (see :mod:`realtime_pipeline.interruption`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from realtime_pipeline import voice_pipeline
from realtime_pipeline.audio import INPUT_SAMPLE_RATE_HZ, read_wav, resample
from realtime_pipeline.conversation import (
    Conversation,
    ResponseInterrupted,
    ResponsePaused,
    ResponseResumed,
)
from realtime_pipeline.echo_cancel import EchoCancellation
from realtime_pipeline.frames import SpeechStarted, SpeechStopped, TranscriptFinal
from realtime_pipeline.interruption import InterruptionSettings
from realtime_pipeline.io.outputs import MemoryOutput
from realtime_pipeline.io.sources import PacedEmitter
from realtime_pipeline.response import Response
from realtime_pipeline.stage import Inbox, Outbox, Stage, StageContext
from realtime_pipeline.stages.vad import VADSettings

from . import echo as echo_room
from .measure import word_error_rate
from .turns import read_tsv

ROOT = Path(__file__).resolve().parent.parent
SPEECH_DIR = ROOT / "tests" / "data" / "speech"
QUESTION_WAV = ROOT / "examples" / "audio" / "question.wav"
#: Long enough replies that there is something to interrupt.
SYSTEM_PROMPT = (
    "You are a helpful voice assistant. Answer in three or four full spoken sentences, "
    "without lists, markdown or emojis."
)
DEFAULT_LIMIT = 12
DEFAULT_INTERRUPT_AFTER_MS = 400
#: A wait for the pipeline longer than this is a miss, not a hang.
WAIT_LIMIT_S = 30.0


def speech_onset_sample(samples: np.ndarray, sample_rate_hz: int = INPUT_SAMPLE_RATE_HZ) -> int:
    """Ground-truth speech onset: the first of two 10 ms windows in a row above a threshold that
    is within 30 dB of the speech level (its 95th-percentile window), above -50 dBFS, and 15 dB
    above the recording's noise floor (its 10th-percentile window; at most 15 dB under the level).

    The noise-floor rule (2026-12-05): eleven of the 30 recordings carry room noise or a breath at
    -40..-55 dBFS for 90-330 ms before the first word (the LibriVox and cards ones,
    mfa_librispeech, ps_goforward),
    and the 30 dB rule alone put their onset on that noise. A reply's echo hides such noise
    completely, and without echo webrtcvad stopped replies on it (counted as 81 ms barge-ins),
    so latencies were measured from a sound nobody would call speech. Two windows in a row keep
    a single click from counting (mfa_librispeech's first 10 ms)."""
    window = sample_rate_hz // 100
    count = len(samples) // window
    if count == 0:
        return 0
    frames = samples[: count * window].astype(np.float64).reshape(count, window)
    level_db = 20 * np.log10(np.maximum(np.sqrt(np.mean(frames**2, axis=1)), 1e-3) / 32768.0)
    speech_db, floor_db = float(np.percentile(level_db, 95)), float(np.percentile(level_db, 10))
    threshold_db = max(speech_db - 30.0, -50.0, min(floor_db + 15.0, speech_db - 15.0))
    above = level_db >= threshold_db
    sustained = above[:-1] & above[1:]
    if sustained.any():
        return int(np.argmax(sustained)) * window
    return int(np.argmax(above)) * window


@dataclass(frozen=True, eq=False)
class Interrupter:
    name: str
    samples: np.ndarray  # 16 kHz int16
    onset_sample: int


def load_interrupters(files: Sequence[str | Path], *, lead_ms: int = 200) -> list[Interrupter]:
    """The files at 16 kHz, cut to start ``lead_ms`` before the speech onset (some have 2 s of
    silence first, long enough for a short reply to end before the user says anything)."""
    interrupters = []
    for path in files:
        samples, rate = read_wav(path)
        samples = resample(samples, rate, INPUT_SAMPLE_RATE_HZ)
        start = max(0, speech_onset_sample(samples) - lead_ms * INPUT_SAMPLE_RATE_HZ // 1000)
        samples = samples[start:]
        interrupters.append(Interrupter(Path(path).name, samples, speech_onset_sample(samples)))
    return interrupters


@dataclass
class Attempt:
    """One interrupter as played: when its speech began and which response it spoke over."""

    name: str
    start_s: float  # its first sample (some lead before the words)
    onset_s: float
    target: Response | None
    start_sample: int  # the first sample, the onset and the end on the input's sample clock (the echo stage's recording's)
    onset_sample: int
    end_sample: int


class BargeInSource(Stage):
    """Plays the question, then each interrupter once the current reply has played ``interrupt_after_ms``.

    Real time, 20 ms frames, silence in between (what a microphone hears). When a
    reply is too short to be interrupted, the next file is played after it as a
    normal turn (its attempt then has no target).
    """

    name = "source"

    def __init__(self, question: np.ndarray, interrupters: list[Interrupter], *,
                 interrupt_after_ms: int = DEFAULT_INTERRUPT_AFTER_MS, frame_ms: int = 20,
                 lead_ms: int = 300, tail_ms: int = 1200, min_ahead_ms: int = 400) -> None:
        self.question = question
        self.interrupters = interrupters
        self.interrupt_after_ms = interrupt_after_ms
        self.frame_ms = frame_ms
        self.lead_ms = lead_ms
        self.tail_ms = tail_ms
        self.min_ahead_ms = min_ahead_ms
        self.attempts: list[Attempt] = []

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        rate = INPUT_SAMPLE_RATE_HZ
        conversation = ctx.conversation
        mic = PacedEmitter(outbox, realtime=True, frame_ms=self.frame_ms)
        started = mic.started_at

        async def silence_until(condition: Any) -> bool:
            return await mic.silence_until(condition, limit_s=WAIT_LIMIT_S)

        def heard_up_to(sample: int) -> Any:
            return lambda: conversation.audio_processed_samples >= sample

        def reply_playing(onset_ms: float) -> Response | None:
            """The active reply once it has played ``interrupt_after_ms`` and has enough audio
            synthesized, not yet played, to still be playing well after the user's onset."""
            response = conversation.active_response
            if response is None or response.paused or response.played_ms < self.interrupt_after_ms:
                return None
            synthesized = sum(chunk.num_samples for chunk in response.chunks)
            ahead_ms = 1000.0 * (synthesized - response.played_samples) / (response.output_sample_rate_hz or 1)
            return response if ahead_ms >= onset_ms + self.min_ahead_ms else None

        await mic.silence(self.lead_ms)
        await mic.emit(self.question)
        await mic.silence(self.tail_ms)
        for interrupter in self.interrupters:
            heard = heard_up_to(mic.position)
            onset_ms = 1000.0 * interrupter.onset_sample / rate
            await silence_until(lambda onset_ms=onset_ms, heard=heard: reply_playing(onset_ms) is not None
                                or (conversation.idle and heard()))
            target = reply_playing(onset_ms)
            onset_s = started + (mic.position + interrupter.onset_sample) / rate
            self.attempts.append(Attempt(interrupter.name, started + mic.position / rate, onset_s, target, mic.position,
                                         mic.position + interrupter.onset_sample, mic.position + len(interrupter.samples)))
            await mic.emit(interrupter.samples)
            await mic.silence(self.tail_ms)
        end = mic.position
        await silence_until(lambda: conversation.idle and heard_up_to(end)())


def _percentiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"p50": None, "p95": None, "values": []}
    array = np.asarray(values, dtype=np.float64)
    return {
        "p50": float(np.percentile(array, 50)),
        "p95": float(np.percentile(array, 95)),
        "values": [round(v, 1) for v in values],
    }


def analyse(attempts: list[Attempt], output: MemoryOutput, events: list[tuple[float, Any]]) -> dict[str, Any]:
    """Per-attempt records, ``barge_in_ms`` percentiles and the leaked-turn count, from the speaker's record.

    ``events`` are (monotonic time, conversation event). An attempt's stop is the
    first pause (or cancel) of its target from the attempt's first sample (the
    VAD may react to a breath before the energy onset) until the next attempt;
    the output went silent at the end of the last block played by then.
    """
    records: list[dict[str, Any]] = []
    barge_in_ms: list[float] = []
    before_onset = 0
    leaked_responses: set[str] = set()
    tolerance_s = 2.0 / output.sample_rate_hz  # the flush rounds to whole samples
    for index, attempt in enumerate(attempts):
        record: dict[str, Any] = {"file": attempt.name, "interrupted": False}
        records.append(record)
        response = attempt.target
        if response is None:
            record["note"] = "reply too short to interrupt"
            continue
        window_end_s = attempts[index + 1].start_s if index + 1 < len(attempts) else float("inf")
        mine = [e for _, e in events if getattr(e, "response", None) is response]
        in_window = [e for e in mine if attempt.start_s <= getattr(e, "at_s", -1.0) < window_end_s]
        stops = [e for e in in_window if isinstance(e, (ResponsePaused, ResponseInterrupted))]
        resumed = [e for e in in_window if isinstance(e, ResponseResumed)]
        cancel = next((e for e in in_window if isinstance(e, ResponseInterrupted)), None)
        record.update(response=response.id, reason=cancel.reason if cancel else None,
                      false_interruption_resumes=[f"{e.reason} after {e.paused_ms:.0f} ms" for e in resumed])
        if not stops:
            record["note"] = "not stopped"
            continue
        stop_s = stops[0].at_s
        ends = [output.block_end_s(b) for b in output.blocks if b.response_id == response.id and b.started_at_s <= stop_s]
        if not ends:
            record["note"] = "no audio of it had played"
            continue
        record["interrupted"] = cancel is not None
        if max(ends) < attempt.onset_s:  # silent before the words began: nothing to measure from the onset
            record["note"] = "stopped before the speech onset (the VAD reacted to a breath or noise)"
            record["stopped_before_onset_ms"] = round(1000.0 * (attempt.onset_s - max(ends)), 1)
            before_onset += 1
        else:
            record["barge_in_ms"] = round(1000.0 * (max(ends) - attempt.onset_s), 1)
            barge_in_ms.append(record["barge_in_ms"])
        if cancel is None:
            record["note"] = "resumed: played on"
            continue
        # the final stop: the last pause not undone by a resume, else the cancel itself
        pauses = [e for e in mine if isinstance(e, ResponsePaused) and e.at_s <= cancel.at_s]
        resumes = [e for e in mine if isinstance(e, ResponseResumed) and e.at_s <= cancel.at_s]
        final_stop_s = pauses[-1].at_s if pauses and (not resumes or pauses[-1].at_s > resumes[-1].at_s) else cancel.at_s
        blocks = [b for b in output.blocks if b.response_id == response.id]
        leaked = [b for b in blocks if b.started_at_s > final_stop_s or output.block_end_s(b) > final_stop_s + tolerance_s]
        if leaked:
            leaked_responses.add(response.id)
        record.update(
            leaked_blocks=len(leaked),
            played_ms=round(response.played_ms, 1),
            heard_text=response.heard_text(),
            reply_text=response.text,
            confirm_ms=round(1000.0 * (cancel.at_s - attempt.onset_s), 1),
        )
    return {
        # leaked_turns and measured also inside, so summary.barge_in_ms has them
        "barge_in_ms": {**_percentiles(barge_in_ms), "measured": len(barge_in_ms), "leaked_turns": len(leaked_responses)},
        "vad_before_onset": before_onset,
        "leaked_turns": len(leaked_responses),
        "attempts": len(attempts),
        "measured": len(barge_in_ms),
        "resumed_by_timeout": sum(
            1 for _, e in events if isinstance(e, ResponseResumed) and e.reason == "timeout"),
        "asr_final_after_speech_stopped_ms": _percentiles(_final_delays_ms(events)),
        "turns": records,
    }


def interrupter_transcripts(attempts: list[Attempt], events: list[tuple[float, Any]]) -> list[dict[str, Any]]:
    """Per attempt with a reference: the final transcripts of the VAD turns that started while it
    played (until the next attempt), joined, and how many turns the VAD cut it into."""
    references = read_tsv(SPEECH_DIR / "transcripts_normalized.tsv")
    started = [(t, e.turn_id) for t, e in events if isinstance(e, SpeechStarted)]
    finals = {e.turn_id: e.text for _, e in events if isinstance(e, TranscriptFinal)}
    heard = []
    for index, attempt in enumerate(attempts):
        if attempt.name not in references:
            continue
        end_s = attempts[index + 1].start_s if index + 1 < len(attempts) else float("inf")
        turns = [turn_id for t, turn_id in started if attempt.start_s - 0.3 <= t < end_s]
        texts = [finals.get(turn_id, "") for turn_id in turns]
        heard.append({"file": attempt.name, "reference": references[attempt.name],
                      "heard": " ".join(x for x in texts if x), "vad_turns": len(turns)})
    return heard


def interrupter_wer(heard: list[dict[str, Any]]) -> float | None:
    """WER of the interrupting speech: each attempt's reference against the final transcripts of
    the VAD turns that started while it played (:func:`interrupter_transcripts`)."""
    return word_error_rate([h["reference"] for h in heard], [h["heard"] for h in heard]) if heard else None


def _final_delays_ms(events: list[tuple[float, Any]]) -> list[float]:
    """SpeechStopped → TranscriptFinal of the same turn: how long the false-interruption decision waits for."""
    stopped = {e.turn_id: t for t, e in events if isinstance(e, SpeechStopped)}
    return [round(1000.0 * (t - stopped[e.turn_id]), 1)
            for t, e in events if isinstance(e, TranscriptFinal) and e.turn_id in stopped]


@dataclass
class _Models:
    asr: Any
    llm: Any
    tts: Any


def default_files(limit: int | None = DEFAULT_LIMIT, seed: int = 0, *, shuffle: bool = False) -> list[Path]:
    """``limit`` of the bundled recordings chosen with ``seed``, by name, or with ``shuffle`` in an
    order drawn with ``seed``. By name, the MFA recordings (soft, whispered, falsetto) always come
    first, while the echo room is still being learnt: in the echo room the session's first five
    interruptions and its hardest speakers were the same ones in every seed."""
    files = sorted(SPEECH_DIR.glob("*.wav"))
    if limit and limit < len(files):
        files = sorted(random.Random(seed).sample(files, limit))
    if shuffle:
        random.Random(seed + 1).shuffle(files)
    return files


async def run_barge_in(
    models: Any = None,
    *,
    files: Sequence[str | Path] | None = None,
    limit: int | None = DEFAULT_LIMIT,
    seed: int = 0,
    interrupt_after_ms: int = DEFAULT_INTERRUPT_AFTER_MS,
    interruptions: InterruptionSettings | None = None,
    vad: VADSettings | None = None,
    question: str | Path = QUESTION_WAV,
    console: Any = None,
    echo: echo_room.EchoConfig | None = None,
    shuffle: bool = False,
    record: Path | None = None,
) -> dict[str, Any]:
    """Run the barge-in scenario; returns ``barge_in_ms`` {p50, p95, values}, ``leaked_turns`` and per-turn records.

    ``models`` has ``asr``, ``llm`` and ``tts`` stage objects (loaded once and
    shared); by default the embedded models are loaded here. ``files`` default
    to ``limit`` speech files of ``tests/data/speech`` chosen with ``seed``. With ``echo``
    the scenario runs in the echo room; ``echo_summary`` then has its ``summary.echo`` entry.
    ``record`` (with the double-talk path in the echo room): the echo stage's inputs are written
    there for ``benchmarks.echo_replay``.
    """
    if models is None:
        from realtime_pipeline.stages.asr import WhisperASR
        from realtime_pipeline.stages.llm import LlamaLLM
        from realtime_pipeline.stages.tts import PiperTTS

        models = _Models(WhisperASR(), LlamaLLM(max_tokens=80, seed=seed), PiperTTS())
    paths = list(files) if files is not None else default_files(limit, seed, shuffle=shuffle)
    interrupters = load_interrupters(paths)
    question_samples, question_rate = read_wav(question)
    source = BargeInSource(resample(question_samples, question_rate, INPUT_SAMPLE_RATE_HZ), interrupters,
                           interrupt_after_ms=interrupt_after_ms, lead_ms=echo_room.user_lead_ms(echo, 300))
    output = MemoryOutput(models.tts.output_sample_rate_hz, paced=True)
    heard, room = echo_room.in_room(source, output, echo)
    # Only the current question: interrupted replies in the history make SmolLM collapse into one-word answers.
    conversation = Conversation(SYSTEM_PROMPT, interruptions=interruptions, max_history_messages=1)
    pipeline = voice_pipeline(heard, output, vad=vad, asr=models.asr, llm=models.llm, tts=models.tts,
                              conversation=conversation, echo=echo.mode if echo is not None else "auto",
                              echo_path_fit=echo is not None and echo.path_fit,
                              echo_calibration=echo is None or echo.calibrate)
    stage = echo_room.echo_stage_of(pipeline) if record is not None else None
    if record is not None:
        if room is None or not isinstance(stage, EchoCancellation) or stage.linear is None:
            raise ValueError("recording needs the echo room and its double-talk path (--echo-delay-ms, echo mode double-talk)")
        stage.recording = []
    events: list[tuple[float, Any]] = []
    conversation.add_listener(lambda event: events.append((time.monotonic(), event)))
    if console is not None:
        conversation.add_listener(lambda e: _progress(console, e))
        console.print(f"barge-in: {len(interrupters)} real speech files interrupt real replies, in real time")
    started = time.monotonic()
    await pipeline.run()
    result = analyse(source.attempts, output, events)
    if record is not None:
        from . import echo_replay  # it imports echo_sim, which imports this module

        assert isinstance(stage, EchoCancellation) and room is not None
        echo_replay.save_recording(record, stage, [(f.start_sample, f.samples) for f in room.frames if f.user_energy > 0],
                                   [echo_replay.Attempt(a.name, a.start_sample, a.onset_sample, a.end_sample, turn.get("barge_in_ms"))
                                    for a, turn in zip(source.attempts, result["turns"])])
    heard = interrupter_transcripts(source.attempts, events)
    result["wer"] = interrupter_wer(heard)
    by_file = {h["file"]: h for h in heard}
    for record in result["turns"]:  # what the ASR made of each interrupter, and in how many VAD turns
        if record["file"] in by_file:
            record.update(user_heard=by_file[record["file"]]["heard"], user_vad_turns=by_file[record["file"]]["vad_turns"])
    if echo is not None and room is not None:
        result["echo_summary"] = {
            **echo_room.summary(echo, room, pipeline, [e for _, e in events]),
            "barge_in_ms": {k: result["barge_in_ms"][k] for k in ("p50", "p95", "measured")},
            "wer": result["wer"],
        }
    result["history"] = [dataclasses.asdict(entry) for entry in conversation.entries()]
    result["config"] = {
        "files": [p.name if isinstance(p, Path) else str(p) for p in paths],
        "seed": seed,
        "interrupt_after_ms": interrupt_after_ms,
        "interruptions": dataclasses.asdict(conversation.interruptions),
        "wall_s": round(time.monotonic() - started, 1),
    }
    return result


def _progress(console: Any, event: Any) -> None:
    if isinstance(event, ResponseInterrupted) and event.reason == "turn_detected":
        console.print(f"  interrupted {event.response.id} after {event.played_ms:.0f} ms: heard {event.heard_text!r}")


def measure_detection_ms(files: Sequence[Path], thresholds_ms: Sequence[int] = (60, 80, 100, 120, 160, 200)) -> dict[int, dict[str, float]]:
    """Onset → "the VAD has counted N ms of voiced audio", per threshold N, over ``files``.

    Mirrors :class:`~realtime_pipeline.stages.vad.WebRTCVAD` with default
    settings (speech starts at ``threshold`` of the ``min_speech_ms`` window).
    """
    import webrtcvad

    settings = VADSettings()
    step = INPUT_SAMPLE_RATE_HZ * settings.frame_ms // 1000
    window = max(1, settings.min_speech_ms // settings.frame_ms)
    latencies: dict[int, list[float]] = {n: [] for n in thresholds_ms}
    for path in files:
        samples, rate = read_wav(path)
        samples = np.concatenate([np.zeros(INPUT_SAMPLE_RATE_HZ // 2, dtype=np.int16),
                                  resample(samples, rate, INPUT_SAMPLE_RATE_HZ)])
        onset_ms = 1000.0 * speech_onset_sample(samples) / INPUT_SAMPLE_RATE_HZ
        vad = webrtcvad.Vad(settings.aggressiveness)
        recent: list[bool] = []
        voiced_ms, in_speech = 0, False
        reached: dict[int, float] = {}
        for index in range(len(samples) // step):
            voiced = vad.is_speech(samples[index * step : (index + 1) * step].tobytes(), INPUT_SAMPLE_RATE_HZ)
            recent = (recent + [voiced])[-window:]
            if not in_speech:
                if voiced and len(recent) == window and sum(recent) / window >= settings.threshold:
                    in_speech, voiced_ms = True, sum(recent) * settings.frame_ms
                else:
                    continue
            elif voiced:
                voiced_ms += settings.frame_ms
            for n in thresholds_ms:
                if n not in reached and voiced_ms >= n:
                    reached[n] = (index + 1) * settings.frame_ms  # the frame is available at its end
        for n in thresholds_ms:
            if n in reached:
                latencies[n].append(reached[n] - onset_ms)
    return {
        n: {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)), "files": len(v)}
        for n, v in latencies.items() if v
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.barge_in", description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help=f"speech files to use (default {DEFAULT_LIMIT}; 0 = all 30)")
    parser.add_argument("--seed", type=int, default=0, help="chooses the files and seeds the LLM")
    parser.add_argument("--shuffle", action="store_true",
                        help="the files in an order drawn with --seed (default: by name, the MFA recordings first)")
    parser.add_argument("--interrupt-after-ms", type=int, default=DEFAULT_INTERRUPT_AFTER_MS,
                        help="reply audio played before the user starts speaking")
    parser.add_argument("--min-interruption-ms", type=int, default=InterruptionSettings().min_interruption_ms)
    parser.add_argument("--no-resume", action="store_true", help="cancel at once instead of pausing until words arrive")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the whole result as JSON")
    parser.add_argument("--measure-threshold", action="store_true",
                        help="only print onset → VAD detection latency per min_interruption_ms candidate")
    parser.add_argument("--min-interruption-while-speaking-ms", type=int,
                        default=InterruptionSettings().min_interruption_while_speaking_ms,
                        help="the barge-in threshold over an audible reply when no echo canceller runs (the fallback)")
    echo_room.add_arguments(parser)
    parser.add_argument("--record", type=Path, metavar="PATH",
                        help="echo room, double-talk path: write the echo stage's inputs there (.npz) for benchmarks.echo_replay")
    args = parser.parse_args(argv)
    if args.measure_threshold:
        for n, stats in measure_detection_ms(sorted(SPEECH_DIR.glob("*.wav"))).items():
            print(f"min_interruption_ms={n:4d}: onset → reached p50 {stats['p50']:6.1f} ms, p95 {stats['p95']:6.1f} ms ({stats['files']} files)")
        return 0
    from rich.console import Console

    console = Console(stderr=True)
    settings = InterruptionSettings(min_interruption_ms=args.min_interruption_ms, resume_false_interruption=not args.no_resume,
                                    min_interruption_while_speaking_ms=args.min_interruption_while_speaking_ms)
    try:
        configs: list[echo_room.EchoConfig | None] = list(echo_room.configs(args)) or [None]
    except ValueError as error:
        console.print(f"error: {error}")
        return 2
    if args.echo_compare:
        configs = [None, *configs]  # the same speech without echo: the WER reference
    if args.record is not None and (len(configs) != 1 or configs[0] is None or configs[0].mode != "double-talk"):
        console.print("error: --record needs one echo room run with the double-talk path (--echo-delay-ms, no --echo-compare)")
        return 2

    async def run_all() -> list[dict[str, Any]]:
        from realtime_pipeline.stages.asr import WhisperASR
        from realtime_pipeline.stages.llm import LlamaLLM
        from realtime_pipeline.stages.tts import PiperTTS

        models = _Models(WhisperASR(), LlamaLLM(max_tokens=80, seed=args.seed), PiperTTS())
        return [await run_barge_in(models, limit=args.limit or None, seed=args.seed, interrupt_after_ms=args.interrupt_after_ms,
                                   interruptions=settings, console=console, echo=config, shuffle=args.shuffle, record=args.record)
                for config in configs]

    results = anyio.run(run_all)
    for config, result in zip(configs, results):
        label = "no echo" if config is None else f"echo {config.label}"
        for record in result["turns"]:
            print(json.dumps({"run": label, **{k: v for k, v in record.items() if k not in ("reply_text",)}}))
        summary = {"run": label, "barge_in_ms": {k: result["barge_in_ms"][k] for k in ("p50", "p95")},
                   "vad_before_onset": result["vad_before_onset"], "leaked_turns": result["leaked_turns"],
                   "measured": result["measured"], "attempts": result["attempts"],
                   "resumed_by_timeout": result["resumed_by_timeout"], "wer": result["wer"],
                   "asr_final_after_speech_stopped_ms": {k: result["asr_final_after_speech_stopped_ms"][k] for k in ("p50", "p95")},
                   "wall_s": result["config"]["wall_s"]}
        if "echo_summary" in result:
            summary["echo"] = {k: v for k, v in result["echo_summary"].items() if k not in ("barge_in_ms", "wer")}
        print("summary:", json.dumps(summary))
    if args.json:
        payload = results[0] if len(results) == 1 else {
            ("no_echo" if c is None else c.mode): r for c, r in zip(configs, results)}
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
