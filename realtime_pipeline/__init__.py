"""realtime_pipeline: local, real-time voice conversation on a plain CPU.

Stages connected by bounded queues, a cancellation token per response so a
barge-in stops everything at once, and a tracer that accounts for every
millisecond. See docs/architecture.md.
"""

from .assistant import voice_pipeline
from .audio import AudioFormatError, float_to_int16, read_wav, resample, write_wav
from .cancellation import Cancelled, CancelToken
from .conversation import (
    Conversation,
    HistoryEntry,
    ResponseDone,
    ResponseInterrupted,
    ResponsePaused,
    ResponseResumed,
    ResponseStarted,
)
from .interruption import InterruptionSettings
from .frames import (
    AudioFrame,
    Frame,
    ReplyAudio,
    ResponseEnd,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
    TextChunk,
    TextDelta,
    TranscriptFinal,
    TranscriptPartial,
    TranscriptPreview,
)
from .io.device import AudioDeviceError, MicrophoneSource, SpeakerOutput
from .io.outputs import AudioOutput, MemoryOutput, PlayedBlock, WavFileOutput
from .io.sources import MemorySource, PacedEmitter, WavFileSource
from .models import ModelNotFoundError
from .pipeline import Pipeline, StageError
from .response import Response, ResponseStatus
from .stage import Inbox, Outbox, Stage, StageContext, send_unless_cancelled
from .stages.asr import WhisperASR
from .stages.chunker import SentenceChunker
from .failover import FailoverEngine
from .llm_engine import LLMEngine, LLMEngineError
from .responder import Responder
from .stages.llm import LlamaEngine, LlamaLLM
from .stages.openai_llm import OpenAIEngine, OpenAILLM
from .stages.player import Player
from .stages.tts import PiperTTS
from .stages.vad import VADSettings, WebRTCVAD
from .tracing import Tracer

__version__ = "0.1.0"

__all__ = [
    "HistoryEntry", "InterruptionSettings", "ResponsePaused", "ResponseResumed",
    "AudioDeviceError", "AudioFormatError", "AudioFrame", "AudioOutput", "CancelToken", "Cancelled",
    "Conversation", "FailoverEngine", "Frame", "Inbox", "LLMEngine", "LLMEngineError", "LlamaEngine", "LlamaLLM",
    "OpenAIEngine", "OpenAILLM", "Responder", "MemoryOutput", "MemorySource", "MicrophoneSource",
    "ModelNotFoundError", "Outbox", "PacedEmitter", "Pipeline", "PiperTTS", "PlayedBlock", "Player", "ReplyAudio",
    "Response", "ResponseDone", "ResponseEnd", "ResponseInterrupted", "ResponseStarted", "ResponseStatus",
    "SentenceChunker", "SpeakerOutput", "SpeechPaused", "SpeechResumed", "SpeechStarted", "SpeechStopped", "Stage",
    "StageContext", "StageError", "TextChunk", "TextDelta", "Tracer", "TranscriptFinal",
    "TranscriptPartial", "TranscriptPreview", "VADSettings", "WavFileOutput", "WavFileSource", "WebRTCVAD", "WhisperASR",
    "float_to_int16", "read_wav", "resample", "send_unless_cancelled", "voice_pipeline", "write_wav",
]
