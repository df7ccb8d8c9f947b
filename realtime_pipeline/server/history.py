"""History entries the Realtime protocol needs beyond the library's own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..conversation import Conversation
from ..history import finished_response  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class SystemNote:
    """History item: a ``system`` message the client added (folded into the system prompt)."""

    text: str


class ServerConversation(Conversation):
    """A Conversation whose history may also hold client-added system messages.

    The prompt is rendered by :meth:`Conversation.messages`, so a session's history has the
    same token budget as the library's (append-only, trimmed in one step: llama.cpp reuses
    its KV cache from turn to turn).
    """

    def system_message(self) -> dict[str, Any]:
        notes = [item.text for item in self.items if isinstance(item, SystemNote)]
        return {"role": "system", "content": "\n\n".join([self.system_prompt, *notes])}

    def history_message(self, item: object) -> dict[str, Any] | None:
        if isinstance(item, SystemNote):
            return None  # folded into the system prompt
        return super().history_message(item)
