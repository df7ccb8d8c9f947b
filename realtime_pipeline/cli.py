"""Command line: ``python -m realtime_pipeline`` talks through the microphone and speaker,
``--input turn.wav ... --output reply.wav`` through files (for machines without audio hardware)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import anyio

from .audio import AudioFormatError
from .conversation import DEFAULT_SYSTEM_PROMPT, Conversation, ResponseDone, ResponseInterrupted
from .frames import TranscriptFinal
from .io.device import AudioDeviceError, MicrophoneSource, SpeakerOutput
from .io.outputs import AudioOutput, WavFileOutput
from .io.sources import WavFileSource
from .models import ModelNotFoundError, voice_model_file, voice_sample_rate_hz
from .pipeline import Pipeline, StageError
from .stage import Stage
from .stages.asr import WhisperASR
from .llm_engine import LLMEngineError
from .remote_options import add_remote_options, check_remote_options, remote_llm_engine
from .responder import Responder
from .stages.llm import LlamaEngine, LlamaLLM
from .stages.remote_speech import RemoteASR, RemoteSpeechError, RemoteTTS
from .stages.tts import PiperTTS
from .stages.vad import VADSettings
from .turn_taking import TurnTakingSettings
from .assistant import voice_pipeline


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m realtime_pipeline",
        description="A spoken conversation with a local assistant: microphone and speaker by default, "
        "or WAV files with --input/--output. `python -m realtime_pipeline serve --help` for the "
        "OpenAI-Realtime-compatible WebSocket server.",
    )
    parser.add_argument("--input", action="append", metavar="WAV", help="a user turn (16-bit PCM mono WAV); repeat for more turns")
    parser.add_argument("--output", metavar="WAV", help="write the spoken replies to this WAV file instead of the speaker")
    parser.add_argument("--fast", action="store_true", help="feed --input files as fast as possible instead of in real time")
    parser.add_argument("--system-prompt", default=DEFAULT_SYSTEM_PROMPT)
    parser.add_argument("--asr-model", metavar="DIR", help="faster-whisper model directory (default: embedded tiny.en)")
    parser.add_argument("--llm-model", metavar="GGUF", help="llama.cpp model file (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--voice", metavar="ONNX", help="Piper voice .onnx (default: embedded en_US-joe-medium)")
    parser.add_argument("--turn-detection", choices=("semantic", "silence"), default="semantic",
                        help="how the end of a turn is decided: the semantic detector (a short silence plus the Smart Turn "
                        "and LLM end-of-turn scores; default) or a fixed silence (--silence-ms)")
    parser.add_argument("--silence-ms", type=int, default=None,
                        help=f"end of turn after this fixed silence (implies --turn-detection silence; default {TurnTakingSettings.silence_ms})")
    parser.add_argument("--max-silence-ms", type=int, default=TurnTakingSettings.max_silence_ms,
                        help="semantic: the longest wait for a turn that sounds unfinished (default %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=120, help="longest reply, in tokens")
    parser.add_argument("--no-aec", action="store_true",
                        help="no acoustic echo cancellation on the microphone; the echo gate fallback keeps the assistant "
                        "from interrupting itself (barge-in then needs speech louder than its voice; see docs/echo.md)")
    parser.add_argument("--no-double-talk", action="store_true",
                        help="AEC3 alone, without the linear echo canceller that hears a user talking over the reply "
                        "(barge-in over the reply is then slower: see docs/echo.md)")
    parser.add_argument("--echo-path-fit", action="store_true",
                        help="opt-in: least-squares fits of the echo path beside the linear echo canceller; it learns "
                        "the room from the first second of echo instead of a few (see docs/echo.md)")
    parser.add_argument("--no-echo-calibration", action="store_true",
                        help="no start sound: by default a short, soft noise plays when the conversation starts, so the "
                        "echo canceller knows the room before the first reply (barge-in is then fast from the first one)")
    parser.add_argument("--echo-calibration", action="store_true", help=argparse.SUPPRESS)  # the default again; kept for old scripts
    parser.add_argument("--double-talk", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    parser.add_argument("--no-interruptions", action="store_true", help="play every reply to the end even if the user speaks")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for each model")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    add_remote_options(parser)
    return parser


def vad_settings(args: argparse.Namespace) -> VADSettings:
    if args.turn_detection == "silence" or args.silence_ms is not None:
        return VADSettings(silence_duration_ms=TurnTakingSettings.silence_ms if args.silence_ms is None else args.silence_ms)
    return VADSettings(turn_taking=TurnTakingSettings(max_silence_ms=args.max_silence_ms))


def build(args: argparse.Namespace) -> Pipeline:
    if args.output and not args.input:
        raise AudioFormatError("--output needs at least one --input file (without both, the microphone and speaker are used)")
    source: Stage
    output: AudioOutput
    if args.input:
        source = WavFileSource(args.input, realtime=not args.fast)
        output_rate = voice_sample_rate_hz(voice_model_file(args.voice)[1])
        if args.output:
            output = WavFileOutput(args.output, output_rate, paced=not args.fast)
        else:
            output = SpeakerOutput(output_rate)
    else:
        source = MicrophoneSource()
        output = SpeakerOutput(voice_sample_rate_hz(voice_model_file(args.voice)[1]))
    conversation = Conversation(args.system_prompt, allow_interruptions=not args.no_interruptions)
    return voice_pipeline(
        source,
        output,
        vad=vad_settings(args),
        asr=build_asr(args),
        llm=build_llm(args),
        tts=build_tts(args, output.sample_rate_hz),
        conversation=conversation,
        echo="gate" if args.no_aec else "aec" if args.no_double_talk else "auto",
        echo_path_fit=args.echo_path_fit,
        echo_calibration=not args.no_echo_calibration,
    )


def build_llm(args: argparse.Namespace) -> Responder:
    """The local llama.cpp model, or with ``--llm-base-url`` the remote one (the local model its fallback)."""
    local = lambda: LlamaEngine(args.llm_model, n_threads=args.threads, max_tokens=args.max_tokens)  # noqa: E731
    remote = remote_llm_engine(args, local, max_tokens=args.max_tokens)
    if remote is None:
        return LlamaLLM(args.llm_model, n_threads=args.threads, max_tokens=args.max_tokens)
    return Responder(remote, max_tokens=args.max_tokens)


def build_asr(args: argparse.Namespace) -> WhisperASR:
    if args.stt_base_url:
        return RemoteASR(args.stt_base_url, args.stt_model_name, api_key=args.llm_api_key)
    return WhisperASR(args.asr_model, cpu_threads=args.threads)


def build_tts(args: argparse.Namespace, output_rate_hz: int) -> PiperTTS:
    if args.tts_base_url:
        return RemoteTTS(args.tts_base_url, args.tts_model_name, args.tts_voice, output_sample_rate_hz=output_rate_hz,
                         api_key=args.llm_api_key)
    return PiperTTS(args.voice, output_sample_rate_hz=output_rate_hz)


def attach_printer(pipeline: Pipeline) -> None:
    """Print each user transcript, each reply and its latency line as the conversation goes."""

    def on_event(event: object) -> None:
        if isinstance(event, TranscriptFinal) and event.text:
            print(f"you: {event.text}", flush=True)
        elif isinstance(event, ResponseDone):
            print(f"assistant: {event.response.text.strip()}", flush=True)
            print(f"  {pipeline.tracer.summary_line(event.response.turn_id)}", flush=True)
        elif isinstance(event, ResponseInterrupted):
            print(f"assistant (interrupted after {event.played_ms:.0f} ms): {event.heard_text}", flush=True)

    pipeline.conversation.add_listener(on_event)


async def converse(args: argparse.Namespace) -> None:
    pipeline = build(args)
    attach_printer(pipeline)
    print("loading and warming up the models...", file=sys.stderr, flush=True)
    try:
        await pipeline.start()
        print("listening" + ("" if args.input else " (Ctrl+C to stop)"), file=sys.stderr, flush=True)
        await pipeline.run()
    finally:
        await pipeline.aclose()
    if args.output:
        print(f"replies written to {args.output}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # the OpenAI-Realtime-compatible server (docs/server.md)
        from .server.__main__ import main as serve

        return serve(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    check_remote_options(parser, args)
    if args.echo_path_fit and (args.no_aec or args.no_double_talk):
        parser.error("--echo-path-fit fits the echo path for the double-talk path: it does not go with "
                     + ("--no-aec" if args.no_aec else "--no-double-talk"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        anyio.run(converse, args)
    except StageError as error:
        cause = error.error
        if isinstance(cause, (AudioFormatError, ModelNotFoundError, AudioDeviceError, LLMEngineError, RemoteSpeechError)):
            print(f"error: {cause}", file=sys.stderr)
        else:
            print(f"error: {error}", file=sys.stderr)
        return 1
    except (AudioFormatError, ModelNotFoundError, AudioDeviceError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
