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
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .. import models
from ..cancellation import CancelToken
from ..conversation import DEFAULT_SYSTEM_PROMPT
from ..history_window import estimate_tokens
from ..llm_engine import RESTART, BlockingEngine, Messages, PromptTokens
from ..priority import run_model
from ..responder import (  # noqa: F401  (re-exported: where apps imported them from)
    TOOL_CALL_DONE,
    TOOL_CALL_STARTED,
    Responder,
    ToolsSpec,
    canonical_json,
)
from ..stage import StageContext
from ..tools import Tool, ToolChoice, ToolChoiceSpec, ToolError, ToolRegistry

log = logging.getLogger(__name__)

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


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


_MODEL_PARAMS_LOCK = threading.Lock()

#: Prompt tokens kept free besides the reply: the chat template, the tool decision's question.
PROMPT_RESERVE_TOKENS = 168
#: A context shift needs this many tokens of the new prompt found again in the cache.
MIN_SHIFT_MATCH_TOKENS = 8


def shift_kv_cache(llm: Any, tokens: Sequence[int]) -> int:
    """Make llama.cpp's KV cache of ``llm`` a prefix of ``tokens`` again after a gap was cut out.

    The prompt's history was trimmed (cached: system, dropped, kept; new: system, kept, new), so
    llama-cpp-python's own prefix match would stop after the system prompt. If the tokens after
    the common prefix are found again further on in the cache, the span between is removed from
    the KV cache and the rest moved back (positions shifted; llama.cpp re-rotates the keys).
    Returns the number of cached tokens kept that way (0: nothing to do, or not possible).
    """
    cached = int(llm.n_tokens)
    if cached == 0 or len(tokens) <= MIN_SHIFT_MATCH_TOKENS:
        return 0
    old = np.asarray(llm.input_ids[:cached])
    new = np.asarray(tokens, dtype=old.dtype)
    common = min(cached, len(new))
    differ = np.flatnonzero(old[:common] != new[:common])
    prefix = int(differ[0]) if differ.size else common
    if prefix + MIN_SHIFT_MATCH_TOKENS >= len(new) or prefix + MIN_SHIFT_MATCH_TOKENS >= cached:
        return 0
    probe = new[prefix : prefix + MIN_SHIFT_MATCH_TOKENS]
    for start in np.flatnonzero(old[prefix + 1 :] == probe[0]) + prefix + 1:
        start = int(start)
        if start + MIN_SHIFT_MATCH_TOKENS > cached:
            break
        if not np.array_equal(old[start : start + MIN_SHIFT_MATCH_TOKENS], probe):
            continue
        context, native = llm._ctx, _native()
        memory = getattr(context, "memory", None)
        if memory is None or (hasattr(native, "llama_memory_can_shift") and not native.llama_memory_can_shift(memory)):
            return 0
        gap = start - prefix
        if not context.kv_cache_seq_rm(-1, prefix, start):
            return 0
        context.kv_cache_seq_shift(0, start, cached, -gap)
        kept = cached - start
        llm.input_ids[prefix : prefix + kept] = old[start:cached].copy()
        llm.n_tokens = prefix + kept
        llm._requires_eval = True  # the logits are not those of the new last token
        log.debug("context shift: dropped %d cached tokens at %d, kept %d", gap, prefix, kept)
        return kept
    return 0


def _native() -> Any:
    import llama_cpp.llama_cpp as native

    return native


def _cpu_has_amx() -> bool:
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


@contextmanager
def _model_params(**fields: Any) -> Iterator[None]:
    """Construct a ``Llama`` with these ``llama_model_params`` fields set (``Llama()`` has no
    argument for them): its defaults are patched for the duration, under a lock."""
    import llama_cpp.llama_cpp as native

    with _MODEL_PARAMS_LOCK:
        defaults = native.llama_model_default_params
        fields = {name: value for name, value in fields.items() if name in dict(native.llama_model_params._fields_)}

        def patched() -> Any:
            params = defaults()
            for name, value in fields.items():
                setattr(params, name, value)
            return params

        native.llama_model_default_params = patched
        try:
            yield
        finally:
            native.llama_model_default_params = defaults


class LlamaEngine(BlockingEngine):
    """An :class:`~..llm_engine.LLMEngine` on llama.cpp (the embedded SmolLM2-135M by default).

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
        max_argument_tokens: int = 128,
        max_argument_string_chars: int = 60,
        max_argument_items: int = 8,
        warm_end_of_turn: bool = True,
        extra_buffers: bool | None = None,
        context_shift: bool = True,
    ) -> None:
        """``extra_buffers``: llama.cpp's extra CPU weight buffers (repacked weights, AMX kernels);
        None turns them off on CPUs that report AMX, where llama.cpp's AMX path crashed (SIGSEGV on
        the first batched decode, on a 2-core VM with AMX; one token at a time worked).

        ``context_shift``: when the history window dropped old messages, keep the KV cache of
        the messages that stay (removing the dropped tokens and shifting the rest back, like
        llama.cpp's context shift) instead of evaluating them again: a trim then costs no
        prompt evaluation (measured: ~2-4 s for 900 tokens of SmolLM2-135M on 2 cores)."""
        self.model_path = models.llm_model_file(model_path)
        self.label = f"llama.cpp {self.model_path.name}"
        self.max_tokens = max_tokens
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.temperature = temperature
        self.top_p = top_p
        self.repeat_penalty = repeat_penalty  # SmolLM2-135M loops ("la femme de la femme...") without it
        self.seed = seed
        self.max_argument_tokens = max_argument_tokens
        self.max_argument_string_chars = max_argument_string_chars
        self.max_argument_items = max_argument_items
        self.extra_buffers = (not _cpu_has_amx()) if extra_buffers is None else extra_buffers
        self.context_shift = context_shift
        self.warm_end_of_turn = warm_end_of_turn
        #: The system prompt the warm-up reads (its KV cache is then the first turn's prefix).
        self.warmup_system_prompt = DEFAULT_SYSTEM_PROMPT
        #: The prompt of the last reply generated.
        self.last_prompt_tokens: PromptTokens | None = None
        self._llm: Any = None
        self._lock = threading.Lock()
        self._grammars: dict[str, Any] = {}
        self._end_of_turn_tokens_cache: list[int] | None = None
        # The generation being read now and whether it may shift the cache (one at a time, under
        # the lock), shared with the views.
        self._reading: list[tuple[PromptTokens, bool] | None] = [None]

    def check_tools(self, tools: Sequence[Tool]) -> None:
        """Build every tool's argument grammars now: an unsupported schema fails at start-up."""
        for tool in tools:
            self.arguments_grammar(tool)
            self.bounded_arguments_grammar(tool)
            ignored = unenforced_keywords(dict(tool.parameters))
            if ignored:
                log.warning("tool %s: the argument grammar cannot enforce %s; arguments breaking them become error results", tool.name, sorted(ignored))

    async def start(self) -> None:
        """Load the model and pay llama.cpp's costly first call now (a reply and an end-of-turn score)."""
        if self._llm is not None:
            return
        self._llm = await run_model(self._load)
        warmup = [{"role": "system", "content": self.warmup_system_prompt}, {"role": "user", "content": "Hi"}]
        await run_model(lambda: list(self.stream_reply(warmup, CancelToken(), max_tokens=2)))
        if self.warm_end_of_turn:
            await run_model(self.end_of_turn_probability_sync, warmup)

    async def aclose(self) -> None:
        """Keep the model: engines are shared (server sessions, tests) and freed with the object."""

    def prompt_tokens(self) -> PromptTokens | None:
        return self.last_prompt_tokens

    def _load(self) -> Any:
        from llama_cpp import Llama

        kwargs: dict[str, Any] = {"n_ctx": self.n_ctx, "n_threads": self.n_threads, "verbose": False}
        if self.seed is not None:
            kwargs["seed"] = self.seed
        try:
            with _model_params(use_extra_bufts=self.extra_buffers):
                llm = Llama(model_path=str(self.model_path), **kwargs)
        except Exception as error:  # llama.cpp raises ValueError for unreadable files
            raise models.ModelNotFoundError(f"cannot load the LLM model {self.model_path}: {error}") from error
        self._watch_prompts(llm)
        return llm

    def _watch_prompts(self, llm: Any) -> None:
        """Hook the Llama object's ``generate`` (context shift before its prefix match) and ``eval``
        (its first call in a generation is the prompt after the cached prefix: count it)."""
        generate, evaluate, reading = llm.generate, llm.eval, self._reading

        def generate_shifting(tokens: Any, *args: Any, **kwargs: Any) -> Any:
            if reading[0] is not None and reading[0][1]:
                reading[0][0].shifted = shift_kv_cache(llm, list(tokens))
            return generate(tokens, *args, **kwargs)

        def eval_counting(tokens: Any) -> Any:
            prompt = reading[0][0] if reading[0] is not None else None
            if prompt is not None and not prompt.measured:
                prompt.cached, prompt.evaluated, prompt.measured = int(llm.n_tokens), len(tokens), True
            return evaluate(tokens)

        llm.generate = generate_shifting
        llm.eval = eval_counting

    # -- the prompt's history budget ------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in this model's vocabulary (an estimate until the model is loaded)."""
        if self._llm is None:
            return estimate_tokens(text)
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def prompt_budget_tokens(self, max_tokens: int | None = None, tools: Sequence[Any] = ()) -> int:
        """The context less the reply's tokens and :data:`PROMPT_RESERVE_TOKENS` (template, tool list).

        A reply cap above a quarter of the context does not shrink the history further: llama.cpp
        ends such a reply at the end of the context instead."""
        reply = max_tokens or self.max_tokens
        listing = sum(estimate_tokens(f"- {tool.name}: {tool.description}") for tool in tools)
        return max(64, self.n_ctx - min(reply, self.n_ctx // 4) - PROMPT_RESERVE_TOKENS - listing)

    def _stream(self, messages: list[dict[str, str]], token: CancelToken, *, prompt: PromptTokens | None = None,
                **options: Any) -> Iterator[str]:
        with self._lock:
            if token.cancelled:
                return
            self._reading[0] = (prompt or PromptTokens(), self.context_shift)
            try:
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
            finally:
                self._reading[0] = None

    def stream_reply(self, messages: Messages, token: CancelToken, *, max_tokens: int | None = None,
                     temperature: float | None = None) -> Iterator[str]:
        """Blocking generator of reply text pieces; stops between tokens once ``token`` is cancelled.

        :attr:`last_prompt_tokens` tells how much of the prompt llama.cpp read anew."""
        self.last_prompt_tokens = prompt = PromptTokens()
        return self._stream(
            render_for_template(messages), token, prompt=prompt,
            max_tokens=max_tokens or self.max_tokens, temperature=self.temperature if temperature is None else temperature,
            top_p=self.top_p, repeat_penalty=self.repeat_penalty,
        )

    def end_of_turn_probability_sync(self, messages: Messages) -> float | None:
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
            if self.context_shift:  # after a history trim, keep the cache of what stays (as a reply would)
                shift_kv_cache(llm, tokens)
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
        """The call's JSON arguments, decoded under the tool's schema grammar, as they are written.

        A pass stops at the first complete JSON object: the grammar admits whitespace after the
        closing brace, which a small model may write until the token limit. The grammar alone
        cannot stop a model that rambles inside a string (the JSON would be cut off at
        ``max_argument_tokens``). So if the first pass does not end in complete JSON, a
        :data:`RESTART` piece voids it and a second pass runs under a grammar of the schema with
        every string and array capped (``max_argument_string_chars``, ``max_argument_items``) and
        a token budget as large as the longest JSON that grammar admits: it always ends in
        complete, schema-valid JSON (for schemas that become bounded; see :func:`bounded_schema`).
        """
        prompt = self.arguments_messages(messages, tool)
        complete = yield from self._json_pass(prompt, token, self.arguments_grammar(tool), self.max_argument_tokens)
        if complete or token.cancelled:
            return
        grammar, budget = self.bounded_arguments_grammar(tool)
        log.info("arguments for %s were cut off at %d tokens; decoding again with capped strings (%d tokens at most)", tool.name, self.max_argument_tokens, budget)
        yield RESTART
        yield from self._json_pass(prompt, token, grammar, budget)

    def _json_pass(self, prompt: list[dict[str, str]], token: CancelToken, grammar: Any, max_tokens: int) -> Generator[str, None, bool]:
        """One decoding pass of arguments, piece by piece; True if it ended in a complete JSON object."""
        pieces = self._stream(prompt, token, grammar=grammar, max_tokens=max_tokens, temperature=0.0)
        text = ""
        try:
            for piece in pieces:
                text += piece
                yield piece
                if _is_json_object(text):
                    return True
        finally:
            pieces.close()
        return _is_json_object(text)

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


class LlamaLLM(Responder):
    """The :class:`~..responder.Responder` on a :class:`LlamaEngine` (the embedded SmolLM2-135M
    by default): the engine's options and the responder's in one constructor.

    Attributes the responder lacks (``n_ctx``, ``stream_reply``, ``choose_tool``...) are the
    engine's.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        max_tokens: int = 120,
        tools: ToolsSpec = None,
        tool_choice: ToolChoiceSpec = "auto",
        followup_tool_choice: ToolChoiceSpec = "auto",
        max_tool_calls: int = 3,
        speculate: bool = True,
        score_end_of_turn: bool = True,
        engine: LlamaEngine | None = None,
        **engine_options: Any,
    ) -> None:
        """``engine_options``: :class:`LlamaEngine`'s (``n_ctx``, ``n_threads``, ``temperature``,
        ``seed``...); or pass a shared ``engine``."""
        if engine is None:
            engine = LlamaEngine(model_path, max_tokens=max_tokens, warm_end_of_turn=score_end_of_turn, **engine_options)
        elif model_path is not None or engine_options:
            raise ValueError("pass either engine or the engine's options (model_path, n_ctx...), not both")
        super().__init__(
            engine, max_tokens=max_tokens, tools=tools, tool_choice=tool_choice,
            followup_tool_choice=followup_tool_choice, max_tool_calls=max_tool_calls,
            speculate=speculate, score_end_of_turn=score_end_of_turn,
        )

    async def setup(self, ctx: StageContext) -> None:
        self.engine.warmup_system_prompt = ctx.conversation.system_prompt
        await super().setup(ctx)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "engine":
            raise AttributeError(name)
        return getattr(self.engine, name)
