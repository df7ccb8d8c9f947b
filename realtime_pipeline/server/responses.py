"""Running one response: a message (text or audio) or a client-side function call.

The LLM writes into a :class:`_Tap`, which sends the text out as events and
forwards it to the chunker and TTS for audio replies; the player's blocks come
back as audio deltas (see :meth:`RealtimeSession._on_audio_block`). The
conversation's ResponseDone / ResponseInterrupted closes the response with
:meth:`ResponsesMixin._finish`, whatever ended it (played out, cancelled, barge-in).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np

from ..cancellation import CancelToken
from ..conversation import DEFAULT_SYSTEM_PROMPT, FunctionCall, UserMessage
from ..frames import ResponseEnd, TextDelta
from ..response import Response, ResponseStatus
from ..stage import Outbox, StageContext
from ..tools import Tool, ToolRegistry
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


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


class _Tap:
    """The outbox the LLM writes to: text goes out as events, and on to the TTS for audio replies."""

    def __init__(self, session: RealtimeSession, state: ResponseState, outbox: Outbox, audio: bool) -> None:
        self.session, self.state, self.outbox, self.audio = session, state, outbox, audio

    async def send(self, frame: object) -> None:
        state, response = self.state, self.state.response
        assert response is not None
        if isinstance(frame, TextDelta):
            if not self.audio and not state.output_tokens:
                self.session._urgency.end(self.session.id)  # a text reply's first output is out
            state.output_tokens += 1
            if state.part is not None:
                state.part.text = (state.part.text or "") + frame.text
            name = "response.output_audio_transcript.delta" if self.audio else "response.output_text.delta"
            self.session.emit(name, **self.session.part_ids(state), delta=frame.text)
            if self.audio:
                await self.outbox.send(frame)
        elif isinstance(frame, ResponseEnd):
            if self.audio:
                await self.outbox.send(frame)
            else:
                self.session.conversation.complete_response(response)


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
        response = conversation.begin_response(conversation.new_turn_id(), "")
        placeholder = conversation.items[conversation.items.index(response) - 1]
        if isinstance(placeholder, UserMessage) and not placeholder.text:
            conversation.items.remove(placeholder)  # the user's words are already in the history
        state.response = response
        state.id = response.id
        self.emit("response.created", response=self._response_object(state, "in_progress"))
        if response.cancelled:  # the user was already talking over it
            return
        max_tokens = max_tokens_of(request.max_output_tokens, self.engines.llm.max_tokens)
        llm = self.engines.llm_view(temperature=request.temperature, max_tokens=max_tokens)
        llm.bind_history(self.conversation)  # the window's token budget (append-only, one-step trims)
        registry = self._registry(request.tools)
        conversation.budget_tokens = self._prompt_budget(max_tokens, registry)
        self.emit_rate_limits(sum(message_tokens(m, self.engines.count_tokens) for m in conversation.messages()))
        tool = await self._decide(llm, registry, request.tool_choice, response)
        if response.cancelled:
            return
        if tool is not None:
            await self._function_call(ctx, llm, state, tool)
        else:
            with priority(Priority.FIRST_CLAUSE):  # the reply's generation: its first audio waits on it
                await self._message(ctx, outbox, llm, state)

    def _prompt_budget(self, max_tokens: int, registry: ToolRegistry) -> int:
        """Tokens the prompt may take: the context less the reply (at most a quarter of it) and
        the tool list the decision prompt appends; the history is trimmed to fit (limits.py)."""
        context = self.engines.context_tokens
        listing = "\n".join(f"- {tool.name}: {tool.description}" for tool in registry)
        tools = self.engines.count_tokens(listing) + TOOL_QUESTION_TOKENS if len(registry) else 0
        return context - min(max_tokens, context // 4) - tools

    async def _decide(self, llm: Any, registry: ToolRegistry, choice_spec: str | Mapping[str, Any], response: Response) -> Tool | None:
        if not len(registry):
            return None
        choice = registry.resolve(choice_spec)
        if choice.mode == "none":
            return None
        if choice.mode == "function":
            return registry[str(choice.name)]
        if choice.mode == "required" and len(registry) == 1:
            return registry[registry.names[0]]
        name = await anyio.to_thread.run_sync(llm.choose_tool, self.conversation.messages(), registry, choice, response.token)
        if name in registry:
            return registry[name]
        return registry[registry.names[0]] if choice.mode == "required" else None

    async def _message(self, ctx: StageContext, outbox: Outbox, llm: Any, state: ResponseState) -> None:
        audio = "audio" in state.request.modalities
        item = ItemRecord(new_id("item"), "message", role="assistant", status="in_progress")
        self._add_output_item(state, item)
        part = ContentPart("output_audio" if audio else "output_text", "")
        item.content.append(part)
        state.part = part
        self.emit("response.content_part.added", **self.part_ids(state), part=render_part(part, self.dialect, as_response_part=True))
        assert state.response is not None
        item.ref = state.response
        await llm.generate(ctx, state.response, _Tap(self, state, outbox, audio))

    def _add_output_item(self, state: ResponseState, item: ItemRecord) -> None:
        previous = self.items[-1].id if self.items else None
        state.output.append(item)
        self.items.append(item)
        self.emit("response.output_item.added", response_id=state.id, output_index=len(state.output) - 1, item=render_item(item, self.dialect))
        self._emit_item_added(item, previous)

    async def _function_call(self, ctx: StageContext, llm: Any, state: ResponseState, tool: Tool) -> None:
        response = state.response
        assert response is not None
        call_id = new_id("call")
        item = ItemRecord(new_id("item"), "function_call", status="in_progress", call_id=call_id, name=tool.name, arguments="")
        self._add_output_item(state, item)
        ids = {"response_id": state.id, "item_id": item.id, "output_index": len(state.output) - 1, "call_id": call_id}
        messages = self.conversation.messages()
        streamed = await self._stream_arguments(llm, messages, tool, response, lambda piece: self._argument_delta(state, item, ids, piece))
        if not streamed and not response.cancelled:  # cut off: the LLM's own bounded second pass
            item.arguments = ""
            pieces = await anyio.to_thread.run_sync(lambda: list(llm.stream_arguments(messages, tool, response.token)))
            for piece in pieces:
                self._argument_delta(state, item, ids, piece)
        if response.cancelled:
            return
        item.arguments = (item.arguments or "").strip()
        done = {"name": tool.name} if self.dialect is Dialect.GA else {}
        self.emit("response.function_call_arguments.done", **ids, arguments=item.arguments, **done)
        entry = FunctionCall(response.turn_id, call_id, tool.name, item.arguments)
        self.conversation.add_item(entry, before=response)
        item.ref = entry
        self.conversation.complete_response(response)
        if response in self.conversation.items and not response.text:
            self.conversation.items.remove(response)  # the call is the whole answer

    def _argument_delta(self, state: ResponseState, item: ItemRecord, ids: dict[str, Any], piece: str) -> None:
        state.output_tokens += 1
        item.arguments = (item.arguments or "") + piece
        self.emit("response.function_call_arguments.delta", **ids, delta=piece)

    @staticmethod
    async def _stream_arguments(llm: Any, messages: list[dict[str, Any]], tool: Tool, response: Response, on_piece: Callable[[str], None]) -> bool:
        """Stream the call's arguments under the schema grammar, stopping once they are complete JSON.

        The grammar admits whitespace after the closing brace, which a small model
        may write until the token limit; stopping at the first complete JSON makes
        the call as fast as its arguments. Returns False if no complete JSON came
        (cut off at the limit), which the caller retries with the LLM's bounded pass.
        """
        stream = getattr(llm, "_stream", None)
        if stream is None or not hasattr(llm, "arguments_messages"):
            return False
        token = CancelToken(response.token)
        pieces = stream(llm.arguments_messages(messages, tool), token, grammar=llm.arguments_grammar(tool),
                        max_tokens=llm.max_argument_tokens, temperature=0.0)
        text = ""
        try:
            while not token.cancelled:
                piece = await anyio.to_thread.run_sync(next, pieces, None)
                if piece is None:
                    return False
                text += piece
                on_piece(piece)
                if _is_json_object(text):
                    return True
            return False
        finally:
            token.cancel("arguments complete")
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(pieces.close)
            token.release()

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
        self.emit("response.done", response=self._response_object(state, status, details, usage))
        if self._active is state:
            self._active = None
