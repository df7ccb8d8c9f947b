"""One Realtime connection: its conversation, its pipeline, and the events both ways.

Every client event is validated before it touches the pipeline; anything
wrong becomes an ``error`` event carrying the client's ``event_id`` and the
session goes on. Responses run one at a time in :meth:`RealtimeSession.response_loop`
(inside the pipeline's Responder stage), which also does the transcriptions
of manual commits, so a ``commit`` followed by ``response.create`` always
answers the committed words.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
from anyio.abc import TaskGroup

from ..audio import INPUT_SAMPLE_RATE_HZ
from ..conversation import (
    DEFAULT_SYSTEM_PROMPT,
    ResponseDone,
    ResponseInterrupted,
    UserMessage,
)
from ..frames import SpeechStarted, SpeechStopped, TranscriptFinal
from ..interruption import InterruptionSettings, has_words
from ..pipeline import Pipeline, StageError
from ..priority import run_model
from ..responder import Responder as CoreResponder
from ..stage import Outbox, StageContext
from ..stages.chunker import SentenceChunker
from ..stages.player import Player
from ..stages.smart_turn import SmartTurn
from .client_events import HANDLERS, ClientEventsMixin
from .codecs import AudioDecoder, AudioEncoder
from .engines import OUTPUT_SAMPLE_RATE_HZ, Engines
from .limits import FittingConversation, inspect_event
from .protocol import (
    ContentPart,
    Dialect,
    ItemRecord,
    ProtocolError,
    SessionConfig,
    event_id,
    event_name,
    new_id,
)
from .responses import Job, ResponseRequest, ResponsesMixin, ResponseState, Speculating
from .stages import EventOutput, InputSource, Responder, SwitchableVAD

log = logging.getLogger(__name__)

#: Client messages longer than this are parsed in a worker thread (a big append or tool list).
LARGE_MESSAGE_CHARS = 256 * 1024
#: Bounds of the session's queues. Events to the client: a client that reads none of ~20 s of
#: paced audio deltas and their transcript is gone or stuck (the session closes). Audio chunks
#: into the pipeline: an append waits for room (backpressure on the socket). Jobs: commits and
#: response.create waiting for the response loop (more are refused with an error).
MAX_QUEUED_EVENTS = 4096
MAX_QUEUED_AUDIO_CHUNKS = 256
MAX_QUEUED_JOBS = 16


def parse_event(text: str) -> Any:
    """A client message as JSON, depth-checked and with lone surrogates repaired (see limits.py)."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise ProtocolError("the message is nested too deeply to parse", code="invalid_json") from None
    except ValueError as error:
        raise ProtocolError(f"the message is not valid JSON ({error})", code="invalid_json") from None
    return inspect_event(text, data)


@dataclass(frozen=True)
class SessionOptions:
    """Server-wide behaviour of every session.

    ``pace_output``: send reply audio at the rate it plays (a virtual sound card
    ``output_lead_ms`` ahead of the listener), so the server knows what was heard
    when the user barges in; False sends it as fast as it is synthesized.
    """

    pace_output: bool = True
    output_lead_ms: int = 500
    output_block_ms: int = 100
    instructions: str = DEFAULT_SYSTEM_PROMPT
    #: Barge-in: the library's policy (pause at once, cancel on words, resume on no words).
    interruptions: InterruptionSettings = field(default_factory=InterruptionSettings)
    #: WebRTC calls: the reply track's Opus packet time, 10 or 20 ms (``rtc_call.FRAME_MS``: 10 waits
    #: less, 20 costs half the CPU per call; docs/webrtc.md).
    webrtc_packet_ms: int = 10

    def __post_init__(self) -> None:
        if self.webrtc_packet_ms not in (10, 20):  # rtc_call.PACKET_MS_CHOICES (aiortc is an optional extra)
            raise ValueError(f"webrtc_packet_ms must be 10 or 20, got {self.webrtc_packet_ms}")


class RealtimeSession(ClientEventsMixin, ResponsesMixin):
    """One connection: client events in (:class:`ClientEventsMixin`), responses (:class:`ResponsesMixin`),
    and the pipeline's events out. Only the shared models are shared with other sessions."""

    def __init__(
        self,
        engines: Engines,
        dialect: Dialect,
        send_json: Callable[[str], Awaitable[bool]],
        *,
        model: str | None = None,
        options: SessionOptions | None = None,
        rate_limit: Callable[[], dict[str, Any] | None] | None = None,
    ) -> None:
        """``rate_limit``: the server's session limit as a ``rate_limits.updated`` entry (see app.Admission)."""
        self.engines = engines
        self._rate_limit = rate_limit
        self.dialect = dialect
        self.options = options or SessionOptions()
        self.id = new_id("sess")
        self.conversation_id = new_id("conv")
        self.config = SessionConfig(instructions=self.options.instructions, **({"model": model} if model else {}))
        self._send_json = send_json
        self._outgoing_send, self._outgoing = anyio.create_memory_object_stream[dict](MAX_QUEUED_EVENTS)
        self._audio_send, audio_receive = anyio.create_memory_object_stream[np.ndarray](MAX_QUEUED_AUDIO_CHUNKS)
        self._jobs_send, self._jobs = anyio.create_memory_object_stream[Job](MAX_QUEUED_JOBS)
        # The library's barge-in policy, false-interruption resume included (docs/server.md).
        self.conversation = FittingConversation(self.config.instructions, interruptions=self.options.interruptions)
        self.conversation.count_tokens = engines.count_tokens
        self.items: list[ItemRecord] = []
        self._decoder = AudioDecoder(self.config.input_format, INPUT_SAMPLE_RATE_HZ)
        self._encoder = AudioEncoder(self.config.output_format, OUTPUT_SAMPLE_RATE_HZ)
        self._pending_audio: list[np.ndarray] = []  # 16 kHz, since the last commit / clear / VAD turn
        self._pending_samples = 0
        self._turn_items: dict[int, ItemRecord] = {}
        self._active: ResponseState | None = None
        self._queued: ResponseRequest | None = None
        self._speculating: Speculating | None = None
        self._closing = False
        self._sending_closed = False
        self.failed = False
        self._group: TaskGroup | None = None
        self.asr = engines.asr.view()
        self.asr.session_key = self.id
        self.asr.partials_wanted = lambda: self._active is not None and not self._active.finished and self.conversation.allow_interruptions
        self._urgency = engines.asr.urgency
        self.vad = SwitchableVAD(self._vad_settings(self.config.turn_detection))
        self.output = EventOutput(
            OUTPUT_SAMPLE_RATE_HZ, self._on_audio_block,
            paced=self.options.pace_output, buffer_ms=self.options.output_lead_ms,
        )
        #: The library's responder on the shared LLM: every response of this session goes through it.
        self.responder = CoreResponder(engines.llm, speculate=False)
        self.pipeline = Pipeline(
            [
                InputSource(audio_receive), self.vad, SmartTurn(engines.smart_turn), self.asr, Responder(self),
                SentenceChunker(), engines.tts.view(), Player(self.output, block_ms=self.options.output_block_ms),
            ],
            conversation=self.conversation,
        )
        self.conversation.add_listener(self._on_conversation_event)

    def wants_text_end_of_turn(self) -> bool:
        """Whether the LLM should score the end of turn of each transcript preview (semantic_vad)."""
        td = self.config.turn_detection
        return td is not None and td.type == "semantic_vad"

    # -- running ----------------------------------------------------------------------
    async def serve(self, receive_text: Callable[[], Awaitable[str | None]]) -> None:
        """Run the session until the client disconnects (``receive_text`` returns None)."""
        async with anyio.create_task_group() as group:
            self._group = group
            group.start_soon(self._sender)
            group.start_soon(self._run_pipeline)
            self.emit("session.created", session=self._session_object())
            self.emit("conversation.created", conversation={"id": self.conversation_id, "object": "realtime.conversation"})
            self.emit_rate_limits()
            try:
                while True:
                    text = await receive_text()
                    if text is None:
                        break
                    await self.handle(text)
            finally:
                self._closing = True
                self._urgency.end(self.id)
                self.pipeline.stop()
                self._audio_send.close()
                self._jobs_send.close()
                group.cancel_scope.cancel()

    async def _run_pipeline(self) -> None:
        try:
            await self.pipeline.run()
        except StageError as error:
            log.exception("session %s: pipeline failed", self.id)
            self.emit_error(ProtocolError(f"the pipeline failed: {error}", code="pipeline_failed", type="server_error"))
            self.failed = True  # the session can't answer any more: let the client see the error, then close
            await anyio.sleep(0.2)
            if self._group is not None:
                self._group.cancel_scope.cancel()

    async def _sender(self) -> None:
        async with self._outgoing:
            async for event in self._outgoing:
                if not await self._send_json(json.dumps(event)):
                    self._sending_closed = True  # the client is gone
                    return

    def emit(self, event_type: str, /, **fields: Any) -> None:
        """Queue a server event (renamed for the dialect; dropped if the dialect has no such event)."""
        wire_name = event_name(event_type, self.dialect)
        if wire_name is None or self._sending_closed:
            return
        try:
            self._outgoing_send.send_nowait({"type": wire_name, "event_id": event_id(), **fields})
        except anyio.WouldBlock:  # the client stopped reading: end the session rather than grow without bound
            log.warning("session %s: %d events queued and the client reads none; closing", self.id, MAX_QUEUED_EVENTS)
            self._sending_closed = True
            self.failed = True
            if self._group is not None:
                self._group.cancel_scope.cancel()
        except anyio.ClosedResourceError:
            self._sending_closed = True

    def queue_job(self, job: Job) -> None:
        """Queue work for the response loop; a client that queues more than :data:`MAX_QUEUED_JOBS`
        gets an error (its event is refused, the session goes on)."""
        try:
            self._jobs_send.send_nowait(job)
        except anyio.WouldBlock:
            raise ProtocolError(
                f"too many commits and responses waiting ({MAX_QUEUED_JOBS}): wait for the ones in progress",
                code="rate_limit_exceeded",
            ) from None

    def emit_rate_limits(self, prompt_tokens: int = 0) -> None:
        """``rate_limits.updated``: the server's sessions (as ``requests``) and the LLM's context
        left for the response (``tokens``), at the start of the session and of each response."""
        context = self.engines.context_tokens
        limits: list[dict[str, Any]] = [{"name": "tokens", "limit": context, "remaining": max(0, context - prompt_tokens), "reset_seconds": 0.0}]
        sessions = self._rate_limit() if self._rate_limit is not None else None
        if sessions is not None:
            limits.insert(0, sessions)
        self.emit("rate_limits.updated", rate_limits=limits)

    def emit_error(self, error: ProtocolError, client_event_id: str | None = None) -> None:
        self.emit("error", error={
            "type": error.type, "code": error.code, "message": error.message,
            "param": error.param, "event_id": client_event_id,
        })

    # -- client events ----------------------------------------------------------------
    async def handle(self, text: str) -> None:
        """Act on one client message; any problem becomes an error event."""
        client_event_id: str | None = None
        try:
            if len(text) > LARGE_MESSAGE_CHARS:  # parsing megabytes takes milliseconds: not on the event loop
                data = await anyio.to_thread.run_sync(parse_event, text)
            else:
                data = parse_event(text)
            if not isinstance(data, dict):
                raise ProtocolError("a client event must be a JSON object", code="invalid_json")
            if isinstance(data.get("event_id"), str):
                client_event_id = data["event_id"]
            kind = data.get("type")
            if not isinstance(kind, str):
                raise ProtocolError("the event has no type", code="missing_required_parameter", param="type")
            handler = HANDLERS.get(kind)
            if handler is None:
                raise ProtocolError(f"unknown event type {kind!r}", code="unknown_event_type", param="type")
            await getattr(self, handler)(data)
        except ProtocolError as error:
            self.emit_error(error, client_event_id)
        except Exception as error:  # a bug of ours: report it, keep the session
            log.exception("session %s: failed to handle a client event", self.id)
            self.emit_error(ProtocolError(f"{type(error).__name__}: {error}", code="server_error", type="server_error"), client_event_id)

    # -- pipeline side ---------------------------------------------------------------
    def _on_conversation_event(self, event: object) -> None:
        if self._closing:
            return
        if isinstance(event, SpeechStarted):
            item_id = new_id("item")
            self._turn_items[event.turn_id] = ItemRecord(item_id, "message", role="user", content=[ContentPart("input_audio", None)])
            self.emit("input_audio_buffer.speech_started", audio_start_ms=event.audio_start_ms, item_id=item_id)
        elif isinstance(event, SpeechStopped):
            pending = self._turn_items.get(event.turn_id)
            if pending is None:
                return
            self._urgency.begin(self.id)  # the user waits for the answer from now on
            self.emit("input_audio_buffer.speech_stopped", audio_end_ms=event.audio_end_ms, item_id=pending.id)
            self._pending_audio, self._pending_samples = [], 0
            self._turn_items[event.turn_id] = self._commit_user_audio(pending.id)
            self._commit_speculation()  # a reply held for this pause plays now
        elif isinstance(event, (ResponseDone, ResponseInterrupted)):
            state = self._active
            if state is not None and state.response is event.response:
                reason = event.reason if isinstance(event, ResponseInterrupted) else None
                self._finish(state, reason)

    def on_transcript(self, frame: TranscriptFinal) -> None:
        """The ASR's final transcript of a server-VAD turn."""
        item = self._turn_items.pop(frame.turn_id, None)
        if item is None or self._closing:
            self.conversation.close_turn(frame.turn_id)
            return
        spec = self._speculating
        answered = (
            spec is not None and spec.state is not None and spec.response.turn_id == frame.turn_id
            and self.conversation.answered_by_speculation(frame.turn_id, frame.text.strip())
        )
        existing = self._speculated_user_message(spec) if answered and spec is not None else None
        words = self._transcribed(item, frame.text, frame.turn_id, (frame.audio_end_ms - frame.audio_start_ms) / 1000.0, existing)
        self.conversation.close_turn(frame.turn_id)
        if answered:
            return  # the speculative reply answers these very words
        td = self.config.turn_detection
        if not (words and td is not None and td.create_response):
            self._urgency.end(self.id)  # nothing to answer
        if words and td is not None and td.create_response and self._queued is None:
            if self._active is not None and self.conversation.allow_interruptions:
                self.conversation.cancel_response("turn_detected")
            try:
                self._queued = self._request({})
            except ProtocolError as error:  # the session's own settings: validated at session.update
                self.emit_error(error)
                return
            try:
                self.queue_job(Job("respond", request=self._queued))
            except ProtocolError as error:
                self._queued = None
                self.emit_error(error)

    def _speculated_user_message(self, spec: Speculating) -> UserMessage | None:
        """The user's words the speculative reply answers (already in the history, before it)."""
        return next((item for item in self.conversation.history if isinstance(item, UserMessage)
                     and item.turn_id == spec.response.turn_id and item.text == spec.response.user_text), None)

    def _transcribed(self, item: ItemRecord, text: str, turn_id: int, seconds: float, existing: UserMessage | None = None) -> bool:
        """Record a user audio item's transcript (or its failure); True if it has words to answer.
        ``existing``: the history already holds these words (a speculative reply's)."""
        failures, self.asr.failures = self.asr.failures, []
        if failures and not text:
            self.emit(
                "conversation.item.input_audio_transcription.failed", item_id=item.id, content_index=0,
                error={"type": "transcription_error", "code": "transcription_failed", "message": failures[-1]},
            )
            return False
        text = text.strip()
        item.content[0].text = text
        if self.config.transcription is not None:
            if text:
                self.emit("conversation.item.input_audio_transcription.delta", item_id=item.id, content_index=0, delta=text)
            self.emit(
                "conversation.item.input_audio_transcription.completed", item_id=item.id, content_index=0,
                transcript=text, usage={"type": "duration", "seconds": round(seconds, 3)},
            )
        if not has_words(text) or item not in self.items:
            return False
        if existing is not None:
            item.ref = existing
            return True
        entry = UserMessage(turn_id, text)
        index = self.items.index(item)
        following = next((i.ref for i in self.items[index + 1 :] if i.ref is not None), None)
        self._insert_history(entry, following)
        item.ref = entry
        return True

    def _on_audio_block(self, response_id: str | None, samples: np.ndarray) -> None:
        state = self._active
        if state is None or state.response is None or state.response.id != response_id or not state.output:
            return
        item = state.output[-1]
        if not item.audio_samples:
            self._urgency.end(self.id)  # the first audio is out
        item.audio_samples += len(samples)
        self._send_audio(state, samples)

    def _send_audio(self, state: ResponseState, samples: np.ndarray) -> None:
        """Played reply audio to the client: audio delta events (a WebRTC call sends it on its track instead)."""
        self.emit("response.output_audio.delta", **self.part_ids(state), delta=self._encoder.encode(samples))

    def part_ids(self, state: ResponseState) -> dict[str, Any]:
        return {"response_id": state.id, "item_id": state.output[-1].id, "output_index": len(state.output) - 1, "content_index": 0}

    async def response_loop(self, ctx: StageContext, outbox: Outbox) -> None:
        """Transcriptions of committed audio and responses, one at a time, in the order asked."""
        async with self._jobs:
            async for job in self._jobs:
                if job.kind == "transcribe":
                    assert job.item is not None and job.audio is not None
                    try:
                        text = await run_model(self.asr.transcribe_or_raise, job.audio)
                    except Exception as error:  # reported as transcription.failed
                        self.asr.failures.append(f"{type(error).__name__}: {error}")
                        text = ""
                    self._transcribed(job.item, text, self.conversation.new_turn_id(), len(job.audio) / INPUT_SAMPLE_RATE_HZ)
                else:
                    assert job.request is not None
                    try:
                        await self._respond(ctx, outbox, job.request)
                    except Exception as error:  # a bug of ours: fail this response, keep the session
                        log.exception("session %s: response failed", self.id)
                        self.emit_error(ProtocolError(f"the response failed: {type(error).__name__}: {error}", code="server_error", type="server_error"))
                        state = self._active
                        self.conversation.cancel_response("failed")
                        if state is not None:
                            self._finish(state, "failed")

    # -- responses ------------------------------------------------------------------
