"""``python -m realtime_pipeline.server``: an OpenAI-Realtime-compatible server on the local models."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import anyio
import uvicorn

from ..llm_engine import LLMEngineError
from ..models import ModelNotFoundError
from ..remote_options import add_remote_options, check_remote_options, remote_llm_engine
from ..stages.llm import LlamaEngine
from .app import DEFAULT_HOST, DEFAULT_MAX_SESSIONS, DEFAULT_PORT, ServerOptions, create_app, uvicorn_config
from .engines import Engines
from .session import SessionOptions


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m realtime_pipeline.server",
        description="Serve the OpenAI Realtime API (WebSocket, beta and GA events) on the local pipeline.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--api-key", default=os.environ.get("REALTIME_PIPELINE_API_KEY"),
                        help="require 'Authorization: Bearer KEY' (default: $REALTIME_PIPELINE_API_KEY; none: no check)")
    parser.add_argument("--asr-model", metavar="DIR", help="faster-whisper model directory (default: embedded tiny.en)")
    parser.add_argument("--llm-model", metavar="GGUF", help="llama.cpp model file (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--voice", metavar="ONNX", help="Piper voice .onnx (default: embedded en_US-joe-medium)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for each model")
    parser.add_argument("--no-pace", action="store_true",
                        help="send reply audio as fast as it is synthesized (default: at playback rate, so barge-in knows what was heard)")
    parser.add_argument("--lead-ms", type=int, default=SessionOptions.output_lead_ms,
                        help="paced audio is sent this far ahead of playback (ms)")
    parser.add_argument("--webrtc-packet-ms", type=int, choices=(10, 20), default=SessionOptions.webrtc_packet_ms,
                        help="WebRTC calls: the reply's Opus packet time (10 waits less, 20 costs half the CPU per call)")
    parser.add_argument("--max-sessions", type=int, default=DEFAULT_MAX_SESSIONS,
                        help="sessions served at once; more are refused with a session_limit_reached error and close code 1013 (0: no limit)")
    parser.add_argument("--ssl-certfile", metavar="PEM", help="serve wss:// (TLS) with this certificate chain (the Node openai SDK connects with wss:// only)")
    parser.add_argument("--ssl-keyfile", metavar="PEM", help="the certificate's private key (default: in --ssl-certfile)")
    parser.add_argument("--verbose", "-v", action="store_true")
    add_remote_options(parser, speech=False)
    return parser


async def serve(args: argparse.Namespace) -> None:
    # With --llm-base-url every session's replies come from that server (one engine shared by all),
    # the local model answering for it when it is slow or down (unless --no-llm-fallback).
    local = lambda: LlamaEngine(args.llm_model, n_threads=args.threads)  # noqa: E731
    remote = remote_llm_engine(args, local, max_tokens=120)  # the local engine's cap; sessions set max_output_tokens
    engines = Engines.create(asr_model=args.asr_model, llm_model=args.llm_model, voice=args.voice, threads=args.threads, llm=remote)
    print("loading and warming up the models...", file=sys.stderr, flush=True)
    await engines.load()
    options = ServerOptions(
        api_key=args.api_key or None,
        session=SessionOptions(pace_output=not args.no_pace, output_lead_ms=args.lead_ms, webrtc_packet_ms=args.webrtc_packet_ms),
        max_sessions=args.max_sessions or None,
    )
    tls = {"ssl_certfile": args.ssl_certfile, "ssl_keyfile": args.ssl_keyfile} if args.ssl_certfile else {}
    config = uvicorn_config(create_app(engines, options), args.host, args.port, log_level="debug" if args.verbose else "info", **tls)
    scheme = "wss" if tls else "ws"
    print(f"serving {scheme}://{args.host}:{args.port}/v1/realtime", file=sys.stderr, flush=True)
    await uvicorn.Server(config).serve()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_remote_options(parser, args)
    if args.max_sessions < 0:
        parser.error("--max-sessions must be 0 (no limit) or more")
    if args.ssl_keyfile and not args.ssl_certfile:
        parser.error("--ssl-keyfile needs --ssl-certfile")
    for path in (args.ssl_certfile, args.ssl_keyfile):
        if path and not os.path.isfile(path):
            parser.error(f"no such file: {path}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        anyio.run(serve, args)
    except (ModelNotFoundError, LLMEngineError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
