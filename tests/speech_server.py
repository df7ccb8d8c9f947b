"""A real OpenAI-compatible speech server for the tests: ``/v1/audio/transcriptions`` on faster-whisper
and ``/v1/audio/speech`` (streamed 24 kHz PCM) on Piper, the embedded models, served by uvicorn on
127.0.0.1 and a free port (a thread with its own event loop)."""

from __future__ import annotations

import io
import threading
import time
import wave

import anyio
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from realtime_pipeline.audio import resample
from realtime_pipeline.cancellation import CancelToken
from realtime_pipeline.server.app import free_port

#: Bytes per streamed piece of speech (100 ms of 24 kHz 16-bit PCM).
PCM_PIECE_BYTES = 4800


def speech_app(asr, tts) -> Starlette:
    """``asr``: a loaded WhisperASR; ``tts``: a loaded PiperTTS (its audio is resampled to 24 kHz)."""
    requests: list[str] = []

    async def transcriptions(request: Request) -> JSONResponse:
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            return JSONResponse({"error": {"message": "no file"}}, status_code=400)
        try:
            with wave.open(io.BytesIO(await upload.read()), "rb") as wav:
                rate = wav.getframerate()
                samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)
        except (wave.Error, EOFError) as error:
            return JSONResponse({"error": {"message": f"not a WAV file: {error}"}}, status_code=400)
        requests.append("transcriptions")
        text = await anyio.to_thread.run_sync(asr.transcribe, resample(samples, rate, 16_000) if rate != 16_000 else samples)
        return JSONResponse({"text": text})

    async def speech(request: Request) -> StreamingResponse | JSONResponse:
        body = await request.json()
        if body.get("response_format") != "pcm" or not body.get("input"):
            return JSONResponse({"error": {"message": "this server speaks pcm only, and needs an input"}}, status_code=400)
        requests.append("speech")
        audio = await anyio.to_thread.run_sync(tts.synthesize, str(body["input"]), CancelToken())
        audio = resample(audio, tts.output_sample_rate_hz, 24_000)
        data = np.asarray(audio, dtype="<i2").tobytes()

        async def pieces():
            for offset in range(0, len(data), PCM_PIECE_BYTES):
                yield data[offset : offset + PCM_PIECE_BYTES]

        return StreamingResponse(pieces(), media_type="audio/pcm")

    app = Starlette(routes=[
        Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
        Route("/v1/audio/speech", speech, methods=["POST"]),
    ])
    app.state.requests = requests
    return app


class SpeechServer:
    def __init__(self, asr, tts) -> None:
        self.port = free_port()
        self.app = speech_app(asr, tts)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="speech-server", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[str]:
        return self.app.state.requests

    def __enter__(self) -> SpeechServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the speech server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
