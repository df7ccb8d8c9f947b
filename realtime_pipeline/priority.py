"""Model calls on worker threads: numpy's BLAS kept to the calling thread, and an opt-in nice.

**BLAS** (:func:`one_blas_thread`, always): numpy's OpenBLAS starts a worker thread when numpy is
imported and it spins after each call; the only matrix products of a turn are the mel filterbanks,
where that thread costs more CPU than it saves (a spoken turn 3.1-3.3 s of CPU with it, 2.5-2.8 s
without).

**Nice** (``REALTIME_PIPELINE_MODEL_NICE=N``, off by default): model calls run on worker threads
niced to N (Linux, where nice is per thread and the pools a library starts from a thread inherit
it), so the event loop that paces the audio and a browser on the same machine come first: on 2
shared cores WebRTC's share of voice-to-voice went 60 (IQR 35-94) -> 57 ms (IQR 52-67) at 10 and
the browser's jitter buffer 41-71 -> 32-39 ms (docs/webrtc.md). Not the default because the models
then also yield to any other CPU-bound work at nice 0 in their scheduling group, and they yield
far more than their weight says: their threads wait for each other at every step, so the one
sharing a core sets the pace. With one busy loop on one of 2 cores a Chromium page turn's first
voice-to-voice was 2.2 s at nice 0, 12.1 s at 4 and 29.5 s at 10. Elsewhere than Linux
``setpriority`` would lower the whole process, event loop included: nothing is niced there. An
unprivileged thread cannot raise its priority again, so a worker thread stays niced for whatever
anyio runs on it later.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread
from threadpoolctl import ThreadpoolController

T = TypeVar("T")

#: The niceness of model threads (``REALTIME_PIPELINE_MODEL_NICE``); 0, the default, leaves them
#: as they are (see the module's docstring for what 10 buys and costs).
MODEL_THREAD_NICE = int(os.environ.get("REALTIME_PIPELINE_MODEL_NICE", "0"))

_thread = threading.local()
_blas_lock = threading.Lock()
_blas_limited = False


def supported() -> bool:
    """Whether threads can be niced one by one here (Linux)."""
    return sys.platform.startswith("linux")


def lower_this_thread(nice: int | None = None) -> int:
    """Nice the calling thread to ``nice`` (default :data:`MODEL_THREAD_NICE`) unless it already
    is at least that nice; the threads it starts from now on inherit it. Returns the thread's
    niceness (unchanged where :func:`supported` is false or ``nice`` is 0)."""
    target = MODEL_THREAD_NICE if nice is None else nice
    if not supported():
        return 0
    thread_id = threading.get_native_id()
    if getattr(_thread, "nice", None) is not None and _thread.nice >= target:
        return int(_thread.nice)
    current = os.getpriority(os.PRIO_PROCESS, thread_id)
    if target > current:
        os.setpriority(os.PRIO_PROCESS, thread_id, target)
        current = target
    _thread.nice = current
    return current


def one_blas_thread() -> None:
    """BLAS libraries (numpy's OpenBLAS) compute in the calling thread from now on, in the whole
    process (threadpoolctl).

    No model here uses BLAS (CTranslate2, llama.cpp and ONNX Runtime have their own kernels); the
    only matrix products of a turn are Whisper's and the turn model's mel filterbank (80 x 201 by
    201 x up to 3000), where OpenBLAS's second thread saves a few ms and its spinning after each call
    costs far more: a spoken turn on the embedded models used 3.1-3.3 s of CPU with it and
    2.5-2.8 s without (a real turn through ``voice_pipeline``, 3 runs each), 0.3 s of it in that
    thread, which OpenBLAS starts when numpy is imported (so it is never niced)."""
    global _blas_limited
    if _blas_limited:  # every model call (each LLM token) comes here: no lock once done
        return
    with _blas_lock:
        if not _blas_limited:
            ThreadpoolController().limit(limits=1, user_api="blas")  # kept: not used as a context
            _blas_limited = True


def _at_model_priority(function: Callable[..., T], *args: object) -> T:
    one_blas_thread()
    if MODEL_THREAD_NICE > 0:
        lower_this_thread()
    return function(*args)


async def run_model(function: Callable[..., T], *args: object) -> T:
    """``anyio.to_thread.run_sync(function, *args)`` for model work: BLAS in that thread, and the
    thread niced to :data:`MODEL_THREAD_NICE` when that is set."""
    return await anyio.to_thread.run_sync(_at_model_priority, function, *args)
