"""A background event loop thread: how synchronous bots use the async engine.

Flask and other WSGI apps call ``handle()`` from many worker threads.  They
all share one event loop running in one daemon thread, so there is one
keep-alive HTTP session and one per-chat state, whatever the thread.  After
``os.fork()`` (gunicorn's pre-fork workers) the child has no such thread;
the next call notices the new process ID and starts a fresh one.

A fork must not disturb the parent.  The child inherits the loop's epoll
instance *shared* with the parent (epoll registrations belong to the
instance, not to a process), and the parent's keep-alive sockets: if the
child closed those sockets through the inherited loop, it would unregister
them from the parent's epoll, and the parent would miss its next answer.  So
right after a fork (``os.register_at_fork``) the child points every fd the
inherited selector knows, and the selector's own, at ``/dev/null``: whatever
later touches the inherited objects in the child (garbage collection
included) acts on ``/dev/null``, never on the parent's sockets or epoll.
The inherited objects are kept, silenced, for the child's life
(``abandon``), and the child starts its own loop, session and connections.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._threads import start_daemon

T = TypeVar("T")

_ABANDONED: list[object] = []
"""The parent's objects in a forked child: kept, never closed or collected, by the child."""


def abandon(*objects: object) -> None:
    """Keep *objects* (inherited from the parent by a fork) alive and untouched in this child."""
    _ABANDONED.extend(objects)


def _ignore(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Exception handler of an inherited loop: its complaints are about the parent's objects."""


_threads: weakref.WeakSet[LoopThread] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for thread in list(_threads):
        thread._forked()


if hasattr(os, "register_at_fork"):  # pragma: no branch - every POSIX Python has it
    os.register_at_fork(after_in_child=_after_fork_in_child)


class LoopThread:
    def __init__(self, name: str = "line-markread") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._selector: selectors.BaseSelector | None = None
        self._pid = 0
        self._closed = False
        _threads.add(self)

    def _forked(self) -> None:
        """In a fresh child: detach from the parent's loop without touching its fds (see above)."""
        loop, selector = self._loop, self._selector
        self._loop = self._thread = self._selector = None
        self._lock = threading.Lock()  # it may have been held by another parent thread
        if loop is None or selector is None:
            return
        fds = {key.fd for key in selector.get_map().values()}
        own_fd = getattr(selector, "fileno", None)  # epoll, kqueue, devpoll: the kernel object
        if own_fd is not None:
            fds.add(own_fd())
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            for fd in fds:
                if fd != devnull:
                    os.dup2(devnull, fd)
        finally:
            os.close(devnull)
        loop.set_exception_handler(_ignore)
        abandon(loop, selector)

    def loop(self) -> asyncio.AbstractEventLoop:
        """The running background loop, started on first use (and anew after a fork)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("line_markread: this handler/marker is closed")
            if self._loop is None or self._pid != os.getpid():
                self._start()
            assert self._loop is not None
            return self._loop

    def is_running_here(self) -> bool:
        """Whether the caller is the background thread itself (where blocking would deadlock)."""
        return self._thread is not None and threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run *coro* on the background loop and block until it finishes."""
        if self.is_running_here():
            coro.close()
            raise RuntimeError(
                "line_markread: a blocking call was made from the plugin's own event loop thread"
            )
        return asyncio.run_coroutine_threadsafe(coro, self.loop()).result()

    def is_started(self) -> bool:
        return self._loop is not None and self._pid == os.getpid()

    def _start(self) -> None:
        # Our own selector, so that a forked child knows which fds to neutralise.
        selector = selectors.DefaultSelector()
        loop = asyncio.SelectorEventLoop(selector)
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                loop.close()

        thread = start_daemon(serve, name=self._name)
        ready.wait()
        self._loop, self._thread, self._pid = loop, thread, os.getpid()
        self._selector = selector

    def stop(self, *, final: bool = False) -> None:
        """Stop the loop and join the thread; a no-op if never started (in this process).

        ``final``: the owner is closed, so no later call may start a loop again.
        """
        with self._lock:
            self._closed = self._closed or final
            loop, thread = self._loop, self._thread
            if loop is None or thread is None or self._pid != os.getpid():
                self._loop = self._thread = self._selector = None
                return
            self._loop = self._thread = self._selector = None
        loop.call_soon_threadsafe(loop.stop)
        if threading.current_thread() is not thread:
            thread.join()
