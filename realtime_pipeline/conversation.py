"""The conversation: history, the active response, turn bookkeeping and events.

This is the control plane beside the data queues. Stages call it directly
(a method call, not a queued frame), so a barge-in cancels the active
response the moment the VAD hears the user, however full the queues are.
Apps observe it through listeners.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

import anyio

from .cancellation import CancelToken
from .frames import SpeechStarted, SpeechStopped, TranscriptFinal, TranscriptPartial
from .response import Response, ResponseStatus

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful voice assistant. Answer in one or two short spoken sentences, "
    "without lists, markdown or emojis."
)


@dataclass(frozen=True)
class ResponseStarted:
    response: Response


@dataclass(frozen=True)
class ResponseInterrupted:
    """The user interrupted (or the app cancelled) a response; ``heard_text`` went into the history."""

    response: Response
    reason: str
    played_ms: float
    heard_text: str


@dataclass(frozen=True)
class ResponseDone:
    response: Response
    played_ms: float


Event = Union[
    SpeechStarted, SpeechStopped, TranscriptPartial, TranscriptFinal,
    ResponseStarted, ResponseInterrupted, ResponseDone,
]
Listener = Callable[[Event], Any]


@dataclass(frozen=True)
class UserMessage:
    turn_id: int
    text: str


class Conversation:
    def __init__(
        self,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        *,
        allow_interruptions: bool = True,
        max_history_messages: int = 16,
    ) -> None:
        self.system_prompt = system_prompt
        self.allow_interruptions = allow_interruptions
        self.max_history_messages = max_history_messages
        self.token = CancelToken()
        self.items: list[UserMessage | Response] = []
        self.active_response: Response | None = None
        self.has_responder = False
        self.user_speaking = False
        #: Input stream position the VAD has processed up to (sources wait on it).
        self.audio_processed_samples = 0
        self._turn_ids = itertools.count(1)
        self._open_turns: set[int] = set()
        self._listeners: list[Listener] = []
        self._idle_event: anyio.Event | None = None

    # -- events -------------------------------------------------------------
    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every event; returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def emit(self, event: Event) -> None:
        for listener in list(self._listeners):
            listener(event)

    # -- user turns ---------------------------------------------------------
    def new_turn_id(self) -> int:
        return next(self._turn_ids)

    def user_speech_started(self, event: SpeechStarted) -> None:
        """The VAD heard the user: open the turn and, if allowed, interrupt the reply."""
        self.user_speaking = True
        self._open_turns.add(event.turn_id)
        self.emit(event)
        if self.allow_interruptions:
            self.cancel_response("turn_detected")

    def user_speech_stopped(self, event: SpeechStopped) -> None:
        self.user_speaking = False
        self.emit(event)
        self._update_idle()

    def transcript_partial(self, event: TranscriptPartial) -> None:
        self.emit(event)

    def transcript_final(self, event: TranscriptFinal) -> None:
        self.emit(event)
        if not self.has_responder:
            self.close_turn(event.turn_id)

    def close_turn(self, turn_id: int) -> None:
        """The turn needs nothing more (answered, or nothing to answer)."""
        self._open_turns.discard(turn_id)
        self._update_idle()

    # -- responses ----------------------------------------------------------
    def begin_response(self, turn_id: int, user_text: str) -> Response:
        """Add the user's words to the history and open the response that answers them."""
        self.cancel_response("superseded")
        self.items.append(UserMessage(turn_id, user_text))
        response = Response(turn_id, user_text, parent_token=self.token)
        self.items.append(response)
        self.active_response = response
        self._open_turns.discard(turn_id)
        self.emit(ResponseStarted(response))
        return response

    def cancel_response(self, reason: str = "client_cancelled") -> Response | None:
        """Cancel the active response, if any; returns it."""
        response = self.active_response
        if response is None or not response.cancel(reason):
            return None
        self.active_response = None
        log.debug("response %s cancelled (%s) after %.0f ms played", response.id, reason, response.played_ms)
        self.emit(ResponseInterrupted(response, reason, response.played_ms, response.heard_text()))
        self._update_idle()
        return response

    def complete_response(self, response: Response) -> None:
        """The player played the response to the end."""
        if not response.finish():
            return
        if self.active_response is response:
            self.active_response = None
        self.emit(ResponseDone(response, response.played_ms))
        self._update_idle()

    def messages(self) -> list[dict[str, str]]:
        """Chat messages for the LLM: system prompt and the recent history as heard."""
        history: list[dict[str, str]] = []
        for item in self.items:
            if isinstance(item, UserMessage):
                history.append({"role": "user", "content": item.text})
            elif item.status is not ResponseStatus.ACTIVE:
                content = item.history_text()
                if content:
                    history.append({"role": "assistant", "content": content})
        history = history[-self.max_history_messages :]
        while history and history[0]["role"] != "user":
            history.pop(0)
        return [{"role": "system", "content": self.system_prompt}, *history]

    # -- idle ---------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """Nobody is speaking and nothing is pending: no open turn, no active response."""
        return not self.user_speaking and not self._open_turns and self.active_response is None

    def _update_idle(self) -> None:
        if self.idle and self._idle_event is not None:
            self._idle_event.set()
            self._idle_event = None

    async def wait_idle(self) -> None:
        while not self.idle:
            if self._idle_event is None:
                self._idle_event = anyio.Event()
            await self._idle_event.wait()
