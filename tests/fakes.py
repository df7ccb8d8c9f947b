"""Fake stages for runtime tests: no models, deterministic output, cancellation honoured like the real ones.

- :class:`ScriptedUser`: a source that plays the VAD and the ASR's part (speech
  start/progress/stop, audio clock, partial and final transcripts), each turn
  starting when a condition on the conversation holds.
- :class:`ScriptedLLM`: answers each final transcript with a scripted reply, one
  token per worker-thread hop with a configurable delay, checking the token.
- :class:`FakeTTS`: turns each ``TextChunk`` into a tone of a configurable length
  (ms per character), after a configurable synthesis time spent in a worker
  thread that polls the token (so in-flight synthesis can be dropped).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
import numpy as np

from realtime_pipeline.cancellation import CancelToken
from realtime_pipeline.conversation import Conversation
from realtime_pipeline.frames import (
    ReplyAudio,
    ResponseEnd,
    SpeechStarted,
    SpeechStopped,
    TextChunk,
    TextDelta,
    TranscriptFinal,
    TranscriptPartial,
)
from realtime_pipeline.response import Response
from realtime_pipeline.stage import (
    Inbox,
    Outbox,
    Stage,
    StageContext,
    send_unless_cancelled,
)

Condition = Callable[[Conversation], bool]

#: Guard against a hung scenario (a test failure, not a timing threshold).
WAIT_LIMIT_S = 60.0


def when_idle(conversation: Conversation) -> bool:
    return conversation.idle


def when_played_ms(ms: float) -> Condition:
    """The active response has had at least ``ms`` of audio written to the output."""
    return lambda c: c.active_response is not None and c.active_response.played_ms >= ms


@dataclass(frozen=True)
class UserTurn:
    """One user turn as the VAD and ASR would report it.

    ``text`` is the final transcript ("" for a noise without words); ``when`` says
    when the user starts speaking; ``voiced_ms`` of speech follow in 20 ms steps,
    then ``partial`` (if any), ``silence_ms`` until SpeechStopped, and
    ``final_after_ms`` of further input audio before the final transcript.
    """

    text: str
    when: Condition = when_idle
    voiced_ms: int = 200
    partial: str | None = None
    silence_ms: int = 0
    final_after_ms: int = 0


class ScriptedUser(Stage):
    """Source stage: speaks the scripted turns, then waits until the conversation is idle.

    ``step_s`` is the real time each 20 ms of scripted audio takes (0: just yield).
    """

    name = "user"

    def __init__(self, turns: Sequence[UserTurn], *, step_s: float = 0.0, poll_s: float = 0.001) -> None:
        self.turns = list(turns)
        self.step_s = step_s
        self.poll_s = poll_s
        self.position_ms = 0
        self.turn_ids: list[int] = []
        #: Monotonic time each turn started speaking.
        self.started_at_s: list[float] = []

    async def wait_until(self, conversation: Conversation, condition: Condition) -> None:
        with anyio.fail_after(WAIT_LIMIT_S):
            while not condition(conversation):
                await anyio.sleep(self.poll_s)

    async def _audio(self, conversation: Conversation, ms: int) -> None:
        for _ in range(ms // 20):
            self.position_ms += 20
            conversation.advance_audio(self.position_ms)
            await anyio.sleep(self.step_s)

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        conversation = ctx.conversation
        for turn in self.turns:
            await self.wait_until(conversation, turn.when)
            turn_id = conversation.new_turn_id()
            self.turn_ids.append(turn_id)
            self.started_at_s.append(time.monotonic())
            start_ms = self.position_ms
            started = SpeechStarted(turn_id, start_ms)
            conversation.user_speech_started(started)
            await outbox.send(started)
            for voiced_ms in range(20, turn.voiced_ms + 1, 20):
                self.position_ms += 20
                conversation.user_speech_progress(turn_id, voiced_ms)
                conversation.advance_audio(self.position_ms)
                await anyio.sleep(self.step_s)
            end_ms = self.position_ms
            if turn.partial is not None:
                partial = TranscriptPartial(turn_id, turn.partial)
                conversation.transcript_partial(partial)
                await outbox.send(partial)
            await self._audio(conversation, turn.silence_ms)
            stopped = SpeechStopped(turn_id, end_ms)
            conversation.user_speech_stopped(stopped)
            await outbox.send(stopped)
            await self._audio(conversation, turn.final_after_ms)
            final = TranscriptFinal(turn_id, turn.text, start_ms, end_ms)
            conversation.transcript_final(final)
            await outbox.send(final)
        await self.wait_until(conversation, when_idle)


def tokens_of(text: str) -> list[str]:
    """Split a reply into LLM-like pieces: each word with its trailing space."""
    return re.findall(r"\S+\s*", text)


class ScriptedLLM(Stage):
    """Answers each non-empty final transcript with ``replies[i]`` (cycling), or ``replies(user_text)``.

    Each token is made in a worker thread that checks the response's token first
    and sleeps ``token_delay_s``, so a cancel stops generation at the next token.
    """

    name = "llm"

    def __init__(self, replies: Sequence[str] | Callable[[str], str], *, token_delay_s: float = 0.002) -> None:
        self.replies = replies
        self.token_delay_s = token_delay_s
        self.responses: list[Response] = []
        self.prompts: dict[Response, list[dict]] = {}
        self.tokens_sent: dict[Response, int] = {}
        self.generating: Response | None = None

    def reply_for(self, index: int, user_text: str) -> str:
        if callable(self.replies):
            return self.replies(user_text)
        return self.replies[index % len(self.replies)]

    def _make_token(self, piece: str, token: CancelToken) -> str | None:
        if token.cancelled:
            return None
        time.sleep(self.token_delay_s)
        return piece

    answers_turns = True

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        conversation = ctx.conversation
        async for frame in inbox:
            await outbox.send(frame)
            if not isinstance(frame, TranscriptFinal):
                continue
            if not frame.text.strip():
                conversation.close_turn(frame.turn_id)
                continue
            response = conversation.begin_response(frame.turn_id, frame.text)
            reply = self.reply_for(len(self.responses), frame.text)
            self.responses.append(response)
            self.prompts[response] = conversation.messages()
            self.tokens_sent[response] = 0
            self.generating = response
            try:
                for piece in tokens_of(reply):
                    made = await anyio.to_thread.run_sync(self._make_token, piece, response.token)
                    if made is None:
                        break
                    response.add_text(made)
                    if await send_unless_cancelled(outbox, TextDelta(response, made)):
                        self.tokens_sent[response] += 1
            finally:
                self.generating = None
            await send_unless_cancelled(outbox, ResponseEnd(response))


def tone(num_samples: int, seed: int) -> np.ndarray:
    """A recognisable int16 tone: every chunk gets its own pattern, so played audio can be traced back."""
    t = np.arange(num_samples)
    return ((np.sin(t / (3.0 + seed % 7)) * 6000) + (seed % 97)).astype(np.int16)


class FakeTTS(Stage):
    """``TextChunk`` → ``ReplyAudio`` of ``ms_per_char`` per character, after ``synth_s`` (or ``synth_s(chunk)``)."""

    name = "tts"

    def __init__(
        self,
        *,
        sample_rate_hz: int = 16000,
        ms_per_char: float = 10.0,
        synth_s: float | Callable[[TextChunk], float] = 0.0,
    ) -> None:
        self.sample_rate_hz = sample_rate_hz
        self.ms_per_char = ms_per_char
        self.synth_s = synth_s
        self.in_flight: TextChunk | None = None
        self.synthesized: dict[Response, list[np.ndarray]] = {}
        self.dropped: list[TextChunk] = []
        self._seed = 0

    def _synthesize(self, chunk: TextChunk, token: CancelToken, seed: int) -> np.ndarray | None:
        delay = self.synth_s(chunk) if callable(self.synth_s) else self.synth_s
        deadline = time.monotonic() + delay
        while True:
            if token.cancelled:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(0.002, left))
        return tone(round(len(chunk.text) * self.ms_per_char * self.sample_rate_hz / 1000), seed)

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        async for frame in inbox:
            if not isinstance(frame, TextChunk):
                await send_unless_cancelled(outbox, frame)
                continue
            response = frame.response
            if response.cancelled:
                self.dropped.append(frame)
                continue
            self._seed += 1
            self.in_flight = frame
            try:
                samples = await anyio.to_thread.run_sync(self._synthesize, frame, response.token, self._seed)
            finally:
                self.in_flight = None
            if samples is None or response.cancelled:
                self.dropped.append(frame)
                continue
            response.add_chunk(frame.text, len(samples), self.sample_rate_hz)
            self.synthesized.setdefault(response, []).append(samples)
            await send_unless_cancelled(outbox, ReplyAudio(response, samples, self.sample_rate_hz, frame.index, frame.text))

    def audio(self, response: Response) -> np.ndarray:
        pieces = self.synthesized.get(response, [])
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)
