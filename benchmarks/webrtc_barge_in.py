"""Speaking over the reply in Chromium: what the server hears, by how far into the reply.

One call per delay. Headless Chromium opens the page of a real server on 127.0.0.1 (as in
``benchmarks.webrtc_latency``); its fake microphone asks (``--question``), the session is
told to answer with a long story, and the second clip (``--interrupter``) begins
``--v2v-s + D`` seconds after the question's last word, i.e. about ``D`` s into the reply.
Chromium's own echo cancellation, noise suppression and gain control run on it, as the page
asks. For each call, on the server's clock:

- ``into_reply_s``: from the reply's first frame with sound (handed to aiortc) to the arrival
  of the interrupter's first word (the received audio lined up with the WAV);
- ``wav_dbfs`` / ``received_dbfs``: the interrupter's level over its words (95th percentile
  of 20 ms windows) in the WAV and as the server received it; ``held_db`` the difference;
- ``reply_played_s``: how long the reply played (to its end, or to the cut);
- ``cut``: the reply was cancelled by the barge-in; ``barge_in_ms``: the words' arrival to
  the server's ``input_audio_buffer.speech_started``;
- ``heard``: the interrupter's transcript.

    flock /tmp/rp-bench.lock python -m benchmarks.webrtc_barge_in --delays-s 1,2,3,5,7
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from realtime_pipeline.audio import INPUT_SAMPLE_RATE_HZ

from .barge_in import speech_onset_sample
from .webrtc_latency import CHROMIUM, MIC_RATE_HZ, REPLY_ONSET_RMS, Probe, fake_microphone_wav, received_audio, talk_in_chromium

#: SmolLM2's first replies to the question under these, 10 seeds: 41-104 words (31-106 with "at least
#: five sentences" and without "Never stop early"), i.e. about 15 s and more of speech (14-29 s played in the benchmark).
INSTRUCTIONS = "Answer every message with a long story of at least ten sentences. Never stop early."
#: Windows of the level figures: 20 ms at 16 kHz.
WINDOW = INPUT_SAMPLE_RATE_HZ // 50


def level_dbfs(samples: np.ndarray) -> float:
    """95th percentile of the 20 ms windows' RMS, dBFS (int16 full scale)."""
    count = len(samples) // WINDOW
    if count == 0:
        return -120.0
    frames = samples[: count * WINDOW].astype(np.float64).reshape(count, WINDOW)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return float(20.0 * np.log10(max(float(np.percentile(rms, 95)), 1e-6) / 32768.0))


def one_call(engines: Any, session_options: Any, probe: Probe, question: str, interrupter: str, gap_s: float,
             headset: bool = False) -> dict[str, Any]:
    """A call whose microphone asks, waits ``gap_s`` after the question's last word, then interrupts
    (``headset``: the page's headset box ticked, the microphone without echo cancellation)."""
    probe.reset()
    from realtime_pipeline.server import ServerOptions

    from .server_load import Server

    with Server(engines, ServerOptions(api_key="local", session=session_options)) as server, tempfile.TemporaryDirectory() as tmp:
        mic = fake_microphone_wav(Path(tmp) / "mic.wav", [question, interrupter], gap_s=[gap_s, 9.0])
        page = anyio.run(functools.partial(talk_in_chromium, server.port, mic.path, Path(tmp) / "profile", 2,
                                           timeout_s=len(mic.samples) / MIC_RATE_HZ + 10.0, headset=headset))
    _, pieces, arrivals, received, wav16, lag, correlation = received_audio(probe, mic)
    start = round(mic.clip_start_s[1] * INPUT_SAMPLE_RATE_HZ)
    end = round(mic.speech_end_s[1] * INPUT_SAMPLE_RATE_HZ)
    onset = start + speech_onset_sample(wav16[start:end])
    words_at = pieces[min(int(np.searchsorted(arrivals, onset - lag, side="right")), len(pieces) - 1)][0]
    first_reply = next((r for t, r, rms in probe.frames if r is not None and rms > REPLY_ONSET_RMS), None)
    reply_at = next((t for t, r, rms in probe.frames if r == first_reply and rms > REPLY_ONSET_RMS), None)
    reply_frames = [t for t, r, _ in probe.frames if r == first_reply]
    cancelled = any(e == "response.done" and d.get("id") == first_reply and d.get("status") == "cancelled"
                    for _, e, d in probe.events)
    started = [t for t, e, _ in probe.events if e == "input_audio_buffer.speech_started" and t >= words_at - 0.5]
    wav_db = level_dbfs(wav16[onset:end])
    received_db = level_dbfs(received[max(0, onset - lag) : max(0, end - lag)])
    return {
        "gap_s": gap_s, "into_reply_s": None if reply_at is None else round(words_at - reply_at, 2),
        "wav_dbfs": round(wav_db, 1), "received_dbfs": round(received_db, 1), "held_db": round(wav_db - received_db, 1),
        "reply_played_s": None if reply_at is None else round(reply_frames[-1] - reply_at, 2), "cut": cancelled, "barge_in_ms": round(1000.0 * (started[0] - words_at)) if started and cancelled else None,
        "heard": page["user"][1:], "received_correlation": round(correlation, 3), "echo_cancellation": page["echo_cancellation"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.webrtc_barge_in", description=__doc__.split("\n\n")[0])
    parser.add_argument("--delays-s", default="1,2,3,5,7", help="about how far into the reply the interrupter speaks, one call each")
    parser.add_argument("--v2v-s", type=float, default=1.5, help="the expected voice-to-voice (the page's 1.3-1.6 s here)")
    parser.add_argument("--question", default="ps_librivox_0880.wav")
    parser.add_argument("--interrupter", default="mfa_thoughts.wav")
    parser.add_argument("--headset", action="store_true", help="tick the page's headset box: the microphone without echo cancellation")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, metavar="PATH")
    args = parser.parse_args(argv)
    try:
        delays = [float(d) for d in args.delays_s.split(",") if d.strip()]
    except ValueError:
        parser.error(f"--delays-s takes seconds separated by commas, got {args.delays_s!r}")
    if not delays or min(delays) < 0:
        parser.error(f"--delays-s takes seconds (0 or more) separated by commas, got {args.delays_s!r}")
    if not Path(CHROMIUM).exists():
        parser.error(f"{CHROMIUM} is missing (scripts/setup.sh installs Debian's chromium)")
    from realtime_pipeline.server import Engines, SessionOptions

    probe = Probe()
    probe.install()
    engines = Engines.create(seed=args.seed)
    anyio.run(engines.load)
    options = SessionOptions(output_lead_ms=300, instructions=INSTRUCTIONS)
    load_before = os.getloadavg()
    rows = [one_call(engines, options, probe, args.question, args.interrupter, args.v2v_s + delay, args.headset) for delay in delays]
    print(f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after (1 min); {os.cpu_count()} CPUs; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; the browser's echo cancellation "
          f"{sorted({str(row['echo_cancellation']) for row in rows})}")
    print("| into the reply | interrupter in the WAV | as received | held down | reply played | cut | barge-in | heard |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        barge_in = "-" if row["barge_in_ms"] is None else f"{row['barge_in_ms']} ms"
        print(f"| {row['into_reply_s']} s | {row['wav_dbfs']} dBFS | {row['received_dbfs']} dBFS | {row['held_db']} dB "
              f"| {row['reply_played_s']} s | {'yes' if row['cut'] else 'no'} | {barge_in} | {' / '.join(row['heard'])!r} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "load_before": load_before, "load_after": os.getloadavg()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
