"""A minimal voice assistant on the public API: WAV files in, a spoken reply out.

    python examples/minimal_assistant.py examples/audio/question.wav reply.wav

With a sound card, use MicrophoneSource() and SpeakerOutput(22050) instead.
"""

import sys

import anyio

from realtime_pipeline import Conversation, ResponseDone, TranscriptFinal, WavFileOutput, WavFileSource, voice_pipeline


async def main(question_wav: str, reply_wav: str) -> None:
    conversation = Conversation("You are a friendly assistant. Answer in one short sentence.")
    pipeline = voice_pipeline(WavFileSource([question_wav]), WavFileOutput(reply_wav, 22050), conversation=conversation)

    def show(event: object) -> None:
        if isinstance(event, TranscriptFinal):
            print("you:", event.text)
        elif isinstance(event, ResponseDone):
            print("assistant:", event.response.text)
            print(pipeline.tracer.summary_line(event.response.turn_id))

    conversation.add_listener(show)
    await pipeline.start()  # loads and warms up every model
    try:
        await pipeline.run()  # ends when the input has been answered
    finally:
        await pipeline.aclose()


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:3])
