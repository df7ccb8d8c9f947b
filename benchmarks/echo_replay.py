"""The echo stage run again on recorded live sessions: tune the double-talk path on real timing.

A live barge-in run is slow (80 s per seed) and never the same twice: where the replies fall
against the users depends on the models' speed, so a pooled p95 over eight seeds moves by 50-150 ms
from run to run (docs/echo.md). ``python -m benchmarks.barge_in ... --record run.npz`` keeps
what the echo stage got, frame by frame on its own clock (the microphone, what played, AEC3's
output), where the user spoke (the echo room's own record), each attempt's onset and what the
live run measured. This module runs a fresh stage on those frames with the VAD's start rule
(``echo_sim.VadRule``) and reports, per attempt, the time from the user's onset until the VAD
had ``min_interruption_ms`` voiced (when the conversation pauses the reply), and the pauses with
no user sound in the 300 ms before (on echo alone). Unchanged code gives the stage's output back
exactly where its fits ran inline (offline: ``tests/test_echo_real.py``); live, the start sound's fit
runs on a worker thread, so the replay may install it a few frames apart. The pause is the live
barge-in less the output's last block (6-37 ms on a recorded run, 15-35 ms on eight ad-hoc ones) and
ranks attempts the same. What it cannot show: a reply stopped sooner would have played differently
afterwards.

``python -m benchmarks.echo_replay run0.npz run4.npz ...`` (``--json PATH``). Variants are
tried by changing the stage's settings in a script around :func:`replay` (its ``make_stage``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from realtime_pipeline.audio import INPUT_SAMPLE_RATE_HZ
from realtime_pipeline.echo_cancel import EchoCancellation
from realtime_pipeline.interruption import InterruptionSettings
from realtime_pipeline.io.outputs import MemoryOutput

from .echo_sim import VadRule

RATE = INPUT_SAMPLE_RATE_HZ
#: A pause with no user sound this long before it was on echo alone.
ECHO_ALONE_BEFORE_MS = 300


@dataclass(frozen=True)
class Attempt:
    """One user in a recorded session: their file's first sample, its speech onset and its end
    (input samples), and what the live run measured (None: not measured, e.g. no reply playing)."""

    name: str
    start_sample: int
    onset_sample: int
    end_sample: int
    live_barge_in_ms: float | None


@dataclass(frozen=True)
class Recording:
    """What the echo stage got in one live session (see the module doc)."""

    start_sample: int  # the first recorded sample, on the stage's output clock
    capture: np.ndarray  # int16
    reference: np.ndarray
    cancelled: np.ndarray  # AEC3's output
    user_frames: np.ndarray  # (first sample, samples) of the room's frames that held the user's sound
    attempts: list[Attempt]
    calibrated: bool  # the start sound played at the session's start
    settings: dict[str, Any]  # the stage's: double_talk, high_band, echo_path_fit


def save_recording(path: Path, stage: EchoCancellation, user_frames: Sequence[tuple[int, int]],
                   attempts: Sequence[Attempt]) -> None:
    """Writes ``stage.recording`` (it must have been set to a list before the session) with the
    user's frames and the attempts to ``path`` (``.npz``)."""
    frames = stage.recording
    if not frames:
        raise ValueError("nothing recorded: set stage.recording = [] before the session")
    for (start, capture, *_), (following, *_) in zip(frames, frames[1:]):
        if following != start + len(capture):
            raise ValueError(f"the recorded frames are not contiguous: {start} + {len(capture)} then {following}")
    settings = {"double_talk": stage.linear is not None, "high_band": stage.near_end_high is not None,
                "echo_path_fit": stage.fits_all_along}
    meta = {"calibrated": stage.calibration_result is not None, "settings": settings,
            "attempts": [dataclasses.asdict(a) for a in attempts]}
    np.savez_compressed(path, start_sample=np.array(frames[0][0]),
                        capture=np.concatenate([f[1] for f in frames]), reference=np.concatenate([f[2] for f in frames]),
                        cancelled=np.concatenate([f[3] for f in frames]),
                        user_frames=np.array(list(user_frames), dtype=np.int64).reshape(-1, 2), meta=np.array(json.dumps(meta)))


def load_recording(path: Path) -> Recording:
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        return Recording(int(data["start_sample"]), data["capture"], data["reference"], data["cancelled"],
                         data["user_frames"], [Attempt(**a) for a in meta["attempts"]], meta["calibrated"], meta["settings"])


class ReplayedStage(EchoCancellation):
    """The echo stage on recorded frames: AEC3's output is the recorded one, and the frames are
    already on the output's clock (no latency to align)."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(MemoryOutput(RATE), **settings)
        self._recorded: np.ndarray | None = None

    @property
    def latency_samples(self) -> int:
        return 0

    def _cancel(self, capture: np.ndarray, reference: np.ndarray) -> np.ndarray:
        assert self._recorded is not None
        return self._recorded

    def replay(self, start: int, capture: np.ndarray, reference: np.ndarray, cancelled: np.ndarray) -> np.ndarray:
        self._recorded = cancelled
        return self.process(start, capture, reference)


def replay(recording: Recording, *, make_stage: Callable[..., ReplayedStage] = ReplayedStage,
           interruptions: InterruptionSettings | None = None, chunk_ms: int = 20) -> dict[str, Any]:
    """Runs ``make_stage(**recording.settings)`` on the recording; returns ``attempts`` (name,
    ``pause_ms`` from the onset or None, ``live_barge_in_ms``), ``pauses_on_echo`` (input samples),
    ``output`` (what the VAD heard) and ``stage`` (for a script to read its detectors' state)."""
    stage = make_stage(**recording.settings)
    if recording.calibrated:
        stage.start_calibration(RATE)
    threshold_ms = (interruptions or InterruptionSettings()).min_interruption_ms
    vad = VadRule()
    step = RATE * chunk_ms // 1000
    pauses: list[int] = []
    paused = False
    output = np.zeros(len(recording.capture) // step * step, dtype=np.int16)
    for offset in range(0, len(output), step):
        piece = slice(offset, offset + step)
        out = stage.replay(recording.start_sample + offset, recording.capture[piece], recording.reference[piece],
                           recording.cancelled[piece])
        output[piece] = out
        vad.step(out)
        if vad.in_speech and vad.voiced_ms >= threshold_ms and not paused:
            pauses.append(recording.start_sample + offset + step)
            paused = True
        if not vad.in_speech:
            paused = False
    user = np.zeros(recording.start_sample + len(output) + RATE, dtype=bool)
    for first, count in recording.user_frames:
        user[max(0, first) : first + count] = True
    before = ECHO_ALONE_BEFORE_MS * RATE // 1000
    on_echo = [p for p in pauses if not user[max(0, p - before) : p].any()]
    attempts = []
    for attempt in recording.attempts:
        mine = [p for p in pauses if attempt.start_sample - RATE // 10 <= p <= attempt.end_sample + 3 * RATE // 10]
        pause_ms = round(1000.0 * (mine[0] - attempt.onset_sample) / RATE, 1) if mine else None
        attempts.append({"name": attempt.name, "pause_ms": pause_ms, "live_barge_in_ms": attempt.live_barge_in_ms})
    return {"attempts": attempts, "pauses_on_echo": on_echo, "output": output, "stage": stage}


def summary(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pooled over the attempts the live runs measured (a reply was playing at the onset): pauses
    before the onset count as 0 ms, attempts never paused as missed."""
    measured = [a for r in results for a in r["attempts"] if a["live_barge_in_ms"] is not None]
    pauses = [max(0.0, a["pause_ms"]) for a in measured if a["pause_ms"] is not None]
    live = [a["live_barge_in_ms"] for a in measured]
    pct = (lambda v, q: round(float(np.percentile(v, q)), 1) if v else None)
    return {"attempts": len(measured), "missed": len(measured) - len(pauses),
            "pause_ms": {"p50": pct(pauses, 50), "p95": pct(pauses, 95), "max": pct(pauses, 100)},
            "live_barge_in_ms": {"p50": pct(live, 50), "p95": pct(live, 95)},
            "pauses_on_echo": sum(len(r["pauses_on_echo"]) for r in results)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.echo_replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("recordings", type=Path, nargs="+", help="files written by benchmarks.barge_in --record")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write per-attempt results and the summary as JSON")
    args = parser.parse_args(argv)
    results = []
    for path in args.recordings:
        try:
            result = replay(load_recording(path))
        except (OSError, ValueError, KeyError) as error:
            print(f"error: {path}: {error}", file=sys.stderr)
            return 2
        results.append(result)
        print(json.dumps({"recording": str(path), "attempts": result["attempts"], "pauses_on_echo": len(result["pauses_on_echo"])}))
    pooled = summary(results)
    print("summary:", json.dumps(pooled))
    if args.json:
        args.json.write_text(json.dumps({"recordings": [{"recording": str(p), "attempts": r["attempts"],
                                                         "pauses_on_echo": r["pauses_on_echo"]} for p, r in zip(args.recordings, results)],
                                         "summary": pooled}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
