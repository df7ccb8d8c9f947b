"""Talk to the local Realtime server with the official openai SDK.

Start the server, then run this client::

    python -m realtime_pipeline.server            # ws://127.0.0.1:8765/v1/realtime
    python examples/realtime_client.py examples/audio/question.wav --out reply.wav
    python examples/realtime_client.py --text "What is the capital of France?"
    python examples/realtime_client.py --beta examples/audio/question.wav   # beta events

The WAV is sent as 24 kHz pcm16 in 100 ms appends with server VAD, exactly as
an app would stream a microphone; the reply audio is written to ``--out``.
Only the URL differs from talking to OpenAI.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import wave
from pathlib import Path

import numpy as np
import soxr
from openai import AsyncOpenAI

RATE_HZ = 24_000


def wav_as_24k_pcm16(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
            sys.exit(f"{path}: expected 16-bit mono PCM")
        rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return soxr.resample(samples, rate, RATE_HZ).astype(np.int16)


async def main(args: argparse.Namespace) -> None:
    client = AsyncOpenAI(api_key=args.api_key, websocket_base_url=args.url)
    realtime = client.beta.realtime if args.beta else client.realtime
    audio_delta = "response.audio.delta" if args.beta else "response.output_audio.delta"
    transcript_done = "response.audio_transcript.done" if args.beta else "response.output_audio_transcript.done"
    text_done = "response.text.done" if args.beta else "response.output_text.done"
    reply = bytearray()
    async with realtime.connect(model="gpt-realtime") as connection:
        session: dict = {"instructions": "You are a friendly assistant. Answer in one short sentence."}
        if not args.beta:
            session["type"] = "realtime"
        if args.text:
            session["output_modalities" if not args.beta else "modalities"] = ["text"]
        await connection.session.update(session=session)  # type: ignore[arg-type]
        if args.text:
            await connection.conversation.item.create(item={
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": args.text}],
            })
            await connection.response.create()
        else:
            audio = wav_as_24k_pcm16(args.wav)
            audio = np.concatenate([audio, np.zeros(RATE_HZ, dtype=np.int16)])  # silence ends the turn
            step = RATE_HZ // 10
            for start in range(0, len(audio), step):
                chunk = audio[start : start + step].astype("<i2").tobytes()
                await connection.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
        async for event in connection:
            if event.type == "conversation.item.input_audio_transcription.completed":
                print(f"you: {event.transcript}")
            elif event.type == audio_delta:
                reply.extend(base64.b64decode(event.delta))
            elif event.type in (transcript_done, text_done):
                print(f"assistant: {getattr(event, 'transcript', None) or getattr(event, 'text', '')}")
            elif event.type == "error":
                print(f"error: {event.error.message}", file=sys.stderr)
            elif event.type == "response.done":
                print(f"response {event.response.status}")
                break
    if reply and args.out:
        with wave.open(str(args.out), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(RATE_HZ)
            wav.writeframes(bytes(reply))
        print(f"reply audio ({len(reply) / 2 / RATE_HZ:.1f} s) written to {args.out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wav", nargs="?", type=Path, default=Path(__file__).parent / "audio" / "question.wav")
    parser.add_argument("--text", help="send this text instead of audio (text reply)")
    parser.add_argument("--out", type=Path, help="write the reply audio here (WAV, 24 kHz)")
    parser.add_argument("--beta", action="store_true", help="use the beta events (OpenAI-Beta: realtime=v1)")
    parser.add_argument("--url", default="ws://127.0.0.1:8765/v1")
    parser.add_argument("--api-key", default="local", help="any value, unless the server was started with --api-key")
    asyncio.run(main(parser.parse_args()))
