"""The loading animation: "the bot is typing", between "Read" and the reply.

LINE's ``POST /v2/bot/chat/loading/start`` shows the animation in a 1:1 chat
for ``loadingSeconds`` (5 to 60, in steps of 5), until the bot's next message
arrives; a new request while it shows resets its time.  A ``loading=`` handler
gets it after its mark and before it starts, started again while the handler
still runs (up to ``loading_limit``), and never once the handler returned.

The requests go through the marking engine of the loop they run on (same
session, auth, timeouts and concurrency slots) and honour the channel's guard
(401 latch, retry budget) with a 429 pause of its own: LINE limits
``loading/start`` (100 requests/s) apart from mark-as-read, so its 429 never
stops marking.  A loading request is useless late, so it is retried at most
once, briefly, and never once the handler returned; failures are counted and
logged once per burst, and never delay a handler by more than ``loading_wait``.
The animations of a body's ``handle()``-time steps start together, each after
its own mark, and their waits share the body's ``wait_timeout``
(``BodyLoading``).  The refreshers are the engine's tasks: closing it cancels
and awaits them before the HTTP session and the loop go away.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import random
import threading
import time
from collections.abc import Coroutine
from typing import Any

from ._engine import Engine
from ._guard import ChannelGuard
from ._http import ApiResponse, TransportError
from ._retry import Verdict, classify, is_testing
from ._settings import Settings
from ._stats import Counters, Stats
from ._targets import Endpoint

log = logging.getLogger(__name__)

LOADING_PATH = "/v2/bot/chat/loading/start"
DEFAULT_LOADING_SECONDS = 20
"""``loading=True``: LINE's own default, long enough for most model calls between refreshes."""

_RETRY_DELAY_MAX = 0.1
"""Upper bound (s) of the jittered pause before the one retry: late is useless."""


def validate_loading(value: object) -> int:
    """Check a ``loading=`` value at registration; the animation's seconds, ``0`` for off.

    ``True`` means ``DEFAULT_LOADING_SECONDS``; an ``int`` is taken as seconds
    and must be what LINE accepts (5 to 60 in steps of 5).  Compared by
    identity, so ``1`` is not ``True`` but a ``ValueError``, and ``None`` or
    ``"20"`` are a ``TypeError``.
    """
    if value is False:
        return 0
    if value is True:
        return DEFAULT_LOADING_SECONDS
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"loading must be True, False or seconds (an int), got {value!r}")
    if not 5 <= value <= 60 or value % 5:
        raise ValueError(f"loading seconds must be 5 to 60 in steps of 5 (LINE's rule): {value}")
    return value


def loading_user(event: Any) -> str | None:
    """The user ID of *event*'s chat if it is a 1:1 chat (the only kind LINE animates)."""
    source = getattr(event, "source", None)
    if getattr(source, "type", None) != "user":
        return None
    user_id = getattr(source, "user_id", None)
    return user_id if isinstance(user_id, str) and user_id else None


def _refusal(guard: ChannelGuard) -> str | None:
    """Why no loading request may be sent now, or ``None``."""
    # The token endpoint stands for "this token": a 401 latches every endpoint.
    if guard.latched(Endpoint.TOKEN):
        return "not sent: LINE answered 401 recently (auth latch)"
    if guard.pause_left(LOADING_PATH) > 0:
        return "not sent: loading/start rate limited (429 pause)"
    return None


class Showing:
    """One handler's animation, kept up until ``stop()``: what ``Loader.begin`` returns.

    ``stop()`` and the check before each request share a lock, so a request
    either started before ``stop()`` (it is let finish) or never starts: once
    the handler returned, nothing is sent, not even the retry of a start that
    failed while the handler ran.
    """

    __slots__ = ("_future", "_in_flight", "_lock", "_settled", "loop", "since", "stopped", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop, *, threaded: bool) -> None:
        self.loop = loop
        self.stopped = False
        self.task: asyncio.Task[None] | None = None
        self.since: float | None = None
        """When the refresher was launched: ``time.monotonic()`` (threaded) or the loop's time."""
        self._lock = threading.Lock()
        self._in_flight = False
        self._settled: threading.Event | None = threading.Event() if threaded else None
        self._future: asyncio.Future[None] | None = None if threaded else loop.create_future()

    def _launch(self, engine: Engine, coro: Coroutine[Any, Any, None]) -> None:
        """On the loop: run the refresher (a no-op if stopped before it got here, or closing)."""
        if self.stopped:
            coro.close()
            self._settle()
            return
        self.since = time.monotonic() if self._settled is not None else self.loop.time()
        self.task = engine.spawn(coro)
        if self.task is None:  # the engine is closing: nothing is sent any more
            self._settle()
        else:  # cancelled before its first step (at close), its own ``finally`` never runs
            self.task.add_done_callback(lambda _: self._settle())

    def _settle(self) -> None:
        if self._settled is not None:
            self._settled.set()
        elif self._future is not None and not self._future.done():
            self._future.set_result(None)

    def _may_send(self) -> bool:
        """On the loop, before each request: ``False`` once stopped, else the request is on."""
        with self._lock:
            if self.stopped:
                return False
            self._in_flight = True
            return True

    def _sent(self) -> None:
        with self._lock:
            self._in_flight = False

    def wait(self, timeout: float) -> None:
        """Block until the first start was answered (or failed), at most *timeout* s."""
        if self._settled is not None and timeout > 0:
            self._settled.wait(timeout)

    async def await_settled(self, timeout: float) -> None:
        """``wait`` on the loop."""
        if self._future is not None and timeout > 0:
            await asyncio.wait({self._future}, timeout=timeout)

    def stop(self) -> None:
        """The handler returned: start nothing more.  A request on the wire is let finish."""
        with self._lock:
            self.stopped = True
        if self._settled is None:
            self._cancel()
        else:
            # A closed loop raises: then nothing can be sent anyway.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        """On the loop: end a refresher that is waiting (for its next start, or to retry)."""
        if self.task is not None and not self._in_flight:
            self.task.cancel()


class BodyLoading:
    """The animations of one body's ``loading=`` steps run in ``handle()`` itself.

    Each is launched as soon as its own mark settled (``Loader.begin_body``),
    all of them at once, not when its step's turn comes; a step then waits for
    its animation's first answer at most ``loading_wait`` after its launch and
    never past the body's deadline (its start plus ``wait_timeout``).  So
    however many events a body has, and whatever the loading endpoint does,
    its handlers wait ``wait_timeout`` at most in all.
    """

    __slots__ = ("_deadline", "_loading_wait", "_showings")

    def __init__(self, showings: dict[int, Showing], deadline: float, loading_wait: float):
        self._showings = showings
        self._deadline = deadline
        self._loading_wait = loading_wait

    def _timeout(self, showing: Showing, now: float) -> float:
        since = now if showing.since is None else showing.since
        return min(since + self._loading_wait, self._deadline) - now

    def wait(self, index: int) -> Showing | None:
        """From the handler's thread: step *index*'s animation, once answered or out of time."""
        showing = self._showings.get(index)
        if showing is not None:
            showing.wait(self._timeout(showing, time.monotonic()))
        return showing

    async def await_(self, index: int) -> Showing | None:
        """``wait`` on the loop (the deadline on the loop's clock)."""
        showing = self._showings.get(index)
        if showing is not None:
            await showing.await_settled(self._timeout(showing, showing.loop.time()))
        return showing

    def skip(self, index: int) -> None:
        """Step *index* will not run its handler (handled before): its animation stops unseen."""
        showing = self._showings.get(index)
        if showing is not None:
            showing.stop()

    def stop_all(self) -> None:
        """After the body's handlers (or one of them raised): nothing more is started."""
        for showing in self._showings.values():
            showing.stop()


BodyStep = tuple[int, Any, int, "concurrent.futures.Future[Any] | asyncio.Future[Any] | None"]
"""``(index, event, seconds, after)``: a step's animation, launched once *after* is done."""


class Loader:
    """Sends and refreshes loading animations for one handler; counts them, logs failures.

    Thread-safe: sync handlers begin animations from worker threads, the
    requests themselves run on the engine's loop.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._counters = Counters()
        self._failing = False
        self._showing: set[Showing] = set()

    def stats(self) -> Stats:
        with self._lock:
            return self._counters.snapshot()

    def skipped(self) -> None:
        with self._lock:
            self._counters.loading_skipped += 1

    # -- one start ---------------------------------------------------------

    async def start(
        self, engine: Engine, user_id: str, seconds: int, showing: Showing | None = None
    ) -> bool:
        """Start the animation once (retried at most once, briefly); whether LINE accepted it.

        With *showing*, no request starts once it was stopped (the handler
        returned): a retry due then is dropped, and the start counts as failed.
        """
        payload = json.dumps({"chatId": user_id, "loadingSeconds": seconds}).encode()
        guard = engine.guard
        response: ApiResponse | None = None
        error = ""
        refund = 0
        for attempt in (1, 2):
            refusal = _refusal(guard)
            if refusal is not None:
                error = refusal
                break
            if showing is not None and not showing._may_send():
                if attempt == 1:
                    return False  # stopped before anything was sent: nothing to count
                error = f"{error or 'failed'}; not retried: the handler had returned"
                break
            timed_out = False
            try:
                response, error = await engine.request(LOADING_PATH, payload), ""
            except TransportError as e:
                response, error, timed_out = None, str(e), e.timeout
            finally:
                if showing is not None:
                    showing._sent()
            verdict = classify(response)
            if verdict is Verdict.DONE:
                guard.record_success(refund)
                self._succeeded()
                return True
            if response is not None and response.status in (401, 429):
                self._heed(guard, response)
                break
            if verdict is Verdict.GIVE_UP or attempt == 2:
                break
            refund = guard.spend_retry(after_timeout=timed_out)
            if not refund:
                error = error or "retry budget exhausted"
                break
            if not is_testing():
                await asyncio.sleep(random.uniform(0, _RETRY_DELAY_MAX))
        self._failed(user_id, response, error)
        return False

    def _heed(self, guard: ChannelGuard, response: ApiResponse) -> None:
        """A 401 latches the token (every endpoint); a 429 pauses ``loading/start`` alone."""
        if response.status == 401:
            guard.latch(Endpoint.TOKEN, 401)
            return
        pause = response.retry_after
        if pause is not None:
            pause = min(pause, self._settings.max_rate_limit_pause)
        guard.rate_limited(LOADING_PATH, pause)  # LINE limits each endpoint: marks go on

    async def show(self, engine: Engine, user_id: str, seconds: int) -> bool:
        """``start`` as the engine's task (``show_loading``): closing ends it, then ``False``.

        Cancelling the caller leaves the request to the engine, which ends it at close.
        """
        task = engine.spawn(self.start(engine, user_id, seconds))
        if task is None:
            return False
        await asyncio.wait({task})
        return False if task.cancelled() else task.result()

    def _succeeded(self) -> None:
        with self._lock:
            self._counters.loading_started += 1
            recovered, self._failing = self._failing, False
        if recovered:
            log.info("line_markread: loading animation requests succeed again")

    def _failed(self, user_id: str, response: ApiResponse | None, error: str) -> None:
        with self._lock:
            self._counters.loading_failed += 1
            first, self._failing = not self._failing, True
        # One WARNING per burst of failures: a LINE outage must not flood the log.
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "line_markread: loading animation failed for user:%s: %s %s (x-line-request-id: %s)%s",
            user_id,
            response.status if response is not None else "no response",
            error or (response.message if response is not None else "") or "",
            response.request_id if response is not None else None,
            "; further failures are logged at DEBUG until one succeeds" if first else "",
        )

    # -- kept up while a handler runs ---------------------------------------

    async def _keep(self, engine: Engine, user_id: str, seconds: int, showing: Showing) -> None:
        """Start the animation, then again shortly before it expires, until stopped or the limit."""
        loop = engine.loop
        settings = self._settings
        first = last = loop.time()
        try:
            await self.start(engine, user_id, seconds, showing)
        finally:
            showing._settle()
        interval = seconds - settings.loading_margin
        while not showing.stopped:
            due = last + interval
            if due - first > settings.loading_limit:
                return
            await asyncio.sleep(max(0.0, due - loop.time()))
            if showing.stopped:
                return
            last = loop.time()
            await self.start(engine, user_id, seconds, showing)

    def _track(self, showing: Showing, task_done: bool = False) -> None:
        with self._lock:
            if task_done:
                self._showing.discard(showing)
            else:
                self._showing.add(showing)

    def _launch(self, showing: Showing, engine: Engine, user_id: str, seconds: int) -> None:
        """On the loop: start the refresher task for *showing* (the engine's, closed with it)."""
        showing._launch(engine, self._keep(engine, user_id, seconds, showing))
        if showing.task is not None:
            self._track(showing)
            showing.task.add_done_callback(lambda _: self._track(showing, task_done=True))

    def _launch_threadsafe(
        self, showing: Showing, engine: Engine, user_id: str, seconds: int
    ) -> bool:
        """From any thread: ``_launch`` on the engine's loop; ``False`` if that loop is gone."""
        try:
            engine.loop.call_soon_threadsafe(self._launch, showing, engine, user_id, seconds)
        except RuntimeError:  # the background loop stopped: the handler/marker is closing
            showing._settle()
            return False
        return True

    def begin(self, engine: Engine, event: Any, seconds: int) -> Showing | None:
        """From a handler's thread: start the animation on *engine*'s loop; ``None`` if skipped.

        Returns once LINE answered the first start, or after ``loading_wait``.
        """
        user_id = loading_user(event)
        if user_id is None:
            self.skipped()
            return None
        showing = Showing(engine.loop, threaded=True)
        if not self._launch_threadsafe(showing, engine, user_id, seconds):
            return None
        showing.wait(self._settings.loading_wait)
        return showing

    async def abegin(self, engine: Engine, event: Any, seconds: int) -> Showing | None:
        """``begin`` on the running loop (*engine*'s)."""
        user_id = loading_user(event)
        if user_id is None:
            self.skipped()
            return None
        showing = Showing(engine.loop, threaded=False)
        self._launch(showing, engine, user_id, seconds)
        await showing.await_settled(self._settings.loading_wait)
        return showing

    def begin_body(
        self, engine: Engine, steps: list[BodyStep], deadline: float, *, threaded: bool
    ) -> BodyLoading:
        """Launch each step's animation once its *after* (its mark's future) is done, or now.

        Returns at once; ``BodyLoading.wait``/``await_`` then wait per step.
        *threaded*: called from a handler's thread (*after*: thread-safe futures,
        *deadline*: ``time.monotonic()``), else on *engine*'s loop (asyncio
        futures, the loop's time).  Each *after* is done by the body's deadline
        at the latest (the engine releases every waiter by then).
        """
        showings: dict[int, Showing] = {}
        for index, event, seconds, after in steps:
            user_id = loading_user(event)
            if user_id is None:
                self.skipped()
                continue
            showing = showings[index] = Showing(engine.loop, threaded=threaded)
            launch = functools.partial(
                self._launch_threadsafe if threaded else self._launch,
                showing,
                engine,
                user_id,
                seconds,
            )
            if after is None:
                launch()
            else:
                after.add_done_callback(lambda _, launch=launch: launch())  # type: ignore[misc]  # either kind of future
        return BodyLoading(showings, deadline, self._settings.loading_wait)

    def stop_all(self) -> None:
        """At close: no animation is started again for handlers still running."""
        with self._lock:
            showing = list(self._showing)
        for item in showing:
            item.stop()
