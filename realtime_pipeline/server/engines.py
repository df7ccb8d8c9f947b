"""The models, loaded and warmed up once per server and shared by every session.

Sharing rules: one call at a time per model (a llama.cpp context is not thread-safe;
Piper's phonemizer, espeak-ng, keeps global state; CTranslate2 would queue the calls
anyway with one worker), under a :class:`PriorityLock` per model, so what a user is
waiting for goes first: the final transcript of a committed turn, then the first
clause of a reply (its generation and its first synthesis), then later clauses, and
partial transcripts of someone still speaking last. Long audio is transcribed in
slices (:data:`ASR_SLICE_S`), each taking the lock anew, so one session's long
recording lets the others' turns through. Each session gets shallow *views* of the
stages: its own settings and counters, the same loaded model and lock.
"""

from __future__ import annotations

import contextvars
import copy
import enum
import functools
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..audio import INPUT_SAMPLE_RATE_HZ
from ..conversation import Conversation
from ..stage import StageContext
from ..stages.asr import WhisperASR
from ..llm_engine import LLMEngine
from ..stages.llm import LlamaEngine
from ..stages.smart_turn import SmartTurn, SmartTurnModel
from ..stages.tts import PiperTTS
from ..tracing import Tracer
from .limits import BoundedCache

#: Compiled argument grammars kept (each distinct tool schema a client sends adds one or two).
MAX_GRAMMARS = 256
#: The context assumed for an engine that does not say (a remote server): the server's input limits.
DEFAULT_CONTEXT_TOKENS = 8192
#: Texts up to this many characters have their token count cached (longer ones are rare and big).
TOKEN_CACHE_MAX_CHARS = 8192

log = logging.getLogger(__name__)

#: Reply audio comes out of the TTS at the Realtime API's pcm16 rate.
OUTPUT_SAMPLE_RATE_HZ = 24_000
#: Longest audio one Whisper pass takes while others wait (a pass takes ~0.15 s per second of
#: audio on 2 cores: an 8 s slice holds the model ~1 s, where 218 s in one call held it 38.6 s).
ASR_SLICE_S = 8.0
#: A slice ends at the quietest 20 ms frame of its last seconds (not inside a word).
ASR_SLICE_SEARCH_S = 3.0
#: The longest a slice of a long transcription waits for other sessions' first audio.
URGENT_YIELD_MAX_S = 5.0


class Priority(enum.IntEnum):
    """Who goes first on a shared model (lower first; first come, first served within one)."""

    FINAL_TRANSCRIPT = 0  # a committed turn: its reply waits on it
    FIRST_CLAUSE = 1  # a reply's generation and its first synthesis: the first audio waits on it
    NORMAL = 2
    LATER_CLAUSE = 3  # the rest of a reply: it plays after audio that is already queued
    PARTIAL_TRANSCRIPT = 4  # a user still speaking: only barge-in confirmation waits on it


#: The priority of the model calls made in this context (worker threads inherit it from anyio).
current_priority: contextvars.ContextVar[Priority] = contextvars.ContextVar("model_priority", default=Priority.NORMAL)


@contextmanager
def priority(level: Priority) -> Iterator[None]:
    token = current_priority.set(level)
    try:
        yield
    finally:
        current_priority.reset(token)


#: How much later a call of each priority may arrive and still go first: a waiter's turn comes by
#: arrival time plus this delay. A fixed order (lower always first) starved the lowest: a session's
#: partial pass waited behind all 8 s slices of another session's 30 s item (5.5 s), and its final
#: pass, queued behind that partial in the session's ASR worker, waited too. With a delay, a
#: partial waits at most ~1 s plus one call.
PRIORITY_DELAY_S = {
    Priority.FINAL_TRANSCRIPT: 0.0,
    Priority.FIRST_CLAUSE: 0.25,
    Priority.NORMAL: 0.5,
    Priority.LATER_CLAUSE: 0.75,
    Priority.PARTIAL_TRANSCRIPT: 1.0,
}


class PriorityLock:
    """A lock for a shared model whose waiters are served by :class:`Priority`: earliest
    ``arrival + PRIORITY_DELAY_S[priority]`` first (a deadline; ties in arrival order).

    Used as a plain lock (``with lock:``), it takes the caller's :data:`current_priority`, so the
    library's stages need not know about it. Not reentrant.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._held = False
        self._waiting: list[tuple[float, int]] = []
        self._arrivals = itertools.count()
        self.acquired_by_priority: dict[Priority, int] = dict.fromkeys(Priority, 0)

    def acquire(self, level: Priority | None = None) -> bool:
        level = current_priority.get() if level is None else Priority(level)
        entry = (time.monotonic() + PRIORITY_DELAY_S[level], next(self._arrivals))
        with self._condition:
            heapq.heappush(self._waiting, entry)
            while self._held or self._waiting[0] != entry:
                self._condition.wait()
            heapq.heappop(self._waiting)
            self._held = True
            self.acquired_by_priority[level] += 1
        return True

    def release(self) -> None:
        with self._condition:
            self._held = False
            self._condition.notify_all()

    def locked(self) -> bool:
        return self._held

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class Urgency:
    """Sessions waiting for their reply's first audio (their user stopped speaking, or they
    asked for a response), which later slices of a long transcription yield to.

    The models are separate locks but share 2 cores: a Whisper slice of someone's long recording
    slows another session's reply generation and synthesis too (+6 s to its first audio while a
    30 s item was transcribed). A mark expires after ``expiry_s``, so a turn that never gets
    an answer cannot hold background work back for long.
    """

    def __init__(self, expiry_s: float = 5.0) -> None:
        self.expiry_s = expiry_s
        self._since: dict[str, float] = {}
        self._condition = threading.Condition()

    def begin(self, key: str) -> None:
        with self._condition:
            self._since.setdefault(key, time.monotonic())

    def end(self, key: str) -> None:
        with self._condition:
            if self._since.pop(key, None) is not None:
                self._condition.notify_all()

    def wait_clear(self, exclude: str | None, timeout_s: float) -> None:
        """Block until no other session is waiting for its first audio (at most ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        with self._condition:
            while True:
                now = time.monotonic()
                pending = any(key != exclude and now - since < self.expiry_s for key, since in self._since.items())
                if not pending or now >= deadline:
                    return
                self._condition.wait(min(0.05, deadline - now))


def slice_points(samples: np.ndarray, rate_hz: int, slice_s: float = ASR_SLICE_S, search_s: float = ASR_SLICE_SEARCH_S) -> list[int]:
    """Where to cut long audio into passes of at most ``slice_s``: at the quietest 20 ms frame
    of each slice's last ``search_s`` (a pause between words, where there is one)."""
    frame = rate_hz // 50
    longest, search = int(slice_s * rate_hz), int(search_s * rate_hz)
    cuts, start = [], 0
    while len(samples) - start > longest:
        window = samples[start + longest - search : start + longest].astype(np.float32)
        frames = len(window) // frame
        energy = (window[: frames * frame].reshape(frames, frame) ** 2).mean(axis=1)
        cut = start + longest - search + int(np.argmin(energy)) * frame + frame // 2
        cuts.append(cut)
        start = cut
    return cuts


class SharedWhisperASR(WhisperASR):
    """WhisperASR whose passes take a lock shared by every view, and whose failures don't kill the session.

    A failed pass yields an empty transcript and is recorded in ``failures``
    (per view), which the session reports as ``transcription.failed``.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._pass_lock = PriorityLock()
        self.failures: list[str] = []
        self.urgency = Urgency()
        self.session_key: str | None = None  # the view's session (its own urgency does not hold it back)
        #: Whether the view's session can use a partial transcript now. In the server a partial only
        #: confirms a barge-in (transcription deltas come with the final): with no response to
        #: interrupt it is skipped, leaving the shared Whisper to the sessions that need it.
        self.partials_wanted: Callable[[], bool] | None = None

    def transcribe(self, samples: np.ndarray) -> str:
        try:
            return self.transcribe_or_raise(samples)
        except Exception as error:  # reported to the client as transcription.failed
            log.warning("transcription failed: %s: %s", type(error).__name__, error)
            self.failures.append(f"{type(error).__name__}: {error}")
            return ""

    def transcribe_partial(self, samples: np.ndarray) -> str:
        """A partial pass, only when its session wants one (:attr:`partials_wanted`)."""
        if self.partials_wanted is not None and not self.partials_wanted():
            return ""
        with priority(Priority.PARTIAL_TRANSCRIPT):
            return self.transcribe(samples)

    def transcribe_or_raise(self, samples: np.ndarray) -> str:
        """A final pass (a partial if called from :meth:`transcribe_partial`), in slices of at
        most :data:`ASR_SLICE_S`, each one a separate turn on the shared model."""
        level = current_priority.get()
        level = level if level is Priority.PARTIAL_TRANSCRIPT else Priority.FINAL_TRANSCRIPT
        cuts = [0, *slice_points(samples, INPUT_SAMPLE_RATE_HZ), len(samples)]
        texts = []
        for index, (start, end) in enumerate(itertools.pairwise(cuts)):
            if index:  # a long recording: let other sessions' turns through first
                self.urgency.wait_clear(self.session_key, URGENT_YIELD_MAX_S)
            self._pass_lock.acquire(level)
            try:
                texts.append(super().transcribe(samples[start:end]))
            finally:
                self._pass_lock.release()
        return " ".join(text.strip() for text in texts if text.strip())

    def view(self) -> SharedWhisperASR:
        clone = copy.copy(self)
        clone.stats = type(self.stats)()
        clone.failures = []
        return clone


class SharedPiperTTS(PiperTTS):
    """PiperTTS whose synthesis takes a lock shared by every view."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._synth_lock = PriorityLock()
        self._last_token: object = None

    def synthesize(self, text, token):  # type: ignore[no-untyped-def]
        """A reply's first clause goes before other replies' later clauses (a view serves one session)."""
        first, self._last_token = token is not self._last_token, token
        self._synth_lock.acquire(Priority.FIRST_CLAUSE if first else Priority.LATER_CLAUSE)
        try:
            return super().synthesize(text, token)
        finally:
            self._synth_lock.release()

    def view(self) -> SharedPiperTTS:
        clone = copy.copy(self)
        clone._last_token = None
        return clone


@dataclass
class Engines:
    asr: SharedWhisperASR
    #: The LLM every session's responder uses (one llama.cpp context, or a remote server).
    llm: LLMEngine
    tts: SharedPiperTTS
    #: Smart Turn, the audio end-of-turn model of ``semantic_vad`` (thread-safe: one run at a time).
    smart_turn: SmartTurnModel = field(default_factory=SmartTurnModel)
    _token_counts: functools._lru_cache_wrapper = field(init=False, repr=False)  # type: ignore[type-arg]

    def __post_init__(self) -> None:
        for engine in (self.llm, getattr(self.llm, "fallback", None)):  # a FailoverEngine's local model too
            if isinstance(engine, LlamaEngine):
                engine._grammars = BoundedCache(MAX_GRAMMARS)  # shared by every session: bounded
                engine._lock = PriorityLock()  # held for one whole generation, most urgent first
        self._token_counts = functools.lru_cache(maxsize=4096)(self._count_tokens)

    @property
    def context_tokens(self) -> int:
        """The LLM's context (``n_ctx``): what the server's input limits are measured in."""
        return int(getattr(self.llm, "n_ctx", None) or getattr(self.llm, "context_tokens", None) or DEFAULT_CONTEXT_TOKENS)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in the LLM's vocabulary (no lock: tokenizing reads the vocabulary only)."""
        if len(text) > TOKEN_CACHE_MAX_CHARS:
            return self._count_tokens(text)
        return self._token_counts(text)

    def _count_tokens(self, text: str) -> int:
        if not isinstance(self.llm, LlamaEngine):
            return self.llm.count_tokens(text)
        llama = self.llm._llm
        if llama is None:  # not loaded (unit tests): a UTF-8 byte is at most one token
            return len(text.encode("utf-8", "replace"))
        return len(llama.tokenize(text.encode("utf-8", "replace"), add_bos=False, special=False))

    @classmethod
    def create(
        cls,
        *,
        asr_model: str | Path | None = None,
        llm_model: str | Path | None = None,
        voice: str | Path | None = None,
        threads: int = 2,
        seed: int | None = None,
        llm: LLMEngine | None = None,
    ) -> Engines:
        """Locate the models (nothing is loaded until :meth:`load`); ``llm``: another engine
        than the local llama.cpp one (e.g. an OpenAI-compatible server)."""
        return cls(
            asr=SharedWhisperASR(asr_model, cpu_threads=threads),
            llm=llm if llm is not None else LlamaEngine(llm_model, n_threads=threads, seed=seed),
            tts=SharedPiperTTS(voice, output_sample_rate_hz=OUTPUT_SAMPLE_RATE_HZ),
            smart_turn=SmartTurnModel(),
        )

    async def load(self) -> None:
        """Load and warm up every model (a no-op for those already loaded)."""
        context = StageContext(Conversation(), Tracer())
        for stage in (self.asr, self.tts):
            await stage.setup(context)
        await self.llm.start()
        await SmartTurn(self.smart_turn).setup(context)
