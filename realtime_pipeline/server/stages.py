"""The per-connection stages around the library's own: audio in from the socket, events out.

Pipeline of one session::

    InputSource → SwitchableVAD → WhisperASR → Responder → SentenceChunker → PiperTTS → Player(EventOutput)

The source is fed by ``input_audio_buffer.append``; the VAD can be
reconfigured or switched off by ``session.update``; the Responder hands
final transcripts to the session and runs its responses; the player's output
turns played blocks into ``response.output_audio.delta`` events.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
import numpy as np
from anyio.abc import ObjectReceiveStream

from ..audio import INPUT_SAMPLE_RATE_HZ
from ..frames import AudioFrame, TranscriptFinal, TranscriptPreview
from ..io.outputs import AudioOutput, PlayedBlock
from ..stage import Inbox, Outbox, Stage, StageContext
from ..stages.vad import VADSettings, WebRTCVAD
from .engines import Priority, priority

if TYPE_CHECKING:
    from .session import RealtimeSession

log = logging.getLogger(__name__)


class InputSource(Stage):
    """16 kHz int16 pieces from the socket, as AudioFrames with their stream position."""

    name = "source"

    def __init__(self, audio: ObjectReceiveStream[np.ndarray]) -> None:
        self.audio = audio
        self.position = 0

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        async with self.audio:
            async for samples in self.audio:
                await outbox.send(AudioFrame(samples, INPUT_SAMPLE_RATE_HZ, self.position))
                self.position += len(samples)


class SwitchableVAD(Stage):
    """WebRTCVAD whose settings ``session.update`` can change mid-session (None: manual turns).

    A change restarts the inner VAD on the same input stream; with None the
    audio is not analysed at all (the session keeps it for ``commit``).
    """

    name = "vad"

    def __init__(self, settings: VADSettings | None) -> None:
        self.settings = settings
        self._scope: anyio.CancelScope | None = None

    def configure(self, settings: VADSettings | None) -> None:
        if settings == self.settings:
            return
        self.settings = settings
        if self._scope is not None:
            self._scope.cancel()

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        while True:
            settings = self.settings
            with anyio.CancelScope() as self._scope:
                if settings is None:
                    async for _ in inbox:
                        pass
                else:
                    await WebRTCVAD(settings).run(ctx, inbox, outbox)
                return
            log.debug("VAD reconfigured: %s", self.settings)


class Responder(Stage):
    """Hands final transcripts to the session and runs the session's response loop beside them."""

    name = "responder"
    answers_turns = True  # turns stay open until the session answers or closes them

    def __init__(self, session: RealtimeSession) -> None:
        self.session = session

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(self.session.response_loop, ctx, outbox)
            async for frame in inbox:
                if isinstance(frame, TranscriptFinal):
                    self.session.on_transcript(frame)
                elif isinstance(frame, TranscriptPreview):
                    group.start_soon(self._preview, ctx, outbox, frame)
            group.cancel_scope.cancel()


    async def _preview(self, ctx: StageContext, outbox: Outbox, preview: TranscriptPreview) -> None:
        """A pause's preview (beside the loop): semantic_vad's text score first (the turn's end
        waits on it, and the reply's prompt then reuses its KV cache), then the speculative reply
        to the pause, held until the turn ends there (as the library's Responder does)."""
        if self.session.wants_text_end_of_turn():
            with priority(Priority.FINAL_TRANSCRIPT):  # like the turn's final pass
                await self.session.responder.emit_end_of_turn_score(ctx.conversation, preview)
        if preview.text.strip():
            await self.session.speculate(ctx, outbox, preview.text.strip(), preview.turn_id, preview.audio_end_ms)


class EventOutput(AudioOutput):
    """The player's output: each block becomes an audio delta event (paced: at the rate it plays)."""

    def __init__(self, sample_rate_hz: int, on_block: Callable[[str | None, np.ndarray], None], *, paced: bool, buffer_ms: int) -> None:
        super().__init__(sample_rate_hz, paced=paced, buffer_ms=buffer_ms)
        self.on_block = on_block

    def _consume(self, block: PlayedBlock) -> None:
        self.on_block(block.response_id, block.samples)
