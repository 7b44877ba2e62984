"""User callbacks (``on_failure``) run here, on one thread of their own, never on an engine's loop.

A callback is the user's code: it may block (a slow webhook to an alerting
service), raise, or take seconds.  On the engine's loop it would hold back
every other chat's marks and handlers.  So the engine only queues the call
and this thread makes it, one at a time, in order.  The queue is bounded
(``CALLBACK_QUEUE``): a callback slower than the failures arrive loses the
newest ones, counted (``stats().callbacks_dropped``) and logged once per
overflow, never silently and never by growing memory.

"Once per overflow" has hysteresis: an overflow episode ends only when a call
finds the queue drained to ``CALLBACK_QUEUE_CALM`` or fewer, not when the
thread happened to take one item off a full queue mid-burst (which, on a
loaded machine, would log a burst twice or more depending on scheduling).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import TypeVar

from ._threads import start_daemon

log = logging.getLogger(__name__)

CALLBACK_QUEUE = 1000
"""Calls that may wait for the callback thread; more are dropped (and counted)."""
CALLBACK_QUEUE_CALM = CALLBACK_QUEUE // 2
"""Calls waiting at or below which an overflow episode is over (the next one warns again)."""

T = TypeVar("T")

_STOP = object()


_instances: weakref.WeakSet[CallbackThread] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for instance in list(_instances):
        # Another parent thread may have held the lock at the fork: the child's copy is stuck.
        instance._lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # pragma: no branch - every POSIX Python has it
    os.register_at_fork(after_in_child=_after_fork_in_child)


class CallbackThread:
    """One daemon thread per marker, started on the first call (and anew after a fork)."""

    def __init__(self, name: str = "line-markread-callbacks") -> None:
        self._name = name
        self._lock = threading.Lock()
        _instances.add(self)
        self._queue: queue.Queue[object] = queue.Queue(CALLBACK_QUEUE)
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._overflowing = False

    def call(self, func: Callable[[T], object], argument: T) -> bool:
        """Queue ``func(argument)``; ``False`` (one WARNING per overflow) if the queue is full.

        An overflow lasts until a call finds at most ``CALLBACK_QUEUE_CALM`` calls waiting.
        """
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                # A forked child has the queue's items but not the thread: start afresh.
                self._queue = queue.Queue(CALLBACK_QUEUE)
                self._overflowing = False
                self._pid = os.getpid()
                self._thread = start_daemon(_serve, self._queue, name=self._name)
            try:
                self._queue.put_nowait((func, argument))
            except queue.Full:
                if not self._overflowing:
                    self._overflowing = True
                    log.warning(
                        "line_markread: the on_failure callback is falling behind; "
                        "failures beyond %d waiting calls are dropped (stats().callbacks_dropped)",
                        CALLBACK_QUEUE,
                    )
                return False
            if self._overflowing and self._queue.qsize() <= CALLBACK_QUEUE_CALM:
                self._overflowing = False  # caught up: a later overflow is a new episode
            return True

    def drain(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for the calls queued so far; whether they all ran."""
        calls = self._queue
        deadline = time.monotonic() + timeout
        with calls.all_tasks_done:
            while calls.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                calls.all_tasks_done.wait(left)
        return True

    def stop(self, timeout: float) -> None:
        """Let queued calls run for up to *timeout* seconds, then leave the thread (a daemon)."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None or self._pid != os.getpid():
                return
            # If full, the thread (a daemon) simply dies with the process.
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(_STOP)
        thread.join(timeout)


def _serve(calls: queue.Queue[object]) -> None:
    while True:
        item = calls.get()
        if item is _STOP:
            calls.task_done()
            return
        func: Callable[[object], object]
        argument: object
        func, argument = item  # type: ignore[misc]  # only call() puts (func, argument) in
        try:
            func(argument)
        except Exception:
            log.exception("line_markread: the on_failure callback raised")
        finally:
            calls.task_done()
