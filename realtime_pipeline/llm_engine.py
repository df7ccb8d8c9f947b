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

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Union, runtime_checkable

from .cancellation import CancelToken
from .tools import ToolChoice, ToolRegistry

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
