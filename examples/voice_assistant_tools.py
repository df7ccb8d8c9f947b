"""A voice assistant that calls the app's tools: ``get_weather(location)`` and ``set_reminder(time, message)``.

The tools are plain Python functions; their JSON schemas come from the type hints and the
docstrings. When the model calls one, the pipeline runs it (the conversation stays live: you
can interrupt), puts the call and its result into the history, and the model answers in speech.

From WAV files, like the CLI (16-bit PCM mono, one file per user turn)::

    python examples/voice_assistant_tools.py --input weather.wav --output reply.wav

With a question spoken by the embedded voice instead of a recording::

    python examples/voice_assistant_tools.py --say "What's the weather like in Paris?" --output reply.wav

Without ``--input``/``--say`` it uses the microphone and the speaker.

The embedded SmolLM2-135M picks tools close to randomly under ``--tool-choice auto``; the
library guarantees the rest (``required``/a named tool is always called, arguments always
match the schema). See docs/tools.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import zlib

import anyio

from realtime_pipeline import CancelToken, Conversation, Pipeline, ResponseDone, StageContext, Tracer, resample
from realtime_pipeline.audio import INPUT_SAMPLE_RATE_HZ
from realtime_pipeline.cli import attach_printer
from realtime_pipeline.io.device import MicrophoneSource, SpeakerOutput
from realtime_pipeline.io.outputs import AudioOutput, WavFileOutput
from realtime_pipeline.io.sources import MemorySource, WavFileSource
from realtime_pipeline.stage import Stage
from realtime_pipeline.stages.llm import TOOL_CALL_DONE, TOOL_CALL_STARTED, LlamaLLM
from realtime_pipeline.stages.tts import PiperTTS
from realtime_pipeline.tools import ToolCallDone, ToolCallStarted, ToolRegistry
from realtime_pipeline.tracing import ASR_FINAL, LLM_FIRST_TOKEN
from realtime_pipeline.assistant import voice_pipeline

SYSTEM_PROMPT = (
    "You are a helpful voice assistant. You can look up the weather and set reminders. "
    "Answer in one or two short spoken sentences, without lists, markdown or emojis."
)

tools = ToolRegistry()
reminders: list[tuple[str, str]] = []

_CONDITIONS = ["sunny", "cloudy", "rainy", "windy", "foggy", "snowy"]


@tools.tool
def get_weather(location: str) -> dict:
    """Get the current weather for a location.

    Args:
        location: The city, e.g. "Paris".
    """
    # Fake data, stable per city: a real app would call a weather service here.
    seed = zlib.crc32(location.strip().lower().encode())
    return {"location": location, "temperature_c": 5 + seed % 25, "conditions": _CONDITIONS[seed % len(_CONDITIONS)]}


@tools.tool(cancellable=False)  # it changes something: never cut it off halfway
def set_reminder(time: str, message: str) -> str:
    """Set a reminder for the user.

    Args:
        time: When to remind the user, e.g. "7 pm" or "tomorrow morning".
        message: What to remind the user of.
    """
    reminders.append((time, message))
    return f"Reminder set for {time}: {message}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", action="append", metavar="WAV", help="a user turn (16-bit PCM mono WAV); repeat for more turns")
    parser.add_argument("--say", action="append", metavar="TEXT", help="a user turn spoken by the embedded voice; repeat for more turns")
    parser.add_argument("--output", metavar="WAV", help="write the spoken replies to this WAV file instead of the speaker")
    parser.add_argument("--fast", action="store_true", help="feed the turns as fast as possible instead of in real time")
    parser.add_argument("--tool-choice", default="auto", help="auto, none, required, or a tool name (default: auto)")
    parser.add_argument("--max-tool-calls", type=int, default=1, help="tool calls per answer (default 1: small models repeat calls)")
    parser.add_argument("--llm-model", metavar="GGUF", help="llama.cpp model file (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return parser


def attach_tool_printer(pipeline: Pipeline) -> None:
    """Print each call, its result, and where a tool turn's time went (from the tracer's stamps)."""

    def on_event(event: object) -> None:
        if isinstance(event, ToolCallStarted):
            print(f"  [tool] {event.call.name}({event.call.arguments})", flush=True)
        elif isinstance(event, ToolCallDone):
            print(f"  [tool] {event.call.name} -> {event.result.status.value}: {event.result.output}", flush=True)
        elif isinstance(event, ResponseDone):
            trace = pipeline.tracer.turn(event.response.turn_id)
            if trace is None or TOOL_CALL_STARTED not in trace.stamps:
                return
            spans = {
                "decide+arguments": trace.span_ms(ASR_FINAL, TOOL_CALL_STARTED),
                "tool calls": trace.span_ms(TOOL_CALL_STARTED, TOOL_CALL_DONE),
                "answer first token": trace.span_ms(TOOL_CALL_DONE, LLM_FIRST_TOKEN),
            }
            print("  tools: " + " | ".join(f"{name} {ms:.0f} ms" for name, ms in spans.items() if ms is not None), flush=True)

    pipeline.conversation.add_listener(on_event)


async def build(args: argparse.Namespace) -> Pipeline:
    llm = LlamaLLM(args.llm_model, tools=tools, tool_choice=args.tool_choice, max_tool_calls=args.max_tool_calls)
    output: AudioOutput
    tts = PiperTTS()
    if args.output:
        output = WavFileOutput(args.output, tts.output_sample_rate_hz, paced=not args.fast)
    else:
        output = SpeakerOutput(tts.output_sample_rate_hz)
    source: Stage
    if args.say:
        await tts.setup(StageContext(Conversation(), Tracer()))  # loads once; the pipeline reuses it
        turns = [resample(tts.synthesize(text, CancelToken()), tts.output_sample_rate_hz, INPUT_SAMPLE_RATE_HZ) for text in args.say]
        source = MemorySource(turns, INPUT_SAMPLE_RATE_HZ, realtime=not args.fast)
    elif args.input:
        source = WavFileSource(args.input, realtime=not args.fast)
    else:
        source = MicrophoneSource()
    return voice_pipeline(source, output, llm=llm, tts=tts, conversation=Conversation(SYSTEM_PROMPT))


async def main(args: argparse.Namespace) -> None:
    print("loading and warming up the models...", file=sys.stderr, flush=True)
    pipeline = await build(args)
    attach_printer(pipeline)
    attach_tool_printer(pipeline)
    try:
        await pipeline.start()
        print("listening" + ("" if args.input or args.say else " (Ctrl+C to stop)"), file=sys.stderr, flush=True)
        await pipeline.run()
    finally:
        await pipeline.aclose()
    for when, message in reminders:
        print(f"reminders the app now holds: {when}: {message}")
    if args.output:
        print(f"replies written to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    arguments = build_parser().parse_args()
    if arguments.output and not (arguments.input or arguments.say):
        sys.exit("--output needs --input or --say (without them, the microphone and speaker are used)")
    logging.basicConfig(level=logging.DEBUG if arguments.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        anyio.run(main, arguments)
    except KeyboardInterrupt:
        pass
