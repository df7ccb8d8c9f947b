"""The ASGI app (Starlette) and its runner (uvicorn).

WebSocket at ``/v1/realtime`` and ``/realtime`` (``?model=`` is accepted and
reported in the session). The dialect is per connection: ``OpenAI-Beta:
realtime=v1`` selects beta, anything else GA. With an API key configured,
connections must send ``Authorization: Bearer <key>`` (what the SDK sends).
"""

from __future__ import annotations

import hmac
import logging
import socket
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from .engines import Engines
from .protocol import Dialect
from .session import RealtimeSession, SessionOptions

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
#: Larger than one 15 MiB append in base64, so an oversized append gets an error event, not a closed socket.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class ServerOptions:
    api_key: str | None = None
    session: SessionOptions = field(default_factory=SessionOptions)


def dialect_of(websocket: WebSocket) -> Dialect:
    beta = websocket.headers.get("openai-beta", "")
    return Dialect.BETA if "realtime=v1" in beta.replace(" ", "") else Dialect.GA


def authorized(websocket: WebSocket, api_key: str | None) -> bool:
    if not api_key:
        return True
    header = websocket.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


def create_app(engines: Engines, options: ServerOptions | None = None) -> Starlette:
    """The app; ``engines`` must be loaded (see :meth:`Engines.load`)."""
    options = options or ServerOptions()

    async def realtime(websocket: WebSocket) -> None:
        if not authorized(websocket, options.api_key):
            await websocket.close(code=1008, reason="invalid API key")
            return
        await websocket.accept()

        async def send_json(text: str) -> bool:
            try:
                await websocket.send_text(text)
                return True
            except (WebSocketDisconnect, RuntimeError, OSError):  # the client went away mid-send
                return False

        async def receive_text() -> str | None:
            try:
                message = await websocket.receive()
            except (WebSocketDisconnect, RuntimeError, OSError):  # the connection broke
                return None
            if message["type"] == "websocket.disconnect":
                return None
            if message.get("text") is not None:
                return message["text"]
            return (message.get("bytes") or b"").decode("utf-8", errors="replace")

        session = RealtimeSession(
            engines, dialect_of(websocket), send_json,
            model=websocket.query_params.get("model"), options=options.session,
        )
        log.info("session %s opened (%s)", session.id, session.dialect.value)
        await session.serve(receive_text)
        log.info("session %s closed", session.id)
        if session.failed:
            try:
                await websocket.close(code=1011, reason="pipeline failed")
            except (RuntimeError, OSError):
                pass  # already closed by the client

    async def health(request: object) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    routes = [
        WebSocketRoute("/v1/realtime", realtime),
        WebSocketRoute("/realtime", realtime),
        Route("/health", health),
    ]

    # -- WebRTC calls and the web page (docs/webrtc.md, realtime_pipeline/server/webrtc.py) --
    # POST /v1/realtime/calls, POST /v1/realtime?model= (application/sdp), GET / (the page);
    # the lifespan hangs up the calls in progress when the server stops.
    from .webrtc import webrtc_routes

    webrtc, lifespan = webrtc_routes(engines, options)
    return Starlette(routes=routes + webrtc, lifespan=lifespan)


def uvicorn_config(app: Starlette, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, **kwargs: object) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, ws="websockets-sansio", ws_max_size=MAX_MESSAGE_BYTES,
        ws_ping_interval=None, lifespan="on", log_level=kwargs.pop("log_level", "warning"), **kwargs,  # type: ignore[arg-type]
    )


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
