"""Helpers for the server tests: strict validation against the SDK's models, a running server, a client."""

from __future__ import annotations

import base64
import json
import threading
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import numpy as np
import pydantic
import uvicorn
from conftest import SPEECH_DIR
from openai.types.beta.realtime import realtime_server_event as beta_events
from openai.types.realtime import realtime_server_event as ga_events

from realtime_pipeline.audio import read_wav, resample
from realtime_pipeline.server import Engines, ServerOptions, create_app, uvicorn_config
from realtime_pipeline.server.app import free_port


def _event_classes(union_alias: Any) -> dict[str, type[pydantic.BaseModel]]:
    union = typing.get_args(union_alias)[0]
    return {typing.get_args(cls.model_fields["type"].annotation)[0]: cls for cls in typing.get_args(union)}


EVENT_CLASSES = {"beta": _event_classes(beta_events.RealtimeServerEvent), "ga": _event_classes(ga_events.RealtimeServerEvent)}

#: The same event in each dialect.
NAMES = {
    "audio_delta": {"beta": "response.audio.delta", "ga": "response.output_audio.delta"},
    "audio_done": {"beta": "response.audio.done", "ga": "response.output_audio.done"},
    "transcript_delta": {"beta": "response.audio_transcript.delta", "ga": "response.output_audio_transcript.delta"},
    "transcript_done": {"beta": "response.audio_transcript.done", "ga": "response.output_audio_transcript.done"},
    "text_delta": {"beta": "response.text.delta", "ga": "response.output_text.delta"},
    "text_done": {"beta": "response.text.done", "ga": "response.output_text.done"},
    "item_added": {"beta": "conversation.item.created", "ga": "conversation.item.added"},
}


def _no_extra_fields(value: Any, path: str = "event") -> None:
    """Strict validation still lets unknown fields through (the SDK models allow extras): refuse them."""
    if isinstance(value, pydantic.BaseModel):
        extra = value.model_extra or {}
        assert not extra, f"{path} has fields the SDK model does not define: {sorted(extra)}"
        for name in type(value).model_fields:
            _no_extra_fields(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, (list, tuple)):
        for index, element in enumerate(value):
            _no_extra_fields(element, f"{path}[{index}]")


def validate_event(data: dict[str, Any], dialect: str) -> pydantic.BaseModel:
    """Validate a server event strictly against the exact SDK class for its type in ``dialect``."""
    classes = EVENT_CLASSES[dialect]
    assert data.get("type") in classes, f"{data.get('type')!r} is not a {dialect} server event"
    model = classes[data["type"]].model_validate(data, strict=True)
    _no_extra_fields(model)
    return model


class RunningServer:
    """A real server (uvicorn in a thread, its own event loop) on 127.0.0.1 and a free port."""

    def __init__(self, engines: Engines, options: ServerOptions, **config: Any) -> None:
        """``config``: more uvicorn settings (``ssl_certfile``/``ssl_keyfile`` serve wss://)."""
        self.port = free_port()
        self.scheme = "wss" if config.get("ssl_certfile") else "ws"
        self.server = uvicorn.Server(uvicorn_config(create_app(engines, options), "127.0.0.1", self.port, **config))
        self.thread = threading.Thread(target=self.server.run, name="realtime-server", daemon=True)

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> RunningServer:
        self.thread.start()
        for _ in range(600):
            if self.server.started:
                return self
            if not self.thread.is_alive():
                raise RuntimeError("the server thread died while starting")
            threading.Event().wait(0.05)
        raise RuntimeError("the server did not start within 30 s")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the server did not stop"


@contextmanager
def running_server(engines: Engines, options: ServerOptions) -> Iterator[RunningServer]:
    with RunningServer(engines, options) as server:
        yield server


def speech_24k(name: str) -> np.ndarray:
    samples, rate = read_wav(SPEECH_DIR / name)
    return resample(samples, rate, 24_000)


def pcm16_chunks(samples: np.ndarray, chunk_ms: int = 100, rate_hz: int = 24_000) -> list[str]:
    step = rate_hz * chunk_ms // 1000
    return [base64.b64encode(samples[i : i + step].astype("<i2").tobytes()).decode() for i in range(0, len(samples), step)]


class Client:
    """An SDK connection whose every received event is validated strictly and recorded."""

    def __init__(self, connection: Any, dialect: str) -> None:
        self.connection = connection
        self.dialect = dialect
        self.events: list[dict[str, Any]] = []

    def name(self, key: str) -> str:
        return NAMES[key][self.dialect]

    async def send(self, event: dict[str, Any]) -> None:
        await self.connection.send(event)

    async def send_raw(self, text: str) -> None:
        await self.connection.send_raw(text)

    async def next(self, timeout_s: float = 120.0) -> dict[str, Any]:
        with anyio.fail_after(timeout_s):
            raw = await self.connection.recv_bytes()
        data = json.loads(raw)
        validate_event(data, self.dialect)
        parsed = self.connection.parse_event(raw)  # and the SDK's own parser gives its model class
        assert type(parsed).__name__ == type(validate_event(data, self.dialect)).__name__
        self.events.append(data)
        return data

    async def until(self, event_type: str, timeout_s: float = 120.0) -> dict[str, Any]:
        """Receive until an event of ``event_type`` (every event on the way is kept in ``events``)."""
        with anyio.fail_after(timeout_s):
            while True:
                event = await self.next(timeout_s)
                if event["type"] == event_type:
                    return event
                assert event["type"] != "error", f"unexpected error while waiting for {event_type}: {event}"

    async def append_audio(self, samples: np.ndarray, *, trailing_silence_ms: int = 1200, realtime: bool = False) -> None:
        """Append 24 kHz speech with 300 ms of silence before and ``trailing_silence_ms`` after;
        ``realtime``: paced like a microphone (each chunk when its audio would have been heard)."""
        silence = np.zeros(24 * trailing_silence_ms, dtype=np.int16)
        began, sent_s = anyio.current_time(), 0.0
        for chunk in pcm16_chunks(np.concatenate([np.zeros(24 * 300, dtype=np.int16), samples, silence])):
            await self.send({"type": "input_audio_buffer.append", "audio": chunk})
            if realtime:
                sent_s += len(base64.b64decode(chunk)) / 2 / 24_000
                await anyio.sleep(max(0.0, began + sent_s - anyio.current_time()))

    def since(self, start: int) -> list[dict[str, Any]]:
        return self.events[start:]


def types_of(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


class RawClient(Client):
    """A plain ``websockets`` connection (a browser-style client: no SDK), validated the same way."""

    async def send(self, event: dict[str, Any]) -> None:
        await self.connection.send(json.dumps(event))

    async def send_raw(self, text: str) -> None:
        await self.connection.send(text)

    async def next(self, timeout_s: float = 120.0) -> dict[str, Any]:
        with anyio.fail_after(timeout_s):
            raw = await self.connection.recv()
        data = json.loads(raw)
        validate_event(data, self.dialect)
        self.events.append(data)
        return data


def self_signed_certificate(directory: Any) -> tuple[str, str]:
    """A throwaway certificate for 127.0.0.1 (openssl CLI): (certfile, keyfile)."""
    import subprocess

    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def heard_as(transcript: str, reference: str) -> bool:
    """Whisper tiny.en on 24 kHz-resampled speech: at most a third of the words wrong."""
    import jiwer
    from conftest import normalize_text

    return jiwer.wer(reference, normalize_text(transcript)) <= 0.34
