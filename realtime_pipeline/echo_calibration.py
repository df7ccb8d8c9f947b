"""The start sound: the echo canceller learns the room before the first reply.

A session's first replies are where barge-in under echo is slow: the double-talk filter
(:mod:`.double_talk`) has heard no echo yet, and a user who interrupts 400 ms into a reply
leaves it ~0.3 s of echo alone per reply (in twelve live barge-in runs the first four
interruptions took a median 353 ms, the later ones 123 ms). Speech is also a poor signal to learn a room from
(its spectrum is coloured and keeps changing); noise is the textbook one. So when the session
starts the echo stage plays a short, soft noise (pink above 100 Hz, fades in and out: a
breath-like "shh") and fits the echo path on it by least squares
(:class:`~.echo_path_fit.EchoPathFit`), which then starts the double-talk filter.

Measured (docs/echo.md, "The start sound"): offline (``python -m benchmarks.echo_sim --long-every 0``,
8 sessions) barge-in p50 / p95 214 / 1109 ms without it, 115 / 415 ms with it, the first two
interruptions of a session 300 → 142 ms (median), no self-interruption either way; live (twelve
barge-in runs each) the first four 353 → 186 ms, p95 578 → 534 ms, the users' WER 0.266 → 0.215
(0.180 without echo), no self-interruption either way. The NLMS
alone on 1-2 s of this noise removes only 4-13 dB; a least-squares fit on 0.3 s of it more than 20 dB.

It also lets AEC3 hear the room before the first reply: without it AEC3 let that reply's echo
through often enough for the VAD to pause it (``python -m benchmarks.first_reply``, 16 Piper replies
in each of three rooms: 5 of 48 first replies without it, none with it, 4 of the 5 in the reverberant
room; after a user's first turn, spoken over the sound or not, 9 of 96 against 1 of 96; docs/echo.md, "On by default again").

:class:`CalibrationSchedule` says, frame by frame on the microphone's clock, when the sound and
its echo are over (the stage then stops fitting unless ``echo_path_fit`` asked for fits all
along). A user who talks over it is heard only if louder than its echo (the stage is half duplex
meanwhile); a fit on the sound with a voice over it did not beat the filter in the case measured
(tests/test_echo_real.py), and the session then learns from the replies, as without it.
"""

from __future__ import annotations

import numpy as np

#: The sound's length: 800 ms left the detector 50 frames of echo alone after the fit's first
#: 300 ms (500 ms left too few: its line was not drawn before the first reply).
CALIBRATION_MS = 800
#: Its level (RMS): under a reply's (Piper's voice is -20 to -16 dBFS), over a quiet room's noise.
CALIBRATION_DBFS = -26.0
#: After the sound, the echo's tail: the longest delay fitted plus the room's reverberation.
CALIBRATION_TAIL_MS = 400
#: Give up waiting for the sound to play (an output that plays nothing) after this long.
CALIBRATION_WAIT_MS = 3000
#: Band of the noise: below 100 Hz a laptop speaker plays nothing, above 7.5 kHz the 16 kHz input hears nothing.
CALIBRATION_BAND_HZ = (100.0, 7500.0)
FADE_MS = 50


def calibration_sound(sample_rate_hz: int, *, duration_ms: int = CALIBRATION_MS, level_dbfs: float = CALIBRATION_DBFS,
                      seed: int = 0) -> np.ndarray:
    """The start sound as int16 at ``sample_rate_hz``: pink noise in :data:`CALIBRATION_BAND_HZ`,
    ``level_dbfs`` RMS, :data:`FADE_MS` fades (no click)."""
    if sample_rate_hz <= 0 or duration_ms <= 2 * FADE_MS:
        raise ValueError(f"need a positive rate and more than {2 * FADE_MS} ms, got {sample_rate_hz} Hz, {duration_ms} ms")
    count = sample_rate_hz * duration_ms // 1000
    spectrum = np.fft.rfft(np.random.default_rng(seed).normal(size=count))
    frequencies = np.fft.rfftfreq(count, 1.0 / sample_rate_hz)
    low, high = CALIBRATION_BAND_HZ
    spectrum *= np.where((frequencies >= low) & (frequencies <= high), 1.0 / np.sqrt(np.maximum(frequencies, low) / low), 0.0)
    noise = np.fft.irfft(spectrum, count)
    fade = sample_rate_hz * FADE_MS // 1000
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, fade))
    noise[:fade] *= ramp
    noise[-fade:] *= ramp[::-1]
    noise *= 32768.0 * 10 ** (level_dbfs / 20) / np.sqrt(np.mean(noise**2))
    return np.clip(np.round(noise), -32768, 32767).astype(np.int16)


class CalibrationSchedule:
    """When the start sound and its echo are over, on the microphone's clock (10 ms frames).

    Over once :data:`CALIBRATION_TAIL_MS` after the sound's length has passed from its first
    audible frame, or after :data:`CALIBRATION_WAIT_MS` if nothing ever played."""

    def __init__(self, *, sound_ms: int = CALIBRATION_MS, tail_ms: int = CALIBRATION_TAIL_MS,
                 wait_ms: int = CALIBRATION_WAIT_MS, frame_ms: int = 10) -> None:
        self.length_frames = (sound_ms + tail_ms) // frame_ms
        self.wait_frames = wait_ms // frame_ms
        self._frames = 0
        self._since_audible: int | None = None
        self.over = False
        #: The sound was heard in the reference (it played).
        self.played = False

    def step(self, far_audible: bool) -> bool:
        """One frame; True while calibrating."""
        if self.over:
            return False
        self._frames += 1
        if self._since_audible is None and far_audible:
            self._since_audible = 0
            self.played = True
        if self._since_audible is not None:
            self._since_audible += 1
            self.over = self._since_audible >= self.length_frames
        else:
            self.over = self._frames >= self.wait_frames
        return not self.over
