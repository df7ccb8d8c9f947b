"""The responder: answers each user turn through an LLM engine, calling tools on the way.

One class for every front end. The CLI's pipeline and the Realtime server both answer
through :meth:`Responder.generate`; what differs is only the :class:`ToolStrategy`: the
pipeline runs the tools itself (:class:`RunTools`), the server hands each call to its client
as a Realtime function-call item. The model is an :class:`~.llm_engine.LLMEngine` (the
embedded llama.cpp one, an OpenAI-compatible server, a failover of both).

The loop, per response: ask the engine under the step's tool choice → if it called tools:
give each to the strategy (run it, put call and result into the history) and ask again,
or stop there (the client runs it) → else stream the answer as TextDelta frames. The
forced ``tool_choice`` applies to the first step of a response; later ones use
``followup_tool_choice``; after ``max_tool_calls`` calls the model must answer.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

from .conversation import Conversation, FunctionCall, FunctionCallOutput
from .frames import ResponseEnd, TextDelta, TranscriptFinal, TranscriptPreview
from .interruption import has_words
from .llm_engine import EngineSwitched, LLMEngine, LLMRequest, TextPiece, ToolCallPiece
from .response import Response
from .stage import Inbox, Outbox, Stage, StageContext, send_unless_cancelled
from .tools import (
    Tool,
    ToolCall,
    ToolCallDone,
    ToolCallStarted,
    ToolChoice,
    ToolChoiceSpec,
    ToolError,
    ToolRegistry,
    ToolResult,
    as_registry,
)
from .tracing import LLM_FIRST_TOKEN, PROMPT_TOKENS, PROMPT_TOKENS_CACHED, PROMPT_TOKENS_EVALUATED
from .turn_taking import TEXT_MODEL, TurnScore

log = logging.getLogger(__name__)

ToolsSpec = ToolRegistry | list[Tool | Callable[..., object]] | tuple[Tool | Callable[..., object], ...] | None

# Tracer stamps of a turn with tool calls (first call's start, last call's end).
TOOL_CALL_STARTED = "tool_call_started"
TOOL_CALL_DONE = "tool_call_done"
#: Tracer note: the engine that answered the turn (its label).
LLM_ENGINE = "llm_engine"


@dataclass
class PendingCall:
    """A tool call the model is writing (``index`` within its generation)."""

    index: int
    name: str = ""
    arguments: str = ""
    call_id: str | None = None

    def finished(self) -> ToolCall:
        call_id = self.call_id
        arguments = canonical_json(self.arguments)
        return ToolCall(self.name, arguments) if call_id is None else ToolCall(self.name, arguments, call_id)


@dataclass(frozen=True)
class EngineSwitchedEvent:
    """Conversation event: ``label`` answers ``response`` from here on (a failover: ``reason``)."""

    response: Response
    label: str
    reason: str
    at_s: float = field(default_factory=time.monotonic)


def canonical_json(text: str) -> str:
    """Compact strict JSON for what parses (even with raw control characters), else the text as is."""
    try:
        return json.dumps(json.loads(text, strict=False), ensure_ascii=False)
    except ValueError:
        return text.strip()


class ToolStrategy:
    """What the responder does with the tool calls the model makes.

    The hooks see a call as it is written (for clients that stream argument deltas) and
    decide what a finished call leads to. This base runs nothing: see :class:`RunTools`.
    """

    def call_started(self, response: Response, call: PendingCall) -> None:
        """The model began call ``call`` (its name is known)."""

    def arguments_delta(self, response: Response, call: PendingCall, piece: str, *, restart: bool) -> None:
        """More argument text of ``call`` (``restart``: the text so far was void)."""

    async def finished(self, ctx: StageContext, responder: Responder, response: Response,
                       registry: ToolRegistry, call: ToolCall) -> bool:
        """The call is complete: True if the model goes on (its result is in the history)."""
        raise NotImplementedError


class RunTools(ToolStrategy):
    """The pipeline's strategy: run the call here, put call and result into the history, go on.

    A non-cancellable call outlives a barge-in in the responder's background task group, so
    the next turn need not wait for it.
    """

    async def finished(self, ctx: StageContext, responder: Responder, response: Response,
                       registry: ToolRegistry, call: ToolCall) -> bool:
        conversation = ctx.conversation
        tool = registry[call.name] if call.name in registry else None
        conversation.add_item(FunctionCall(response.turn_id, call.call_id, call.name, call.arguments), before=response)
        ctx.tracer.stamp(response.turn_id, TOOL_CALL_STARTED)
        log.debug("calling %s(%s) for %s", call.name, call.arguments, response.id)
        conversation.emit(ToolCallStarted(response, call))
        done = anyio.Event()

        async def run_call() -> None:
            result = await registry.call(call, response.token)
            self._record(ctx, response, call, result)
            done.set()

        remove_listener = conversation.add_listener(superseder(conversation, response))
        try:
            background = responder.background
            if tool is None or tool.cancellable or background is None:
                await run_call()  # a cancellable call returns at once on barge-in
            else:
                background.start_soon(run_call, name=f"tool {call.name}")
                with response.token.scope():
                    await done.wait()
        finally:
            remove_listener()
        return True

    @staticmethod
    def _record(ctx: StageContext, response: Response, call: ToolCall, result: ToolResult) -> None:
        ctx.conversation.add_item(FunctionCallOutput(response.turn_id, call.call_id, result.output), before=response)
        ctx.tracer.stamp(response.turn_id, TOOL_CALL_DONE, overwrite=True)
        ctx.tracer.note(response.turn_id, f"tool {call.call_id}", f"{call.name}({call.arguments}) -> {result.status.value}: {result.output}")
        ctx.conversation.emit(ToolCallDone(response, call, result))


def superseder(conversation: Conversation, response: Response) -> Callable[[object], None]:
    """While a tool runs the responder reads no frames, so a newer turn's words would wait for
    the call to end. Instead, their final transcript supersedes the response at once (what
    ``begin_response`` would do later), when interruptions are allowed. This covers speech the
    barge-in policy had judged a false interruption before its words were transcribed."""

    def on_event(event: object) -> None:
        if (
            isinstance(event, TranscriptFinal)
            and event.turn_id > response.turn_id
            and has_words(event.text)
            and conversation.allow_interruptions
            and not response.ended
            and not response.paused  # a pending interruption: the conversation confirms it itself
        ):
            conversation.cancel_response("superseded")

    return on_event


class Responder(Stage):
    """Answers each final transcript with a streamed reply from ``engine``, calling tools on the way.

    ``speculate``: start the reply from the ASR's preview during the end-of-turn silence
    (used only without tools, and only if the conversation allows it). ``score_end_of_turn``:
    send the engine's text end-of-turn score of each preview as a TurnScore event.
    """

    name = "llm"
    answers_turns = True

    def __init__(
        self,
        engine: LLMEngine,
        *,
        max_tokens: int | None = None,
        tools: ToolsSpec = None,
        tool_choice: ToolChoiceSpec = "auto",
        followup_tool_choice: ToolChoiceSpec = "auto",
        max_tool_calls: int = 3,
        speculate: bool = True,
        score_end_of_turn: bool = True,
        strategy: ToolStrategy | None = None,
    ) -> None:
        if max_tool_calls < 0:
            raise ValueError(f"max_tool_calls must be 0 or more, got {max_tool_calls}")
        self.engine = engine
        self.max_tokens = max_tokens if max_tokens is not None else engine.max_tokens
        self.tools = as_registry(tools)
        self.tool_choice = self.tools.resolve(tool_choice) if len(self.tools) else ToolChoice.parse(tool_choice)
        self.followup_tool_choice = ToolChoice.parse(followup_tool_choice)
        if self.followup_tool_choice.mode not in ("auto", "none"):
            raise ToolError("followup_tool_choice must be 'auto' or 'none' (a forced choice would call tools until max_tool_calls)")
        self.max_tool_calls = max_tool_calls
        self.speculate = speculate
        self.score_end_of_turn = score_end_of_turn
        self.strategy = strategy or RunTools()
        self.end_of_turn_cost_ms: list[float] = []
        #: Where non-cancellable tool calls run on past a barge-in (while :meth:`run` runs).
        self.background: TaskGroup | None = None

    async def setup(self, ctx: StageContext) -> None:
        check_tools = getattr(self.engine, "check_tools", None)
        if check_tools is not None:  # an unsupported schema fails now, not mid-conversation
            check_tools(list(self.tools))
        await self.engine.start()

    async def aclose(self) -> None:
        await self.engine.aclose()

    def bind_history(self, conversation: Conversation, max_tokens: int | None = None, tools: ToolRegistry | None = None) -> None:
        """Give the conversation's history window this engine's tokenizer and prompt budget."""
        registry = self.tools if tools is None else tools
        budget = self.engine.prompt_budget_tokens(max_tokens or self.max_tokens, list(registry))
        conversation.history_window.use_model(self.engine.count_tokens, budget)

    # -- the stage ----------------------------------------------------------------------
    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        conversation = ctx.conversation
        async with anyio.create_task_group() as self.background:
            try:
                async for frame in inbox:
                    await outbox.send(frame)
                    if isinstance(frame, TranscriptPreview) and self.score_end_of_turn:
                        await self.emit_end_of_turn_score(conversation, frame)
                    if isinstance(frame, TranscriptPreview) and self.speculate and not len(self.tools):
                        # The turn may be ending: prepare the reply now; it plays only if the
                        # VAD commits the turn where the preview assumed (tool calls could have
                        # side effects, so with tools the reply waits for the final transcript).
                        held = conversation.begin_speculative_response(frame.turn_id, frame.text.strip(), frame.audio_end_ms)
                        if held is not None:
                            await self.generate(ctx, held, outbox)
                        continue
                    if not isinstance(frame, TranscriptFinal):
                        continue
                    text = frame.text.strip()
                    if conversation.answered_by_speculation(frame.turn_id, text):
                        continue
                    if not text:
                        conversation.close_turn(frame.turn_id)
                        continue
                    response = conversation.begin_response(frame.turn_id, text)
                    await self.generate(ctx, response, outbox)
            finally:
                self.background = None

    async def emit_end_of_turn_score(self, conversation: Conversation, preview: TranscriptPreview) -> None:
        """The text end-of-turn score of the pause ``preview`` was made for, as a TurnScore event.

        Scored on the history plus the previewed words, before the speculative reply starts, so
        the reply's prompt evaluation reuses the prefix this one leaves in the KV cache.
        """
        messages = [*conversation.messages(), {"role": "user", "content": preview.text.strip()}]
        began = time.perf_counter()
        probability = await self.engine.end_of_turn_probability(messages)
        if probability is not None:
            cost_ms = 1000.0 * (time.perf_counter() - began)
            self.end_of_turn_cost_ms.append(cost_ms)
            conversation.emit(TurnScore(preview.turn_id, preview.audio_end_ms, TEXT_MODEL, probability, cost_ms))

    # -- one response -------------------------------------------------------------------
    async def generate(
        self,
        ctx: StageContext,
        response: Response,
        outbox: Outbox,
        *,
        tools: ToolsSpec = None,
        tool_choice: ToolChoiceSpec | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        strategy: ToolStrategy | None = None,
    ) -> None:
        """Answer ``response`` (calling tools as needed) into ``outbox``: TextDelta frames, then ResponseEnd.

        ``tools``, ``tool_choice``, ``max_tokens``, ``temperature`` and ``strategy`` override
        the responder's for this response (the server's per-response settings).
        """
        registry = self.tools if tools is None else as_registry(tools)
        requested = self.tool_choice if tool_choice is None else tool_choice
        choice = registry.resolve(requested) if len(registry) else ToolChoice("none")
        strategy = strategy or self.strategy
        max_tokens = max_tokens or self.max_tokens
        calls = 0
        self.bind_history(ctx.conversation, max_tokens, registry)
        ctx.tracer.note(response.turn_id, LLM_ENGINE, self.engine.label)
        while not response.cancelled:
            step = self._step_choice(choice, calls, registry)
            request = LLMRequest(
                ctx.conversation.messages(),  # ends with the user's turn, or the last tool result
                registry if step.mode != "none" else ToolRegistry(), step, max_tokens, temperature,
            )
            made = await self._generation(ctx, response, outbox, request, strategy)
            if response.cancelled or not made:
                break
            proceed = True
            for call in made:
                if response.cancelled:
                    break
                proceed = await strategy.finished(ctx, self, response, registry, call) and proceed
                calls += 1
            if not proceed:
                break
        ctx.tracer.note(response.turn_id, "assistant", response.text)
        await send_unless_cancelled(outbox, ResponseEnd(response))

    def _step_choice(self, choice: ToolChoice, calls: int, registry: ToolRegistry) -> ToolChoice:
        if not len(registry) or calls >= self.max_tool_calls or choice.mode == "none":
            return ToolChoice("none")
        return choice if calls == 0 else self.followup_tool_choice

    async def _generation(self, ctx: StageContext, response: Response, outbox: Outbox, request: LLMRequest,
                          strategy: ToolStrategy) -> list[ToolCall]:
        """One engine generation: text goes out as TextDelta frames; the calls it made are returned
        (none if it answered, or was cancelled while writing a call: that call was never made)."""
        calls: dict[int, PendingCall] = {}
        async with aclosing(self.engine.stream(request, response.token)) as pieces:
            async for piece in pieces:
                if response.cancelled:
                    break
                if isinstance(piece, TextPiece):
                    if not piece.text:
                        continue
                    if not response.text:
                        ctx.tracer.stamp(response.turn_id, LLM_FIRST_TOKEN)
                    response.add_text(piece.text)
                    await send_unless_cancelled(outbox, TextDelta(response, piece.text))
                elif isinstance(piece, ToolCallPiece):
                    call = calls.get(piece.index)
                    if call is None:
                        call = calls[piece.index] = PendingCall(piece.index, piece.name or "", call_id=piece.call_id)
                        strategy.call_started(response, call)
                    if piece.restart:
                        call.arguments = ""
                    if piece.arguments or piece.restart:
                        call.arguments += piece.arguments
                        strategy.arguments_delta(response, call, piece.arguments, restart=piece.restart)
                elif isinstance(piece, EngineSwitched):
                    log.info("response %s: %s answers (%s)", response.id, piece.label, piece.reason)
                    ctx.tracer.note(response.turn_id, LLM_ENGINE, f"{piece.label} ({piece.reason})")
                    if piece.restart:
                        calls.clear()
                    ctx.conversation.emit(EngineSwitchedEvent(response, piece.label, piece.reason))
        prompt = self.engine.prompt_tokens()
        if prompt is not None and prompt.measured and not calls:  # the turn's last reply wins
            ctx.tracer.count(response.turn_id, PROMPT_TOKENS, prompt.total)
            ctx.tracer.count(response.turn_id, PROMPT_TOKENS_CACHED, prompt.cached)
            ctx.tracer.count(response.turn_id, PROMPT_TOKENS_EVALUATED, prompt.evaluated)
        if response.cancelled:
            return []
        return [call.finished() for _, call in sorted(calls.items()) if call.name]
