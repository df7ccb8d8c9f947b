"""A session's first reply in the echo room, offline: does its echo alone reach the barge-in threshold?

AEC3 that has heard no echo yet can let a first reply's echo through (in a reverberant room
most of all), and the VAD then pauses the reply on its own voice. This replays only that:
for each room and each of ``--replies`` Piper replies (Piper's voice varies from call to call),
the echo stage (the real AEC3 through ``EchoCancellation.process``) hears the session's start
with and without the start sound (``EchoCancellation.calibrate``), then 4 s of the reply with
nobody speaking, and the VAD stage's rule (``echo_sim.VadRule``) counts a self-interruption
where it reaches the conversation's barge-in threshold (80 ms of voiced audio; 240 ms while the
stage says AEC3 has not heard enough of the room yet; ``--no-guard``: 80 ms all along).
``--user FILE`` puts a user's first turn at the session's start (over the start sound, or alone
without it), the reply 1 s after it.

    python -m benchmarks.first_reply --replies 16
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from realtime_pipeline.audio import read_wav, resample
from realtime_pipeline.echo_cancel import EchoCancellation, EchoCanceller
from realtime_pipeline.interruption import InterruptionSettings
from realtime_pipeline.io.echo_room import EchoRoomSettings
from realtime_pipeline.io.outputs import MemoryOutput

from .barge_in import SPEECH_DIR
from .echo_sim import AUDIBLE_REPLY, RATE, REPLY_TEXTS, ROOMS, STEP, VadRule, synthesize_replies

REPLY_S = 4


def self_interruption_s(room: EchoRoomSettings, reply: np.ndarray, *, calibrate: bool, user: np.ndarray | None = None,
                        interruptions: InterruptionSettings = InterruptionSettings(), guard: bool = True,
                        stage: EchoCancellation | None = None) -> float | None:
    """Seconds into ``reply`` where its echo alone reached the barge-in threshold at the VAD (None:
    never), after the start sound (``calibrate``) and ``user``'s turn (if any). The threshold is the
    conversation's: ``min_interruption_while_speaking_ms`` while the stage says its echo may get
    through (``EchoCancellation.echo_unprotected``; not without ``guard``), else ``min_interruption_ms``.
    ``stage``: a fresh echo stage to run (to look into afterwards), else one is made."""
    if stage is None:
        stage = EchoCancellation(MemoryOutput(RATE), canceller=EchoCanceller())
    sound = stage.start_calibration(RATE).astype(np.float64) if calibrate else np.zeros(0)
    reply_start = len(user) + RATE if user is not None else len(sound) + RATE // 2
    far = np.zeros(max(reply_start, len(sound)) + REPLY_S * RATE)
    far[: len(sound)] = sound
    played = reply[: REPLY_S * RATE]
    far[reply_start : reply_start + len(played)] = played
    delayed = np.concatenate([np.zeros(room.delay_ms * RATE // 1000), far])
    mic = np.convolve(delayed, room.response() * 10 ** (room.gain_db / 20))[: len(far)]
    if user is not None:
        mic[: len(user)] += user
    capture = np.clip(np.round(mic), -32768, 32767).astype(np.int16)
    reference = np.clip(np.round(far), -32768, 32767).astype(np.int16)
    vad = VadRule()
    for position in range(0, len(capture) // STEP * STEP, STEP):
        vad.step(stage.process(position, capture[position : position + STEP], reference[position : position + STEP]))
        started = vad.started_at is not None and vad.started_at >= reply_start
        threshold_ms = interruptions.threshold_ms(AUDIBLE_REPLY, echo_unprotected=guard and stage.echo_unprotected())
        if vad.in_speech and started and vad.voiced_ms >= threshold_ms:
            return round((position + STEP - reply_start) / RATE, 2)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.first_reply", description=__doc__.split("\n\n")[0])
    parser.add_argument("--replies", type=int, default=16, help="Piper replies per room (each synthesized afresh)")
    parser.add_argument("--rooms", default="0,1,2", help=f"comma-separated indexes into echo_sim.ROOMS ({len(ROOMS)})")
    parser.add_argument("--user", metavar="FILE", help="a user's first turn at the start (a file in tests/data/speech)")
    parser.add_argument("--no-guard", action="store_true",
                        help="the barge-in threshold stays min_interruption_ms while AEC3 is still learning the room")
    parser.add_argument("--json", type=Path, metavar="PATH")
    args = parser.parse_args(argv)
    if args.replies < 1:
        parser.error(f"--replies must be at least 1, got {args.replies}")
    try:
        rooms = [ROOMS[int(index)] for index in args.rooms.split(",")]
    except (ValueError, IndexError):
        parser.error(f"--rooms takes indexes 0..{len(ROOMS) - 1}, got {args.rooms!r}")
    user = None
    if args.user is not None:
        path = SPEECH_DIR / args.user
        if not path.is_file():
            parser.error(f"--user: no such recording {path}")
        samples, rate = read_wav(path)
        user = resample(samples, rate, RATE).astype(np.float64)
    from realtime_pipeline import PiperTTS
    from realtime_pipeline.conversation import Conversation
    from realtime_pipeline.stage import StageContext
    from realtime_pipeline.tracing import Tracer
    import anyio

    tts = PiperTTS()
    anyio.run(tts.setup, StageContext(Conversation(), Tracer()))
    started = time.perf_counter()
    replies = synthesize_replies(tts, [REPLY_TEXTS[i % len(REPLY_TEXTS)] for i in range(args.replies)])
    result: list[dict[str, Any]] = []
    for room in rooms:
        row: dict[str, Any] = {"room": {"delay_ms": room.delay_ms, "gain_db": room.gain_db, "rt60_ms": room.rt60_ms,
                                        "seed": room.seed}, "user": args.user, "guard": not args.no_guard}
        for calibrate in (False, True):
            times = [self_interruption_s(room, reply, calibrate=calibrate, user=user, guard=not args.no_guard)
                     for reply in replies]
            row["start_sound" if calibrate else "no_start_sound"] = {
                "self_interruptions": sum(t is not None for t in times), "replies": len(times),
                "at_s": [t for t in times if t is not None]}
        result.append(row)
        print(json.dumps(row), flush=True)
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
