"""Shared fixtures: the bundled real speech, and the real models loaded once per test session."""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import pytest

from realtime_pipeline import Conversation, LlamaLLM, PiperTTS, StageContext, Tracer, WhisperASR

SPEECH_DIR = Path(__file__).parent / "data" / "speech"
EXAMPLE_AUDIO_DIR = Path(__file__).parent.parent / "examples" / "audio"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def load_transcripts(name: str = "transcripts_normalized.tsv") -> dict[str, str]:
    lines = (SPEECH_DIR / name).read_text(encoding="utf-8").splitlines()
    return dict(line.split("\t", 1) for line in lines if line.strip())


_NUMBER_WORDS = "zero one two three four five six seven eight nine ten".split()


def normalize_text(text: str) -> str:
    """Lower case, no punctuation, digits 0-10 as words (Whisper writes "10", references "ten")."""
    text = re.sub(r"[^a-z0-9' ]", " ", text.lower())
    words = [_NUMBER_WORDS[int(word)] if word.isdigit() and int(word) <= 10 else word for word in text.split()]
    return " ".join(words)


def _setup(stage: object) -> None:
    context = StageContext(Conversation(), Tracer())
    anyio.run(stage.setup, context)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def asr() -> WhisperASR:
    stage = WhisperASR()
    _setup(stage)
    return stage


@pytest.fixture(scope="session")
def llm() -> LlamaLLM:
    stage = LlamaLLM(seed=7, max_tokens=60, temperature=0.0)
    _setup(stage)
    return stage


@pytest.fixture(scope="session")
def tts() -> PiperTTS:
    stage = PiperTTS()
    _setup(stage)
    return stage


@pytest.fixture(scope="session")
def engines():
    """The Realtime server's shared models, loaded once for every server test module."""
    from realtime_pipeline.server import Engines

    loaded = Engines.create(seed=7)
    anyio.run(loaded.load)
    return loaded
