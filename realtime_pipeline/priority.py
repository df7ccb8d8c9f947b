"""Model calls yield the CPU to the audio: the worker threads that run them are niced.

On a small machine Whisper, the LLM and Piper keep every core busy while a reply plays (the
next sentence is synthesized, the LLM goes on writing). The event loop that paces the audio
(the VAD, the echo stage, a WebRTC call's 10 ms packets) and a browser playing the reply on
the same machine then wait for them, and Chromium's jitter buffer grows to cover the late
pulls of its audio thread. A thread at nice 10 still gets every cycle nothing else wants, so
an idle machine runs the models as fast as before; it gives the cores up at once when the
audio needs them (CFS weights: 110 against 1024 for nice 0). docs/webrtc.md, "Models at a
lower priority", has the measurement behind the default.

Linux only: there nice is per thread and the threads a thread starts inherit it, so the pools
a model library starts from a niced thread (CTranslate2's workers, ONNX Runtime's and
llama.cpp's) are niced too; elsewhere ``setpriority`` would lower the whole process, event loop
included, and nothing is changed. An unprivileged thread cannot raise its priority again, so a
worker thread stays niced for whatever anyio runs on it later (which then waits for the event
loop, as the models do).

BLAS is kept to the calling thread for the same reason (:func:`one_blas_thread`): OpenBLAS starts
its workers when numpy is imported, so they are not niced, and they spin after each call.
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

#: The niceness of model threads; ``REALTIME_PIPELINE_MODEL_NICE=0`` leaves threads (and numpy's
#: BLAS) as they are.
#: 10: the browser's jitter buffer and WebRTC's share of voice-to-voice on 2 shared cores (docs/webrtc.md).
MODEL_THREAD_NICE = int(os.environ.get("REALTIME_PIPELINE_MODEL_NICE", "10"))

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
    2.5-2.8 s without (``tests/test_priority.py``'s turn, 3 runs each), 0.3 s of it in that
    thread, which OpenBLAS starts when numpy is imported, so at the audio's priority."""
    global _blas_limited
    with _blas_lock:
        if not _blas_limited:
            ThreadpoolController().limit(limits=1, user_api="blas")  # kept: not used as a context
            _blas_limited = True


def _at_model_priority(function: Callable[..., T], *args: object) -> T:
    if MODEL_THREAD_NICE > 0:
        lower_this_thread()
        one_blas_thread()
    return function(*args)


async def run_model(function: Callable[..., T], *args: object) -> T:
    """``anyio.to_thread.run_sync(function, *args)`` on a worker thread niced for model work."""
    return await anyio.to_thread.run_sync(_at_model_priority, function, *args)
