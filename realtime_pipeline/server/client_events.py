"""Client events: validated, then applied to the session (or an ``error`` event).

Either dialect's shape is accepted on both connections (``modalities`` or
``output_modalities``, flat or nested audio settings); what goes out is in the
connection's dialect.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import anyio
import numpy as np

from ..audio import INPUT_SAMPLE_RATE_HZ
from ..conversation import (
    DEFAULT_SYSTEM_PROMPT,
    FunctionCall,
    FunctionCallOutput,
    UserMessage,
)
from ..response import Response
from ..stages.vad import VADSettings
from ..turn_taking import TurnTakingSettings
from ..tools import Tool, ToolChoice, ToolError, ToolRegistry
from .codecs import AudioDecodeError, AudioDecoder, AudioEncoder
from .engines import OUTPUT_SAMPLE_RATE_HZ
from .history import SystemNote, finished_response
from .limits import MAX_ITEM_AUDIO_S, check_tools
from .protocol import (
    MAX_APPEND_BYTES,
    ContentPart,
    Dialect,
    ItemRecord,
    ProtocolError,
    SessionConfig,
    TRANSCRIPTION_MODEL,
    TurnDetection,
    given,
    new_id,
    parse_format,
    parse_max_tokens,
    parse_modalities,
    parse_temperature,
    parse_tool_choice,
    parse_tools,
    parse_turn_detection,
    render_item,
    render_session,
)
from .responses import Job, ResponseRequest

#: The shortest audio a manual commit accepts (the OpenAI service's rule).
MIN_COMMIT_MS = 100
#: Uncommitted input audio kept for a manual commit (older audio is dropped).
MAX_PENDING_S = 600

#: Client event type → handler method.
HANDLERS = {
    "session.update": "_session_update",
    "input_audio_buffer.append": "_append",
    "input_audio_buffer.commit": "_commit",
    "input_audio_buffer.clear": "_clear",
    "conversation.item.create": "_item_create",
    "conversation.item.retrieve": "_item_retrieve",
    "conversation.item.delete": "_item_delete",
    "conversation.item.truncate": "_item_truncate",
    "response.create": "_response_create",
    "response.cancel": "_response_cancel",
    "output_audio_buffer.clear": "_unsupported",
    "transcription_session.update": "_unsupported",
}


def _client_side_tool(**_: Any) -> Any:
    raise RuntimeError("Realtime tools run on the client: the server only generates the call")


class ClientEventsMixin:
    """The client-event half of :class:`RealtimeSession` (it provides the state used here)."""

    @staticmethod
    def _require(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
        if name not in data:
            raise ProtocolError(f"missing required parameter {name!r}", code="missing_required_parameter", param=name)
        value = data[name]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            raise ProtocolError(f"{name} must be {what}", code="invalid_value", param=name)
        return value

    async def _session_update(self, data: dict[str, Any]) -> None:
        session = self._require(data, "session", dict, "an object")
        config = self._parse_session(session)
        await self._check_prompt(config.instructions, config.tools, "session")
        # Building a grammar per tool schema takes ~0.1 ms to seconds: not on the event loop.
        await anyio.to_thread.run_sync(self._check_tools, config.tools, config.tool_choice, "session")
        self._apply(config)
        self.emit("session.updated", session=self._session_object())

    def _parse_session(self, s: Mapping[str, Any]) -> SessionConfig:
        c = self.config
        changes: dict[str, Any] = {}
        s = given(s)
        if s.get("type", "realtime") != "realtime":
            raise ProtocolError("only realtime sessions are served (not transcription)", code="invalid_value", param="session.type")
        audio = given(s.get("audio"))
        if not isinstance(audio, Mapping):
            raise ProtocolError("session.audio must be an object", code="invalid_value", param="session.audio")
        audio_in, audio_out = given(audio.get("input")), given(audio.get("output"))
        for name, part in (("input", audio_in), ("output", audio_out)):
            if not isinstance(part, Mapping):
                raise ProtocolError(f"session.audio.{name} must be an object", code="invalid_value", param=f"session.audio.{name}")
        if "instructions" in s:
            if not isinstance(s["instructions"], str):
                raise ProtocolError("session.instructions must be a string", code="invalid_value", param="session.instructions")
            changes["instructions"] = s["instructions"]
        for key in ("voice",):
            value = audio_out.get("voice", s.get("voice"))
            if value is not None:
                if isinstance(value, Mapping):
                    value = value.get("id")
                if not isinstance(value, str):
                    raise ProtocolError("voice must be a string", code="invalid_value", param="session.voice")
                changes[key] = value
        for key, param in (("modalities", "session.modalities"), ("output_modalities", "session.output_modalities")):
            if key in s:
                changes["output_modalities"] = parse_modalities(s[key], param)
        if "input_audio_format" in s:
            changes["input_format"] = parse_format(s["input_audio_format"], "session.input_audio_format")
        if audio_in.get("format") is not None:
            changes["input_format"] = parse_format(audio_in["format"], "session.audio.input.format")
        if "output_audio_format" in s:
            changes["output_format"] = parse_format(s["output_audio_format"], "session.output_audio_format")
        if audio_out.get("format") is not None:
            changes["output_format"] = parse_format(audio_out["format"], "session.audio.output.format")
        for container, key, param in ((s, "input_audio_transcription", "session.input_audio_transcription"), (audio_in, "transcription", "session.audio.input.transcription")):
            if key in container:
                value = container[key]
                if value is not None and not isinstance(value, Mapping):
                    raise ProtocolError(f"{param} must be an object or null", code="invalid_value", param=param)
                changes["transcription"] = None if value is None else {"model": value.get("model") or TRANSCRIPTION_MODEL, **{k: value[k] for k in ("language", "prompt") if isinstance(value.get(k), str)}}
        for container, param in ((s, "session.turn_detection"), (audio_in, "session.audio.input.turn_detection")):
            if "turn_detection" in container:
                changes["turn_detection"] = parse_turn_detection(container["turn_detection"], c.turn_detection, param)
        if "tools" in s:
            if isinstance(s["tools"], list):
                check_tools(s["tools"], "session.tools")
            changes["tools"] = parse_tools(s["tools"], "session.tools")
        if "tool_choice" in s:
            changes["tool_choice"] = parse_tool_choice(s["tool_choice"], "session.tool_choice")
        if "temperature" in s:
            changes["temperature"] = parse_temperature(s["temperature"], "session.temperature")
        for key in ("max_response_output_tokens", "max_output_tokens"):
            if key in s:
                changes["max_output_tokens"] = parse_max_tokens(s[key], f"session.{key}")
        return dataclasses.replace(c, **changes)

    def _check_tools(self, tools: tuple[Mapping[str, Any], ...], choice: str | Mapping[str, Any], where: str, *, grammars: bool = True) -> ToolRegistry:
        """The tools and choice as a registry; ``grammars``: also build (and cache) each argument grammar."""
        registry = self._registry(tools)
        try:
            parsed = ToolChoice.parse(choice)
            if parsed.mode in ("function", "required") and not len(registry):
                raise ToolError(f"tool_choice {parsed.mode} {parsed.name or ''} needs tools, and there are none".replace("  ", " "))
            if len(registry):
                registry.resolve(choice)
            check_tools = getattr(self.engines.llm, "check_tools", None)
            if grammars and check_tools is not None:
                check_tools(list(registry))
        except ToolError as error:
            raise ProtocolError(str(error), code="invalid_value", param=f"{where}.tools") from None
        return registry

    @staticmethod
    def _registry(tools: tuple[Mapping[str, Any], ...]) -> ToolRegistry:
        registry = ToolRegistry()
        for spec in tools:
            try:
                registry.add(Tool(str(spec["name"]), str(spec.get("description") or ""), dict(spec["parameters"]), _client_side_tool))
            except ToolError as error:
                raise ProtocolError(str(error), code="invalid_value", param="tools") from None
        return registry

    # -- limits: the system prompt and each item must fit the model's context ------------
    async def _tokens(self, text: str) -> int:
        if len(text) > 4096:  # a long text takes milliseconds to tokenize: not on the event loop
            return await anyio.to_thread.run_sync(self.engines.count_tokens, text)
        return self.engines.count_tokens(text)

    async def _check_prompt(self, instructions: str, tools: tuple[Mapping[str, Any], ...], where: str, extra_system: str = "") -> None:
        """The system prompt (instructions, system items, the tool list) may use half the context."""
        context = self.engines.context_tokens
        limit = context // 2
        notes = "\n".join([*(i.ref.text for i in self.items if isinstance(i.ref, SystemNote)), extra_system])
        listing = "\n".join(f"- {t['name']}: {t.get('description') or ''}" for t in tools)
        used = await self._tokens(instructions or DEFAULT_SYSTEM_PROMPT) + await self._tokens(notes) + await self._tokens(listing)
        if used > limit:
            param = f"{where}.instructions" if not extra_system else "item.content"
            raise ProtocolError(
                f"the system prompt would be {used} tokens (instructions, system items and tool list); "
                f"the model's context is {context} tokens, of which the system prompt may use at most {limit}",
                code="string_above_max_length", param=param,
            )

    async def _check_item_text(self, text: str, param: str) -> None:
        """One item's text may use a quarter of the context (the reply and the system prompt need the rest)."""
        context = self.engines.context_tokens
        limit = context // 4
        if len(text) <= limit:  # a token is at least one character
            return
        used = await self._tokens(text)
        if used > limit:
            raise ProtocolError(
                f"{param} is {used} tokens; the model's context is {context} tokens, of which one item may use at most {limit}",
                code="string_above_max_length", param=param,
            )

    def _apply(self, config: SessionConfig) -> None:
        old, self.config = self.config, config
        self.conversation.system_prompt = config.instructions or DEFAULT_SYSTEM_PROMPT
        if config.input_format != old.input_format:
            self._decoder = AudioDecoder(config.input_format, INPUT_SAMPLE_RATE_HZ)
        if config.output_format != old.output_format:
            self._encoder = AudioEncoder(config.output_format, OUTPUT_SAMPLE_RATE_HZ)
        td = config.turn_detection
        self.conversation.allow_interruptions = td is None or td.interrupt_response
        self.vad.configure(self._vad_settings(td))

    @staticmethod
    def _vad_settings(td: TurnDetection | None) -> VADSettings | None:
        """server_vad → webrtcvad with exactly the silence asked for (``threshold`` is the share of
        voiced frames that starts speech); semantic_vad → the semantic end-of-turn detector, its
        ``eagerness`` mapped to the longest wait and the threshold (turn_taking.EAGERNESS)."""
        if td is None:
            return None
        if td.type == "semantic_vad":
            return VADSettings(prefix_padding_ms=td.prefix_padding_ms, turn_taking=TurnTakingSettings.semantic(td.eagerness))
        return VADSettings(
            threshold=min(1.0, max(0.05, td.threshold)),
            prefix_padding_ms=td.prefix_padding_ms,
            silence_duration_ms=max(td.silence_duration_ms, 20),
            pause_ms=min(100, max(td.silence_duration_ms, 20)),
        )

    def _session_object(self) -> dict[str, Any]:
        return render_session(self.config, self.dialect, self.id)

    async def _append(self, data: dict[str, Any]) -> None:
        audio = self._require(data, "audio", str, "a base64 string")
        if len(audio) * 3 // 4 > MAX_APPEND_BYTES:
            raise ProtocolError(f"an append carries at most {MAX_APPEND_BYTES} bytes of audio", code="audio_too_large", param="audio")
        try:
            samples, _ = self._decoder.decode(audio)
        except AudioDecodeError as error:
            raise ProtocolError(str(error), code="invalid_audio", param="audio") from None
        if samples.size == 0:
            return
        self._pending_audio.append(samples)
        self._pending_samples += len(samples)
        while self._pending_samples > MAX_PENDING_S * INPUT_SAMPLE_RATE_HZ and len(self._pending_audio) > 1:
            self._pending_samples -= len(self._pending_audio.pop(0))  # keep the most recent audio only
        await self._audio_send.send(samples)

    async def _commit(self, data: dict[str, Any]) -> None:
        tail = self._decoder.flush()
        if tail.size:
            self._pending_audio.append(tail)
            await self._audio_send.send(tail)
        samples = np.concatenate(self._pending_audio) if self._pending_audio else np.zeros(0, dtype=np.int16)
        if len(samples) * 1000 < MIN_COMMIT_MS * INPUT_SAMPLE_RATE_HZ:
            raise ProtocolError(
                f"buffer too small: a commit needs at least {MIN_COMMIT_MS} ms of audio, "
                f"the buffer has {len(samples) * 1000 // INPUT_SAMPLE_RATE_HZ} ms",
                code="input_audio_buffer_commit_empty",
            )
        self._pending_audio, self._pending_samples = [], 0
        item = self._commit_user_audio(new_id("item"))
        self.queue_job(Job("transcribe", item=item, audio=samples))

    def _commit_user_audio(self, item_id: str) -> ItemRecord:
        previous = self.items[-1].id if self.items else None
        item = ItemRecord(item_id, "message", role="user", content=[ContentPart("input_audio", None)])
        self.items.append(item)
        self.emit("input_audio_buffer.committed", item_id=item.id, previous_item_id=previous)
        self._emit_item_added(item, previous)
        return item

    async def _clear(self, data: dict[str, Any]) -> None:
        self._decoder.flush()  # what the resampler held back is cleared too
        self._pending_audio, self._pending_samples = [], 0
        self.emit("input_audio_buffer.cleared")

    async def _item_create(self, data: dict[str, Any]) -> None:
        spec = self._require(data, "item", dict, "an object")
        previous_id = data.get("previous_item_id")
        index = len(self.items)
        if previous_id is not None:
            if previous_id == "root":
                index = 0
            else:
                index = self._index(previous_id, "previous_item_id", "item_create_invalid_previous_item_id") + 1
        item, audio = self._item_from_spec(spec)
        await self._check_item_limits(item)
        if any(existing.id == item.id for existing in self.items):
            raise ProtocolError(f"Duplicate item id: an item with id {item.id!r} already exists", code="item_create_duplicate_item_id", param="item.id")
        before = self.items[index].ref if index < len(self.items) else None
        self.items.insert(index, item)
        previous = self.items[index - 1].id if index > 0 else None
        if item.ref is not None:
            self._insert_history(item.ref, before)
        self._emit_item_added(item, previous)
        if audio is not None:
            self.queue_job(Job("transcribe", item=item, audio=audio))

    async def _check_item_limits(self, item: ItemRecord) -> None:
        for index, part in enumerate(item.content):
            if part.text:
                await self._check_item_text(part.text, f"item.content[{index}]")
        for name in ("output", "arguments"):
            value = getattr(item, name)
            if value:
                await self._check_item_text(value, f"item.{name}")
        if item.role == "system":
            await self._check_prompt(self.config.instructions, self.config.tools, "session", extra_system=item.ref.text)

    def _insert_history(self, entry: Any, before: Any) -> None:
        self.conversation.history.insert(entry, before=before)

    def _item_from_spec(self, spec: Mapping[str, Any]) -> tuple[ItemRecord, np.ndarray | None]:
        spec = given(spec)
        kind = spec.get("type", "message")
        item_id = spec.get("id") if isinstance(spec.get("id"), str) and spec.get("id") else new_id("item")
        if kind == "function_call_output":
            call_id = self._require(spec, "call_id", str, "a string")
            output = self._require(spec, "output", str, "a string")
            item = ItemRecord(item_id, kind, call_id=call_id, output=output)
            item.ref = FunctionCallOutput(self.conversation.new_turn_id(), call_id, output)
            return item, None
        if kind == "function_call":
            call_id = self._require(spec, "call_id", str, "a string")
            name = self._require(spec, "name", str, "a string")
            arguments = self._require(spec, "arguments", str, "a string")
            item = ItemRecord(item_id, kind, call_id=call_id, name=name, arguments=arguments)
            item.ref = FunctionCall(self.conversation.new_turn_id(), call_id, name, arguments)
            return item, None
        if kind != "message":
            raise ProtocolError(f"item.type {kind!r} is not supported (message, function_call, function_call_output)", code="invalid_value", param="item.type")
        role = spec.get("role")
        if role not in ("user", "assistant", "system"):
            raise ProtocolError("item.role must be user, assistant or system", code="invalid_value", param="item.role")
        content = self._require(spec, "content", list, "a list")
        parts: list[ContentPart] = []
        audio: np.ndarray | None = None
        for index, part in enumerate(content):
            param = f"item.content[{index}]"
            if not isinstance(part, Mapping):
                raise ProtocolError(f"{param} must be an object", code="invalid_value", param=param)
            part = given(part)
            ptype = part.get("type")
            if ptype in ("input_text", "text", "output_text"):
                text = self._require(part, "text", str, "a string")
                parts.append(ContentPart("input_text" if role != "assistant" else "output_text", text))
            elif ptype in ("input_audio", "audio", "output_audio"):
                if isinstance(part.get("audio"), str) and role == "user":
                    if audio is not None:
                        raise ProtocolError("a user item carries at most one audio part", code="invalid_value", param=f"{param}.audio")
                    if len(part["audio"]) * 3 // 4 > MAX_APPEND_BYTES:
                        raise ProtocolError(f"an item carries at most {MAX_APPEND_BYTES} bytes of audio", code="audio_too_large", param=f"{param}.audio")
                    try:
                        audio, _ = AudioDecoder(self.config.input_format, INPUT_SAMPLE_RATE_HZ).decode(part["audio"])
                    except AudioDecodeError as error:
                        raise ProtocolError(str(error), code="invalid_audio", param=f"{param}.audio") from None
                    if len(audio) > MAX_ITEM_AUDIO_S * INPUT_SAMPLE_RATE_HZ:
                        raise ProtocolError(
                            f"an item carries at most {MAX_ITEM_AUDIO_S:.0f} s of audio, this one {len(audio) / INPUT_SAMPLE_RATE_HZ:.0f} s",
                            code="audio_too_large", param=f"{param}.audio",
                        )
                transcript = part.get("transcript") if isinstance(part.get("transcript"), str) else None
                parts.append(ContentPart("input_audio" if role == "user" else "output_audio", transcript))
            else:
                raise ProtocolError(f"{param}.type {ptype!r} is not supported", code="invalid_value", param=f"{param}.type")
        item = ItemRecord(item_id, "message", role=role, content=parts)
        text = " ".join(part.text for part in parts if part.text)
        if role == "system":
            item.ref = SystemNote(text)
        elif role == "assistant":
            item.ref = finished_response(text)
        elif audio is None:
            item.ref = UserMessage(self.conversation.new_turn_id(), text)
        return item, audio

    def _emit_item_added(self, item: ItemRecord, previous: str | None) -> None:
        if self.dialect is Dialect.BETA:
            self.emit("conversation.item.created", item=render_item(item, self.dialect), previous_item_id=previous)
        else:
            self.emit("conversation.item.added", item=render_item(item, self.dialect), previous_item_id=previous)
            if item.status == "completed":
                self.emit("conversation.item.done", item=render_item(item, self.dialect), previous_item_id=previous)

    def _index(self, item_id: Any, param: str, unknown_code: str) -> int:
        """The item's position; an unknown id gets OpenAI's per-event code (clients branch on it)."""
        if not isinstance(item_id, str):
            raise ProtocolError(f"{param} must be a string", code="invalid_value", param=param)
        for index, item in enumerate(self.items):
            if item.id == item_id:
                return index
        raise ProtocolError(f"Item with {param} not found: {item_id}", code=unknown_code, param=param)

    async def _item_retrieve(self, data: dict[str, Any]) -> None:
        item = self.items[self._index(self._require(data, "item_id", str, "a string"), "item_id", "item_retrieve_invalid_item_id")]
        self.emit("conversation.item.retrieved", item=render_item(item, self.dialect))

    async def _item_delete(self, data: dict[str, Any]) -> None:
        index = self._index(self._require(data, "item_id", str, "a string"), "item_id", "item_delete_invalid_item_id")
        item = self.items[index]
        if self._active is not None and item in self._active.output:
            raise ProtocolError("the item belongs to the response in progress: cancel it first", code="item_in_use", param="item_id")
        del self.items[index]
        if item.ref is not None:
            self.conversation.history.remove(item.ref)
        self.emit("conversation.item.deleted", item_id=item.id)

    async def _item_truncate(self, data: dict[str, Any]) -> None:
        item = self.items[self._index(self._require(data, "item_id", str, "a string"), "item_id", "item_truncate_invalid_item_id")]
        content_index = self._require(data, "content_index", int, "an integer")
        audio_end_ms = self._require(data, "audio_end_ms", int, "an integer")
        if item.role != "assistant" or not isinstance(item.ref, Response):
            raise ProtocolError("only assistant messages can be truncated", code="invalid_value", param="item_id")
        if not 0 <= content_index < len(item.content) or item.content[content_index].kind != "output_audio":
            raise ProtocolError("content_index must point at the item's audio part", code="invalid_value", param="content_index")
        if audio_end_ms < 0 or audio_end_ms > item.audio_ms:
            raise ProtocolError(
                f"audio_end_ms {audio_end_ms} is past the item's audio ({item.audio_ms} ms)",
                code="invalid_value", param="audio_end_ms",
            )
        response = item.ref
        if not response.ended:
            self.conversation.cancel_response("client_cancelled")
        truncated = self.conversation.history.truncate(response, audio_end_ms, OUTPUT_SAMPLE_RATE_HZ)
        heard = truncated.text
        item.ref = truncated
        item.content[content_index].text = heard
        item.audio_samples = audio_end_ms * item.audio_rate_hz // 1000
        self.emit("conversation.item.truncated", item_id=item.id, content_index=content_index, audio_end_ms=audio_end_ms)

    async def _response_create(self, data: dict[str, Any]) -> None:
        overrides = given(data.get("response"))
        if not isinstance(overrides, Mapping):
            raise ProtocolError("response must be an object", code="invalid_value", param="response")
        if self._active is not None or self._queued is not None:
            raise ProtocolError(
                f"Conversation already has an active response in progress: {(self._active.id if self._active else 'queued')}. "
                "Wait until the response is finished before creating a new one.",
                code="conversation_already_has_active_response",
            )
        request = self._request(overrides)
        if "tools" in overrides or "instructions" in overrides:
            await self._check_prompt(request.instructions, request.tools, "response")
        if "tools" in overrides:
            await anyio.to_thread.run_sync(self._check_tools, request.tools, request.tool_choice, "response")
        if self._active is not None or self._queued is not None:  # one arrived while the checks ran
            raise ProtocolError("Conversation already has an active response in progress.", code="conversation_already_has_active_response")
        self.queue_job(Job("respond", request=request))
        self._urgency.begin(self.id)  # the client waits for this response's first output
        self._queued = request

    def _request(self, o: Mapping[str, Any]) -> ResponseRequest:
        c = self.config
        if o.get("conversation", "auto") != "auto" or o.get("input") is not None:
            raise ProtocolError("out-of-band responses (conversation: none, input) are not supported", code="unsupported", param="response.conversation")
        modalities = c.output_modalities
        for key in ("modalities", "output_modalities"):
            if key in o:
                modalities = parse_modalities(o[key], f"response.{key}")
        instructions = o.get("instructions", c.instructions)
        if not isinstance(instructions, str):
            raise ProtocolError("response.instructions must be a string", code="invalid_value", param="response.instructions")
        temperature = parse_temperature(o["temperature"], "response.temperature") if "temperature" in o else c.temperature
        max_tokens = c.max_output_tokens
        for key in ("max_response_output_tokens", "max_output_tokens"):
            if key in o:
                max_tokens = parse_max_tokens(o[key], f"response.{key}")
        if isinstance(o.get("tools"), list):
            check_tools(o["tools"], "response.tools")
        tools = parse_tools(o["tools"], "response.tools") if "tools" in o else c.tools
        choice = parse_tool_choice(o["tool_choice"], "response.tool_choice") if "tool_choice" in o else c.tool_choice
        self._check_tools(tools, choice, "response", grammars=False)
        metadata = o.get("metadata")
        if metadata is not None and (not isinstance(metadata, Mapping) or not all(isinstance(v, str) for v in metadata.values())):
            raise ProtocolError("response.metadata must map strings to strings", code="invalid_value", param="response.metadata")
        return ResponseRequest(modalities, instructions, temperature, max_tokens, tools, choice, metadata)

    async def _response_cancel(self, data: dict[str, Any]) -> None:
        wanted = data.get("response_id")
        state = self._active
        if self._queued is not None and state is None:
            self._queued.cancelled = True
            return
        if state is None or state.finished:
            raise ProtocolError("Cancellation failed: no active response found", code="response_cancel_not_active")
        if wanted is not None and wanted != state.id:
            raise ProtocolError(f"Cancellation failed: response {wanted!r} is not the active response", code="response_cancel_not_active", param="response_id")
        if state.response is None:
            state.request.cancelled = True
        else:
            self.conversation.cancel_response("client_cancelled")

    async def _unsupported(self, data: dict[str, Any]) -> None:
        raise ProtocolError(f"{data['type']} is not supported by this server", code="unsupported", param="type")
