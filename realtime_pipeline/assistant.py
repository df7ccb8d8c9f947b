"""The standard voice pipeline: source → VAD → ASR → LLM → chunker → TTS → player."""

from __future__ import annotations

from .conversation import Conversation
from .echo_cancel import EchoCancellation, EchoGate, echo_stage
from .io.outputs import AudioOutput
from .pipeline import DEFAULT_QUEUE_CAPACITY, Pipeline
from .stage import Stage
from .stages.asr import WhisperASR
from .stages.chunker import SentenceChunker
from .responder import Responder
from .stages.llm import LlamaLLM
from .stages.player import Player
from .stages.smart_turn import SmartTurn
from .stages.tts import PiperTTS
from .stages.vad import VADSettings, WebRTCVAD
from .tracing import Tracer
from .turn_taking import AUDIO_MODEL, TEXT_MODEL


#: What ``voice_pipeline(echo=...)`` accepts.
ECHO_MODES = ("auto", "aec", "double-talk", "gate", "off")


def voice_pipeline(
    source: Stage,
    output: AudioOutput,
    *,
    vad: WebRTCVAD | VADSettings | None = None,
    turn: SmartTurn | None = None,
    asr: Stage | None = None,
    llm: Responder | None = None,
    chunker: Stage | None = None,
    tts: Stage | None = None,
    conversation: Conversation | None = None,
    tracer: Tracer | None = None,
    queue_capacity: int = DEFAULT_QUEUE_CAPACITY,
    echo: str = "auto",
    echo_path_fit: bool = False,
    echo_calibration: bool = True,
) -> Pipeline:
    """Wire a spoken conversation; every stage defaults to its embedded model.

    Pass your own stage instances to change models or settings (``llm``: any
    :class:`~.responder.Responder`, e.g. ``OpenAILLM(base_url=...)``; they load in
    :meth:`Pipeline.start`, so instances can be shared by pipelines run one
    after the other). The end of each turn is decided by the semantic detector
    (``VADSettings().turn_taking``, with the Smart Turn audio model ``turn``);
    ``VADSettings(silence_duration_ms=500)`` selects a fixed silence instead.

    A source that hears the output (``source.hears_output``: the microphone, the echo
    room) gets an echo stage after it (:mod:`.echo_cancel`): ``echo="auto"`` runs AEC3 with
    the double-talk path when its package is installed, else the echo gate fallback;
    ``"double-talk"`` requires AEC3, ``"aec"`` is AEC3 alone (slower barge-in: docs/echo.md),
    ``"gate"`` is the fallback, ``"off"`` nothing. ``echo_path_fit`` adds least-squares fits of
    the echo path to the double-talk path (opt-in: docs/echo.md); ``echo_calibration`` (on by
    default) has the double-talk path play a short, soft start sound to learn the room before
    the first reply (:mod:`.echo_calibration`).
    """
    if echo not in ECHO_MODES:
        raise ValueError(f"echo must be one of {', '.join(map(repr, ECHO_MODES))}, got {echo!r}")
    vad_stage = vad if isinstance(vad, WebRTCVAD) else WebRTCVAD(vad)
    sources = vad_stage.settings.turn_taking.sources
    stages: list[Stage] = [source]
    if getattr(source, "hears_output", False) and echo != "off":
        stages.append(EchoCancellation(output, double_talk=False) if echo == "aec"
                      else EchoCancellation(output, echo_path_fit=echo_path_fit, calibrate=echo_calibration)
                      if echo == "double-talk" else EchoGate(output) if echo == "gate"
                      else echo_stage(output, echo_path_fit=echo_path_fit, calibrate=echo_calibration))
    stages.append(vad_stage)
    if AUDIO_MODEL in sources:
        stages.append(turn or SmartTurn())
    llm = llm or LlamaLLM()
    if TEXT_MODEL not in sources:  # a fixed silence: nobody reads the text score, don't compute it
        llm.score_end_of_turn = False
    stages += [
        asr or WhisperASR(),
        llm,
        chunker or SentenceChunker(),
        tts or PiperTTS(output_sample_rate_hz=output.sample_rate_hz),
        Player(output),
    ]
    return Pipeline(stages, conversation=conversation, tracer=tracer, queue_capacity=queue_capacity)
