"""Running one response: a message (text or audio) or a client-side function call.

The session's :class:`~..responder.Responder` (the same class as the CLI pipeline's)
answers; :class:`ClientTools` makes its tool calls Realtime function-call items. It writes
into a :class:`_Tap`, which sends the text out as events and
forwards it to the chunker and TTS for audio replies; the player's blocks come
back as audio deltas (see :meth:`RealtimeSession._on_audio_block`). The
conversation's ResponseDone / ResponseInterrupted closes the response with
:meth:`ResponsesMixin._finish`, whatever ended it (played out, cancelled, barge-in).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..conversation import DEFAULT_SYSTEM_PROMPT, FunctionCall
from ..frames import ResponseEnd, TextDelta
from ..responder import PendingCall, Responder, ToolStrategy
from ..response import Response, ResponseStatus
from ..stage import Outbox, StageContext
from ..tools import ToolCall, ToolRegistry
from .engines import Priority, priority
from .limits import message_tokens
from .protocol import (
    ContentPart,
    Dialect,
    ItemRecord,
    max_tokens_of,
    new_id,
    render_item,
    render_part,
    render_response,
)

if TYPE_CHECKING:
    from .session import RealtimeSession

#: The decision prompt's question after the tool list, with margin (LlamaLLM.decision_messages).
TOOL_QUESTION_TOKENS = 64


@dataclass
class ResponseRequest:
    """One ``response.create`` (or a server-VAD auto response) with its overrides resolved."""

    modalities: tuple[str, ...]
    instructions: str
    temperature: float
    max_output_tokens: int | str
    tools: tuple[Mapping[str, Any], ...]
    tool_choice: str | Mapping[str, Any]
    metadata: Mapping[str, str] | None = None
    cancelled: bool = False


@dataclass
class ResponseState:
    """What the session tracks of the response in flight."""

    id: str
    request: ResponseRequest
    response: Response | None = None
    output: list[ItemRecord] = field(default_factory=list)
    part: ContentPart | None = None
    output_tokens: int = 0
    finished: bool = False


@dataclass
class Job:
    """Work for the session's response loop, done in order: transcribe committed audio, or respond."""

    kind: str  # "transcribe" or "respond"
    item: ItemRecord | None = None
    audio: np.ndarray | None = None
    request: ResponseRequest | None = None


class _Tap:
    """The outbox the LLM writes to: text goes out as events, and on to the TTS for audio replies."""

    def __init__(self, session: RealtimeSession, state: ResponseState, outbox: Outbox, audio: bool) -> None:
        self.session, self.state, self.outbox, self.audio = session, state, outbox, audio

    async def send(self, frame: object) -> None:
        if self.record(frame) and self.audio:
            await self.outbox.send(frame)

    def record(self, frame: object) -> bool:
        """The events of ``frame``; True if it goes on to the TTS (audio replies)."""
        state, response = self.state, self.state.response
        assert response is not None
        if isinstance(frame, (TextDelta, ResponseEnd)) and state.part is None and not any(
            item.type == "function_call" for item in state.output
        ):
            self.session._open_message(state)
        if isinstance(frame, TextDelta):
            if not self.audio and not state.output_tokens:
                self.session._urgency.end(self.session.id)  # a text reply's first output is out
            state.output_tokens += 1
            if state.part is not None:
                state.part.text = (state.part.text or "") + frame.text
            name = "response.output_audio_transcript.delta" if self.audio else "response.output_text.delta"
            self.session.emit(name, **self.session.part_ids(state), delta=frame.text)
            return True
        if isinstance(frame, ResponseEnd):
            if any(item.type == "function_call" for item in state.output):
                return False  # the call ended the response (ClientTools)
            if not self.audio:
                self.session.conversation.complete_response(response)
            return True
        return False


class SpeculativeTap:
    """The outbox of a speculative reply (server VAD, during the end-of-turn silence).

    Its frames go on to the TTS at once (the player holds the audio while the reply is held),
    but no event goes out: the client sees the response only once the turn ends where the
    preview assumed (:meth:`attach`, which replays the text written so far as events). A
    discarded speculation leaves no trace on the wire."""

    def __init__(self, session: RealtimeSession, outbox: Outbox) -> None:
        self.session, self.outbox = session, outbox
        self._tap: _Tap | None = None
        self._written: list[object] = []

    async def send(self, frame: object) -> None:
        if self._tap is None:
            self._written.append(frame)
        elif not self._tap.record(frame):
            return
        await self.outbox.send(frame)

    def attach(self, state: ResponseState) -> None:
        self._tap = _Tap(self.session, state, self.outbox, audio=True)
        for frame in self._written:
            self._tap.record(frame)
        self._written = []


@dataclass
class Speculating:
    """The speculative reply of the session (``state``: once committed, the response it became)."""

    response: Response
    request: ResponseRequest
    tap: SpeculativeTap
    state: ResponseState | None = None


class ClientTools(ToolStrategy):
    """The server's tool strategy: a call is a Realtime function-call item the client runs.

    Its arguments stream out as ``response.function_call_arguments.delta`` events; the finished
    call goes into the history and ends the response (the client sends the output and asks for
    the next response)."""

    def __init__(self, session: RealtimeSession, state: ResponseState) -> None:
        self.session, self.state = session, state
        self._items: dict[int, tuple[ItemRecord, dict[str, Any]]] = {}

    def call_started(self, response: Response, call: PendingCall) -> None:
        call.call_id = call.call_id or new_id("call")
        item = ItemRecord(new_id("item"), "function_call", status="in_progress", call_id=call.call_id, name=call.name, arguments="")
        self.session._add_output_item(self.state, item)
        ids = {"response_id": self.state.id, "item_id": item.id, "output_index": len(self.state.output) - 1, "call_id": call.call_id}
        self._items[call.index] = (item, ids)

    def arguments_delta(self, response: Response, call: PendingCall, piece: str, *, restart: bool) -> None:
        item, ids = self._items[call.index]
        if restart:
            item.arguments = ""
        if piece:
            self.state.output_tokens += 1
            item.arguments = (item.arguments or "") + piece
            self.session.emit("response.function_call_arguments.delta", **ids, delta=piece)

    async def finished(self, ctx: StageContext, responder: Responder, response: Response,
                       registry: ToolRegistry, call: ToolCall) -> bool:
        session = self.session
        index = next(index for index, (item, _) in self._items.items() if item.call_id == call.call_id)
        item, ids = self._items[index]
        item.arguments = call.arguments
        done = {"name": call.name} if session.dialect is Dialect.GA else {}
        session.emit("response.function_call_arguments.done", **ids, arguments=item.arguments, **done)
        entry = FunctionCall(response.turn_id, call.call_id, call.name, item.arguments)
        session.conversation.add_item(entry, before=response)
        item.ref = entry
        session.conversation.complete_response(response)
        if not response.text:
            session.conversation.history.remove(response)  # the call is the whole answer
        return False


class ResponsesMixin:
    """The response half of :class:`RealtimeSession` (it provides the state used here)."""

    def _response_object(self, state: ResponseState, status: str, details: dict[str, Any] | None = None, usage: dict[str, Any] | None = None) -> dict[str, Any]:
        r = state.request
        return render_response(
            state.id, status=status, config=self.config, dialect=self.dialect, output=state.output,
            conversation_id=self.conversation_id, max_output_tokens=r.max_output_tokens, modalities=r.modalities,
            temperature=r.temperature, status_details=details, usage=usage, metadata=r.metadata,
        )

    async def _respond(self, ctx: StageContext, outbox: Outbox, request: ResponseRequest) -> None:
        conversation = self.conversation
        if self._speculating is not None and self._speculating.state is None:
            conversation.discard_speculation()  # a reply for a pause; the client asked for another
            self._speculating = None
        state = ResponseState(new_id("resp"), request)
        self._active, self._queued = state, None
        if request.cancelled:
            self.emit("response.created", response=self._response_object(state, "in_progress"))
            self._finish(state, "client_cancelled")
            return
        saved_prompt = conversation.system_prompt
        conversation.system_prompt = request.instructions or DEFAULT_SYSTEM_PROMPT
        try:
            await self._generate(ctx, outbox, state)
        finally:
            conversation.system_prompt = saved_prompt
        if state.response is not None:
            await state.response.wait_ended()
        if not state.finished:  # ended before this state was watching it (cancelled at once)
            ended = state.response
            done = ended is not None and ended.status is ResponseStatus.DONE
            self._finish(state, None if done else (ended.cancel_reason if ended else None) or "client_cancelled")

    async def _generate(self, ctx: StageContext, outbox: Outbox, state: ResponseState) -> None:
        conversation, request = self.conversation, state.request
        response = conversation.begin_response(conversation.new_turn_id(), None)  # the user's words are in the history
        state.response = response
        state.id = response.id
        self.emit("response.created", response=self._response_object(state, "in_progress"))
        if response.cancelled:  # the user was already talking over it
            return
        max_tokens = max_tokens_of(request.max_output_tokens, self.engines.llm.max_tokens)
        registry = self._registry(request.tools)
        conversation.budget_tokens = self._prompt_budget(max_tokens, registry)
        self.emit_rate_limits(sum(message_tokens(m, self.engines.count_tokens) for m in conversation.messages()))
        with priority(Priority.FIRST_CLAUSE):  # the reply's generation: its first audio waits on it
            await self.responder.generate(
                ctx, response, _Tap(self, state, outbox, "audio" in request.modalities),
                tools=registry, tool_choice=request.tool_choice if len(registry) else "none",
                max_tokens=max_tokens, temperature=request.temperature, strategy=ClientTools(self, state),
            )

    # -- speculation (server VAD) -------------------------------------------------------
    def _may_speculate(self) -> bool:
        spec = self._speculating
        if spec is not None and spec.state is None and spec.response.cancelled:
            self._speculating = spec = None  # discarded (speech resumed, or the turn ended elsewhere)
        td = self.config.turn_detection
        return (
            spec is None and td is not None and td.create_response and not self.config.tools
            and self._active is None and self._queued is None and self.conversation.speculation
            and not self._closing
        )

    async def speculate(self, ctx: StageContext, outbox: Outbox, text: str, turn_id: int, audio_end_ms: int) -> None:
        """Prepare the reply to a turn that may be ending (the ASR's preview), as the library's
        pipeline does (:mod:`...speculation`): it plays at once if the turn ends where assumed."""
        if not self._may_speculate():
            return
        request = self._request({})
        if "audio" not in request.modalities:
            return
        held = self.conversation.begin_speculative_response(turn_id, text, audio_end_ms)
        if held is None:
            return
        spec = self._speculating = Speculating(held, request, SpeculativeTap(self, outbox))
        max_tokens = max_tokens_of(request.max_output_tokens, self.engines.llm.max_tokens)
        self.conversation.budget_tokens = self._prompt_budget(max_tokens, ToolRegistry())
        saved_prompt = self.conversation.system_prompt
        self.conversation.system_prompt = request.instructions or DEFAULT_SYSTEM_PROMPT
        try:
            with priority(Priority.FIRST_CLAUSE):
                await self.responder.generate(ctx, held, spec.tap, tools=ToolRegistry(), max_tokens=max_tokens,
                                              temperature=request.temperature)
        finally:
            self.conversation.system_prompt = saved_prompt
            if spec.state is None and held.cancelled and self._speculating is spec:
                self._speculating = None

    def _commit_speculation(self) -> None:
        """The turn ended where the preview assumed: the held reply is the session's response now."""
        spec = self._speculating
        if spec is None or spec.state is not None or self.conversation.active_response is not spec.response:
            return
        state = ResponseState(spec.response.id, spec.request, response=spec.response)
        spec.state = state
        self._active = state
        self.emit("response.created", response=self._response_object(state, "in_progress"))
        spec.tap.attach(state)

    def _prompt_budget(self, max_tokens: int, registry: ToolRegistry) -> int:
        """Tokens the prompt may take: the context less the reply (at most a quarter of it) and
        the tool list the decision prompt appends; the history is trimmed to fit (limits.py)."""
        context = self.engines.context_tokens
        listing = "\n".join(f"- {tool.name}: {tool.description}" for tool in registry)
        tools = self.engines.count_tokens(listing) + TOOL_QUESTION_TOKENS if len(registry) else 0
        return context - min(max_tokens, context // 4) - tools

    def _open_message(self, state: ResponseState) -> None:
        """The response's message item and its content part (at its first text, or its end)."""
        audio = "audio" in state.request.modalities
        item = ItemRecord(new_id("item"), "message", role="assistant", status="in_progress")
        self._add_output_item(state, item)
        part = ContentPart("output_audio" if audio else "output_text", "")
        item.content.append(part)
        state.part = part
        self.emit("response.content_part.added", **self.part_ids(state), part=render_part(part, self.dialect, as_response_part=True))
        item.ref = state.response

    def _add_output_item(self, state: ResponseState, item: ItemRecord) -> None:
        previous = self.items[-1].id if self.items else None
        state.output.append(item)
        self.items.append(item)
        self.emit("response.output_item.added", response_id=state.id, output_index=len(state.output) - 1, item=render_item(item, self.dialect))
        self._emit_item_added(item, previous)

    def _finish(self, state: ResponseState, reason: str | None) -> None:
        """Close every open part and item of the response, then ``response.done``."""
        if state.finished:
            return
        state.finished = True
        cancelled = reason is not None
        item_status = "incomplete" if cancelled else "completed"
        for index, item in enumerate(state.output):
            item.status = item_status
            if item.type == "message" and state.part is not None:
                part = state.part
                response = state.response
                if response is not None and response.status is not ResponseStatus.ACTIVE:
                    part.text = response.history_text()
                ids = {"response_id": state.id, "item_id": item.id, "output_index": index, "content_index": 0}
                if part.kind == "output_audio":
                    tail = self._encoder.encode(np.zeros(0, dtype=np.int16), last=True)
                    if tail and not cancelled:
                        self.emit("response.output_audio.delta", **ids, delta=tail)
                    self.emit("response.output_audio.done", **ids)
                    self.emit("response.output_audio_transcript.done", **ids, transcript=part.text or "")
                else:
                    self.emit("response.output_text.done", **ids, text=part.text or "")
                self.emit("response.content_part.done", **ids, part=render_part(part, self.dialect, as_response_part=True))
            elif item.type == "function_call" and cancelled:
                pass  # the call was never completed: no arguments.done
            self.emit("response.output_item.done", response_id=state.id, output_index=index, item=render_item(item, self.dialect))
            self.emit("conversation.item.done", item=render_item(item, self.dialect))
        if reason == "failed":
            details = {"type": "failed", "error": {"type": "server_error", "code": "response_failed", "message": "the response failed"}}
            status = "failed"
        elif cancelled:
            details = {"type": "cancelled", "reason": "client_cancelled" if reason == "client_cancelled" else "turn_detected"}
            status = "cancelled"
        else:
            details, status = None, "completed"
        input_tokens = sum(self.engines.count_tokens(str(m.get("content") or "")) for m in self.conversation.messages())
        usage = {"total_tokens": input_tokens + state.output_tokens, "input_tokens": input_tokens, "output_tokens": state.output_tokens}
        self._urgency.end(self.id)
        if self._speculating is not None and self._speculating.state is state:
            self._speculating = None
        self.emit("response.done", response=self._response_object(state, status, details, usage))
        if self._active is state:
            self._active = None
