"""The text chunker: first chunk at a clause boundary, then whole sentences."""

from __future__ import annotations

import pytest

from realtime_pipeline import Conversation, Pipeline, ResponseEnd, SentenceChunker, Stage, TextChunk, TextDelta
from realtime_pipeline.response import Response
from realtime_pipeline.stages.chunker import speakable


def test_first_chunk_ends_at_the_first_clause_after_enough_words():
    chunker = SentenceChunker(first_chunk_min_words=3)
    assert chunker.split("Well, the capital of France", first=True) == ([], "Well, the capital of France")
    chunks, rest = chunker.split("Well, the capital of France is Paris, a city of", first=True)
    assert chunks == ["Well, the capital of France is Paris,"]
    assert rest == " a city of"


def test_a_long_first_clause_is_cut_before_a_phrase_word():
    chunker = SentenceChunker(first_chunk_min_words=3, first_chunk_max_words=8)
    text = "Le Grand Paris is famous for its iconic landmarks like Notre Dame Cathedral and"
    chunks, rest = chunker.split(text, first=True)
    assert chunks == ["Le Grand Paris is famous"]  # the last phrase word within the first 8 words
    assert rest == " for its iconic landmarks like Notre Dame Cathedral and"
    # no phrase word: cut after the eighth word; too few words yet: wait
    chunks, rest = chunker.split("one two three four five six seven eight nine ten", first=True)
    assert chunks == ["one two three four five six seven eight"] and rest == " nine ten"
    assert chunker.split("one two three four five six seven eight", first=True) == ([], "one two three four five six seven eight")


def test_later_chunks_are_whole_sentences_and_abbreviations_do_not_split():
    chunker = SentenceChunker()
    chunks, rest = chunker.split(" Dr. Smith lives at 3.5 Main St. in Paris. He likes it. And", first=False)
    assert "".join(chunks).strip() == "Dr. Smith lives at 3.5 Main St. in Paris. He likes it."
    assert rest == "And"


def test_speakable_drops_markdown():
    assert speakable("**Paris** is `great` # really") == "Paris is great really"


class Deltas(Stage):
    name = "deltas"

    def __init__(self, response: Response, pieces: list[str]):
        self.response = response
        self.pieces = pieces

    async def run(self, ctx, inbox, outbox):
        for piece in self.pieces:
            await outbox.send(TextDelta(self.response, piece))
        await outbox.send(ResponseEnd(self.response))


class Chunks(Stage):
    name = "chunks"

    def __init__(self):
        self.frames = []

    async def run(self, ctx, inbox, outbox):
        async for frame in inbox:
            self.frames.append(frame)


@pytest.mark.anyio
async def test_token_stream_becomes_speakable_chunks_in_order():
    text = "Sure, the capital of France is Paris. It is known for the Eiffel Tower. Also for food and art"
    pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
    response = Response(1, "question")
    sink = Chunks()
    await Pipeline([Deltas(response, pieces), SentenceChunker(), sink], conversation=Conversation()).run()
    chunks = [f for f in sink.frames if isinstance(f, TextChunk)]
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[0].text == "Sure, the capital of France"  # no clause end after 3 words: cut after 5
    assert " ".join(c.text for c in chunks) == text
    assert isinstance(sink.frames[-1], ResponseEnd)


@pytest.mark.anyio
async def test_cancelled_response_text_is_dropped():
    response = Response(1, "question")
    response.cancel("turn_detected")
    sink = Chunks()
    await Pipeline([Deltas(response, ["Hello, there you are. ", "More."]), SentenceChunker(), sink]).run()
    assert sink.frames == []
