"""Load on the Realtime server: concurrent spoken sessions, admission, and one session's long
recording against another's turn. Loopback only, every loop bounded in count and time.

Scenarios, on the real models and real speech (``tests/data/speech``), against a real server
on 127.0.0.1 and a free port:

* **concurrency**: for each N in ``--sessions`` (default 1,2,4), N sessions at once, each
  speaking ``--turns`` questions in real time (100 ms chunks, like a microphone) with server
  VAD. Per turn: ``first_audio_s`` = the end of the user's speech (the last speech chunk sent)
  → the first reply audio delta received; ``transcript_s`` = the same end → the user's
  transcription. Reported as medians (p50) and the ratio to the 1-session p50.
* **admission**: with N = the server's session limit running, one more connection must get a
  ``session_limit_reached`` error and close code 1013.
* **event loop**: while one session sends a ``session.update`` with 128 tools (accepted: a
  grammar each) or 10,000 (refused), another session's longest wait for an answer.
* **stall**: one session sends ``conversation.item.create`` with ``--stall-audio-s`` of
  audio (218 s by default: the case that held Whisper 38.6 s before slicing); another session's
  spoken turn then gives its ``first_audio_s``, compared with the same turn alone.

* **remote LLM** (``--llm-base-url URL``, or ``--llm-server`` to start ``python -m
  llama_cpp.server`` on the embedded model for the run): the same levels with every session's
  replies from that server (``--no-llm-fallback``: no local model at all; else the local model
  answers turns the server is too slow for, ``--llm-first-token-timeout-s``).
* **failover** (``--failover``, with ``--llm-server``): one session's first audio per turn with
  the server answering, then frozen (SIGSTOP: it accepts connections and says nothing), then
  killed; the local model answers for it.

``python -m benchmarks.server_load`` (``--help``); run it alone on the machine (it measures
latency under load it makes itself) and say how loaded the machine was (``uptime``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from benchmarks.llama_server import LlamaServer
from realtime_pipeline.audio import read_wav, resample
from realtime_pipeline.remote_options import add_remote_options, check_remote_options, remote_llm_engine
from realtime_pipeline.stages.llm import LlamaEngine
from realtime_pipeline.server import Engines, ServerOptions, SessionOptions, create_app, uvicorn_config
from realtime_pipeline.server.app import DEFAULT_MAX_SESSIONS, free_port

SPEECH_DIR = Path(__file__).resolve().parent.parent / "tests" / "data" / "speech"
CLIPS = ["ps_goforward.wav", "ps_forever_2.wav", "ps_cards_001.wav", "ps_librivox_0880.wav", "ps_tidigits_2934z.wav", "mfa_thoughts.wav"]
RATE_HZ = 24_000
CHUNK_MS = 100
#: Every wait on the server is bounded: a turn that takes longer counts as failed.
TURN_TIMEOUT_S = 120.0


def clip_24k(name: str) -> np.ndarray:
    samples, rate = read_wav(SPEECH_DIR / name)
    return resample(samples, rate, RATE_HZ)


def b64(samples: np.ndarray) -> str:
    return base64.b64encode(samples.astype("<i2").tobytes()).decode()


@dataclass
class Turn:
    session: int
    clip: str
    first_audio_s: float | None = None
    transcript_s: float | None = None
    completed: bool = False
    status: str | None = None
    error: str | None = None


@dataclass
class LevelResult:
    sessions: int
    turns: list[Turn] = field(default_factory=list)
    refused_beyond_limit: int | None = None

    def p50(self, name: str) -> float | None:
        values = [getattr(t, name) for t in self.turns if getattr(t, name) is not None]
        return statistics.median(values) if values else None


class Server:
    """The real server in a thread (its own event loop), on 127.0.0.1."""

    def __init__(self, engines: Engines, options: ServerOptions) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn_config(create_app(engines, options), "127.0.0.1", self.port))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


async def receive_until(ws: Any, wanted: str, timeout_s: float, on_event: Any = None, on_error: Any = None) -> dict[str, Any]:
    """The next ``wanted`` event; an error event raises, or with ``on_error`` is passed to it (the
    session lives on: a failed response still ends with ``response.done``)."""
    with anyio.fail_after(timeout_s):
        while True:
            event = json.loads(await ws.recv())
            if on_event is not None:
                on_event(event)
            if event["type"] == wanted:
                return event
            if event["type"] == "error":
                if on_error is None:
                    raise RuntimeError(f"server error: {event['error']}")
                on_error(event["error"])


async def open_session(ws: Any, max_tokens: int) -> None:
    await receive_until(ws, "session.created", 30)
    await ws.send(json.dumps({"type": "session.update", "session": {
        "type": "realtime", "instructions": "Answer in one short sentence.", "max_output_tokens": max_tokens}}))
    await receive_until(ws, "session.updated", 30)


class Stream:
    """One session's input stream: when each of its chunks was sent (the VAD's positions are stream ms)."""

    def __init__(self) -> None:
        self.sent_ms = 0
        self.sent_at: list[tuple[int, float]] = []  # (stream ms at the chunk's start, when it was sent)

    def time_of(self, stream_ms: int) -> float | None:
        """When the audio at ``stream_ms`` was spoken, as a microphone would have delivered it."""
        for start_ms, sent in reversed(self.sent_at):
            if start_ms <= stream_ms:
                return sent + (stream_ms - start_ms) / 1000
        return None


async def spoken_turn(ws: Any, turn: Turn, speech: np.ndarray, stream: Stream) -> None:
    """Speak in real time; time the transcript and the first reply audio from the end of speech
    (the ``audio_end_ms`` of the VAD's ``speech_stopped``, when that audio was sent)."""
    chunk = RATE_HZ * CHUNK_MS // 1000
    audio = np.concatenate([np.zeros(RATE_HZ * 3 // 10, dtype=np.int16), speech, np.zeros(RATE_HZ * 15 // 10, dtype=np.int16)])
    times: dict[str, float] = {}

    def on_event(event: dict[str, Any]) -> None:
        now = time.monotonic()
        if event["type"] == "input_audio_buffer.speech_stopped" and "end" not in times:
            end = stream.time_of(int(event["audio_end_ms"]))
            if end is not None:
                times["end"] = end
        elif event["type"] == "conversation.item.input_audio_transcription.completed" and "transcript" not in times:
            times["transcript"] = now
        elif event["type"] == "response.output_audio.delta" and "audio" not in times:
            times["audio"] = now

    async def send() -> None:
        start = time.monotonic()
        for index, offset in enumerate(range(0, len(audio), chunk)):
            await anyio.sleep(max(0.0, start + index * CHUNK_MS / 1000 - time.monotonic()))
            piece = audio[offset : offset + chunk]
            stream.sent_at.append((stream.sent_ms, time.monotonic()))
            stream.sent_ms += len(piece) * 1000 // RATE_HZ
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(piece)}))

    def on_error(error: dict[str, Any]) -> None:
        turn.error = str(error.get("message"))
        print(f"session {turn.session}, {turn.clip}: {turn.error}", file=sys.stderr)

    async with anyio.create_task_group() as group:
        group.start_soon(send)
        done = await receive_until(ws, "response.done", TURN_TIMEOUT_S, on_event, on_error)
    end = times.get("end")
    if end is not None:
        turn.transcript_s = times["transcript"] - end if "transcript" in times else None
        turn.first_audio_s = times["audio"] - end if "audio" in times else None
    turn.status = done["response"]["status"]
    turn.completed = turn.status != "failed"  # "incomplete": the reply reached its token cap


async def run_level(url: str, sessions: int, turns: int, max_tokens: int, seed: int, check_admission: bool) -> LevelResult:
    result = LevelResult(sessions)
    rng = random.Random(seed * 100 + sessions)
    clips = {name: clip_24k(name) for name in CLIPS}
    opened = anyio.Event()
    ready = [0]

    async def one(index: int) -> None:
        async with connect(url, max_size=None) as ws:
            await open_session(ws, max_tokens)
            ready[0] += 1
            if ready[0] == sessions:
                opened.set()
            await opened.wait()
            await anyio.sleep(rng.uniform(0.0, 0.5))  # users do not start on the same millisecond
            stream = Stream()
            for number in range(turns):
                name = CLIPS[(index + number) % len(CLIPS)]
                turn = Turn(index, name)
                result.turns.append(turn)
                await spoken_turn(ws, turn, clips[name], stream)
                await anyio.sleep(rng.uniform(0.3, 1.0))

    async def one_too_many() -> None:
        await opened.wait()
        async with connect(url, max_size=None) as ws:
            first = json.loads(await ws.recv())
            refused = first["type"] == "error" and first["error"]["code"] == "session_limit_reached"
            try:
                with anyio.fail_after(10):
                    await ws.recv()
            except ConnectionClosed as closed:
                refused = refused and closed.rcvd is not None and closed.rcvd.code == 1013
            result.refused_beyond_limit = int(refused)

    with anyio.fail_after(TURN_TIMEOUT_S * (turns + 1)):
        async with anyio.create_task_group() as group:
            for index in range(sessions):
                group.start_soon(one, index)
            if check_admission:
                group.start_soon(one_too_many)
    return result


async def run_stall(url: str, audio_s: float, max_tokens: int) -> dict[str, Any]:
    """Another session's turn alone, then while one session's long item is transcribed."""
    speech = clip_24k("ps_goforward.wav")
    parts, total = [], 0
    while total < audio_s * RATE_HZ:
        for name in CLIPS:
            piece = np.concatenate([clip_24k(name), np.zeros(RATE_HZ // 2, dtype=np.int16)])
            parts.append(piece)
            total += len(piece)
    long_audio = np.concatenate(parts)[: int(audio_s * RATE_HZ)]
    alone, loaded = Turn(0, "ps_goforward.wav"), Turn(1, "ps_goforward.wav")
    async with connect(url, max_size=None) as ws:
        await open_session(ws, max_tokens)
        await spoken_turn(ws, alone, speech, Stream())
    transcribed: dict[str, float] = {}
    async with connect(url, max_size=None) as heavy, connect(url, max_size=None) as other:
        await open_session(heavy, max_tokens)
        await open_session(other, max_tokens)
        await heavy.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}}))
        await receive_until(heavy, "session.updated", 30)
        sent = time.monotonic()
        await heavy.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_audio", "audio": b64(long_audio)}]}}))

        async def heavy_done() -> None:
            await receive_until(heavy, "conversation.item.input_audio_transcription.completed", 600)
            transcribed["long_item_transcription_s"] = time.monotonic() - sent

        async with anyio.create_task_group() as group:
            group.start_soon(heavy_done)
            await anyio.sleep(1.0)  # the long transcription is under way
            await spoken_turn(other, loaded, speech, Stream())
    stall = None if alone.first_audio_s is None or loaded.first_audio_s is None else loaded.first_audio_s - alone.first_audio_s
    return {"audio_s": audio_s, "first_audio_alone_s": alone.first_audio_s, "first_audio_during_long_item_s": loaded.first_audio_s,
            "stall_s": stall, **transcribed}


async def run_event_loop_check(url: str, tools: int) -> float:
    """The longest another session waits for an answer (a ping every 20 ms, for 3 s) while one
    session sends a ``session.update`` with ``tools`` tools: how long the event loop was blocked."""
    tool_list = [{"type": "function", "name": f"tool_{i}", "description": f"Tool number {i}",
                  "parameters": {"type": "object", "properties": {f"arg_{i}": {"type": "string"}}}} for i in range(tools)]
    worst = 0.0
    async with connect(url, max_size=None) as heavy, connect(url, max_size=None) as other:
        await receive_until(heavy, "session.created", 30)
        await receive_until(other, "session.created", 30)

        async def ping() -> None:
            nonlocal worst
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                sent = time.monotonic()
                await other.send(json.dumps({"type": "conversation.item.retrieve", "item_id": "item_ping"}))
                with anyio.fail_after(30):
                    while json.loads(await other.recv())["type"] != "error":
                        pass
                worst = max(worst, time.monotonic() - sent)
                await anyio.sleep(0.02)

        async with anyio.create_task_group() as group:
            group.start_soon(ping)
            await anyio.sleep(0.5)
            await heavy.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "tools": tool_list}}))
            with anyio.fail_after(120):
                while json.loads(await heavy.recv())["type"] not in ("session.updated", "error"):
                    pass
    return worst


async def run_failover(url: str, server: LlamaServer, engines: Engines, turns: int, max_tokens: int) -> dict[str, list[tuple[float | None, str]]]:
    """One session's first audio per turn, and which engine answered it: the LLM server answering,
    frozen, then killed. At the start of each phase the failover forgets earlier failures (its
    first turn then meets the server as it is now)."""
    phases: dict[str, list[tuple[float | None, str]]] = {}
    speech = {name: clip_24k(name) for name in CLIPS}
    failover = engines.llm
    async with connect(url, max_size=None) as ws:
        await open_session(ws, max_tokens)
        stream = Stream()
        for phase in ("answering", "frozen", "killed"):
            if phase == "frozen":
                server.freeze()
            elif phase == "killed":
                server.kill()
            if hasattr(failover, "health"):
                failover.health.answered()
            phases[phase] = []
            for number in range(turns):
                turn = Turn(0, CLIPS[number % len(CLIPS)])
                await spoken_turn(ws, turn, speech[turn.clip], stream)
                answered = getattr(failover, "answered_by", None) or "?"
                phases[phase].append((turn.first_audio_s, "remote" if answered == getattr(failover, "label", None) else "local"))
                await anyio.sleep(0.5)
    return phases


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.server_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="1,2,4", help="concurrency levels (default 1,2,4)")
    parser.add_argument("--turns", type=int, default=3, help="spoken turns per session (default 3)")
    parser.add_argument("--max-tokens", type=int, default=16, help="reply length in tokens (default 16)")
    parser.add_argument("--max-sessions", type=int, default=DEFAULT_MAX_SESSIONS, help="the server's session limit")
    parser.add_argument("--stall-audio-s", type=float, default=218.0, help="the long item's audio (0: skip the stall scenario)")
    parser.add_argument("--no-loop-check", dest="loop_check", action="store_false", help="skip the 128 / 10,000-tool session.update check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, metavar="PATH")
    parser.add_argument("--llm-server", action="store_true",
                        help="start python -m llama_cpp.server on the embedded model for the run and use it (--llm-base-url)")
    parser.add_argument("--llm-server-threads", type=int, default=2, help="the model server's threads (default 2)")
    parser.add_argument("--failover", action="store_true", help="with --llm-server: the failover scenario (--turns turns per phase)")
    add_remote_options(parser, speech=False)
    args = parser.parse_args(argv)
    check_remote_options(parser, args)
    if args.failover and not args.llm_server:
        parser.error("--failover needs --llm-server (it freezes and kills that server)")
    levels = [int(n) for n in args.sessions.split(",") if n.strip()]
    if any(n < 1 or n > args.max_sessions for n in levels) or not 1 <= args.turns <= 20:
        parser.error("levels must be 1..--max-sessions and --turns 1..20")

    model_server = LlamaServer(threads=args.llm_server_threads).start() if args.llm_server else None
    try:
        if model_server is not None:
            args.llm_base_url = model_server.base_url
        remote = remote_llm_engine(args, lambda: LlamaEngine(seed=args.seed), max_tokens=args.max_tokens)
        engines = Engines.create(seed=args.seed, llm=remote)
        anyio.run(engines.load)
        load_before = os.getloadavg()
        results: list[LevelResult] = []
        stall: dict[str, Any] | None = None
        failover: dict[str, list[tuple[float | None, str]]] | None = None
        with Server(engines, ServerOptions(max_sessions=args.max_sessions, session=SessionOptions())) as server:
            for n in levels:
                results.append(anyio.run(run_level, server.url, n, args.turns, args.max_tokens, args.seed, n == args.max_sessions))
            if args.stall_audio_s > 0:
                stall = anyio.run(run_stall, server.url, args.stall_audio_s, args.max_tokens)
            loop_blocked = {n: anyio.run(run_event_loop_check, server.url, n) for n in (128, 10_000)} if args.loop_check else {}
            if args.failover and model_server is not None:
                failover = anyio.run(run_failover, server.url, model_server, engines, args.turns, args.max_tokens)
        load_after = os.getloadavg()
    finally:
        if model_server is not None:
            model_server.__exit__(None, None, None)
    print(f"LLM: {engines.llm.label}" + ("" if not args.llm_base_url or not args.llm_fallback
                                          else f" (the local model answers after {args.llm_first_token_timeout_s:g} s without a first token)"))

    base = results[0].p50("first_audio_s") if results else None
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min); {os.cpu_count()} CPUs")
    print("| sessions | turns done | first audio p50 (s) | × 1 session | transcript p50 (s) | refused beyond the limit |")
    print("|---|---|---|---|---|---|")
    for r in results:
        p50 = r.p50("first_audio_s")
        ratio = f"{p50 / base:.2f}" if p50 is not None and base else "-"
        refused = "-" if r.refused_beyond_limit is None else f"{r.refused_beyond_limit}/1"
        done = sum(t.completed for t in r.turns)
        print(f"| {r.sessions} | {done}/{r.sessions * args.turns} | {seconds(p50)} | {ratio} | {seconds(r.p50('transcript_s'))} | {refused} |")
    if stall is not None:
        print(f"stall: another session's first audio {stall['first_audio_alone_s']:.2f} s alone, "
              f"{stall['first_audio_during_long_item_s']:.2f} s while a {stall['audio_s']:.0f} s item is transcribed "
              f"(+{stall['stall_s']:.2f} s); the long item took {stall.get('long_item_transcription_s', float('nan')):.1f} s")
    if failover is not None:
        for phase, values in failover.items():
            print(f"failover: the LLM server {phase}: first audio per turn " + ", ".join(f"{seconds(v)} s ({engine})" for v, engine in values))
    for n, worst in loop_blocked.items():
        print(f"event loop: another session's longest wait {worst * 1000:.0f} ms while one sends {n} tools in session.update")
    if args.json:
        args.json.write_text(json.dumps({"load_before": load_before, "load_after": load_after, "levels": [asdict(r) for r in results],
                                         "stall": stall, "loop_blocked_s": loop_blocked,
                                         "llm": engines.llm.label, "failover": failover}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
