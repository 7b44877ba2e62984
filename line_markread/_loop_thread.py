"""A background event loop thread: how synchronous bots use the async engine.

Flask and other WSGI apps call ``handle()`` from many worker threads.  They
all share one event loop running in one daemon thread, so there is one
keep-alive HTTP session and one per-chat state, whatever the thread.  After
``os.fork()`` (gunicorn's pre-fork workers) the child has no such thread;
the next call notices the new process ID and starts a fresh one.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, Optional, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str = "line-markread") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._pid = 0

    def loop(self) -> asyncio.AbstractEventLoop:
        """The running background loop, started on first use (and anew after a fork)."""
        with self._lock:
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
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                loop.close()

        thread = threading.Thread(target=serve, name=self._name, daemon=True)
        thread.start()
        ready.wait()
        self._loop, self._thread, self._pid = loop, thread, os.getpid()

    def stop(self) -> None:
        """Stop the loop and join the thread; a no-op if never started (in this process)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None or self._pid != os.getpid():
                self._loop = self._thread = None
                return
            self._loop = self._thread = None
        loop.call_soon_threadsafe(loop.stop)
        if threading.current_thread() is not thread:
            thread.join()
