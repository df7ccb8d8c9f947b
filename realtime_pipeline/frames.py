"""Frames: the small immutable values that flow between stages.

Data frames stay in order on the bounded queues. Frames that belong to an
assistant response carry the :class:`~realtime_pipeline.response.Response`
handle, so every stage can drop them the moment that response is cancelled:
the cancellation token is the urgent path, the queues are the ordered path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .response import Response


@dataclass(frozen=True, eq=False)
class Frame:
    """Base of every frame."""


@dataclass(frozen=True, eq=False)
class AudioFrame(Frame):
    """Mono int16 audio captured from the user.

    ``start_sample`` is the position of the first sample in the input stream
    (at ``sample_rate_hz``); ``captured_at_s`` is the monotonic time the frame
    became available, which the tracer uses as the wall-clock of that audio.
    """

    samples: np.ndarray
    sample_rate_hz: int
    start_sample: int = 0
    captured_at_s: float = field(default_factory=time.monotonic)
    #: The same audio as the ASR should hear it, where that differs from ``samples`` (None: it
    #: does not): the echo stage mutes the VAD's signal until it is sure the user speaks over a
    #: reply, and gives the ASR the linear echo canceller's residual there, first syllables included.
    asr_samples: np.ndarray | None = None

    @property
    def duration_ms(self) -> float:
        return 1000.0 * len(self.samples) / self.sample_rate_hz

    @property
    def end_sample(self) -> int:
        return self.start_sample + len(self.samples)


@dataclass(frozen=True, eq=False)
class SpeechStarted(Frame):
    """VAD: the user started speaking. ``audio_start_ms`` includes the prefix padding."""

    turn_id: int
    audio_start_ms: int


@dataclass(frozen=True, eq=False)
class SpeechPaused(Frame):
    """VAD: the first silent frames after speech; the turn may be ending.

    Emitted before ``silence_duration_ms`` has elapsed so the ASR can start the
    final transcription during the end-of-turn silence instead of after it.
    """

    turn_id: int
    audio_end_ms: int


@dataclass(frozen=True, eq=False)
class SpeechResumed(Frame):
    """VAD: speech came back after a :class:`SpeechPaused`; the turn goes on."""

    turn_id: int


@dataclass(frozen=True, eq=False)
class SpeechStopped(Frame):
    """VAD: the turn ended (``silence_duration_ms`` of silence after the last voiced audio)."""

    turn_id: int
    audio_end_ms: int


@dataclass(frozen=True, eq=False)
class TranscriptPartial(Frame):
    """ASR: an interim transcript of the current turn; may change."""

    turn_id: int
    text: str


@dataclass(frozen=True, eq=False)
class TranscriptPreview(Frame):
    """ASR: what the final transcript will be if the turn ends at ``audio_end_ms``.

    Sent during the end-of-turn silence, before the VAD commits the turn, so
    the reply can be prepared speculatively. A :class:`SpeechResumed` voids it.
    """

    turn_id: int
    text: str
    audio_end_ms: int


@dataclass(frozen=True, eq=False)
class TranscriptFinal(Frame):
    """ASR: the final transcript of one user turn (may be empty for noise)."""

    turn_id: int
    text: str
    audio_start_ms: int
    audio_end_ms: int


@dataclass(frozen=True, eq=False)
class TextDelta(Frame):
    """LLM: a piece of the assistant's reply text, as generated."""

    response: Response
    text: str


@dataclass(frozen=True, eq=False)
class TextChunk(Frame):
    """Chunker: a speakable piece of reply text (a clause or a few sentences)."""

    response: Response
    text: str
    index: int


@dataclass(frozen=True, eq=False)
class ReplyAudio(Frame):
    """TTS: synthesized reply audio for one chunk, at the output sample rate."""

    response: Response
    samples: np.ndarray
    sample_rate_hz: int
    chunk_index: int
    text: str

    @property
    def duration_ms(self) -> float:
        return 1000.0 * len(self.samples) / self.sample_rate_hz


@dataclass(frozen=True, eq=False)
class ResponseEnd(Frame):
    """Control: no more frames of this response follow from the emitting stage.

    The LLM emits it after the last text delta; the chunker, TTS and player
    forward it after their own last frame, so the player knows when the
    response has been played to the end.
    """

    response: Response


RESPONSE_FRAMES = (TextDelta, TextChunk, ReplyAudio, ResponseEnd)


def response_of(frame: Frame) -> Response | None:
    """The response a frame belongs to, or None for user-side frames."""
    return getattr(frame, "response", None)
