"""Function calling: the app's tools, their JSON schemas, and running a call safely.

A tool is a plain Python function, sync or async. Its JSON schema comes from
the type hints and the docstring (through pydantic, which also validates and
converts the arguments), or is given explicitly (then the arguments are
checked with ``jsonschema``). Running a call never raises for the tool's own
failures: an exception, a timeout, invalid arguments or a barge-in become a
:class:`ToolResult` whose ``output`` says so, which goes into the history like
any result, so the model can tell the user.

What the library guarantees and what it leaves to the model is described in
``docs/tools.md`` and in :mod:`realtime_pipeline.stages.llm`.
"""

from __future__ import annotations

import enum
import functools
import inspect
import itertools
import json
import logging
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Union, get_type_hints

import anyio
import docstring_parser
import jsonschema
import pydantic
import pydantic_core

from .cancellation import CancelToken

log = logging.getLogger(__name__)

#: Default limit for one call; a tool that may legitimately take longer says so with ``timeout_s``.
DEFAULT_TIMEOUT_S = 10.0

#: ``"auto"`` (the model decides), ``"none"`` (never call), ``"required"`` (call one, the model
#: picks which), a tool name, or the OpenAI forms ``{"type": "function", "name": ...}`` /
#: ``{"type": "function", "function": {"name": ...}}``.
ToolChoiceSpec = Union[str, Mapping[str, Any]]

_call_ids = itertools.count(1)


class ToolError(ValueError):
    """A tool cannot be registered (bad schema, duplicate name) or a tool choice is invalid."""


class ToolStatus(enum.Enum):
    OK = "ok"
    ERROR = "error"                      # the tool raised
    TIMEOUT = "timeout"                  # it ran longer than its timeout_s
    CANCELLED = "cancelled"              # barge-in while a cancellable tool was running
    INVALID_ARGUMENTS = "invalid_arguments"
    UNKNOWN_TOOL = "unknown_tool"


@dataclass(frozen=True)
class ToolCall:
    """One call the model asked for: ``arguments`` is the JSON text the model wrote."""

    name: str
    arguments: str
    call_id: str = field(default_factory=lambda: f"call_{next(_call_ids)}")


@dataclass(frozen=True)
class ToolResult:
    """What a call returned, as the text that goes into the history."""

    call_id: str
    name: str
    output: str
    status: ToolStatus = ToolStatus.OK
    duration_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status is ToolStatus.OK


@dataclass(frozen=True)
class ToolChoice:
    """A normalized tool choice: ``mode`` is auto / none / required / function (then ``name``)."""

    mode: str
    name: str | None = None

    @classmethod
    def parse(cls, spec: ToolChoiceSpec | ToolChoice) -> ToolChoice:
        if isinstance(spec, ToolChoice):
            return spec
        if isinstance(spec, Mapping):
            name = spec.get("name") or (spec.get("function") or {}).get("name")
            if spec.get("type") != "function" or not name:
                raise ToolError(f"a tool choice object must be {{'type': 'function', 'name': ...}}, got {dict(spec)}")
            return cls("function", str(name))
        if not isinstance(spec, str) or not spec:
            raise ToolError(f"tool_choice must be 'auto', 'none', 'required' or a tool name, got {spec!r}")
        if spec in ("auto", "none", "required"):
            return cls(spec)
        return cls("function", spec)


# -- events (through Conversation listeners) --------------------------------------------
@dataclass(frozen=True)
class ToolCallStarted:
    """The model called a tool; it is running now. ``response`` is the Response it belongs to."""

    response: Any
    call: ToolCall


@dataclass(frozen=True)
class ToolCallDone:
    """A call ended (whatever its status); ``result.output`` went into the history."""

    response: Any
    call: ToolCall
    result: ToolResult


# -- tools ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tool:
    """A registered function with its JSON schema and how to run it.

    ``cancellable``: a barge-in stops waiting for the call (an async tool is
    cancelled; a sync tool's thread is abandoned, and the function can watch
    the :class:`CancelToken` it receives if it declares a parameter of that
    type). A tool that must not be interrupted halfway (it changes something)
    sets ``cancellable=False``: it then runs to the end even after a barge-in,
    and its result still goes into the history.
    ``timeout_s``: the call's limit (None: none).
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    function: Callable[..., Any]
    cancellable: bool = True
    timeout_s: float | None = DEFAULT_TIMEOUT_S
    #: pydantic model of the arguments when the schema came from the signature, else None.
    arguments_model: type[pydantic.BaseModel] | None = None
    #: name of the parameter that receives the response's CancelToken, if any.
    token_parameter: str | None = None

    @classmethod
    def from_function(
        cls,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        cancellable: bool = True,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
    ) -> Tool:
        """A tool from a function: schema from its hints and docstring unless ``parameters`` is given."""
        if not callable(function):
            raise ToolError(f"a tool must be callable, got {function!r}")
        tool_name = name or getattr(function, "__name__", "")
        if not tool_name or not tool_name.replace("_", "a").replace("-", "a").isalnum():
            raise ToolError(f"a tool name must be letters, digits, '_' or '-', got {tool_name!r}")
        if timeout_s is not None and timeout_s <= 0:
            raise ToolError(f"timeout_s must be positive or None, got {timeout_s}")
        doc = docstring_parser.parse(inspect.getdoc(function) or "")
        summary = " ".join(part for part in (doc.short_description, doc.long_description) if part)
        token_parameter = _token_parameter(function)
        arguments_model = None
        if parameters is None:
            arguments_model = _arguments_model(function, tool_name, doc, token_parameter)
            parameters = _clean_schema(arguments_model.model_json_schema())
        else:
            parameters = dict(parameters)
            try:
                jsonschema.validators.validator_for(parameters).check_schema(parameters)
            except jsonschema.SchemaError as error:
                raise ToolError(f"tool {tool_name!r}: invalid JSON schema: {error.message}") from None
            if parameters.get("type") != "object":
                raise ToolError(f"tool {tool_name!r}: the parameters schema must have type 'object'")
        return cls(
            name=tool_name,
            description=description if description is not None else summary,
            parameters=parameters,
            function=function,
            cancellable=cancellable,
            timeout_s=timeout_s,
            arguments_model=arguments_model,
            token_parameter=token_parameter,
        )

    def schema(self) -> dict[str, Any]:
        """The Chat Completions form: ``{"type": "function", "function": {...}}``."""
        return {"type": "function", "function": {"name": self.name, "description": self.description, "parameters": dict(self.parameters)}}

    def realtime_schema(self) -> dict[str, Any]:
        """The Realtime API form (``session.tools``): ``{"type": "function", "name": ...}``."""
        return {"type": "function", "name": self.name, "description": self.description, "parameters": dict(self.parameters)}

    def parse_arguments(self, arguments: str) -> dict[str, Any]:
        """The keyword arguments for the function, from the model's JSON; ValueError if invalid."""
        try:
            data = json.loads(arguments or "{}")
        except json.JSONDecodeError as error:
            raise ValueError(f"arguments are not valid JSON ({error.msg} at position {error.pos})") from None
        if not isinstance(data, dict):
            raise ValueError("arguments must be a JSON object")
        if self.arguments_model is not None:
            try:
                model = self.arguments_model.model_validate(data)
            except pydantic.ValidationError as error:
                raise ValueError(_short_validation_message(error)) from None
            return {name: getattr(model, name) for name in type(model).model_fields}
        try:
            jsonschema.validate(data, dict(self.parameters))
        except jsonschema.ValidationError as error:
            raise ValueError(f"arguments do not match the schema: {error.message}") from None
        return data

    async def invoke(self, kwargs: Mapping[str, Any], token: CancelToken) -> Any:
        """Run the function (a sync one in a worker thread) and return its value."""
        kwargs = dict(kwargs)
        if self.token_parameter is not None:
            kwargs[self.token_parameter] = token
        if inspect.iscoroutinefunction(self.function):
            value = await self.function(**kwargs)
        else:
            # abandon_on_cancel: a timeout or barge-in stops the wait; Python cannot kill the thread.
            value = await anyio.to_thread.run_sync(functools.partial(self.function, **kwargs), abandon_on_cancel=True)
        if inspect.isawaitable(value):
            value = await value
        return value


def _parameter_hints(function: Callable[..., Any]) -> dict[str, Any]:
    """The parameters' resolved type hints; the return hint is left out (it may name a local class)."""
    annotations = {k: v for k, v in getattr(function, "__annotations__", {}).items() if k != "return"}
    holder = types.SimpleNamespace(__annotations__=annotations, __globals__=getattr(function, "__globals__", {}))
    return get_type_hints(holder, globalns=holder.__globals__, include_extras=True)


def _token_parameter(function: Callable[..., Any]) -> str | None:
    try:
        hints = _parameter_hints(function)
    except Exception:  # unresolvable hints: the schema step reports them
        hints = {}
    for name, hint in hints.items():
        if hint is CancelToken and name != "return":
            return name
    return None


def _arguments_model(
    function: Callable[..., Any], tool_name: str, doc: docstring_parser.Docstring, token_parameter: str | None
) -> type[pydantic.BaseModel]:
    try:
        hints = _parameter_hints(function)
    except Exception as error:
        raise ToolError(f"tool {tool_name!r}: cannot resolve its type hints ({error})") from None
    descriptions = {param.arg_name: param.description for param in doc.params if param.description}
    fields: dict[str, Any] = {}
    for parameter in inspect.signature(function).parameters.values():
        if parameter.name == token_parameter:
            continue
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD, parameter.POSITIONAL_ONLY):
            raise ToolError(f"tool {tool_name!r}: parameter {parameter.name!r} must be a plain or keyword parameter")
        if parameter.name not in hints:
            raise ToolError(f"tool {tool_name!r}: parameter {parameter.name!r} needs a type hint (it defines the schema)")
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (hints[parameter.name], pydantic.Field(default, description=descriptions.get(parameter.name)))
    try:
        model = pydantic.create_model(  # type: ignore[call-overload]
            f"{tool_name}_arguments", __config__=pydantic.ConfigDict(extra="forbid"), **fields
        )
        model.model_json_schema()
    except (pydantic.PydanticUserError, pydantic.PydanticSchemaGenerationError, TypeError) as error:
        raise ToolError(f"tool {tool_name!r}: cannot build a JSON schema from its signature ({error})") from None
    return model


def _clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop pydantic's generated titles (noise in a prompt); keep everything that constrains."""

    def visit(node: Any, in_properties: bool = False) -> Any:
        if isinstance(node, dict):
            return {
                key: visit(value, key == "properties" and not in_properties)
                for key, value in node.items()
                if in_properties or key != "title"
            }
        if isinstance(node, list):
            return [visit(item) for item in node]
        return node

    return visit(schema)


def _short_validation_message(error: pydantic.ValidationError) -> str:
    problems = [f"{'.'.join(str(p) for p in item['loc']) or 'arguments'}: {item['msg']}" for item in error.errors()]
    return "invalid arguments: " + "; ".join(problems)


def tool_output_text(value: Any) -> str:
    """A tool's return value as the text the model reads: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    return pydantic_core.to_json(value, fallback=str).decode()


# -- the registry ---------------------------------------------------------------------------
class ToolRegistry:
    """The app's tools by name; :meth:`call` runs one call and always returns a ToolResult.

    Register functions with :meth:`add`, or as a decorator::

        tools = ToolRegistry()

        @tools.tool
        def get_weather(location: str) -> dict:
            '''Get the current weather for a location.

            Args:
                location: City name, e.g. "Paris".
            '''
    """

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for item in tools:
            self.add(item)

    def add(
        self,
        function: Tool | Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        cancellable: bool = True,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
    ) -> Tool:
        """Register a function (or a ready :class:`Tool`); returns the Tool."""
        if isinstance(function, Tool):
            tool = function
        else:
            tool = Tool.from_function(
                function, name=name, description=description, parameters=parameters,
                cancellable=cancellable, timeout_s=timeout_s,
            )
        if tool.name in self._tools:
            raise ToolError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool
        return tool

    def tool(self, function: Callable[..., Any] | None = None, **options: Any) -> Any:
        """Decorator form of :meth:`add` (``@tools.tool`` or ``@tools.tool(timeout_s=2)``); returns the function."""
        if function is None:
            return lambda fn: self.tool(fn, **options)
        self.add(function, **options)
        return function

    def remove(self, name: str) -> None:
        self._tools.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __getitem__(self, name: str) -> Tool:
        return self._tools[name]

    def __iter__(self) -> Iterator[Tool]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def schemas(self) -> list[dict[str, Any]]:
        """Every tool in the Chat Completions ``tools`` form."""
        return [tool.schema() for tool in self._tools.values()]

    def realtime_schemas(self) -> list[dict[str, Any]]:
        """Every tool in the Realtime API ``session.tools`` form."""
        return [tool.realtime_schema() for tool in self._tools.values()]

    def resolve(self, choice: ToolChoiceSpec | ToolChoice) -> ToolChoice:
        """Parse a tool choice and check that a named tool exists."""
        parsed = ToolChoice.parse(choice)
        if parsed.mode == "function" and parsed.name not in self._tools:
            raise ToolError(f"tool_choice names {parsed.name!r}, which is not registered (have: {self.names})")
        return parsed

    async def call(self, call: ToolCall, token: CancelToken | None = None) -> ToolResult:
        """Run ``call``; never raises for the tool's failures (they become the result's output).

        A cancellable tool stops when ``token`` is cancelled (status CANCELLED);
        a non-cancellable one runs on. Both stop at their ``timeout_s``.
        Cancelling the surrounding task (the pipeline stops) still propagates.
        """
        started = time.monotonic()
        token = token or CancelToken()

        def result(output: str, status: ToolStatus = ToolStatus.OK) -> ToolResult:
            return ToolResult(call.call_id, call.name, output, status, 1000.0 * (time.monotonic() - started))

        tool = self._tools.get(call.name)
        if tool is None:
            return result(f"error: there is no tool named {call.name!r}", ToolStatus.UNKNOWN_TOOL)
        try:
            kwargs = tool.parse_arguments(call.arguments)
        except ValueError as error:
            return result(f"error: {error}", ToolStatus.INVALID_ARGUMENTS)
        value: Any = None
        finished = False
        try:
            with anyio.fail_after(tool.timeout_s):
                if tool.cancellable:
                    with token.scope():
                        value = await tool.invoke(kwargs, token)
                        finished = True
                else:
                    value = await tool.invoke(kwargs, token)
                    finished = True
        except TimeoutError:
            log.warning("tool %s timed out after %s s", tool.name, tool.timeout_s)
            return result(f"error: the tool {tool.name} did not finish within {tool.timeout_s:g} s", ToolStatus.TIMEOUT)
        except Exception as error:  # the tool's own failure: reported to the model, never raised
            log.warning("tool %s raised %s: %s", tool.name, type(error).__name__, error, exc_info=log.isEnabledFor(logging.DEBUG))
            return result(f"error: the tool {tool.name} failed: {type(error).__name__}: {error}", ToolStatus.ERROR)
        if not finished:
            return result(f"cancelled: the user interrupted before {tool.name} finished", ToolStatus.CANCELLED)
        try:
            return result(tool_output_text(value))
        except Exception as error:  # an unserializable return value is the tool's failure too
            return result(f"error: the tool {tool.name} returned an unreadable value: {error}", ToolStatus.ERROR)


def as_registry(tools: ToolRegistry | Iterable[Tool | Callable[..., Any]] | None) -> ToolRegistry:
    """Accept a registry, a list of functions/Tools, or None (an empty registry)."""
    if isinstance(tools, ToolRegistry):
        return tools
    return ToolRegistry(tools or ())
