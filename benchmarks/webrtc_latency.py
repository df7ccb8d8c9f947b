"""Where a browser's voice-to-voice goes over WebRTC: every hop of each turn, on one clock.

Headless Chromium (Debian's ``/usr/bin/chromium`` through Playwright) opens the
page of a real server on 127.0.0.1; its fake microphone plays a WAV of several
clips from tests/data/speech, each followed by silence for the answer. For each
turn the instants below are put on the system clock (the page's
``performance.timeOrigin + now()``, the server's ``time.time()``):

- ``T0``: the clip's true last voiced sample (energy ground truth of
  ``benchmarks.turns.last_voiced_sample``) as the page hears the microphone:
  the WAV's start is found by lining the WAV's level up with the page's own
  level polls (``rp.trace``), 1 ms steps;
- ``P``: the page's "last voiced" poll (what its voice-to-voice starts from);
- ``S_in``: arrival on the server of the decoded frame that holds the sample
  ``T0`` (the received audio is lined up with the WAV by cross-correlation);
- ``V``, ``F``: the server's ``user_speech_end`` (the VAD's last voiced frame,
  as it arrived) and ``first_sample_played`` (the in-process voice-to-voice is
  ``F - V``);
- ``F1``, ``L``: the reply track's first frame of the response, and its first
  frame with sound (above -60 dBFS, the page's reply threshold), as handed to aiortc;
- ``R``: the page's first reply poll above that threshold.

WebRTC's own share is ``(S_in - T0) + (F1 - F) + (R - L)``: the way in, the
track's wait for its next tick (its packet time), and the way out (Opus, loopback, the
browser's jitter buffer, playout, the page's analyser). ``L - F1`` is the
reply's silent start (the TTS's leading zeros), which a loudspeaker would play after ``F`` in
process too. ``old_page_measured`` replays the page's former rule on its polls: the reply's onset at
0.02 RMS too, i.e. where it gets loud (the mic's end is still taken at 0.02 RMS).

    flock /tmp/rp-bench.lock python -m benchmarks.webrtc_latency --json /tmp/webrtc_latency.json

``--pin-browser`` keeps Chromium on the last CPU (the server free on all): on 2 shared cores the
browser's jitter buffer follows the models' load, which a browser on another machine would not see.

``--calls N`` makes N calls one after the other to one server, each from a fresh Chromium, and
pools each hop over all their turns: one call's median of WebRTC's share moves by ±15 ms from
call to call with nothing changed (44-76 ms over 15 calls, docs/webrtc.md), so compare pooled figures.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from realtime_pipeline.audio import INPUT_SAMPLE_RATE_HZ, read_wav, resample

from .turns import DEFAULT_AUDIO_DIR, last_voiced_sample

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required",
]
MIC_RATE_HZ = 48_000
#: The page's reply onset (app.js ``REPLY_ONSET_RMS``), full scale = 1: above the track's digital silence.
REPLY_ONSET_RMS = 0.001
#: The page's former threshold for both ends (0.02 RMS): here, where the reply gets loud.
LOUD_RMS = 0.02
#: The page's analyser window (app.js ``fftSize``), at the AudioContext's rate.
ANALYSER_SAMPLES = 512
DEFAULT_CLIPS = ("ps_librivox_0880.wav", "ps_librivox_0870.wav", "ps_cards_001.wav", "ps_goforward.wav",
                 "ps_librivox_0890.wav", "mfa_thoughts.wav")


@dataclass(frozen=True)
class FakeMicrophone:
    """The WAV Chromium's fake microphone plays once, and where each clip's speech truly ends in it."""

    path: Path
    samples: np.ndarray  # 48 kHz int16
    speech_end_s: list[float]  # per clip, from the WAV's start
    clip_start_s: list[float] = field(default_factory=list)  # per clip, where its file begins in the WAV


def fake_microphone_wav(path: Path, clips: Sequence[str], *, lead_s: float = 1.0, gap_s: float | Sequence[float] = 9.0,
                        audio_dir: Path = DEFAULT_AUDIO_DIR) -> FakeMicrophone:
    """48 kHz mono WAV: silence, then each clip followed by ``gap_s`` of silence (time for the
    answer; one per clip, or one for all: a gap shorter than the answer makes the next clip
    talk over it)."""
    gaps = [float(gap_s)] * len(clips) if isinstance(gap_s, (int, float)) else [float(g) for g in gap_s]
    if len(gaps) != len(clips):
        raise ValueError(f"one gap per clip: {len(clips)} clips, {len(gaps)} gaps")
    parts = [np.zeros(int(MIC_RATE_HZ * lead_s), dtype=np.int16)]
    ends, starts = [], []
    position = len(parts[0])
    for name, gap in zip(clips, gaps):
        samples, rate = read_wav(audio_dir / name)
        starts.append(position / MIC_RATE_HZ)
        ends.append((position + last_voiced_sample(samples, rate) * MIC_RATE_HZ / rate) / MIC_RATE_HZ)
        clip = resample(samples, rate, MIC_RATE_HZ).astype(np.int16)
        parts += [clip, np.zeros(int(MIC_RATE_HZ * gap), dtype=np.int16)]
        position += len(clip) + len(parts[-1])
    audio = np.concatenate(parts)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(MIC_RATE_HZ)
        out.writeframes(audio.tobytes())
    return FakeMicrophone(path, audio, ends, starts)


async def talk_in_chromium(port: int, wav: Path, profile: Path, turns: int, screenshot: Path | None = None, *,
                           trace: bool = False, key: str = "local", timeout_s: float | None = None,
                           headset: bool = False) -> dict[str, Any]:
    """Open the page, connect, wait for ``turns`` answered turns; returns what the page measured and showed.

    ``headset`` ticks the page's headset box: the microphone without the browser's echo cancellation.

    With ``timeout_s``, what was measured by then is returned (a turn may go unanswered); without, all
    ``turns`` must be answered (60 s each).
    """
    from playwright import async_api

    async with async_api.async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True,
            args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={wav}%noloop"],
            ignore_default_args=["--mute-audio"],  # Playwright's default: the reply would never play
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            if trace:
                await page.add_init_script("window.rpTrace = true;")
            await page.goto(f"http://127.0.0.1:{port}/")
            await page.fill("#key", key)
            await page.set_checked("#headset", headset)
            await page.click("#connect")
            await page.wait_for_selector(".state.connected", timeout=30_000)
            try:
                await page.wait_for_function(
                    f"rp.measurements.length >= {turns} && rp.measurements.slice(0, {turns}).every(m => m.browser_ms !== null)",
                    timeout=1000 * timeout_s if timeout_s else 60_000 * turns)
            except async_api.Error:
                state = await page.evaluate("JSON.stringify({m: rp.measurements, log: document.querySelector('#log').innerText,"
                                            " state: document.querySelector('#state').innerText, err: document.querySelector('#error').innerText})")
                if not timeout_s:
                    raise AssertionError(f"the page did not complete {turns} turn(s): {state}") from None
                print(f"the page completed fewer than {turns} turns in {timeout_s:.0f} s; measuring those: {state}", file=sys.stderr)
            await page.wait_for_function("document.querySelectorAll('#log li.assistant').length >= 1", timeout=30_000)
            await anyio.sleep(1.0)
            result = {
                "user": await page.locator("#log li.user .text").all_inner_texts(),
                "assistant": await page.locator("#log li.assistant .text").all_inner_texts(),
                "responses": await page.evaluate(  # [response_id, marked interrupted], in the order they showed
                    "[...rp.responses].map(([id, li]) => [id, li.classList.contains('interrupted')])"),
                "measurements": await page.evaluate("rp.measurements"),
                "stats": await page.evaluate("rp.linkStats()"),
                "error_shown": await page.locator("#error").is_visible(),
                "page_errors": errors,
                "mic_opened_at_ms": await page.evaluate("rp.micOpenedAt"),
                "echo_cancellation": await page.evaluate("rp.echoCancellation"),
                "audio_rate_hz": await page.evaluate("rp.audio ? rp.audio.sampleRate : null"),
                "trace": await page.evaluate("rp.trace") if trace else [],
            }
            if screenshot is not None:
                await page.screenshot(path=str(screenshot), full_page=True)
            await page.close()  # closing the page hangs up
        finally:
            await context.close()
    return result


# -- the server's side: what each call received and sent, when -----------------------------
@dataclass
class Probe:
    """Wraps the WebRTC session's input and the reply track's frames to note their instants (monotonic)."""

    sessions: list[Any] = field(default_factory=list)
    inputs: dict[str, list[tuple[float, np.ndarray]]] = field(default_factory=dict)  # session id -> (arrival, 16 kHz)
    frames: list[tuple[float, str | None, float]] = field(default_factory=list)  # (handed to aiortc, response, RMS 0..1)
    events: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)  # server events of the turns
    buffers: list[Any] = field(default_factory=list)  # the calls' MicrophoneJitterBuffers

    def reset(self) -> None:
        """Forget what earlier calls noted (the wrappers stay installed)."""
        for notes in (self.sessions, self.inputs, self.frames, self.events, self.buffers):
            notes.clear()

    def install(self) -> None:
        from realtime_pipeline.server import rtc_call
        from realtime_pipeline.server.rtc_call import ReplyTrack, WebRTCSession

        probe = self
        init, feed, take, emit = WebRTCSession.__init__, WebRTCSession.input_audio, ReplyTrack._take, WebRTCSession.emit

        def session_init(session: Any, *args: Any, **kwargs: Any) -> None:
            init(session, *args, **kwargs)
            probe.sessions.append(session)

        async def input_audio(session: Any, samples: np.ndarray) -> None:
            probe.inputs.setdefault(session.id, []).append((time.monotonic(), samples))
            await feed(session, samples)

        def take_frame(track: Any) -> np.ndarray:
            out = take(track)
            if probe.sessions and track is not getattr(probe.sessions[-1], "track", track):
                return out  # an earlier call's track, still ticking while it hangs up
            rms = float(np.sqrt(np.mean(np.square(out.astype(np.float64))))) / 32768.0
            probe.frames.append((time.monotonic(), track._playing, rms))
            return out

        def emit_event(session: Any, event_type: str, /, **fields: Any) -> None:
            if event_type.startswith(("input_audio_buffer.speech", "response.done", "output_audio_buffer")):
                detail = fields.get("response", fields)
                probe.events.append((time.monotonic(), event_type, {k: detail.get(k) for k in (
                    "id", "status", "status_details", "response_id", "audio_start_ms", "audio_end_ms") if k in detail}))
            emit(session, event_type, **fields)

        install_buffer = rtc_call.decode_on_arrival

        def decode_on_arrival(receiver: Any) -> None:
            install_buffer(receiver)
            probe.buffers.append(receiver._RTCRtpReceiver__jitter_buffer)

        rtc_call.decode_on_arrival = decode_on_arrival  # type: ignore[assignment]
        WebRTCSession.emit = emit_event  # type: ignore[method-assign]
        WebRTCSession.__init__ = session_init  # type: ignore[method-assign]
        WebRTCSession.input_audio = input_audio  # type: ignore[method-assign]
        ReplyTrack._take = take_frame  # type: ignore[method-assign]


# -- lining the clocks up -------------------------------------------------------------------
def wav_start_on_page(mic: FakeMicrophone, trace: list[list[float]], opened_at_ms: float, rate_hz: int) -> tuple[float, float]:
    """When the page heard the WAV's first sample (epoch ms), and the correlation of the levels there.

    Each poll read the analyser's last ``ANALYSER_SAMPLES``; the WAV's level over
    the window ending at ``t - start`` is compared with the poll's, in log scale
    (the browser's noise suppression and gain control change levels, not timing).
    """
    audio = resample(mic.samples, MIC_RATE_HZ, rate_hz).astype(np.float64) / 32768.0
    energy = np.concatenate([[0.0], np.cumsum(audio ** 2)])
    window = ANALYSER_SAMPLES
    ends = np.arange(len(energy))
    rms = np.sqrt(np.maximum(0.0, energy - energy[np.maximum(0, ends - window)]) / window)
    points = np.asarray(trace)
    t_ms, level = points[:, 0], np.log10(points[:, 1] + 1e-3)
    best = (-2.0, opened_at_ms)
    for start_ms in np.arange(opened_at_ms - 1500.0, opened_at_ms + 1500.0, 1.0):
        index = np.round((t_ms - start_ms) * rate_hz / 1000.0).astype(int)
        valid = (index >= 0) & (index < len(rms))
        if valid.sum() < 100:
            continue
        predicted = np.log10(np.where(valid, rms[np.clip(index, 0, len(rms) - 1)], 0.0) + 1e-3)
        score = float(np.corrcoef(predicted, level)[0, 1])
        if score > best[0]:
            best = (score, float(start_ms))
    return best[1], best[0]


def received_offset(wav: np.ndarray, received: np.ndarray) -> tuple[int, float]:
    """Samples (16 kHz) by which ``wav`` leads the received stream, and the normalized correlation peak."""
    wav = wav.astype(np.float64)
    got = received.astype(np.float64)
    n = 1 << int(np.ceil(np.log2(len(wav) + len(got))))
    corr = np.fft.irfft(np.fft.rfft(wav, n) * np.conj(np.fft.rfft(got, n)), n)
    lag = int(np.argmax(corr[: len(wav)]))
    segment = wav[lag : lag + len(got)]
    peak = float(corr[lag] / (np.linalg.norm(segment) * np.linalg.norm(got[: len(segment)]) + 1e-9))
    return lag, peak


def received_audio(probe: Probe, mic: FakeMicrophone) -> tuple[Any, list[tuple[float, np.ndarray]], np.ndarray, np.ndarray, np.ndarray, int, float]:
    """The last call's session, its received pieces (arrival, 16 kHz), where each piece ends, the
    received stream, the WAV at 16 kHz, and the WAV's lead over the stream (``received_offset``)."""
    session = probe.sessions[-1]
    pieces = probe.inputs[session.id]
    received = np.concatenate([samples for _, samples in pieces])
    piece_ends = np.cumsum([len(samples) for _, samples in pieces])
    wav16 = resample(mic.samples, MIC_RATE_HZ, INPUT_SAMPLE_RATE_HZ)
    lag, peak = received_offset(wav16, received)
    return session, pieces, piece_ends, received, wav16, lag, peak


# -- one turn's hops ------------------------------------------------------------------------
HOPS = ("page_start_error", "input_path", "vad_end", "server_voice_to_voice", "track_wait", "reply_silent_start",
        "output_path", "browser_measured", "true_browser_voice_to_voice", "webrtc_added", "reply_quiet_to_loud",
        "old_page_measured", "browser_minus_server")


def neteq_pacing_view(sent_ms: np.ndarray, frame_ms: int, *, window_ms: float = 2000.0, interval_ms: float = 500.0) -> dict[str, float]:
    """The reply frames' send times as Chromium's NetEq would see them if the network added nothing.

    NetEq's delay manager takes each packet's delay relative to the least delayed packet of the
    last ~2 s, keeps the largest per 500 ms interval, and sets its target to the 95th percentile
    of those maxima, in 20 ms buckets (libwebrtc's ``UnderrunOptimizer``, quantile 0.95): one
    packet 20 ms behind in more than 5 % of the half seconds raises the target from 20 to 40 ms.
    Returns the p50 / p95 of the per-interval maxima and the share of intervals at or over 20 ms.
    """
    behind = sent_ms - frame_ms * np.arange(len(sent_ms))  # delay against the schedule, up to a constant
    maxima: list[float] = []
    start = 0
    for end in range(1, len(sent_ms) + 1):
        if end == len(sent_ms) or sent_ms[end] - sent_ms[start] >= interval_ms:
            lo = np.searchsorted(sent_ms, sent_ms[start] - window_ms)
            reference = behind[lo:end].min()
            maxima.append(float(behind[start:end].max() - reference))
            start = end
    values = np.asarray(maxima)
    if not len(values):
        return {"p50_ms": 0.0, "p95_ms": 0.0, "share_over_20_ms": 0.0}
    return {"p50_ms": float(np.percentile(values, 50)), "p95_ms": float(np.percentile(values, 95)),
            "share_over_20_ms": float(np.mean(values >= 20.0))}


def analyse(mic: FakeMicrophone, page: dict[str, Any], probe: Probe, epoch_offset_s: float) -> dict[str, Any]:
    from realtime_pipeline.tracing import FIRST_SAMPLE_PLAYED, USER_SPEECH_END

    def epoch_ms(monotonic_s: float) -> float:
        return 1000.0 * (monotonic_s + epoch_offset_s)

    start_ms, level_match = wav_start_on_page(mic, page["trace"], page["mic_opened_at_ms"], page["audio_rate_hz"] or MIC_RATE_HZ)
    session, pieces, piece_ends, received, wav16, lag, peak = received_audio(probe, mic)
    polls = np.asarray(page["trace"])
    truth_ms = [start_ms + 1000.0 * end_s for end_s in mic.speech_end_s]
    rows = []
    for m in page["measurements"]:
        response_turn, user_turn = session.response_turns.turns.get(m["response_id"], (None, None))
        trace = session.pipeline.tracer.turn(user_turn) if user_turn is not None else None
        reply = session.pipeline.tracer.turn(response_turn) if response_turn is not None else None
        if trace is None or reply is None or m.get("reply_onset_at_ms") is None:
            continue
        stamps = {**reply.stamps, **trace.stamps}
        v = epoch_ms(stamps[USER_SPEECH_END])
        f = epoch_ms(stamps[FIRST_SAMPLE_PLAYED])
        clip = max((i for i, t in enumerate(truth_ms) if t < v + 500.0), default=None)  # the VAD may end up to 0.5 s early
        if clip is None:
            continue
        t0 = truth_ms[clip]
        # the clip's own lag: a stream that lost packets (or a fake microphone that skipped) moves it
        end = round(mic.speech_end_s[clip] * INPUT_SAMPLE_RATE_HZ)
        window = slice(max(0, end - 3 * INPUT_SAMPLE_RATE_HZ - lag), max(0, end + INPUT_SAMPLE_RATE_HZ - lag))
        local, _ = received_offset(wav16[max(0, window.start + lag - INPUT_SAMPLE_RATE_HZ) : window.stop + lag + INPUT_SAMPLE_RATE_HZ],
                                   received[window])
        clip_lag = max(0, window.start + lag - INPUT_SAMPLE_RATE_HZ) + local - window.start
        end_index = end - clip_lag  # in the received stream
        piece = int(np.searchsorted(piece_ends, end_index, side="right"))
        s_in = epoch_ms(pieces[min(piece, len(pieces) - 1)][0])
        frames = [(t, rms) for t, rid, rms in probe.frames if rid == m["response_id"]]
        f1 = epoch_ms(frames[0][0])
        onset = epoch_ms(next(t for t, rms in frames if rms > REPLY_ONSET_RMS))
        loud = epoch_ms(next(t for t, rms in frames if rms > LOUD_RMS))
        p, r = m["mic_last_voiced_at_ms"], m["reply_onset_at_ms"]
        # the page's former rule, replayed on its own polls: the reply's onset at 0.02 RMS too
        after = polls[(polls[:, 0] >= r) & (polls[:, 2] > LOUD_RMS), 0]
        old_r = after[0] if len(after) else np.nan
        rows.append({
            "clip": clip, "response_id": m["response_id"], "server_latency_ms": m["server"], "clip_lag_samples": clip_lag,
            "page_start_error": p - t0, "input_path": s_in - t0, "vad_end": v - s_in, "server_voice_to_voice": f - v,
            "track_wait": f1 - f, "reply_silent_start": onset - f1, "output_path": r - onset, "reply_quiet_to_loud": loud - onset,
            "browser_measured": r - p, "true_browser_voice_to_voice": r - t0,
            "webrtc_added": (s_in - t0) + (f1 - f) + (r - onset),
            "old_page_measured": old_r - p, "browser_minus_server": (r - p) - (f - v),
        })
    frame_ms = session.track.frame_ms
    sent = np.asarray([t for t, _, _ in probe.frames])
    behind_ms = 1000.0 * sent - frame_ms * np.arange(len(sent))
    behind_ms -= behind_ms.min()  # how late each frame went out against the track's schedule
    gaps = np.diff(behind_ms)
    pacing = neteq_pacing_view(1000.0 * sent, frame_ms)
    # the pacing NetEq had just seen when each reply began: the turn's end is when the server works hardest
    # (final transcript, the LLM's prompt, the first synthesis), and NetEq's newest half seconds weigh most
    for row in rows:
        first = next(i for i, (_, rid, _) in enumerate(probe.frames) if rid == row["response_id"])
        recent = (sent > sent[first] - 3.0) & (sent <= sent[first])
        reference = behind_ms[(sent > sent[first] - 5.0) & (sent <= sent[first])].min()
        row["pacing_before_reply_ms"] = float(behind_ms[recent].max() - reference)
    stalls = [{"at_ms": epoch_ms(sent[i + 1]), "late_ms": float(gaps[i])} for i in np.flatnonzero(gaps > 40.0)]
    measured = {m["response_id"] for m in page["measurements"]}
    unmeasured = {rid: sorted(session.pipeline.tracer.turn(turn).stamps) if session.pipeline.tracer.turn(turn) else None
                  for rid, (turn, _) in session.response_turns.turns.items() if rid not in measured}
    return {"rows": rows, "unmeasured_responses": unmeasured, "mic_packets_dropped_late": [getattr(b, "dropped_late", None) for b in probe.buffers], "frames_sent": len(sent), "events": probe.events, "stalls": stalls,
            "frame_lateness_ms": {"p50": float(np.percentile(behind_ms, 50)), "p95": float(np.percentile(behind_ms, 95)),
                                  "p99": float(np.percentile(behind_ms, 99)), "max": float(behind_ms.max())}, "wav_start_level_correlation": level_match, "received_correlation": peak,
            "received_lag_samples": lag, "frame_ms": frame_ms, "pacing": pacing}


class CorePinning:
    """Keeps this process's Chromium on the last CPU while it runs, re-applied every 0.5 s (it
    starts processes and threads as the page loads); the server stays free on all of them.

    A browser talking to a server on the same 2 cores competes with Whisper, the LLM and Piper,
    and its jitter buffer grows (docs/webrtc.md). A user's browser runs on another machine.
    Pinning the server to the other CPU instead starved it (Whisper's final pass took 16 s: its
    and the LLM's thread pools on one core), so only the browser is moved.
    """

    def __init__(self) -> None:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise RuntimeError("--pin-browser needs at least 2 CPUs")
        self.browser_cpus = {cpus[-1]}
        self.browser_tasks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="core-pinning", daemon=True)

    def _loop(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            count = 0
            # this benchmark's own Chromium only (Playwright's driver starts it): never another user's browser
            for process in me.children(recursive=True):
                try:
                    if not process.name().startswith("chrom"):  # chromium, chrome_crashpad_handler
                        continue
                    for thread in process.threads():  # every thread: affinity is per thread on Linux
                        try:
                            os.sched_setaffinity(thread.id, self.browser_cpus)
                            count += 1
                        except ProcessLookupError:  # a thread that just ended
                            continue
                except psutil.NoSuchProcess:  # a process that just ended
                    continue
            self.browser_tasks = max(self.browser_tasks, count)
            self._stop.wait(0.5)

    def __enter__(self) -> CorePinning:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def call(server: Any, probe: Probe, clips: Sequence[str], *, gap_s: float, pin_browser: bool = False) -> dict[str, Any]:
    """One call from a fresh Chromium to ``server``: the page talks the clips, and each turn is analysed."""
    probe.reset()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        mic = fake_microphone_wav(Path(tmp) / "mic.wav", clips, gap_s=gap_s)
        epoch_offset_s = time.time() - time.monotonic()
        with CorePinning() if pin_browser else contextlib.nullcontext() as pinning:
            page = anyio.run(functools.partial(talk_in_chromium, server.port, mic.path, Path(tmp) / "profile", len(clips), trace=True,
                                               timeout_s=len(mic.samples) / MIC_RATE_HZ + 30.0))
        browser_tasks = pinning.browser_tasks if pinning is not None else None
        drift_ms = 1000.0 * (time.time() - time.monotonic() - epoch_offset_s)
    result = analyse(mic, page, probe, epoch_offset_s)
    result["pinned_browser_tasks"] = browser_tasks
    arrivals = [len(samples) for received in probe.inputs.values() for _, samples in received]
    result["mic_packet_ms"] = 1000.0 * statistics.median(arrivals) / INPUT_SAMPLE_RATE_HZ if arrivals else None
    result.update(load_before=load_before, load_after=os.getloadavg(), clock_drift_ms=drift_ms, stats=page["stats"],
                  audio_rate_hz=page["audio_rate_hz"], user=page["user"], assistant=page["assistant"])
    return result


def run(clips: Sequence[str], *, output_lead_ms: int, gap_s: float, seed: int, aiortc_jitter_buffer: bool = False,
        pin_browser: bool = False, packet_ms: int | None = None, calls: int = 1) -> dict[str, Any]:
    """``calls`` calls one after the other (a fresh browser each) to one server: ``{"calls": [...], "pooled": {...}}``.

    One call's median moves a lot from call to call on shared cores (44-74 ms for WebRTC's share in
    nine calls on 2026-12-05, the browser's jitter buffer 31-57 ms), so a figure to compare with a
    target is the median over the turns of several calls."""
    from realtime_pipeline.server import Engines, ServerOptions, SessionOptions

    from .server_load import Server

    probe = Probe()
    probe.install()
    engines = Engines.create(seed=seed)
    anyio.run(engines.load)
    instructions = f"Answer in one short sentence. {SessionOptions().instructions}"
    session_options = SessionOptions(output_lead_ms=output_lead_ms, instructions=instructions)
    if packet_ms is not None:
        session_options = dataclasses.replace(session_options, webrtc_packet_ms=packet_ms)
    results = []
    with Server(engines, ServerOptions(api_key="local", session=session_options)) as server:
        for _ in range(calls):
            result = call(server, probe, clips, gap_s=gap_s, pin_browser=pin_browser)
            result.update(output_lead_ms=output_lead_ms, clips=list(clips), aiortc_jitter_buffer=aiortc_jitter_buffer)
            results.append(result)
    return {"calls": results, "pooled": pooled(results)}


def pooled(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each hop's median and quartiles over the turns of all ``results``, and each call's median of WebRTC's share."""
    hops: dict[str, dict[str, float]] = {}
    for hop in HOPS:
        values = [row[hop] for result in results for row in result["rows"] if not np.isnan(row[hop])]
        if values:
            p25, p50, p75 = np.percentile(values, [25, 50, 75])
            hops[hop] = {"p25": float(p25), "p50": float(p50), "p75": float(p75), "turns": len(values)}
    per_call = [statistics.median(shares) if (shares := [row["webrtc_added"] for row in result["rows"] if not np.isnan(row["webrtc_added"])])
                else None for result in results]
    return {"hops": hops, "webrtc_added_per_call": per_call,
            "jitter_buffer_ms_per_call": [result["stats"].get("jitterBufferMs") for result in results],
            "jitter_buffer_target_ms_per_call": [result["stats"].get("jitterBufferTargetMs") for result in results]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.webrtc_latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", default=",".join(DEFAULT_CLIPS), help="WAVs of tests/data/speech, one turn each")
    parser.add_argument("--output-lead-ms", type=int, default=300, help="SessionOptions.output_lead_ms (the tests' 300)")
    parser.add_argument("--gap-s", type=float, default=9.0, help="silence after each clip (time for the answer)")
    parser.add_argument("--aiortc-jitter-buffer", action="store_true",
                        help="keep aiortc's own audio jitter buffer on the microphone (4 frames held: the former behaviour)")
    parser.add_argument("--reply-frame-ms", type=int, choices=(10, 20), help="the reply track's packet time (default: SessionOptions.webrtc_packet_ms)")
    parser.add_argument("--pin-browser", action="store_true",
                        help="Chromium on the last CPU, the server free on all (closer to a browser on another machine)")
    parser.add_argument("--calls", type=int, default=1,
                        help="calls one after the other to one server, each from a fresh browser; pooled over their turns at the end")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, metavar="PATH", help="the call's result (with --calls: {calls: [...], pooled: {...}})")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    if not Path(CHROMIUM).exists():
        parser.error(f"{CHROMIUM} is missing (scripts/setup.sh installs Debian's chromium)")
    clips = [c.strip() for c in args.clips.split(",") if c.strip()]
    if args.aiortc_jitter_buffer:
        from realtime_pipeline.server import rtc_call

        rtc_call.decode_on_arrival = lambda receiver: None  # type: ignore[assignment]  # (before the probe wraps it)
    if args.pin_browser and len(os.sched_getaffinity(0)) < 2:
        parser.error("--pin-browser needs at least 2 CPUs")
    out = run(clips, output_lead_ms=args.output_lead_ms, gap_s=args.gap_s, seed=args.seed, aiortc_jitter_buffer=args.aiortc_jitter_buffer,
              pin_browser=args.pin_browser, packet_ms=args.reply_frame_ms, calls=args.calls)
    for number, result in enumerate(out["calls"], 1):
        if args.calls > 1:
            print(f"-- call {number} of {args.calls}")
        report_call(result, len(clips))
    if args.calls > 1:
        pool = out["pooled"]
        print(f"-- pooled over {args.calls} calls: WebRTC's share per call (median ms) "
              f"{[round(v) if v is not None else None for v in pool['webrtc_added_per_call']]}; browser jitter buffer per call (ms) "
              f"{[round(v) if v is not None else None for v in pool['jitter_buffer_ms_per_call']]}, NetEq's target "
              f"{[round(v) if v is not None else None for v in pool['jitter_buffer_target_ms_per_call']]}")
        print("| hop | median ms | IQR | turns |")
        print("|---|---|---|---|")
        for hop, q in pool["hops"].items():
            print(f"| {hop} | {q['p50']:.0f} | {q['p25']:.0f}-{q['p75']:.0f} | {q['turns']} |")
    if args.json:
        args.json.write_text(json.dumps(out if args.calls > 1 else out["calls"][0], indent=2, default=float))
    return 0


def report_call(result: dict[str, Any], clip_count: int) -> None:
    """Prints one call's figures: load, the browser's stats, the server's pacing, and each hop."""
    rows = result["rows"]
    print(f"load average {result['load_before'][0]:.2f} before, {result['load_after'][0]:.2f} after (1 min); {os.cpu_count()} CPUs; "
          f"{len(rows)} turns of {clip_count} clips; WAV start found at level correlation {result['wav_start_level_correlation']:.3f}, "
          f"received audio correlation {result['received_correlation']:.3f}")
    if result["unmeasured_responses"]:
        print(f"responses without a measured reply (cancelled or silent; their stamps): {result['unmeasured_responses']}")
    stats = result["stats"]
    if result.get("pinned_browser_tasks") is not None:
        print(f"pinned: Chromium's {result['pinned_browser_tasks']} threads on the last CPU, the server on all")
    print(f"browser: jitter buffer {stats.get('jitterBufferMs')} ms (target {stats.get('jitterBufferTargetMs')}), playout delay {stats.get('playoutDelayMs')} ms, "
          f"AudioContext latency {stats.get('audioContextLatencyMs')} ms, RTT {stats.get('rttMs')} ms, lost {stats.get('packetsLost')}")
    print(f"microphone packets: {result['mic_packet_ms']} ms of audio each (median), {result['mic_packets_dropped_late']} dropped as late by the server; "
          f"lag of each clip in the received stream (samples): {[row['clip_lag_samples'] for row in rows]}")
    print(f"server: reply frames handed to aiortc behind the {result['frame_ms']} ms schedule (ms) {json.dumps({k: round(v, 1) for k, v in result['frame_lateness_ms'].items()})}"
          f" over {result['frames_sent']} frames, {len(result['stalls'])} frames more than 40 ms later than the one before;"
          f" browser RTP jitter {stats.get('rtpJitterMs')} ms")
    pacing = result["pacing"]
    print(f"server pacing as NetEq weighs it (worst frame per 500 ms against the earliest of 2 s): p50 {pacing['p50_ms']:.1f} ms, "
          f"p95 {pacing['p95_ms']:.1f} ms, {100 * pacing['share_over_20_ms']:.1f} % of half seconds 20 ms or more behind (over 5 %: a 40 ms target); "
          f"in the 3 s before each reply: {[round(row['pacing_before_reply_ms']) for row in rows]} ms")
    print("| hop | median ms | per turn |")
    print("|---|---|---|")
    for hop in HOPS:
        values = [row[hop] for row in rows if not np.isnan(row[hop])]
        if values:
            print(f"| {hop} | {statistics.median(values):.0f} | {' '.join(f'{v:.0f}' for v in values)} |")


if __name__ == "__main__":
    sys.exit(main())
