"""Cancellation tokens: one per response, readable from any thread.

A token is a thread-safe flag plus callbacks. Worker threads running blocking
model calls poll :attr:`CancelToken.cancelled` between tokens or chunks; async
code registers a cancel scope with :meth:`CancelToken.scope` so a pending
``await`` (a full queue, a sleep) is aborted at once. A child token is
cancelled with its parent, which is how stopping the pipeline reaches every
response.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio


class Cancelled(Exception):
    """Raised by :meth:`CancelToken.raise_if_cancelled` inside worker threads."""


class CancelToken:
    def __init__(self, parent: CancelToken | None = None) -> None:
        self._flag = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self.reason: str | None = None
        self._children: list[CancelToken] = []
        self._parent = parent
        if parent is not None:
            parent._adopt(self)

    @property
    def cancelled(self) -> bool:
        return self._flag.is_set()

    def cancel(self, reason: str = "cancelled") -> bool:
        """Cancel this token and its children. Returns False if it already was.

        Call it from the event loop thread: the callbacks cancel anyio scopes.
        """
        with self._lock:
            if self._flag.is_set():
                return False
            self.reason = reason
            self._flag.set()
            callbacks, self._callbacks = self._callbacks, []
            children, self._children = self._children, []
        for callback in callbacks:
            callback()
        for child in children:
            child.cancel(reason)
        return True

    def raise_if_cancelled(self) -> None:
        if self._flag.is_set():
            raise Cancelled(self.reason or "cancelled")

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` when cancelled (now, if already). Returns an unregister function."""
        with self._lock:
            if not self._flag.is_set():
                self._callbacks.append(callback)

                def unregister() -> None:
                    with self._lock:
                        if callback in self._callbacks:
                            self._callbacks.remove(callback)

                return unregister
        callback()
        return lambda: None

    @contextmanager
    def scope(self) -> Iterator[anyio.CancelScope]:
        """An anyio cancel scope that is cancelled together with this token."""
        with anyio.CancelScope() as cancel_scope:
            unregister = self.on_cancel(cancel_scope.cancel)
            try:
                yield cancel_scope
            finally:
                unregister()

    def release(self) -> None:
        """Forget the link to the parent once this token's work is over (keeps parents small)."""
        parent, self._parent = self._parent, None
        if parent is not None:
            with parent._lock:
                if self in parent._children:
                    parent._children.remove(self)

    def _adopt(self, child: CancelToken) -> None:
        with self._lock:
            if not self._flag.is_set():
                self._children.append(child)
                return
        child.cancel(self.reason or "cancelled")
