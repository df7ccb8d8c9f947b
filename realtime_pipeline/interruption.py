"""Barge-in policy: when the user's speech interrupts the assistant, and when it was a false alarm.

The flow (OpenAI Realtime semantics, plus LiveKit-style false-interruption recovery):

1. The user has spoken ``min_interruption_ms`` of voiced audio while a response is
   generated or played: the response is *paused* at once. The player flushes the
   output, so the bot is silent within one block, and keeps the flushed tail.
2. The speech yields words (a non-empty partial or final transcript): the response
   is *cancelled* (token fires: the LLM stops at the next token, TTS work is dropped)
   and the history keeps only what was heard.
3. It yields no words (an empty final transcript, or ``false_interruption_ms`` of
   input audio after the sound stopped without one): a false interruption; the
   response *resumes* from the exact sample where it stopped.

With ``resume_false_interruption=False`` step 1 cancels right away instead of pausing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Union

from .response import Response

#: Default of :attr:`InterruptionSettings.min_interruption_ms`, chosen by measurement
#: (``python -m benchmarks.barge_in --measure-threshold``; webrtcvad aggressiveness 2,
#: the 30 files of tests/data/speech): from the speech onset (audio energy) to the
#: moment the VAD has counted N ms of voiced audio, p50/p95 =
#: 40/65 ms for N=60, 60/85 ms for N=80, 80/271 ms for N=100, 140/331 ms for N=160.
#: Above 80 ms the p95 jumps (words that start with a weak or unvoiced sound), and
#: p95 + one 20 ms output block must stay within the 120 ms barge-in target, so 80.
#: Duration cannot tell noise from speech within that budget anyway (a 50 ms click
#: already reads as 80 ms voiced, a 200 ms noise burst as 300 ms): short noises are
#: handled by resuming after a false interruption, not by a longer threshold.
DEFAULT_MIN_INTERRUPTION_MS = 80

#: Default of :attr:`InterruptionSettings.false_interruption_ms`, counted in input
#: audio from the end of the interrupting sound. A sound without words is normally
#: settled sooner, by its empty final transcript; the timeout only decides when the
#: ASR is late, and then resuming over real words is the bad outcome. Measured in
#: the barge-in benchmark (SpeechStopped → final transcript, which comes 0.5 s after
#: the sound): p95 1.65 s on a quiet machine, so 2.0 s (LiveKit's default) resumed
#: over real interruptions; 3.0 s covers it, and the words still interrupt if they
#: come later (on a loaded machine the p50 was 2.5 s).
DEFAULT_FALSE_INTERRUPTION_MS = 3000

#: Default of :attr:`InterruptionSettings.min_interruption_while_speaking_ms`: the barge-in
#: threshold while the assistant is audible and its echo may reach the VAD (the fallback, and
#: AEC3's first 2.5 s of far end without the start sound: ``Conversation.echo_unprotected``). Echo that gets through the echo gate comes in
#: short bursts, where the echo outlasts the gate's 400 ms window (long delays, reverberant
#: rooms). Measured offline (``python -m benchmarks.echo_sim --modes gate``, 96 barge-ins per
#: cell; docs/echo.md, "The fallback's threshold"): in a 300 ms / RT60 800 ms room at 0 dB the
#: reply paused on its own echo 8 times at 80 ms, 2 at 160 and 240, 0 at 320 (17, 5, 4, 2 over
#: -20, 0 and +10 dB); in the issue's rooms (100 ms, -20 to +10 dB) never at any of them. The price, where the echo is 20 dB down:
#: barge-in p50 100 ms at 80, 326 ms at 240.
DEFAULT_MIN_INTERRUPTION_WHILE_SPEAKING_MS = 240

_WORD = re.compile(r"\w")


def has_words(text: str) -> bool:
    """Whether a transcript holds any word (Whisper may return only punctuation for noise)."""
    return bool(_WORD.search(text))


@dataclass(frozen=True)
class InterruptionSettings:
    """How user speech interrupts a response (``Conversation.allow_interruptions`` turns it off).

    ``min_interruption_ms``: voiced user audio needed before the response stops.
    ``resume_false_interruption``: pause first, cancel only once words arrive, and
    resume if none do; False cancels as soon as ``min_interruption_ms`` is reached.
    ``false_interruption_ms``: input audio after the interrupting sound ended, without
    words, after which the paused response resumes.
    ``min_interruption_while_speaking_ms``: the threshold instead of ``min_interruption_ms``
    while the assistant is audible and its echo may reach the VAD (no echo canceller runs:
    the fallback; or AEC3 has not heard the room yet, without the start sound); a longer one
    keeps echo from interrupting the reply, at the price of a later barge-in.
    """

    min_interruption_ms: int = DEFAULT_MIN_INTERRUPTION_MS
    resume_false_interruption: bool = True
    false_interruption_ms: int = DEFAULT_FALSE_INTERRUPTION_MS
    min_interruption_while_speaking_ms: int = DEFAULT_MIN_INTERRUPTION_WHILE_SPEAKING_MS

    def __post_init__(self) -> None:
        for name in ("min_interruption_ms", "false_interruption_ms", "min_interruption_while_speaking_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")

    def threshold_ms(self, response: Response | None, *, echo_unprotected: bool) -> int:
        """Voiced user audio that interrupts ``response`` now: more while it is audible and
        nothing cancels its echo."""
        if echo_unprotected and response is not None and response.played_ms > 0 and not response.paused:
            return max(self.min_interruption_ms, self.min_interruption_while_speaking_ms)
        return self.min_interruption_ms


@dataclass
class PendingInterruption:
    """A paused response waiting for the interrupting speech to yield words (or not).

    ``turns`` are the user turns heard since the pause whose final transcript has not
    come yet; ``resume_at_ms`` is the input-audio time at which it resumes without words.
    """

    response: Response
    turns: set[int] = field(default_factory=set)
    resume_at_ms: int | None = None
    paused_at_s: float = 0.0


@dataclass(frozen=True)
class Pause:
    """Decision: pause the active response for the speech of ``turn_id`` (then :meth:`BargeIn.paused`)."""

    turn_id: int


@dataclass(frozen=True)
class Cancel:
    """Decision: cancel the live responses (a real interruption)."""

    reason: str = "turn_detected"


@dataclass(frozen=True)
class Resume:
    """Decision: the paused response plays on (a false interruption: ``no_words`` or ``timeout``)."""

    pending: PendingInterruption
    reason: str


Decision = Union[Pause, Cancel, Resume, None]


class BargeIn:
    """The barge-in policy of the module's docstring, as a state machine.

    Fed the VAD's and the ASR's events and the input-audio clock, it returns what to do to
    the active response (:class:`Pause`, :class:`Cancel`, :class:`Resume` or None); the
    conversation does it and reports a pause that took (:meth:`paused`). It touches no
    response and reads no clock, so a test drives it with plain numbers.
    ``can_interrupt``: interruptions are allowed and a response is active.
    """

    def __init__(self, settings: InterruptionSettings | None = None) -> None:
        self.settings = settings or InterruptionSettings()
        self.user_speaking = False
        self.pending: PendingInterruption | None = None
        self._speech_turn: int | None = None
        self._voiced_ms = 0
        #: Turns that paused a response that then resumed on the timeout, before their transcript came.
        self._late_turns: set[int] = set()

    @property
    def speech_turn(self) -> int | None:
        """The turn the user is speaking now (None between turns)."""
        return self._speech_turn

    def speech_started(self, turn_id: int, *, can_interrupt: bool, unheard: bool) -> Decision:
        """The VAD heard the user. ``unheard``: the active response has not played a sample yet
        (a pause the end-of-turn detector took for the end): hold it at once rather than after
        ``min_interruption_ms`` of talking over."""
        self.user_speaking = True
        self._speech_turn, self._voiced_ms = turn_id, 0
        if self.pending is not None:  # more speech while paused: its transcript decides too
            self.pending.turns.add(turn_id)
            self.pending.resume_at_ms = None
        if unheard and self.settings.resume_false_interruption:
            return self._interrupt(turn_id, can_interrupt)
        return None

    def speech_progress(self, turn_id: int, voiced_ms: int, *, can_interrupt: bool, threshold_ms: int | None = None) -> Decision:
        """The current turn has ``voiced_ms`` of voiced audio; at ``threshold_ms`` (default
        ``min_interruption_ms``; more while echo may reach the VAD: :meth:`InterruptionSettings.threshold_ms`)
        it interrupts."""
        if turn_id != self._speech_turn:
            return None
        self._voiced_ms = voiced_ms
        if voiced_ms >= (self.settings.min_interruption_ms if threshold_ms is None else threshold_ms):
            return self._interrupt(turn_id, can_interrupt)
        return None

    def speech_stopped(self, turn_id: int, audio_end_ms: int) -> None:
        self.user_speaking = False
        self._speech_turn = None
        if self.pending is not None and turn_id in self.pending.turns:
            self.pending.resume_at_ms = audio_end_ms + self.settings.false_interruption_ms

    def audio_advanced(self, position_ms: int) -> Decision:
        """Input audio processed up to ``position_ms``: a false interruption resumes on time."""
        pending = self.pending
        if pending is not None and pending.resume_at_ms is not None and not self.user_speaking and position_ms >= pending.resume_at_ms:
            return self._resume("timeout")
        return None

    def transcript(self, turn_id: int, text: str, *, final: bool, live: bool) -> Decision:
        """A partial or final transcript of ``turn_id``; ``live``: a response is still live."""
        if has_words(text):
            pending = self.pending
            if (pending is not None and turn_id in pending.turns) or (turn_id in self._late_turns and live):
                self._late_turns.discard(turn_id)  # words: a real interruption (also after a timeout resume)
                return Cancel()
        if not final:
            return None
        self._late_turns.discard(turn_id)
        pending = self.pending
        if pending is not None and turn_id in pending.turns:
            pending.turns.discard(turn_id)
            if not pending.turns and not self.user_speaking:
                return self._resume("no_words")
        return None

    def response_began(self, *, can_interrupt: bool, threshold_ms: int | None = None) -> Decision:
        """A response began: the user may already be talking over it."""
        threshold = self.settings.min_interruption_ms if threshold_ms is None else threshold_ms
        if self._speech_turn is not None and self._voiced_ms >= threshold:
            return self._interrupt(self._speech_turn, can_interrupt)
        return None

    def paused(self, response: Response, turn_id: int, at_s: float) -> None:
        """The conversation paused ``response`` for ``turn_id`` (a :class:`Pause` that took)."""
        self.pending = PendingInterruption(response, {turn_id}, paused_at_s=at_s)

    def response_ended(self, response: Response | None = None) -> None:
        """``response`` ended (None: every live response was cancelled): nothing waits to resume."""
        if self.pending is not None and (response is None or self.pending.response is response):
            self.pending = None

    def _interrupt(self, turn_id: int, can_interrupt: bool) -> Decision:
        if not can_interrupt:
            return None
        if not self.settings.resume_false_interruption:
            return Cancel()
        if self.pending is not None:
            self.pending.turns.add(turn_id)
            return None
        return Pause(turn_id)

    def _resume(self, reason: str) -> Resume | None:
        pending, self.pending = self.pending, None
        if pending is None:
            return None
        if reason == "timeout":
            self._late_turns |= pending.turns
        return Resume(pending, reason)
