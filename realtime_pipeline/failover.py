"""One LLM engine falling back to another: a remote model, answered for by the local one when it is
slow or down (the local + cloud hybrid).

:class:`FailoverEngine` asks the primary first. The fallback answers the turn when:

* the primary gives no first piece within ``first_token_timeout_s`` (1.5 s by default: the
  embedded SmolLM2-135M's first token takes ~0.1-0.3 s on 2 cores, so waiting longer for a
  remote model costs more than the local model's answer), or
* the primary fails before its first piece (unreachable, an HTTP error, the connection dropped),
  or gives no piece for ``stall_timeout_s`` (5 s) mid-reply.

Either way the stream yields :class:`~.llm_engine.EngineSwitched` (``restart=True``) first, then
the fallback's pieces. When the primary fails *mid-reply*:

* after text, the spoken part cannot be unsaid: the fallback *continues* the reply
  (``restart=False``): it is asked with the text so far as the assistant's message and a
  system note to go on from there, and its pieces are appended;
* after tool-call pieces only (nothing spoken yet), the calls are void: the fallback answers
  from the start (``restart=True``).

After a failure the primary is skipped for ``retry_primary_after_s`` (the fallback answers at
once, no budget spent on a server that is down), then tried again: :class:`PrimaryHealth`, a pure
state machine on an injectable clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from .cancellation import CancelToken
from .llm_engine import (
    EngineSwitched,
    LLMEngine,
    LLMEngineError,
    LLMPiece,
    LLMRequest,
    Messages,
    PromptTokens,
    TextPiece,
)

log = logging.getLogger(__name__)

#: Reasons an EngineSwitched gives (what the trace and the conversation event say).
NO_FIRST_TOKEN = "no first token"
PRIMARY_FAILED = "primary failed"
PRIMARY_DOWN = "primary down"

#: What the fallback reads when it continues a reply the primary broke off.
CONTINUE_NOTE = "Your reply above was cut off. Continue it from where it stopped, without repeating it."


@dataclass
class PrimaryHealth:
    """Whether to ask the primary now: not for ``retry_after_s`` after it failed or was too slow."""

    retry_after_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    failed_at: float | None = None
    reason: str = ""

    def usable(self) -> bool:
        return self.failed_at is None or self.clock() - self.failed_at >= self.retry_after_s

    def failed(self, reason: str) -> None:
        self.failed_at, self.reason = self.clock(), reason

    def answered(self) -> None:
        self.failed_at, self.reason = None, ""


@dataclass
class FailoverEngine:
    """An :class:`~.llm_engine.LLMEngine` asking ``primary`` first and ``fallback`` when it is too
    slow or fails (see the module). The turn's trace and events name the engine that answered
    through the :class:`~.llm_engine.EngineSwitched` piece."""

    primary: LLMEngine
    fallback: LLMEngine
    first_token_timeout_s: float = 1.5
    #: After the first piece, the longest gap before the reply counts as broken off (a server
    #: frozen mid-reply; a killed one ends the stream at once). SmolLM2 on 2 cores writes a token
    #: every ~20-60 ms; a busy remote server's gaps are far below a second.
    stall_timeout_s: float = 5.0
    retry_primary_after_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    health: PrimaryHealth = field(init=False)
    #: The engine that answered the last generation (its label).
    answered_by: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.first_token_timeout_s <= 0 or self.stall_timeout_s <= 0:
            raise ValueError(f"first_token_timeout_s and stall_timeout_s must be positive, got {self.first_token_timeout_s}, {self.stall_timeout_s}")
        self.health = PrimaryHealth(self.retry_primary_after_s, self.clock)
        self._last: LLMEngine | None = None

    @property
    def label(self) -> str:
        return self.primary.label

    @property
    def max_tokens(self) -> int:
        return self.primary.max_tokens

    async def start(self) -> None:
        """Start both; a primary that cannot be reached fails here (a wrong URL is a mistake to
        show at once, not a reason to fall back for the whole session)."""
        await self.primary.start()  # first: a wrong URL fails before the local model loads
        await self.fallback.start()

    async def aclose(self) -> None:
        try:
            await self.primary.aclose()
        finally:
            await self.fallback.aclose()

    async def stream(self, request: LLMRequest, token: CancelToken) -> AsyncIterator[LLMPiece]:
        if token.cancelled:
            return
        if not self.health.usable():
            async for piece in self._fall_back(request, token, PRIMARY_DOWN + f" ({self.health.reason})", restart=True):
                yield piece
            return
        began = self.clock()
        pieces = self.primary.stream(request, token)
        spoken = ""
        first: LLMPiece | None = None
        reason: str | None = None
        try:
            try:
                with anyio.move_on_after(self.first_token_timeout_s) as waited:
                    first = await pieces.__anext__()
            except StopAsyncIteration:
                self._answered(self.primary)
                return
            except LLMEngineError as error:
                reason = f"{PRIMARY_FAILED}: {error}"
            if first is None and reason is None:
                if token.cancelled:
                    return
                assert waited.cancelled_caught
                reason = f"{NO_FIRST_TOKEN} within {self.first_token_timeout_s:g} s"
            if reason is None:
                assert first is not None
                self._answered(self.primary)
                yield first
                spoken += first.text if isinstance(first, TextPiece) else ""
                try:
                    while True:
                        piece = None
                        with anyio.move_on_after(self.stall_timeout_s):
                            try:
                                piece = await pieces.__anext__()
                            except StopAsyncIteration:
                                return
                        if piece is None:
                            if token.cancelled:
                                return
                            reason = f"{PRIMARY_FAILED} mid-reply: no piece for {self.stall_timeout_s:g} s"
                            break
                        if isinstance(piece, TextPiece):
                            spoken += piece.text
                        yield piece
                except LLMEngineError as error:
                    reason = f"{PRIMARY_FAILED} mid-reply: {error}"
        finally:
            with anyio.CancelScope(shield=True):
                await pieces.aclose()
        if token.cancelled:
            return
        log.warning("%s after %.2f s; %s answers", reason, self.clock() - began, self.fallback.label)
        self.health.failed(reason)
        if spoken:
            request = LLMRequest(
                [*request.messages, {"role": "assistant", "content": spoken}, {"role": "system", "content": CONTINUE_NOTE}],
                request.tools, request.tool_choice, request.max_tokens, request.temperature,
            )
        async for piece in self._fall_back(request, token, reason, restart=not spoken):
            yield piece

    async def _fall_back(self, request: LLMRequest, token: CancelToken, reason: str, *, restart: bool) -> AsyncIterator[LLMPiece]:
        self._answered(self.fallback)
        yield EngineSwitched(self.fallback.label, reason, restart)
        pieces = self.fallback.stream(request, token)
        try:
            async for piece in pieces:
                yield piece
        finally:
            with anyio.CancelScope(shield=True):
                await pieces.aclose()

    def _answered(self, engine: LLMEngine) -> None:
        self._last = engine
        self.answered_by = engine.label
        if engine is self.primary:
            self.health.answered()

    # -- the rest of the protocol: the safer of the two ---------------------------------------
    def check_tools(self, tools: Sequence[Any]) -> None:
        """Both must be able to call every tool (the fallback may answer any turn)."""
        for engine in (self.primary, self.fallback):
            check = getattr(engine, "check_tools", None)
            if check is not None:
                check(tools)

    def count_tokens(self, text: str) -> int:
        return max(self.primary.count_tokens(text), self.fallback.count_tokens(text))

    def prompt_budget_tokens(self, max_tokens: int | None, tools: Sequence[Any]) -> int | None:
        """The smaller budget: the history must fit whichever engine answers."""
        budgets = [b for b in (self.primary.prompt_budget_tokens(max_tokens, tools), self.fallback.prompt_budget_tokens(max_tokens, tools)) if b is not None]
        return min(budgets) if budgets else None

    async def end_of_turn_probability(self, messages: Messages) -> float | None:
        """The primary's, else the fallback's (a local model scores; a remote one usually cannot)."""
        probability = await self.primary.end_of_turn_probability(messages)
        return probability if probability is not None else await self.fallback.end_of_turn_probability(messages)

    def prompt_tokens(self) -> PromptTokens | None:
        return None if self._last is None else self._last.prompt_tokens()
