"""Speculation: the reply to a turn that may be ending, prepared during the end-of-turn silence.

The ASR's TranscriptPreview at a pause starts the answer (LLM, chunker and TTS work on it,
the player holds its audio). The VAD's SpeechStopped at the same ``audio_end_ms`` commits
it, so it plays at once; resumed speech, or a stop elsewhere, discards it (a miss). The
final transcript then checks a committed reply: the same words are a hit; other words
cancel it and the final is answered normally (a miss).

This object only keeps that bookkeeping; the conversation does what it decides (history
entries, the live responses, events).
"""

from __future__ import annotations

from dataclasses import dataclass

from .response import Response


@dataclass(frozen=True)
class Held:
    """A speculative reply held silent: it assumes the turn ends at ``audio_end_ms``."""

    response: Response
    audio_end_ms: int


class Speculation:
    """Held and committed speculative replies, and the hit/miss counts."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.hits = 0
        self.misses = 0
        self.held: Held | None = None
        self._committed: dict[int, Response] = {}  # turn id -> committed, awaiting its final

    def hold(self, response: Response, audio_end_ms: int) -> None:
        self.held = Held(response, audio_end_ms)

    def settle(self, turn_id: int, audio_end_ms: int) -> tuple[Response | None, Response | None]:
        """The turn stopped at ``audio_end_ms``: (the reply to commit, the reply to discard)."""
        held = self.held
        if held is None:
            return None, None
        self.held = None
        if held.response.turn_id != turn_id or held.audio_end_ms != audio_end_ms:
            self.misses += 1
            return None, held.response
        self._committed[turn_id] = held.response
        return held.response, None

    def discard(self) -> Response | None:
        """Drop the held reply (a miss); returns it, or None if nothing was held."""
        held, self.held = self.held, None
        if held is None:
            return None
        self.misses += 1
        return held.response

    def answered(self, turn_id: int, text: str) -> tuple[bool, Response | None]:
        """The final transcript of ``turn_id``: (a hit, the committed reply that is now void)."""
        response = self._committed.pop(turn_id, None)
        if response is None:
            return False, None
        if response.user_text == text:
            self.hits += 1
            return True, None
        self.misses += 1
        return False, response
