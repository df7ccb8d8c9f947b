"""What the benchmark measures besides the tracer: model compute time (RTF), CPU, memory, WER."""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from realtime_pipeline.audio import INPUT_SAMPLE_RATE_HZ
from realtime_pipeline.stages.asr import WhisperASR
from realtime_pipeline.stages.llm import LlamaLLM
from realtime_pipeline.stages.smart_turn import SmartTurn
from realtime_pipeline.stages.tts import PiperTTS

from .turns import normalize_text


@dataclass(frozen=True)
class Models:
    """The loaded stage objects, shared by the streaming run, the baseline and the barge-in run."""

    asr: WhisperASR
    llm: LlamaLLM
    tts: PiperTTS
    #: The audio end-of-turn model's stage (None with a fixed-silence end of turn).
    turn: SmartTurn | None = None


class ModelTimer:
    """Times every model call of the three stage objects, by wrapping their methods on the instances.

    The stages call ``self.transcribe`` / ``self.stream_reply`` / ``self.synthesize``,
    so instance attributes shadowing them see every pass; :meth:`remove` restores them.
    """

    def __init__(self, models: Models) -> None:
        self.models = models
        self._lock = threading.Lock()
        self.asr_s = self.asr_audio_s = 0.0
        self.asr_passes = 0
        self.llm_s = 0.0
        self.llm_pieces = 0
        self.tts_s = self.tts_audio_s = 0.0
        self.tts_calls = 0
        asr, llm, tts = models.asr, models.llm.engine, models.tts
        transcribe, stream_reply, synthesize = asr.transcribe, llm.stream_reply, tts.synthesize

        def timed_transcribe(samples: np.ndarray) -> str:
            start = time.perf_counter()
            try:
                return transcribe(samples)
            finally:
                with self._lock:
                    self.asr_s += time.perf_counter() - start
                    self.asr_audio_s += len(samples) / INPUT_SAMPLE_RATE_HZ
                    self.asr_passes += 1

        def timed_stream_reply(*args: Any, **kwargs: Any) -> Iterator[str]:
            pieces = stream_reply(*args, **kwargs)
            try:
                while True:
                    start = time.perf_counter()
                    try:
                        piece = next(pieces)
                    except StopIteration:
                        return
                    finally:
                        with self._lock:
                            self.llm_s += time.perf_counter() - start
                    with self._lock:
                        self.llm_pieces += 1
                    yield piece
            finally:
                pieces.close()

        def timed_synthesize(text: str, token: Any) -> np.ndarray:
            start = time.perf_counter()
            audio = synthesize(text, token)
            with self._lock:
                self.tts_s += time.perf_counter() - start
                self.tts_audio_s += len(audio) / tts.output_sample_rate_hz
                self.tts_calls += 1
            return audio

        asr.transcribe = timed_transcribe  # type: ignore[method-assign]
        llm.stream_reply = timed_stream_reply  # type: ignore[method-assign]
        tts.synthesize = timed_synthesize  # type: ignore[method-assign]

    def remove(self) -> None:
        for stage, name in ((self.models.asr, "transcribe"), (self.models.llm.engine, "stream_reply"), (self.models.tts, "synthesize")):
            stage.__dict__.pop(name, None)

    def report(self) -> dict[str, Any]:
        """Real-time factors (compute seconds per second of audio; below 1 keeps up).

        The LLM's is per second of the speech its replies became (the TTS audio).
        ``llm_pieces_per_s``: text pieces the reply stream yielded per second of generation
        (a piece is about a token; tokens without text are not counted).
        """

        def ratio(a: float, b: float) -> float | None:
            return a / b if b > 0 else None

        return {
            "asr": ratio(self.asr_s, self.asr_audio_s),
            "llm": ratio(self.llm_s, self.tts_audio_s),
            "tts": ratio(self.tts_s, self.tts_audio_s),
            "asr_passes": self.asr_passes,
            "asr_s": self.asr_s,
            "llm_s": self.llm_s,
            "llm_pieces_per_s": ratio(self.llm_pieces, self.llm_s),
            "tts_s": self.tts_s,
            "tts_audio_s": self.tts_audio_s,
        }


@dataclass(frozen=True)
class Usage:
    """Process CPU time (all threads) and wall time over one stretch of the run."""

    wall_s: float
    cpu_s: float

    @property
    def cpu_s_per_min(self) -> float:
        return 60.0 * self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


class UsageMeter:
    def __init__(self) -> None:
        self._wall = time.monotonic()
        self._cpu = time.process_time()

    def stop(self) -> Usage:
        return Usage(time.monotonic() - self._wall, time.process_time() - self._cpu)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if os.uname().sysname == "Darwin" else peak / 1024.0


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float | None:
    """Corpus WER (jiwer) after :func:`normalize_text` on both sides; None without any reference words."""
    import jiwer

    pairs = [(normalize_text(r), normalize_text(h)) for r, h in zip(references, hypotheses, strict=True)]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        return None
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))
