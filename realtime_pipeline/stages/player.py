"""The player: writes reply audio to an output in small blocks, and knows what was heard."""

from __future__ import annotations

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
    one block. Played samples are counted on the response (minus what a flush
    dropped), which is what the history's truncation is based on. At
    ``ResponseEnd`` it waits for the audio to play out, then completes the
    response.
    """

    name = "player"

    def __init__(self, output: AudioOutput, *, block_ms: int = 20) -> None:
        self.output = output
        self.block_ms = block_ms
        self._opened = False

    async def setup(self, ctx: StageContext) -> None:
        if not self._opened:
            await self.output.open()
            self._opened = True

    async def aclose(self) -> None:
        if self._opened:
            await self.output.close()
            self._opened = False

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        watched: dict[Response, object] = {}

        def watch(response: Response) -> None:
            if response not in watched:
                def on_cancel() -> None:
                    dropped = self.output.flush()
                    if dropped and response.output_sample_rate_hz:
                        dropped = dropped * response.output_sample_rate_hz // self.output.sample_rate_hz
                    response.played_samples = max(0, response.played_samples - dropped)

                watched[response] = response.token.on_cancel(on_cancel)

        def unwatch(response: Response) -> None:
            unregister = watched.pop(response, None)
            if unregister is not None:
                unregister()  # type: ignore[operator]

        async for frame in inbox:
            if isinstance(frame, ReplyAudio):
                response = frame.response
                if response.cancelled:
                    unwatch(response)
                    continue
                watch(response)
                await self._play(ctx, frame)
                continue
            if isinstance(frame, ResponseEnd):
                response = frame.response
                if not response.cancelled:
                    with response.token.scope():
                        await self.output.drain()
                if not response.cancelled:
                    ctx.conversation.complete_response(response)
                unwatch(response)
            await outbox.send(frame)
        for response in list(watched):
            unwatch(response)

    async def _play(self, ctx: StageContext, frame: ReplyAudio) -> None:
        response = frame.response
        samples = resample(frame.samples, frame.sample_rate_hz, self.output.sample_rate_hz)
        block = max(1, self.output.sample_rate_hz * self.block_ms // 1000)
        scale = frame.sample_rate_hz / self.output.sample_rate_hz
        with response.token.scope():
            for offset in range(0, len(samples), block):
                if response.cancelled:
                    return
                piece = samples[offset : offset + block]
                started_at = await self.output.write(piece, response.id)
                ctx.tracer.stamp(response.turn_id, FIRST_SAMPLE_PLAYED, started_at)
                response.mark_played(round(len(piece) * scale))
