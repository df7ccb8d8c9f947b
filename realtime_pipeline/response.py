"""The assistant's response as a first-class object.

A :class:`Response` owns its cancellation token, collects the text the LLM
generated, the chunks the TTS turned into audio and how much of that audio
the player actually played. From those it knows what the user heard, which is
what goes into the history when the response is interrupted (like the
Realtime API's ``conversation.item.truncate``).
"""

from __future__ import annotations

import enum
import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from .cancellation import CancelToken

_ids = itertools.count(1)


class ResponseStatus(enum.Enum):
    ACTIVE = "active"
    DONE = "done"
    CANCELLED = "cancelled"


@dataclass
class SpokenChunk:
    """One synthesized chunk: its text and its length in output samples."""

    text: str
    start_sample: int
    num_samples: int


class Response:
    def __init__(self, turn_id: int, user_text: str, parent_token: CancelToken | None = None) -> None:
        self.id = f"resp_{next(_ids)}"
        self.turn_id = turn_id
        self.user_text = user_text
        self.token = CancelToken(parent_token)
        self.text = ""
        self.chunks: list[SpokenChunk] = []
        self.output_sample_rate_hz: int | None = None
        self.played_samples = 0
        self.status = ResponseStatus.ACTIVE
        self.cancel_reason: str | None = None
        self.created_at_s = time.monotonic()
        self.ended_at_s: float | None = None
        self._ended: anyio.Event | None = None
        self._paused = False
        self._pause_callbacks: list[Callable[[], None]] = []
        self._resumed: anyio.Event | None = None

    @property
    def cancelled(self) -> bool:
        return self.token.cancelled

    @property
    def ended(self) -> bool:
        return self.status is not ResponseStatus.ACTIVE

    @property
    def interrupted(self) -> bool:
        """Cut short (cancelled before it was played to the end): the history keeps what was heard."""
        return self.status is ResponseStatus.CANCELLED

    @property
    def paused(self) -> bool:
        """Held silent while the conversation decides whether the user's sound was an interruption."""
        return self._paused

    @property
    def played_ms(self) -> float:
        if not self.output_sample_rate_hz:
            return 0.0
        return 1000.0 * self.played_samples / self.output_sample_rate_hz

    def add_text(self, delta: str) -> None:
        self.text += delta

    def add_chunk(self, text: str, num_samples: int, sample_rate_hz: int) -> None:
        self.output_sample_rate_hz = sample_rate_hz
        start = self.chunks[-1].start_sample + self.chunks[-1].num_samples if self.chunks else 0
        self.chunks.append(SpokenChunk(text, start, num_samples))

    def mark_played(self, num_samples: int) -> None:
        self.played_samples += num_samples

    def heard_text(self) -> str:
        """The reply text that corresponds to the audio played so far.

        Chunks played to the end count whole. In the chunk being played when the
        response stopped, speech time is taken as proportional to characters (a
        good fit for Piper at a fixed rate), and a word counts as heard once the
        audio has passed its middle.
        """
        words: list[str] = []
        for chunk in self.chunks:
            if self.played_samples >= chunk.start_sample + chunk.num_samples:
                words.extend(chunk.text.split())
                continue
            if self.played_samples > chunk.start_sample and chunk.num_samples > 0:
                heard_chars = (self.played_samples - chunk.start_sample) / chunk.num_samples * len(chunk.text)
                for match in re.finditer(r"\S+", chunk.text):
                    if (match.start() + match.end()) / 2 > heard_chars:
                        break
                    words.append(match.group())
            break
        return " ".join(words)

    def cancel(self, reason: str = "cancelled") -> bool:
        """Stop this response everywhere at once. Returns False if it had already ended."""
        if self.ended:
            return False
        self.cancel_reason = reason
        self.token.cancel(reason)
        self._end(ResponseStatus.CANCELLED)
        return True

    def finish(self) -> bool:
        """Mark the response played to the end. Returns False if it had already ended."""
        if self.ended:
            return False
        self._end(ResponseStatus.DONE)
        return True

    def pause(self) -> bool:
        """Hold the response silent (its ``on_pause`` callbacks flush the output). False if ended or paused."""
        if self.ended or self._paused:
            return False
        self._paused = True
        for callback in list(self._pause_callbacks):
            callback()
        return True

    def resume(self) -> bool:
        """Let a paused response play on from where it stopped. False if it was not paused."""
        if not self._paused:
            return False
        self._paused = False
        if self._resumed is not None:
            self._resumed.set()
            self._resumed = None
        return True

    def on_pause(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` at every :meth:`pause` (event loop thread). Returns an unregister function."""
        self._pause_callbacks.append(callback)

        def unregister() -> None:
            if callback in self._pause_callbacks:
                self._pause_callbacks.remove(callback)

        return unregister

    async def wait_resumed(self) -> None:
        """Return once the response is no longer paused (resumed or ended)."""
        while self._paused and not self.ended:
            if self._resumed is None:
                self._resumed = anyio.Event()
            await self._resumed.wait()

    def _end(self, status: ResponseStatus) -> None:
        self.status = status
        self.ended_at_s = time.monotonic()
        self.token.release()
        self._pause_callbacks = []
        was_paused, self._paused = self._paused, False
        if was_paused and self._resumed is not None:
            self._resumed.set()
            self._resumed = None
        if self._ended is not None:
            self._ended.set()

    async def wait_ended(self) -> ResponseStatus:
        if not self.ended:
            if self._ended is None:
                self._ended = anyio.Event()
            await self._ended.wait()
        return self.status

    def history_text(self) -> str:
        """What the history keeps: everything if played to the end, else what was heard."""
        return self.text if self.status is ResponseStatus.DONE else self.heard_text()

    def __repr__(self) -> str:
        return f"Response({self.id}, turn={self.turn_id}, {self.status.value})"
