"""The start sound (``echo_calibration``) without models: its signal, its schedule, and the
double-talk filter it teaches in a synthetic room (the real AEC3 and real replies:
tests/test_echo_real.py)."""

from __future__ import annotations

import numpy as np
import pytest

from realtime_pipeline.echo_calibration import (CALIBRATION_DBFS, CALIBRATION_MIN_FRAMES, CALIBRATION_MS,
                                                 CALIBRATION_TAIL_MS, CALIBRATION_WAIT_MS, CalibrationSchedule,
                                                 StartSoundFit, calibration_sound)
from realtime_pipeline.double_talk import HIGH_BAND_HZ, SPEECH_BAND_HZ
from realtime_pipeline.echo_path_fit import FIT_GAIN_DB
from realtime_pipeline.io.echo_room import synthetic_impulse_response


def test_the_sound_is_soft_broadband_noise_that_fades_in_and_out() -> None:
    rate = 22050
    sound = calibration_sound(rate)
    assert sound.dtype == np.int16 and len(sound) == rate * CALIBRATION_MS // 1000
    level_dbfs = 20 * np.log10(np.sqrt(np.mean(np.square(sound.astype(np.float64)))) / 32768)
    assert abs(level_dbfs - CALIBRATION_DBFS) < 0.5
    assert abs(int(sound[0])) < 50 and abs(int(sound[-1])) < 50  # fades: no click
    spectrum = np.abs(np.fft.rfft(sound.astype(np.float64))) ** 2
    frequencies = np.fft.rfftfreq(len(sound), 1 / rate)
    in_band = spectrum[(frequencies >= 100) & (frequencies <= 7500)].sum()
    assert in_band > 0.99 * spectrum.sum()
    # energy in every octave of the band: what a room's echo path is learnt over
    for low in (125, 250, 500, 1000, 2000, 4000):
        assert spectrum[(frequencies >= low) & (frequencies < 2 * low)].sum() > 1e-3 * spectrum.sum(), low
    assert np.array_equal(calibration_sound(rate), sound)  # the same sound every session
    with pytest.raises(ValueError, match="more than 100 ms"):
        calibration_sound(rate, duration_ms=50)


def test_the_schedule_ends_after_the_sound_and_its_echo_or_when_nothing_plays() -> None:
    schedule = CalibrationSchedule()
    frames = (CALIBRATION_MS + CALIBRATION_TAIL_MS) // 10
    assert all(schedule.step(False) for _ in range(5))  # the output has not started yet
    steps = [schedule.step(True) for _ in range(CALIBRATION_MS // 10)] + [schedule.step(False) for _ in range(frames)]
    assert steps.index(False) == frames - 1  # from the first audible frame: the sound, then its tail
    assert schedule.over and schedule.played and not schedule.step(True)

    silent = CalibrationSchedule()
    steps = [silent.step(False) for _ in range(CALIBRATION_WAIT_MS // 10 + 5)]
    assert steps.index(False) == CALIBRATION_WAIT_MS // 10 - 1 and silent.over and not silent.played


RATE, BLOCK, TAIL = 16000, 160, 6400


def _room(signal: np.ndarray, *, delay_ms: int = 100, rt60_ms: float = 300.0) -> np.ndarray:
    """``signal`` through the echo room's synthetic path (0 dB, RT60 ``rt60_ms``) ``delay_ms`` later."""
    path = np.concatenate([np.zeros(delay_ms * RATE // 1000), synthetic_impulse_response(rt60_ms=rt60_ms, seed=0)])
    return np.convolve(signal, path)[: len(signal)]


def _echo_left_db(taps: np.ndarray) -> float:
    """How far under the echo ``taps`` leave another signal's (another draw of the sound's noise, 2 s), in dB."""
    other = calibration_sound(RATE, duration_ms=2000, seed=7).astype(np.float64)
    echo = _room(other)
    left = echo - np.convolve(other, taps)[: len(other)]
    return float(10 * np.log10(np.sum(left[RATE // 2 :] ** 2) / np.sum(echo[RATE // 2 :] ** 2)))


def _fed(fit: StartSoundFit, *, echo=lambda block: True, rt60_ms: float = 300.0) -> StartSoundFit:
    sound = calibration_sound(RATE).astype(np.float64)
    far = np.concatenate([sound, np.zeros(CALIBRATION_TAIL_MS * RATE // 1000)])
    mic = _room(far, rt60_ms=rt60_ms)
    for i in range(0, len(far) // BLOCK * BLOCK, BLOCK):
        fit.add(far[i : i + BLOCK], mic[i : i + BLOCK], echo(i // BLOCK))
    return fit


def test_one_fit_on_the_whole_sound_learns_the_room() -> None:
    fit = _fed(StartSoundFit(tail=TAIL, block=BLOCK, sample_rate_hz=RATE))
    taps = fit.fit(np.zeros(TAIL))  # the filter has learnt nothing yet
    assert taps is not None and len(taps) == TAIL and fit.gain_db is not None and fit.gain_db > 30.0
    assert np.all(taps[: 100 * RATE // 1000 - BLOCK // 5] == 0.0)  # from 2 ms before the echo's delay
    # it learnt the room, not the sound: another signal's echo is removed as well
    assert _echo_left_db(taps) < -30.0, _echo_left_db(taps)
    # a filter that already knows the room is kept: the fit must do FIT_GAIN_DB better
    known = fit.fit(taps)
    assert known is None and fit.gain_db is not None and fit.gain_db < FIT_GAIN_DB


def test_a_fit_spoilt_by_a_voice_over_the_sound_is_refused() -> None:
    # a user louder than the echo over the sound's first 600 ms. Fitted on those frames too, the
    # voice is noise to the fit; left out (the gate passed them), the fit's frames start mid-sound,
    # which the autocorrelation method fits badly (the reference before them is windowed out, its
    # echo is not). Either way it does not beat a filter that has learnt nothing by FIT_GAIN_DB, and
    # the filter is kept (the NLMS then learns from the replies, as without the sound).
    loud = np.random.default_rng(3).normal(0.0, 8000.0, 60 * BLOCK)
    for voice_is_echo in (True, False):
        fit = StartSoundFit(tail=TAIL, block=BLOCK, sample_rate_hz=RATE)
        sound = calibration_sound(RATE).astype(np.float64)
        far = np.concatenate([sound, np.zeros(CALIBRATION_TAIL_MS * RATE // 1000)])
        mic = _room(far)
        mic[: len(loud)] += loud
        for i in range(0, len(far) // BLOCK * BLOCK, BLOCK):
            fit.add(far[i : i + BLOCK], mic[i : i + BLOCK], voice_is_echo or i >= len(loud))
        assert fit.fit(np.zeros(TAIL)) is None, voice_is_echo
        assert fit.gain_db is not None and fit.gain_db < FIT_GAIN_DB, (voice_is_echo, fit.gain_db)
        assert fit.leak_db([SPEECH_BAND_HZ], 40) is None  # no fit installed, no leak to keep the line over


def test_the_fit_says_how_much_of_the_echo_it_leaves_where_the_room_outlasts_its_fir() -> None:
    # what the near-end detector's line is kept over after the fit (START_LEAK_MARGIN_DB): in a room
    # whose reverberation the 250 ms FIR holds, little; in one that rings on (RT60 1 s), much more
    bands = [SPEECH_BAND_HZ, HIGH_BAND_HZ]
    leaks = {}
    for rt60_ms in (300.0, 1000.0):
        fit = _fed(StartSoundFit(tail=TAIL, block=BLOCK, sample_rate_hz=RATE), rt60_ms=rt60_ms)
        assert fit.leak_db(bands, 40) is None  # not fitted yet
        assert fit.fit(np.zeros(TAIL)) is not None
        leaks[rt60_ms] = fit.leak_db(bands, 40)
        assert leaks[rt60_ms] is not None and len(leaks[rt60_ms]) == 2
    assert max(leaks[300.0]) < -45.0, leaks  # measured -52 / -51 dB
    assert min(leaks[1000.0]) > -30.0, leaks  # measured -22 / -21 dB


def test_no_fit_on_too_little_echo_and_clear_errors() -> None:
    few = _fed(StartSoundFit(tail=TAIL, block=BLOCK, sample_rate_hz=RATE), echo=lambda block: block < CALIBRATION_MIN_FRAMES - 1)
    assert few.echo_frames == CALIBRATION_MIN_FRAMES - 1
    assert few.fit(np.zeros(TAIL)) is None and few.gain_db is None
    fit = _fed(StartSoundFit(tail=TAIL, block=BLOCK, sample_rate_hz=RATE))
    with pytest.raises(ValueError, match="6400 running taps"):
        fit.fit(np.zeros(100))
    with pytest.raises(ValueError, match="blocks of 160"):
        fit.add(np.zeros(100), np.zeros(100), True)
    with pytest.raises(ValueError, match="whole blocks"):
        StartSoundFit(tail=1000, block=BLOCK, sample_rate_hz=RATE)
