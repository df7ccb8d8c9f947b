"""The standard voice pipeline: source → VAD → ASR → LLM → chunker → TTS → player."""

from __future__ import annotations

from .conversation import Conversation
from .io.outputs import AudioOutput
from .pipeline import DEFAULT_QUEUE_CAPACITY, Pipeline
from .stage import Stage
from .stages.asr import WhisperASR
from .stages.chunker import SentenceChunker
from .stages.llm import LlamaLLM
from .stages.player import Player
from .stages.tts import PiperTTS
from .stages.vad import VADSettings, WebRTCVAD
from .tracing import Tracer


def voice_pipeline(
    source: Stage,
    output: AudioOutput,
    *,
    vad: WebRTCVAD | VADSettings | None = None,
    asr: WhisperASR | None = None,
    llm: LlamaLLM | None = None,
    chunker: SentenceChunker | None = None,
    tts: PiperTTS | None = None,
    conversation: Conversation | None = None,
    tracer: Tracer | None = None,
    queue_capacity: int = DEFAULT_QUEUE_CAPACITY,
) -> Pipeline:
    """Wire a spoken conversation; every stage defaults to its embedded model.

    Pass your own stage instances to change models or settings (they load in
    :meth:`Pipeline.start`, so instances can be shared by pipelines run one
    after the other).
    """
    stages: list[Stage] = [
        source,
        vad if isinstance(vad, WebRTCVAD) else WebRTCVAD(vad),
        asr or WhisperASR(),
        llm or LlamaLLM(),
        chunker or SentenceChunker(),
        tts or PiperTTS(output_sample_rate_hz=output.sample_rate_hz),
        Player(output),
    ]
    return Pipeline(stages, conversation=conversation, tracer=tracer, queue_capacity=queue_capacity)
