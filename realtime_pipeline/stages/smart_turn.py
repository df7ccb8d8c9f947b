"""The audio end-of-turn model: Smart Turn v3.2 (Pipecat's; BSD-2-Clause) on onnxruntime.

Smart Turn is a Whisper-tiny encoder with a classification head (8 MB int8
ONNX). It hears intonation and rhythm as well as words, so it tells "what is
the capital of France?" from "and so, my fellow Americans, ask not…" within
the first few hundred milliseconds of silence. Its input contract (from
pipecat's ``local_smart_turn_v3.py``): 16 kHz mono, the last 8 s of the turn
zero-padded at the front, waveform normalized to zero mean and unit variance,
Whisper's 80-bin log-mel features (here faster-whisper's extractor, which
matches pipecat's to 2e-6); the output is the probability that the turn is
complete.

The :class:`SmartTurn` stage keeps the current turn's audio and scores each
pause the VAD reports (:class:`~realtime_pipeline.frames.SpeechPaused`); the
score goes to the VAD's end-of-turn state machine as a
:class:`~realtime_pipeline.turn_taking.TurnScore` event. At most one
prediction is in flight; a newer pause replaces an older one that has not
started, and a pause that speech has already ended is never scored.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import anyio
import numpy as np

from .. import models
from ..audio import INPUT_SAMPLE_RATE_HZ, AudioFormatError
from ..frames import AudioFrame, SpeechPaused, SpeechResumed, SpeechStarted, SpeechStopped
from ..priority import run_model
from ..stage import Inbox, Outbox, Stage, StageContext
from ..turn_taking import AUDIO_MODEL, TurnScore

log = logging.getLogger(__name__)

#: The model hears at most this much of the turn (the end of it).
WINDOW_S = 8


class SmartTurnModel:
    """P(turn complete) from a turn's 16 kHz int16 audio. ``predict`` is blocking and thread-safe.

    ``threads``: onnxruntime intra-op threads. One thread costs 40–60 ms per call on this
    2-core machine (docs/latency.md) and leaves the other core to Whisper's final pass,
    which runs at the same moment.
    """

    def __init__(self, model_path: str | Path | None = None, *, threads: int = 1) -> None:
        self.model_path = models.smart_turn_model_file(model_path)
        self.threads = threads
        self._session = None
        self._features = None
        self._lock = threading.Lock()

    def load(self) -> None:
        if self._session is not None:
            return
        import onnxruntime
        from faster_whisper.feature_extractor import FeatureExtractor

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        try:
            session = onnxruntime.InferenceSession(str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own errors for unreadable files
            raise models.ModelNotFoundError(f"cannot load the Smart Turn model {self.model_path}: {error}") from error
        inputs = {i.name: i.shape for i in session.get_inputs()}
        if "input_features" not in inputs:
            raise models.ModelNotFoundError(f"{self.model_path} is not a Smart Turn v3 model (inputs {sorted(inputs)})")
        self._features = FeatureExtractor(feature_size=80, chunk_length=WINDOW_S)
        self._session = session

    def predict(self, samples: np.ndarray) -> float:
        """The probability that the speech in ``samples`` (16 kHz int16 or float) is a complete turn."""
        if self._session is None:
            self.load()
        window = WINDOW_S * INPUT_SAMPLE_RATE_HZ
        audio = samples[-window:].astype(np.float32)
        if samples.dtype == np.int16:
            audio /= 32768.0
        audio = np.pad(audio, (window - len(audio), 0))
        audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
        features = self._features(audio, padding=0)[:, : WINDOW_S * 100]
        with self._lock:  # one run at a time: a second would only steal the other core
            output = self._session.run(None, {"input_features": features[None].astype(np.float32)})[0]
        return float(np.clip(np.asarray(output).reshape(-1)[0], 0.0, 1.0))


class SmartTurn(Stage):
    """Scores every pause of the user's speech with :class:`SmartTurnModel`; forwards all frames."""

    name = "turn"

    def __init__(self, model: SmartTurnModel | str | Path | None = None, *, threads: int = 1) -> None:
        self.model = model if isinstance(model, SmartTurnModel) else SmartTurnModel(model, threads=threads)
        self.calls = 0
        self.cost_ms: list[float] = []

    async def setup(self, ctx: StageContext) -> None:
        await run_model(self.model.load)
        await run_model(self.model.predict, np.zeros(INPUT_SAMPLE_RATE_HZ, dtype=np.int16))

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        conversation = ctx.conversation
        rate = INPUT_SAMPLE_RATE_HZ
        keep = (WINDOW_S + 1) * rate
        buffer = np.zeros(0, dtype=np.int16)
        buffer_start = 0
        turn_start = 0
        live: tuple[int, int] | None = None  # (turn id, pause end ms) that a score is still wanted for
        request: tuple[int, int, np.ndarray] | None = None
        wake = anyio.Event()

        async def worker() -> None:
            nonlocal request, wake
            while True:
                await wake.wait()
                wake = anyio.Event()
                while request is not None:
                    turn_id, end_ms, audio = request
                    request = None
                    began = time.perf_counter()
                    probability = await run_model(self.model.predict, audio)
                    cost_ms = 1000.0 * (time.perf_counter() - began)
                    self.calls += 1
                    self.cost_ms.append(cost_ms)
                    if live == (turn_id, end_ms):
                        conversation.emit(TurnScore(turn_id, end_ms, AUDIO_MODEL, probability, cost_ms))

        async with anyio.create_task_group() as group:
            group.start_soon(worker)
            async for frame in inbox:
                await outbox.send(frame)
                if isinstance(frame, AudioFrame):
                    if frame.sample_rate_hz != rate:
                        raise AudioFormatError(f"turn model input at {frame.sample_rate_hz} Hz; it takes {rate} Hz")
                    if buffer.size == 0:
                        buffer_start = frame.start_sample
                    buffer = np.concatenate([buffer, frame.samples]) if buffer.size else frame.samples.copy()
                    if len(buffer) > keep:
                        buffer_start += len(buffer) - keep
                        buffer = buffer[-keep:]
                elif isinstance(frame, SpeechStarted):
                    turn_start = frame.audio_start_ms * rate // 1000
                    live, request = None, None
                elif isinstance(frame, SpeechPaused):
                    audio = buffer[max(0, turn_start - buffer_start):]
                    live = (frame.turn_id, frame.audio_end_ms)
                    request = (frame.turn_id, frame.audio_end_ms, audio)
                    wake.set()
                elif isinstance(frame, (SpeechResumed, SpeechStopped)):
                    live, request = None, None
            group.cancel_scope.cancel()
