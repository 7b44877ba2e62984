"""Answers that reach the user exactly once: ``reply()`` with a push fallback.

LINE's reply token (the free way to answer) can be used once, and only
"within one minute after receiving the webhook"; a redelivered event carries
the same token, usable again unless the first delivery used it (or LINE's
longer limit since the event passed).  A background handler that starts late
or thinks long gets "Invalid reply token", and the user nothing.  Push has no
such limit, costs message quota, and accepts an ``X-Line-Retry-Key``: LINE
accepts a key once and answers ``409`` to any repeat within 24 hours.

So each ``reply()`` call is *answer number n* of its event (its position in
the handler's run, from 0) and:

1. was that answer delivered already (a re-run of the handler)?  Nothing is
   sent: ``ALREADY_DELIVERED``.
2. is the reply token still usable (there is one, this process has not used
   it, it is younger than ``reply_window`` since the webhook arrived here, the
   event is younger than ``REDELIVERY_LIMIT``)?  Reply.
3. otherwise, with ``push_fallback``: push to the event's chat (user, group or
   room) with ``X-Line-Retry-Key = uuid5(webhookEventId, n)``, so a re-run
   pushes the same key and LINE drops the copy (``409``: delivered).  Without
   it: one WARNING and ``FAILED``, nothing sent.

Transient failures (5xx, timeouts, connection errors, rate limits) are
retried like marks: ``max_attempts``, ``retry_deadline``, full-jitter backoff,
``Retry-After``, the channel's retry budget and auth latch.  A reply is
retried too, but after an attempt without a clear answer LINE may have used
the token: if a retry then hears "Invalid reply token", the answer is
reported ``FAILED`` as uncertain rather than pushed (a second copy is worse).

The decisions are pure functions (``retry_key``, ``chat_of``,
``token_problem``, ``is_quota``); ``Replier`` adds the I/O: the once store
(``_once``) in the caller's thread or loop, the requests on the engine's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import json
import logging
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from ._engine import Engine
from ._http import ApiResponse, TransportError
from ._once import MemoryOnceStore, OnceStore, answer_key, attempt_key, event_key, token_key
from ._retry import Verdict, attempt_timeout, classify, next_delay
from ._settings import Settings
from ._stats import Counters, Stats
from ._targets import Endpoint

log = logging.getLogger(__name__)

REPLY_PATH = "/v2/bot/message/reply"
PUSH_PATH = "/v2/bot/message/push"
RETRY_KEY_HEADER = "X-Line-Retry-Key"

REPLY_TOKEN_LIFETIME = 60.0
"""LINE: reply tokens "must be used within one minute after receiving the webhook"."""
DEFAULT_REPLY_WINDOW = 50.0
"""Seconds after the webhook arrived during which ``reply()`` uses the token: 10 s under
LINE's minute, for network delay between LINE and us and clocks that differ."""
REDELIVERY_LIMIT = 20 * 60.0
"""Seconds after the event (its ``timestamp``) past which a redelivered token is not tried.
LINE documents that a redelivered event's token works "except in certain cases"; this
bound (about 20 minutes) keeps the plugin from trying one obviously stale."""
MAX_MESSAGES = 5
"""LINE takes 1 to 5 message objects per reply or push."""

RETRY_KEY_NAMESPACE = uuid.UUID("6f0b7d3e-3c1a-5b8e-9a57-1ab0c0de0a18")
"""Fixed: the same event and position give the same key in every process, forever."""


class Delivery(enum.Enum):
    """How an answer reached the user, or that it did not."""

    REPLIED = "replied"
    """Sent with the event's reply token (free)."""
    PUSHED = "pushed"
    """Sent by push (counts against the monthly message quota)."""
    ALREADY_DELIVERED = "already delivered"
    """Sent before: by an earlier run of this handler, or LINE answered ``409`` for the key."""
    FAILED = "failed"
    """Not sent, or not known to be sent; ``reason`` says why."""


@attrs.frozen
class ReplyResult:
    """What ``reply()``/``areply()`` did with one answer.

    ``position``: the answer's number in its handler run (0 for the first
    ``reply()`` call), which with the ``webhookEventId`` makes the push's
    ``retry_key``.  ``status`` and ``request_id``: LINE's last answer, if any
    (``request_id`` is ``x-line-accepted-request-id`` on a ``409``).
    ``uncertain``: ``FAILED``, but LINE may have delivered it (a reply attempt
    without a clear answer, then the token found used); it is not sent again.
    """

    delivery: Delivery
    reason: str | None = None
    position: int = 0
    status: int | None = None
    request_id: str | None = None
    retry_key: str | None = None
    uncertain: bool = False

    @property
    def delivered(self) -> bool:
        """Replied, pushed, or known to be delivered before."""
        return self.delivery is not Delivery.FAILED


# -- pure decisions -----------------------------------------------------------


def retry_key(identity: str, position: int) -> str:
    """The push's ``X-Line-Retry-Key`` for answer *position* of an event: a UUID.

    Derived (uuid5), not random, so a re-run of the same handler for the same
    event (a retry, a durable job after a crash) sends the same key.
    """
    return str(uuid.uuid5(RETRY_KEY_NAMESPACE, f"{identity}/{position}"))


def chat_of(event: Any) -> str | None:
    """The push target of *event*'s chat: its group, room, or user ID."""
    source = getattr(event, "source", None)
    for attribute in ("group_id", "room_id", "user_id"):
        value = getattr(source, attribute, None)
        if isinstance(value, str) and value:
            return value
    return None


def token_problem(
    *,
    reply_token: object,
    used: bool,
    age: float | None,
    window: float,
    event_age: float | None,
) -> str | None:
    """Why the reply token must not be tried (``None``: try it).

    *age*: seconds since the webhook carrying it arrived here (``None``:
    unknown, e.g. an event not received by this handler); *event_age*:
    seconds since the event's own ``timestamp`` by the wall clock.
    """
    if not isinstance(reply_token, str) or not reply_token:
        return "the event has no reply token"
    if used:
        return "its reply token was used already"
    if age is not None and age > window:
        return f"its reply token is {age:.1f}s old, past reply_window ({window:g}s)"
    if event_age is not None and event_age > REDELIVERY_LIMIT:
        return f"the event is {event_age:.0f}s old: its reply token has expired"
    return None


def is_quota(response: ApiResponse | None) -> bool:
    """LINE's ``429`` for the monthly message quota (not a rate limit: retrying is useless)."""
    return (
        response is not None
        and response.status == 429
        and "monthly limit" in (response.message or "").lower()
    )


def is_invalid_token(response: ApiResponse | None) -> bool:
    """LINE's ``400`` "Invalid reply token" (expired, used, or another bot's)."""
    return (
        response is not None
        and response.status == 400
        and "reply token" in (response.message or "").lower()
    )


def serialize(messages: Sequence[object]) -> list[dict[str, Any]]:
    """The JSON of 1 to 5 ``linebot.v3.messaging`` message models (their ``to_dict()``).

    Plain mappings pass as they are.  Anything else is a ``TypeError``, a
    wrong count a ``ValueError``: raised in the caller, before anything is sent.
    """
    if not 1 <= len(messages) <= MAX_MESSAGES:
        raise ValueError(
            f"reply() takes 1 to {MAX_MESSAGES} messages (LINE's limit), got {len(messages)}"
        )
    out: list[dict[str, Any]] = []
    for message in messages:
        to_dict = getattr(message, "to_dict", None)
        if callable(to_dict):
            value = to_dict()
        elif isinstance(message, Mapping):
            value = dict(message)
        else:
            value = None
        if not isinstance(value, dict):
            raise TypeError(
                "reply() takes linebot.v3.messaging message models (e.g. TextMessage(text=...)), "
                f"got {type(message).__name__}"
            )
        out.append(value)
    return out


def validate_reply_window(value: object) -> float:
    """Check ``reply_window=``: seconds, 0 to ``REPLY_TOKEN_LIFETIME`` (0: always push)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"reply_window must be seconds (a number), got {value!r}")
    if not 0 <= value <= REPLY_TOKEN_LIFETIME:
        raise ValueError(
            f"reply_window must be 0 to {REPLY_TOKEN_LIFETIME:g} s (LINE's reply token "
            f"lifetime), got {value!r}"
        )
    return float(value)


def validate_push_fallback(value: object) -> bool:
    """Check a ``push_fallback=`` value: exactly ``True`` or ``False``."""
    if value is True or value is False:
        return value
    raise TypeError(f"push_fallback must be True or False, got {value!r}")


# -- one handler run ------------------------------------------------------------


class Run:
    """One run of a handler for one event: its answers are numbered from 0 here.

    A re-run (a new ``Run`` for the same event) numbers from 0 again, which
    is what makes its push retry keys, and its already-delivered checks, the
    same as the first run's.
    """

    __slots__ = ("_lock", "_next", "event_id", "push_fallback", "received_at")

    def __init__(self, event_id: str | None, received_at: float | None, push_fallback: bool):
        self.event_id = event_id
        self.received_at = received_at
        self.push_fallback = push_fallback
        self._next = 0
        self._lock = threading.Lock()

    def next_position(self) -> int:
        with self._lock:
            position, self._next = self._next, self._next + 1
            return position

    def call(self, func: Callable[..., Any], *args: Any) -> Any:
        """Call *func* with this run current (for a sync handler in a pool's thread)."""
        token = CURRENT_RUN.set(self)
        try:
            return func(*args)
        finally:
            CURRENT_RUN.reset(token)


CURRENT_RUN: contextvars.ContextVar[Run | None] = contextvars.ContextVar(
    "line_markread_run", default=None
)


def leave_run(token: contextvars.Token[Run | None]) -> None:
    """Reset ``CURRENT_RUN`` after an ``async`` step, wherever its ``finally`` runs.

    A step's coroutine closed by the garbage collector (its event loop ended
    without cancelling it) runs its ``finally`` in another context, where the
    token means nothing: there is nothing to reset then, and the ``ValueError``
    would hide the ``GeneratorExit`` that is under way.
    """
    with contextlib.suppress(ValueError):
        CURRENT_RUN.reset(token)


def event_id_of(event: Any) -> str | None:
    value = getattr(event, "webhook_event_id", None)
    return value if isinstance(value, str) and value else None


# -- the I/O -------------------------------------------------------------------------


@attrs.frozen
class _Prepared:
    event_id: str | None
    position: int
    identity: str | None
    reply_token: str | None
    chat: str | None
    messages: list[dict[str, Any]]
    push_fallback: bool
    age: float | None
    event_age: float | None


class Replier:
    """A handler's answers: the once store, the runs, the counters; the requests' retry loop.

    Thread-safe: sync handlers answer from pool threads, the requests run on
    the engine's loop.
    """

    def __init__(
        self,
        settings: Settings,
        store: OnceStore,
        *,
        reply_window: float = DEFAULT_REPLY_WINDOW,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        tracked: int = 10_000,
    ) -> None:
        self._settings = settings
        self.store = store
        self.reply_window = reply_window
        self._clock = clock
        self._wall_clock = wall_clock
        self._tracked = tracked
        self._lock = threading.Lock()
        self._counters = Counters()
        self._arrivals: OrderedDict[str, float] = OrderedDict()
        self._runs: OrderedDict[str, Run] = OrderedDict()
        """The latest run per event: ``reply()`` outside it (a task it left) continues it."""
        self._delivering: set[str] = set()
        self._rng = random.Random(settings.jitter_seed)

    def stats(self) -> Stats:
        with self._lock:
            return self._counters.snapshot()

    # -- arrivals and runs ------------------------------------------------------

    @property
    def nonblocking(self) -> bool:
        """Whether the store never waits (the in-memory one): async paths may call it as is."""
        return type(self.store) is MemoryOnceStore

    def arrived(self, raws: Sequence[Mapping[str, Any]], *, ago: float = 0.0) -> None:
        """A webhook body arrived *ago* seconds ago: its reply tokens' minute starts (again).

        ``handle()`` passes 0; a worker running a job deferred by another
        process passes the time since that process received the webhook.
        """
        now = self._clock() - ago
        with self._lock:
            for raw in raws:
                event_id = raw.get("webhookEventId")
                if isinstance(event_id, str) and raw.get("replyToken") is not None:
                    self._arrivals[event_id] = now
                    self._arrivals.move_to_end(event_id)
            while len(self._arrivals) > self._tracked:
                self._arrivals.popitem(last=False)

    def _run(self, event_id: str | None, push_fallback: bool) -> Run:
        """A new run of a handler for *event_id*, numbering its answers from 0 (lock held)."""
        received = None if event_id is None else self._arrivals.get(event_id)
        run = Run(event_id, received, push_fallback)
        if event_id is not None:
            self._runs[event_id] = run
            self._runs.move_to_end(event_id)
            while len(self._runs) > self._tracked:
                self._runs.popitem(last=False)
        return run

    def known_handled(self, raw: Mapping[str, Any], once: bool) -> bool:
        """Whether the event's handler completed before, where the store answers without I/O.

        Lets a body skip the loading animation of a redelivered event (LINE has
        no call to end one, so it would show after the answer).  A store that
        does I/O is asked only in ``start``/``astart``: ``False`` here.
        """
        event_id = _raw_event_id(raw)
        if not once or event_id is None or not self.nonblocking:
            return False
        return self.store.seen(event_key(event_id))

    def start(self, raw: Mapping[str, Any], once: bool, push_fallback: bool) -> Run | None:
        """Before a handler runs: its ``Run``; ``None`` if it completed for this event before."""
        event_id = _raw_event_id(raw)
        if once and event_id is not None and self.store.seen(event_key(event_id)):
            self._skipped(event_id)
            return None
        with self._lock:
            return self._run(event_id, push_fallback)

    async def astart(self, raw: Mapping[str, Any], once: bool, push_fallback: bool) -> Run | None:
        """``start`` on the loop (the store's async method)."""
        event_id = _raw_event_id(raw)
        if once and event_id is not None and await self.store.aseen(event_key(event_id)):
            self._skipped(event_id)
            return None
        with self._lock:
            return self._run(event_id, push_fallback)

    def finish(self, run: Run, once: bool) -> None:
        """The handler returned without raising: remember its event."""
        if once and run.event_id is not None:
            self.store.remember(event_key(run.event_id))

    async def afinish(self, run: Run, once: bool) -> None:
        if once and run.event_id is not None:
            await self.store.aremember(event_key(run.event_id))

    def _skipped(self, event_id: str) -> None:
        with self._lock:
            self._counters.already_handled += 1
        log.debug(
            "line_markread: event %s was handled before (a redelivery or duplicate): "
            "its handler is not run again",
            event_id,
        )

    def _current(self, event: Any) -> Run:
        """The run *event*'s answers count in: the current handler run, else its latest run.

        Outside any run (a thread the handler started, a call after it
        returned) the answers continue the event's latest run, so they never
        take the positions of answers already delivered.
        """
        event_id = event_id_of(event)
        run = CURRENT_RUN.get()
        if run is not None and run.event_id == event_id:
            return run
        with self._lock:
            latest = None if event_id is None else self._runs.get(event_id)
            return latest if latest is not None else self._run(event_id, False)

    # -- reply ------------------------------------------------------------------

    def prepare(
        self, event: Any, messages: Sequence[object], push_fallback: bool | None
    ) -> _Prepared:
        """Everything ``reply()`` decides before any I/O; raises on bad input."""
        payload = serialize(messages)
        if push_fallback is not None:
            push_fallback = validate_push_fallback(push_fallback)
        run = self._current(event)
        position = run.next_position()
        fallback = run.push_fallback if push_fallback is None else push_fallback
        age = None if run.received_at is None else self._clock() - run.received_at
        timestamp = getattr(event, "timestamp", None)
        event_age = (
            self._wall_clock() - timestamp / 1000
            if isinstance(timestamp, int) and not isinstance(timestamp, bool)
            else None
        )
        token = getattr(event, "reply_token", None)
        return _Prepared(
            event_id=run.event_id,
            position=position,
            identity=run.event_id or (token if isinstance(token, str) and token else None),
            reply_token=token if isinstance(token, str) else None,
            chat=chat_of(event),
            messages=payload,
            push_fallback=fallback,
            age=age,
            event_age=event_age,
        )

    def claim(self, prepared: _Prepared) -> bool:
        """Only one call at a time delivers one answer of one event in this process."""
        if prepared.identity is None:
            return True
        key = answer_key(prepared.identity, prepared.position)
        with self._lock:
            if key in self._delivering:
                return False
            self._delivering.add(key)
            return True

    def release(self, prepared: _Prepared) -> None:
        if prepared.identity is not None:
            with self._lock:
                self._delivering.discard(answer_key(prepared.identity, prepared.position))

    def already(self, prepared: _Prepared, reason: str) -> ReplyResult:
        result = ReplyResult(Delivery.ALREADY_DELIVERED, reason, prepared.position)
        return self.count(result, prepared)

    def problem(self, prepared: _Prepared, token_used: bool) -> str | None:
        """Why the reply token must not be tried for *prepared* (``None``: reply)."""
        return token_problem(
            reply_token=prepared.reply_token,
            used=token_used,
            age=prepared.age,
            window=self.reply_window,
            event_age=prepared.event_age,
        )

    def crashed_reply(self, prepared: _Prepared) -> ReplyResult:
        """An earlier run started replying this answer and never recorded how it ended."""
        reason = (
            "delivery uncertain: an earlier run of this handler was replying this answer "
            "and stopped before recording the outcome; not sent again"
        )
        result = ReplyResult(Delivery.FAILED, reason, prepared.position, uncertain=True)
        return self.count(result, prepared)

    async def deliver(
        self, engine: Engine, prepared: _Prepared, problem: str | None
    ) -> tuple[ReplyResult, bool]:
        """On the engine's loop: reply, or push, or neither; and whether the token is spent."""
        spent = False
        if problem is None:
            replied, problem = await self._reply(engine, prepared)
            if replied is not None:
                return replied, True  # sent, or refused for good: either way no push
            spent = True
        if not prepared.push_fallback:
            reason = f"{problem}; push_fallback is off, so nothing was sent"
            return ReplyResult(Delivery.FAILED, reason, prepared.position), spent
        if prepared.chat is None:
            reason = f"{problem}; the event has no chat to push to"
            return ReplyResult(Delivery.FAILED, reason, prepared.position), spent
        return await self._push(engine, prepared, problem), spent

    async def _reply(
        self, engine: Engine, prepared: _Prepared
    ) -> tuple[ReplyResult | None, str | None]:
        """Reply with the token: the result, or ``None`` and why the token did not work."""
        body = {"replyToken": prepared.reply_token, "messages": prepared.messages}
        response, error, unsure = await self._send(engine, REPLY_PATH, body, None)
        if response is not None and 200 <= response.status < 300:
            return ReplyResult(Delivery.REPLIED, None, prepared.position, response.status), None
        if not is_invalid_token(response):
            return self._failed(prepared, response, _describe(response, error)), None
        if unsure:  # an earlier attempt without an answer may have used it
            reason = (
                "delivery uncertain: a reply attempt got no clear answer and the retry "
                "found the token used; not pushed, to avoid a second copy"
            )
            return attrs.evolve(self._failed(prepared, response, reason), uncertain=True), None
        return None, f"LINE refused the reply token ({_describe(response, error)})"

    async def _push(self, engine: Engine, prepared: _Prepared, problem: str | None) -> ReplyResult:
        key = (
            retry_key(prepared.identity, prepared.position)
            if prepared.identity is not None
            else str(uuid.uuid4())
        )
        body = {"to": prepared.chat, "messages": prepared.messages}
        response, error, _ = await self._send(engine, PUSH_PATH, body, {RETRY_KEY_HEADER: key})
        if response is not None and 200 <= response.status < 300:
            return ReplyResult(
                Delivery.PUSHED, problem, prepared.position, response.status, None, key
            )
        if response is not None and response.status == 409:
            return ReplyResult(
                Delivery.ALREADY_DELIVERED,
                "LINE had accepted this push before (409 for its retry key)",
                prepared.position,
                409,
                response.accepted_request_id,
                key,
            )
        failed = self._failed(prepared, response, "push: " + _describe(response, error))
        return attrs.evolve(failed, retry_key=key)

    def _failed(
        self, prepared: _Prepared, response: ApiResponse | None, reason: str
    ) -> ReplyResult:
        return ReplyResult(
            Delivery.FAILED,
            reason,
            prepared.position,
            None if response is None else response.status,
            None if response is None else response.request_id,
        )

    async def _send(
        self,
        engine: Engine,
        path: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str] | None,
    ) -> tuple[ApiResponse | None, str, bool]:
        """POST with the marks' retry policy; the last answer, an error, and "may have arrived"."""
        settings = self._settings
        loop = engine.loop
        guard = engine.guard
        payload = json.dumps(body).encode()
        deadline = loop.time() + settings.retry_deadline
        refund = 0
        attempt = 0
        unsure = False
        response: ApiResponse | None = None
        error = ""
        while True:
            attempt += 1
            blocked = await _blocked(engine, deadline, path)
            if blocked is not None:
                return response, blocked, unsure
            timeout = attempt_timeout(attempt, settings, deadline - loop.time())
            timed_out = False
            try:
                response = await engine.request(path, payload, timeout=timeout, headers=headers)
                error = ""
            except TransportError as e:
                response, error, timed_out = None, str(e), e.timeout
            verdict = classify(response)
            if verdict is Verdict.DONE:
                guard.record_success(refund)
                return response, "", unsure
            if response is None or response.status >= 500:
                unsure = True  # LINE may have acted on it
            if response is not None and response.status == 401:
                guard.latch(Endpoint.TOKEN, 401)
            if verdict is Verdict.GIVE_UP or is_quota(response):
                return response, error, unsure
            if response is not None and response.status == 429:
                guard.rate_limited(path, response.retry_after)  # this endpoint only
            delay = next_delay(attempt, response, settings, self._rng, deadline - loop.time())
            if delay is None:
                return response, error, unsure
            refund = guard.spend_retry(after_timeout=timed_out)
            if not refund:
                return response, "retry budget exhausted", unsure
            with self._lock:
                self._counters.answers_retried += 1
            if delay > 0:
                await asyncio.sleep(delay)

    # -- the two entry points: the same steps, sync and async store calls ---------

    def reply(
        self,
        engine: Callable[[], Engine],
        event: Any,
        messages: Sequence[object],
        push_fallback: bool | None,
    ) -> ReplyResult:
        """From a handler's thread: decide here, send on *engine*'s loop, wait for it."""
        prepared = self.prepare(event, messages, push_fallback)
        store, identity = self.store, prepared.identity
        if identity is not None and store.seen(answer_key(identity, prepared.position)):
            return self.already(prepared, "delivered by an earlier run of this handler")
        if not self.claim(prepared):
            return self.already(prepared, "another run of this handler is delivering it")
        try:
            used = identity is not None and store.seen(token_key(identity))
            problem = self.problem(prepared, used)
            if identity is not None and prepared.push_fallback:
                # Written ahead: a run that dies between LINE's 200 and the records below
                # must not let a re-run push a second copy (its reply would find the
                # token used).
                attempt = attempt_key(identity, prepared.position)
                if store.seen(attempt):
                    return self.crashed_reply(prepared)
                if problem is None:
                    store.remember(attempt)
            try:
                loop_engine = engine()
            except RuntimeError as e:  # closed
                return self.count(ReplyResult(Delivery.FAILED, str(e), prepared.position), prepared)
            try:
                running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop_engine.loop:
                raise RuntimeError(
                    "line_markread: reply() called on the plugin's own loop; use areply()"
                )
            future = asyncio.run_coroutine_threadsafe(
                self.deliver(loop_engine, prepared, problem), loop_engine.loop
            )
            result, spent = future.result()
            if identity is not None:
                if spent:
                    store.remember(token_key(identity))
                if result.delivered or result.uncertain:
                    store.remember(answer_key(identity, prepared.position))
        finally:
            self.release(prepared)
        return self.count(result, prepared)

    async def areply(
        self,
        engine: Callable[[], Engine],
        event: Any,
        messages: Sequence[object],
        push_fallback: bool | None,
    ) -> ReplyResult:
        """``reply`` on the running loop (its engine's)."""
        prepared = self.prepare(event, messages, push_fallback)
        store, identity = self.store, prepared.identity
        if identity is not None and await store.aseen(answer_key(identity, prepared.position)):
            return self.already(prepared, "delivered by an earlier run of this handler")
        if not self.claim(prepared):
            return self.already(prepared, "another run of this handler is delivering it")
        try:
            used = identity is not None and await store.aseen(token_key(identity))
            problem = self.problem(prepared, used)
            if identity is not None and prepared.push_fallback:
                attempt = attempt_key(identity, prepared.position)  # written ahead, as above
                if await store.aseen(attempt):
                    return self.crashed_reply(prepared)
                if problem is None:
                    await store.aremember(attempt)
            try:
                loop_engine = engine()
            except RuntimeError as e:  # closed
                return self.count(ReplyResult(Delivery.FAILED, str(e), prepared.position), prepared)
            result, spent = await self.deliver(loop_engine, prepared, problem)
            if identity is not None:
                if spent:
                    await store.aremember(token_key(identity))
                if result.delivered or result.uncertain:
                    await store.aremember(answer_key(identity, prepared.position))
        finally:
            self.release(prepared)
        return self.count(result, prepared)

    # -- counting and logging ----------------------------------------------------

    def count(self, result: ReplyResult, prepared: _Prepared | None = None) -> ReplyResult:
        field = {
            Delivery.REPLIED: "answers_replied",
            Delivery.PUSHED: "answers_pushed",
            Delivery.ALREADY_DELIVERED: "answers_already_delivered",
            Delivery.FAILED: "answers_failed",
        }[result.delivery]
        with self._lock:
            setattr(self._counters, field, getattr(self._counters, field) + 1)
        event_id = None if prepared is None else prepared.event_id
        if result.delivery is Delivery.FAILED:
            level = (
                logging.ERROR
                if result.status == 429 and "quota" in (result.reason or "")
                else logging.WARNING
            )
            log.log(
                level,
                "line_markread: answer %d to event %s was not delivered: %s%s",
                result.position,
                event_id,
                result.reason,
                "" if result.request_id is None else f" (x-line-request-id: {result.request_id})",
            )
        else:
            log.debug(
                "line_markread: answer %d to event %s: %s%s",
                result.position,
                event_id,
                result.delivery.value,
                "" if result.reason is None else f" ({result.reason})",
            )
        return result


async def _blocked(engine: Engine, deadline: float, path: str) -> str | None:
    """Why no attempt to *path* may start now (the guard, as for marks), after a short pause."""
    if engine.closed:
        return "not sent: the handler is closing"
    guard = engine.guard
    if guard.latched(Endpoint.TOKEN):
        return "not sent: LINE answered 401 recently (auth latch)"
    pause = guard.pause_left(path)
    if pause > 0:
        if pause >= deadline - engine.loop.time():
            return "not sent: rate limited (429 pause)"
        await asyncio.sleep(pause)
    return None


def _raw_event_id(raw: Mapping[str, Any]) -> str | None:
    value = raw.get("webhookEventId")
    return value if isinstance(value, str) and value else None


def _describe(response: ApiResponse | None, error: str) -> str:
    if response is None:
        return f"no answer ({error or 'connection failed'})"
    if is_quota(response):
        return f"429 monthly message quota reached: {response.message}"
    if response.status == 429:
        detail = f": {response.message}" if response.message else ""
        return f"429 rate limited until the attempts or the retry deadline ran out{detail}"
    text = f"{response.status} {response.message or ''}".strip()
    return f"{text}; {error}" if error else text
