"""The benchmarks in the echo room: the speaker's output fed back into the microphone.

``python -m benchmarks.latency --echo-delay-ms 100 --echo-gain-db 0`` (and
``benchmarks.barge_in`` with the same options) put an
:class:`~realtime_pipeline.io.echo_room.EchoRoom` between the virtual speaker
and the source, and the pipeline's echo stage after it: AEC3 with the double-talk path
(``double-talk``, the default), AEC3 alone (``aec``), the fallback gate (``gate``, ``--no-aec``)
or nothing (``off``). ``--echo-compare``
runs the same turns once per mode. ``summary.echo`` then has, per mode:

* ``self_interruptions``: replies paused or cancelled by a turn in which the user
  said nothing (a VAD turn over digital silence of the user's audio: echo), and
  ``echo_turns`` (such VAD turns), ``echo_turns_answered`` (replies to them);
* ``erle_db``: echo return loss enhancement, 10·log10(echo energy into the echo
  stage / energy out of it), over the frames where the user is silent and the
  echo is above -50 dBFS (``erle_aec3_db``: out of AEC3 alone, before the
  residual gate; the gate mutes frames, so with it the figure can be very high);
* the barge-in latency (barge-in benchmark) and the user's WER.
"""

from __future__ import annotations

import argparse

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from realtime_pipeline.audio import INPUT_SAMPLE_RATE_HZ
from realtime_pipeline.conversation import ResponseInterrupted, ResponsePaused, ResponseStarted
from realtime_pipeline.echo_calibration import CALIBRATION_MS, CALIBRATION_TAIL_MS
from realtime_pipeline.echo_cancel import stage_summary
from realtime_pipeline.frames import SpeechStarted, SpeechStopped
from realtime_pipeline.io.echo_room import EchoRoom, EchoRoomSettings, EchoRoomSource
from realtime_pipeline.io.outputs import AudioOutput
from realtime_pipeline.pipeline import Pipeline
from realtime_pipeline.stage import Stage

MODES = ("aec", "double-talk", "gate", "off")
#: Echo frames quieter than this do not count in the ERLE (nothing left to cancel).
ERLE_FLOOR_DBFS = -50.0


@dataclass(frozen=True)
class EchoConfig:
    """One echo condition: the room and what runs against it (``mode`` in MODES)."""

    room: EchoRoomSettings
    mode: str = "aec"
    path_fit: bool = False  # the double-talk path's least-squares echo-path fits (opt-in)
    calibrate: bool = True  # the double-talk path's start sound

    @property
    def calibrates(self) -> bool:
        return self.calibrate and self.mode == "double-talk"

    @property
    def label(self) -> str:
        no_sound = self.mode == "double-talk" and not self.calibrate
        return self.mode + (" + echo-path fits" if self.path_fit else "") + (", no start sound" if no_sound else "")

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"echo mode must be one of {MODES}, got {self.mode!r}")


def add_arguments(parser: Any) -> None:
    """The echo room's command-line options (latency and barge-in benchmarks)."""
    parser.add_argument("--echo-delay-ms", type=int, default=None,
                        help="run in the echo room: the output comes back into the microphone this much later (20-200)")
    parser.add_argument("--echo-gain-db", type=float, default=0.0, help="echo room: the echo's level against the played signal (-20..0)")
    parser.add_argument("--echo-rt60-ms", type=float, default=300.0, help="echo room: reverberation time of its impulse response")
    parser.add_argument("--echo-seed", type=int, default=0, help="echo room: seed of its impulse response")
    parser.add_argument("--no-aec", action="store_true", help="echo room: the fallback echo gate instead of AEC3")
    parser.add_argument("--echo-mode", choices=MODES, default=None,
                        help="echo room: double-talk (AEC3 and the double-talk path, the default), aec (AEC3 alone), "
                        "gate (the fallback, = --no-aec) or off (nothing: the raw echo)")
    parser.add_argument("--echo-path-fit", action="store_true",
                        help="echo room: least-squares fits of the echo path in the double-talk path (opt-in)")
    parser.add_argument("--echo-calibration", action="store_true", help=argparse.SUPPRESS)  # the default; kept for old commands
    parser.add_argument("--no-echo-calibration", action="store_true",
                        help="echo room: the double-talk path without its start sound (it learns the room from the replies)")
    parser.add_argument("--echo-compare", action="store_true",
                        help="echo room: run the same turns with aec, gate and off; summary.echo has each")


def configs(args: Any) -> list[EchoConfig]:
    """The echo conditions the command line asks for ([] without --echo-delay-ms)."""
    if args.echo_delay_ms is None:
        if args.echo_compare or args.no_aec or args.echo_mode or args.echo_path_fit or args.no_echo_calibration:
            raise ValueError("--echo-compare, --no-aec, --echo-mode, --echo-path-fit and --no-echo-calibration "
                             "need --echo-delay-ms (the echo room)")
        return []
    room = EchoRoomSettings(delay_ms=args.echo_delay_ms, gain_db=args.echo_gain_db, rt60_ms=args.echo_rt60_ms,
                            seed=args.echo_seed)
    if args.echo_compare:
        return [EchoConfig(room, mode, path_fit=args.echo_path_fit and mode == "double-talk",
                           calibrate=not args.no_echo_calibration) for mode in MODES]
    mode = args.echo_mode or ("gate" if args.no_aec else "double-talk")
    if args.echo_path_fit and mode != "double-talk":
        raise ValueError(f"--echo-path-fit works in the double-talk path, not with echo mode {mode!r}")
    return [EchoConfig(room, mode, path_fit=args.echo_path_fit, calibrate=not args.no_echo_calibration)]


def user_lead_ms(config: EchoConfig | None, lead_ms: int) -> int:
    """When the user starts speaking: ``lead_ms`` into the session, after the echo stage's start
    sound and its echo if it plays one (a user hears it and then speaks)."""
    return lead_ms + (CALIBRATION_MS + CALIBRATION_TAIL_MS if config is not None and config.calibrates else 0)


def in_room(source: Stage, output: AudioOutput, config: EchoConfig | None) -> tuple[Stage, EchoRoom | None]:
    """``source`` heard through the room (or as it is, without a config)."""
    if config is None:
        return source, None
    room = EchoRoom(output, config.room)
    return EchoRoomSource(source, room), room


def echo_stage_of(pipeline: Pipeline) -> Stage | None:
    return next((stage for stage in pipeline.stages if stage.name == "aec"), None)


def _user_active(room: EchoRoom) -> list[tuple[int, int]]:
    """Sample ranges of the user's audio that are not digital silence."""
    return [(f.start_sample, f.start_sample + f.samples) for f in room.frames if f.user_energy > 0]


def echo_turns(room: EchoRoom, events: Iterable[Any], *, prefix_padding_ms: int = 300, margin_ms: int = 100) -> set[int]:
    """VAD turns during which the user's audio was silent: the VAD heard only the echo."""
    active = _user_active(room)
    starts: dict[int, int] = {}
    stops: dict[int, int] = {}
    for event in events:
        if isinstance(event, SpeechStarted):
            starts[event.turn_id] = event.audio_start_ms + (prefix_padding_ms if event.audio_start_ms > 0 else 0)
        elif isinstance(event, SpeechStopped):
            stops[event.turn_id] = event.audio_end_ms
    rate = INPUT_SAMPLE_RATE_HZ // 1000
    found = set()
    for turn_id, start_ms in starts.items():
        end_ms = stops.get(turn_id, start_ms + 5000)
        lo, hi = (start_ms - margin_ms) * rate, (end_ms + margin_ms) * rate
        if not any(a < hi and b > lo for a, b in active):
            found.add(turn_id)
    return found


def self_interruptions(events: list[Any], echo: set[int]) -> dict[str, Any]:
    """Replies paused or cancelled by an echo turn (a pause names its turn; a supersede is
    by the reply started next)."""
    hit: set[str] = set()
    answered = 0
    for index, event in enumerate(events):
        if isinstance(event, ResponsePaused) and event.turn_id in echo:
            hit.add(event.response.id)
        elif isinstance(event, ResponseStarted) and event.response.turn_id in echo:
            answered += 1
        elif isinstance(event, ResponseInterrupted) and event.reason == "superseded":
            following = next((e for e in events[index + 1 :] if isinstance(e, ResponseStarted)), None)
            if following is not None and following.response.turn_id in echo:
                hit.add(event.response.id)
    return {"self_interruptions": len(hit), "echo_turns": len(echo), "echo_turns_answered": answered}


def erle_db(room: EchoRoom, stage: Any) -> dict[str, Any]:
    """ERLE over the frames where only the echo is in the microphone (see the module doc)."""
    records = getattr(stage, "records", None)
    frames = room.frames
    starts = [f.start_sample for f in frames]
    floor = (32768.0 * 10 ** (ERLE_FLOOR_DBFS / 20)) ** 2
    echo_in = echo_out = echo_aec3 = 0.0
    counted = 0
    for record in records or ():
        end = record.start_sample + record.samples
        first = max(0, bisect.bisect_right(starts, record.start_sample) - 1)
        covering = [f for f in frames[first : first + 4] if f.start_sample < end and f.start_sample + f.samples > record.start_sample]
        if not covering or covering[0].start_sample > record.start_sample or any(f.user_energy > 0 for f in covering):
            continue
        if sum(f.echo_energy / f.samples for f in covering) / len(covering) < floor:  # mean power per sample
            continue
        echo_in += record.in_energy
        echo_out += record.out_energy
        echo_aec3 += record.aec_energy
        counted += 1
    if not records:  # nothing ran against the echo
        return {"erle_db": 0.0, "erle_aec3_db": None, "erle_frames": 0}
    if counted == 0:
        return {"erle_db": None, "erle_aec3_db": None, "erle_frames": 0}

    def db(out: float) -> float:
        return round(10 * math.log10(echo_in / max(out, 1.0)), 1)

    return {"erle_db": db(echo_out), "erle_aec3_db": db(echo_aec3), "erle_frames": counted}


def summary(config: EchoConfig, room: EchoRoom, pipeline: Pipeline, events: list[Any]) -> dict[str, Any]:
    """The echo part of one run (without the barge-in and WER figures the caller adds)."""
    stage = echo_stage_of(pipeline)
    echo = echo_turns(room, events)
    return {
        "mode": config.mode,
        "room": {"delay_ms": config.room.delay_ms, "gain_db": config.room.gain_db, "rt60_ms": config.room.rt60_ms,
                 "seed": config.room.seed},
        "stage": stage_summary(stage),
        **self_interruptions(events, echo),
        **erle_db(room, stage),
        "interruptions": {
            "min_interruption_ms": pipeline.conversation.interruptions.min_interruption_ms,
            "min_interruption_while_speaking_ms": pipeline.conversation.interruptions.min_interruption_while_speaking_ms,
            "echo_unprotected": pipeline.conversation.echo_unprotected,
        },
    }
