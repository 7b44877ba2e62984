"""The marking engine: read targets -> HTTP requests, with coalescing and retries.

One engine serves one event loop.  Everything here runs on that loop, so the
per-chat state needs no locks.

The whole design rests on one platform fact: a 200 for a message's read
token marks that message *and every earlier one in the same chat*.  So each
chat keeps

* ``marked``: the newest message known to be read (a watermark);
* ``jobs``: the marks in progress (with coalescing, at most one: a newer
  message supersedes an older one still waiting or retrying);
* ``waiters``: one per message somebody may wait for, released when a 200
  for it or a newer message arrives, or when the mark in charge of it fails.

Messages are ordered by ``(timestamp, arrival sequence)``: LINE's timestamp
first, the order the plugin saw them second.

Invariant: every unresolved waiter with key ``k`` has a live job with key
``>= k``.  Submitting keeps it (a new job's key is the newest); supersession
keeps it (the superseding job is newer); a failure, an overflow or ``aclose``
resolves the waiters it would otherwise orphan.  Whatever happens, a waiter
is released at its body's deadline at the latest.

Hostile conditions (docs/fault-matrix.md): no exception of any type escapes
a mark's task (an unexpected one fails the mark for good, counted, with one
ERROR); chats with a mark in progress are capped by ``max_tracked_chats``;
``on_failure`` runs on its own thread; once closing began no attempt starts
that cannot end within the grace.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import random
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import attrs

from ._callbacks import CallbackThread
from ._chat import BodyWaiters, Chat, Job, Key, Ticket, Waiter, expire_all, failed_ticket
from ._guard import ChannelGuard
from ._http import ApiResponse, Credentials, Transport, TransportError
from ._outcome import MarkFailure, Outcome
from ._retry import Latencies, Verdict, attempt_timeout, classify, is_testing, next_delay
from ._sanitize import server_text
from ._settings import Settings
from ._stats import Counters
from ._targets import ChatId, ReadTarget

log = logging.getLogger(__name__)

T = TypeVar("T")

_CLOSE_SETTLE = 1.0
"""Seconds ``aclose`` waits for cancelled marks and the HTTP session after the grace."""


class GiveUp(enum.Enum):
    """Why a mark stops without (another) request; the value is the reason reported."""

    LATCHED = "not sent: LINE answered 401/403 recently (auth latch)"
    DEADLINE = "retry deadline passed"
    RATE_LIMITED = "rate limited (429) beyond the retry deadline"
    BUDGET = "retry budget exhausted"
    FINAL = ""
    """A final answer, or ``max_attempts`` reached: the answer itself is the reason."""
    CLOSING = "not sent: the marker is closing"
    OVERFLOW = "not sent: too many chats with a mark in progress (max_tracked_chats)"


class Engine:
    """Marks read targets on the event loop it was created on."""

    def __init__(
        self,
        settings: Settings,
        credentials: Credentials,
        guard: ChannelGuard,
        callbacks: CallbackThread | None = None,
    ) -> None:
        # Must be built on its loop: on Python 3.9 asyncio primitives bind at creation.
        self._loop = asyncio.get_running_loop()
        self._settings = settings
        self._guard = guard
        self._secret = credentials.access_token
        self._callbacks = callbacks if callbacks is not None else CallbackThread()
        self._transport = Transport(
            credentials,
            connect_timeout=settings.request_timeout,
            max_connections=settings.max_concurrency,
        )
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self._chats: OrderedDict[ChatId, Chat] = OrderedDict()
        self._seen_events: OrderedDict[str, Key] = OrderedDict()
        self._sequence = itertools.count()
        self._rng = random.Random(settings.jitter_seed)
        self._latencies = Latencies(settings.request_timeout)
        self._jobs: dict[asyncio.Task[None], tuple[Chat, Job]] = {}
        self._side_tasks: set[asyncio.Task[Any]] = set()
        """Loading animations' refreshers (``spawn``): cancelled and awaited by ``aclose``."""
        self._closed = False
        self._close_by: float | None = None
        self._overflowing = False
        self.counters = Counters()
        self._shutdown_hook = self._close_with_loop()
        _start_async_generator(self._shutdown_hook)

    async def _close_with_loop(self) -> AsyncIterator[None]:
        """Close when the event loop shuts down, for apps that never call ``aclose()``.

        ``asyncio.run()`` and aiohttp's ``run_app`` finalize live async
        generators before closing the loop: this one's ``finally`` releases the
        HTTP session then, instead of aiohttp warning "Unclosed client session"
        at exit.  The loop holds async generators weakly; the engine holds it.
        """
        try:
            yield
        finally:
            await self.aclose(grace=0.0)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def guard(self) -> ChannelGuard:
        """The channel's guard (auth latch, 429 pause, retry budget), for other requests."""
        return self._guard

    async def request(
        self,
        path: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ApiResponse:
        """One POST to another endpoint of LINE (loading animation, reply, push), as marks are sent.

        Same session, auth, hardening and concurrency slots as the marks, one
        ``request_timeout`` per attempt unless *timeout* says otherwise; the
        caller applies the guard.  Raises ``TransportError`` without an answer.
        """
        if self._closed:
            raise TransportError("the handler/marker is closed")
        async with self._slots:
            if timeout is None:
                timeout = self._settings.request_timeout
            return await self._transport.post_json(path, payload, timeout=timeout, headers=headers)

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T] | None:
        """Run *coro* (a loading animation's refresher or start) as a task ``aclose`` will end.

        Closing cancels such tasks and awaits them before the HTTP session
        closes, so none is left pending when the loop goes away (asyncio's
        "Task was destroyed but it is pending!").  Once closing began *coro* is
        closed unrun and ``None`` returned.
        """
        if self._closed:
            coro.close()
            return None
        task = self._loop.create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)
        return task

    def tracked_chats(self) -> int:
        """How many chats' state is held in memory (bounded by ``max_tracked_chats``)."""
        return len(self._chats)

    # -- submitting -------------------------------------------------------

    def submit(
        self, targets: Sequence[ReadTarget | None], *, timeout: float | None = None
    ) -> Ticket:
        """Start marking *targets* (one webhook body, in order); ``None`` is "nothing to mark".

        All marks are started (or queued for a connection) before this returns
        control to the loop.  Each waiter of the returned ticket settles with
        the event's ``Outcome``: ``TIMED_OUT`` at the latest after *timeout*
        seconds (default ``wait_timeout``; the sync hand-over passes what is
        left of it), one timer on this loop's clock for the whole body.  On a
        closed engine every mark fails at once (counted); this never raises.
        """
        counters = self.counters
        if self._closed:
            return self._failed_ticket(targets)
        if timeout is None:
            timeout = self._settings.wait_timeout
        deadline = self._loop.time() + max(0.0, timeout)
        waiters: list[Waiter | None] = []
        newest: dict[ChatId, tuple[Key, ReadTarget, Chat]] = {}
        for target in targets:
            if target is None:
                waiters.append(None)
                continue
            chat = self._chat(target.chat)
            key, needs_request = self._key_of(target, chat)
            waiters.append(self._add_waiter(chat, key))
            if not needs_request:  # a duplicate, already read or being marked
                continue
            if not self._settings.coalesce:
                self._start(chat, key, target)
                continue
            previous = newest.get(target.chat)
            if previous is not None:
                counters.coalesced += 1
            if previous is None or key > previous[0]:
                newest[target.chat] = (key, target, chat)
        # Chats are held here, not looked up again: an idle one may be forgotten meanwhile.
        for key, target, chat in newest.values():
            self._start(chat, key, target)
        pending = [w for w in waiters if w is not None and not w.done.done()]
        if pending:
            body = BodyWaiters()
            body.unsettled = len(pending)
            for waiter in pending:
                waiter.body = body
            body.timer = self._loop.call_at(deadline, expire_all, pending)
        return Ticket(tuple(waiters))

    def _failed_ticket(self, targets: Sequence[ReadTarget | None]) -> Ticket:
        ticket, failed = failed_ticket(targets, self._loop)
        self.counters.failed += failed
        return ticket

    def _key_of(self, target: ReadTarget, chat: Chat) -> tuple[Key, bool]:
        """The message's order key, and whether it may need a request.

        A redelivered event (same ``webhookEventId``) keeps the key it had, so
        the chat's watermark or the mark in progress covers it.  Only if its
        first mark failed for good is it tried again.
        """
        event_id = target.event_id
        if event_id is not None:
            key = self._seen_events.get(event_id)
            if key is not None:
                self.counters.duplicates += 1
                covered = chat.covers(key) or any(job.key >= key for job in chat.jobs)
                return key, not covered
        key = (target.timestamp, next(self._sequence))
        if event_id is not None:
            self._seen_events[event_id] = key
            if len(self._seen_events) > self._settings.max_tracked_chats:
                self._seen_events.popitem(last=False)
        return key, True

    def _chat(self, chat_id: ChatId) -> Chat:
        chat = self._chats.get(chat_id)
        if chat is not None:
            self._chats.move_to_end(chat_id)
            return chat
        self._forget_idle_chats()
        chat = self._chats[chat_id] = Chat()
        return chat

    def _forget_idle_chats(self) -> None:
        """Make room for one more chat, if idle chats allow."""
        excess = len(self._chats) + 1 - self._settings.max_tracked_chats
        if excess <= 0:
            return
        # Least recently used first; busy chats stay (their state is in use) and
        # are looked at again next time, so one scan stays short.
        oldest = list(itertools.islice(self._chats.items(), excess + 16))
        for chat_id, chat in oldest:
            if excess <= 0:
                break
            if chat.is_idle():
                del self._chats[chat_id]
                excess -= 1

    def _add_waiter(self, chat: Chat, key: Key) -> Waiter:
        waiter = Waiter(key, self._loop)
        if chat.covers(key):
            waiter.release(Outcome.MARKED)
            return waiter
        chat.prune()
        chat.waiters.append(waiter)
        return waiter

    def _start(self, chat: Chat, key: Key, target: ReadTarget) -> None:
        if chat.covers(key):
            self.counters.already_read += 1
            return
        # With coalescing a chat's new mark replaces its queued one (net zero), so only
        # a chat without one can overflow; without coalescing every mark counts.
        replaces = self._settings.coalesce and bool(chat.jobs)
        if self._settings.coalesce:
            if any(job.key >= key for job in chat.jobs):
                # An older body's newer message (a redelivery, say) is already being marked.
                self.counters.coalesced += 1
                return
            for job in list(chat.jobs):
                self._supersede(chat, job)
        job = Job(target, key)
        if not replaces and len(self._jobs) >= self._settings.max_tracked_chats:
            self._overflow(chat, job)
            return
        self._overflowing = False
        chat.jobs.append(job)
        job.task = task = self._loop.create_task(self._run(chat, job))
        self._jobs[task] = (chat, job)
        task.add_done_callback(self._forget_job)

    def _forget_job(self, task: asyncio.Task[None]) -> None:
        self._jobs.pop(task, None)

    def _overflow(self, chat: Chat, job: Job) -> None:
        """Too many chats have a mark in progress (an outage): this one fails now, counted."""
        self.counters.overflowed += 1
        if not self._overflowing:
            self._overflowing = True
            log.warning(
                "line_markread: %d chats already have a mark in progress (LINE slow or down?); "
                "new chats' marks fail until some finish (stats().overflowed)",
                len(self._jobs),
            )
        self._on_failed(chat, job, 0, None, GiveUp.OVERFLOW.value, quiet=True)

    def _supersede(self, chat: Chat, job: Job) -> None:
        if job.superseded:
            return
        job.superseded = True
        self.counters.superseded += 1
        _trace("superseded", job)
        # A request already on the wire is let finish (its 200 still counts);
        # one waiting for a slot or backing off is dropped now.  It leaves the
        # chat at once: a task cancelled before it first runs never reaches
        # its own clean-up.
        if not job.in_flight and job.task is not None:
            job.task.cancel()
            job.settled = True
            chat.jobs.remove(job)

    # -- running one mark -------------------------------------------------

    async def _run(self, chat: Chat, job: Job) -> None:
        """One mark, start to end.  Nothing raised in here escapes it, whatever its type."""
        attempt = 0
        try:
            attempt = await self._attempts(chat, job)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the whole point: no exception escapes a mark
            reason = f"unexpected {type(e).__name__}: {server_text(str(e), self._secret)}"
            log.error(
                "line_markread: mark-as-read for %s failed for good on an unexpected %s",
                job.target.chat,
                type(e).__name__,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            if not job.settled:
                self._on_failed(chat, job, attempt, None, reason, quiet=True)
        finally:
            if job in chat.jobs:
                chat.jobs.remove(job)

    async def _attempts(self, chat: Chat, job: Job) -> int:
        settings = self._settings
        give_up_at = self._loop.time() + settings.retry_deadline
        attempt = refund = 0
        response: ApiResponse | None = None
        error = ""
        while True:
            refusal = await self._clearance(job, give_up_at, first=attempt == 0)
            if refusal is None:
                attempt += 1
                answer = await self._attempt(job, attempt, give_up_at)
            else:
                answer = refusal
            if isinstance(answer, GiveUp):
                latched = answer is GiveUp.LATCHED and attempt == 0
                self.counters.latched += latched
                self._on_failed(chat, job, attempt, response, error or answer.value, quiet=latched)
                return attempt
            response, error, timed_out = answer
            verdict = classify(response)
            if verdict is Verdict.DONE:
                self._guard.record_success(refund)
                self._on_marked(chat, job)
                return attempt
            response = self._heed(job, response)
            if job.superseded:
                if chat.covers(job.key) or any(o.key > job.key for o in chat.jobs):
                    job.settled = True
                    return attempt
                # The mark that took over failed for good: this older one may
                # still succeed, and its waiters count on it.
                job.superseded = False
            delay: float | GiveUp = GiveUp.FINAL
            if verdict is Verdict.RETRY:
                delay, refund = self._retry_delay(attempt, response, timed_out, give_up_at)
            if isinstance(delay, GiveUp):
                self._on_failed(chat, job, attempt, response, error or delay.value)
                return attempt
            _trace(
                "retry",
                job,
                attempt=attempt,
                status=response.status if response else None,
                delay=delay,
                reason=error or (response.message if response else None),
            )
            await asyncio.sleep(delay)

    def _time_to_close(self) -> float | None:
        """Seconds left of the close grace; ``None`` when not closing."""
        return None if self._close_by is None else self._close_by - self._loop.time()

    async def _clearance(self, job: Job, give_up_at: float, *, first: bool) -> GiveUp | None:
        """Wait out the endpoint's 429 pause; a reason not to send at all, or ``None`` to go."""
        while True:
            closing = self._time_to_close()
            if closing is not None and closing <= 0:
                return GiveUp.CLOSING
            if self._guard.latched(job.target.endpoint):
                return GiveUp.LATCHED
            if not first and self._loop.time() > give_up_at:  # a backoff sleep may end late
                return GiveUp.DEADLINE
            pause = self._guard.pause_left(job.target.endpoint.value)
            if pause <= 0:
                return None
            if self._loop.time() + pause > give_up_at:
                return GiveUp.RATE_LIMITED
            if closing is not None and pause >= closing:
                return GiveUp.CLOSING
            await asyncio.sleep(0.0 if is_testing() else pause)

    async def _attempt(
        self, job: Job, attempt: int, give_up_at: float
    ) -> GiveUp | tuple[ApiResponse | None, str, bool]:
        """One request: (LINE's answer or ``None``, what went wrong, whether it timed out).

        ``GiveUp.CLOSING`` instead if closing began while it waited for a
        connection slot and no time is left.
        """
        async with self._slots:
            timeout = attempt_timeout(
                attempt,
                self._settings,
                give_up_at - self._loop.time(),
                self._latencies.first_timeout,
            )
            closing = self._time_to_close()
            if closing is not None:
                if closing <= 0:
                    return GiveUp.CLOSING
                timeout = min(timeout, closing)
            job.in_flight = True
            _trace("sent", job, attempt=attempt, timeout=round(timeout, 3))
            self.counters.requests += 1
            self.counters.retried += attempt > 1
            sent_at = self._loop.time()
            try:
                response = await self._transport.post(job.target, timeout=timeout)
            except TransportError as e:
                return None, str(e), e.timeout
            finally:
                job.in_flight = False
            if response.status == 200:  # how long LINE takes to answer: the next first timeout
                self._latencies.observe(self._loop.time() - sent_at)
            return response, "", False

    def _heed(self, job: Job, response: ApiResponse | None) -> ApiResponse | None:
        """Let the whole channel learn from a 401, 403 or 429 (that endpoint's pause, capped)."""
        if response is None:
            return None
        if response.status in (401, 403):
            self._guard.latch(job.target.endpoint, response.status)
        elif response.status == 429:
            cap = self._settings.max_rate_limit_pause
            if response.retry_after is not None and response.retry_after > cap:
                response = attrs.evolve(response, retry_after=cap)
            self._guard.rate_limited(job.target.endpoint.value, response.retry_after)
        return response

    def _retry_delay(
        self, attempt: int, response: ApiResponse | None, timed_out: bool, give_up_at: float
    ) -> tuple[float | GiveUp, int]:
        """(seconds before the next attempt, or why not; budget tokens it cost)."""
        time_left = give_up_at - self._loop.time()
        delay = next_delay(attempt, response, self._settings, self._rng, time_left)
        if delay is None:
            return GiveUp.FINAL, 0
        closing = self._time_to_close()
        if closing is not None and delay >= closing:
            return GiveUp.CLOSING, 0
        cost = self._guard.spend_retry(after_timeout=timed_out)
        if not cost:
            self.counters.budget_exhausted += 1
            return GiveUp.BUDGET, 0
        return delay, cost

    def _on_marked(self, chat: Chat, job: Job) -> None:
        job.settled = True
        self.counters.marked += 1
        _trace("marked", job)
        if chat.marked is None or job.key > chat.marked:
            chat.marked = job.key
        still_waiting = []
        for waiter in chat.waiters:
            if waiter.key <= job.key:
                waiter.release(Outcome.MARKED)
            elif not waiter.done.done():
                still_waiting.append(waiter)
        chat.waiters = still_waiting
        for other in list(chat.jobs):
            if other is not job and other.key < job.key:
                self._supersede(chat, other)

    def _on_failed(
        self,
        chat: Chat,
        job: Job,
        attempts: int,
        response: ApiResponse | None,
        error: str,
        *,
        quiet: bool = False,
    ) -> None:
        job.settled = True
        self.counters.failed += 1
        failure = MarkFailure(
            chat=job.target.chat,
            endpoint=job.target.endpoint.value,
            status=response.status if response else None,
            reason=error or (response.message or "" if response else ""),
            attempts=attempts,
            request_id=response.request_id if response else None,
        )
        # During an auth latch the one ERROR already said what to fix; a WARNING
        # per refused message would only bury it.
        log.log(
            logging.DEBUG if quiet else logging.WARNING,
            "mark-as-read failed for %s after %d attempt(s): %s %s (x-line-request-id: %s)",
            failure.chat,
            failure.attempts,
            failure.status if failure.status is not None else "no response",
            failure.reason,
            failure.request_id,
            extra={
                "markread_event": "failed",
                "markread_chat": str(failure.chat),
                "markread_timestamp": job.target.timestamp,
                "markread_attempt": failure.attempts,
                "markread_status": failure.status,
            },
        )
        others = [other for other in chat.jobs if other is not job]
        still_waiting = []
        for waiter in chat.waiters:
            if waiter.done.done():
                continue
            if waiter.key > job.key or any(other.key >= waiter.key for other in others):
                still_waiting.append(waiter)
            else:
                waiter.release(Outcome.FAILED)
        chat.waiters = still_waiting
        on_failure = self._settings.on_failure
        if on_failure is not None and not self._callbacks.call(on_failure, failure):
            self.counters.callbacks_dropped += 1

    # -- waiting ----------------------------------------------------------

    async def idle(self) -> None:
        """Return once no mark is in progress (marks started meanwhile are waited for too)."""
        while self._jobs:
            await asyncio.wait(set(self._jobs))

    # -- closing ----------------------------------------------------------

    async def aclose(self, grace: float | None = None) -> None:
        """Let pending marks finish for up to *grace* seconds, cancel the rest, close HTTP.

        No attempt starts once closing began unless it can end within the
        grace (its timeout is cut to what is left), and none after it.  The
        loading animations (``spawn``) end at once: cancelled, their requests
        too, and awaited.  The whole close takes at most *grace* plus
        ``_CLOSE_SETTLE`` three times.
        """
        if self._closed:
            return
        self._closed = True
        grace = self._settings.close_grace if grace is None else max(0.0, grace)
        self._close_by = self._loop.time() + grace
        side = set(self._side_tasks)
        if side:
            for task in side:
                task.cancel()
            await asyncio.wait(side, timeout=_CLOSE_SETTLE)
        pending = set(self._jobs)
        if pending and grace > 0:
            _, pending = await asyncio.wait(pending, timeout=grace)
        if pending:
            cancelled = [self._jobs[t] for t in pending if t in self._jobs]
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=_CLOSE_SETTLE)
            unsettled = [(chat, job) for chat, job in cancelled if not job.settled]
            for chat, job in unsettled:
                self._on_failed(chat, job, 0, None, "cancelled at close", quiet=True)
            if unsettled:
                log.warning(
                    "line_markread: %d pending mark(s) cancelled at close after %.1fs",
                    len(unsettled),
                    grace,
                )
        for chat in self._chats.values():
            for waiter in chat.waiters:
                waiter.release(Outcome.FAILED)
            chat.waiters.clear()
        try:
            await asyncio.wait_for(self._transport.aclose(), _CLOSE_SETTLE)
        except asyncio.TimeoutError:
            log.debug("line_markread: the HTTP session did not close within %.1fs", _CLOSE_SETTLE)

    # -- settling (serverless mode) ---------------------------------------

    async def settle(self, targets: Sequence[ReadTarget | None], deadline: float) -> int:
        """Wait until no mark is in progress in the chats of *targets*, or loop time *deadline*.

        For ``settle_before_return``: a mark in progress there is the one an
        event of the body depends on (or a newer one covering it).  Returns
        how many of those chats still had a mark in progress at *deadline*.
        """
        chats = {target.chat for target in targets if target is not None}
        while True:
            busy = [self._chats.get(chat_id) for chat_id in chats]
            tasks = {
                job.task
                for chat in busy
                if chat is not None
                for job in chat.jobs
                if job.task is not None and not job.task.done()
            }
            remaining = deadline - self._loop.time()
            if not tasks or remaining <= 0:
                return sum(1 for chat in busy if chat is not None and chat.jobs)
            await asyncio.wait(tasks, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)


def _start_async_generator(generator: AsyncIterator[None]) -> None:
    """Run *generator* to its first ``yield`` now, which registers it with the running loop."""
    step = generator.__anext__()
    try:
        step.send(None)  # type: ignore[attr-defined]  # the awaitable of an async generator
    except StopIteration:
        return
    raise RuntimeError("the shutdown hook did not stop at its first yield")


def _trace(what: str, job: Job, **fields: object) -> None:
    """A DEBUG record per step of a mark, with structured ``extra`` for tools (the demo's timeline).

    Attributes on the record: ``markread_event`` (sent, retry, marked,
    superseded, failed), ``markread_chat``, ``markread_timestamp`` (the
    message's LINE timestamp), ``markread_event_id`` (its ``webhookEventId``)
    and ``markread_<field>`` for each field; never the read token.
    """
    if not log.isEnabledFor(logging.DEBUG):
        return
    extra: dict[str, object] = {
        "markread_event": what,
        "markread_chat": str(job.target.chat),
        "markread_timestamp": job.target.timestamp,
        "markread_event_id": job.target.event_id,
    }
    extra.update({f"markread_{name}": value for name, value in fields.items()})
    details = " ".join(f"{name}={value}" for name, value in fields.items())
    log.debug("mark-as-read %s: %s %s", what, job.target.chat, details, extra=extra)
