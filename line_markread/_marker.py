"""``Marker``: the public functional core, with paired sync and async methods.

``WebhookHandler`` is a thin dispatcher around one ``Marker``; bots that
parse webhooks themselves (``WebhookParser``, as in the SDK's aiohttp
example) use a ``Marker`` directly.  The async methods run the engine on
the caller's event loop; the sync ones run the very same coroutines on a
background loop thread (see ``_loop_thread``), so the two cannot drift.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections.abc import Iterable, Sequence
from typing import Any, Optional, Union

from ._engine import Engine, Outcome, Ticket
from ._guard import ChannelGuard
from ._http import Credentials
from ._loop_thread import LoopThread
from ._settings import Settings
from ._stats import Counters, Stats
from ._targets import ReadTarget, Skip, raw_event, read_target

log = logging.getLogger(__name__)


class Marker:
    """Marks LINE webhook events read, through one engine per event loop.

    Build it with exactly one of ``access_token=`` (a channel access token)
    or ``configuration=`` (a ``linebot.v3.messaging.Configuration``, whose
    ``host`` is honoured too), plus any ``Settings`` option as a keyword.
    Close it with ``close()`` (sync code) or ``await aclose()`` (async code)
    so that pending marks are drained and the HTTP session is released.
    """

    def __init__(
        self,
        *,
        access_token: Optional[str] = None,
        configuration: Any = None,
        **options: Any,
    ) -> None:
        self._settings = Settings(**options)
        self._credentials = Credentials.from_arguments(access_token, configuration)
        self._guard = ChannelGuard(
            retry_budget=self._settings.retry_budget,
            auth_cooldown=self._settings.auth_cooldown,
            rate_limit_cooldown=self._settings.rate_limit_cooldown,
        )
        self._lock = threading.Lock()
        self._engines: dict[asyncio.AbstractEventLoop, Engine] = {}
        self._counters: list[Counters] = []
        self._pid = os.getpid()
        self._closed = False
        self._thread = LoopThread()
        # A bot that never closes (the SDK's examples close nothing) still
        # drains its sync marks and exits quietly.
        self._finalizer = weakref.finalize(
            self, _close_background, self._thread, self._engines, self._settings.close_grace
        )

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

    # -- events -> targets (pure) ----------------------------------------

    def target_of(self, event: Any) -> Union[ReadTarget, Skip]:
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
        """
        targets: list[Optional[ReadTarget]] = []
        skipped = 0
        for event in events:
            target = self.target_of(event)
            if isinstance(target, Skip):
                skipped += target is not Skip.NOT_A_MESSAGE
                targets.append(None)
            else:
                targets.append(target)
        ticket = self._engine().submit(targets, skipped=skipped)
        if not wait:
            return [Outcome.SKIPPED if w is None else Outcome.PENDING for w in ticket.waiters]
        return [await self.await_event(ticket, index) for index in range(len(ticket.waiters))]

    def mark(self, events: Iterable[Any], *, wait: bool = True) -> list[Outcome]:
        """Blocking twin of ``amark`` for synchronous code (it runs on a background loop)."""
        events = list(events)
        return self._thread.run(self.amark(events, wait=wait))

    # The two halves of a handler's body: start every mark, then wait per event.

    async def asubmit(
        self, targets: Sequence[Optional[ReadTarget]], *, skipped: int = 0, opted_out: int = 0
    ) -> Ticket:
        """Start marking *targets* on the running loop (``None``: nothing to mark)."""
        return self._engine().submit(targets, skipped=skipped, opted_out=opted_out)

    def submit(
        self, targets: Sequence[Optional[ReadTarget]], *, skipped: int = 0, opted_out: int = 0
    ) -> Ticket:
        """Blocking twin of ``asubmit``, on the background loop."""
        return self._thread.run(self.asubmit(targets, skipped=skipped, opted_out=opted_out))

    async def await_event(self, ticket: Ticket, index: int) -> Outcome:
        """Wait for the mark of event *index* of *ticket*, bounded by the ticket's deadline."""
        waiter = ticket.waiters[index]
        if waiter is None:
            return Outcome.SKIPPED
        return await ticket.engine.wait(waiter, ticket.deadline)

    def wait_event(self, ticket: Ticket, index: int) -> Outcome:
        """Blocking twin of ``await_event``."""
        waiter = ticket.waiters[index]
        if waiter is None:
            return Outcome.SKIPPED
        if waiter.done.done():  # already settled: no trip to the loop thread
            return waiter.done.result()
        return self._thread.run(ticket.engine.wait(waiter, ticket.deadline))

    # -- engines ----------------------------------------------------------

    def _engine(self) -> Engine:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closed:
                raise RuntimeError("line_markread: this handler/marker is closed")
            if self._pid != os.getpid():
                # A forked child inherits the parent's engines but none of their loops.
                self._engines.clear()
                self._pid = os.getpid()
            engine = self._engines.get(loop)
            if engine is None or engine.closed:
                for old_loop in [lp for lp in self._engines if lp.is_closed()]:
                    del self._engines[old_loop]
                engine = self._engines[loop] = Engine(
                    self._settings, self._credentials, self._guard
                )
                self._counters.append(engine.counters)
            return engine

    def tracked_chats(self) -> int:
        """Chats whose state is held, over all event loops (each up to ``max_tracked_chats``)."""
        return sum(engine.tracked_chats() for engine in list(self._engines.values()))

    def stats(self) -> Stats:
        """A snapshot of counters over every event loop this marker has used."""
        total = Stats()
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

    def close(self, grace: Optional[float] = None) -> None:
        """Drain pending marks for up to *grace* s (default ``close_grace``), then release HTTP.

        For synchronous code.  In async code use ``await aclose()``.
        """
        try:
            running: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and running in self._engines:
            raise RuntimeError(
                "line_markread: close() called inside a running event loop; "
                "use 'await aclose()' there"
            )
        for engine in self._detach():
            if engine.loop.is_running():
                asyncio.run_coroutine_threadsafe(engine.aclose(grace), engine.loop).result()
        self._thread.stop()
        self._finalizer.detach()

    def __enter__(self) -> Marker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Marker:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self, grace: Optional[float] = None) -> None:
        """Async twin of ``close()``: drains and releases without blocking the loop."""
        running = asyncio.get_running_loop()
        for engine in self._detach():
            if engine.loop is running:
                await engine.aclose(grace)
            elif engine.loop.is_running():
                future = asyncio.run_coroutine_threadsafe(engine.aclose(grace), engine.loop)
                await asyncio.wrap_future(future)
        await asyncio.to_thread(self._thread.stop)
        self._finalizer.detach()


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
