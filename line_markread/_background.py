"""Background handlers: ``background=True`` handlers run after the webhook was answered.

LINE fails a webhook not answered within 2 s and recommends handling events
asynchronously.  A ``background=True`` handler is queued when ``handle()`` /
``handle_async()`` has verified the body and started its marks; it runs later,
still only after its own mark, in a bounded pool the plugin owns:

* handlers of one chat run one at a time, in arrival order (a "lane" per chat);
  other chats run in parallel, at most ``background_workers`` at once;
* at most ``background_workers + background_backlog`` handlers are reserved,
  accepted and not finished per pool; a body that would overflow it is refused
  whole with ``BackgroundFull`` *before* anything is marked (no unbounded
  queue, no silent drop: the messages stay unread, the web framework answers
  500, and LINE redelivers if the channel has redelivery on);
* whatever a handler raises (``SystemExit`` and a stray ``CancelledError``
  included) is logged with the chat, never a token, passed to
  ``on_error(exc, event)`` and counted; it never stops the pool;
* ``close()`` stops accepting, lets every handler accepted so far run (queued
  ones after the running one of their chat) for ``background_grace`` seconds,
  then reports (one WARNING naming the chats, and ``stats()``) what it
  abandoned.  A body still being handled when the pool gave up raises
  ``BackgroundClosed``, so LINE redelivers it.  A sync bot that never calls
  ``close()`` gets the same drain at interpreter exit; an async bot whose event
  loop ends first gets the same count and WARNING.

Every job ends in exactly one of ``background_finished`` (``background_failed``
is the part of it that raised) and ``background_abandoned``, so
``background_pending`` returns to 0 however the pool ends.

``Lanes`` is the pure scheduling state; ``ThreadPool`` (sync handlers, for
``handle()``) and ``TaskPool`` (one per event loop, for ``handle_async()``) only
add their I/O.  Their interface is small on purpose (``reserve``, ``put``,
``close``/``aclose``, ``stats``): a durable backend may stand beside them.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import functools
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Generic, TypeVar

from ._settings import Settings
from ._stats import Counters, Stats
from ._threads import start_daemon

log = logging.getLogger(__name__)

J = TypeVar("J")

_SETTLE = 1.0
"""Seconds ``aclose()`` waits for cancelled handlers to unwind once the grace is over."""

_LOOP_ENDED = "the event loop ended before aclose() and"

_CHATS_NAMED = 10
"""At most this many chats are named in an abandonment WARNING."""


class BackgroundFull(RuntimeError):
    """Raised by ``handle()``/``handle_async()`` when the background pool cannot take a body.

    Raised before any of the body's messages is marked, so nothing is lost
    silently: they stay unread, and a web framework answers 500 (LINE
    redelivers when redelivery is on).  See ``background_backlog``.
    """


class BackgroundClosed(BackgroundFull):
    """Raised by ``handle()``/``handle_async()`` when a body's background handler will not run.

    ``close()``/``aclose()`` stopped the pool: a body arriving after that is
    refused before anything is marked; a body already under way, whose
    background handler reached the pool after ``close()`` gave up waiting
    (``background_grace``), raises when it gets there (its messages may be
    marked read by then).  Either way the web framework answers 500 and LINE
    redelivers the body (to a process that is not closing).  A closed pool
    takes nothing, so this is a ``BackgroundFull``: code handling one handles
    both.
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


class Job:
    """One accepted handler: what to run, for which event, and whether it was counted."""

    __slots__ = ("counted", "event", "run", "task")

    def __init__(self, run: Callable[[], Any], event: Any) -> None:
        self.run = run
        self.event = event
        self.counted = False
        """Counted finished or abandoned already: each job is counted exactly once."""
        self.task: asyncio.Task[None] | None = None


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
        except BaseException:  # even sys.exit() in on_error: it runs for a detached handler
            log.exception("line_markread: the on_error callback raised")


def _refused(count: int, capacity: int) -> BackgroundFull:
    return BackgroundFull(
        f"line_markread: {count} background handler(s) refused: the pool holds "
        f"{capacity} (background_workers + background_backlog); nothing of this body was marked"
    )


def _closed_error(count: int, *, started: bool) -> BackgroundClosed:
    if started:
        return BackgroundClosed(
            f"line_markread: this handler is closed; {count} background handler(s) of this "
            "body will not run (close() gave up waiting): failing the webhook so LINE redelivers"
        )
    return BackgroundClosed(
        f"line_markread: this handler is closed; {count} background handler(s) refused, "
        "nothing of this body was marked"
    )


def _chats(jobs: Iterable[Job]) -> str:
    names = sorted({chat_name(job.event) for job in jobs})
    more = len(names) - _CHATS_NAMED
    return ", ".join(names[:_CHATS_NAMED]) + (f" and {more} more" if more > 0 else "")


def _log_abandoned(why: str, waiting: list[Job], running: list[Job], state: str) -> None:
    """One WARNING for everything a pool abandoned: how many, and their chats (never a token)."""
    if waiting or running:
        log.warning(
            "line_markread: %s abandoned %d background handler(s): %d never started, %d %s; "
            "chats: %s",
            why,
            len(waiting) + len(running),
            len(waiting),
            len(running),
            state,
            _chats([*waiting, *running]),
            extra={"markread_event": "background_abandoned"},
        )


class Reservation:
    """Room for a body's background handlers, taken before its marks are started."""

    __slots__ = ("left", "pool")

    def __init__(self, pool: ThreadPool | TaskPool, count: int) -> None:
        self.pool = pool
        self.left = count

    def cancel(self) -> None:
        """The body is over (or failed): give back the room its handlers did not use."""
        if self.left:
            self.pool.release(self.left)
            self.left = 0


class DaemonThreads:
    """Up to *limit* reused daemon threads running calls in the order they were submitted.

    Not ``concurrent.futures.ThreadPoolExecutor``: interpreter exit joins its
    threads, so one stuck background handler would keep the process alive
    forever (Ctrl-C hangs, process managers must SIGKILL).  Nobody joins these;
    how long exit waits is the pool's drain's decision (``background_grace``).
    Threads are reused: a thread that finished a call takes the next queued one.
    So when no thread may be started any more (Python 3.12+ refuses at
    interpreter exit), queued calls still run on the threads already there.
    """

    def __init__(self, limit: int, name: str = "line-markread-handler") -> None:
        self._limit = limit
        self._name = name
        self._ready = threading.Condition(threading.Lock())
        self._calls: deque[Callable[[], None]] = deque()
        self._threads = 0
        self._idle = 0
        self._stopped = False

    def submit(self, call: Callable[[], None]) -> None:
        """Run *call* (which must not raise) on a free thread, a new one if none is free."""
        with self._ready:
            self._calls.append(call)
            if self._idle >= len(self._calls):
                self._ready.notify()
                return
            if self._threads >= self._limit:
                return  # a busy thread takes it when its call returns
            self._threads += 1
        try:
            start_daemon(self._serve, name=self._name)
        except RuntimeError:  # interpreter exit: a running thread takes the call instead
            with self._ready:
                self._threads -= 1

    def stop(self) -> None:
        """Idle threads end now, busy ones after their call (nothing queued is left to run)."""
        with self._ready:
            self._stopped = True
            self._calls.clear()
            self._ready.notify_all()

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not self._calls:
                    if self._stopped:
                        self._threads -= 1
                        return
                    self._idle += 1
                    self._ready.wait()
                    self._idle -= 1
                call = self._calls.popleft()
            try:
                call()
            except BaseException:  # pragma: no cover - the pools' calls catch everything
                log.exception("line_markread: a background thread's call raised")


_thread_pools: weakref.WeakSet[ThreadPool] = weakref.WeakSet()


@functools.cache
def _register_exit_drain() -> None:
    """Once per process, on the first pool: drain every live ``ThreadPool`` at interpreter exit.

    Registered only now, after the pool's ``Marker`` registered its own
    finalizer (``weakref.finalize`` hooks into ``atexit`` on first use), so this
    runs first (``atexit`` is last in, first out): background handlers still
    find the marks' loop thread running, then the marks drain.
    """
    atexit.register(drain_at_exit)


def drain_at_exit() -> None:
    """For sync bots that never call ``close()``: the same drain, at interpreter exit.

    A second Ctrl-C stops the waiting (what is left is abandoned and reported).
    """
    pools = [pool for pool in list(_thread_pools) if pool.pid == os.getpid()]
    if not pools:
        return
    grace = max(pool.grace for pool in pools)
    deadline = time.monotonic() + grace
    for attempt in range(3):
        try:
            pending = sum(pool.pending() for pool in pools) if attempt == 0 else 0
            if pending:
                log.info(
                    "line_markread: waiting up to %.1fs for %d background handler(s) before "
                    "exiting (Ctrl-C again to stop waiting)",
                    grace,
                    pending,
                )
            for pool in pools:  # closed ones return at once
                left = max(0.0, min(pool.grace, deadline - time.monotonic()))
                pool.close(left, why="the drain at interpreter exit")
            return
        except KeyboardInterrupt:
            # The user does not want to wait: the interrupted pool accounted for what it
            # left (close() does), the others close without waiting.
            deadline = time.monotonic()


class ThreadPool:
    """Background handlers of ``handle()``: sync functions in the pool's daemon threads."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._changed = threading.Condition(threading.Lock())
        workers = settings.background_workers
        self._lanes: Lanes[Job] = Lanes(workers, workers + settings.background_backlog)
        self._threads = DaemonThreads(workers)
        self._running: set[Job] = set()
        self._counters = Counters()
        self._closed = False
        """No new body: ``reserve`` refuses."""
        self._gave_up = False
        """Nothing more runs: ``put`` refuses, what was queued is dropped."""
        self.pid = os.getpid()
        """A forked child (gunicorn's workers) has none of its threads: it makes its own."""
        _thread_pools.add(self)
        _register_exit_drain()

    @property
    def grace(self) -> float:
        return self._settings.background_grace

    def stats(self) -> Stats:
        with self._changed:
            return self._counters.snapshot()

    def pending(self) -> int:
        """Handlers reserved, queued or running: what a drain would wait for."""
        with self._changed:
            return self._lanes.size

    def reserve(self, count: int) -> Reservation:
        """Room for *count* handlers, or ``BackgroundFull``/``BackgroundClosed``, all or nothing."""
        with self._changed:
            if self._closed:
                self._counters.background_refused += count
                raise _closed_error(count, started=False)
            if not self._lanes.reserve(count):
                self._counters.background_refused += count
                raise _refused(count, self._lanes.capacity)
        return Reservation(self, count)

    def release(self, count: int) -> None:
        with self._changed:
            self._lanes.release(count)
            self._changed.notify_all()

    def put(self, reservation: Reservation, run: Callable[[], object], event: Any) -> None:
        """Queue *run* (a reserved one) in *event*'s chat lane; it runs when its turn comes.

        Raises ``BackgroundClosed`` if ``close()`` gave up meanwhile: the handler
        would never run, so the webhook must fail.
        """
        with self._changed:
            self._lanes.take_reserved(reservation)
            if self._gave_up:
                refused = 1 + reservation.left
                self._lanes.release(refused)
                reservation.left = 0
                self._counters.background_refused += refused
                self._changed.notify_all()
                raise _closed_error(refused, started=True)
            self._counters.background_started += 1
            self._lanes.put(chat_key(event), Job(run, event))
            self._start_locked()

    def _start_locked(self) -> None:
        for key, job in self._lanes.take():
            self._running.add(job)
            self._threads.submit(functools.partial(self._run, key, job))

    def _run(self, key: object, job: Job) -> None:
        failed = False
        try:
            job.run()
        except BaseException as e:
            # A handler thread is never the main thread: SystemExit ends nothing there,
            # and a KeyboardInterrupt can only be one the handler raised itself.  Both are
            # this handler's failure, like any exception.
            failed = True
            report_error(self._settings, e, job.event)
        finally:
            with self._changed:
                if not job.counted:
                    job.counted = True
                    self._counters.background_finished += 1
                    self._counters.background_failed += failed
                self._running.discard(job)
                self._lanes.finish(key)
                if not self._gave_up:
                    self._start_locked()
                self._changed.notify_all()

    def close(self, grace: float, *, why: str = "close()") -> None:
        """Stop accepting, let handlers run for *grace* s, abandon (and report) the rest.

        Waits for what was reserved too: a ``handle()`` under way queues its
        handlers into the drain.  Threads still running cannot be stopped; they
        are daemons, so they do not hold the process at exit either.
        """
        began = time.monotonic()
        deadline = began + grace
        interrupted: KeyboardInterrupt | None = None
        with self._changed:
            if self._closed:
                return
            try:
                self._closed = True
                while self._lanes.size:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._changed.wait(left)
            except KeyboardInterrupt as e:  # Ctrl-C while waiting: stop, account, re-raise
                interrupted = e
            self._gave_up = True
            dropped = self._lanes.drop_waiting()
            running = [job for job in self._running if not job.counted]
            for job in (*dropped, *running):
                job.counted = True
            self._counters.background_abandoned += len(dropped) + len(running)
            self._changed.notify_all()
        self._threads.stop()
        waited = time.monotonic() - began
        _log_abandoned(f"{why} after {waited:.1f}s", dropped, running, "still running")
        if interrupted is not None:
            raise interrupted


class _Task(asyncio.Task[None]):
    """A background handler's task, which knows whether somebody cancelled it.

    A ``CancelledError`` out of a handler is either a cancellation of its task
    (``aclose()``, or the event loop shutting down: the handler is abandoned)
    or a stray one its own code raised (a failure like any exception).  Only
    ``cancel()`` tells them apart (``Task.cancelling()`` exists from 3.11 on).
    """

    _cancel_requests = 0

    def cancel(self, msg: Any = None) -> bool:
        self._cancel_requests += 1
        return super().cancel(msg)

    if sys.version_info >= (3, 11):

        def uncancel(self) -> int:
            self._cancel_requests = max(0, self._cancel_requests - 1)
            return super().uncancel()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requests > 0


class _FromThread(Exception):
    """A sync handler in a pool thread raised a ``BaseException`` (``SystemExit``...).

    Carried to the loop as an ordinary exception, so it fails the handler and
    cannot stop the event loop; reported as the original.
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(type(original).__name__)
        self.original = original


def _retrieve(task: asyncio.Task[None]) -> None:
    """A ``KeyboardInterrupt``/``SystemExit`` left a handler's task after it was reported:
    retrieved here, so asyncio does not log it again as "never retrieved"."""
    if not task.cancelled():
        task.exception()


class TaskPool:
    """Background handlers of ``handle_async()`` on one event loop: async ones as tasks.

    Sync handlers registered with ``background=True`` run in this pool's
    threads (``in_thread``), so they never block the loop.  Everything else
    runs on the loop.
    """

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
        self._settings = settings
        self.loop = loop
        workers = settings.background_workers
        self._lanes: Lanes[Job] = Lanes(workers, workers + settings.background_backlog)
        self._running: set[Job] = set()
        self._threads: DaemonThreads | None = None
        self._counters = Counters()
        self._closed = False
        self._gave_up = False
        self._changed: asyncio.Event | None = None
        self._ending: tuple[list[Job], list[Job]] | None = None
        """At the loop's end without ``aclose()``: what never started, and what was cancelled."""
        self.pid = os.getpid()

    def stats(self) -> Stats:
        return self._counters.snapshot()

    def in_thread(self, func: Callable[..., object], *args: Any) -> asyncio.Future[object]:
        """Call sync *func* in one of the pool's threads; its outcome, on the loop."""
        loop = self.loop
        future: asyncio.Future[object] = loop.create_future()
        context = contextvars.copy_context()

        def settle(ok: bool, value: Any) -> None:
            if future.cancelled():
                return
            if ok:
                future.set_result(value)
            else:
                plain = isinstance(value, Exception) and not isinstance(value, StopIteration)
                future.set_exception(value if plain else _FromThread(value))

        def call() -> None:
            try:
                ok, value = True, context.run(func, *args)
            except BaseException as e:  # never the main thread: see ThreadPool._run
                ok, value = False, e
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(settle, ok, value)

        if self._threads is None:
            self._threads = DaemonThreads(self._settings.background_workers)
        self._threads.submit(call)
        return future

    def reserve(self, count: int) -> Reservation:
        if self._closed:
            self._counters.background_refused += count
            raise _closed_error(count, started=False)
        if not self._lanes.reserve(count):
            self._counters.background_refused += count
            raise _refused(count, self._lanes.capacity)
        return Reservation(self, count)

    def release(self, count: int) -> None:
        self._lanes.release(count)
        self._changes()

    def put(
        self,
        reservation: Reservation,
        run: Callable[[], Coroutine[Any, Any, object]],
        event: Any,
    ) -> None:
        """``ThreadPool.put`` for this loop."""
        self._lanes.take_reserved(reservation)
        if self._gave_up:
            refused = 1 + reservation.left
            self._lanes.release(refused)
            reservation.left = 0
            self._counters.background_refused += refused
            self._changes()
            raise _closed_error(refused, started=True)
        self._counters.background_started += 1
        self._lanes.put(chat_key(event), Job(run, event))
        self._start()

    def _changes(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def _start(self) -> None:
        for key, job in self._lanes.take():
            self._running.add(job)
            job.task = _Task(self._run(key, job), loop=self.loop)
            job.task.add_done_callback(_retrieve)

    async def _run(self, key: object, job: Job) -> None:
        failed = cancelled = destroyed = False
        try:
            await job.run()
        except GeneratorExit:
            # Not cancelled but destroyed: its loop was closed with it pending.  Counted
            # (abandoned), nothing scheduled on the dead loop, and never swallowed.
            destroyed = True
            if not job.counted:
                job.counted = True
                self._counters.background_abandoned += 1
            raise
        except asyncio.CancelledError as e:
            task = asyncio.current_task()
            if isinstance(task, _Task) and task.cancel_requested:
                cancelled = True  # aclose(), or the loop is ending: abandoned
                raise
            failed = True  # a stray one out of the handler's own code
            report_error(self._settings, e, job.event)
        except _FromThread as e:
            failed = True
            report_error(self._settings, e.original, job.event)
        except (KeyboardInterrupt, SystemExit) as e:
            # Raised on the loop's own thread (a Ctrl-C lands wherever the main thread
            # is): reported, then left to stop the loop as asyncio does for any task.
            failed = True
            report_error(self._settings, e, job.event)
            raise
        except BaseException as e:
            failed = True
            report_error(self._settings, e, job.event)
        finally:
            if not destroyed:
                self._over(key, job, failed=failed, cancelled=cancelled)

    def _over(self, key: object, job: Job, *, failed: bool, cancelled: bool) -> None:
        if cancelled and not self._gave_up:
            # Cancelled, and not by aclose(): the loop is shutting down (asyncio.run and
            # aiohttp cancel every task).  Start nothing more; what waits is abandoned.
            self._end_with_loop()
        if not job.counted:
            job.counted = True
            if cancelled:
                self._counters.background_abandoned += 1
                if self._ending is not None:
                    self._ending[1].append(job)
            else:
                self._counters.background_finished += 1
                self._counters.background_failed += failed
        self._running.discard(job)
        self._lanes.finish(key)
        if not self._gave_up:
            self._start()
        elif self._ending is not None and not self._running:
            # One WARNING, once the last handler running at the loop's end is over.
            waiting, running = self._ending
            self._ending = None
            _log_abandoned(_LOOP_ENDED, waiting, running, "cancelled")
        self._changes()

    def _end_with_loop(self) -> None:
        """The loop ends without ``aclose()``: drop what waits and count it."""
        self._closed = self._gave_up = True
        dropped = self._lanes.drop_waiting()
        for job in dropped:
            job.counted = True
        self._counters.background_abandoned += len(dropped)
        self._ending = (dropped, [])

    def end_if_loop_closed(self) -> None:
        """The loop was closed without its tasks ever being cancelled: count what they held."""
        if self._gave_up or not self.loop.is_closed():
            return
        self._closed = self._gave_up = True
        dropped = self._lanes.drop_waiting()
        running = [job for job in self._running if not job.counted]
        for job in (*dropped, *running):
            job.counted = True
        self._counters.background_abandoned += len(dropped) + len(running)
        _log_abandoned("the event loop closed before aclose() and", dropped, running, "lost")

    async def aclose(self, grace: float) -> None:
        """Stop accepting, let handlers run for *grace* s, cancel (and report) the rest."""
        if self._closed:
            return
        self._closed = True
        deadline = self.loop.time() + grace
        changed = self._changed = asyncio.Event()
        while self._lanes.size:
            left = deadline - self.loop.time()
            if left <= 0:
                break
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), left)
            except asyncio.TimeoutError:
                break
        self._gave_up = True
        dropped = self._lanes.drop_waiting()
        running = [job for job in self._running if not job.counted]
        for job in (*dropped, *running):
            job.counted = True
        self._counters.background_abandoned += len(dropped) + len(running)
        tasks = [job.task for job in running if job.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_SETTLE)
        _log_abandoned(f"aclose() after {grace:.1f}s", dropped, running, "still running")
        if self._threads is not None:
            self._threads.stop()
