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
from .history import FunctionCall, FunctionCallOutput, History, HistoryEntry, UserMessage
from .history_window import HistoryWindow
from .speculation import Speculation
from .interruption import BargeIn, Cancel, Decision, InterruptionSettings, Pause, Resume
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
        #: The barge-in policy's state machine (its settings: :attr:`interruptions`).
        self.barge_in = BargeIn(interruptions)
        self.history_window = history_window or HistoryWindow()
        if max_history_messages is not None:
            self.history_window.max_messages = max_history_messages
        self.token = CancelToken()
        #: What was said, as heard (edit it through its methods).
        self.history = History()
        self.active_response: Response | None = None
        #: A responder answers (and closes) each turn; else a turn closes with its final transcript.
        #: The pipeline sets it when one of its stages declares ``answers_turns``.
        self.turns_answered = False
        #: Input stream position the VAD has processed up to (sources wait on it).
        self.audio_processed_samples = 0
        #: The assistant's echo may reach the VAD: no echo canceller runs, or AEC3 has not heard the
        #: room yet (set by the echo stage, frame by frame).
        self.echo_unprotected = False
        self._turn_ids = itertools.count(1)
        self._open_turns: set[int] = set()
        self._listeners: list[Listener] = []
        #: Listener calls that raised (logged; see :meth:`emit`).
        self.listener_errors = 0
        self._idle_event: anyio.Event | None = None
        #: Responses begun and not ended yet, oldest first (more than one only without interruptions).
        self._live: list[Response] = []
        #: Input audio time the VAD has processed up to (the false-interruption clock).
        self.audio_position_ms = 0
        #: Prepare replies during the end-of-turn silence (see begin_speculative_response).
        self.speculative = Speculation(speculation)

    # -- events -------------------------------------------------------------
    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every event; returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def emit(self, event: object) -> None:
        """Call every listener with ``event``. A listener that raises is logged and skipped:
        an app's bug never stops the stage that emitted the event, nor the other listeners."""
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                self.listener_errors += 1
                log.exception("conversation listener %r failed on %s", listener, type(event).__name__)

    # -- user turns ---------------------------------------------------------
    def new_turn_id(self) -> int:
        return next(self._turn_ids)

    @property
    def interruptions(self) -> InterruptionSettings:
        return self.barge_in.settings

    @interruptions.setter
    def interruptions(self, settings: InterruptionSettings) -> None:
        self.barge_in.settings = settings

    @property
    def user_speaking(self) -> bool:
        return self.barge_in.user_speaking

    def user_speech_started(self, event: SpeechStarted) -> None:
        """The VAD heard the user: open the turn (the interruption comes with enough voiced audio)."""
        self._open_turns.add(event.turn_id)
        self.discard_speculation()
        active = self.active_response
        unheard = active is not None and active.played_ms == 0
        self._apply(self.barge_in.speech_started(event.turn_id, can_interrupt=self._can_interrupt(), unheard=unheard))
        self.emit(event)

    def user_speech_progress(self, turn_id: int, voiced_ms: int) -> None:
        """VAD: the current turn has ``voiced_ms`` of voiced audio; at ``min_interruption_ms`` it interrupts."""
        threshold_ms = self.interruptions.threshold_ms(self.active_response, echo_unprotected=self.echo_unprotected)
        self._apply(self.barge_in.speech_progress(turn_id, voiced_ms, can_interrupt=self._can_interrupt(), threshold_ms=threshold_ms))

    def user_speech_resumed(self, turn_id: int) -> None:
        """VAD: the user spoke again after a pause: a reply prepared for that pause is void."""
        self.discard_speculation()

    def user_speech_stopped(self, event: SpeechStopped) -> None:
        self.barge_in.speech_stopped(event.turn_id, event.audio_end_ms)
        self._settle_speculation(event)
        self.emit(event)
        self._update_idle()

    def advance_audio(self, position_ms: int) -> None:
        """VAD: input audio processed up to ``position_ms``; resumes a false interruption on time."""
        self.audio_position_ms = position_ms
        self._apply(self.barge_in.audio_advanced(position_ms))

    def transcript_partial(self, event: TranscriptPartial) -> None:
        self.emit(event)
        self._apply(self.barge_in.transcript(event.turn_id, event.text, final=False, live=bool(self._live)))

    def transcript_final(self, event: TranscriptFinal) -> None:
        self.emit(event)
        self._apply(self.barge_in.transcript(event.turn_id, event.text, final=True, live=bool(self._live)))
        if not self.turns_answered:
            self.close_turn(event.turn_id)

    # -- interruptions: doing what the barge-in policy decided ----------------------
    def _can_interrupt(self) -> bool:
        return self.allow_interruptions and self.active_response is not None

    def _apply(self, decision: Decision) -> None:
        if isinstance(decision, Cancel):
            self.cancel_response(decision.reason)
        elif isinstance(decision, Pause):
            response = self.active_response
            if response is not None and response.pause():
                self.barge_in.paused(response, decision.turn_id, time.monotonic())
                log.debug("response %s paused by turn %d after %.0f ms played", response.id, decision.turn_id, response.played_ms)
                self.emit(ResponsePaused(response, decision.turn_id, response.played_ms))
        elif isinstance(decision, Resume):
            pending = decision.pending
            if pending.response.resume():
                paused_ms = 1000.0 * (time.monotonic() - pending.paused_at_s)
                log.debug("response %s resumed (%s) after %.0f ms paused", pending.response.id, decision.reason, paused_ms)
                self.emit(ResponseResumed(pending.response, decision.reason, paused_ms))

    def close_turn(self, turn_id: int) -> None:
        """The turn needs nothing more (answered, or nothing to answer)."""
        self._open_turns.discard(turn_id)
        self._update_idle()

    # -- responses ----------------------------------------------------------
    def begin_response(self, turn_id: int, user_text: str | None) -> Response:
        """Add the user's words to the history and open the response that answers them
        (``user_text`` None: the history already holds what it answers, e.g. a client's items).

        An unfinished older response is superseded, unless interruptions are off:
        then it plays to the end and this one plays after it.
        """
        if self.allow_interruptions:
            self.cancel_response("superseded")
        if user_text is not None:
            self.history.append(UserMessage(turn_id, user_text))
        response = Response(turn_id, user_text or "", parent_token=self.token)
        self.history.append(response)
        self._live.append(response)
        self.active_response = response
        self._open_turns.discard(turn_id)
        self.emit(ResponseStarted(response))
        threshold_ms = self.interruptions.threshold_ms(response, echo_unprotected=self.echo_unprotected)
        self._apply(self.barge_in.response_began(can_interrupt=self._can_interrupt(), threshold_ms=threshold_ms))  # already talked over?
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
        self.barge_in.response_ended()
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
        if not self.speculative.enabled or self._live or self.barge_in.pending is not None:
            return None
        if turn_id not in self._open_turns or not self.user_speaking or turn_id != self.barge_in.speech_turn:
            return None  # the turn already ended: its final transcript takes the normal path
        self.discard_speculation()
        response = Response(turn_id, user_text, parent_token=self.token)
        response.pause()
        self.history.append(UserMessage(turn_id, user_text))
        self.history.append(response)
        self.speculative.hold(response, audio_end_ms)
        return response

    def _settle_speculation(self, event: SpeechStopped) -> None:
        committed, discarded = self.speculative.settle(event.turn_id, event.audio_end_ms)
        if discarded is not None:
            self._drop_speculative(discarded)
        if committed is None:
            return
        self._live.append(committed)
        self.active_response = committed
        self._open_turns.discard(committed.turn_id)
        committed.resume()
        self.emit(ResponseStarted(committed))

    def discard_speculation(self) -> None:
        """Drop the held speculative reply, if any (a miss)."""
        response = self.speculative.discard()
        if response is not None:
            self._drop_speculative(response)

    def _drop_speculative(self, response: Response) -> None:
        response.cancel("speculation_discarded")
        self.history.remove_where(lambda item: item is response or (
            isinstance(item, UserMessage) and item.turn_id == response.turn_id and item.text == response.user_text))

    def answered_by_speculation(self, turn_id: int, text: str) -> bool:
        """The final transcript of ``turn_id`` arrived: True if the committed speculative reply
        already answers exactly this text (a hit). A changed transcript cancels that reply, so
        the caller answers the final one normally."""
        hit, void = self.speculative.answered(turn_id, text)
        if void is not None:
            self.cancel_response("superseded")
            self.history.remove_where(lambda item: (
                isinstance(item, UserMessage) and item.turn_id == turn_id and item.text == void.user_text))
        return hit

    @property
    def speculation(self) -> bool:
        """Prepare replies during the end-of-turn silence (see begin_speculative_response)."""
        return self.speculative.enabled

    @speculation.setter
    def speculation(self, enabled: bool) -> None:
        self.speculative.enabled = enabled

    @property
    def speculation_hits(self) -> int:
        return self.speculative.hits

    @property
    def speculation_misses(self) -> int:
        return self.speculative.misses

    def complete_response(self, response: Response) -> None:
        """The player played the response to the end."""
        if not response.finish():
            return
        if response in self._live:
            self._live.remove(response)
        if self.active_response is response:
            self.active_response = self._live[-1] if self._live else None
        self.barge_in.response_ended(response)
        self.emit(ResponseDone(response, response.played_ms))
        self._update_idle()

    @property
    def items(self) -> list[object]:
        """The history's items, oldest first (a copy: edit through :attr:`history`)."""
        return self.history.items

    def entries(self) -> list[HistoryEntry]:
        """The user and assistant messages as heard, interrupted replies marked (for apps and tests)."""
        return self.history.entries()

    def add_item(self, item: object, *, before: Response | None = None) -> None:
        """Add a tool call or result (or a front end's item) to the history, before ``before``
        (the response it leads to) if given."""
        self.history.insert(item, before=before)

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
        entries = [(item, message) for item in self.history if (message := self.history_message(item)) is not None]
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
