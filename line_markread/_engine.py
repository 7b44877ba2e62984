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
keeps it (the superseding job is newer); a failure or ``aclose`` resolves
the waiters it would otherwise orphan.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from typing import Optional, Union

from ._chat import BodyWaiters, Chat, Job, Key, Ticket, Waiter, expire_all
from ._guard import ChannelGuard
from ._http import ApiResponse, Credentials, Transport, TransportError
from ._outcome import MarkFailure, Outcome
from ._retry import Verdict, classify, is_testing, next_delay
from ._settings import Settings
from ._stats import Counters
from ._targets import ChatId, ReadTarget

log = logging.getLogger(__name__)

_LATCHED = "not sent: LINE answered 401/403 recently (auth latch)"


class Engine:
    """Marks read targets on the event loop it was created on."""

    def __init__(self, settings: Settings, credentials: Credentials, guard: ChannelGuard) -> None:
        # Must be built on its loop: on Python 3.9 asyncio primitives bind at creation.
        self._loop = asyncio.get_running_loop()
        self._settings = settings
        self._guard = guard
        self._transport = Transport(
            credentials,
            request_timeout=settings.request_timeout,
            max_connections=settings.max_concurrency,
        )
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self._chats: OrderedDict[ChatId, Chat] = OrderedDict()
        self._seen_events: OrderedDict[str, Key] = OrderedDict()
        self._sequence = itertools.count()
        self._rng = random.Random(settings.jitter_seed)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
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

    async def request(self, path: str, payload: bytes) -> ApiResponse:
        """One POST to another endpoint of LINE (the loading animation), as marks are sent.

        Same session, auth, timeouts and concurrency slots as the marks; the
        caller applies the guard.  Raises ``TransportError`` without an answer.
        """
        if self._closed:
            raise TransportError("the handler/marker is closed")
        async with self._slots:
            return await self._transport.post_json(path, payload)

    def tracked_chats(self) -> int:
        """How many chats' state is held in memory (bounded by ``max_tracked_chats``)."""
        return len(self._chats)

    # -- submitting -------------------------------------------------------

    def submit(
        self, targets: Sequence[Optional[ReadTarget]], *, deadline: Optional[float] = None
    ) -> Ticket:
        """Start marking *targets* (one webhook body, in order); ``None`` is "nothing to mark".

        All requests start before this returns control to the loop.  Each
        waiter of the returned ticket settles with the event's ``Outcome``: at
        the latest ``TIMED_OUT`` at *deadline* (loop time; default now plus
        ``wait_timeout``), one timer for the whole body.
        """
        if self._closed:
            raise RuntimeError("line_markread: this handler/marker is closed")
        counters = self.counters
        if deadline is None:
            deadline = self._loop.time() + self._settings.wait_timeout
        waiters: list[Optional[Waiter]] = []
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
        if any(job.sent and job.key >= key for job in chat.jobs):
            waiter.mark_sent()
        chat.waiters.append(waiter)
        return waiter

    def _start(self, chat: Chat, key: Key, target: ReadTarget) -> None:
        if chat.covers(key):
            self.counters.already_read += 1
            return
        if self._settings.coalesce:
            if any(job.key >= key for job in chat.jobs):
                # An older body's newer message (a redelivery, say) is already being marked.
                self.counters.coalesced += 1
                return
            for job in list(chat.jobs):
                self._supersede(chat, job)
        job = Job(target, key)
        chat.jobs.append(job)
        job.task = self._loop.create_task(self._run(chat, job))
        self._tasks.add(job.task)
        job.task.add_done_callback(self._tasks.discard)

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
            chat.jobs.remove(job)

    # -- running one mark -------------------------------------------------

    async def _run(self, chat: Chat, job: Job) -> None:
        give_up_at = self._loop.time() + self._settings.retry_deadline
        attempt = refund = 0
        response: Optional[ApiResponse] = None
        error = ""
        try:
            while True:
                refusal = await self._clearance(chat, job, give_up_at, first=attempt == 0)
                if refusal is not None:
                    latched = refusal is _LATCHED
                    self.counters.latched += latched and attempt == 0
                    quiet = latched and attempt == 0
                    self._on_failed(chat, job, attempt, response, error or refusal, quiet=quiet)
                    return
                attempt += 1
                response, error, timed_out = await self._attempt(chat, job, attempt)
                verdict = classify(response)
                if verdict is Verdict.DONE:
                    self._guard.record_success(refund)
                    self._on_marked(chat, job)
                    return
                self._heed(job, response)
                if job.superseded:
                    if chat.covers(job.key) or any(o.key > job.key for o in chat.jobs):
                        return
                    # The mark that took over failed for good: this older one may
                    # still succeed, and its waiters count on it.
                    job.superseded = False
                delay = None
                if verdict is Verdict.RETRY:
                    delay, refund = self._retry_delay(attempt, response, timed_out, give_up_at)
                    error = error or ("retry budget exhausted" if refund == 0 else "")
                if delay is None:
                    self._on_failed(chat, job, attempt, response, error)
                    return
                _trace(
                    "retry",
                    job,
                    attempt=attempt,
                    status=response.status if response else None,
                    delay=delay,
                    reason=error or (response.message if response else None),
                )
                await asyncio.sleep(delay)
        finally:
            if job in chat.jobs:
                chat.jobs.remove(job)

    async def _clearance(
        self, chat: Chat, job: Job, give_up_at: float, *, first: bool
    ) -> Optional[str]:
        """Wait out the channel's 429 pause; a reason not to send at all, or ``None`` to go."""
        while True:
            if self._guard.latched(job.target.endpoint):
                return _LATCHED
            if not first and self._loop.time() > give_up_at:  # a backoff sleep may end late
                return "retry deadline passed"
            pause = self._guard.pause_left()
            if pause <= 0:
                return None
            if self._loop.time() + pause > give_up_at:
                return "rate limited (429) beyond the retry deadline"
            # Deferred by the pause: counts as sent, so wait_timeout may release the handler.
            self._note_sent(chat, job.key)
            await asyncio.sleep(0.0 if is_testing() else pause)

    async def _attempt(
        self, chat: Chat, job: Job, attempt: int
    ) -> tuple[Optional[ApiResponse], str, bool]:
        """One request: (LINE's answer or ``None``, what went wrong, whether it timed out)."""
        async with self._slots:
            job.in_flight = job.sent = True
            self._note_sent(chat, job.key)
            _trace("sent", job, attempt=attempt)
            self.counters.requests += 1
            self.counters.retried += attempt > 1
            try:
                return await self._transport.post(job.target), "", False
            except TransportError as e:
                return None, str(e), e.timeout
            finally:
                job.in_flight = False

    def _heed(self, job: Job, response: Optional[ApiResponse]) -> None:
        """Let the whole channel learn from a 401, 403 or 429."""
        if response is None:
            return
        if response.status in (401, 403):
            self._guard.latch(job.target.endpoint, response.status)
        elif response.status == 429:
            self._guard.rate_limited(response.retry_after)

    def _retry_delay(
        self, attempt: int, response: Optional[ApiResponse], timed_out: bool, give_up_at: float
    ) -> tuple[Optional[float], int]:
        """(seconds before the next attempt or ``None`` to give up, budget tokens it cost)."""
        time_left = give_up_at - self._loop.time()
        delay = next_delay(attempt, response, self._settings, self._rng, time_left)
        if delay is None:
            return None, -1
        cost = self._guard.spend_retry(after_timeout=timed_out)
        if not cost:
            self.counters.budget_exhausted += 1
            return None, 0
        return delay, cost

    def _note_sent(self, chat: Chat, key: Key) -> None:
        for waiter in chat.waiters:
            if waiter.key <= key:
                waiter.mark_sent()

    def _on_marked(self, chat: Chat, job: Job) -> None:
        self.counters.marked += 1
        _trace("marked", job)
        if chat.marked is None or job.key > chat.marked:
            chat.marked = job.key
        still_waiting = []
        for waiter in chat.waiters:
            if waiter.key <= job.key:
                waiter.release(Outcome.MARKED)
            else:
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
        response: Optional[ApiResponse],
        error: str,
        *,
        quiet: bool = False,
    ) -> None:
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
            if waiter.key > job.key or any(other.key >= waiter.key for other in others):
                still_waiting.append(waiter)
            else:
                waiter.release(Outcome.FAILED)
        chat.waiters = still_waiting
        if self._settings.on_failure is not None:
            try:
                self._settings.on_failure(failure)
            except Exception:
                log.exception("line_markread: the on_failure callback raised")

    # -- waiting ----------------------------------------------------------

    async def idle(self) -> None:
        """Return once no mark is in progress (marks started meanwhile are waited for too)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    # -- closing ----------------------------------------------------------

    async def aclose(self, grace: Union[float, None] = None) -> None:
        """Let pending marks finish for up to *grace* seconds, cancel the rest, close HTTP."""
        if self._closed:
            return
        self._closed = True
        grace = self._settings.close_grace if grace is None else grace
        pending = set(self._tasks)
        if pending and grace > 0:
            _, pending = await asyncio.wait(pending, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            self.counters.failed += len(pending)
            log.warning(
                "line_markread: %d pending mark(s) cancelled at close after %.1fs",
                len(pending),
                grace,
            )
        for chat in self._chats.values():
            for waiter in chat.waiters:
                waiter.release(Outcome.FAILED)
            chat.waiters.clear()
        await self._transport.aclose()

    # -- settling (serverless mode) ---------------------------------------

    async def settle(self, targets: Sequence[Optional[ReadTarget]], deadline: float) -> int:
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
