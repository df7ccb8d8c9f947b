"""LLM token streamer on llama-cpp-python, with function calling.

Function calling, and who decides what (details in docs/tools.md):

* The library guarantees: ``tool_choice="none"`` never calls a tool;
  ``"required"`` always calls one; a named choice always calls that one; at
  most ``max_tool_calls`` calls per response; the arguments are decoded under
  a grammar built from the tool's JSON schema, with a second, length-capped
  pass if the first is cut off by the token budget, so they parse as strict
  JSON and match the schema (except for the keywords in
  :data:`UNENFORCED_KEYWORDS`; arguments are validated again before the call,
  and anything invalid becomes an error result, never a crash); every call
  and its result go into the history before the spoken answer.
* The model decides: with ``"auto"``, *whether* to call a tool and *which*
  one (a grammar lets it write only a tool name or "answer"), and with
  ``"required"`` which one; the argument *values* (valid, not necessarily
  right); and what it says about the result. SmolLM2-135M, the embedded
  model, decides badly (it wrote get_weather for every request we tried):
  use a named choice with it, or a bigger GGUF model for ``"auto"``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from anyio.abc import TaskGroup

from .. import models
from ..cancellation import CancelToken
from ..conversation import Conversation, FunctionCall, FunctionCallOutput
from ..frames import ResponseEnd, TextDelta, TranscriptFinal, TranscriptPreview
from ..interruption import has_words
from ..response import Response
from ..stage import Inbox, Outbox, Stage, StageContext, send_unless_cancelled
from ..tools import (
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
from ..tracing import LLM_FIRST_TOKEN
from ..turn_taking import TEXT_MODEL, TurnScore

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]
ToolsSpec = ToolRegistry | Iterable[Tool | Callable[..., Any]] | None

# Tracer stamps of a turn with tool calls (first call's start, last call's end).
TOOL_CALL_STARTED = "tool_call_started"
TOOL_CALL_DONE = "tool_call_done"


def render_for_template(messages: Messages) -> list[dict[str, str]]:
    """Chat Completions messages (with ``tool_calls`` / ``tool``) as plain role/content messages.

    Chat templates without tool support (SmolLM2's) render only role and
    content. A call and its result become one system message naming the call,
    which even a small model reads as a fact to answer from.
    """
    calls: dict[str, dict[str, Any]] = {}
    rendered: list[dict[str, str]] = []
    for message in messages:
        role = message.get("role", "user")
        if role == "assistant" and message.get("tool_calls"):
            for call in message["tool_calls"]:
                calls[call.get("id", "")] = call.get("function", {})
            if message.get("content"):
                rendered.append({"role": "assistant", "content": str(message["content"])})
            continue
        if role == "tool":
            function = calls.get(message.get("tool_call_id", ""))
            called = f"{function.get('name')}({function.get('arguments', '')})" if function else "a tool"
            rendered.append({"role": "system", "content": f"Tool result of {called}: {message.get('content', '')}"})
            continue
        rendered.append({"role": role, "content": str(message.get("content") or "")})
    if messages and messages[-1].get("role") == "tool":
        rendered[-1]["content"] += "\nAnswer the user with this result."
    return rendered


def normalize_for_end_of_turn(text: str) -> str:
    """The user's words as the text end-of-turn score reads them: lower case, no punctuation
    (Whisper ends nearly every clip with a period, finished or not)."""
    return " ".join(re.sub(r"[^\w' ]+", " ", text.lower()).split())


def bounded_schema(schema: dict[str, Any], *, max_string_chars: int, max_items: int) -> tuple[dict[str, Any], int | None]:
    """``schema`` with every unbounded string capped at ``max_string_chars`` and every unbounded
    array at ``max_items``, and the most characters a JSON value matching it can take (None if
    still unbounded: patterns, free-form objects, recursion). Anything it admits matches ``schema``.
    """

    def cap(node: Any) -> Any:
        if isinstance(node, list):
            return [cap(item) for item in node]
        if not isinstance(node, dict):
            return node
        node = {key: cap(value) for key, value in node.items()}
        if node.get("type") == "string" and not {"maxLength", "enum", "const", "pattern", "format"} & node.keys():
            node["maxLength"] = max_string_chars
        if node.get("type") == "array" and isinstance(node.get("items"), dict) and "maxItems" not in node:
            node["maxItems"] = max_items
        return node

    capped = cap(schema)
    definitions = capped.get("$defs", {})

    def size(node: Any, depth: int = 0) -> int | None:
        if not isinstance(node, dict) or depth > 16:
            return None
        if "$ref" in node:
            target = str(node["$ref"]).rsplit("/", 1)[-1]
            return size(definitions.get(target), depth + 1)
        if "const" in node:
            return len(json.dumps(node["const"])) + 1
        if "enum" in node:
            return max(len(json.dumps(value)) for value in node["enum"]) + 1
        alternatives = node.get("anyOf") or node.get("oneOf")
        if alternatives or isinstance(node.get("type"), list):
            options = alternatives or [{**node, "type": kind} for kind in node["type"]]
            sizes = [size(option, depth + 1) for option in options]
            return None if None in sizes else max(s for s in sizes if s is not None)
        kind = node.get("type")
        if kind == "string":  # a character may be an escape of up to 6 characters
            return None if "maxLength" not in node or "pattern" in node else 3 + 6 * int(node["maxLength"])
        if kind in ("integer", "number"):
            return 60
        if kind in ("boolean", "null"):
            return 6
        if kind == "array" or "items" in node or "prefixItems" in node:
            items = node.get("prefixItems") or node.get("items")
            if isinstance(items, list):
                sizes = [size(item, depth + 1) for item in items]
                return None if None in sizes else 3 + sum(s + 2 for s in sizes if s is not None)
            item = size(items, depth + 1)
            return None if item is None or "maxItems" not in node else 3 + int(node["maxItems"]) * (item + 2)
        if kind == "object" or "properties" in node:
            if node.get("additionalProperties") not in (None, False) or not node.get("properties") and "additionalProperties" not in node:
                return None
            total = 3
            for key, value in node.get("properties", {}).items():
                value_size = size(value, depth + 1)
                if value_size is None:
                    return None
                total += len(json.dumps(key)) + 3 + value_size + 2
            return total
        return None

    return capped, size(capped)


#: JSON schema keywords llama-cpp-python's grammar converter ignores: the model may break them.
#: Arguments are still validated before the call, so a violation becomes an error result.
UNENFORCED_KEYWORDS = frozenset({
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems",
    "not", "if", "then", "else", "minProperties", "maxProperties", "dependentRequired",
    "dependentSchemas", "contains", "propertyNames", "patternProperties",
})


def unenforced_keywords(schema: Any) -> set[str]:
    """The keywords of ``schema`` the argument grammar cannot enforce (see :data:`UNENFORCED_KEYWORDS`)."""
    found: set[str] = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in UNENFORCED_KEYWORDS:
                found.add(key)
            if key not in ("properties", "$defs", "default", "enum", "const", "examples"):
                found |= unenforced_keywords(value)
            elif key in ("properties", "$defs") and isinstance(value, dict):
                for sub in value.values():
                    found |= unenforced_keywords(sub)
    elif isinstance(schema, list):
        for item in schema:
            found |= unenforced_keywords(item)
    return found


# llama-cpp-python's converter lets a JSON string hold raw control characters (newlines...),
# which strict JSON forbids and small models use to ramble on; this is the rule JSON means.
_LAX_CHAR_RULE = 'char ::= [^"\\\\] |'
_JSON_CHAR_RULE = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


def json_gbnf(schema_json: str) -> str:
    """The GBNF grammar of the strict JSON texts that match the schema (within what the
    converter supports: see :data:`UNENFORCED_KEYWORDS`)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return json_schema_to_gbnf(schema_json).replace(_LAX_CHAR_RULE, _JSON_CHAR_RULE)


def json_grammar(schema_json: str) -> Any:
    """:func:`json_gbnf` as a llama.cpp grammar."""
    from llama_cpp import LlamaGrammar

    return LlamaGrammar.from_string(json_gbnf(schema_json), verbose=False)


def _canonical_json(text: str) -> str:
    """Compact strict JSON for what parses (even with raw control characters), else the text as is."""
    try:
        return json.dumps(json.loads(text, strict=False), ensure_ascii=False)
    except ValueError:
        return text.strip()


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


class ChatLLM(Stage):
    """Answers each final transcript with a streamed reply, calling tools on the way.

    The loop, per response: decide (a tool, or answer) → if a tool: generate
    its arguments, run it (the conversation stays live: ASR and barge-in go
    on), put call and result into the history, and decide again → stream the
    answer as TextDelta frames. The forced ``tool_choice`` applies to the
    first decision of a response; later ones use ``followup_tool_choice``;
    after ``max_tool_calls`` calls the model must answer.

    Subclasses provide the three blocking model calls (:meth:`stream_reply`,
    :meth:`choose_tool`, :meth:`stream_arguments`), which run in a worker
    thread and stop between tokens once the token is cancelled.
    """

    name = "llm"

    def __init__(
        self,
        *,
        max_tokens: int = 120,
        tools: ToolsSpec = None,
        tool_choice: ToolChoiceSpec = "auto",
        followup_tool_choice: ToolChoiceSpec = "auto",
        max_tool_calls: int = 3,
        speculate: bool = True,
        score_end_of_turn: bool = True,
    ) -> None:
        """``speculate``: start the reply from the ASR's preview during the end-of-turn silence
        (used only without tools, and only if the conversation allows it). ``score_end_of_turn``:
        send the text end-of-turn score of each preview (:meth:`end_of_turn_probability`)."""
        if max_tool_calls < 0:
            raise ValueError(f"max_tool_calls must be 0 or more, got {max_tool_calls}")
        self.max_tokens = max_tokens
        self.tools = as_registry(tools)
        self.tool_choice = self.tools.resolve(tool_choice) if len(self.tools) else ToolChoice.parse(tool_choice)
        self.followup_tool_choice = ToolChoice.parse(followup_tool_choice)
        if self.followup_tool_choice.mode not in ("auto", "none"):
            raise ToolError("followup_tool_choice must be 'auto' or 'none' (a forced choice would call tools until max_tool_calls)")
        self.max_tool_calls = max_tool_calls
        self.speculate = speculate
        self.score_end_of_turn = score_end_of_turn
        self.end_of_turn_cost_ms: list[float] = []
        self._background: TaskGroup | None = None

    # -- the blocking model calls -------------------------------------------------------
    @abstractmethod
    def stream_reply(self, messages: Messages, token: CancelToken, *, max_tokens: int | None = None) -> Iterator[str]:
        """Blocking generator of reply text pieces; stops between tokens once ``token`` is cancelled."""

    def choose_tool(self, messages: Messages, tools: ToolRegistry, choice: ToolChoice, token: CancelToken) -> str | None:
        """Blocking: the model's pick, a tool name or None to answer.

        Called for ``auto`` and for ``required`` with several tools only
        (forced choices are settled without the model); a name that is no
        tool counts as "answer" for auto and as the first tool for required.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support tool calls")

    def stream_arguments(self, messages: Messages, tool: Tool, token: CancelToken) -> Iterator[str]:
        """Blocking generator of the call's JSON arguments text, piece by piece."""
        raise NotImplementedError(f"{type(self).__name__} does not support tool calls")

    def end_of_turn_probability(self, messages: Messages) -> float | None:
        """Blocking: the probability that the user's last message ends their turn, or None if
        this engine cannot tell (the text end-of-turn model of :mod:`..turn_taking`)."""
        return None

    # -- the stage ----------------------------------------------------------------------
    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        conversation = ctx.conversation
        # Non-cancellable tool calls outlive a barge-in here, so the next turn need not wait for them.
        async with anyio.create_task_group() as self._background:
            try:
                async for frame in inbox:
                    await outbox.send(frame)
                    if isinstance(frame, TranscriptPreview) and self.score_end_of_turn:
                        await self._score_end_of_turn(conversation, frame)
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
                self._background = None

    async def _score_end_of_turn(self, conversation: Conversation, preview: TranscriptPreview) -> None:
        """The text end-of-turn score of the pause ``preview`` was made for, as a TurnScore event.

        Scored on the history plus the previewed words, before the speculative reply starts, so
        the reply's prompt evaluation reuses the prefix this one leaves in the KV cache.
        """
        messages = [*conversation.messages(), {"role": "user", "content": preview.text.strip()}]
        began = time.perf_counter()
        probability = await anyio.to_thread.run_sync(self.end_of_turn_probability, messages)
        if probability is not None:
            cost_ms = 1000.0 * (time.perf_counter() - began)
            self.end_of_turn_cost_ms.append(cost_ms)
            conversation.emit(TurnScore(preview.turn_id, preview.audio_end_ms, TEXT_MODEL, probability, cost_ms))

    async def generate(
        self,
        ctx: StageContext,
        response: Response,
        outbox: Outbox,
        *,
        tools: ToolsSpec = None,
        tool_choice: ToolChoiceSpec | None = None,
    ) -> None:
        """Answer ``response`` (calling tools as needed) into ``outbox``: TextDelta frames, then ResponseEnd.

        ``tools`` and ``tool_choice`` override the stage's for this response.
        """
        registry = self.tools if tools is None else as_registry(tools)
        requested = self.tool_choice if tool_choice is None else tool_choice
        choice = registry.resolve(requested) if len(registry) else ToolChoice("none")
        calls = 0
        while not response.cancelled:
            step = self._step_choice(choice, calls, registry)
            messages = ctx.conversation.messages()  # ends with the user's turn, or the last tool result
            name = await self._decide(registry, step, messages, response)
            if response.cancelled:
                break
            if name is None:
                await self._stream_text(ctx, response, outbox, messages)
                break
            await self._call_tool(ctx, response, registry, registry[name], messages)
            calls += 1
        ctx.tracer.note(response.turn_id, "assistant", response.text)
        await send_unless_cancelled(outbox, ResponseEnd(response))

    async def _decide(self, registry: ToolRegistry, step: ToolChoice, messages: Messages, response: Response) -> str | None:
        """The tool to call now, or None to answer. Forced choices never ask the model."""
        if step.mode == "none":
            return None
        if step.mode == "function":
            return step.name
        if step.mode == "required" and len(registry) == 1:
            return registry.names[0]
        name = await anyio.to_thread.run_sync(self.choose_tool, messages, registry, step, response.token)
        if name in registry or response.cancelled:
            return name if name in registry else None
        if step.mode == "required":  # the guarantee holds whatever the model wrote
            log.warning("the model chose %r under tool_choice='required'; calling %s", name, registry.names[0])
            return registry.names[0]
        if name is not None:
            log.warning("the model chose %r, which is no tool; answering instead", name)
        return None

    def _step_choice(self, choice: ToolChoice, calls: int, registry: ToolRegistry) -> ToolChoice:
        if not len(registry) or calls >= self.max_tool_calls or choice.mode == "none":
            return ToolChoice("none")
        return choice if calls == 0 else self.followup_tool_choice

    async def _stream_text(self, ctx: StageContext, response: Response, outbox: Outbox, messages: Messages) -> None:
        replies = self.stream_reply(messages, response.token)
        try:
            while not response.cancelled:
                piece = await anyio.to_thread.run_sync(next, replies, None)
                if piece is None:
                    break
                if not response.text:
                    ctx.tracer.stamp(response.turn_id, LLM_FIRST_TOKEN)
                response.add_text(piece)
                await send_unless_cancelled(outbox, TextDelta(response, piece))
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(replies.close)

    async def _call_tool(self, ctx: StageContext, response: Response, registry: ToolRegistry, tool: Tool, messages: Messages) -> None:
        """Generate the arguments, run the call, record both in the history."""
        conversation = ctx.conversation
        pieces = self.stream_arguments(messages, tool, response.token)
        arguments = ""
        try:
            while not response.cancelled:
                piece = await anyio.to_thread.run_sync(next, pieces, None)
                if piece is None:
                    break
                arguments += piece
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(pieces.close)
        if response.cancelled:
            return  # interrupted while writing the arguments: the call was never made
        call = ToolCall(tool.name, _canonical_json(arguments))
        conversation.add_item(FunctionCall(response.turn_id, call.call_id, call.name, call.arguments), before=response)
        ctx.tracer.stamp(response.turn_id, TOOL_CALL_STARTED)
        log.debug("calling %s(%s) for %s", call.name, call.arguments, response.id)
        conversation.emit(ToolCallStarted(response, call))
        done = anyio.Event()

        async def run_call() -> None:
            result = await registry.call(call, response.token)
            self._record(ctx, response, call, result)
            done.set()

        remove_listener = conversation.add_listener(self._superseder(conversation, response))
        try:
            if tool.cancellable or self._background is None:
                await run_call()  # a cancellable call returns at once on barge-in
            else:
                self._background.start_soon(run_call, name=f"tool {call.name}")
                with response.token.scope():
                    await done.wait()
        finally:
            remove_listener()

    @staticmethod
    def _superseder(conversation: Conversation, response: Response) -> Callable[[object], None]:
        """While a tool runs this stage reads no frames, so a newer turn's words would wait for the
        call to end. Instead, their final transcript supersedes the response at once (what
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

    def _record(self, ctx: StageContext, response: Response, call: ToolCall, result: ToolResult) -> None:
        ctx.conversation.add_item(FunctionCallOutput(response.turn_id, call.call_id, result.output), before=response)
        ctx.tracer.stamp(response.turn_id, TOOL_CALL_DONE, overwrite=True)
        ctx.tracer.note(response.turn_id, f"tool {call.call_id}", f"{call.name}({call.arguments}) -> {result.status.value}: {result.output}")
        ctx.conversation.emit(ToolCallDone(response, call, result))


class LlamaLLM(ChatLLM):
    """:class:`ChatLLM` on llama.cpp (the embedded SmolLM2-135M by default).

    Generation steps one token per worker-thread call and checks the
    response's token before each, so a barge-in stops it within one token.
    One generation at a time: a llama.cpp context is not thread-safe.

    Tool decisions are constrained by a grammar listing the allowed names
    (and "answer" for ``auto``); arguments by a grammar built from the tool's
    JSON schema (:meth:`llama_cpp.LlamaGrammar.from_json_schema`); both are
    decoded greedily (temperature 0).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        n_ctx: int = 2048,
        n_threads: int = 2,
        max_tokens: int = 120,
        temperature: float = 0.3,
        top_p: float = 0.9,
        repeat_penalty: float = 1.15,
        seed: int | None = None,
        tools: ToolsSpec = None,
        tool_choice: ToolChoiceSpec = "auto",
        followup_tool_choice: ToolChoiceSpec = "auto",
        max_tool_calls: int = 3,
        max_argument_tokens: int = 128,
        max_argument_string_chars: int = 60,
        max_argument_items: int = 8,
        speculate: bool = True,
        score_end_of_turn: bool = True,
    ) -> None:
        super().__init__(
            max_tokens=max_tokens, tools=tools, tool_choice=tool_choice,
            followup_tool_choice=followup_tool_choice, max_tool_calls=max_tool_calls, speculate=speculate,
            score_end_of_turn=score_end_of_turn,
        )
        self.model_path = models.llm_model_file(model_path)
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.temperature = temperature
        self.top_p = top_p
        self.repeat_penalty = repeat_penalty  # SmolLM2-135M loops ("la femme de la femme...") without it
        self.seed = seed
        self.max_argument_tokens = max_argument_tokens
        self.max_argument_string_chars = max_argument_string_chars
        self.max_argument_items = max_argument_items
        self._llm: Any = None
        self._lock = threading.Lock()
        self._grammars: dict[str, Any] = {}
        self._end_of_turn_tokens_cache: list[int] | None = None

    async def setup(self, ctx: StageContext) -> None:
        ctx.conversation.has_responder = True
        for tool in self.tools:  # an unsupported schema fails now, not mid-conversation
            self.arguments_grammar(tool)
            self.bounded_arguments_grammar(tool)
            ignored = unenforced_keywords(dict(tool.parameters))
            if ignored:
                log.warning("tool %s: the argument grammar cannot enforce %s; arguments breaking them become error results", tool.name, sorted(ignored))
        if self._llm is None:
            self._llm = await anyio.to_thread.run_sync(self._load)
            # llama.cpp's first call costs far more than the next ones: pay it now.
            warmup = [{"role": "system", "content": ctx.conversation.system_prompt}, {"role": "user", "content": "Hi"}]
            await anyio.to_thread.run_sync(lambda: list(self.stream_reply(warmup, CancelToken(), max_tokens=2)))
            if self.score_end_of_turn:
                await anyio.to_thread.run_sync(self.end_of_turn_probability, warmup)

    def _load(self) -> Any:
        from llama_cpp import Llama

        kwargs: dict[str, Any] = {"n_ctx": self.n_ctx, "n_threads": self.n_threads, "verbose": False}
        if self.seed is not None:
            kwargs["seed"] = self.seed
        try:
            return Llama(model_path=str(self.model_path), **kwargs)
        except Exception as error:  # llama.cpp raises ValueError for unreadable files
            raise models.ModelNotFoundError(f"cannot load the LLM model {self.model_path}: {error}") from error

    def _stream(self, messages: list[dict[str, str]], token: CancelToken, **options: Any) -> Iterator[str]:
        with self._lock:
            if token.cancelled:
                return
            stream = self._llm.create_chat_completion(messages, stream=True, **options)
            try:
                for chunk in stream:
                    if token.cancelled:
                        return
                    text = chunk["choices"][0]["delta"].get("content")
                    if text:
                        yield text
            finally:
                stream.close()

    def stream_reply(self, messages: Messages, token: CancelToken, *, max_tokens: int | None = None) -> Iterator[str]:
        """Blocking generator of reply text pieces; stops between tokens once ``token`` is cancelled."""
        return self._stream(
            render_for_template(messages), token,
            max_tokens=max_tokens or self.max_tokens, temperature=self.temperature, top_p=self.top_p,
            repeat_penalty=self.repeat_penalty,
        )

    def end_of_turn_probability(self, messages: Messages) -> float | None:
        """The probability that the user's words end here: of the chat template's end-of-turn
        token (as LiveKit's turn detector reads it) or a sentence-final mark, right after the
        user's last message. The words are read without punctuation (Whisper ends nearly every
        clip with a period, finished or not); an instruction model then writes "?" or "." after
        a finished sentence and a word after an unfinished one. The prompt is the one the reply
        renders, cut after the user's words, so the system prompt and history come from the KV
        cache and only the new words are evaluated.
        """
        rendered = render_for_template(messages)
        if not rendered or rendered[-1]["role"] != "user":
            return None
        words = normalize_for_end_of_turn(rendered[-1]["content"])
        if not words:
            return None
        rendered[-1] = {"role": "user", "content": words}
        import llama_cpp

        with self._lock:
            llm = self._llm
            prompt = self._chat_prompt(rendered)
            cut = -1 if prompt is None else prompt.rfind(words)
            if prompt is None or cut < 0:
                return None
            tokens = llm.tokenize(prompt[: cut + len(words)].encode("utf-8"), add_bos=False, special=True)
            end_tokens = self._end_of_turn_tokens()
            cached = llm.input_ids[: llm.n_tokens].tolist()
            common = 0
            for ours, theirs in zip(tokens, cached):
                if ours != theirs:
                    break
                common += 1
            common = min(common, len(tokens) - 1)  # evaluate at least one token: its logits are the answer
            llm.n_tokens = common
            llm.eval(tokens[common:])
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),))
            logits = logits.astype(np.float64)
            probabilities = np.exp(logits - logits.max())
            return float(probabilities[end_tokens].sum() / probabilities.sum())

    def _chat_prompt(self, rendered: list[dict[str, str]]) -> str | None:
        """The prompt text llama.cpp renders for ``rendered`` (None for a model without a chat template)."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llm = self._llm
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        vocab_text = lambda token: llm.detokenize([token], special=True).decode("utf-8", "replace")  # noqa: E731
        formatter = Jinja2ChatFormatter(template, eos_token=vocab_text(llm.token_eos()), bos_token=vocab_text(llm.token_bos()))
        return formatter(messages=rendered).prompt

    def _end_of_turn_tokens(self) -> list[int]:
        """The tokens that end a user's words: the first one the chat template writes after a
        user's message (ChatML's ``<|im_end|>``), and every token that is only ``.``, ``?`` or ``!``."""
        if self._end_of_turn_tokens_cache is None:
            llm = self._llm
            marker = "zzzq"
            prompt = self._chat_prompt([{"role": "user", "content": marker}]) or marker
            after = prompt[prompt.rfind(marker) + len(marker):]
            tokens = llm.tokenize(after.encode("utf-8"), add_bos=False, special=True)
            found = {tokens[0] if tokens else llm.token_eos()}
            for token in range(llm.n_vocab()):
                text = llm.detokenize([token]).decode("utf-8", "replace").strip()
                if text and set(text) <= set(".?!"):
                    found.add(token)
            self._end_of_turn_tokens_cache = sorted(found)
        return self._end_of_turn_tokens_cache

    # -- tool calls ---------------------------------------------------------------------
    def arguments_grammar(self, tool: Tool) -> Any:
        """The grammar that only admits JSON matching ``tool.parameters`` (cached; ToolError if unsupported)."""
        from llama_cpp import LlamaGrammar

        schema = json.dumps(tool.parameters)  # key order kept: the grammar writes properties in it
        grammar = self._grammars.get(schema)
        if grammar is None:
            try:
                grammar = json_grammar(schema)
            except Exception as error:  # the converter asserts/raises on schema features it lacks
                raise ToolError(f"tool {tool.name!r}: llama.cpp cannot turn its schema into a grammar ({error})") from error
            self._grammars[schema] = grammar
        return grammar

    @staticmethod
    def answer_option(tools: ToolRegistry) -> str:
        """The word the decision grammar uses for "no tool, answer" (never a tool's name)."""
        return "answer" if "answer" not in tools else "reply_without_tools"

    def decision_messages(self, messages: Messages, tools: ToolRegistry, allow_answer: bool) -> list[dict[str, str]]:
        """The conversation as the answer sees it, then the tool list and the question in one
        system message at the end: the prompt shares its prefix with the answer's and the
        arguments', so llama.cpp reuses that part of the KV cache instead of reading it again."""
        listing = "\n".join(f"- {tool.name}: {tool.description}" for tool in tools)
        if allow_answer:
            question = (
                "If one of the tools is needed for the user's last request, reply with its name; "
                f"if not, or if a tool result above already has what is needed, reply {self.answer_option(tools)}."
            )
        else:
            question = "Reply with the name of the tool to call for the user's last request."
        return [*render_for_template(messages), {"role": "system", "content": f"You have these tools:\n{listing}\n{question}"}]

    def arguments_messages(self, messages: Messages, tool: Tool) -> list[dict[str, str]]:
        """The conversation with a short request for the arguments added to the user's last turn.

        The schema is left out on purpose: the grammar enforces it, and small models copy its
        descriptions into the values instead of reading the request. Asking inside the user's
        turn (rather than in a system message after it) made SmolLM2-135M take the values from
        the request far more often (``"time": "7pm"`` rather than an invented timestamp).
        """
        rendered = render_for_template(messages)
        names = ", ".join(tool.parameters.get("properties", {}))
        ask = f"(Write the {names} for {tool.name} as JSON.)" if names else f"(Call {tool.name} with a JSON object.)"
        if rendered and rendered[-1]["role"] == "user":
            return [*rendered[:-1], {"role": "user", "content": f"{rendered[-1]['content']}\n\n{ask}"}]
        return [*rendered, {"role": "system", "content": f"Call the tool {tool.name}: {tool.description}\n{ask}"}]

    def choose_tool(self, messages: Messages, tools: ToolRegistry, choice: ToolChoice, token: CancelToken) -> str | None:
        """The model's pick under a grammar that admits only the tool names (and "answer" for auto)."""
        from llama_cpp import LlamaGrammar

        names = tools.names

        allow_answer = choice.mode == "auto"
        options = names + ([self.answer_option(tools)] if allow_answer else [])
        grammar = LlamaGrammar.from_string("root ::= " + " | ".join(json.dumps(option) for option in options), verbose=False)
        prompt = self.decision_messages(messages, tools, allow_answer)
        picked = "".join(self._stream(prompt, token, grammar=grammar, max_tokens=64, temperature=0.0)).strip()
        return picked if picked in names else None

    def stream_arguments(self, messages: Messages, tool: Tool, token: CancelToken) -> Iterator[str]:
        """The call's JSON arguments, decoded under the tool's schema grammar.

        The grammar alone cannot stop a model that rambles inside a string
        (the JSON would be cut off at ``max_argument_tokens``). So if the first
        pass does not end in complete JSON, a second pass runs under a grammar
        of the schema with every string and array capped
        (``max_argument_string_chars``, ``max_argument_items``) and a token
        budget as large as the longest JSON that grammar admits: it always ends
        in complete, schema-valid JSON (for schemas that become bounded; see
        :func:`bounded_schema`). The pieces are yielded once a pass succeeded.
        """
        prompt = self.arguments_messages(messages, tool)
        pieces = list(self._stream(prompt, token, grammar=self.arguments_grammar(tool), max_tokens=self.max_argument_tokens, temperature=0.0))
        if not token.cancelled and not _is_json("".join(pieces)):
            grammar, budget = self.bounded_arguments_grammar(tool)
            log.info("arguments for %s were cut off at %d tokens; decoding again with capped strings (%d tokens at most)", tool.name, self.max_argument_tokens, budget)
            pieces = list(self._stream(prompt, token, grammar=grammar, max_tokens=budget, temperature=0.0))
        yield from pieces

    def bounded_arguments_grammar(self, tool: Tool) -> tuple[Any, int]:
        """The capped-schema grammar and the token budget it needs (see :meth:`stream_arguments`)."""
        from llama_cpp import LlamaGrammar

        schema, max_chars = bounded_schema(dict(tool.parameters), max_string_chars=self.max_argument_string_chars, max_items=self.max_argument_items)
        key = "bounded:" + json.dumps(schema)
        grammar = self._grammars.get(key)
        if grammar is None:
            grammar = self._grammars[key] = json_grammar(json.dumps(schema))
        # A token is at least one character, so max_chars tokens always suffice.
        budget = max_chars if max_chars is not None else 4 * self.max_argument_tokens
        return grammar, max(self.max_argument_tokens, min(budget, self.n_ctx // 2))
