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
import json
import logging
import socket
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from .engines import Engines
from .protocol import Dialect, event_id
from .session import RealtimeSession, SessionOptions

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
#: Larger than one 15 MiB append in base64, so an oversized append gets an error event, not a closed socket.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024


#: Sessions served at once by default. Measured on 2 cores (benchmarks/server_load.py, first
#: audio p50 from the end of speech): 0.93 s with 1 session, x1.11 with 2, x1.44 with 4, x2.07
#: with 6, x2.83 with 8; past 4 every session would slow beyond 2x, so a fifth is refused.
DEFAULT_MAX_SESSIONS = 4
#: WebSocket close code for a refused session: "Try Again Later" (RFC 6455 registry).
CLOSE_TRY_AGAIN_LATER = 1013


@dataclass(frozen=True)
class ServerOptions:
    """``max_sessions``: sessions served at once (None: no limit); more are refused with a
    ``session_limit_reached`` error event and close code 1013."""

    api_key: str | None = None
    session: SessionOptions = field(default_factory=SessionOptions)
    max_sessions: int | None = DEFAULT_MAX_SESSIONS


@dataclass
class Admission:
    """How many sessions run, against the limit (one event loop: no lock needed)."""

    limit: int | None
    active: int = 0
    refused: int = 0

    def enter(self) -> bool:
        if self.limit is not None and self.active >= self.limit:
            self.refused += 1
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1

    def rate_limit(self) -> dict[str, object] | None:
        """Sessions as the Realtime API's ``requests`` rate limit (None: unlimited)."""
        if self.limit is None:
            return None
        return {"name": "requests", "limit": self.limit, "remaining": max(0, self.limit - self.active), "reset_seconds": 0.0}


def session_limit_message(limit: int) -> str:
    return f"the server is serving its limit of {limit} sessions at once; try again later"


def session_limit_error(limit: int) -> str:
    return json.dumps({"type": "error", "event_id": event_id(), "error": {
        "type": "server_error", "code": "session_limit_reached", "param": None, "event_id": None,
        "message": session_limit_message(limit),
    }})


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
    admission = Admission(options.max_sessions)

    async def realtime(websocket: WebSocket) -> None:
        if not authorized(websocket, options.api_key):
            await websocket.close(code=1008, reason="invalid API key")
            return
        await websocket.accept(subprotocol=selected_subprotocol(websocket))
        if not admission.enter():  # accepted first: a browser cannot read a refused handshake's status
            log.warning("session refused: %d sessions already (the limit)", admission.active)
            try:
                await websocket.send_text(session_limit_error(admission.limit or 0))
                await websocket.close(code=CLOSE_TRY_AGAIN_LATER, reason="session limit reached")
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass  # the client left already
            return
        try:
            await serve_session(websocket)
        finally:
            admission.leave()

    async def serve_session(websocket: WebSocket) -> None:

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
            model=websocket.query_params.get("model"), options=options.session, rate_limit=admission.rate_limit,
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

    webrtc, lifespan = webrtc_routes(engines, options, admission)  # a call takes a session slot too
    app = Starlette(routes=routes + webrtc, lifespan=lifespan)
    app.state.admission = admission
    return app


def uvicorn_config(app: Starlette, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, **kwargs: object) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, ws="websockets-sansio", ws_max_size=MAX_MESSAGE_BYTES,
        ws_ping_interval=None, lifespan="on", log_level=kwargs.pop("log_level", "warning"), **kwargs,  # type: ignore[arg-type]
    )


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
