"""The models, loaded and warmed up once per server and shared by every session.

Sharing rules: llama.cpp generation is serialised by :class:`LlamaLLM`'s own
lock; a Whisper pass and a Piper synthesis are serialised here too (Piper's
phonemizer, espeak-ng, keeps global state; CTranslate2 would queue the calls
anyway with one worker). Each session gets shallow *views* of the stages
(:meth:`Engines.session_stages`): its own settings and counters, the same
loaded model and lock.
"""

from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..conversation import Conversation
from ..stage import StageContext
from ..stages.asr import WhisperASR
from ..stages.llm import LlamaLLM
from ..stages.tts import PiperTTS
from ..tracing import Tracer

log = logging.getLogger(__name__)

#: Reply audio comes out of the TTS at the Realtime API's pcm16 rate.
OUTPUT_SAMPLE_RATE_HZ = 24_000


class SharedWhisperASR(WhisperASR):
    """WhisperASR whose passes take a lock shared by every view, and whose failures don't kill the session.

    A failed pass yields an empty transcript and is recorded in ``failures``
    (per view), which the session reports as ``transcription.failed``.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._pass_lock = threading.Lock()
        self.failures: list[str] = []

    def transcribe(self, samples: np.ndarray) -> str:
        try:
            return self.transcribe_or_raise(samples)
        except Exception as error:  # reported to the client as transcription.failed
            log.warning("transcription failed: %s: %s", type(error).__name__, error)
            self.failures.append(f"{type(error).__name__}: {error}")
            return ""

    def transcribe_or_raise(self, samples: np.ndarray) -> str:
        with self._pass_lock:
            return super().transcribe(samples)

    def view(self) -> SharedWhisperASR:
        clone = copy.copy(self)
        clone.stats = type(self.stats)()
        clone.failures = []
        return clone


class SharedPiperTTS(PiperTTS):
    """PiperTTS whose synthesis takes a lock shared by every view."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._synth_lock = threading.Lock()

    def synthesize(self, text, token):  # type: ignore[no-untyped-def]
        with self._synth_lock:
            return super().synthesize(text, token)

    def view(self) -> SharedPiperTTS:
        return copy.copy(self)


@dataclass
class Engines:
    asr: SharedWhisperASR
    llm: LlamaLLM
    tts: SharedPiperTTS

    @classmethod
    def create(
        cls,
        *,
        asr_model: str | Path | None = None,
        llm_model: str | Path | None = None,
        voice: str | Path | None = None,
        threads: int = 2,
        seed: int | None = None,
    ) -> Engines:
        """Locate the models (nothing is loaded until :meth:`load`)."""
        return cls(
            asr=SharedWhisperASR(asr_model, cpu_threads=threads),
            llm=LlamaLLM(llm_model, n_threads=threads, seed=seed),
            tts=SharedPiperTTS(voice, output_sample_rate_hz=OUTPUT_SAMPLE_RATE_HZ),
        )

    async def load(self) -> None:
        """Load and warm up every model (a no-op for those already loaded)."""
        context = StageContext(Conversation(), Tracer())
        for stage in (self.asr, self.llm, self.tts):
            await stage.setup(context)

    def llm_view(self, *, temperature: float, max_tokens: int) -> LlamaLLM:
        """The shared LLM with one response's settings (same llama.cpp context and lock)."""
        view = copy.copy(self.llm)
        view.temperature = temperature
        view.max_tokens = max_tokens
        return view
