"""The Realtime API's wire shapes, in its two dialects.

*beta* (the client sent ``OpenAI-Beta: realtime=v1``) and *GA* (no header)
differ in a few event names (``response.audio.delta`` vs
``response.output_audio.delta``, ``conversation.item.created`` vs
``conversation.item.added`` + ``.done``) and in the session, response and item
objects. The session works with neutral values (:class:`SessionConfig`,
:class:`ItemRecord`); this module renders them in the connection's dialect,
with every field the SDK's models require and none they don't know.
"""

from __future__ import annotations

import enum
import itertools
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..turn_taking import EAGERNESS
from .codecs import BETA_TO_GA_FORMAT, FORMAT_RATES_HZ, GA_FORMAT_NAMES

#: Models the beta SDK's ``Session.model`` admits; another requested name is reported in GA only.
BETA_MODEL_NAMES = frozenset({
    "gpt-realtime", "gpt-realtime-2025-08-28", "gpt-4o-realtime-preview", "gpt-4o-realtime-preview-2024-10-01",
    "gpt-4o-realtime-preview-2024-12-17", "gpt-4o-realtime-preview-2025-06-03", "gpt-4o-mini-realtime-preview",
    "gpt-4o-mini-realtime-preview-2024-12-17",
})
DEFAULT_MODEL = "local-realtime-pipeline"
#: The transcription model reported to clients (the embedded Whisper).
TRANSCRIPTION_MODEL = "whisper-tiny.en"
#: The largest ``input_audio_buffer.append`` accepted (the OpenAI service's limit).
MAX_APPEND_BYTES = 15 * 1024 * 1024

_event_ids = itertools.count(1)


class Dialect(enum.Enum):
    BETA = "beta"
    GA = "ga"


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def event_id() -> str:
    return f"event_{next(_event_ids)}"


class ProtocolError(Exception):
    """A client event the session cannot act on; becomes an ``error`` event, the session goes on."""

    def __init__(self, message: str, *, code: str, param: str | None = None, type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.type = type


#: GA event names → beta names (a None: not sent in beta).
_BETA_NAMES: dict[str, str | None] = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
    "conversation.item.done": None,
}


def event_name(name: str, dialect: Dialect) -> str | None:
    """The event's name in ``dialect`` (None: the dialect has no such event)."""
    return _BETA_NAMES.get(name, name) if dialect is Dialect.BETA else name


# -- session configuration ---------------------------------------------------------------
@dataclass(frozen=True)
class TurnDetection:
    """Turn detection settings; ``None`` in :class:`SessionConfig` means manual turns.

    ``server_vad`` is a fixed silence of ``silence_duration_ms``, exactly; ``semantic_vad``
    runs the semantic end-of-turn detector (:mod:`realtime_pipeline.turn_taking`) tuned by
    ``eagerness``.
    """

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    type: str = "server_vad"
    eagerness: str = "auto"


@dataclass(frozen=True)
class SessionConfig:
    model: str = DEFAULT_MODEL
    instructions: str = ""
    voice: str = "alloy"
    output_modalities: tuple[str, ...] = ("audio",)
    input_format: str = "pcm16"
    output_format: str = "pcm16"
    transcription: Mapping[str, Any] | None = field(default_factory=lambda: {"model": TRANSCRIPTION_MODEL})
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    tools: tuple[Mapping[str, Any], ...] = ()
    tool_choice: str | Mapping[str, Any] = "auto"
    temperature: float = 0.8
    max_output_tokens: int | str = "inf"

    @property
    def audio_out(self) -> bool:
        return "audio" in self.output_modalities


def render_session(config: SessionConfig, dialect: Dialect, session_id: str) -> dict[str, Any]:
    td = config.turn_detection
    turn: dict[str, Any] | None
    if td is None:
        turn = None
    elif td.type == "semantic_vad":
        turn = {"type": "semantic_vad", "eagerness": td.eagerness, "create_response": td.create_response,
                "interrupt_response": td.interrupt_response}
    else:
        turn = {
            "type": "server_vad", "threshold": td.threshold, "prefix_padding_ms": td.prefix_padding_ms,
            "silence_duration_ms": td.silence_duration_ms, "create_response": td.create_response,
            "interrupt_response": td.interrupt_response,
        }
    transcription = None if config.transcription is None else {
        key: value for key, value in config.transcription.items() if key in ("model", "language", "prompt") and value is not None
    }
    tools = [{"type": "function", **{k: tool[k] for k in ("name", "description", "parameters") if k in tool}} for tool in config.tools]
    if dialect is Dialect.BETA:
        session: dict[str, Any] = {
            "id": session_id,
            "modalities": ["text", "audio"] if config.audio_out else ["text"],
            "instructions": config.instructions,
            "voice": config.voice,
            "input_audio_format": config.input_format,
            "output_audio_format": config.output_format,
            "input_audio_transcription": transcription,
            "turn_detection": turn,
            "tools": tools,
            "tool_choice": config.tool_choice if isinstance(config.tool_choice, str) else str(config.tool_choice.get("name")),
            "temperature": config.temperature,
            "max_response_output_tokens": config.max_output_tokens,
        }
        if config.model in BETA_MODEL_NAMES:
            session["model"] = config.model
        return session
    return {
        "type": "realtime",
        "model": config.model,
        "instructions": config.instructions,
        "output_modalities": list(config.output_modalities),
        "audio": {
            "input": {"format": ga_format(config.input_format), "transcription": transcription, "turn_detection": turn},
            "output": {"format": ga_format(config.output_format), "voice": config.voice},
        },
        "tools": tools,
        "tool_choice": dict(config.tool_choice) if isinstance(config.tool_choice, Mapping) else config.tool_choice,
        "max_output_tokens": config.max_output_tokens,
    }


def ga_format(name: str) -> dict[str, Any]:
    fmt: dict[str, Any] = {"type": BETA_TO_GA_FORMAT[name]}
    if name == "pcm16":
        fmt["rate"] = FORMAT_RATES_HZ[name]
    return fmt


# -- parsing client values (either dialect's shape is accepted in both) ------------------
#: Fields whose ``null`` means something (manual turns, transcription off); for every other
#: optional field ``null`` means "not given", as clients send it (LiveKit sends
#: ``"instructions": null`` in every ``response.create``).
NULL_MEANS_OFF = frozenset({"turn_detection", "input_audio_transcription", "transcription", "noise_reduction", "input_audio_noise_reduction"})


def given(value: Any) -> dict[str, Any]:
    """A client object without its ``null`` fields (``null`` = not given), except :data:`NULL_MEANS_OFF`.

    A ``null`` object itself is an empty one; anything else that is not an object is
    returned as is for the caller's type check.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        return value  # type: ignore[return-value]
    return {key: item for key, item in value.items() if item is not None or key in NULL_MEANS_OFF}


def _type_error(param: str, expected: str) -> ProtocolError:
    return ProtocolError(f"{param} must be {expected}", code="invalid_value", param=param)


def parse_format(value: Any, param: str) -> str:
    if isinstance(value, str) and value in FORMAT_RATES_HZ:
        return value
    if isinstance(value, Mapping) and value.get("type") in GA_FORMAT_NAMES:
        name = GA_FORMAT_NAMES[value["type"]]
        rate = value.get("rate")
        if rate is not None and rate != FORMAT_RATES_HZ[name]:
            raise ProtocolError(f"{param}.rate must be {FORMAT_RATES_HZ[name]}", code="invalid_value", param=f"{param}.rate")
        return name
    raise _type_error(param, "pcm16, g711_ulaw, g711_alaw or {type: audio/pcm|audio/pcmu|audio/pcma}")


def parse_modalities(value: Any, param: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or any(m not in ("text", "audio") for m in value):
        raise _type_error(param, 'a list of "text" / "audio"')
    return ("audio",) if "audio" in value else ("text",)


def parse_turn_detection(value: Any, current: TurnDetection | None, param: str) -> TurnDetection | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _type_error(param, "an object or null")
    value = given(value)
    kind = value.get("type", "server_vad")
    if kind not in ("server_vad", "semantic_vad"):
        raise ProtocolError(f"{param}.type must be server_vad or semantic_vad", code="invalid_value", param=f"{param}.type")
    base = current if current is not None and current.type == kind else TurnDetection(type=kind)
    eagerness = value.get("eagerness", base.eagerness)
    if eagerness not in EAGERNESS:
        raise ProtocolError(f"{param}.eagerness must be one of low, medium, high, auto", code="invalid_value", param=f"{param}.eagerness")
    threshold = value.get("threshold", base.threshold)
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0.0 <= threshold <= 1.0:
        raise _type_error(f"{param}.threshold", "a number in [0, 1]")
    ints = {}
    for name in ("prefix_padding_ms", "silence_duration_ms"):
        number = value.get(name, getattr(base, name))
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise _type_error(f"{param}.{name}", "a non-negative integer")
        ints[name] = number
    bools = {}
    for name in ("create_response", "interrupt_response"):
        flag = value.get(name, getattr(base, name))
        if not isinstance(flag, bool):
            raise _type_error(f"{param}.{name}", "a boolean")
        bools[name] = flag
    return TurnDetection(float(threshold), **ints, **bools, type=kind, eagerness=eagerness)


def parse_tools(value: Any, param: str) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list):
        raise _type_error(param, "a list")
    tools = []
    for index, tool in enumerate(value):
        tool = given(tool)
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function" or not isinstance(tool.get("name"), str) or not tool["name"]:
            raise _type_error(f"{param}[{index}]", "a function tool {type: function, name, description, parameters}")
        parameters = tool.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(parameters, Mapping):
            raise _type_error(f"{param}[{index}].parameters", "a JSON schema object")
        tools.append({"name": tool["name"], "description": str(tool.get("description") or ""), "parameters": dict(parameters)})
    return tuple(tools)


def parse_tool_choice(value: Any, param: str) -> str | dict[str, Any]:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, Mapping) and value.get("type") == "function":
        name = value.get("name") or (value.get("function") or {}).get("name")
        if isinstance(name, str) and name:
            return {"type": "function", "name": name}
    raise _type_error(param, '"auto", "none", "required" or {type: function, name}')


def parse_max_tokens(value: Any, param: str) -> int | str:
    if value == "inf" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 4096):
        return value
    raise _type_error(param, 'an integer 1..4096 or "inf"')


def parse_temperature(value: Any, param: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 2.0:
        return float(value)
    raise _type_error(param, "a number in [0, 2]")


def max_tokens_of(value: int | str, inf_tokens: int) -> int:
    """``"inf"`` still needs a bound (a small model may never stop): the LLM's own ``max_tokens``."""
    return inf_tokens if value == "inf" else int(value)


# -- conversation items -------------------------------------------------------------------
@dataclass
class ContentPart:
    """One content part, neutral: ``kind`` is input_audio / input_text / output_audio / output_text."""

    kind: str
    text: str | None = None


_BETA_CONTENT = {"input_audio": "input_audio", "input_text": "input_text", "output_audio": "audio", "output_text": "text"}


@dataclass
class ItemRecord:
    """A conversation item as the client sees it, with the library object behind it.

    ``ref`` is the history entry (UserMessage, Response, FunctionCall, FunctionCallOutput, or
    a SystemNote); ``audio_samples`` counts the assistant audio sent, at ``audio_rate_hz``.
    """

    id: str
    type: str
    role: str | None = None
    status: str = "completed"
    content: list[ContentPart] = field(default_factory=list)
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None
    ref: Any = None
    audio_samples: int = 0
    audio_rate_hz: int = 24_000

    @property
    def audio_ms(self) -> int:
        return self.audio_samples * 1000 // self.audio_rate_hz


def render_item(item: ItemRecord, dialect: Dialect) -> dict[str, Any]:
    out: dict[str, Any] = {"id": item.id, "object": "realtime.item", "type": item.type, "status": item.status}
    if item.type == "message":
        out["role"] = item.role
        out["content"] = [render_part(part, dialect) for part in item.content]
    elif item.type == "function_call":
        out.update(call_id=item.call_id, name=item.name, arguments=item.arguments or "")
    else:
        out.update(call_id=item.call_id, output=item.output or "")
    return out


def render_part(part: ContentPart, dialect: Dialect, *, as_response_part: bool = False) -> dict[str, Any]:
    """An item content part, or (``as_response_part``) the part of response.content_part.* events."""
    audio = part.kind.endswith("audio")
    if as_response_part:
        return {"type": "audio", "transcript": part.text or ""} if audio else {"type": "text", "text": part.text or ""}
    kind = _BETA_CONTENT[part.kind] if dialect is Dialect.BETA else part.kind
    return {"type": kind, "transcript": part.text} if audio else {"type": kind, "text": part.text or ""}


def render_response(
    response_id: str,
    *,
    status: str,
    config: SessionConfig,
    dialect: Dialect,
    output: list[ItemRecord],
    conversation_id: str,
    max_output_tokens: int | str,
    modalities: tuple[str, ...],
    temperature: float,
    status_details: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": response_id,
        "object": "realtime.response",
        "status": status,
        "status_details": status_details,
        "output": [render_item(item, dialect) for item in output],
        "conversation_id": conversation_id,
        "max_output_tokens": max_output_tokens,
        "usage": usage,
        "metadata": dict(metadata) if metadata else None,
    }
    if dialect is Dialect.BETA:
        out.update(
            modalities=["text", "audio"] if "audio" in modalities else ["text"],
            output_audio_format=config.output_format, voice=config.voice, temperature=temperature,
        )
    else:
        out.update(output_modalities=list(modalities), audio={"output": {"format": ga_format(config.output_format), "voice": config.voice}})
    return out
