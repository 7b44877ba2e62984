"""``Marker``: the public functional core, with paired sync and async methods.

``WebhookHandler`` is a thin dispatcher around one ``Marker``; bots that
parse webhooks themselves (``WebhookParser``, as in the SDK's aiohttp
example) use a ``Marker`` directly.  The async methods run the engine on
the caller's event loop; the sync ones run the very same coroutines on a
background loop thread (see ``_loop_thread``), so the two cannot drift.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from ._callbacks import CallbackThread
from ._chat import Ticket, failed_ticket
from ._engine import Engine
from ._guard import ChannelGuard
from ._http import Credentials
from ._loading import Loader
from ._loop_thread import LoopThread, abandon
from ._outcome import Outcome
from ._settings import Settings
from ._stats import Counters, Stats
from ._targets import ReadTarget, Skip, raw_event, read_target

log = logging.getLogger(__name__)

LOOP_STALL_SLACK = 1.0
"""Seconds past ``wait_timeout`` a sync caller waits for the background loop's answer.

The body's deadline is the engine's alone (on its loop's clock); this is
only the guard against a loop that died or stalls, so that ``handle()``
stays bounded even then."""


@attrs.frozen
class BlockingTicket:
    """A body handed to the background loop: one future per event (``None``: nothing to mark)."""

    futures: tuple[concurrent.futures.Future[Outcome] | None, ...]
    handed_at: float = 0.0
    """``time.monotonic()`` at the hand-over: the stall guard counts from it."""


def _submit_for(
    engine: Engine,
    targets: Sequence[ReadTarget | None],
    futures: tuple[concurrent.futures.Future[Outcome] | None, ...],
    handed_at: float,
    wait_timeout: float,
) -> None:
    """On the loop thread: start the marks and pass each outcome on to the waiting thread.

    The engine gets the time *left* of ``wait_timeout`` (the hand-over took
    some of it) and sets the body's deadline on its own clock.
    """
    try:
        time_left = wait_timeout - (time.monotonic() - handed_at)
        ticket = engine.submit(targets, timeout=time_left)
    except Exception:  # a bug: still, no waiting thread may hang on it
        log.exception("line_markread: could not start the marks of a webhook body")
        _resolve_all(futures, Outcome.FAILED)
        return
    for waiter, future in zip(ticket.waiters, futures, strict=True):
        if waiter is not None and future is not None:
            done = waiter.done
            if done.done():  # already read, or the engine closed meanwhile
                future.set_result(Outcome.FAILED if done.cancelled() else done.result())
            else:
                waiter.sink = future  # the engine sets it when it releases the waiter


_markers: weakref.WeakSet[Marker] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child keeps none of the parent's engines, and no lock a parent thread held.

    The engines run on the parent's loops, which no thread runs here: closing
    one would wait forever for a loop that never turns (``close()`` or
    ``with handler:`` in a child before any use), and touching their sockets
    would disturb the parent.  They are kept untouched (``abandon``); the
    child makes its own engines on first use.
    """
    for marker in list(_markers):
        marker._lock = threading.Lock()
        abandon(*marker._engines.values())
        marker._engines.clear()
        marker._pid = os.getpid()


if hasattr(os, "register_at_fork"):  # pragma: no branch - every POSIX Python has it
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _resolve_all(
    futures: Iterable[concurrent.futures.Future[Outcome] | None], outcome: Outcome
) -> None:
    for future in futures:
        if future is not None and not future.done():
            future.set_result(outcome)


class Marker:
    """Marks LINE webhook events read, through one engine per event loop.

    Build it with exactly one of ``access_token=`` (a channel access token)
    or ``configuration=`` (a ``linebot.v3.messaging.Configuration``, whose
    ``host`` is honoured too), plus any ``Settings`` option as a keyword.
    The API host: ``host=`` (with ``access_token=``) or the configuration's,
    else ``LINE_API_HOST`` from the environment, else ``https://api.line.me``.
    Close it with ``close()`` (sync code) or ``await aclose()`` (async code)
    so that pending marks are drained and the HTTP session is released.
    """

    def __init__(
        self,
        *,
        access_token: str | None = None,
        configuration: Any = None,
        host: str | None = None,
        **options: Any,
    ) -> None:
        self._settings = Settings(**options)
        self._credentials = Credentials.from_arguments(access_token, configuration, host)
        self._guard = ChannelGuard(
            retry_budget=self._settings.retry_budget,
            auth_cooldown=self._settings.auth_cooldown,
            rate_limit_cooldown=self._settings.rate_limit_cooldown,
        )
        self._lock = threading.Lock()
        self._engines: dict[asyncio.AbstractEventLoop, Engine] = {}
        self._counters: list[Counters] = []
        self._caller_counts = Counters()
        self._pid = os.getpid()
        self._closed = False
        self._thread = LoopThread()
        self._callbacks = CallbackThread()
        # The loading animation (handlers' ``loading=``), counted with the marks.
        self._loader = Loader(self._settings)
        # A bot that never closes (the SDK's examples close nothing) still
        # drains its sync marks and exits quietly.
        self._finalizer = weakref.finalize(
            self, _close_background, self._thread, self._engines, self._settings.close_grace
        )
        _markers.add(self)

    def __repr__(self) -> str:
        s = self._settings
        return (
            f"<Marker host={self._credentials.host!r} mode={s.mode!r} "
            f"wait_timeout={s.wait_timeout} closed={self._closed}>"
        )

    @property
    def settings(self) -> Settings:
        """The validated options in force."""
        return self._settings

    @property
    def closed(self) -> bool:
        return self._closed

    def uses(self, configuration: Any) -> bool:
        """Whether *configuration* names the same host and access token as this marker."""
        return Credentials.from_arguments(None, configuration) == self._credentials

    # -- events -> targets (pure) ----------------------------------------

    def _target_of(self, event: Any) -> ReadTarget | Skip:
        """How *event* (an SDK event or its webhook JSON) would be marked, or why it would not."""
        return read_target(
            raw_event(event), mode=self._settings.mode, mark_standby=self._settings.mark_standby
        )

    # -- marking ----------------------------------------------------------

    async def amark(self, events: Iterable[Any], *, wait: bool = True) -> list[Outcome]:
        """Mark *events* read, on the running event loop; one ``Outcome`` per event.

        Events of one chat share one request (the newest message marks the
        earlier ones).  With ``wait=True`` this returns when every mark is
        done or ``wait_timeout`` has passed; it never raises for a failed mark.
        Raises ``RuntimeError`` if the marker is closed.
        """
        self._check_open()
        targets: list[ReadTarget | None] = []
        skipped = 0
        for event in events:
            target = self._target_of(event)
            if isinstance(target, Skip):
                skipped += target is not Skip.NOT_A_MESSAGE
                targets.append(None)
            else:
                targets.append(target)
        ticket = await self._asubmit(targets, skipped=skipped)
        if not wait:
            return [Outcome.SKIPPED if w is None else Outcome.PENDING for w in ticket.waiters]
        return [await self._await_event(ticket, index) for index in range(len(targets))]

    def mark(self, events: Iterable[Any], *, wait: bool = True) -> list[Outcome]:
        """Blocking twin of ``amark`` for synchronous code (it runs on a background loop)."""
        self._check_open()
        events = list(events)
        return self._thread.run(self.amark(events, wait=wait))

    # The handler's protocol, private: start every mark of a body, then wait per event.

    async def _asubmit(
        self, targets: Sequence[ReadTarget | None], *, skipped: int = 0, opted_out: int = 0
    ) -> Ticket:
        """Start marking *targets* on the running loop (``None``: nothing to mark).

        Never raises for a closed marker: the caller checked that it was open
        when it began (``_check_open``), so a close that came since only makes
        its marks fail (counted), and its handlers still run.
        """
        self._count(skipped=skipped, opted_out=opted_out)
        if not any(targets):
            return Ticket((None,) * len(targets))
        try:
            engine = self._engine()
        except RuntimeError:  # closed since the caller's check
            return self._failed_ticket(targets)
        return engine.submit(targets)

    def _failed_ticket(self, targets: Sequence[ReadTarget | None]) -> Ticket:
        ticket, failed = failed_ticket(targets, asyncio.get_running_loop())
        self._count(failed=failed)
        return ticket

    async def _await_event(self, ticket: Ticket, index: int) -> Outcome:
        """Wait for the mark of event *index* (at most until the body's ``wait_timeout``)."""
        outcome = await ticket.outcome(index)
        if outcome is Outcome.TIMED_OUT:
            self._count(timed_out=1)
        return outcome

    def _submit(
        self, targets: Sequence[ReadTarget | None], *, skipped: int = 0, opted_out: int = 0
    ) -> BlockingTicket:
        """``_asubmit`` for threads: hands the body to the background loop without waiting.

        One wake-up of the loop thread to start the marks and one of the
        caller per event it waits for: the least a thread hop allows.  Like
        ``_asubmit``, never raises for a marker closed since the caller's check.
        """
        self._count(skipped=skipped, opted_out=opted_out)
        if not any(targets):
            return BlockingTicket((None,) * len(targets))
        if self._thread.is_running_here():
            raise RuntimeError("line_markread: handle() called on the plugin's own loop thread")
        handed_at = time.monotonic()
        futures: tuple[concurrent.futures.Future[Outcome] | None, ...] = tuple(
            None if t is None else concurrent.futures.Future() for t in targets
        )
        try:
            engine = self._background_engine()
            # The caller's context goes along, so the marks' tasks see its contextvars
            # (a tracing span: a mark's HTTP span joins the webhook's trace).  Said
            # explicitly: asyncio's handles copy it too, a different hand-over might not.
            engine.loop.call_soon_threadsafe(
                _submit_for,
                engine,
                targets,
                futures,
                handed_at,
                self._settings.wait_timeout,
                context=contextvars.copy_context(),
            )
        except RuntimeError:  # closed since the caller's check (or its loop stopped)
            self._count(failed=len(targets) - futures.count(None))
            _resolve_all(futures, Outcome.FAILED)
        return BlockingTicket(futures, handed_at)

    def _background_engine(self) -> Engine:
        """The loop thread's engine, made there on first use (one round trip, once).

        Holding it here means a body handed over just before ``close()`` is
        still submitted: ``close()`` queues the engine's drain behind it.
        """
        self._check_open()
        loop = self._thread.loop()
        with self._lock:
            engine = self._engines.get(loop)
        if engine is None or engine.closed:
            engine = self._thread.run(self._aengine())
        return engine

    async def _aengine(self) -> Engine:
        return self._engine()

    def _wait_event(self, ticket: BlockingTicket, index: int) -> Outcome:
        """Blocking twin of ``_await_event``."""
        future = ticket.futures[index]
        if future is None:
            return Outcome.SKIPPED
        # The loop settles every waiter by the body's deadline; this bound only
        # guards against a loop that died or stalls.
        stall_guard = ticket.handed_at + self._settings.wait_timeout + LOOP_STALL_SLACK
        try:
            outcome = future.result(timeout=max(0.0, stall_guard - time.monotonic()))
        except concurrent.futures.TimeoutError:
            log.warning("line_markread: no outcome from the background loop; handler released")
            outcome = Outcome.TIMED_OUT
        except Exception:  # cancelled, or a bug: the handler runs all the same
            log.exception("line_markread: no outcome for a mark; handler released")
            outcome = Outcome.FAILED
        if outcome is Outcome.TIMED_OUT:
            self._count(timed_out=1)
        return outcome

    def _count(
        self, *, skipped: int = 0, opted_out: int = 0, timed_out: int = 0, failed: int = 0
    ) -> None:
        """Counts made in the caller's thread (engines count on their own loop)."""
        if skipped or opted_out or timed_out or failed:
            with self._lock:
                self._caller_counts.skipped += skipped
                self._caller_counts.opted_out += opted_out
                self._caller_counts.timed_out += timed_out
                self._caller_counts.failed += failed

    def _check_open(self) -> None:
        """The one place a closed marker raises: at the start of a call, before anything else."""
        if self._closed:
            raise RuntimeError("line_markread: this handler/marker is closed")

    # -- engines ----------------------------------------------------------

    def _engine(self) -> Engine:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closed:
                raise RuntimeError("line_markread: this handler/marker is closed")
            if self._pid != os.getpid():
                # A forked child inherits the parent's engines but none of their
                # loops: they are the parent's to close, so the child keeps them
                # untouched (closing or collecting them would act on shared fds).
                abandon(*self._engines.values())
                self._engines.clear()
                self._pid = os.getpid()
            engine = self._engines.get(loop)
            if engine is None or engine.closed:
                for old_loop in [lp for lp in self._engines if lp.is_closed()]:
                    del self._engines[old_loop]
                engine = self._engines[loop] = Engine(
                    self._settings, self._credentials, self._guard, self._callbacks
                )
                self._counters.append(engine.counters)
            return engine

    async def aflush(self) -> None:
        """Wait until every mark started so far on this loop and the background loop is over.

        Over means marked, failed for good or superseded: retries included, and
        the ``on_failure`` calls of those failures made (for up to ``close_grace``).
        For tests that look at what LINE received, and for orderly hand-overs.
        """
        engine = self._engines.get(asyncio.get_running_loop())
        if engine is not None:
            await engine.idle()
        if self._thread.is_started() and not self._thread.is_running_here():
            background = self._engines.get(self._thread.loop())
            if background is not None:
                future = asyncio.run_coroutine_threadsafe(background.idle(), background.loop)
                await asyncio.wrap_future(future)
        await asyncio.to_thread(self._callbacks.drain, self._settings.close_grace)

    def flush(self) -> None:
        """Blocking twin of ``aflush`` for the marks of the sync API (the background loop)."""
        if self._thread.is_started():
            background = self._engines.get(self._thread.loop())
            if background is not None:
                self._thread.run(background.idle())
        self._callbacks.drain(self._settings.close_grace)

    def tracked_chats(self) -> int:
        """Chats whose state is held, over all event loops (each up to ``max_tracked_chats``)."""
        return sum(engine.tracked_chats() for engine in list(self._engines.values()))

    def stats(self) -> Stats:
        """A snapshot of counters over every event loop this marker has used."""
        with self._lock:
            total = self._caller_counts.snapshot()
        total += self._loader.stats()
        for counters in list(self._counters):
            total += counters.snapshot()
        return total

    # -- closing ----------------------------------------------------------

    def _detach(self) -> list[Engine]:
        with self._lock:
            self._closed = True
            engines = [e for e in self._engines.values() if not e.closed]
            self._engines.clear()
            return engines

    def close(self, grace: float | None = None) -> None:
        """Drain pending marks for up to *grace* s (default ``close_grace``), then release HTTP.

        For synchronous code.  In async code use ``await aclose()``.
        """
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if (running is not None and running in self._engines) or self._thread.is_running_here():
            raise RuntimeError(
                "line_markread: close() called inside a running event loop; "
                "use 'await aclose()' there"
            )
        for engine in self._detach():
            if engine.loop.is_running():
                asyncio.run_coroutine_threadsafe(engine.aclose(grace), engine.loop).result()
        self._thread.stop(final=True)
        self._callbacks.stop(timeout=0.5)
        self._finalizer.detach()

    def __enter__(self) -> Marker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Marker:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self, grace: float | None = None) -> None:
        """Async twin of ``close()``: drains and releases without blocking the loop."""
        running = asyncio.get_running_loop()
        for engine in self._detach():
            if engine.loop is running:
                await engine.aclose(grace)
            elif engine.loop.is_running():
                future = asyncio.run_coroutine_threadsafe(engine.aclose(grace), engine.loop)
                await asyncio.wrap_future(future)
        await asyncio.to_thread(self._thread.stop, final=True)
        await asyncio.to_thread(self._callbacks.stop, 0.5)
        self._finalizer.detach()

    # -- serverless mode (settle_before_return) ---------------------------

    async def _asettle(self, targets: Sequence[ReadTarget | None], deadline: float) -> None:
        """Wait (until loop time *deadline*) for the marks of a body's chats, on this loop."""
        if any(targets):
            engine = self._engines.get(asyncio.get_running_loop())
            if engine is not None:
                self._report_cut(await engine.settle(targets, deadline))

    def _settle(self, targets: Sequence[ReadTarget | None], deadline: float) -> None:
        """Blocking twin of ``_asettle`` (*deadline* on the background loop: monotonic)."""
        if any(targets) and self._thread.is_started():
            engine = self._engines.get(self._thread.loop())
            if engine is not None:
                self._report_cut(self._thread.run(engine.settle(targets, deadline)))

    def _report_cut(self, busy_chats: int) -> None:
        if busy_chats:
            log.warning(
                "line_markread: %d chat(s) still had a mark in progress after settle_timeout "
                "(%.1fs); a platform that freezes the process may delay or lose it",
                busy_chats,
                self._settings.settle_timeout,
            )


def _close_background(
    thread: LoopThread, engines: dict[asyncio.AbstractEventLoop, Engine], grace: float
) -> None:
    """Finalizer: drain and close the background loop's engine of a marker nobody closed."""
    if not thread.is_started() or thread.is_running_here():
        return
    engine = engines.get(thread.loop())
    if engine is not None and not engine.closed:
        try:
            thread.run(engine.aclose(grace))
        except Exception:  # pragma: no cover - best effort at interpreter exit
            log.debug("line_markread: closing at exit failed", exc_info=True)
    thread.stop()
