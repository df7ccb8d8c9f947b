"""What a client event may carry, checked when it arrives, so no input can poison a session.

An input the model cannot take (instructions longer than its context, a tool schema the
grammar code recurses through 300 levels deep, a lone surrogate the tokenizer cannot
encode) would otherwise be accepted and then fail every later response. Each limit here
is checked at the boundary, with an ``error`` event naming the limit; the session's state
is left as it was.

Context budget (in tokens of the LLM's context, ``n_ctx``): the system prompt
(instructions, system items, the tool list) at most half, one item's text at most a
quarter, the reply a quarter. So the system prompt, the newest item and a reply always fit
together, and :class:`FittingConversation` drops the oldest history to make them fit
instead of failing the response.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from .history import ServerConversation
from .protocol import ProtocolError

#: Nesting levels of one client event (a tool schema sits about 6 levels down).
MAX_EVENT_DEPTH = 64
#: Function tools per session or response (the OpenAI API's limit).
MAX_TOOLS = 128
#: Nesting levels of one tool's JSON schema (the grammar converter recurses through them).
MAX_SCHEMA_DEPTH = 16
#: Size of one tool's JSON schema, as JSON text.
MAX_SCHEMA_CHARS = 16_384
#: Input audio in one ``conversation.item.create`` (as an append's 15 MiB of pcm16 at 24 kHz).
MAX_ITEM_AUDIO_S = 320.0
#: Template tokens around each chat message (role markers, newlines), on top of its text.
MESSAGE_OVERHEAD_TOKENS = 8

_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def inspect_event(text: str, data: Any) -> Any:
    """``data`` (parsed from ``text``) with lone surrogates replaced by U+FFFD, after checking
    its depth; a ProtocolError ``invalid_json`` if nested deeper than :data:`MAX_EVENT_DEPTH`.

    JSON may carry ``"\\ud800"``, which Python parses into a str that no encoder accepts
    (the tokenizer raised UnicodeEncodeError on every later reply): repaired here, once.
    """
    deep = text.count("{") + text.count("[") > MAX_EVENT_DEPTH
    surrogates = "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None
    if not deep and not surrogates:
        return data
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_EVENT_DEPTH:
            raise ProtocolError(f"the event is nested deeper than {MAX_EVENT_DEPTH} levels", code="invalid_json")
        if isinstance(node, dict):
            for key in list(node):
                value = node[key]
                if surrogates and isinstance(value, str):
                    node[key] = _repair(value)
                elif isinstance(value, (dict, list)):
                    stack.append((value, depth + 1))
                if surrogates and _SURROGATE.search(key):
                    node[_repair(key)] = node.pop(key)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                if surrogates and isinstance(value, str):
                    node[index] = _repair(value)
                elif isinstance(value, (dict, list)):
                    stack.append((value, depth + 1))
    return data


def _repair(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def schema_depth(schema: Any) -> int:
    """Nesting levels of a JSON value (iterative: a hostile schema must not exhaust the stack)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_SCHEMA_DEPTH + 1:
            break
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def check_tools(tools: list[Any], param: str) -> None:
    """Count and each schema's depth and size (before anything builds a grammar from them)."""
    if len(tools) > MAX_TOOLS:
        raise ProtocolError(
            f"{param} has {len(tools)} tools; at most {MAX_TOOLS} are accepted", code="array_above_max_length", param=param,
        )
    for index, tool in enumerate(tools):
        parameters = tool.get("parameters") if isinstance(tool, Mapping) else None
        if parameters is None:
            continue
        where = f"{param}[{index}].parameters"
        depth = schema_depth(parameters)
        if depth > MAX_SCHEMA_DEPTH:
            raise ProtocolError(
                f"{where} is nested more than {MAX_SCHEMA_DEPTH} levels deep (the limit is {MAX_SCHEMA_DEPTH})",
                code="invalid_function_parameters", param=where,
            )
        size = len(json.dumps(parameters))
        if size > MAX_SCHEMA_CHARS:
            raise ProtocolError(
                f"{where} is {size} characters of JSON; at most {MAX_SCHEMA_CHARS} are accepted",
                code="invalid_function_parameters", param=where,
            )


class BoundedCache(OrderedDict):  # type: ignore[type-arg]
    """A dict that forgets its least recently stored entries beyond ``max_entries``
    (the LLM's grammar cache: every distinct tool schema a client sends adds one)."""

    def __init__(self, max_entries: int) -> None:
        super().__init__()
        self.max_entries = max_entries

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.max_entries:
            self.popitem(last=False)


def message_tokens(message: Mapping[str, Any], count_tokens: Callable[[str], int]) -> int:
    text = str(message.get("content") or "")
    if message.get("tool_calls"):
        text += json.dumps(message["tool_calls"])
    return count_tokens(text) + MESSAGE_OVERHEAD_TOKENS


def fit_messages(messages: list[dict[str, Any]], count_tokens: Callable[[str], int], budget_tokens: int) -> list[dict[str, Any]]:
    """The system message and as much of the newest history as fits ``budget_tokens``.

    The oldest messages go first (the history still starts with a user turn); if the
    newest message alone does not fit, its text keeps its end (a long transcript's last words).
    """
    if not messages:
        return messages
    system, history = messages[0], list(messages[1:])
    sizes = [message_tokens(m, count_tokens) for m in history]
    total = message_tokens(system, count_tokens) + sum(sizes)
    while total > budget_tokens and len(history) > 1:
        total -= sizes.pop(0)
        history.pop(0)
        while len(history) > 1 and history[0]["role"] != "user":
            total -= sizes.pop(0)
            history.pop(0)
    if total > budget_tokens and history:
        last = dict(history[-1])
        text = str(last.get("content") or "")
        room = budget_tokens - message_tokens(system, count_tokens) - MESSAGE_OVERHEAD_TOKENS
        while text and count_tokens(text) > max(room, 0):
            text = text[len(text) // 4 or 1 :]  # drop the oldest quarter until it fits
        last["content"] = text
        history[-1] = last
    return [system, *history]


class FittingConversation(ServerConversation):
    """The server's conversation whose prompt always fits the LLM's context (see :func:`fit_messages`).

    ``budget_tokens`` is set per response by the session: the context less the reply's
    tokens and the tool list of that response.
    """

    count_tokens: Callable[[str], int] | None = None
    budget_tokens: int | None = None

    def messages(self) -> list[dict[str, Any]]:
        messages = super().messages()
        if self.count_tokens is None or self.budget_tokens is None:
            return messages
        return fit_messages(messages, self.count_tokens, self.budget_tokens)
