"""An LLM engine on any OpenAI-compatible Chat Completions server (llama.cpp's, vLLM, Ollama, a cloud API).

:class:`OpenAIEngine` speaks ``POST {base_url}/chat/completions`` with ``stream: true`` (server-sent
events) and native ``tools`` / ``tool_choice``. It runs on httpx2 (httpx's successor, the client the
``openai`` SDK itself runs on) rather than on the SDK: the SDK retries 5xx and 429 answers with
backoff (seconds a speaking user would wait) and has one overall timeout; here a retry happens only
before the first byte (the connection failed, or a proxy said 502/503/504), every read of the
stream is bounded by ``read_timeout_s`` (a server killed or frozen mid-reply ends the stream
promptly), and closing the stream closes its HTTP connection, which tells the server to stop.

What servers honour varies: ``python -m llama_cpp.server`` (llama-cpp-python 0.3.36) with a GGUF
chat template streams tool calls for a named ``tool_choice`` only (it ignores ``auto`` and
``required``: the model writes text); vLLM and the OpenAI API honour all four.

:class:`OpenAILLM` is the :class:`~..responder.Responder` on it: ``OpenAILLM(base_url, model)``
where a pipeline takes its LLM stage (``voice_pipeline(llm=...)``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from anyio.lowlevel import RunVar

from ..cancellation import CancelToken
from ..history_window import estimate_tokens
from ..llm_engine import LLMEngine, LLMEngineError, LLMPiece, LLMRequest, Messages, PromptTokens, TextPiece, ToolCallPiece
from ..responder import Responder, ToolsSpec
from ..tools import ToolChoice, ToolChoiceSpec

if TYPE_CHECKING:
    import httpx2 as httpx

log = logging.getLogger(__name__)

#: Environment variables read for the API key, first found wins (none: no key, for local servers).
API_KEY_ENV = ("REALTIME_PIPELINE_LLM_API_KEY", "OPENAI_API_KEY")
#: Answers worth one more try before the first byte: a proxy or a server still loading its model.
RETRY_STATUSES = frozenset({502, 503, 504})
#: Characters of an error answer's body quoted in the error.
BODY_EXCERPT_CHARS = 300
#: Prompt tokens kept free besides the reply and the history: the chat template's own tokens.
TEMPLATE_RESERVE_TOKENS = 64


def api_key_from_env() -> str | None:
    """The API key of :data:`API_KEY_ENV`, or None."""
    for name in API_KEY_ENV:
        value = os.environ.get(name)
        if value:
            return value
    return None


def tool_choice_payload(choice: ToolChoice) -> str | dict[str, Any]:
    """A :class:`ToolChoice` in the Chat Completions ``tool_choice`` form."""
    if choice.mode == "function":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


def excerpt(text: str, limit: int | None = None) -> str:
    """``text`` on one line, cut at ``limit`` (default :data:`BODY_EXCERPT_CHARS`) characters."""
    limit = BODY_EXCERPT_CHARS if limit is None else limit
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def wire_messages(messages: Messages) -> Messages:
    """The messages as every server takes them: an assistant message with tool calls and no text
    gets ``content: ""`` (llama-cpp-python's server refuses ``null``, the OpenAI API takes both)."""
    return [
        {**message, "content": ""} if message.get("role") == "assistant" and message.get("content") is None else message
        for message in messages
    ]


class OpenAIEngine:
    """:class:`~..llm_engine.LLMEngine` on an OpenAI-compatible Chat Completions endpoint.

    ``base_url`` is the API root, ``.../v1`` included (as the openai SDK takes it):
    ``http://127.0.0.1:8080/v1``. ``model`` None takes the first model the server lists.
    ``api_key`` None reads :data:`API_KEY_ENV`; without one no ``Authorization`` header is sent.
    ``context_tokens``: the model's context, if known, bounds the prompt's history (None: the
    history window's default budget). ``extra_body`` is merged into every request (server
    specific settings such as ``top_k`` or ``repeat_penalty``).

    Timeouts: ``connect_timeout_s`` per connection attempt, ``connect_retries`` more attempts
    (``retry_delay_s`` apart, doubling) while nothing was received; ``read_timeout_s`` for each
    read, the first token included, so a frozen server ends the stream with an
    :class:`LLMEngineError` after that long. 30 s: a request waits its turn at a busy server
    (8 sessions on one ``python -m llama_cpp.server``, which answers one request at a time,
    exceeded 10 s on a loaded 2-core machine); a killed server ends the stream at once (the
    connection closes), and a failover (:class:`~..failover.FailoverEngine`) gives up far
    sooner, on its first-token and stall budgets.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        max_tokens: int = 120,
        temperature: float | None = 0.3,
        top_p: float | None = None,
        context_tokens: int | None = None,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 30.0,
        connect_retries: int = 2,
        retry_delay_s: float = 0.2,
        extra_body: dict[str, Any] | None = None,
        report_usage: bool = True,
    ) -> None:
        """``report_usage``: ask for the prompt's token counts (``stream_options.include_usage``),
        read by :meth:`prompt_tokens`; turn it off for a server that rejects the field."""
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"the LLM base URL must start with http:// or https://, got {base_url!r}")
        if connect_retries < 0:
            raise ValueError(f"connect_retries must be 0 or more, got {connect_retries}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key if api_key is not None else api_key_from_env()
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.context_tokens = context_tokens
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.connect_retries = connect_retries
        self.retry_delay_s = retry_delay_s
        self.extra_body = dict(extra_body or {})
        self.report_usage = report_usage
        self.label = f"{self.base_url} ({model})" if model else self.base_url
        self._last_prompt: PromptTokens | None = None
        # One connection pool per event loop: the server's sessions run on another loop than the
        # one that started the engine, and httpx's connections belong to the loop that opened them.
        self._clients: RunVar[httpx.AsyncClient] = RunVar(f"openai-engine-{id(self)}")
        self._opened: list[httpx.AsyncClient] = []

    # -- connection -----------------------------------------------------------------------
    def _timeout(self) -> httpx.Timeout:
        import httpx2 as httpx

        return httpx.Timeout(connect=self.connect_timeout_s, read=self.read_timeout_s, write=self.read_timeout_s, pool=self.read_timeout_s)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _client(self) -> httpx.AsyncClient:
        try:
            return self._clients.get()
        except LookupError:
            pass
        try:
            import httpx2 as httpx
        except ImportError as error:
            raise LLMEngineError("OpenAIEngine needs httpx: pip install 'realtime_pipeline[remote]'") from error
        client = httpx.AsyncClient(timeout=self._timeout(), headers=self._headers())
        self._clients.set(client)
        self._opened.append(client)
        return client

    async def start(self) -> None:
        """Check that the server answers ``GET {base_url}/models`` (and pick the model if none was
        given); a wrong URL, port or key fails here with an error naming the URL."""
        import httpx2 as httpx

        url = f"{self.base_url}/models"
        try:
            answer = await self._client().get(url)
        except httpx.HTTPError as error:
            raise LLMEngineError(f"cannot reach the LLM server at {self.base_url}: {describe(error)} (check the base URL and that the server runs)") from error
        if answer.status_code >= 400:
            hint = {401: " (it needs an API key: --llm-api-key or $REALTIME_PIPELINE_LLM_API_KEY)",
                    404: " (is this an OpenAI-compatible API root? it usually ends in /v1)"}.get(answer.status_code, "")
            raise LLMEngineError(f"the LLM server at {url} answered HTTP {answer.status_code}: {excerpt(answer.text)}{hint}")
        try:
            listed = [str(entry["id"]) for entry in answer.json().get("data", [])]
        except (ValueError, AttributeError, KeyError, TypeError) as error:
            raise LLMEngineError(f"the LLM server at {url} did not answer with a model list: {excerpt(answer.text)}") from error
        if self.model is None:
            if not listed:
                raise LLMEngineError(f"the LLM server at {url} lists no model; name one (--llm-model-name)")
            self.model = listed[0]
            self.label = f"{self.base_url} ({self.model})"
        elif listed and self.model not in listed:
            log.warning("the LLM server at %s lists %s, not %r; asking for it anyway", url, listed, self.model)

    async def aclose(self) -> None:
        """Close the connection pools (those of loops that ended are dropped with them)."""
        opened, self._opened = self._opened, []
        for client in opened:
            try:
                await client.aclose()
            except RuntimeError:  # its event loop has ended: nothing left to close on it
                pass

    # -- generation -----------------------------------------------------------------------
    def payload(self, request: LLMRequest) -> dict[str, Any]:
        """The Chat Completions request body of ``request``."""
        body: dict[str, Any] = {
            "model": self.model or "default",
            "messages": wire_messages(request.messages),
            "stream": True,
            "max_tokens": request.max_tokens or self.max_tokens,
        }
        temperature = self.temperature if request.temperature is None else request.temperature
        if temperature is not None:
            body["temperature"] = temperature
        if self.top_p is not None:
            body["top_p"] = self.top_p
        if len(request.tools) and request.tool_choice.mode != "none":
            body["tools"] = request.tools.schemas()
            body["tool_choice"] = tool_choice_payload(request.tool_choice)
        if self.report_usage:
            body["stream_options"] = {"include_usage": True}
        body.update(self.extra_body)
        return body

    async def _open(self, body: dict[str, Any]) -> httpx.Response:
        """The streaming response, headers received; retried only while nothing was received."""
        import httpx2 as httpx

        client, url = self._client(), f"{self.base_url}/chat/completions"
        delay_s = self.retry_delay_s
        for attempt in range(self.connect_retries + 1):
            last = attempt == self.connect_retries
            try:
                response = await client.send(client.build_request("POST", url, json=body), stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as error:
                if last:
                    raise LLMEngineError(f"cannot reach the LLM server at {url} ({attempt + 1} attempts): {describe(error)}") from error
                log.info("LLM server at %s: %s; trying again in %.1f s", url, describe(error), delay_s)
            except httpx.HTTPError as error:
                raise LLMEngineError(f"the LLM server at {url} failed before answering: {describe(error)}") from error
            else:
                if response.status_code < 400:
                    return response
                try:
                    text = (await response.aread()).decode("utf-8", "replace")
                except httpx.HTTPError:
                    text = ""
                finally:
                    await response.aclose()
                if last or response.status_code not in RETRY_STATUSES:
                    raise LLMEngineError(f"the LLM server at {url} answered HTTP {response.status_code}: {excerpt(text) or '(no body)'}")
                log.info("LLM server at %s answered %d; trying again in %.1f s", url, response.status_code, delay_s)
            await anyio.sleep(delay_s)
            delay_s *= 2
        raise AssertionError("unreachable")

    async def stream(self, request: LLMRequest, token: CancelToken) -> AsyncIterator[LLMPiece]:
        """The reply's pieces (see :mod:`..llm_engine`): text deltas and tool-call deltas as the
        server streams them. Stops at once when ``token`` is cancelled, also while waiting for
        the server; closing the stream closes the HTTP response."""
        import httpx2 as httpx

        if token.cancelled:
            return
        self._last_prompt = None
        url = f"{self.base_url}/chat/completions"
        response: httpx.Response | None = None
        with token.scope():
            response = await self._open(self.payload(request))
        if token.cancelled:
            if response is not None:
                with anyio.CancelScope(shield=True):
                    await response.aclose()
            return
        assert response is not None
        spoke = calling = False
        named: set[int] = set()  # calls whose name was given (some servers repeat it on every delta)
        try:
            lines = response.aiter_lines()
            while True:
                line: str | None = None
                # The scope ends before each yield: a cancel scope must not span one.
                with token.scope():
                    try:
                        line = await lines.__anext__()
                    except StopAsyncIteration:
                        break
                    except httpx.HTTPError as error:
                        raise LLMEngineError(f"the LLM server at {url} broke off the reply: {describe(error)}") from error
                if token.cancelled or line is None:
                    return
                data = sse_data(line)
                if data is None:
                    continue
                if data == "[DONE]":
                    break
                for piece in self._pieces(data, url):
                    if isinstance(piece, TextPiece):
                        if calling or (not spoke and not piece.text.strip()):
                            continue  # text around tool calls (often a newline) is not a reply
                        spoke = True
                    else:
                        if spoke:
                            log.warning("%s wrote a tool call after reply text; the call is dropped", self.label)
                            continue
                        calling = True
                        if piece.index in named:
                            piece = ToolCallPiece(piece.index, arguments=piece.arguments)
                        elif piece.name is not None:
                            named.add(piece.index)
                    yield piece
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()

    def _pieces(self, data: str, url: str) -> list[LLMPiece]:
        try:
            chunk = json.loads(data)
        except ValueError as error:
            raise LLMEngineError(f"the LLM server at {url} sent an event that is not JSON: {excerpt(data)}") from error
        if not isinstance(chunk, dict):
            raise LLMEngineError(f"the LLM server at {url} sent an unexpected event: {excerpt(data)}")
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise LLMEngineError(f"the LLM server at {url} failed mid-reply: {excerpt(str(message))}")
        usage = chunk.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            details = usage.get("prompt_tokens_details") or {}
            cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
            self._last_prompt = PromptTokens(cached=cached, evaluated=usage["prompt_tokens"] - cached, measured=True)
        pieces: list[LLMPiece] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                pieces.append(TextPiece(str(delta["content"])))
            for call in delta.get("tool_calls") or []:
                function = call.get("function") or {}
                pieces.append(ToolCallPiece(
                    index=int(call.get("index", 0)), name=function.get("name") or None,
                    arguments=function.get("arguments") or "", call_id=call.get("id") or None,
                ))
        return pieces

    # -- the rest of the protocol ---------------------------------------------------------
    def check_tools(self, tools: Sequence[Any]) -> None:
        """Nothing to check here: the server validates the schemas (an error answer names it)."""

    def count_tokens(self, text: str) -> int:
        """An over-estimate (:func:`~..history_window.estimate_tokens`): the server's tokenizer
        is a round trip away, and the history window counts on every turn."""
        return estimate_tokens(text)

    def prompt_budget_tokens(self, max_tokens: int | None, tools: Sequence[Any]) -> int | None:
        """``context_tokens`` less the reply, the template and the tool list; None if unknown."""
        if self.context_tokens is None:
            return None
        reply = min(max_tokens or self.max_tokens, self.context_tokens // 4)
        listed = sum(estimate_tokens(json.dumps(getattr(tool, "schema", lambda: tool)(), default=str)) for tool in tools)
        return max(64, self.context_tokens - reply - TEMPLATE_RESERVE_TOKENS - listed)

    async def end_of_turn_probability(self, messages: Messages) -> float | None:
        """None: Chat Completions gives no probability of the end-of-turn token after the user's words."""
        return None

    def prompt_tokens(self) -> PromptTokens | None:
        """The last generation's prompt as the server reported it (``usage``), if it did."""
        return self._last_prompt


def sse_data(line: str) -> str | None:
    """The payload of a server-sent-events ``data:`` line (None for comments, other fields, blanks).

    Chat Completions servers send one JSON object per event on one ``data:`` line."""
    if not line.startswith("data:"):
        return None
    return line[5:].strip()


def describe(error: BaseException) -> str:
    """An httpx error as one line: its kind and message (some have an empty message)."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class OpenAILLM(Responder):
    """The :class:`~..responder.Responder` on an :class:`OpenAIEngine`: ``OpenAILLM(base_url, model)``
    wherever a pipeline takes its LLM stage (``voice_pipeline(llm=OpenAILLM(...))``).

    ``fallback``: an engine that answers when the server is slow or fails (the local model:
    ``LlamaEngine()``), through a :class:`~..failover.FailoverEngine` with
    ``first_token_timeout_s``; a refused connection then goes to the fallback at once
    (``connect_retries`` 0 unless given). ``engine_options`` are :class:`OpenAIEngine`'s
    (``api_key``, ``temperature``, ``read_timeout_s``...); the rest are the responder's.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        max_tokens: int = 120,
        tools: ToolsSpec = None,
        tool_choice: ToolChoiceSpec = "auto",
        followup_tool_choice: ToolChoiceSpec = "auto",
        max_tool_calls: int = 3,
        speculate: bool = True,
        score_end_of_turn: bool = True,
        fallback: LLMEngine | None = None,
        first_token_timeout_s: float = 1.5,
        **engine_options: Any,
    ) -> None:
        from ..failover import FailoverEngine

        if fallback is not None:
            engine_options.setdefault("connect_retries", 0)
        self.remote = OpenAIEngine(base_url, model, max_tokens=max_tokens, **engine_options)
        engine: LLMEngine = self.remote
        if fallback is not None:
            engine = FailoverEngine(self.remote, fallback, first_token_timeout_s=first_token_timeout_s)
        super().__init__(
            engine, max_tokens=max_tokens, tools=tools, tool_choice=tool_choice,
            followup_tool_choice=followup_tool_choice, max_tool_calls=max_tool_calls,
            speculate=speculate, score_end_of_turn=score_end_of_turn,
        )

    async def aclose(self) -> None:
        """Close the server connections (a local fallback keeps its model, as engines are shared)."""
        await self.engine.aclose()
