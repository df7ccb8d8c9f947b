"""Least-squares fits of the echo path over all the echo a session has heard.

The double-talk filter (:class:`~.double_talk.LinearEchoFilter`, NLMS) learns from echo alone
one 10 ms block at a time. When users interrupt early, that is little: in the barge-in
benchmark a user starts 400 ms into every reply, so each reply gives ~0.5 s of echo alone, and
after 12 replies the NLMS still removed only 3-10 dB (``python -m benchmarks.echo_sim
--long-every 0``, the 90th percentile of its residual on echo alone): the near-end detector,
which waits for 12 dB, never drew its line, and the users waited for AEC3's suppressor. A
least-squares fit of the same data removes 11-13 dB after 0.5 s of reply and 24-38 dB after
0.75 s (``python -m benchmarks.echo_convergence``).

:class:`EchoPathFit` keeps the far end's audible stretches with their echo tail, the silences
between replies cut out (exact: before each stretch the filter sees a whole tail of silence),
up to :data:`FIT_WINDOW_S`, and refits as echo alone comes in: the echo's delay by GCC-PHAT,
then an FIR from just before it by least squares (a Toeplitz system solved by conjugate
gradients with FFT products, 15-70 ms for 8 s of audio). A fit that beats the running filter
on the last 100 ms of echo alone, which it has not seen, by :data:`FIT_GAIN_DB` replaces the
filter's weights; the NLMS goes on from there. Fits run on a worker thread when ``background``
(the stage's own run: too long for the event loop), inline otherwise (offline, deterministic).

Opt-in (``EchoCancellation(echo_path_fit=True)``, ``echo_sim --echo-path-fit``): live, barge-in
p50 / p95 fell from 363 / 1561 to 213 / 442 ms on the same six runs, but a reply paused on its
own echo once in 84 attempts against none in 72 (docs/echo.md). A user learnt as echo while
AEC3's suppressor still held them back is in the fits' data too; that is the next thing to fix.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from .audio import INPUT_SAMPLE_RATE_HZ

#: The fitted FIR's length from just before the echo's delay: the direct path and the loudest
#: reverberation (150 ms: 24-38 dB after 0.75 s of reply against 19-25 dB at 100 ms).
FIT_FIR_MS = 150
#: The longest echo delay looked for.
FIT_MAX_DELAY_MS = 250
#: The audible stretches kept (older echo is in the running filter's weights already).
FIT_WINDOW_S = 8.0
#: The first fit after this much echo alone, then one per :data:`FIT_REFIT_MS` of it until
#: :data:`FIT_FAST_S`, then one per :data:`FIT_LATE_REFIT_MS`.
FIT_FIRST_MS = 300
FIT_REFIT_MS = 100
FIT_FAST_S = 2.0
FIT_LATE_REFIT_MS = 500
#: The held-out echo alone a fit is judged on, and by how much it must beat the running filter.
FIT_HELD_OUT_MS = 100
FIT_GAIN_DB = 3.0
#: After a fit replaced the filter, the near-end detector draws its line afresh from this many
#: frames of echo alone (no line meanwhile: ``NearEndDetector.relearn``): a fit changes the filter at once.
FIT_DETECTOR_FRAMES = 30
#: Default of ``audible_dbfs``: a reference block quieter than this is silence (the echo stage
#: passes its own ``GATE_AUDIBLE_DBFS``, the same -60 dBFS).
AUDIBLE_DBFS = -60.0


def _correlation(a: np.ndarray, b: np.ndarray, lags: int) -> np.ndarray:
    """``sum_n a[n] b[n - k]`` for ``k`` in ``0..lags-1``."""
    size = 1 << int(np.ceil(np.log2(len(a) + lags)))
    return np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size)), size)[:lags]


def toeplitz_solve(autocorrelation: np.ndarray, rhs: np.ndarray, *, guess: np.ndarray | None = None,
                   iterations: int = 60, regularization: float = 1e-3) -> np.ndarray:
    """Solves ``(T + regularization * T[0,0] * I) h = rhs`` for the symmetric Toeplitz ``T`` of
    ``autocorrelation`` by conjugate gradients, its products by FFT (a circulant embedding):
    ~13 ms for 2400 taps against ~180 ms for ``numpy.linalg.solve``."""
    n = len(autocorrelation)
    if len(rhs) != n:
        raise ValueError(f"rhs has {len(rhs)} values for {n} lags")
    size = 1 << int(np.ceil(np.log2(2 * n)))
    column = np.zeros(size)
    column[:n] = autocorrelation
    column[size - n + 1 :] = autocorrelation[:0:-1]
    spectrum = np.fft.rfft(column)
    diagonal = regularization * autocorrelation[0] + 1e-9

    def product(v: np.ndarray) -> np.ndarray:
        return np.fft.irfft(spectrum * np.fft.rfft(v, size), size)[:n] + diagonal * v

    h = np.zeros(n) if guess is None else guess.copy()
    r = rhs - product(h)
    p = r.copy()
    rs = float(r @ r)
    stop = 1e-10 * float(rhs @ rhs)
    for _ in range(iterations):
        if rs <= stop:
            break
        q = product(p)
        alpha = rs / float(p @ q)
        h += alpha * p
        r -= alpha * q
        rs_next = float(r @ r)
        p = r + (rs_next / rs) * p
        rs = rs_next
    return h


def echo_delay_samples(reference: np.ndarray, capture: np.ndarray, max_delay: int) -> int:
    """The lag (0..``max_delay``-1) at which ``capture`` best matches ``reference`` (GCC-PHAT)."""
    size = 1 << int(np.ceil(np.log2(len(reference) + max_delay)))
    cross = np.fft.rfft(capture, size) * np.conj(np.fft.rfft(reference, size))
    cross /= np.abs(cross) + 1e-9
    return int(np.argmax(np.abs(np.fft.irfft(cross, size)[:max_delay])))


def least_squares_fir(reference: np.ndarray, capture: np.ndarray, start: int, taps: int, *,
                      mask: np.ndarray | None = None, guess: np.ndarray | None = None) -> np.ndarray:
    """FIR ``h`` with ``capture[n] ~ sum_k h[k] reference[n - start - k]`` over the samples where
    ``mask`` is 1 (all by default), by the autocorrelation method (:func:`toeplitz_solve`)."""
    weights = np.ones(len(capture)) if mask is None else mask
    shifted = np.concatenate([np.zeros(start), reference])[: len(capture)]
    weighted = shifted * weights
    return toeplitz_solve(_correlation(weighted, weighted, taps), _correlation(capture * weights, shifted, taps), guess=guess)


def fit_echo_path(reference: np.ndarray, capture: np.ndarray, mask: np.ndarray, *, fir: int, tail: int, max_delay: int,
                  lead: int, guess: tuple[int, np.ndarray] | None = None) -> tuple[int, np.ndarray] | None:
    """The echo path by least squares where ``mask`` is 1: its delay by GCC-PHAT
    (:func:`echo_delay_samples`), then an FIR of up to ``fir`` taps from ``lead`` samples before it,
    ending within ``tail`` (:func:`least_squares_fir`; ``guess``, a former ``(start, taps)``, starts
    the solver if it has the same start and length). Returns ``(start, taps)``, or None if the delay
    leaves no room in the tail."""
    start = max(0, echo_delay_samples(reference, capture * mask, max_delay) - lead)
    taps = min(fir, tail - start)
    if taps <= 0:
        return None
    former = guess[1] if guess is not None and guess[0] == start and len(guess[1]) == taps else None
    return start, least_squares_fir(reference, capture, start, taps, mask=mask, guess=former)


class EchoPathFit:
    """Collects what played, what the microphone heard and what the running filter left, block
    by block, and fits the echo path by least squares (module docstring).

    :meth:`add` returns the taps (over the running filter's whole ``tail``, from lag 0) of a fit
    that beat that filter, once it is done; :meth:`close` ends a background fit.
    """

    def __init__(self, *, tail: int, block: int = INPUT_SAMPLE_RATE_HZ // 100,
                 sample_rate_hz: int = INPUT_SAMPLE_RATE_HZ, background: bool = False,
                 audible_dbfs: float = AUDIBLE_DBFS) -> None:
        if tail % block:
            raise ValueError(f"the tail ({tail} samples) must be whole blocks of {block}")
        per_ms = sample_rate_hz // 1000
        self.block = block
        self.tail = tail
        self.background = background
        self.fir = FIT_FIR_MS * per_ms
        self.max_delay = FIT_MAX_DELAY_MS * per_ms
        self.window_blocks = int(FIT_WINDOW_S * 1000) * per_ms // block
        self.first_blocks = FIT_FIRST_MS * per_ms // block
        self.fast_blocks = int(FIT_FAST_S * 1000) * per_ms // block
        self.refit_blocks = FIT_REFIT_MS * per_ms // block
        self.late_refit_blocks = FIT_LATE_REFIT_MS * per_ms // block
        self.held_blocks = FIT_HELD_OUT_MS * per_ms // block
        self._audible_rms = 32768.0 * 10 ** (audible_dbfs / 20)
        #: Fits computed, and fits whose taps :meth:`add` returned (they beat the running filter).
        self.fits = 0
        self.installs = 0
        self._reference: deque[np.ndarray] = deque(maxlen=self.window_blocks)
        self._capture: deque[np.ndarray] = deque(maxlen=self.window_blocks)
        self._residual: deque[np.ndarray] = deque(maxlen=self.window_blocks)
        self._alone: deque[bool] = deque(maxlen=self.window_blocks)
        self._alone_total = 0
        self._since_fit = 0
        self._quiet_blocks = self.tail // block + 1  # the session starts in silence
        self._open = False  # within an audible stretch or its tail
        self._guess: tuple[int, np.ndarray] | None = None  # (start, taps) of the last fit: CG's start
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future[tuple[int, np.ndarray, bool] | None] | None = None

    def add(self, reference: np.ndarray, capture: np.ndarray, residual: np.ndarray, echo_alone: bool) -> np.ndarray | None:
        """One block: what played, what the microphone heard, what the running filter left, and
        whether it was echo alone (the filter learnt from it)."""
        done = self._collect()
        if len(reference) != self.block or len(capture) != self.block or len(residual) != self.block:
            raise ValueError(f"blocks of {self.block} samples, got {len(reference)}, {len(capture)} and {len(residual)}")
        reference = reference.astype(np.float64)
        if float(np.sqrt(np.mean(np.square(reference)))) > self._audible_rms:
            self._quiet_blocks = 0
        else:
            self._quiet_blocks += 1
        if self._quiet_blocks * self.block > self.tail:  # silent for a whole tail: nothing of it echoes
            self._open = False
            return done
        if not self._open:  # a new audible stretch: what the filter sees before it is a tail of silence
            self._open = True
            zeros = np.zeros(self.block)
            for _ in range(self.tail // self.block):
                self._append(zeros, zeros, zeros, False)
        self._append(reference, capture.astype(np.float64), residual.astype(np.float64), echo_alone)
        if echo_alone:
            self._alone_total += 1
            self._since_fit += 1
        refit = self.refit_blocks if self._alone_total < self.fast_blocks else self.late_refit_blocks
        if self._pending is None and self._alone_total >= self.first_blocks and self._since_fit >= refit:
            self._since_fit = 0
            self._start_fit()
            if not self.background:  # done at once: collected now (none was pending before)
                done = self._collect()
        return done

    def _append(self, reference: np.ndarray, capture: np.ndarray, residual: np.ndarray, alone: bool) -> None:
        self._reference.append(reference)
        self._capture.append(capture)
        self._residual.append(residual)
        self._alone.append(alone)

    def _start_fit(self) -> None:
        data = (list(self._reference), list(self._capture), list(self._residual), list(self._alone), self._guess)
        if not self.background:
            future: Future[tuple[int, np.ndarray, bool] | None] = Future()
            future.set_result(self._fit(*data))
            self._pending = future
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="echo-path-fit")
        self._pending = self._executor.submit(self._fit, *data)

    def _collect(self) -> np.ndarray | None:
        """The taps of a finished fit that beat the running filter (None: none finished, or it did not)."""
        pending = self._pending
        if pending is None or not pending.done():
            return None
        self._pending = None
        result = pending.result()  # a fit that failed raises here, in the stage
        self.fits += 1
        if result is None:
            return None
        start, fir, better = result
        self._guess = (start, fir)
        if not better:
            return None
        self.installs += 1
        taps = np.zeros(self.tail)
        taps[start : start + len(fir)] = fir
        return taps

    def _fit(self, reference: list[np.ndarray], capture: list[np.ndarray], residual: list[np.ndarray], alone: list[bool],
             guess: tuple[int, np.ndarray] | None) -> tuple[int, np.ndarray, bool] | None:
        """The fit over all but the last :data:`FIT_HELD_OUT_MS` of echo alone; whether it beats
        the running filter (``residual``) on those by :data:`FIT_GAIN_DB`."""
        alone_blocks = np.flatnonzero(alone)
        if len(alone_blocks) <= self.held_blocks:
            return None
        held = alone_blocks[-self.held_blocks :]
        cut = int(held[0]) * self.block  # fit on what came before the held-out blocks
        x = np.concatenate(reference)
        y = np.concatenate(capture)
        mask = np.repeat(np.asarray(alone, dtype=np.float64), self.block)
        if not np.any(y[:cut] * mask[:cut]) or not np.any(x[:cut]):
            return None
        fitted = fit_echo_path(x[:cut], y[:cut], mask[:cut], fir=self.fir, tail=self.tail, max_delay=self.max_delay,
                               lead=self.block // 5, guess=guess)
        if fitted is None:
            return None
        start, fir = fitted
        shifted = np.concatenate([np.zeros(start), x])[: len(x)]
        estimate = np.convolve(shifted, fir)[: len(x)]
        held_samples = (held[:, None] * self.block + np.arange(self.block)).ravel()
        fitted = float(np.sum((y[held_samples] - estimate[held_samples]) ** 2))
        running = float(np.sum(np.concatenate([residual[b] for b in held]) ** 2))
        better = fitted > 0.0 and 10 * np.log10(max(running, 1e-9) / fitted) >= FIT_GAIN_DB
        return start, fir, better

    def close(self) -> None:
        """Ends the worker thread (a fit in progress is awaited: tens of milliseconds)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._pending = None
