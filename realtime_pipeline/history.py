"""The conversation's history: what was said, in order, as heard.

Items are the user's messages, the assistant's responses (a :class:`~.response.Response`,
which knows how much of it was played), tool calls and their results, and whatever a front
end adds (the server's system notes). Front ends edit it only through these methods
(insert, remove, replace, truncate to what was heard), never the list itself, so the rules
live in one place: an interrupted reply keeps only what was heard; an item is inserted
before the response it leads to. Rendering the prompt is the conversation's
(:meth:`~.conversation.Conversation.messages`: it knows which response is still live).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .response import Response


@dataclass(frozen=True)
class UserMessage:
    turn_id: int
    text: str


@dataclass(frozen=True)
class FunctionCall:
    """History item: the assistant called a tool (``arguments`` is JSON text), during turn ``turn_id``."""

    turn_id: int
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class FunctionCallOutput:
    """History item: what the tool call ``call_id`` returned (or why it failed), as text."""

    turn_id: int
    call_id: str
    output: str


@dataclass(frozen=True)
class HistoryEntry:
    """One message of :meth:`History.entries`, as heard (``interrupted``: cut short, like
    ``conversation.item.truncate``; ``played_ms``: how much of the reply was played)."""

    role: str
    content: str
    turn_id: int
    interrupted: bool = False
    played_ms: float | None = None


def finished_response(text: str, turn_id: int = 0) -> Response:
    """A history entry for assistant text that was not generated here (or was truncated)."""
    response = Response(turn_id, "")
    response.text = text
    response.finish()
    return response


class History:
    """The items of one conversation, oldest first."""

    def __init__(self) -> None:
        self._items: list[object] = []

    @property
    def items(self) -> list[object]:
        """A copy of the items (edit through the methods)."""
        return list(self._items)

    def __iter__(self) -> Iterator[object]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: object) -> bool:
        return any(existing is item for existing in self._items)

    def index(self, item: object) -> int:
        for index, existing in enumerate(self._items):
            if existing is item:
                return index
        raise ValueError(f"{item!r} is not in the history")

    def append(self, item: object) -> None:
        self._items.append(item)

    def insert(self, item: object, *, before: object | None = None, at: int | None = None) -> None:
        """Add ``item`` before ``before`` (the response it leads to) if that is in the history,
        else at index ``at`` if given, else at the end."""
        if before is not None and before in self:
            self._items.insert(self.index(before), item)
        elif at is not None:
            self._items.insert(at, item)
        else:
            self._items.append(item)

    def remove(self, item: object) -> bool:
        """Remove ``item`` (by identity); False if it was not there."""
        if item not in self:
            return False
        del self._items[self.index(item)]
        return True

    def remove_where(self, predicate: Callable[[object], bool]) -> int:
        """Remove every item ``predicate`` accepts; returns how many."""
        kept = [item for item in self._items if not predicate(item)]
        removed = len(self._items) - len(kept)
        self._items = kept
        return removed

    def replace(self, old: object, new: object) -> None:
        """Put ``new`` where ``old`` is (at the end if ``old`` is gone)."""
        if old in self:
            self._items[self.index(old)] = new
        else:
            self._items.append(new)

    def truncate(self, response: Response, audio_end_ms: int, sample_rate_hz: int) -> Response:
        """Keep only the first ``audio_end_ms`` of ``response`` (what the listener heard, as
        ``conversation.item.truncate`` says): the response's heard text becomes a finished
        entry in its place, which is returned. The response must have ended."""
        rate = response.output_sample_rate_hz or sample_rate_hz
        response.played_samples = audio_end_ms * rate // 1000
        truncated = finished_response(response.heard_text(), response.turn_id)
        self.replace(response, truncated)
        return truncated

    def entries(self) -> list[HistoryEntry]:
        """The user and assistant messages as heard, interrupted replies marked (for apps and tests)."""
        entries: list[HistoryEntry] = []
        for item in self._items:
            if isinstance(item, UserMessage):
                entries.append(HistoryEntry("user", item.text, item.turn_id))
            elif isinstance(item, Response) and item.ended:
                entries.append(HistoryEntry("assistant", item.history_text(), item.turn_id, item.interrupted, item.played_ms))
        return entries
