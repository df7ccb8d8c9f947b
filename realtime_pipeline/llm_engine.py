"""The LLM engine protocol: what the :class:`~.responder.Responder` needs of a language model.

Shaped like LiveKit's ``llm_node``: given the chat messages, the tools and the settings of
one generation, an async stream of text pieces and tool-call pieces. Everything else (which
turn to answer, speculation, superseding, running the tools or handing them to a client,
the history) is the responder's, so an engine is only a model: the embedded llama.cpp one
(:class:`~.stages.llm.LlamaEngine`, which keeps its tool grammars inside), any
OpenAI-compatible Chat Completions server (:class:`~.stages.openai_llm.OpenAIEngine`), or
one engine falling back to another.

Contract of :meth:`LLMEngine.stream`:

* One generation answers with text (:class:`TextPiece`) or with tool calls
  (:class:`ToolCallPiece`), never with both: a responder that gets calls runs them and asks
  again with their results in ``messages``.
* The first piece of each call carries its ``name`` (and its ``call_id`` if the engine has
  one); every piece may carry ``arguments`` text to append. The arguments of a finished call
  are one JSON object (an engine that cannot guarantee it still ends the call; the responder
  validates).
* ``tool_choice`` is honoured by the engine: ``none`` never calls, ``required`` always calls,
  a named choice calls that tool. ``auto`` lets the model decide.
* The stream stops between tokens once ``token`` is cancelled, and stops for good when the
  consumer closes it (``aclose``), freeing whatever it holds (a worker thread, an HTTP stream).
* A failure raises :class:`LLMEngineError` (naming the model or URL), never a bare transport
  error, so a responder can fail over or report it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol, Union, runtime_checkable

import anyio

from .cancellation import CancelToken
from .history_window import estimate_tokens
from .priority import run_model
from .tools import Tool, ToolChoice, ToolRegistry

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]


class LLMEngineError(RuntimeError):
    """The engine could not answer (unreachable server, HTTP error, model failure); the message
    names the engine (URL, model file) and what went wrong."""


@dataclass(frozen=True)
class TextPiece:
    """A piece of the reply's text, as the model wrote it."""

    text: str


@dataclass(frozen=True)
class ToolCallPiece:
    """A piece of tool call number ``index`` of this generation (0 for the first): the first
    piece names the tool; each piece appends ``arguments`` (JSON text) to the call's."""

    index: int
    name: str | None = None
    arguments: str = ""
    call_id: str | None = None
    #: The call's arguments so far are void and start again with this piece (a second,
    #: bounded decoding pass after the first was cut off).
    restart: bool = False


@dataclass(frozen=True)
class EngineSwitched:
    """Not the model's output: from here on ``label`` answers this generation (a failover after
    ``reason``, e.g. no first token within the budget, or the primary failed). The responder
    writes it into the turn's trace and emits it as a conversation event; pieces before it
    are void only if ``restart`` (the new engine answers from the start)."""

    label: str
    reason: str
    restart: bool = True


LLMPiece = Union[TextPiece, ToolCallPiece, EngineSwitched]


@dataclass(frozen=True)
class LLMRequest:
    """One generation: the messages (Chat Completions form, ``tool_calls`` and ``tool`` messages
    included), the tools it may call under ``tool_choice``, and the sampling settings (None:
    the engine's default)."""

    messages: Messages
    tools: ToolRegistry = field(default_factory=ToolRegistry)
    tool_choice: ToolChoice = field(default_factory=lambda: ToolChoice("none"))
    max_tokens: int | None = None
    temperature: float | None = None


@dataclass
class PromptTokens:
    """One generation's prompt as the engine read it: ``cached`` tokens reused from its KV cache
    (``shifted`` of them kept by a context shift past trimmed history), ``evaluated`` read anew.
    ``measured`` is False when the engine cannot tell (a remote server that reports nothing)."""

    cached: int = 0
    evaluated: int = 0
    shifted: int = 0
    measured: bool = False

    @property
    def total(self) -> int:
        return self.cached + self.evaluated


@runtime_checkable
class LLMEngine(Protocol):
    """A language model as the responder uses it (see the module's contract)."""

    #: What the engine is, for traces, events and errors ("llama.cpp SmolLM2-135M…", a URL).
    label: str
    #: The reply's token cap when a request gives none.
    max_tokens: int

    async def start(self) -> None:
        """Load or connect, and fail now with a clear :class:`LLMEngineError` (or
        ``ModelNotFoundError``) rather than on the first turn. Safe to call again."""

    def stream(self, request: LLMRequest, token: CancelToken) -> AsyncIterator[LLMPiece]:
        """The generation's pieces (the module's contract)."""

    def check_tools(self, tools: Sequence[Tool]) -> None:
        """Raise :class:`~.tools.ToolError` now for a tool this engine cannot call (a schema its
        grammar converter rejects), rather than mid-conversation."""

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` for this model (an over-estimate when the engine cannot tokenize)."""

    def prompt_budget_tokens(self, max_tokens: int | None, tools: Sequence[Any]) -> int | None:
        """Tokens the system prompt and history may take with this reply cap and tool list
        (None: the history window's default budget)."""

    async def end_of_turn_probability(self, messages: Messages) -> float | None:
        """The probability that the user's last message ends their turn, or None if this engine
        cannot tell (the text end-of-turn model of :mod:`.turn_taking`)."""

    def prompt_tokens(self) -> PromptTokens | None:
        """The prompt of the last generation, if the engine reports it."""

    async def aclose(self) -> None:
        """Free the model or connections."""


#: A piece of :meth:`BlockingEngine.stream_arguments` that voids the arguments written so far.
RESTART = "\x00restart"


class BlockingEngine:
    """An :class:`LLMEngine` made of blocking model calls, for in-process models (llama.cpp).

    Subclasses write three blocking generators or functions (:meth:`stream_reply`,
    :meth:`choose_tool`, :meth:`stream_arguments`); this class runs them one piece per
    worker-thread hop (the response's token is checked between pieces, so a barge-in stops
    the model within one token) and settles ``tool_choice``: forced choices never ask the
    model, ``auto`` asks :meth:`choose_tool` for a tool name or "answer", ``required`` gets
    a tool whatever the model wrote. One call per generation (the responder asks again).
    """

    label = "blocking engine"
    max_tokens = 120

    async def start(self) -> None:
        return None

    # -- the blocking model calls (worker thread) ------------------------------------------
    def stream_reply(self, messages: Messages, token: CancelToken, *, max_tokens: int | None = None,
                     temperature: float | None = None) -> Iterator[str]:
        """Blocking generator of reply text pieces; stops between tokens once ``token`` is cancelled."""
        raise NotImplementedError

    def choose_tool(self, messages: Messages, tools: ToolRegistry, choice: ToolChoice, token: CancelToken) -> str | None:
        """Blocking: the model's pick, a tool name or None to answer (asked for ``auto``, and
        for ``required`` among several tools)."""
        raise NotImplementedError(f"{type(self).__name__} does not support tool calls")

    def stream_arguments(self, messages: Messages, tool: Tool, token: CancelToken) -> Iterator[str]:
        """Blocking generator of the call's JSON arguments text, piece by piece; a piece that is
        :data:`RESTART` voids the text so far (a second decoding pass follows)."""
        raise NotImplementedError(f"{type(self).__name__} does not support tool calls")

    def arguments_text(self, messages: Messages, tool: Tool, token: CancelToken) -> str:
        """Blocking: the call's whole arguments text (what :meth:`stream_arguments` spells out)."""
        text = ""
        for piece in self.stream_arguments(messages, tool, token):
            text = "" if piece == RESTART else text + piece
        return text

    def check_tools(self, tools: Sequence[Tool]) -> None:
        """Raise ToolError now for a tool this engine cannot call (not mid-conversation)."""

    def end_of_turn_probability_sync(self, messages: Messages) -> float | None:
        """Blocking :meth:`end_of_turn_probability`."""
        return None

    # -- the protocol ----------------------------------------------------------------------
    async def stream(self, request: LLMRequest, token: CancelToken) -> AsyncIterator[LLMPiece]:
        tool = await self._decide(request, token)
        if token.cancelled:
            return
        if tool is None:
            replies = self.stream_reply(request.messages, token, max_tokens=request.max_tokens, temperature=request.temperature)
            async with aclosing(_pieces(replies, token)) as texts:
                async for piece in texts:
                    yield TextPiece(piece)
            return
        yield ToolCallPiece(0, name=tool.name)
        async with aclosing(_pieces(self.stream_arguments(request.messages, tool, token), token)) as arguments:
            async for piece in arguments:
                if piece == RESTART:
                    yield ToolCallPiece(0, restart=True)
                else:
                    yield ToolCallPiece(0, arguments=piece)

    async def _decide(self, request: LLMRequest, token: CancelToken) -> Tool | None:
        registry, choice = request.tools, request.tool_choice
        if not len(registry) or choice.mode == "none":
            return None
        if choice.mode == "function":
            return registry[str(choice.name)]
        if choice.mode == "required" and len(registry) == 1:
            return registry[registry.names[0]]
        name = await run_model(self.choose_tool, request.messages, registry, choice, token)
        if name in registry:
            return registry[str(name)]
        if token.cancelled:
            return None
        if choice.mode == "required":  # the guarantee holds whatever the model wrote
            log.warning("the model chose %r under tool_choice='required'; calling %s", name, registry.names[0])
            return registry[registry.names[0]]
        if name is not None:
            log.warning("the model chose %r, which is no tool; answering instead", name)
        return None

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    def prompt_budget_tokens(self, max_tokens: int | None, tools: Sequence[Any]) -> int | None:
        return None

    async def end_of_turn_probability(self, messages: Messages) -> float | None:
        return await run_model(self.end_of_turn_probability_sync, messages)

    def prompt_tokens(self) -> PromptTokens | None:
        return None

    async def aclose(self) -> None:
        return None


async def _pieces(blocking: Iterator[str], token: CancelToken) -> AsyncIterator[str]:
    """The pieces of a blocking generator, one worker-thread hop each, until ``token`` is
    cancelled; the generator is closed (in its thread, shielded) however this one ends."""
    try:
        while not token.cancelled:
            piece = await run_model(next, blocking, None)
            if piece is None:
                return
            yield piece
    finally:
        with anyio.CancelScope(shield=True):
            await run_model(blocking.close)
