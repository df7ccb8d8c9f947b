"""The conversation: history, the active response, turn bookkeeping and events.

This is the control plane beside the data queues. Stages call it directly
(a method call, not a queued frame), so a barge-in silences the active
response the moment the VAD has heard enough of the user, however full the
queues are. Apps observe it through listeners. The barge-in policy (pause,
then cancel on words or resume on a false interruption) is described in
:mod:`.interruption`.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

import anyio

from .cancellation import CancelToken
from .frames import SpeechStarted, SpeechStopped, TranscriptFinal, TranscriptPartial
from .history_window import HistoryWindow
from .interruption import InterruptionSettings, PendingInterruption, has_words
from .response import Response, ResponseStatus

log = logging.getLogger(__name__)

#: The embedded SmolLM2-135M's own training prompt plus a length hint: with it the model answered
#: "What is the capital of France?" in English 8 times of 8; with a generic assistant prompt it
#: drifted into French 5 times of 8. Pass your own prompt for another model.
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face. Reply in one or two short sentences."
)


@dataclass(frozen=True)
class ResponseStarted:
    response: Response


@dataclass(frozen=True)
class ResponseInterrupted:
    """The user interrupted (or the app cancelled) a response; ``heard_text`` went into the history.

    ``reason`` is ``turn_detected`` for a barge-in, ``superseded`` when a newer turn's
    answer replaced it, or what the app passed to :meth:`Conversation.cancel_response`.
    """

    response: Response
    reason: str
    played_ms: float
    heard_text: str
    at_s: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class ResponseDone:
    """The response was played to the end (``played_ms`` of audio)."""

    response: Response
    played_ms: float
    at_s: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class ResponsePaused:
    """The user spoke over the response: it is silent until the speech yields words or not."""

    response: Response
    turn_id: int
    played_ms: float
    at_s: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class ResponseResumed:
    """False interruption: the sound that paused the response yielded no words; it plays on.

    ``reason`` is ``no_words`` (empty final transcript) or ``timeout`` (``false_interruption_ms``).
    """

    response: Response
    reason: str
    paused_ms: float
    at_s: float = field(default_factory=time.monotonic)


Event = Union[
    SpeechStarted, SpeechStopped, TranscriptPartial, TranscriptFinal,
    ResponseStarted, ResponsePaused, ResponseResumed, ResponseInterrupted, ResponseDone,
]
Listener = Callable[[Event], Any]


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
    """One message of :meth:`Conversation.history`, as heard (``interrupted``: cut short, like
    ``conversation.item.truncate``; ``played_ms``: how much of the reply was played)."""

    role: str
    content: str
    turn_id: int
    interrupted: bool = False
    played_ms: float | None = None


class Conversation:
    """History, responses and turns. ``allow_interruptions=False`` plays every reply to the end
    (a turn heard meanwhile is answered after it); ``interruptions`` tunes barge-in.

    ``history_window`` decides which part of the history the LLM's prompt holds (a token budget,
    append-only so llama.cpp's KV cache is reused; see :mod:`.history_window`);
    ``max_history_messages`` also caps it in messages.
    """

    def __init__(
        self,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        *,
        allow_interruptions: bool = True,
        max_history_messages: int | None = None,
        interruptions: InterruptionSettings | None = None,
        speculation: bool = True,
        history_window: HistoryWindow | None = None,
    ) -> None:
        self.system_prompt = system_prompt
        self.allow_interruptions = allow_interruptions
        self.interruptions = interruptions or InterruptionSettings()
        self.history_window = history_window or HistoryWindow()
        if max_history_messages is not None:
            self.history_window.max_messages = max_history_messages
        self.token = CancelToken()
        self.items: list[UserMessage | Response | FunctionCall | FunctionCallOutput] = []
        self.active_response: Response | None = None
        self.has_responder = False
        self.user_speaking = False
        #: Input stream position the VAD has processed up to (sources wait on it).
        self.audio_processed_samples = 0
        #: The microphone may hear the assistant and no echo canceller runs (set by the echo gate).
        self.echo_unprotected = False
        self._turn_ids = itertools.count(1)
        self._open_turns: set[int] = set()
        self._listeners: list[Listener] = []
        self._idle_event: anyio.Event | None = None
        #: Responses begun and not ended yet, oldest first (more than one only without interruptions).
        self._live: list[Response] = []
        self._pending: PendingInterruption | None = None
        #: Turns that paused a response that then resumed on the timeout, before their transcript came.
        self._late_turns: set[int] = set()
        self._speech_turn: int | None = None
        self._speech_voiced_ms = 0
        #: Input audio time the VAD has processed up to (the false-interruption clock).
        self.audio_position_ms = 0
        #: Prepare replies during the end-of-turn silence (see begin_speculative_response).
        self.speculation = speculation
        self.speculation_hits = 0
        self.speculation_misses = 0
        self._speculative: tuple[Response, int] | None = None  # (held response, audio_end_ms it assumes)
        self._committed_speculation: dict[int, Response] = {}  # turn id -> committed, awaiting its final

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
        """The VAD heard the user: open the turn (the interruption comes with enough voiced audio)."""
        self.user_speaking = True
        self._open_turns.add(event.turn_id)
        self._speech_turn, self._speech_voiced_ms = event.turn_id, 0
        self.discard_speculation()
        pending = self._pending
        if pending is not None:  # more speech while paused: its transcript decides too
            pending.turns.add(event.turn_id)
            pending.resume_at_ms = None
        active = self.active_response
        if active is not None and active.played_ms == 0 and self.interruptions.resume_false_interruption:
            # The user speaks again before the reply was heard (a pause the end-of-turn detector
            # took for the end): hold it now rather than after min_interruption_ms of talking over.
            self._interrupt(event.turn_id)
        self.emit(event)

    def user_speech_progress(self, turn_id: int, voiced_ms: int) -> None:
        """VAD: the current turn has ``voiced_ms`` of voiced audio; at ``min_interruption_ms`` it interrupts."""
        if turn_id != self._speech_turn:
            return
        self._speech_voiced_ms = voiced_ms
        if voiced_ms >= self.interruptions.threshold_ms(self.active_response, echo_unprotected=self.echo_unprotected):
            self._interrupt(turn_id)

    def user_speech_resumed(self, turn_id: int) -> None:
        """VAD: the user spoke again after a pause: a reply prepared for that pause is void."""
        self.discard_speculation()

    def user_speech_stopped(self, event: SpeechStopped) -> None:
        self.user_speaking = False
        self._speech_turn = None
        self._settle_speculation(event)
        pending = self._pending
        if pending is not None and event.turn_id in pending.turns:
            pending.resume_at_ms = event.audio_end_ms + self.interruptions.false_interruption_ms
        self.emit(event)
        self._update_idle()

    def advance_audio(self, position_ms: int) -> None:
        """VAD: input audio processed up to ``position_ms``; resumes a false interruption on time."""
        self.audio_position_ms = position_ms
        pending = self._pending
        if (
            pending is not None
            and pending.resume_at_ms is not None
            and not self.user_speaking
            and position_ms >= pending.resume_at_ms
        ):
            self._resume("timeout")

    def transcript_partial(self, event: TranscriptPartial) -> None:
        self.emit(event)
        if has_words(event.text):
            self._confirm(event.turn_id)

    def transcript_final(self, event: TranscriptFinal) -> None:
        self.emit(event)
        if has_words(event.text):
            self._confirm(event.turn_id)
        self._late_turns.discard(event.turn_id)
        pending = self._pending
        if pending is not None and event.turn_id in pending.turns:
            pending.turns.discard(event.turn_id)
            if not pending.turns and not self.user_speaking:
                self._resume("no_words")
        if not self.has_responder:
            self.close_turn(event.turn_id)

    # -- interruptions ------------------------------------------------------
    def _interrupt(self, turn_id: int) -> None:
        """The user has spoken enough over the active response: pause it (or cancel it)."""
        response = self.active_response
        if not self.allow_interruptions or response is None:
            return
        if not self.interruptions.resume_false_interruption:
            self.cancel_response("turn_detected")
            return
        if self._pending is not None:
            self._pending.turns.add(turn_id)
            return
        if not response.pause():
            return
        self._pending = PendingInterruption(response, {turn_id}, paused_at_s=time.monotonic())
        log.debug("response %s paused by turn %d after %.0f ms played", response.id, turn_id, response.played_ms)
        self.emit(ResponsePaused(response, turn_id, response.played_ms))

    def _confirm(self, turn_id: int) -> None:
        """The speech that paused the response has words: a real interruption (also when they
        come only after the timeout resumed it)."""
        pending = self._pending
        if (pending is not None and turn_id in pending.turns) or (turn_id in self._late_turns and self._live):
            self._late_turns.discard(turn_id)
            self.cancel_response("turn_detected")

    def _resume(self, reason: str) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and reason == "timeout":
            self._late_turns |= pending.turns
        if pending is not None and pending.response.resume():
            paused_ms = 1000.0 * (time.monotonic() - pending.paused_at_s)
            log.debug("response %s resumed (%s) after %.0f ms paused", pending.response.id, reason, paused_ms)
            self.emit(ResponseResumed(pending.response, reason, paused_ms))

    def close_turn(self, turn_id: int) -> None:
        """The turn needs nothing more (answered, or nothing to answer)."""
        self._open_turns.discard(turn_id)
        self._update_idle()

    # -- responses ----------------------------------------------------------
    def begin_response(self, turn_id: int, user_text: str) -> Response:
        """Add the user's words to the history and open the response that answers them.

        An unfinished older response is superseded, unless interruptions are off:
        then it plays to the end and this one plays after it.
        """
        if self.allow_interruptions:
            self.cancel_response("superseded")
        self.items.append(UserMessage(turn_id, user_text))
        response = Response(turn_id, user_text, parent_token=self.token)
        self.items.append(response)
        self._live.append(response)
        self.active_response = response
        self._open_turns.discard(turn_id)
        self.emit(ResponseStarted(response))
        if self._speech_turn is not None and self._speech_voiced_ms >= self.interruptions.threshold_ms(
                response, echo_unprotected=self.echo_unprotected):
            self._interrupt(self._speech_turn)  # the user is already talking over it
        return response

    def cancel_response(self, reason: str = "client_cancelled") -> Response | None:
        """Cancel every unfinished response (normally just the active one); returns the active one."""
        self.discard_speculation()
        active = self.active_response
        cancelled: list[Response] = []
        for response in reversed(self._live):
            if response.cancel(reason):  # fires the token: the player flushes, so played_ms is final
                cancelled.append(response)
        self._live.clear()
        self.active_response = None
        if self._pending is not None:
            self._pending = None
        for response in cancelled:
            log.debug("response %s cancelled (%s) after %.0f ms played", response.id, reason, response.played_ms)
            self.emit(ResponseInterrupted(response, reason, response.played_ms, response.heard_text()))
        self._update_idle()
        return active if active in cancelled else None

    # -- speculation --------------------------------------------------------
    def begin_speculative_response(self, turn_id: int, user_text: str, audio_end_ms: int) -> Response | None:
        """Prepare the answer to a turn that may be ending (the ASR's TranscriptPreview), held silent.

        The LLM, chunker and TTS work on it during the end-of-turn silence; the
        player holds its audio. The VAD's SpeechStopped at the same
        ``audio_end_ms`` commits it, so it plays at once; SpeechResumed, or a
        stop elsewhere, discards it (and its history entries). Returns None when
        not speculating: speculation off, or another reply still live.
        """
        if not self.speculation or self._live or self._pending is not None:
            return None
        if turn_id not in self._open_turns or not self.user_speaking or turn_id != self._speech_turn:
            return None  # the turn already ended: its final transcript takes the normal path
        self.discard_speculation()
        response = Response(turn_id, user_text, parent_token=self.token)
        response.pause()
        self.items.append(UserMessage(turn_id, user_text))
        self.items.append(response)
        self._speculative = (response, audio_end_ms)
        return response

    def _settle_speculation(self, event: SpeechStopped) -> None:
        if self._speculative is None:
            return
        response, audio_end_ms = self._speculative
        if response.turn_id != event.turn_id or audio_end_ms != event.audio_end_ms:
            self.discard_speculation()
            return
        self._speculative = None
        self._committed_speculation[response.turn_id] = response
        self._live.append(response)
        self.active_response = response
        self._open_turns.discard(response.turn_id)
        response.resume()
        self.emit(ResponseStarted(response))

    def discard_speculation(self) -> None:
        """Drop the held speculative reply, if any (a miss)."""
        if self._speculative is None:
            return
        response, _ = self._speculative
        self._speculative = None
        response.cancel("speculation_discarded")
        self.items = [item for item in self.items if item is not response and not (
            isinstance(item, UserMessage) and item.turn_id == response.turn_id and item.text == response.user_text)]
        self.speculation_misses += 1

    def answered_by_speculation(self, turn_id: int, text: str) -> bool:
        """The final transcript of ``turn_id`` arrived: True if the committed speculative reply
        already answers exactly this text (a hit). A changed transcript cancels that reply, so
        the caller answers the final one normally."""
        response = self._committed_speculation.pop(turn_id, None)
        if response is None:
            return False
        if response.user_text == text:
            self.speculation_hits += 1
            return True
        self.speculation_misses += 1
        self.cancel_response("superseded")
        self.items = [item for item in self.items if not (
            isinstance(item, UserMessage) and item.turn_id == turn_id and item.text == response.user_text)]
        return False

    def complete_response(self, response: Response) -> None:
        """The player played the response to the end."""
        if not response.finish():
            return
        if response in self._live:
            self._live.remove(response)
        if self.active_response is response:
            self.active_response = self._live[-1] if self._live else None
        if self._pending is not None and self._pending.response is response:
            self._pending = None
        self.emit(ResponseDone(response, response.played_ms))
        self._update_idle()

    def history(self) -> list[HistoryEntry]:
        """The user and assistant messages as heard, interrupted replies marked (for apps and tests)."""
        entries: list[HistoryEntry] = []
        for item in self.items:
            if isinstance(item, UserMessage):
                entries.append(HistoryEntry("user", item.text, item.turn_id))
            elif isinstance(item, Response) and item.ended:
                entries.append(HistoryEntry("assistant", item.history_text(), item.turn_id, item.interrupted, item.played_ms))
        return entries

    def add_item(self, item: FunctionCall | FunctionCallOutput, *, before: Response | None = None) -> None:
        """Add a tool call or result to the history, before ``before`` (the response it leads to) if given."""
        if before is not None and before in self.items:
            self.items.insert(self.items.index(before), item)
        else:
            self.items.append(item)

    @property
    def max_history_messages(self) -> int | None:
        """The history window's cap in messages (None: only its token budget)."""
        return self.history_window.max_messages

    @max_history_messages.setter
    def max_history_messages(self, value: int | None) -> None:
        self.history_window.max_messages = value

    def messages(self) -> list[dict[str, Any]]:
        """Chat messages for the LLM: system prompt and the history as heard, in the window.

        Tool calls and results use the Chat Completions form (an assistant
        message with ``tool_calls``, then a ``tool`` message). The history is
        append-only until the window's budget, so the prompt's prefix stays the
        same from turn to turn (see :mod:`.history_window`).
        """
        entries = [(item, message) for item in self.items if (message := self.history_message(item)) is not None]
        system = self.system_message()
        return [system, *self.history_window.select(system, entries)]

    def system_message(self) -> dict[str, Any]:
        return {"role": "system", "content": self.system_prompt}

    def history_message(self, item: object) -> dict[str, Any] | None:
        """The chat message of one history item (None: not in the prompt, e.g. a reply still being written)."""
        if isinstance(item, UserMessage):
            return {"role": "user", "content": item.text}
        if isinstance(item, FunctionCall):
            call = {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
            return {"role": "assistant", "content": "", "tool_calls": [call]}
        if isinstance(item, FunctionCallOutput):
            return {"role": "tool", "tool_call_id": item.call_id, "content": item.output}
        if not isinstance(item, Response):
            return None
        if item.status is not ResponseStatus.ACTIVE:
            content = item.history_text()
            return {"role": "assistant", "content": content} if content else None
        if not self.allow_interruptions and item is not self.active_response and item.text:
            return {"role": "assistant", "content": item.text}  # will be played in full
        return None

    # -- idle ---------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """Nobody is speaking and nothing is pending: no open turn, no active response."""
        return not self.user_speaking and not self._open_turns and not self._live

    def _update_idle(self) -> None:
        if self.idle and self._idle_event is not None:
            self._idle_event.set()
            self._idle_event = None

    async def wait_idle(self) -> None:
        while not self.idle:
            if self._idle_event is None:
                self._idle_event = anyio.Event()
            await self._idle_event.wait()
