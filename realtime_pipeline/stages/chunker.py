"""Turns the LLM's token stream into speakable chunks.

The first chunk of a response goes out at the first clause boundary (after a
few words), so the TTS can start speaking while the LLM is still writing;
later chunks are whole sentences, found by pysbd, grouped up to
``max_chunk_chars`` so the voice keeps a natural flow.
"""

from __future__ import annotations

import re

import pysbd

from ..frames import ResponseEnd, TextChunk, TextDelta
from ..response import Response
from ..stage import Inbox, Outbox, Stage, StageContext, send_unless_cancelled
from ..tracing import FIRST_CHUNK

_CLAUSE_END = re.compile(r"[,;:\u2014](?=\s)|[.!?](?=\s)")
#: Words a spoken phrase naturally starts with: a long first clause is cut before one of them.
_PHRASE_START = frozenset(
    "and but or so because like with for in on at to of from that which who when while where as than".split()
)
_UNSPEAKABLE = re.compile(r"[*_#`~<>|\[\]{}]+")


def speakable(text: str) -> str:
    """Drop markdown and similar symbols that a voice would read out or stumble on."""
    return " ".join(_UNSPEAKABLE.sub(" ", text).split())


class SentenceChunker(Stage):
    name = "chunker"

    def __init__(self, *, first_chunk_min_words: int = 3, first_chunk_max_words: int = 5, max_chunk_chars: int = 250) -> None:
        """The first chunk ends at the first clause boundary after ``first_chunk_min_words``;
        if none has come by ``first_chunk_max_words``, it is cut before a word that starts a
        phrase ("like", "and", "for", ...), or after ``first_chunk_max_words`` words.

        ``first_chunk_max_words`` = 5: once the end of turn commits within ~200–800 ms of
        silence, the first chunk is on the critical path. With 8 it took p50 460 ms of
        generation after the first token (30 natural turns, ``python -m benchmarks.latency``),
        the largest span after the endpoint; each word is ~50 ms of SmolLM2 output here."""
        self.first_chunk_min_words = first_chunk_min_words
        self.first_chunk_max_words = first_chunk_max_words
        self.max_chunk_chars = max_chunk_chars
        self._segmenter = pysbd.Segmenter(language="en", clean=False)

    def split(self, buffer: str, first: bool) -> tuple[list[str], str]:
        """Complete chunks found in ``buffer`` and the rest that must wait for more text."""
        if first:
            for match in _CLAUSE_END.finditer(buffer):
                head = buffer[: match.end()]
                if len(head.split()) >= self.first_chunk_min_words:
                    return [head], buffer[match.end() :]
            return self._cut_long_first(buffer)
        sentences = self._segmenter.segment(buffer)
        if len(sentences) < 2:
            return [], buffer
        complete, rest = sentences[:-1], sentences[-1]
        chunks: list[str] = []
        for sentence in complete:
            if chunks and len(chunks[-1]) + len(sentence) <= self.max_chunk_chars:
                chunks[-1] += sentence
            else:
                chunks.append(sentence)
        return chunks, rest

    def _cut_long_first(self, buffer: str) -> tuple[list[str], str]:
        """No clause boundary yet: once more than ``first_chunk_max_words`` complete words are
        waiting, speak a phrase instead of waiting for the whole clause."""
        words = list(re.finditer(r"\S+(?=\s)", buffer))  # complete words only
        if len(words) <= self.first_chunk_max_words:
            return [], buffer
        cut = words[self.first_chunk_max_words].start()
        for word in reversed(words[self.first_chunk_min_words + 1 : self.first_chunk_max_words + 1]):
            if word.group().lower().strip("\"'") in _PHRASE_START:
                cut = word.start()
                break
        return [buffer[:cut].rstrip()], " " + buffer[cut:]

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        buffers: dict[Response, str] = {}
        counts: dict[Response, int] = {}

        async def emit(response: Response, text: str) -> None:
            text = speakable(text)
            if not text or response.cancelled:
                return
            index = counts.get(response, 0)
            counts[response] = index + 1
            if index == 0:
                ctx.tracer.stamp(response.turn_id, FIRST_CHUNK)
            await send_unless_cancelled(outbox, TextChunk(response, text, index))

        async for frame in inbox:
            if isinstance(frame, TextDelta):
                response = frame.response
                if response.cancelled:
                    buffers.pop(response, None)
                    counts.pop(response, None)
                    continue
                buffer = buffers.get(response, "") + frame.text
                while True:
                    chunks, buffer = self.split(buffer, first=counts.get(response, 0) == 0)
                    for chunk in chunks:
                        await emit(response, chunk)
                    if not chunks or counts.get(response, 0) > 1:
                        break
                buffers[response] = buffer
                continue
            if isinstance(frame, ResponseEnd):
                rest = buffers.pop(frame.response, "")
                if rest.strip():
                    await emit(frame.response, rest)
                counts.pop(frame.response, None)
                await send_unless_cancelled(outbox, frame)
                continue
            await outbox.send(frame)
