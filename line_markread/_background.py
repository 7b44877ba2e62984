"""Background handlers: ``background=True`` handlers run after the webhook was answered.

LINE fails a webhook not answered within 2 s and recommends handling events
asynchronously.  A ``background=True`` handler is queued when ``handle()`` /
``handle_async()`` has verified the body and started its marks; it runs later,
still only after its own mark, in a bounded pool the plugin owns:

* handlers of one chat run one at a time, in arrival order (a "lane" per chat);
  other chats run in parallel, at most ``background_workers`` at once;
* at most ``background_workers + background_backlog`` handlers are accepted and
  not finished per pool; a body that would overflow it is refused whole with
  ``BackgroundFull`` *before* anything is marked (no unbounded queue, no silent
  drop: the messages stay unread, the web framework answers 500, and LINE
  redelivers if the channel has redelivery on);
* an exception is logged (with the chat, never a token) and passed to
  ``on_error(exc, event)``; it never stops the pool;
* ``close()`` stops accepting, lets handlers finish for ``background_grace``
  seconds, then reports (log and ``stats()``) what was abandoned.

``Lanes`` is the pure scheduling state; ``ThreadPool`` (sync handlers, for
``handle()``) and ``TaskPool`` (one per event loop, for ``handle_async()``) only
add their I/O.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from ._settings import Settings
from ._stats import Counters, Stats

log = logging.getLogger(__name__)

J = TypeVar("J")


class BackgroundFull(RuntimeError):
    """Raised by ``handle()``/``handle_async()`` when the background pool cannot take a body.

    Raised before any of the body's messages is marked, so nothing is lost
    silently: they stay unread, and a web framework answers 500 (LINE
    redelivers when redelivery is on).  See ``background_backlog``.
    """


def refuse_background(settings: Settings) -> None:
    """Refuse ``background=True`` at registration where the settings exclude it.

    Serverless mode (``settle_before_return=True``) settles everything before
    ``handle()`` returns; the platform may freeze the process right after, so
    nothing may run later.  (The handler checks each body too, for routes
    registered some other way.)
    """
    if settings.settle_before_return:
        raise ValueError(
            "background=True cannot be used with settle_before_return=True: a serverless "
            "function may be frozen as soon as handle() returns"
        )


def chat_key(event: Any) -> object:
    """The lane of *event*: its chat, or a lane of its own for events without one."""
    source = getattr(event, "source", None)
    kind = getattr(source, "type", None)
    for attribute in ("group_id", "room_id", "user_id"):
        value = getattr(source, attribute, None)
        if isinstance(value, str) and value:
            return (kind, value)
    return object()


def chat_name(event: Any) -> str:
    """The chat of *event* for log lines (``user:U...``, ``group:C...``), or ``?``."""
    key = chat_key(event)
    return f"{key[0]}:{key[1]}" if isinstance(key, tuple) else "?"


class Lanes(Generic[J]):
    """Per-chat queues and the worker limit: which job may start now.  No I/O, no locks."""

    def __init__(self, workers: int, capacity: int) -> None:
        self.workers = workers
        self.capacity = capacity
        self.size = 0
        """Jobs reserved or accepted and not finished (running included)."""
        self.running = 0
        self._lanes: dict[object, deque[J]] = {}
        self._ready: deque[object] = deque()
        """Chats whose first job may start (none of theirs is running), oldest first."""

    def reserve(self, count: int) -> bool:
        """Room for *count* more jobs, all or nothing."""
        if self.size + count > self.capacity:
            return False
        self.size += count
        return True

    def release(self, count: int) -> None:
        """Give back reserved room that was not used."""
        self.size -= count

    def take_reserved(self, reservation: Reservation) -> None:
        """Use one place of *reservation*; beyond it (a step routed anew), one more."""
        if reservation.left > 0:
            reservation.left -= 1
        else:
            self.size += 1

    def put(self, key: object, job: J) -> None:
        """Queue a reserved job behind its chat's earlier ones."""
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = deque()
            self._ready.append(key)
        lane.append(job)

    def take(self) -> list[tuple[object, J]]:
        """The jobs to start now: heads of ready chats, while workers are free."""
        started = []
        while self.running < self.workers and self._ready:
            key = self._ready.popleft()
            started.append((key, self._lanes[key][0]))
            self.running += 1
        return started

    def finish(self, key: object) -> None:
        """A job of chat *key* is over: its next one becomes ready (behind other chats)."""
        lane = self._lanes[key]
        lane.popleft()
        self.running -= 1
        self.size -= 1
        if lane:
            self._ready.append(key)
        else:
            del self._lanes[key]

    def drop_waiting(self) -> list[J]:
        """At close: remove and return every job not started; running ones stay."""
        dropped: list[J] = []
        ready = set(self._ready)
        for key, lane in list(self._lanes.items()):
            if key in ready:
                dropped.extend(lane)
                del self._lanes[key]
            else:
                while len(lane) > 1:
                    dropped.append(lane.pop())
        self._ready.clear()
        self.size -= len(dropped)
        return dropped


def report_error(settings: Settings, exc: BaseException, event: Any) -> None:
    """A background handler raised: log it with its chat, and call ``on_error``."""
    log.error(
        "line_markread: background handler for %s raised %s",
        chat_name(event),
        type(exc).__name__,
        exc_info=exc,
        extra={"markread_event": "background_failed", "markread_chat": chat_name(event)},
    )
    if settings.on_error is not None:
        try:
            settings.on_error(exc, event)
        except Exception:
            log.exception("line_markread: the on_error callback raised")


def _refused(count: int, capacity: int) -> BackgroundFull:
    return BackgroundFull(
        f"line_markread: {count} background handler(s) refused: the pool holds "
        f"{capacity} (background_workers + background_backlog); nothing of this body was marked"
    )


def _log_abandoned(waiting: int, running: int, grace: float) -> None:
    if waiting or running:
        log.warning(
            "line_markread: close() abandoned %d background handler(s) after %.1fs: "
            "%d never started, %d still running",
            waiting + running,
            grace,
            waiting,
            running,
        )


class Reservation:
    """Room for a body's background handlers, taken before its marks are started."""

    __slots__ = ("left", "pool")

    def __init__(self, pool: ThreadPool | TaskPool, count: int) -> None:
        self.pool = pool
        self.left = count

    def cancel(self) -> None:
        """The body failed before its handlers were queued: give the room back."""
        if self.left:
            self.pool.release(self.left)
            self.left = 0


class ThreadPool:
    """Background handlers of ``handle()``: sync functions in the pool's threads."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        workers = settings.background_workers
        self._lanes: Lanes[tuple[Callable[[], object], Any]] = Lanes(
            workers, workers + settings.background_backlog
        )
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="line-markread-handler"
        )
        self._counters = Counters()
        self._closed = False
        self._gave_up = False
        self.pid = os.getpid()
        """A forked child (gunicorn's workers) has none of its threads: it makes its own."""

    def stats(self) -> Stats:
        with self._lock:
            return self._counters.snapshot()

    def reserve(self, count: int) -> Reservation:
        with self._lock:
            if self._closed:
                raise RuntimeError("line_markread: this handler is closed")
            if not self._lanes.reserve(count):
                self._counters.background_refused += count
                raise _refused(count, self._lanes.capacity)
        return Reservation(self, count)

    def release(self, count: int) -> None:
        with self._changed:
            self._lanes.release(count)
            self._changed.notify_all()

    def put(self, reservation: Reservation, job: Callable[[], object], event: Any) -> None:
        """Queue *job* (a reserved one) in *event*'s chat lane; it runs when its turn comes."""
        with self._lock:
            self._lanes.take_reserved(reservation)
            if self._gave_up:  # close() gave up meanwhile: counted, never silently lost
                self._counters.background_abandoned += 1
                self._lanes.release(1)
                log.warning("line_markread: a background handler arrived after close(); not run")
                return
            self._counters.background_started += 1
            self._lanes.put(chat_key(event), (job, event))
            startable = self._lanes.take()
        self._start(startable)

    def _start(self, startable: list[tuple[object, tuple[Callable[[], object], Any]]]) -> None:
        for key, (job, event) in startable:
            self._executor.submit(self._run, key, job, event)

    def _run(self, key: object, job: Callable[[], object], event: Any) -> None:
        failed = False
        try:
            job()
        except Exception as e:
            failed = True
            report_error(self._settings, e, event)
        finally:
            with self._changed:
                if not self._gave_up:
                    self._counters.background_finished += 1
                    self._counters.background_failed += failed
                self._lanes.finish(key)
                startable = [] if self._closed and self._gave_up else self._lanes.take()
                self._changed.notify_all()
            self._start(startable)

    def close(self, grace: float) -> None:
        """Stop accepting, let handlers finish for *grace* s, abandon (and report) the rest."""
        deadline = time.monotonic() + grace
        with self._changed:
            if self._closed:
                return
            self._closed = True
            while self._lanes.size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            dropped = self._lanes.drop_waiting()
            running = self._lanes.running
            self._gave_up = True
            self._counters.background_abandoned += len(dropped) + running
        _log_abandoned(len(dropped), running, grace)
        # Threads still running cannot be stopped; they are not waited for either.
        self._executor.shutdown(wait=False)


class TaskPool:
    """Background handlers of ``handle_async()`` on one event loop: async ones as tasks.

    Sync handlers registered with ``background=True`` run in this pool's
    threads, so they never block the loop.  Everything else runs on the loop.
    """

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
        self._settings = settings
        self.loop = loop
        workers = settings.background_workers
        self._lanes: Lanes[tuple[Callable[[], Coroutine[Any, Any, object]], Any]] = Lanes(
            workers, workers + settings.background_backlog
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._counters = Counters()
        self._closed = False
        self._gave_up = False

    def stats(self) -> Stats:
        return self._counters.snapshot()

    @property
    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """Threads for sync background handlers, made on first use."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._settings.background_workers,
                thread_name_prefix="line-markread-handler",
            )
        return self._executor

    def reserve(self, count: int) -> Reservation:
        if self._closed:
            raise RuntimeError("line_markread: this handler is closed")
        if not self._lanes.reserve(count):
            self._counters.background_refused += count
            raise _refused(count, self._lanes.capacity)
        return Reservation(self, count)

    def release(self, count: int) -> None:
        self._lanes.release(count)

    def put(
        self,
        reservation: Reservation,
        job: Callable[[], Coroutine[Any, Any, object]],
        event: Any,
    ) -> None:
        self._lanes.take_reserved(reservation)
        if self._gave_up:
            self._counters.background_abandoned += 1
            self._lanes.release(1)
            log.warning("line_markread: a background handler arrived after aclose(); not run")
            return
        self._counters.background_started += 1
        self._lanes.put(chat_key(event), (job, event))
        self._start()

    def _start(self) -> None:
        for key, (job, event) in self._lanes.take():
            task = self.loop.create_task(self._run(key, job, event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(
        self, key: object, job: Callable[[], Coroutine[Any, Any, object]], event: Any
    ) -> None:
        failed = False
        try:
            await job()
        except Exception as e:
            failed = True
            report_error(self._settings, e, event)
        finally:
            if not self._gave_up:
                self._counters.background_finished += 1
                self._counters.background_failed += failed
            self._lanes.finish(key)
            if not self._gave_up:
                self._start()

    async def aclose(self, grace: float) -> None:
        """Stop accepting, let handlers finish for *grace* s, cancel (and report) the rest."""
        if self._closed:
            return
        self._closed = True
        deadline = self.loop.time() + grace
        while self._tasks:
            left = deadline - self.loop.time()
            if left <= 0:
                break
            await asyncio.wait(set(self._tasks), timeout=left)
        self._gave_up = True
        dropped = self._lanes.drop_waiting()
        running = list(self._tasks)
        self._counters.background_abandoned += len(dropped) + len(running)
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        _log_abandoned(len(dropped), len(running), grace)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
