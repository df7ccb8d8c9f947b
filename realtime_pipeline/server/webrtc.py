"""WebRTC signaling as in OpenAI's Realtime WebRTC flow, and the web page at ``/``.

- ``POST /v1/realtime/calls``: ``multipart/form-data`` with ``sdp`` and an
  optional ``session`` JSON (what ``client.realtime.calls.create(sdp=...,
  session=...)`` sends), or a raw ``application/sdp`` body. Answers ``201``
  with the SDP answer and ``Location: /v1/realtime/calls/{call_id}``; GA events.
- ``POST /v1/realtime?model=...`` with an ``application/sdp`` body: the beta
  form (beta events).
- ``POST /v1/realtime/calls/{call_id}/hangup``: ends a call (``calls.hangup``).
- ``GET /``: the page (``web/``: one HTML, one JS, one CSS file, no build step).

A call is a session: it takes a slot of the server's ``--max-sessions`` from
the offer to the hang-up, and a call beyond the limit is refused with ``429``
(``session_limit_reached``, the WebSocket's error).

The peer itself is :mod:`.rtc_call` (aiortc, the optional ``webrtc`` extra);
without it the signaling routes answer 501 and say what to install.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .protocol import Dialect, ProtocolError

if TYPE_CHECKING:
    from .app import Admission, ServerOptions
    from .engines import Engines
    from .rtc_call import Call

log = logging.getLogger(__name__)

#: An SDP offer is a few kB; a form with a session object a little more.
MAX_OFFER_BYTES = 256 * 1024
WEB_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}


def error_response(status: int, message: str, *, code: str, param: str | None = None,
                   type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> JSONResponse:
    """The OpenAI REST error shape (the SDK raises BadRequestError, AuthenticationError, RateLimitError... from it)."""
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}}, status_code=status,
                        headers=headers)


async def read_offer(request: Request) -> tuple[str, dict[str, Any] | None]:
    """The SDP offer and the optional session object of a call request (ProtocolError if malformed)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_OFFER_BYTES:
        raise ProtocolError(f"the request is larger than {MAX_OFFER_BYTES} bytes", code="request_too_large")
    session: dict[str, Any] | None = None
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=2, max_fields=4, max_part_size=MAX_OFFER_BYTES)
        except Exception as error:  # starlette's MultiPartException / python-multipart's parse errors
            raise ProtocolError(f"the multipart body could not be parsed: {error}", code="invalid_request") from None
        sdp = await _form_text(form.get("sdp"))
        if sdp is None:
            raise ProtocolError("missing required parameter 'sdp'", code="missing_required_parameter", param="sdp")
        raw_session = await _form_text(form.get("session"))
        if raw_session is not None:
            try:
                session = json.loads(raw_session)
            except ValueError as error:
                raise ProtocolError(f"session is not valid JSON ({error})", code="invalid_json", param="session") from None
            if not isinstance(session, dict):
                raise ProtocolError("session must be a JSON object", code="invalid_value", param="session")
    elif content_type in ("application/sdp", "text/plain", ""):
        sdp = (await request.body()).decode("utf-8", errors="replace")
    else:
        raise ProtocolError(f"unsupported content type {content_type!r}: send application/sdp or multipart/form-data "
                            "with an 'sdp' field", code="unsupported_content_type")
    if not sdp.strip():
        raise ProtocolError("missing required parameter 'sdp' (the body is empty)", code="missing_required_parameter", param="sdp")
    if not sdp.lstrip().startswith("v=0"):
        raise ProtocolError("sdp is not an SDP offer (it must start with 'v=0')", code="invalid_offer", param="sdp")
    return sdp.replace("\r\n", "\n").replace("\n", "\r\n"), session


async def _form_text(value: str | UploadFile | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return (await value.read()).decode("utf-8", errors="replace")


class CallRegistry:
    """The calls in progress; the app's lifespan hangs them all up when the server stops."""

    def __init__(self, engines: Engines, options: ServerOptions, admission: Admission) -> None:
        self.engines = engines
        self.options = options
        self.admission = admission
        self.calls: dict[str, Call] = {}

    async def create(self, request: Request, dialect: Dialect) -> Response:
        from .app import authorized, session_limit_message  # the WebSocket's rules; imported here: app imports this module

        if not authorized(request, self.options.api_key):  # type: ignore[arg-type]
            return error_response(401, "invalid API key: send 'Authorization: Bearer KEY' with the server's key",
                                  code="invalid_api_key")
        try:
            from .rtc_call import Call, WebRTCSession, parse_session_config
        except ImportError as error:
            return error_response(501, f"WebRTC needs the webrtc extra: pip install 'realtime_pipeline[webrtc]' ({error})",
                                  code="webrtc_unavailable", type="server_error")
        try:
            sdp, spec = await read_offer(request)
        except ProtocolError as error:
            return error_response(400, error.message, code=error.code, param=error.param)
        if not self.admission.enter():
            log.warning("call refused: %d sessions already (the limit)", self.admission.active)
            return error_response(429, session_limit_message(self.admission.limit or 0), code="session_limit_reached",
                                  type="server_error", headers={"Retry-After": "1"})
        call: Call | None = None
        try:
            model = request.query_params.get("model")
            if spec is not None:
                if spec.get("type", "realtime") != "realtime":
                    raise ProtocolError("only realtime sessions are served (not transcription)", code="invalid_value", param="session.type")
                if isinstance(spec.get("model"), str):
                    model = spec["model"]
            latency = request.query_params.get("latency", "").lower() in ("1", "true", "yes")
            call = Call(self._closed)
            call.session = WebRTCSession(self.engines, dialect, call.send_json, model=model, options=self.options.session,
                                         latency_events=latency, rate_limit=self.admission.rate_limit)
            if spec is not None:
                parse_session_config(call.session, {k: v for k, v in spec.items() if k != "model"})
            server = request.scope.get("server")
            answer = await call.answer(sdp, server[0] if server else None)
        except BaseException as error:  # the call never started: its slot is free again (re-raised unless a 400)
            self.admission.leave()
            if call is not None:
                await call.pc.close()
            if isinstance(error, ProtocolError):
                return error_response(400, error.message, code=error.code, param=error.param)
            raise
        self.calls[call.id] = call
        call.start()
        return Response(answer, status_code=201, media_type="application/sdp",
                        headers={"Location": f"/v1/realtime/calls/{call.id}"})

    def _closed(self, call: Call) -> None:
        """A started call ended, whatever way: its session slot is free."""
        self.calls.pop(call.id, None)
        self.admission.leave()

    async def hangup(self, request: Request) -> Response:
        from .app import authorized

        if not authorized(request, self.options.api_key):  # type: ignore[arg-type]
            return error_response(401, "invalid API key", code="invalid_api_key")
        call = self.calls.get(request.path_params["call_id"])
        if call is None:
            return error_response(404, f"no call {request.path_params['call_id']!r} in progress", code="call_not_found", param="call_id")
        call.hang_up()
        if call.task is not None:
            await call.task
        return Response(status_code=200)

    async def close_all(self) -> None:
        calls = list(self.calls.values())
        for call in calls:
            call.hang_up()
        for call in calls:
            if call.task is not None:
                await call.task


def _dialect(request: Request, default: Dialect) -> Dialect:
    beta = request.headers.get("openai-beta", "").replace(" ", "")
    return Dialect.BETA if "realtime=v1" in beta else default


def page_file(name: str) -> bytes:
    return resources.files("realtime_pipeline.server").joinpath("web", name).read_bytes()


def webrtc_routes(engines: Engines, options: ServerOptions, admission: Admission) -> tuple[list[Route], Callable[[Starlette], Any]]:
    """The signaling and page routes, and the lifespan that hangs up every call at shutdown."""
    registry = CallRegistry(engines, options, admission)

    async def calls(request: Request) -> Response:
        return await registry.create(request, _dialect(request, Dialect.GA))

    async def beta_call(request: Request) -> Response:
        return await registry.create(request, _dialect(request, Dialect.BETA))

    async def page(request: Request) -> Response:
        name = request.path_params.get("name", "index.html")
        if name not in WEB_FILES:
            return error_response(404, f"no such file {name!r}", code="not_found")
        return Response(page_file(name), media_type=WEB_FILES[name], headers={"Cache-Control": "no-cache"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.webrtc_calls = registry
        yield
        await registry.close_all()

    routes = [
        Route("/v1/realtime/calls", calls, methods=["POST"]),
        Route("/v1/realtime/calls/{call_id}/hangup", registry.hangup, methods=["POST"]),
        Route("/v1/realtime", beta_call, methods=["POST"]),
        Route("/realtime", beta_call, methods=["POST"]),
        Route("/", page, methods=["GET"]),
        Route("/{name:str}", page, methods=["GET"]),
    ]
    return routes, lifespan
