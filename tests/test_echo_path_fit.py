"""Least-squares fits of the echo path (``echo_path_fit``), without models: synthetic replies in a
synthetic room, cut short by silences as a user interrupting every reply would."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from realtime_pipeline.double_talk import LinearEchoFilter, NearEndDetector
from realtime_pipeline.echo_path_fit import EchoPathFit, echo_delay_samples, least_squares_fir, toeplitz_solve
from realtime_pipeline.io.echo_room import synthetic_impulse_response

RATE = 16000
BLOCK = 160
TAIL = LinearEchoFilter().partitions * BLOCK


def _db(signal: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(np.square(signal.astype(np.float64))) + 1e-12))


def _echo_path(delay_ms: int = 100) -> np.ndarray:
    return np.concatenate([np.zeros(delay_ms * RATE // 1000), synthetic_impulse_response(rt60_ms=300, length_ms=250)])


def _session(rng: np.random.Generator, replies: int, *, reply_s: float = 0.5, gap_s: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Replies of ``reply_s`` (noise shaped like speech: bursts) with silences between them, and
    what a microphone hears of them in the room (0 dB)."""
    pieces = []
    for _ in range(replies):
        reply = rng.normal(0, 3000, int(reply_s * RATE)) * np.repeat(rng.uniform(0.2, 1.0, int(reply_s * 50)), RATE // 50)
        pieces += [reply, np.zeros(int(gap_s * RATE))]
    reference = np.concatenate(pieces)
    capture = np.convolve(reference, _echo_path())[: len(reference)] + rng.normal(0, 3, len(reference))
    return reference, capture


def _feed(fit: EchoPathFit, linear: LinearEchoFilter, reference: np.ndarray, capture: np.ndarray, *, nlms: bool = True) -> int:
    """Blocks through the filter and the fit, as the echo stage does; the installs."""
    installs = 0
    audible = 32768 * 10 ** (-60 / 20)
    for i in range(0, len(reference) // BLOCK * BLOCK, BLOCK):
        x, y = reference[i : i + BLOCK], capture[i : i + BLOCK]
        residual = linear.cancel(y, x)
        alone = bool(np.sqrt(np.mean(np.square(y))) > audible)  # the user never speaks here
        if alone and nlms:
            linear.adapt(residual)
        taps = fit.add(x, y, residual, alone)
        if taps is not None:
            linear.set_taps(taps)
            installs += 1
    return installs


def _erle_db(linear: LinearEchoFilter, rng: np.random.Generator) -> float:
    """What the filter removes from a fresh reply in the same room, not adapting."""
    reference, capture = _session(rng, 1, reply_s=1.0, gap_s=0.5)
    residual = np.concatenate([linear.cancel(capture[i : i + BLOCK], reference[i : i + BLOCK])
                               for i in range(0, len(reference) // BLOCK * BLOCK, BLOCK)])
    return _db(capture) - _db(residual)


def test_the_toeplitz_solver_matches_a_direct_solve():
    rng = np.random.default_rng(0)
    signal = rng.normal(0, 1, 4000)
    lags = 64
    autocorrelation = np.array([signal[k:] @ signal[: len(signal) - k] for k in range(lags)])
    rhs = rng.normal(0, 1, lags)
    matrix = np.array([[autocorrelation[abs(i - j)] for j in range(lags)] for i in range(lags)])
    direct = np.linalg.solve(matrix + 1e-3 * autocorrelation[0] * np.eye(lags), rhs)
    assert np.allclose(toeplitz_solve(autocorrelation, rhs, iterations=200), direct, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="rhs"):
        toeplitz_solve(autocorrelation, rhs[:10])


def test_the_delay_and_the_path_are_found():
    rng = np.random.default_rng(1)
    far = rng.normal(0.0, 3000.0, 16_000)
    path = np.array([0.0, 0.8, 0.0, -0.3, 0.1])
    capture = np.convolve(np.concatenate([np.zeros(400), far]), path)[: len(far)]
    assert echo_delay_samples(far, capture, 800) == 401  # the 400-sample delay plus the path's leading zero tap
    fir = least_squares_fir(far, capture, 399, 8)
    assert np.allclose(fir[:5], [0.0, 0.0, 0.8, 0.0, -0.3], atol=0.01)
    mask = np.ones(len(far))
    mask[8000:] = 0.0  # only the first half: the same path
    capture[8000:] += rng.normal(0.0, 3000.0, 8000)  # a voice where the mask is 0 changes nothing
    assert np.allclose(least_squares_fir(far, capture, 399, 8, mask=mask)[:5], [0.0, 0.0, 0.8, 0.0, -0.3], atol=0.01)


def test_short_replies_teach_the_fit_the_room_where_the_nlms_filter_learns_little():
    """Three replies of 0.5 s, each cut short: the NLMS filter alone removes a few dB; with the
    fits over all three replies (the silences between them cut out) it removes far more."""
    rng = np.random.default_rng(1)
    reference, capture = _session(rng, 3)
    alone = LinearEchoFilter()
    for i in range(0, len(reference) // BLOCK * BLOCK, BLOCK):
        residual = alone.cancel(capture[i : i + BLOCK], reference[i : i + BLOCK])
        if np.any(reference[max(0, i - 1600) : i + BLOCK]):
            alone.adapt(residual)
    fitted = LinearEchoFilter()
    fit = EchoPathFit(tail=TAIL)
    installs = _feed(fit, fitted, reference, capture)
    nlms_db, fit_db = _erle_db(alone, np.random.default_rng(9)), _erle_db(fitted, np.random.default_rng(9))
    assert installs >= 1 and fit.fits >= installs
    assert fit_db > 20.0, (nlms_db, fit_db)
    assert fit_db > nlms_db + 10.0, (nlms_db, fit_db)


def test_the_silences_between_replies_are_cut_out_exactly():
    """The same replies with 0.5 s or 5 s of silence between them give the same fits: only the
    audible stretches and a tail of silence before each are kept."""
    fits = []
    for gap_s in (0.5, 5.0):
        reference, capture = _session(np.random.default_rng(2), 3, gap_s=gap_s)
        linear = LinearEchoFilter()
        _feed(EchoPathFit(tail=TAIL), linear, reference, capture, nlms=False)
        fits.append(np.fft.irfft(linear._weights, axis=1)[:, :BLOCK].ravel())
    assert np.allclose(fits[0], fits[1], atol=1e-6 * np.abs(fits[0]).max())
    assert np.abs(fits[0]).max() > 0.1  # something was fitted (the direct path's tap is ~0.3-1)


def test_a_fit_is_not_installed_unless_it_beats_the_running_filter():
    rng = np.random.default_rng(3)
    reference, capture = _session(rng, 4)
    linear = LinearEchoFilter()
    response = _echo_path()
    taps = np.zeros(TAIL)
    taps[: len(response)] = response
    linear.set_taps(taps)  # the true echo path: nothing to beat
    fit = EchoPathFit(tail=TAIL)
    assert _feed(fit, linear, reference, capture, nlms=False) == 0
    assert fit.fits >= 3 and fit.installs == 0


def test_background_fits_arrive_on_a_later_block_and_close_ends_the_thread():
    rng = np.random.default_rng(4)
    reference, capture = _session(rng, 2)
    fit = EchoPathFit(tail=TAIL, background=True)
    linear = LinearEchoFilter()
    before = {t.name for t in threading.enumerate()}
    try:
        installs = _feed(fit, linear, reference, capture)
        # the last fits may still run; a later block collects them
        for _ in range(200):
            if fit._pending is None:
                break
            threading.Event().wait(0.01)
            if fit.add(np.zeros(BLOCK), np.zeros(BLOCK), np.zeros(BLOCK), False) is not None:
                installs += 1
        assert installs >= 1 and fit.fits >= installs
        assert any(t.name.startswith("echo-path-fit") for t in threading.enumerate())
    finally:
        fit.close()
    assert {t.name for t in threading.enumerate() if t.name.startswith("echo-path-fit")} <= before


def test_the_fit_checks_its_blocks():
    with pytest.raises(ValueError, match="whole blocks"):
        EchoPathFit(tail=TAIL + 1)
    with pytest.raises(ValueError, match="blocks of 160"):
        EchoPathFit(tail=TAIL).add(np.zeros(320), np.zeros(320), np.zeros(320), True)


def test_after_a_fit_the_detector_draws_its_line_afresh_and_sooner():
    detector = NearEndDetector(min_frames=10, history=50, margin_db=6.0)
    for _ in range(10):
        detector.learn(-20.0)
    assert detector.threshold_db == pytest.approx(-14.0)  # p90 of -20 plus the 6 dB margin
    detector.relearn(5)
    assert detector.threshold_db is None  # the former filter's line says nothing of the new one
    for _ in range(4):
        detector.learn(-30.0)
        assert detector.threshold_db is None and not detector.is_near_end(0.0)
    detector.learn(-30.0)
    assert detector.threshold_db == pytest.approx(-24.0)  # from the new filter's 5 frames, not 10
    with pytest.raises(ValueError, match="min_frames"):
        detector.relearn(0)


def test_the_line_stays_over_what_the_new_filter_was_measured_to_leave():
    # the start sound's fit measured its leak on steady noise; a reply's first frames leak less
    # (their reverberation has not built up), so the line drawn from them stays over the leak,
    # and so does the line drawn later from a full history (a reverberant room's leak comes back)
    detector = NearEndDetector(min_frames=10, history=20, margin_db=4.0, lowest_threshold_db=-40.0)
    detector.relearn(5, leak_floor_db=-30.0)
    for _ in range(4):
        detector.learn(-50.0)
    assert detector.threshold_db is None  # no line before 5 frames, floor or not
    detector.learn(-50.0)
    assert detector.threshold_db == pytest.approx(-30.0)  # not -46 (p90 + 4) nor the lowest point, -40
    assert not detector.is_near_end(-31.0)
    for _ in range(40):
        detector.learn(-50.0)
    assert detector.threshold_db == pytest.approx(-30.0)  # a full history of the new filter's echo: still
    for _ in range(20):
        detector.learn(-25.0)
    assert detector.threshold_db == pytest.approx(-21.0)  # the history's own line, where it is higher
    # a filter replaced without a measured leak clears it
    detector.relearn(5)
    for _ in range(5):
        detector.learn(-50.0)
    assert detector.threshold_db == pytest.approx(-40.0)
