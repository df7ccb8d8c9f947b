"""The end-of-turn state machine on made-up timelines (audio ms), and the VAD driving it."""

from __future__ import annotations

import pytest

from realtime_pipeline.stages.vad import SpeechLevel, VADSettings
from realtime_pipeline.turn_taking import (
    AUDIO_MODEL,
    TEXT_MODEL,
    Decision,
    EndOfTurn,
    TurnScore,
    TurnTakingSettings,
)

SETTINGS = TurnTakingSettings(min_silence_ms=200, max_silence_ms=2000, fallback_silence_ms=800, threshold=0.5,
                              weights=((AUDIO_MODEL, 1.0), (TEXT_MODEL, 1.0)))


def silence_until_commit(detector: EndOfTurn, pause_start_ms: int, *,
                         scores: dict[int, TurnScore | list[TurnScore]] | None = None,
                         step_ms: int = 20, limit_ms: int = 10_000) -> int:
    """Feed silence frames from ``pause_start_ms`` (scores arriving at their audio times); the commit time."""
    now = pause_start_ms
    while now < pause_start_ms + limit_ms:
        now += step_ms
        for at_ms, arriving in sorted((scores or {}).items()):
            if pause_start_ms < at_ms <= now and at_ms > now - step_ms:
                for score in arriving if isinstance(arriving, list) else [arriving]:
                    detector.add_score(score)
        detector.silence(pause_start_ms, now)
        if detector.decide() is Decision.COMMIT:
            return now
    raise AssertionError("never committed")


def test_complete_scores_from_every_model_commit_at_the_minimum_silence() -> None:
    detector = EndOfTurn(SETTINGS)
    detector.speech_started(1, 1000)
    assert detector.decide() is Decision.LISTENING
    commit = silence_until_commit(detector, 1000, scores={1100: TurnScore(1, 1000, AUDIO_MODEL, 0.9),
                                                          1160: TurnScore(1, 1000, TEXT_MODEL, 0.8)})
    assert commit == 1200


def test_a_complete_score_waits_for_the_other_model_at_most_the_fallback() -> None:
    detector = EndOfTurn(SETTINGS)
    detector.speech_started(1, 1000)
    late = silence_until_commit(detector, 0, scores={100: TurnScore(1, 0, AUDIO_MODEL, 0.9),
                                                     400: TurnScore(1, 0, TEXT_MODEL, 0.9)})
    assert late == 400  # committed as soon as the text score agreed
    detector.speech_started(2, 1000)
    never = silence_until_commit(detector, 0, scores={100: TurnScore(2, 0, AUDIO_MODEL, 0.9)})
    assert never == SETTINGS.fallback_silence_ms


def test_one_confident_unfinished_holds_the_turn_however_sure_the_other_is() -> None:
    detector = EndOfTurn(SETTINGS)
    detector.speech_started(1, 1000)
    commit = silence_until_commit(detector, 0, scores={100: [TurnScore(1, 0, AUDIO_MODEL, 0.99), TurnScore(1, 0, TEXT_MODEL, 0.01)]})
    assert commit > 1500


def test_an_incomplete_score_waits_longer_the_less_complete_and_never_past_the_maximum() -> None:
    waits = []
    for probability in (0.45, 0.25, 0.0):
        detector = EndOfTurn(SETTINGS)
        detector.speech_started(1, 1000)
        waits.append(silence_until_commit(detector, 1000, scores={1100: TurnScore(1, 1000, AUDIO_MODEL, probability)}) - 1000)
    assert waits[0] < waits[1] < waits[2] == 2000
    assert waits[0] > 200


def test_without_any_score_it_commits_at_the_fallback_silence() -> None:
    detector = EndOfTurn(SETTINGS)
    detector.speech_started(1, 1000)
    assert silence_until_commit(detector, 500) - 500 == 800


def test_speech_that_resumes_continues_the_same_turn_and_voids_the_pause_scores() -> None:
    detector = EndOfTurn(SETTINGS)
    detector.speech_started(7, 1000)
    detector.silence(1000, 1100)
    assert detector.add_score(TurnScore(7, 1000, AUDIO_MODEL, 0.1))
    assert detector.decide() is Decision.WAITING
    detector.voiced()  # the user goes on after 100 ms
    assert detector.turn_id == 7 and detector.decide() is Decision.LISTENING
    # a late score for the old pause is stale: it changes nothing
    assert not detector.add_score(TurnScore(7, 1000, AUDIO_MODEL, 0.99))
    commit = silence_until_commit(detector, 2500, scores={2600: [TurnScore(7, 2500, AUDIO_MODEL, 0.8), TurnScore(7, 2500, TEXT_MODEL, 0.7)]})
    assert commit == 2700


def test_scores_of_another_turn_or_source_are_ignored_and_sources_combine() -> None:
    detector = EndOfTurn(SETTINGS)
    detector.speech_started(3, 1000)
    detector.silence(400, 500)
    assert not detector.add_score(TurnScore(2, 400, AUDIO_MODEL, 1.0))
    assert not detector.add_score(TurnScore(3, 400, "some_other_model", 1.0))
    assert detector.probability is None
    detector.add_score(TurnScore(3, 400, AUDIO_MODEL, 0.9))
    detector.add_score(TurnScore(3, 400, TEXT_MODEL, 0.1))
    assert detector.probability == pytest.approx(0.3)  # geometric: sqrt(0.9 * 0.1)
    with pytest.raises(ValueError, match="outside"):
        detector.add_score(TurnScore(3, 400, AUDIO_MODEL, 1.5))


def test_a_pause_after_too_little_speech_is_not_scored_and_waits_for_the_fallback() -> None:
    detector = EndOfTurn(SETTINGS)
    detector.speech_started(1, 100)  # a click or a breath: 100 ms
    assert not detector.scorable
    commit = silence_until_commit(detector, 100, scores={150: TurnScore(1, 100, AUDIO_MODEL, 0.99)})
    assert commit - 100 == SETTINGS.fallback_silence_ms
    detector.speech_started(2, 100)
    detector.voiced(200)  # then real words
    assert detector.scorable


def test_fixed_silence_mode_ignores_scores_and_commits_at_exactly_the_silence_asked_for() -> None:
    detector = EndOfTurn(TurnTakingSettings.fixed_silence(640))
    detector.speech_started(1, 1000)
    assert not detector.add_score(TurnScore(1, 0, AUDIO_MODEL, 1.0))
    assert silence_until_commit(detector, 0, step_ms=20) == 640


def test_eagerness_maps_to_maximum_waits_and_thresholds() -> None:
    low, high = TurnTakingSettings.semantic("low"), TurnTakingSettings.semantic("high")
    assert (low.max_silence_ms, high.max_silence_ms) == (8000, 2000)
    assert low.threshold > TurnTakingSettings.semantic("auto").threshold > high.threshold
    with pytest.raises(ValueError, match="eagerness"):
        TurnTakingSettings.semantic("eager")


def test_bad_settings_get_clear_errors() -> None:
    with pytest.raises(ValueError, match="max_silence_ms"):
        TurnTakingSettings(min_silence_ms=500, max_silence_ms=100)
    with pytest.raises(ValueError, match="threshold"):
        TurnTakingSettings(threshold=0)
    with pytest.raises(ValueError, match="mode"):
        TurnTakingSettings(mode="magic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pause_ms"):
        VADSettings(pause_ms=300, turn_taking=TurnTakingSettings(min_silence_ms=200))
    assert VADSettings(silence_duration_ms=700).turn_taking == TurnTakingSettings.fixed_silence(700)


def test_speech_level_calls_the_decaying_tail_silence() -> None:
    level = SpeechLevel()
    for _ in range(50):
        level.background(-10.0)  # a quiet room
    level.new_turn()
    for _ in range(40):
        level.speech(60.0)  # words
    assert level.is_loud(55.0)
    assert not level.is_loud(25.0)  # 35 dB under the words: the tail webrtcvad still calls voiced
    assert not level.is_loud(-5.0)
