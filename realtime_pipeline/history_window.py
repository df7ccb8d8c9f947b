"""Which part of the history goes into the LLM's prompt: append-only, trimmed in one large step.

llama.cpp reuses its KV cache only for the part of the prompt that is unchanged since the last
generation. A window that slides by one exchange every turn changes the prompt right after the
system prompt, so every turn re-reads the whole history: on the 30-turn benchmark the old
16-message window made the LLM's first token take ~2 s from the 9th turn on (issue 11).

This window keeps the history append-only while the prompt fits its token budget. When it
would not, it drops the oldest messages in one step, down to ``keep_fraction`` of the budget,
and cuts only before a user message (never between a tool call and its result). So all turns
but the one after a trim evaluate only what is new; :class:`~.stages.llm.LlamaLLM` can even
keep the cached tokens of the messages that stay (its ``context_shift``).

The budget is in tokens of the model's context. The LLM stage supplies its tokenizer and its
context less the reply's tokens (:meth:`HistoryWindow.use_model`); without one, a cheap
over-estimate of the token count is used.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any]
#: Counts the tokens of a text (the LLM's tokenizer).
TokenCounter = Callable[[str], int]

#: Chat template tokens around each message (ChatML: ``<|im_start|>role\n`` … ``<|im_end|>\n``).
MESSAGE_OVERHEAD_TOKENS = 5
#: The budget when no LLM told the window its context: SmolLM2's 2048 less a 120-token reply
#: and the reserve :class:`~.stages.llm.LlamaLLM` keeps.
DEFAULT_BUDGET_TOKENS = 1760


def estimate_tokens(text: str) -> int:
    """An over-estimate for engines that cannot tokenize: 3 characters a token (English BPE
    vocabularies average about 4), so a trim comes early rather than the context overflowing."""
    return (len(text) + 2) // 3


@dataclass
class HistoryWindow:
    """The prompt's history: append-only up to ``budget_tokens``, then trimmed to ``keep_fraction`` of it.

    ``budget_tokens`` covers the system prompt and the history (None: the LLM's, else
    :data:`DEFAULT_BUDGET_TOKENS`). ``max_messages`` caps the history in messages too (trimmed
    the same way, to ``keep_fraction`` of it); ``count_tokens`` overrides the LLM's tokenizer.
    Settings given here win over what the LLM stage supplies.
    """

    budget_tokens: int | None = None
    keep_fraction: float = 0.5
    max_messages: int | None = None
    count_tokens: TokenCounter | None = None
    #: How many times the window dropped old messages.
    trims: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.keep_fraction < 1.0:
            raise ValueError(f"keep_fraction must be in [0, 1), got {self.keep_fraction}")
        if self.budget_tokens is not None and self.budget_tokens < 1:
            raise ValueError(f"budget_tokens must be at least 1, got {self.budget_tokens}")
        if self.max_messages is not None and self.max_messages < 0:
            raise ValueError(f"max_messages must be 0 or more, got {self.max_messages}")
        self._model_counter: TokenCounter | None = None
        self._model_budget: int | None = None
        # Items dropped from the front, by identity (kept alive here, so an id is never reused).
        self._dropped: dict[int, object] = {}
        self._counts: dict[str, int] = {}

    # -- settings -------------------------------------------------------------------------
    def use_model(self, count_tokens: TokenCounter | None, budget_tokens: int | None) -> None:
        """The LLM's tokenizer and prompt budget (used where this window has no setting of its own)."""
        if count_tokens is not self._model_counter:
            self._counts.clear()
        self._model_counter = count_tokens
        self._model_budget = budget_tokens

    @property
    def effective_budget_tokens(self) -> int:
        if self.budget_tokens is not None:
            return self.budget_tokens
        return self._model_budget if self._model_budget is not None else DEFAULT_BUDGET_TOKENS

    # -- counting -------------------------------------------------------------------------
    def message_tokens(self, message: Message) -> int:
        """Tokens of one chat message in the prompt (content, tool calls, template overhead)."""
        text = str(message.get("content") or "")
        if message.get("tool_calls"):
            text += json.dumps(message["tool_calls"])
        key = f"{message.get('role', '')}\n{text}"
        count = self._counts.get(key)
        if count is None:
            counter = self.count_tokens or self._model_counter or estimate_tokens
            count = counter(key) + MESSAGE_OVERHEAD_TOKENS
            if len(self._counts) > 4096:
                self._counts.clear()
            self._counts[key] = count
        return count

    def prompt_tokens(self, system: Message, history: Sequence[Message]) -> int:
        return self.message_tokens(system) + sum(self.message_tokens(m) for m in history)

    # -- the window -----------------------------------------------------------------------
    def select(self, system: Message, entries: Sequence[tuple[object, Message]]) -> list[Message]:
        """The history messages of ``entries`` ((history item, its message), oldest first) to prompt with.

        Items dropped by an earlier trim stay out; new items are appended. Over the budget (or
        ``max_messages``), the oldest kept items are dropped down to ``keep_fraction`` of it,
        cutting before a user message; the last user message and what follows it always stay.
        """
        kept = [(item, message) for item, message in entries if id(item) not in self._dropped]
        if self._over(system, [m for _, m in kept], 1.0):
            cut = self._cut(system, kept)
            if cut > 0:
                for item, _ in kept[:cut]:
                    self._dropped[id(item)] = item
                kept = kept[cut:]
                self.trims += 1
        return [message for _, message in kept]

    def _over(self, system: Message, history: Sequence[Message], fraction: float) -> bool:
        if self.max_messages is not None and len(history) > max(0, int(self.max_messages * fraction)):
            return True
        return self.prompt_tokens(system, history) > int(self.effective_budget_tokens * fraction)

    def _cut(self, system: Message, kept: Sequence[tuple[object, Message]]) -> int:
        """Where the kept history starts after a trim: the first user message from which the rest
        fits ``keep_fraction`` of the limits, else the last user message (0: nothing to drop)."""
        users = [index for index, (_, message) in enumerate(kept) if message.get("role") == "user"]
        if not users:
            return 0
        history = [message for _, message in kept]
        for index in users:
            if index > 0 and not self._over(system, history[index:], self.keep_fraction):
                return index
        return users[-1]

    def reset(self) -> None:
        """Forget the trims (e.g. when the history was cleared)."""
        self._dropped.clear()
