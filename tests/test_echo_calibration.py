"""The start sound (``echo_calibration``) without models: its signal, its schedule, and the
double-talk filter it teaches in a synthetic room (the real AEC3 and real replies:
tests/test_echo_real.py)."""

from __future__ import annotations

import numpy as np
import pytest

from realtime_pipeline.echo_calibration import (CALIBRATION_DBFS, CALIBRATION_MS, CALIBRATION_TAIL_MS,
                                                 CALIBRATION_WAIT_MS, CalibrationSchedule, calibration_sound)


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
