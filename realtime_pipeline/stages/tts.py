"""Chunked TTS on piper-tts, at a consistent loudness."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import models
from ..audio import resample, speech_level_dbfs, trim_leading_silence
from ..cancellation import CancelToken
from ..frames import ReplyAudio, TextChunk
from ..priority import run_model
from ..stage import Inbox, Outbox, Stage, StageContext, send_unless_cancelled
from ..tracing import TTS_FIRST_AUDIO


class PiperTTS(Stage):
    """Synthesizes each text chunk as soon as it arrives and streams its audio on.

    Loudness: Piper's own normalisation scales each chunk to full peak, so
    loudness jumps between chunks. Here every chunk is scaled to the same
    active speech level (``target_dbfs``; pauses don't count), limited so no
    peak clips.
    """

    name = "tts"

    def __init__(
        self,
        voice_path: str | Path | None = None,
        *,
        output_sample_rate_hz: int | None = None,
        target_dbfs: float = -20.0,
        length_scale: float | None = None,
        threads: int | None = None,
    ) -> None:
        """``threads``: onnxruntime threads for synthesis (default: one per core)."""
        self.voice_path, self.config_path = models.voice_model_file(voice_path)
        self.voice_sample_rate_hz = models.voice_sample_rate_hz(self.config_path)
        self.requested_output_rate_hz = output_sample_rate_hz
        self.target_dbfs = target_dbfs
        self.length_scale = length_scale
        self.threads = threads
        self._voice: Any = None

    @property
    def output_sample_rate_hz(self) -> int:
        return self.requested_output_rate_hz or self.voice_sample_rate_hz

    async def setup(self, ctx: StageContext) -> None:
        if self._voice is None:
            self._voice = await run_model(self._load)
            await run_model(self.synthesize, "Hello.", CancelToken())

    def _load(self) -> Any:
        from piper import PiperVoice

        try:
            voice = PiperVoice.load(str(self.voice_path), config_path=str(self.config_path))
            if self.threads:
                import onnxruntime

                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = self.threads
                voice.session = onnxruntime.InferenceSession(
                    str(self.voice_path), sess_options=options, providers=["CPUExecutionProvider"]
                )
            return voice
        except Exception as error:  # onnxruntime raises its own types for broken files
            raise models.ModelNotFoundError(f"cannot load the Piper voice {self.voice_path}: {error}") from error

    def synthesize(self, text: str, token: CancelToken) -> np.ndarray:
        """Blocking: ``text`` to int16 audio at the output rate; stops between sentences when cancelled."""
        from piper import SynthesisConfig

        config = SynthesisConfig(normalize_audio=False, length_scale=self.length_scale)
        pieces = []
        for chunk in self._voice.synthesize(text, config):
            if token.cancelled:
                return np.zeros(0, dtype=np.int16)
            pieces.append(chunk.audio_float_array.astype(np.float32))
        if not pieces:
            return np.zeros(0, dtype=np.int16)
        audio = self.level(np.concatenate(pieces))
        audio = resample(audio, self.voice_sample_rate_hz, self.output_sample_rate_hz)
        return (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)

    def level(self, audio: np.ndarray) -> np.ndarray:
        """Scale float audio so its active speech level is ``target_dbfs``, never past a 0.98 peak."""
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        if peak <= 1e-6:
            return audio
        level = speech_level_dbfs(audio, self.voice_sample_rate_hz)
        gain = 10.0 ** ((self.target_dbfs - level) / 20.0)
        return audio * min(gain, 0.98 / peak)

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        rate = self.output_sample_rate_hz
        async for frame in inbox:
            if not isinstance(frame, TextChunk):
                await send_unless_cancelled(outbox, frame)
                continue
            response = frame.response
            if response.cancelled:
                continue
            samples = await run_model(self.synthesize, frame.text, response.token)
            if frame.index == 0:  # the reply's first sound plays at once (the voice's lead-in is latency)
                samples = trim_leading_silence(samples, rate)
            if response.cancelled or samples.size == 0:
                continue
            response.add_chunk(frame.text, len(samples), rate)
            ctx.tracer.stamp(response.turn_id, TTS_FIRST_AUDIO)
            await send_unless_cancelled(outbox, ReplyAudio(response, samples, rate, frame.index, frame.text))

