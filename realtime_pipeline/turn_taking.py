"""End of turn: when has the user finished speaking?

A fixed silence cannot be right for both kinds of pause: people pause inside a
sentence ("ask not … what your country can do") for longer than they leave
before the answer to a finished question. So the decision here combines a
short silence with learned end-of-turn scores, like LiveKit's min/max
endpointing delay and Pipecat's Smart Turn:

1. The VAD reports voiced frames and silence on its audio clock (ms of input).
2. After ``pause_ms`` of silence the end-of-turn models are asked (the audio
   model in :mod:`.stages.smart_turn`, the LLM's end-of-turn token in
   :mod:`.stages.llm`); they answer with :class:`TurnScore` events, each for
   the pause that ended at ``audio_end_ms``.
3. The scores combine as a weighted *geometric* mean, so the models must agree:
   one confident "unfinished" holds the turn however sure the other is. On the
   pause corpus the audio model alone called 46 % of mid-clause pauses complete
   and the text model alone 12 %; together 4 % (docs/latency.md).
4. The turn commits once the silence reaches :meth:`EndOfTurn.required_silence_ms`
   of the combined probability: ``min_silence_ms`` when it is at least
   ``threshold``, and longer the less complete the turn sounds, up to
   ``max_silence_ms`` at probability 0. A "complete" from only some of the
   models waits for the others up to ``fallback_silence_ms``; without any score
   by then (a model failed or the machine is swamped) it commits as a
   fixed-silence VAD would.
5. Speech that resumes before the commit always continues the same turn.

``mode="silence"`` is the plain fixed silence (the Realtime API's
``server_vad``): commit after ``silence_ms``, whatever anyone thinks.

:class:`EndOfTurn` is a pure state machine: no I/O, no clock of its own (every
call carries the audio time), so it is tested with made-up timelines.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field, replace
from typing import Literal

#: Sources of end-of-turn scores.
AUDIO_MODEL = "smart_turn"
TEXT_MODEL = "llm"


class Decision(enum.Enum):
    LISTENING = "listening"  # the user is speaking
    WAITING = "waiting"      # silence, not yet enough for the scores at hand
    COMMIT = "commit"        # the turn is over: answer now


@dataclass(frozen=True)
class TurnScore:
    """An end-of-turn model's probability that the turn is complete, for the pause that began at
    ``audio_end_ms`` of turn ``turn_id`` (emitted on the conversation's event bus)."""

    turn_id: int
    audio_end_ms: int
    source: str
    probability: float
    cost_ms: float = 0.0
    at_s: float = field(default_factory=time.monotonic)


#: Eagerness of the Realtime API's ``semantic_vad``: OpenAI caps the wait at 8/4/2 s for
#: low/medium/high ("auto" is medium); a lower threshold also commits more turns at once.
EAGERNESS = {
    "low": {"max_silence_ms": 8000, "threshold": 0.85},
    "medium": {"max_silence_ms": 4000, "threshold": 0.7},
    "high": {"max_silence_ms": 2000, "threshold": 0.5},
}
EAGERNESS["auto"] = EAGERNESS["medium"]


@dataclass(frozen=True)
class TurnTakingSettings:
    """How the end of a turn is decided (see the module docstring).

    Defaults chosen on the pause corpus (``python -m benchmarks.latency --audio-dir
    tests/data/pauses``) and the 30 natural turns; the trade-off table is in
    docs/latency.md.
    """

    mode: Literal["semantic", "silence"] = "semantic"
    #: ``silence`` mode: the fixed end-of-turn silence (``server_vad``'s ``silence_duration_ms``).
    silence_ms: int = 500
    #: ``semantic`` mode: the earliest commit, for a turn that sounds complete.
    min_silence_ms: int = 200
    #: ``semantic`` mode: the longest wait, for a turn that sounds unfinished.
    max_silence_ms: int = 2000
    #: ``semantic`` mode: commit without any score after this silence.
    fallback_silence_ms: int = 800
    #: ``semantic`` mode: a pause after less speech than this is not scored (the models cannot tell
    #: from a click or a breath; Smart Turn called 100 ms of onset "complete") and ends the turn
    #: only after ``fallback_silence_ms``.
    min_speech_ms: int = 200
    #: Probability of "complete" at or above which a turn commits at ``min_silence_ms``.
    threshold: float = 0.7
    #: Weight of each score source in the combined (geometric) probability. The text score of
    #: the embedded 135M LLM is low on complete fragments ("four queen of clubs"), so it counts half.
    weights: tuple[tuple[str, float], ...] = ((AUDIO_MODEL, 1.0), (TEXT_MODEL, 0.5))

    def __post_init__(self) -> None:
        if self.mode not in ("semantic", "silence"):
            raise ValueError(f"mode must be 'semantic' or 'silence', got {self.mode!r}")
        for name in ("silence_ms", "min_silence_ms", "max_silence_ms", "fallback_silence_ms", "min_speech_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.max_silence_ms < self.min_silence_ms:
            raise ValueError(f"max_silence_ms ({self.max_silence_ms}) must be at least min_silence_ms ({self.min_silence_ms})")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if any(weight < 0 for _, weight in self.weights) or not any(weight > 0 for _, weight in self.weights):
            raise ValueError("weights must be non-negative with at least one positive")

    @classmethod
    def fixed_silence(cls, silence_ms: int = 500) -> TurnTakingSettings:
        return cls(mode="silence", silence_ms=silence_ms)

    @classmethod
    def semantic(cls, eagerness: str = "auto", **overrides: object) -> TurnTakingSettings:
        """The semantic detector tuned like ``semantic_vad``'s ``eagerness`` (low/medium/high/auto)."""
        if eagerness not in EAGERNESS:
            raise ValueError(f"eagerness must be one of {sorted(EAGERNESS)}, got {eagerness!r}")
        return replace(cls(), **{**EAGERNESS[eagerness], **overrides})  # type: ignore[arg-type]

    @property
    def sources(self) -> tuple[str, ...]:
        """The score sources this setting listens to (weight above 0)."""
        return tuple(source for source, weight in self.weights if weight > 0) if self.mode == "semantic" else ()

    @property
    def longest_wait_ms(self) -> int:
        return self.silence_ms if self.mode == "silence" else max(self.max_silence_ms, self.fallback_silence_ms)


class EndOfTurn:
    """The end-of-turn state machine of one input stream (one per VAD).

    The VAD calls :meth:`speech_started`, :meth:`voiced` and :meth:`silence`
    with its audio clock; score events go to :meth:`add_score`; after every
    frame the VAD asks :meth:`decide`.
    """

    def __init__(self, settings: TurnTakingSettings | None = None) -> None:
        self.settings = settings or TurnTakingSettings()
        self.turn_id: int | None = None
        #: Where the current pause began (the refined end of the last voiced audio), or None while speaking.
        self.pause_start_ms: int | None = None
        self._silence_ms = 0
        self._scores: dict[str, float] = {}
        #: Speech heard in the current turn so far.
        self.speech_ms = 0

    def speech_started(self, turn_id: int, speech_ms: int = 0) -> None:
        self.turn_id, self.pause_start_ms, self._silence_ms = turn_id, None, 0
        self.speech_ms = speech_ms
        self._scores = {}

    def voiced(self, duration_ms: int = 0) -> None:
        """Speech goes on (or resumed): the same turn continues; scores of the pause are void."""
        self.pause_start_ms, self._silence_ms = None, 0
        self.speech_ms += duration_ms
        self._scores = {}

    @property
    def scorable(self) -> bool:
        """Whether the current pause follows enough speech to be worth scoring (``min_speech_ms``)."""
        return self.settings.mode == "silence" or self.speech_ms >= self.settings.min_speech_ms

    def silence(self, pause_start_ms: int, now_ms: int) -> None:
        """Silence since ``pause_start_ms`` (the end of the last voiced audio), up to ``now_ms``."""
        if self.pause_start_ms != pause_start_ms:
            self._scores = {}
        self.pause_start_ms = pause_start_ms
        self._silence_ms = max(0, now_ms - pause_start_ms)

    def add_score(self, score: TurnScore) -> bool:
        """Take a model's score; False if it is for another turn or pause (stale) or an unused source."""
        if score.turn_id != self.turn_id or score.audio_end_ms != self.pause_start_ms:
            return False
        if score.source not in self.settings.sources:
            return False
        if not 0.0 <= score.probability <= 1.0:
            raise ValueError(f"{score.source} gave probability {score.probability}, outside [0, 1]")
        self._scores[score.source] = score.probability
        return True

    @property
    def probability(self) -> float | None:
        """The weighted geometric mean of the scores of this pause so far, None before any arrives."""
        weights = dict(self.settings.weights)
        total = sum(weights[source] for source in self._scores)
        if total <= 0:
            return None
        log_sum = sum(weights[source] * math.log(max(p, 1e-6)) for source, p in self._scores.items())
        return math.exp(log_sum / total)

    @property
    def all_scored(self) -> bool:
        return all(source in self._scores for source in self.settings.sources)

    def required_silence_ms(self, probability: float | None) -> int:
        """The silence after which the turn commits, given the combined probability."""
        s = self.settings
        if s.mode == "silence":
            return s.silence_ms
        if probability is None or not self.scorable:
            return s.fallback_silence_ms
        if probability >= s.threshold:
            return s.min_silence_ms if self.all_scored else s.fallback_silence_ms
        shortfall = (s.threshold - probability) / s.threshold  # 0 just below the threshold, 1 at p = 0
        return round(s.min_silence_ms + shortfall * (s.max_silence_ms - s.min_silence_ms))

    @property
    def silence_ms(self) -> int:
        return self._silence_ms

    def decide(self) -> Decision:
        if self.turn_id is None or self.pause_start_ms is None:
            return Decision.LISTENING
        if self._silence_ms >= self.required_silence_ms(self.probability):
            return Decision.COMMIT
        return Decision.WAITING

    def committed(self) -> None:
        """The VAD ended the turn: forget it."""
        self.turn_id, self.pause_start_ms, self._silence_ms = None, None, 0
        self._scores = {}
