"""Streaming ASR on faster-whisper, designed around Whisper's fixed cost per pass.

A Whisper pass costs about the same whatever the clip length (it pads to 30 s),
so this stage never queues passes behind each other:

* partial transcripts while the user speaks, at most one pass in flight; a
  newer request replaces an older one that has not started (skip, never lag);
* the final transcript is started at :class:`SpeechPaused` — during the
  end-of-turn silence — and reused at :class:`SpeechStopped` when no speech
  came in between, so the turn's transcript is usually ready at commit time;
* final passes always run, before any partial.

And it makes a pass cheaper than Whisper's fixed 30 s window: by default the
encoder sees only the clip plus ``window_margin_s`` of silence (CTranslate2
accepts a shorter window, like whisper.cpp's ``audio_ctx``), which costs a
fraction of the full window. Without the long tail of padding Whisper can
repeat itself instead of ending: a pass that produces ``max_tokens_per_s``
tokens per second of audio (far above any speaking rate) is taken for such a
loop and redone on the full window. Measured on the 30 bundled recordings: WER
0.181 with a 10 s margin vs 0.197 with the full window (docs/latency.md).
``window_margin_s=None`` restores faster-whisper's full-window transcription.

Every pass is bounded, as it runs on the live path: one greedy decode (no
temperature-fallback retries, each a full decode: one turn's final pass took
10.1 s with them) of at most ``max_tokens_per_s`` tokens per second of audio;
when the full-window pass loops too, the better scored of the two is kept.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import numpy as np

from .. import models
from ..audio import INPUT_SAMPLE_RATE_HZ, AudioFormatError
from ..frames import (
    AudioFrame,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
    TranscriptFinal,
    TranscriptPartial,
    TranscriptPreview,
)
from ..priority import run_model
from ..stage import Inbox, Outbox, Stage, StageContext
from ..tracing import ASR_FINAL, ASR_PREVIEW

#: Tracer counts of a turn: how long its final Whisper pass took, and whether it was a loop fallback.
ASR_FINAL_PASS_MS = "asr_final_pass_ms"
ASR_WINDOW_FALLBACKS = "asr_window_fallbacks"

log = logging.getLogger(__name__)

#: Whisper's window; longer partials only transcribe the most recent part.
MAX_PARTIAL_S = 28
#: Silence after the clip that the encoder sees (see the module docstring).
DEFAULT_WINDOW_MARGIN_S = 10.0


@dataclass
class _FinalJob:
    turn_id: int
    start_sample: int
    end_sample: int
    audio_start_ms: int
    audio_end_ms: int
    audio: np.ndarray
    done: anyio.Event = field(default_factory=anyio.Event)
    text: str | None = None


@dataclass
class _Stats:
    partials_run: int = 0
    partials_skipped: int = 0
    finals_run: int = 0
    early_finals_used: int = 0
    early_finals_wasted: int = 0
    window_fallbacks: int = 0


class WhisperASR(Stage):
    name = "asr"

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        cpu_threads: int = 2,
        beam_size: int = 1,
        language: str | None = "en",
        partial_interval_ms: int | None = 1000,
        tail_ms: int = 100,
        window_margin_s: float | None = DEFAULT_WINDOW_MARGIN_S,
        max_tokens_per_s: float = 5.0,
    ) -> None:
        """``partial_interval_ms=None`` turns partial transcripts off (the final is never skipped).

        ``tail_ms`` of the silence after the last voiced audio is kept in the
        transcribed clip; Whisper is more accurate with a little trailing context.
        """
        self.model_dir = models.whisper_model_dir(model_dir)
        self.cpu_threads = cpu_threads
        self.beam_size = beam_size
        self.language = language
        self.partial_interval_ms = partial_interval_ms
        self.tail_ms = tail_ms
        self.window_margin_s = window_margin_s
        self.max_tokens_per_s = max_tokens_per_s
        self.stats = _Stats()
        self._model = None
        self._prompt: list[int] = []
        self._suppress: list[int] = []
        self._tokenizer = None

    async def setup(self, ctx: StageContext) -> None:
        if self._model is None:
            self._model = await run_model(self._load)
            await run_model(self.transcribe, np.zeros(INPUT_SAMPLE_RATE_HZ // 2, dtype=np.int16))

    def _load(self):  # noqa: ANN202 - faster_whisper types are optional
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        try:
            model = WhisperModel(str(self.model_dir), device="cpu", compute_type="int8", cpu_threads=self.cpu_threads)
        except Exception as error:  # CTranslate2 raises RuntimeError for unreadable models
            raise models.ModelNotFoundError(f"cannot load the ASR model in {self.model_dir}: {error}") from error
        language = self.language if model.model.is_multilingual else None
        self._tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language)
        self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
        self._suppress = list(get_suppressed_tokens(self._tokenizer, [-1]))
        return model

    def transcribe(self, samples: np.ndarray) -> str:
        """One blocking Whisper pass over 16 kHz int16 mono audio (run it in a worker thread)."""
        assert self._model is not None, "call setup() first"
        audio = samples.astype(np.float32) / 32768.0
        duration_s = len(audio) / INPUT_SAMPLE_RATE_HZ
        if self.window_margin_s is None or duration_s + self.window_margin_s > 30.0:
            return self._transcribe_full_window(audio)
        return self._transcribe_fitted_window(audio, duration_s)

    def transcribe_partial(self, samples: np.ndarray) -> str:
        """A partial pass (the user still speaking): :meth:`transcribe`, which a shared model may
        run after the final passes of other conversations (see the server's engines)."""
        return self.transcribe(samples)

    def _transcribe_fitted_window(self, audio: np.ndarray, duration_s: float) -> str:
        import ctranslate2

        model = self._model
        features = model.feature_extractor(audio)
        frames = features.shape[1]
        margin_frames = int(self.window_margin_s * 100)  # 100 mel frames per second
        window = min(3000, math.ceil((frames + margin_frames) / 100) * 100)
        padded = np.zeros((features.shape[0], window), dtype=np.float32)
        padded[:, : min(frames, window)] = features[:, :window]
        encoded = model.model.encode(ctranslate2.StorageView.from_array(padded[None]), to_cpu=False)
        budget = int(6 + self.max_tokens_per_s * duration_s)  # far above any speaking rate
        result = model.model.generate(
            encoded,
            [self._prompt],
            beam_size=self.beam_size,
            max_length=2 * budget + len(self._prompt),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )[0]
        tokens = [token for token in result.sequences_ids[0] if token < self._tokenizer.eot]
        if len(tokens) >= budget:  # repeating itself instead of ending: try the full window, once
            self.stats.window_fallbacks += 1
            text, looped, logprob = self._full_window_pass(audio)
            if not looped or logprob >= result.scores[0]:
                return text
            return self._tokenizer.decode(tokens[:budget]).strip()  # both loop: the better scored
        if result.no_speech_prob > 0.6 and result.scores[0] < -1.0:
            return ""  # Whisper's guess on silence or noise
        return self._tokenizer.decode(tokens).strip()

    def _transcribe_full_window(self, audio: np.ndarray) -> str:
        return self._full_window_pass(audio)[0]

    def _full_window_pass(self, audio: np.ndarray) -> tuple[str, bool, float]:
        """One bounded faster-whisper pass on the full window: (text, whether a 30 s window hit
        its token cap, the mean log probability of its tokens)."""
        window_s = min(30.0, len(audio) / INPUT_SAMPLE_RATE_HZ)
        max_new_tokens = int(6 + self.max_tokens_per_s * window_s)
        segments, _ = self._model.transcribe(
            audio,
            language=self.language,
            beam_size=self.beam_size,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
            temperature=0.0,  # one decode: no fallback retries on the live path
            max_new_tokens=max_new_tokens,
        )
        words = []
        looped = False
        logprobs: list[float] = []
        for segment in segments:
            looped = looped or len(segment.tokens) >= max_new_tokens
            logprobs.append(segment.avg_logprob)
            if segment.no_speech_prob > 0.6 and segment.avg_logprob < -1.0:
                continue  # Whisper's guess on silence or noise
            words.append(segment.text.strip())
        logprob = float(np.mean(logprobs)) if logprobs else float("-inf")
        return " ".join(word for word in words if word), looped, logprob

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        conversation, tracer = ctx.conversation, ctx.tracer
        rate = INPUT_SAMPLE_RATE_HZ
        tail = self.tail_ms * rate // 1000
        keep_idle = rate * 2  # audio kept while nobody speaks (covers the prefix padding)
        buffer = np.zeros(0, dtype=np.int16)
        buffer_start = 0  # stream position of buffer[0]
        turn: SpeechStarted | None = None
        turn_start_sample = 0
        last_partial_end = 0
        early: _FinalJob | None = None
        finals: list[_FinalJob] = []
        partial_request: tuple[int, int, int] | None = None  # (turn id, start, end)
        wake = anyio.Event()

        def clip(start: int, end: int) -> np.ndarray:
            return buffer[max(0, start - buffer_start) : max(0, end - buffer_start)]

        async def worker() -> None:
            nonlocal partial_request, wake
            while True:
                await wake.wait()
                wake = anyio.Event()
                while finals or partial_request:
                    if finals:
                        job = finals.pop(0)
                        began, fallbacks = time.perf_counter(), self.stats.window_fallbacks
                        job.text = await run_model(self.transcribe, job.audio)
                        tracer.count(job.turn_id, ASR_FINAL_PASS_MS, round(1000.0 * (time.perf_counter() - began)))
                        tracer.count(job.turn_id, ASR_WINDOW_FALLBACKS, self.stats.window_fallbacks - fallbacks)
                        self.stats.finals_run += 1
                        job.done.set()
                        continue
                    turn_id, start, end = partial_request  # type: ignore[misc]
                    partial_request = None
                    audio = clip(max(start, end - MAX_PARTIAL_S * rate), end)
                    text = await run_model(self.transcribe_partial, audio)
                    self.stats.partials_run += 1
                    if turn is not None and turn.turn_id == turn_id and text:
                        event = TranscriptPartial(turn_id, text)
                        conversation.transcript_partial(event)
                        await outbox.send(event)

        def request_final(turn_id: int, end_ms: int) -> _FinalJob:
            end = min(end_ms * rate // 1000 + tail, buffer_start + len(buffer))
            audio_start_ms = turn.audio_start_ms if turn else 0
            job = _FinalJob(turn_id, turn_start_sample, end, audio_start_ms, end_ms, clip(turn_start_sample, end))
            finals.append(job)
            wake.set()
            return job

        def drop_unstarted(job: _FinalJob) -> None:
            """A stale early final that has not started: don't spend a pass on it."""
            if job in finals:
                finals.remove(job)
                job.done.set()  # wakes its preview task, which then sees it is stale

        async def preview(job: _FinalJob) -> None:
            """Announce the early final if it is ready while the turn is still open."""
            await job.done.wait()
            if early is job and turn is not None and job.text:
                tracer.stamp(job.turn_id, ASR_PREVIEW, overwrite=True)
                await outbox.send(TranscriptPreview(job.turn_id, job.text, job.audio_end_ms))

        async def finish(job: _FinalJob) -> None:
            await job.done.wait()
            text = job.text or ""
            tracer.stamp(job.turn_id, ASR_FINAL)
            tracer.note(job.turn_id, "user", text)
            event = TranscriptFinal(job.turn_id, text, job.audio_start_ms, job.audio_end_ms)
            conversation.transcript_final(event)
            await outbox.send(event)

        async with anyio.create_task_group() as group:
            group.start_soon(worker)
            async with anyio.create_task_group() as finishers:
                async for frame in inbox:
                    if isinstance(frame, AudioFrame):
                        if frame.sample_rate_hz != rate:
                            raise AudioFormatError(f"ASR input at {frame.sample_rate_hz} Hz; it takes {rate} Hz")
                        heard = frame.samples if frame.asr_samples is None else frame.asr_samples
                        buffer = np.concatenate([buffer, heard]) if buffer.size else heard.copy()
                        if turn is None and len(buffer) > keep_idle:
                            buffer_start += len(buffer) - keep_idle
                            buffer = buffer[-keep_idle:]
                        elif turn is not None and self.partial_interval_ms and early is None:
                            end = buffer_start + len(buffer)
                            if end - last_partial_end >= self.partial_interval_ms * rate // 1000:
                                if partial_request is not None:
                                    self.stats.partials_skipped += 1
                                partial_request = (turn.turn_id, turn_start_sample, end)
                                last_partial_end = end
                                wake.set()
                        continue  # audio stops here: downstream stages need only the events
                    if isinstance(frame, SpeechStarted):
                        turn, early = frame, None
                        turn_start_sample = max(buffer_start, frame.audio_start_ms * rate // 1000)
                        last_partial_end = buffer_start + len(buffer)
                    elif isinstance(frame, SpeechPaused) and turn is not None:
                        if early is not None and early.audio_end_ms != frame.audio_end_ms:
                            self.stats.early_finals_wasted += 1
                            drop_unstarted(early)
                        early = request_final(frame.turn_id, frame.audio_end_ms)
                        partial_request = None
                        finishers.start_soon(preview, early)
                    elif isinstance(frame, SpeechResumed) and early is not None:
                        self.stats.early_finals_wasted += 1
                        drop_unstarted(early)
                        early = None
                    elif isinstance(frame, SpeechStopped) and turn is not None:
                        if early is not None and early.audio_end_ms == frame.audio_end_ms:
                            self.stats.early_finals_used += 1
                            job = early
                        else:
                            if early is not None:
                                self.stats.early_finals_wasted += 1
                            job = request_final(frame.turn_id, frame.audio_end_ms)
                        turn, early, partial_request = None, None, None
                        await outbox.send(frame)
                        finishers.start_soon(finish, job)
                        continue
                    await outbox.send(frame)
            group.cancel_scope.cancel()  # input over and every final sent: stop the idle worker
