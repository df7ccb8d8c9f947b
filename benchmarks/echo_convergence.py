"""How fast the double-talk path's linear filter learns a room, against a least-squares fit.

The echo stage's double-talk path (``double_talk.LinearEchoFilter``, partitioned-block NLMS)
takes seconds of reply audio to learn the echo path, and until it removes 12 dB the stage is
AEC3 alone: the first interruptions of a session are the slow ones (docs/echo.md). This
measures what a different learner could do with the same data, offline, on echo alone
(Piper replies through the three rooms of ``echo_sim.ROOMS``, a -80 dBFS noise floor):

* ``nlms``: the current filter, run causally; its ERLE over the 250 ms after ``t``;
* ``ls N ms``: the echo's delay found by GCC-PHAT over the first ``t`` seconds, then an
  ``N`` ms FIR from just before that delay fitted by least squares (autocorrelation method)
  over the same ``t`` seconds; its ERLE on the 250 ms after ``t``, which it has not seen. The
  functions are the echo stage's own (``realtime_pipeline.echo_path_fit``, which refits the
  double-talk filter this way as echo comes in).

It answers whether the first second of a session is limited by the data or by the learner. ::

    python -m benchmarks.echo_convergence
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import numpy as np

from realtime_pipeline.audio import INPUT_SAMPLE_RATE_HZ
from realtime_pipeline.double_talk import LinearEchoFilter
from realtime_pipeline.echo_path_fit import FIT_MAX_DELAY_MS, echo_delay_samples, least_squares_fir

from .echo_sim import ROOMS, synthesize_replies

RATE = INPUT_SAMPLE_RATE_HZ
HELD_OUT_S = 0.25


def erle_db(capture: np.ndarray, residual: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(capture**2) / max(float(np.mean(residual**2)), 1e-9)))


def room_curves(reference: np.ndarray, capture: np.ndarray, times_s: Sequence[float],
                fir_ms: Sequence[int]) -> dict[str, list[float]]:
    block = RATE // 100
    nlms, residual = LinearEchoFilter(), np.zeros(len(capture))
    for i in range(0, len(capture) - block + 1, block):
        residual[i : i + block] = nlms.process(capture[i : i + block], reference[i : i + block])
    held = int(HELD_OUT_S * RATE)
    curves: dict[str, list[float]] = {"nlms": [], **{f"ls {ms} ms": [] for ms in fir_ms}}
    for t in times_s:
        seen = int(t * RATE)
        after = slice(seen, seen + held)
        curves["nlms"].append(round(erle_db(capture[after], residual[after]), 1))
        delay = echo_delay_samples(reference[:seen], capture[:seen], FIT_MAX_DELAY_MS * RATE // 1000)
        start = max(0, delay - RATE // 500)  # 2 ms before the direct path
        padded = np.concatenate([np.zeros(start), reference])
        for ms in fir_ms:
            fir = least_squares_fir(reference[:seen], capture[:seen], start, ms * RATE // 1000)
            estimate = np.convolve(padded[: seen + held], fir)[after]
            curves[f"ls {ms} ms"].append(round(erle_db(capture[after], capture[after] - estimate), 1))
    return curves


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.echo_convergence", description=__doc__.split("\n\n")[0])
    parser.add_argument("--times-s", default="0.4,0.5,0.75,1,1.5,2,3", help="seconds of reply heard before each fit")
    parser.add_argument("--fir-ms", default="60,100,150", help="least-squares filter lengths")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    try:
        times_s = [float(t) for t in args.times_s.split(",")]
        fir_ms = [int(ms) for ms in args.fir_ms.split(",")]
    except ValueError as error:
        parser.error(f"--times-s and --fir-ms take comma-separated numbers: {error}")
    if not all(0.1 <= t <= 10 for t in times_s) or not all(10 <= ms <= 300 for ms in fir_ms):
        parser.error("--times-s between 0.1 and 10 s, --fir-ms between 10 and 300 ms")
    import anyio

    from realtime_pipeline import PiperTTS
    from realtime_pipeline.conversation import Conversation
    from realtime_pipeline.stage import StageContext
    from realtime_pipeline.tracing import Tracer

    tts = PiperTTS()
    anyio.run(tts.setup, StageContext(Conversation(), Tracer()))
    reference = np.concatenate(synthesize_replies(tts)[:2]).astype(np.float64)
    if len(reference) < (max(times_s) + HELD_OUT_S) * RATE:
        parser.error(f"the replies last {len(reference) / RATE:.1f} s: --times-s up to {len(reference) / RATE - HELD_OUT_S:.1f}")
    noise = np.random.default_rng(0).standard_normal(len(reference)) * 32768 * 10 ** (-80 / 20)
    report = []
    print(f"ERLE (dB) on the {HELD_OUT_S * 1000:.0f} ms after t; t (s): {times_s}")
    for room in ROOMS:
        delay = room.delay_ms * RATE // 1000
        echo = 10 ** (room.gain_db / 20) * np.convolve(np.concatenate([np.zeros(delay), reference]), room.response())[: len(reference)]
        curves = room_curves(reference, echo + noise, times_s, fir_ms)
        print(f"room: delay {room.delay_ms} ms, gain {room.gain_db} dB, RT60 {room.rt60_ms:.0f} ms")
        for name, values in curves.items():
            print(f"  {name:10s} {values}")
        report.append({"delay_ms": room.delay_ms, "gain_db": room.gain_db, "rt60_ms": room.rt60_ms, "curves": curves})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"times_s": times_s, "rooms": report}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
