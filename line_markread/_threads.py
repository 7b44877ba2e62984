"""The plugin's own threads, started with the process's signals blocked in them.

Linux hands a signal sent to the process (gunicorn's ``SIGTERM``, Ctrl-C's
``SIGINT``) to *any* thread that does not block it.  Python runs its handlers
in the main thread only, and the main thread learns of one only when it wakes
up: a main thread blocked on a lock (a sync bot's ``threading.Event().wait()``,
``Thread.join()``) is woken by the signal only if the kernel picked *it*.
When the kernel picked one of the plugin's threads instead (the marking loop,
a background handler's thread), the handler never ran and the process never
stopped.  So every thread the plugin starts blocks those signals, and they all
reach the main thread.  A thread inherits its creator's mask, so the mask is
set around ``start()`` (no window in which the new thread could take one), and
threads those threads start (asyncio's executor, aiohttp's resolver) inherit it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

_ASYNCHRONOUS = frozenset(
    getattr(signal, name)
    for name in (
        "SIGINT",
        "SIGTERM",
        "SIGHUP",
        "SIGQUIT",
        "SIGUSR1",
        "SIGUSR2",
        "SIGALRM",
        "SIGCHLD",
        "SIGWINCH",
    )
    if hasattr(signal, name)
)
"""Signals sent to a process to tell it something: Python handles them in the main thread."""


def start_daemon(target: Callable[..., object], *args: Any, name: str) -> threading.Thread:
    """Start a daemon thread running ``target(*args)`` with the asynchronous signals blocked."""
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    if not hasattr(signal, "pthread_sigmask"):  # Windows: signals reach the main thread anyway
        thread.start()
        return thread
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _ASYNCHRONOUS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return thread
