"""The player: writes reply audio to an output in small blocks, and knows what was heard."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np

from ..audio import resample
from ..frames import ReplyAudio, ResponseEnd
from ..io.outputs import AudioOutput
from ..response import Response
from ..stage import Inbox, Outbox, Stage, StageContext
from ..tracing import FIRST_SAMPLE_PLAYED


class Player(Stage):
    """Plays ``ReplyAudio`` in ``block_ms`` blocks.

    Before each block it checks the response's token, and a cancel also
    flushes what the output still had queued, so the bot goes silent within
    one block and nothing of the cancelled response is written afterwards.
    A *pause* (a possible barge-in) flushes the same way but keeps the flushed
    tail, which is played first on resume, so a false interruption goes on
    from the exact sample where it stopped. Played samples are counted on the
    response (minus what a flush dropped), which is what the history's
    truncation is based on. At ``ResponseEnd`` it waits for the audio to play
    out, then completes the response.
    """

    name = "player"

    def __init__(self, output: AudioOutput, *, block_ms: int = 20) -> None:
        self.output = output
        self.block_ms = block_ms
        self._opened = False
        self._block = max(1, output.sample_rate_hz * block_ms // 1000)
        # Blocks written lately (output rate): a flush can only drop from these.
        max_queued = output.buffer_s * output.sample_rate_hz + 2 * self._block
        self._recent: deque[tuple[Response, np.ndarray]] = deque(maxlen=int(max_queued // self._block) + 3)
        self._replay: dict[Response, np.ndarray] = {}
        self._watched: dict[Response, tuple[Callable[[], None], Callable[[], None]]] = {}

    async def setup(self, ctx: StageContext) -> None:
        if not self._opened:
            await self.output.open()
            self._opened = True

    async def aclose(self) -> None:
        if self._opened:
            await self.output.close()
            self._opened = False

    def _scale(self, response: Response) -> float:
        """Response samples per output sample (played_samples counts at the TTS rate)."""
        return (response.output_sample_rate_hz or self.output.sample_rate_hz) / self.output.sample_rate_hz

    def _silence(self, response: Response, *, keep: bool) -> None:
        """Flush the output now; keep the dropped tail for a resume, or forget the response."""
        dropped = self.output.flush()
        if keep and dropped:
            tail = [block for owner, block in self._recent if owner is response]
            audio = np.concatenate(tail)[-dropped:] if tail else np.zeros(0, dtype=np.int16)
            self._replay[response] = np.concatenate([audio, self._replay.get(response, audio[:0])])
        response.played_samples = max(0, response.played_samples - round(dropped * self._scale(response)))
        if not keep:
            self._unwatch(response)

    def _watch(self, response: Response) -> None:
        if response not in self._watched:
            self._watched[response] = (
                response.token.on_cancel(lambda: self._silence(response, keep=False)),
                response.on_pause(lambda: self._silence(response, keep=True)),
            )

    def _unwatch(self, response: Response) -> None:
        for unregister in self._watched.pop(response, ()):
            unregister()
        self._replay.pop(response, None)

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        async for frame in inbox:
            if isinstance(frame, ReplyAudio):
                response = frame.response
                if response.cancelled:
                    self._unwatch(response)
                    continue
                self._watch(response)
                samples = resample(frame.samples, frame.sample_rate_hz, self.output.sample_rate_hz)
                with response.token.scope():
                    await self._write(ctx, response, samples)
                continue
            if isinstance(frame, ResponseEnd):
                response = frame.response
                with response.token.scope():
                    while not response.cancelled:
                        await self._wait_while_paused(ctx, response)
                        await self.output.drain()
                        if not response.paused and response not in self._replay:
                            break
                if not response.cancelled:
                    ctx.conversation.complete_response(response)
                self._unwatch(response)
            await outbox.send(frame)
        for response in list(self._watched):
            self._unwatch(response)

    async def _write(self, ctx: StageContext, response: Response, samples: np.ndarray) -> None:
        """Write ``samples`` (output rate) in blocks, stopping at a cancel and waiting out pauses."""
        scale = self._scale(response)
        for offset in range(0, len(samples), self._block):
            await self._wait_while_paused(ctx, response)
            if response.cancelled:
                return
            piece = samples[offset : offset + self._block]
            response.mark_played(round(len(piece) * scale))  # before the write: a flush may come during it
            self._recent.append((response, piece))
            started_at = await self.output.write(piece, response.id)
            ctx.tracer.stamp(response.turn_id, FIRST_SAMPLE_PLAYED, started_at)

    async def _wait_while_paused(self, ctx: StageContext, response: Response) -> None:
        """While ``response`` is paused, wait; on resume, first play again what the pause flushed.

        The pause may have come and gone while this task slept in a write: the
        flushed tail is then still waiting in ``_replay``.
        """
        while not response.cancelled:
            await response.wait_resumed()
            replay = self._replay.pop(response, None)
            if replay is None or response.cancelled:
                return
            await self._write(ctx, response, replay)
