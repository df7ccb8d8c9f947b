"""History entries the Realtime protocol needs beyond the library's own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..conversation import Conversation
from ..response import Response


@dataclass(frozen=True)
class SystemNote:
    """History item: a ``system`` message the client added (folded into the system prompt)."""

    text: str


class ServerConversation(Conversation):
    """A Conversation whose history may also hold client-added system messages."""

    def messages(self) -> list[dict[str, Any]]:
        notes = [item.text for item in self.items if isinstance(item, SystemNote)]
        if not notes:
            return super().messages()
        items = self.items
        self.items = [item for item in items if not isinstance(item, SystemNote)]
        try:
            messages = super().messages()
        finally:
            self.items = items
        messages[0] = {"role": "system", "content": "\n\n".join([messages[0]["content"], *notes])}
        return messages


def finished_response(text: str, turn_id: int = 0) -> Response:
    """A history entry for assistant text that was not generated here (or was truncated)."""
    response = Response(turn_id, "")
    response.text = text
    response.finish()
    return response
