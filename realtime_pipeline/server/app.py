"""The ASGI app (Starlette) and its runner (uvicorn).

WebSocket at ``/v1/realtime`` and ``/realtime`` (``?model=`` is accepted and
reported in the session). The dialect is per connection: ``OpenAI-Beta:
realtime=v1`` selects beta, anything else GA. With an API key configured,
connections must send ``Authorization: Bearer <key>`` (what the SDK sends).

Browsers cannot set headers on a WebSocket, so both also come as subprotocols,
as OpenAI's service takes them: ``realtime`` (selected in the answer, or a
WHATWG WebSocket refuses the connection), ``openai-insecure-api-key.<key>``
and ``openai-beta.realtime-v1``.
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


#: Subprotocols of a browser-style client (the WebSocket API cannot send headers).
REALTIME_SUBPROTOCOL = "realtime"
API_KEY_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"


def subprotocols_of(websocket: WebSocket) -> list[str]:
    return [str(name).strip() for name in websocket.scope.get("subprotocols", [])]


def dialect_of(websocket: WebSocket) -> Dialect:
    beta = websocket.headers.get("openai-beta", "")
    if "realtime=v1" in beta.replace(" ", "") or BETA_SUBPROTOCOL in subprotocols_of(websocket):
        return Dialect.BETA
    return Dialect.GA


def presented_keys(websocket: WebSocket) -> list[str]:
    """The API keys the client sent: ``Authorization: Bearer`` and/or the key subprotocol."""
    keys = []
    scheme, _, token = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        keys.append(token.strip())
    keys += [name[len(API_KEY_SUBPROTOCOL_PREFIX):] for name in subprotocols_of(websocket) if name.startswith(API_KEY_SUBPROTOCOL_PREFIX)]
    return keys


def authorized(websocket: WebSocket, api_key: str | None) -> bool:
    if not api_key:
        return True
    return any(hmac.compare_digest(key.encode(), api_key.encode()) for key in presented_keys(websocket))


def selected_subprotocol(websocket: WebSocket) -> str | None:
    """``realtime`` if the client offered it (a WHATWG WebSocket requires one of its offers back)."""
    return REALTIME_SUBPROTOCOL if REALTIME_SUBPROTOCOL in subprotocols_of(websocket) else None


def create_app(engines: Engines, options: ServerOptions | None = None) -> Starlette:
    """The app; ``engines`` must be loaded (see :meth:`Engines.load`)."""
    options = options or ServerOptions()

    async def realtime(websocket: WebSocket) -> None:
        if not authorized(websocket, options.api_key):
            await websocket.close(code=1008, reason="invalid API key")
            return
        await websocket.accept(subprotocol=selected_subprotocol(websocket))

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

    return Starlette(routes=[
        WebSocketRoute("/v1/realtime", realtime),
        WebSocketRoute("/realtime", realtime),
        Route("/health", health),
    ])


def uvicorn_config(app: Starlette, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, **kwargs: object) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, ws="websockets-sansio", ws_max_size=MAX_MESSAGE_BYTES,
        ws_ping_interval=None, lifespan="off", log_level=kwargs.pop("log_level", "warning"), **kwargs,  # type: ignore[arg-type]
    )


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
