"""LLM token streamer on llama-cpp-python."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio

from .. import models
from ..cancellation import CancelToken
from ..frames import ResponseEnd, TextDelta, TranscriptFinal
from ..response import Response
from ..stage import Inbox, Outbox, Stage, StageContext, send_unless_cancelled
from ..tracing import LLM_FIRST_TOKEN

log = logging.getLogger(__name__)


class LlamaLLM(Stage):
    """Answers each final transcript with a streamed reply.

    Generation steps one token per worker-thread call and checks the
    response's token before each, so a barge-in stops it within one token.
    One generation at a time: a llama.cpp context is not thread-safe.
    """

    name = "llm"

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        n_ctx: int = 2048,
        n_threads: int = 2,
        max_tokens: int = 120,
        temperature: float = 0.3,
        top_p: float = 0.9,
        seed: int | None = None,
    ) -> None:
        self.model_path = models.llm_model_file(model_path)
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self._llm: Any = None
        self._lock = threading.Lock()

    async def setup(self, ctx: StageContext) -> None:
        ctx.conversation.has_responder = True
        if self._llm is None:
            self._llm = await anyio.to_thread.run_sync(self._load)
            # llama.cpp's first call costs far more than the next ones: pay it now.
            warmup = [{"role": "system", "content": ctx.conversation.system_prompt}, {"role": "user", "content": "Hi"}]
            await anyio.to_thread.run_sync(lambda: list(self.stream_reply(warmup, CancelToken(), max_tokens=2)))

    def _load(self) -> Any:
        from llama_cpp import Llama

        kwargs: dict[str, Any] = {"n_ctx": self.n_ctx, "n_threads": self.n_threads, "verbose": False}
        if self.seed is not None:
            kwargs["seed"] = self.seed
        try:
            return Llama(model_path=str(self.model_path), **kwargs)
        except Exception as error:  # llama.cpp raises ValueError for unreadable files
            raise models.ModelNotFoundError(f"cannot load the LLM model {self.model_path}: {error}") from error

    def stream_reply(self, messages: list[dict[str, str]], token: CancelToken, *, max_tokens: int | None = None) -> Iterator[str]:
        """Blocking generator of reply text pieces; stops between tokens once ``token`` is cancelled."""
        with self._lock:
            stream = self._llm.create_chat_completion(
                messages,
                stream=True,
                max_tokens=max_tokens or self.max_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
            )
            try:
                for chunk in stream:
                    if token.cancelled:
                        return
                    text = chunk["choices"][0]["delta"].get("content")
                    if text:
                        yield text
            finally:
                stream.close()

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        conversation = ctx.conversation
        async for frame in inbox:
            await outbox.send(frame)
            if not isinstance(frame, TranscriptFinal):
                continue
            text = frame.text.strip()
            if not text:
                conversation.close_turn(frame.turn_id)
                continue
            response = conversation.begin_response(frame.turn_id, text)
            await self.generate(ctx, response, outbox)

    async def generate(self, ctx: StageContext, response: Response, outbox: Outbox) -> None:
        """Stream the reply for ``response`` into ``outbox`` as TextDelta frames, then ResponseEnd."""
        messages = ctx.conversation.messages()  # ends with the user's turn: begin_response added it
        replies = self.stream_reply(messages, response.token)
        try:
            while not response.cancelled:
                piece = await anyio.to_thread.run_sync(next, replies, None)
                if piece is None:
                    break
                if not response.text:
                    ctx.tracer.stamp(response.turn_id, LLM_FIRST_TOKEN)
                response.add_text(piece)
                await send_unless_cancelled(outbox, TextDelta(response, piece))
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(replies.close)
        ctx.tracer.note(response.turn_id, "assistant", response.text)
        await send_unless_cancelled(outbox, ResponseEnd(response))
