"""The double-talk pieces without models: the linear echo filter and the near-end detector."""

from __future__ import annotations

import numpy as np
import pytest

from realtime_pipeline.double_talk import BandNoiseFloor, LinearEchoFilter, NearEndDetector, TwoPathEchoFilter, band_level_db
from realtime_pipeline.io.echo_room import synthetic_impulse_response

RATE = 16000
BLOCK = 160


def _db(signal: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(np.square(signal.astype(np.float64))) + 1e-12))


def _room(reference: np.ndarray, *, delay_ms: int = 50, gain_db: float = -3.0) -> np.ndarray:
    response = np.concatenate([np.zeros(delay_ms * RATE // 1000), synthetic_impulse_response(rt60_ms=200, length_ms=250)])
    return np.convolve(reference, response)[: len(reference)] * 10 ** (gain_db / 20)


def _noise_in_room(seed: int, seconds: int) -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
    """-21 dBFS noise as the far end, and its echo in :func:`_room`."""
    rng = np.random.default_rng(seed)
    reference = rng.normal(0, 3000, seconds * RATE)
    return rng, reference, _room(reference)


def _run(linear: LinearEchoFilter, capture: np.ndarray, reference: np.ndarray, *, adapt: bool = True) -> np.ndarray:
    return np.concatenate([linear.process(capture[i : i + BLOCK], reference[i : i + BLOCK], adapt=adapt)
                           for i in range(0, len(capture) // BLOCK * BLOCK, BLOCK)])


def test_the_linear_filter_learns_a_delayed_reverberant_echo_path():
    _, reference, echo = _noise_in_room(0, 6)
    linear = LinearEchoFilter()
    residual = _run(linear, echo, reference)
    last_second = slice(5 * RATE, 6 * RATE)
    erle_db = _db(echo[last_second]) - _db(residual[last_second])
    assert erle_db > 20.0, erle_db  # measured 55 dB (27 dB after 3 s); a filter that did not learn stays near 0


def test_a_voice_the_filter_did_not_learn_passes_through_it():
    _, reference, echo = _noise_in_room(1, 6)
    linear = LinearEchoFilter()
    _run(linear, echo[: 5 * RATE], reference[: 5 * RATE])
    t = np.arange(RATE) / RATE
    voice = 1000 * np.sin(2 * np.pi * 300 * t)  # 20 dB under the echo
    residual = _run(linear, echo[5 * RATE :] + voice, reference[5 * RATE :], adapt=False)
    assert abs(_db(residual) - _db(voice)) < 1.0  # the voice, and only a little echo


def test_two_paths_keep_the_echo_path_when_a_voice_is_learnt_as_echo():
    # the stage learns from frames AEC3 took 12 dB out of, and AEC3 removes a quiet user too: a
    # single NLMS fits that voice into the echo path, the two-path filter's foreground does not
    rng, reference, echo = _noise_in_room(5, 8)
    voice = rng.normal(0, 300, 8 * RATE)  # 20 dB under the echo, learnt as echo from 5 to 6 s
    single, two = LinearEchoFilter(), TwoPathEchoFilter()
    for linear in (single, two):
        _run(linear, echo[: 5 * RATE], reference[: 5 * RATE])
        _run(linear, echo[5 * RATE : 6 * RATE] + voice[5 * RATE : 6 * RATE], reference[5 * RATE : 6 * RATE])
    assert two.copies > 0  # the foreground followed the background while it converged
    after = slice(6 * RATE, 8 * RATE)
    erle_db = {name: _db(echo[after]) - _db(_run(linear, echo[after], reference[after], adapt=False))
               for name, linear in (("single", single), ("two", two))}
    assert erle_db["two"] > erle_db["single"] + 6.0, erle_db  # measured 49 against 22 dB
    assert erle_db["two"] > 35.0, erle_db


def test_two_paths_reset_a_background_that_learnt_a_voice_and_check_their_use():
    rng, reference, echo = _noise_in_room(6, 6)
    two = TwoPathEchoFilter()
    _run(two, echo[: 4 * RATE], reference[: 4 * RATE])
    _run(two, echo[4 * RATE : 5 * RATE] + rng.normal(0, 6000, RATE), reference[4 * RATE : 5 * RATE])  # a loud voice learnt
    resets = two.resets
    _run(two, echo[5 * RATE :], reference[5 * RATE :])  # echo alone again: the background is far off it
    assert two.resets > resets
    with pytest.raises(RuntimeError, match="after cancel"):
        two.adapt(np.zeros(BLOCK))
    with pytest.raises(ValueError, match="blocks of 160"):
        two.cancel(np.zeros(320), np.zeros(320))


def test_the_linear_filter_checks_its_arguments():
    with pytest.raises(ValueError, match="step"):
        LinearEchoFilter(step=2.0)
    linear = LinearEchoFilter()
    with pytest.raises(ValueError, match="blocks of 160"):
        linear.cancel(np.zeros(320), np.zeros(320))


def test_the_detector_waits_until_the_filter_removes_enough_echo():
    detector = NearEndDetector(min_frames=100, min_removed_db=12.0)
    for _ in range(99):
        detector.learn(-30.0)
    assert detector.threshold_db is None  # too few frames to know the filter
    assert not detector.is_near_end(0.0)
    detector.learn(-30.0)
    assert detector.threshold_db == pytest.approx(-30.0 + detector.margin_db)
    unconverged = NearEndDetector()
    for _ in range(200):
        unconverged.learn(-8.0)  # removes 8 dB: not converged, every frame keeps AEC3's output
    assert unconverged.threshold_db is None


def test_near_end_needs_three_of_four_frames_above_the_threshold():
    detector = NearEndDetector()
    rng = np.random.default_rng(2)
    for value in -35.0 + rng.normal(0, 2, 150):
        detector.learn(float(value))
    threshold = detector.threshold_db
    assert threshold is not None and -35 + detector.margin_db < threshold < -25 + detector.margin_db
    loud, quiet = threshold + 3, threshold - 3
    assert [detector.is_near_end(v) for v in (loud, quiet, quiet, loud)] == [False] * 4  # single frames: echo
    assert detector.above  # the last frame was above: the caller does not learn from it
    assert [detector.is_near_end(v) for v in (loud, loud)] == [False, True]  # 3 of the last 4
    assert detector.near_end_frames == 1
    detector.reset()  # the far end went quiet: confirmation starts afresh
    assert not detector.is_near_end(loud) and not detector.is_near_end(loud) and detector.is_near_end(loud)
    with pytest.raises(ValueError, match="confirm_frames"):
        NearEndDetector(confirm_frames=5, within_frames=4)


def test_the_band_level_counts_only_the_speech_band():
    t_s = np.arange(BLOCK) / RATE
    tone_db = 20 * np.log10(3000 / np.sqrt(2) / 32768)
    assert band_level_db(3000 * np.sin(2 * np.pi * 1000 * t_s)) == pytest.approx(tone_db, abs=0.5)
    # a reply's hum and hiss, where the filter learns little, count far less (10 ms frames resolve
    # 100 Hz: half a cycle of 50 Hz still leaks in, 18 dB down)
    assert band_level_db(3000 * np.sin(2 * np.pi * 50 * t_s)) < tone_db - 15
    assert band_level_db(3000 * np.sin(2 * np.pi * 7000 * t_s)) < tone_db - 30


class _PassThrough(LinearEchoFilter):
    """A filter whose residual is the microphone itself: the test decides what the detector sees."""

    def cancel(self, capture: np.ndarray, reference: np.ndarray) -> np.ndarray:
        return capture.astype(np.float64)

    def adapt(self, residual: np.ndarray) -> None:
        pass


def _passed_after_a_voice(far_silent_ms: int, far_playing_ms: int, ramp_dbfs: tuple[float, ...] = ()) -> list[bool]:
    """Four loud microphone frames (a voice, judged near-end), then quiet ones: which of the
    quiet frames the stage passes on (hangover) rather than mutes, ``far_playing_ms`` after a
    reply came back from ``far_silent_ms`` of silence (through ``ramp_dbfs``, one 10 ms frame each)."""
    from realtime_pipeline.echo_cancel import EchoCancellation
    from realtime_pipeline.io.outputs import MemoryOutput

    stage = EchoCancellation(MemoryOutput(RATE), double_talk=True)
    stage.linear = _PassThrough()
    assert stage.near_end is not None
    for _ in range(150):
        stage.near_end.learn(-35.0)  # a converged filter: the line is at -29 dB
    rng = np.random.default_rng(3)

    def frame(level_dbfs: float) -> np.ndarray:
        return np.round(rng.normal(0, 32768 * 10 ** (level_dbfs / 20), BLOCK)).astype(np.int16)

    def step(capture: np.ndarray, reference: np.ndarray) -> np.ndarray:
        return stage._double_talk(capture, reference, capture, capture.copy())

    for _ in range(50):  # a reply plays, then stops for far_silent_ms
        step(frame(-60), frame(-20))
    for _ in range(far_silent_ms // 10):
        step(frame(-80), np.zeros(BLOCK, np.int16))
    for level in ramp_dbfs:
        step(frame(-80), frame(level))
    for _ in range(far_playing_ms // 10):
        step(frame(-60), frame(-20))
    assert [_db(step(frame(-20), frame(-20))) > _db(np.zeros(BLOCK)) for _ in range(4)] == [True] * 4
    assert stage.near_end.near_end_frames >= 1
    passed = []
    for _ in range(20):
        quiet = frame(-55)
        passed.append(bool(np.array_equal(step(quiet, frame(-20)), quiet)))
    return passed


def test_near_end_frames_get_no_hangover_right_after_the_far_end_comes_back():
    # well into a reply: the 150 ms hangover passes the 15 frames after the voice
    assert _passed_after_a_voice(far_silent_ms=200, far_playing_ms=1000) == [True] * 15 + [False] * 5
    # 100 ms into a reply that started after silence: the filter's residual may be its own leak
    # there, so only frames judged near-end on their own pass (docs/echo.md, seed-5 replay)
    assert _passed_after_a_voice(far_silent_ms=200, far_playing_ms=100) == [False] * 20
    # a reply that fades in (Piper's first frames: -104 to -33 dBFS over 40 ms) starts one too: the
    # ramp's own frames used to keep it from counting as after a pause, so the guard never ran
    assert _passed_after_a_voice(far_silent_ms=200, far_playing_ms=100, ramp_dbfs=(-95, -88, -60, -44)) == [False] * 20
    # a reply resuming after a pause shorter than DOUBLE_TALK_PAUSE_MS is no onset
    assert _passed_after_a_voice(far_silent_ms=50, far_playing_ms=100) == [True] * 15 + [False] * 5


def test_a_frame_at_aec3s_floor_is_never_near_end():
    # AEC3's suppressor holds back a user under the echo, but it does not pass echo: where its
    # output sits at its floor (what it leaves of echo alone), the residual's "voice" is the
    # linear filter's own leak (docs/echo.md: the simulated self-interruptions)
    detector = NearEndDetector()
    rng = np.random.default_rng(4)
    for residual, aec in zip(-35.0 + rng.normal(0, 2, 150), -93.0 + rng.normal(0, 0.5, 150)):
        detector.learn(float(residual), float(aec))
    floor = detector.aec_floor_db
    assert floor is not None and -93.5 < floor < -92.0
    loud = detector.threshold_db + 6  # type: ignore[operator]
    assert [detector.is_near_end(loud, floor - 1) for _ in range(4)] == [False] * 4
    assert detector.vetoed_frames == 2  # the 3rd and 4th frames were confirmed, then vetoed
    assert detector.above  # still not echo alone: the caller does not learn from them
    assert detector.is_near_end(loud, -40.0)  # AEC3 lets something through: the residual decides
    assert detector.is_near_end(loud)  # no AEC3 level given: the residual decides
    far_over = detector.threshold_db + detector.aec_floor_bypass_db + 1  # type: ignore[operator]
    detector.reset()
    assert [detector.is_near_end(far_over, floor - 1) for _ in range(3)] == [False, False, True]  # not the filter's leak
    without = NearEndDetector(aec_floor_margin_db=None)
    for residual, aec in zip(-35.0 + rng.normal(0, 2, 150), -93.0 + rng.normal(0, 0.5, 150)):
        without.learn(float(residual), float(aec))
    assert [without.is_near_end(loud, floor - 1) for _ in range(3)] == [False, False, True]


def _band_noise(rng: np.random.Generator, level_dbfs: float, band_hz: tuple[float, float], n: int = BLOCK) -> np.ndarray:
    """Noise with its power in ``band_hz`` only, at ``level_dbfs`` RMS."""
    spectrum = np.fft.rfft(rng.normal(0, 1, n))
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    spectrum[(freqs < band_hz[0]) | (freqs > band_hz[1])] = 0
    noise = np.fft.irfft(spectrum, n)
    return noise * 32768 * 10 ** (level_dbfs / 20) / np.sqrt(np.mean(noise**2))


@pytest.mark.parametrize("high_band", [True, False])
def test_a_soft_consonant_under_a_loud_voiced_echo_is_heard_in_the_high_band(high_band: bool):
    # a reply whose echo (and the filter's leak) is mostly under 2 kHz, and a user starting with a
    # soft "s" in 2-4 kHz: in the whole speech band the leak hides them, in 2-4 kHz they stand out
    from realtime_pipeline.echo_cancel import EchoCancellation
    from realtime_pipeline.io.outputs import MemoryOutput

    stage = EchoCancellation(MemoryOutput(RATE), double_talk=True, high_band=high_band)
    stage.linear = _PassThrough()  # the residual is the microphone: the leak and the user below
    rng = np.random.default_rng(5)

    def far() -> np.ndarray:
        return _band_noise(rng, -20, (200, 1500)) + _band_noise(rng, -40, (2000, 4000))

    def step(capture: np.ndarray, reference: np.ndarray, aec_removed_db: float) -> np.ndarray:
        capture, reference = np.round(capture).astype(np.int16), np.round(reference).astype(np.int16)
        cancelled = np.round(capture * 10 ** (-aec_removed_db / 20)).astype(np.int16)  # AEC3's output
        return stage._double_talk(capture, reference, cancelled, capture.copy())

    def leak(reference: np.ndarray) -> np.ndarray:  # what a filter removing 30 dB leaves
        return reference * 10 ** (-30 / 20)

    for _ in range(200):  # echo alone: both lines are drawn, AEC3 removes 40 dB
        reference = far()
        step(leak(reference) + rng.normal(0, 1, BLOCK), reference, 40.0)
    assert stage.near_end is not None and stage.near_end.threshold_db is not None
    assert stage.near_end.near_end_frames == 0 and stage.high_band_frames == 0  # no false alarm on the echo
    passed = []
    for _ in range(10):  # the user: -50 dBFS in 2-4 kHz, 20 dB under the leak's whole-band level
        reference = far()
        capture = leak(reference) + _band_noise(rng, -50, (2000, 4000))
        out = step(capture, reference, 10.0)  # AEC3 lets a little through: no veto
        passed.append(bool(np.array_equal(out, np.round(capture).astype(np.int16))))
    assert stage.near_end.near_end_frames == 0  # the speech band's detector never hears them
    if high_band:
        assert stage.near_end_high is not None
        assert passed == [False, False] + [True] * 8  # three frames over the line confirm it
        assert stage.high_band_frames == 8
    else:
        assert stage.near_end_high is None and passed == [False] * 10
    from realtime_pipeline.echo_cancel import stage_summary

    summary = stage_summary(stage)  # what the benchmarks report of the two detectors
    assert summary["double_talk_high_band_frames"] == (8 if high_band else None)
    assert summary["double_talk_high_band_vetoed_frames"] == (0 if high_band else None)  # AEC3 let the user through


def test_the_noise_floor_is_a_low_percentile_of_each_bands_level():
    floor = BandNoiseFloor(2, min_frames=50)
    rng = np.random.default_rng(8)
    assert floor.quiet([-90.0, -90.0]) == [False, False] and floor.floor_db is None  # nothing learnt: no guard
    for _ in range(400):  # the room's noise, and now and then a word (a quarter of the frames)
        word = rng.random() < 0.25
        floor.update([-80.0 + rng.normal(0, 1) + (40 if word else 0), -85.0 + rng.normal(0, 1) + (30 if word else 0)])
    speech_band, high_band = floor.floor_db  # type: ignore[misc]
    assert -82.5 < speech_band < -80.0 and -87.5 < high_band < -85.0  # the noise's, not the words'
    assert floor.quiet([-76.0, -60.0]) == [True, False]  # 4 dB over the noise: no evidence; 25 dB: a voice
    with pytest.raises(ValueError, match="2 band levels"):
        floor.update([-80.0])
    with pytest.raises(ValueError, match="bands"):
        BandNoiseFloor(0)


@pytest.mark.parametrize("guard", [True, False])
def test_the_rooms_noise_under_a_reply_with_little_high_band_is_no_voice(guard: bool):
    # the seed-4 pause of echo_sim --noise-dbfs -78: a reply with little energy over 2 kHz, white
    # noise at the microphone, and the high band's line (the residual against the far end's level
    # there) drawn while the far end had more of it; when the reply's high band goes quieter still,
    # the noise alone stands over that line. At the band's noise floor it is no voice.
    from realtime_pipeline.echo_cancel import EchoCancellation
    from realtime_pipeline.io.outputs import MemoryOutput

    stage = EchoCancellation(MemoryOutput(RATE), double_talk=True)
    stage.linear = _PassThrough()  # the residual is the microphone: the leak and the noise below
    if not guard:
        stage.noise_floor.margin_db = float("-inf")
    rng = np.random.default_rng(9)

    def step(capture: np.ndarray, reference: np.ndarray, aec_removed_db: float) -> np.ndarray:
        capture, reference = np.round(capture).astype(np.int16), np.round(reference).astype(np.int16)
        cancelled = np.round(capture * 10 ** (-aec_removed_db / 20)).astype(np.int16)
        return stage._double_talk(capture, reference, cancelled, capture.copy())

    def microphone(reference: np.ndarray) -> np.ndarray:  # the filter's leak, 40 dB down, and -78 dBFS of noise
        return reference * 10 ** (-40 / 20) + rng.normal(0, 32768 * 10 ** (-78 / 20), BLOCK)

    for _ in range(300):  # echo alone: both lines drawn, the high band's with 2-4 kHz at -50 dBFS
        reference = _band_noise(rng, -20, (200, 1500)) + _band_noise(rng, -50, (2000, 4000))
        step(microphone(reference), reference, 30.0)
    assert stage.near_end_high is not None and stage.near_end_high.threshold_db is not None
    assert stage.noise_floor.floor_db is not None
    for _ in range(80):  # the reply goes on with 20 dB less over 2 kHz: only the noise is there
        reference = _band_noise(rng, -20, (200, 1500)) + _band_noise(rng, -70, (2000, 4000))
        step(microphone(reference), reference, 30.0)
    if guard:
        assert stage.high_band_frames == 0 and stage.double_talk_frames == 0
    else:  # what the guard is for: the noise alone passes as a voice
        assert stage.high_band_frames > 20  # once the louder frames left the far end's last 400 ms
    passed_before = stage.double_talk_frames
    for _ in range(10):  # a user's soft "s", 25 dB over the noise in 2-4 kHz, still passes
        reference = _band_noise(rng, -20, (200, 1500)) + _band_noise(rng, -70, (2000, 4000))
        step(microphone(reference) + _band_noise(rng, -60, (2000, 4000)), reference, 10.0)
    assert stage.double_talk_frames - passed_before >= 8

