"""``WebhookHandler``: the SDK's handler, with every message marked read before its handler runs.

The last step of the data flow: parse the body (``_body``), plan each event
(``_dispatch``), start all marks at once (``_marker``/``_engine``), then run
the handlers in body order, each waiting only for its own chat.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import linebot.v3

from ._background import (
    BackgroundClosed,
    Reservation,
    TaskPool,
    ThreadPool,
    refuse_background,
)
from ._body import parse_body
from ._chat import Ticket
from ._dispatch import (
    Decision,
    MarkPolicy,
    Plan,
    Route,
    Step,
    hold_background_marks,
    plan_body,
    route_key,
    validate_background,
    validate_policy,
)
from ._loading import BodyLoading, Showing, loading_user, validate_loading
from ._marker import BlockingTicket, Marker
from ._once import KEYS_PER_EVENT, MemoryOnceStore, OnceStore, validate_once
from ._outcome import Outcome
from ._read_first import options_of
from ._reply import (
    CURRENT_RUN,
    DEFAULT_REPLY_WINDOW,
    Replier,
    ReplyResult,
    leave_run,
    validate_push_fallback,
    validate_reply_window,
)
from ._settings import Settings
from ._stats import Stats
from ._targets import ReadTarget

if TYPE_CHECKING:
    from ._queue import Backend

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

_handlers: weakref.WeakSet[WebhookHandler] = weakref.WeakSet()


class InThreads(Protocol):
    """Where a sync handler runs off the loop: a ``TaskPool``, or a durable worker's threads."""

    def in_thread(self, func: Callable[..., object], *args: Any) -> Awaitable[object]: ...


def _after_fork_in_child() -> None:
    """A forked child (gunicorn's workers) starts with no background pool of its own.

    The parent's pools are the parent's: their threads do not exist here, and
    their handlers run (and are counted) there.  A child that closes before
    any use must neither wait for them nor report them; another parent thread
    may also have held the lock at the fork.
    """
    for handler in list(_handlers):
        handler._markread_pool_lock = threading.Lock()
        handler._markread_threads = None
        handler._markread_tasks = {}
        handler._markread_retired = Stats()


if hasattr(os, "register_at_fork"):  # pragma: no branch - every POSIX Python has it
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Unset(enum.Enum):
    """The default of ``add()``'s options: "not given", which ``None`` cannot say.

    ``None`` is a mistake to refuse (``mark_as_read=None`` raises), so it
    cannot double as the marker for "not given here, maybe by ``@read_first``".
    """

    UNSET = "unset"


UNSET = Unset.UNSET


class WebhookHandler(linebot.v3.WebhookHandler):  # type: ignore[misc]  # the SDK is untyped
    """A drop-in ``linebot.v3.WebhookHandler`` that marks each message read before its handler.

    ``access_token=`` (or ``configuration=``, a ``linebot.v3.messaging.Configuration``)
    is the channel access token the mark-as-read API needs; any ``Settings``
    option may follow as a keyword.  Use ``handle()`` from sync frameworks
    (Flask) and ``await handle_async()`` from async ones (aiohttp, FastAPI),
    where handlers may be ``async def``.

    ``queue=`` (a ``PostgresQueue``, or another durable ``Backend``) makes
    ``background=True`` handlers durable: their events become jobs in the
    queue before the webhook is answered, and ``line-markread worker``
    processes run them (see the README's "Durable background handlers").

    ``once_store=``: where "this event was handled" and "this answer was
    delivered" are remembered (default: the queue's ``once_store()`` with a
    ``PostgresQueue``, shared by every web process and worker; else a
    ``MemoryOnceStore`` of this process).  ``reply_window=``: seconds after the webhook during which
    ``reply()`` uses the reply token (default 50, under LINE's minute).
    """

    def __init__(
        self,
        channel_secret: str,
        skip_signature_verification: Callable[[], bool] = lambda: False,
        *,
        access_token: str | None = None,
        configuration: Any = None,
        queue: Backend | None = None,
        once_store: OnceStore | None = None,
        reply_window: float = DEFAULT_REPLY_WINDOW,
        **options: Any,
    ) -> None:
        super().__init__(channel_secret, skip_signature_verification)
        self._install_markread(
            Marker(access_token=access_token, configuration=configuration, **options),
            queue,
            once_store,
            reply_window,
        )

    def _install_markread(
        self,
        marker: Marker,
        queue: Backend | None = None,
        once_store: OnceStore | None = None,
        reply_window: float = DEFAULT_REPLY_WINDOW,
    ) -> None:
        if queue is not None:
            _check_queue(queue)
        self._markread_queue = queue
        # Attribute names are prefixed so they cannot clash with the SDK's own.
        self._markread_marker = marker
        self._markread_routes: dict[str, Route] = {}
        self._markread_default: Route | None = None
        # Slow-handler machinery, built once here and used only by routes asking for it.
        self._markread_loader = marker._loader
        self._markread_background = False
        """Whether some route has ``background=True``: only then is a body scanned for them."""
        self._markread_pool_lock = threading.Lock()
        self._markread_threads: ThreadPool | None = None
        self._markread_tasks: dict[asyncio.AbstractEventLoop, TaskPool] = {}
        self._markread_retired = Stats()
        """The counts of pools whose event loop is gone, so ``stats()`` never goes back."""
        self._markread_closed = False
        if once_store is not None and not isinstance(once_store, OnceStore):
            raise TypeError(f"once_store must implement OnceStore, got {once_store!r}")
        bound = marker.settings.max_tracked_chats  # as many events as the engine remembers
        if once_store is None:
            # With a queue that offers one, the record every web process and worker shares.
            once_store = _shared_once_store(queue)
        self._markread_answers = Replier(
            marker.settings,
            MemoryOnceStore(size=KEYS_PER_EVENT * bound) if once_store is None else once_store,
            reply_window=validate_reply_window(reply_window),
            tracked=bound,
        )
        _handlers.add(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._markread_marker!r}>"

    # -- registration -----------------------------------------------------

    def add(
        self,
        event: type,
        message: type | list[type] | tuple[type, ...] | None = None,
        *,
        mark_as_read: MarkPolicy | Unset = UNSET,
        loading: bool | int = False,
        background: bool = False,
        once: bool = True,
        push_fallback: bool = False,
    ) -> Callable[[F], F]:
        """Register a handler, as in the SDK, with what to do before it runs.

        ``mark_as_read``: ``True`` (the default: mark, and wait for it),
        ``False`` (never mark: e.g. chats handed to a human agent), ``"nowait"``
        (mark, but do not hold the handler), or a function
        ``(event) -> True | False | "nowait"`` called per event before any
        handler of the body runs.  A function decorated with ``@read_first(...)``
        brings its own options; giving them here as well is an error.

        ``loading``: show LINE's loading animation in 1:1 chats after the mark
        and while the handler runs (``True``: 20 s at a time, or 5..60 seconds
        in steps of 5).  ``background``: run the handler after ``handle()``
        returned, one at a time per chat, in the handler's bounded pool.

        ``once`` (default ``True``): an event this handler completed (returned
        without raising) is not run again when LINE delivers it again (same
        ``webhookEventId``); ``False`` runs every delivery.  ``push_fallback``
        (default ``False``): ``reply()`` pushes when the reply token is no
        longer usable (push counts against the monthly message quota).
        Bad values raise ``TypeError``/``ValueError`` here.
        """
        policy = None if mark_as_read is UNSET else validate_policy(mark_as_read)
        seconds, background = self._markread_slow_options(loading, background)
        answers = {
            "once": validate_once(once),
            "push_fallback": validate_push_fallback(push_fallback),
        }
        messages = message if isinstance(message, (list, tuple)) else [message]

        def decorator(func: F) -> F:
            route = self._markread_route(func, policy, seconds, background, **answers)
            for item in messages:
                self._markread_routes[route_key(event, item)] = route
            return func

        return decorator

    def default(
        self,
        *,
        mark_as_read: MarkPolicy | Unset = UNSET,
        loading: bool | int = False,
        background: bool = False,
        once: bool = True,
        push_fallback: bool = False,
    ) -> Callable[[F], F]:
        """Register the handler for events no other handler takes, as in the SDK.

        Takes the options of ``add()``.
        """
        policy = None if mark_as_read is UNSET else validate_policy(mark_as_read)
        seconds, background = self._markread_slow_options(loading, background)
        answers = {
            "once": validate_once(once),
            "push_fallback": validate_push_fallback(push_fallback),
        }

        def decorator(func: F) -> F:
            self._markread_default = self._markread_route(
                func, policy, seconds, background, **answers
            )
            return func

        return decorator

    def _markread_slow_options(self, loading: object, background: object) -> tuple[int, bool]:
        """Validate ``loading=`` and ``background=`` where they are given."""
        seconds = validate_loading(loading)
        background = validate_background(background)
        if background:
            refuse_background(self._markread_marker.settings)
            self._markread_background = True
        return seconds, background

    def _markread_route(
        self,
        func: Callable[..., Any],
        policy: MarkPolicy | None,
        loading: int = 0,
        background: bool = False,
        *,
        once: bool = True,
        push_fallback: bool = False,
    ) -> Route:
        """The route for *func*: ``add()``'s options, or those of its ``@read_first`` wrapper."""
        options = options_of(func)
        answers = {"once": once, "push_fallback": push_fallback}
        if options is None:
            policy = True if policy is None else policy
            return Route.of(func, policy, loading=loading, background=background, **answers)
        if policy is not None:
            raise TypeError(
                f"{options.func!r}: mark_as_read= given both to handler.add() and to "
                "@read_first(); give it in one place"
            )
        marker = self._markread_marker
        if options.marker is not None and options.marker is not marker:
            raise ValueError(
                f"{options.func!r}: @read_first(marker=...) names another Marker than this "
                "handler's; on an installed handler, drop marker= (the handler's marker marks)"
            )
        if options.configuration is not None and not marker.uses(options.configuration):
            raise ValueError(
                f"{options.func!r}: @read_first(configuration=...) names another channel or "
                "host than this handler's; drop configuration= on an installed handler"
            )
        if loading and options.loading:
            raise TypeError(
                f"{options.func!r}: loading= given both to handler.add() and to "
                "@read_first(); give it in one place"
            )
        loading = loading or options.loading
        return Route.of(
            options.func, options.mark_as_read, loading=loading, background=background, **answers
        )

    # -- handling ---------------------------------------------------------

    def _plan(self, body: str | bytes, signature: str) -> Plan:
        plan = plan_body(
            parse_body(self.parser, body, signature),
            self._markread_routes,
            self._markread_default,
            self._markread_marker.settings,
        )
        if self._markread_marker.settings.settle_before_return:
            _refuse_background(plan)
        self._markread_answers.arrived([step.raw for step in plan.steps])
        return plan

    @property
    def queue(self) -> Backend | None:
        """The durable queue ``background=True`` handlers go to, or ``None`` (in-process pool)."""
        return self._markread_queue

    def _markread_use_queue(self, queue: Backend) -> None:
        """Swap the queue (``line-markread worker --database-url``), and its once store with it.

        A store the bot chose (``once_store=``) stays; the old queue's own store
        would point at the old database, so the new queue's replaces it.
        """
        _check_queue(queue)
        old, self._markread_queue = self._markread_queue, queue
        answers = self._markread_answers
        if old is not None and answers.store is _shared_once_store(old):
            shared = _shared_once_store(queue)
            if shared is not None:
                answers.store = shared

    def handle(self, body: str | bytes, signature: str) -> None:
        """Verify, mark every message read, and run the handlers: for sync frameworks.

        Raises ``InvalidSignatureError`` (bad signature) and ``WebhookBodyError``
        (not a webhook body) before any request; a handler's exception
        propagates unchanged; a failed mark never raises.  ``BackgroundFull``
        (the pool is full) and ``BackgroundClosed`` (it is closed, or ``close()``
        gave up before this body's ``background=True`` handler could be
        queued) fail the webhook so that LINE redelivers it.  With
        ``settle_before_return=True`` it returns only once the body's marks have
        settled (or ``settle_timeout`` has passed).  With ``queue=``, the body's
        background handlers become jobs first; ``QueueUnavailable`` if the queue
        cannot take them, before anything of the body is marked or run.
        """
        self._markread_marker._check_open()  # the only RuntimeError for a closed handler
        started = time.monotonic()  # the background loop's clock
        plan = self._plan(body, signature)
        jobs = None
        if self._markread_queue is not None and self._markread_background:
            # Durable: the background steps become jobs, run by a worker (async ones too).
            plan, jobs = _split(plan)
        for step in plan.steps:
            if step.route is not None and step.route.is_async:
                raise TypeError(
                    f"handler {step.route.func!r} is a coroutine function: "
                    "call 'await handler.handle_async(body, signature)' from async code"
                )
        if jobs:
            # In one transaction, before anything is marked: QueueUnavailable leaves the
            # whole body untouched (the framework answers 500, LINE redelivers).
            assert self._markread_queue is not None
            self._markread_queue.defer(jobs)
        marker = self._markread_marker
        held = None
        if self._markread_background:
            # In-process background steps are marked when their job starts ("picked up").
            plan, held = hold_background_marks(plan)
        reservation = self._reserve(plan, None) if self._markread_background else None
        try:
            ticket = marker._submit(plan.targets, skipped=plan.skipped, opted_out=plan.opted_out)
            # The loop thread sends the requests while this thread builds the SDK models.
            plan.build_events()
        except BaseException:
            if reservation is not None:
                reservation.cancel()
            raise
        loading = self._begin_loading(plan, ticket, started)
        try:
            self._run_steps(plan, ticket, reservation, loading, held)
        finally:
            if loading is not None:
                loading.stop_all()
        if marker.settings.settle_before_return:
            marker._settle(plan.targets, started + marker.settings.settle_timeout)

    async def handle_async(self, body: str | bytes, signature: str) -> None:
        """``handle()`` for async frameworks: marks on the running loop; handlers may be async."""
        self._markread_marker._check_open()  # the only RuntimeError for a closed handler
        started = asyncio.get_running_loop().time()
        plan = self._plan(body, signature)
        if self._markread_queue is not None and self._markread_background:
            plan, jobs = _split(plan)  # as in handle(): jobs first, then the marks
            await self._markread_queue.adefer(jobs)
        marker = self._markread_marker
        loop = asyncio.get_running_loop()
        held = None
        if self._markread_background:
            plan, held = hold_background_marks(plan)  # as in handle(): marked at job start
        reservation = self._reserve(plan, loop) if self._markread_background else None
        try:
            ticket = await marker._asubmit(
                plan.targets, skipped=plan.skipped, opted_out=plan.opted_out
            )
            if any(plan.targets):
                # Two loop iterations (aiohttp's request task, then its body writer) put the
                # requests on the wire of a pooled connection; the models are built while
                # LINE answers.  In the same iterations as the requests: no extra polls.
                await asyncio.sleep(0)
                await asyncio.sleep(0)
            plan.build_events()
        except BaseException:
            if reservation is not None:
                reservation.cancel()
            raise
        loading = self._abegin_loading(plan, ticket, started)
        try:
            await self._arun_steps(plan, ticket, reservation, loading, held)
        finally:
            if loading is not None:
                loading.stop_all()
        if marker.settings.settle_before_return:
            await marker._asettle(plan.targets, started + marker.settings.settle_timeout)

    # -- per step, after the marks were started ------------------------------
    #
    # Each step: wait for its mark (if it wants one), show the loading animation
    # (``loading=``), call the handler, stop the animation.  ``background=True``
    # steps do the same later, in the pool.  The sync and async twins below
    # differ only in how they wait; which step does what is decided by the route.

    def _reserve(self, plan: Plan, loop: asyncio.AbstractEventLoop | None) -> Reservation | None:
        """Room in the pool for the body's background handlers, before anything is marked."""
        count = sum(1 for step in plan.steps if step.route is not None and step.route.background)
        return self._reserve_count(count, loop) if count else None

    def _reserve_count(self, count: int, loop: asyncio.AbstractEventLoop | None) -> Reservation:
        if loop is None:
            return self._thread_pool().reserve(count)
        return self._task_pool(loop).reserve(count)

    def _run_steps(
        self,
        plan: Plan,
        ticket: BlockingTicket,
        reservation: Reservation | None,
        loading: BodyLoading | None = None,
        held: tuple[ReadTarget | None, ...] | None = None,
    ) -> None:
        """The body's steps in order; *held*: the read targets left to each step's job."""
        try:
            for index, step in enumerate(plan.steps):
                route = step.route
                hold = None if held is None else held[index]
                if route is None:
                    log.info("No handler for %s and no default handler", type(step.event).__name__)
                    continue
                if route.background:
                    if reservation is None:  # routed anew once its model was built (rare)
                        reservation = self._reserve_count(1, None)
                    pool = reservation.pool
                    assert isinstance(pool, ThreadPool)
                    job = functools.partial(
                        self._run_picked_up, plan.destination, ticket, index, step, hold
                    )
                    pool.put(reservation, job, step.event)  # BackgroundClosed: the webhook fails
                    continue
                # A held mark here: the step was routed anew away from background (rare).
                self._run_picked_up(plan.destination, ticket, index, step, hold, loading=loading)
        finally:
            # Room a re-routed step, or a step after a handler that raised, did not use.
            if reservation is not None:
                reservation.cancel()

    def _run_picked_up(
        self,
        destination: str | None,
        ticket: BlockingTicket,
        index: int,
        step: Step,
        hold: ReadTarget | None,
        *,
        loading: BodyLoading | None = None,
    ) -> None:
        """A step whose mark was held (a background job starting): mark it, then the step."""
        if hold is not None:
            self._mark_picked_up(step.event, step.decision)
        self._run_step(destination, ticket, index, step, loading=loading)

    def _mark_picked_up(self, event: Any, decision: Decision) -> None:
        """Blocking twin of ``_amark_picked_up``, from a pool thread."""
        if decision is False:
            return
        try:
            self._markread_marker.mark([event], wait=decision is True)
        except RuntimeError:  # closed meanwhile: the handler runs all the same, unmarked
            log.warning("line_markread: closed before a background handler's mark; not marked")

    async def _amark_picked_up(self, event: Any, decision: Decision) -> None:
        """A background job's first act, in the pool as in a durable worker: mark its message.

        "Read" means the bot has picked the message up.  Through the handler's
        ``Marker`` (the engine's retries, budget, auth latch, coalescing per
        chat), waiting like an inline step (at most ``wait_timeout``) when the
        route's decision is ``True``, not at all for ``"nowait"``; ``False``
        marks nothing.  A failed mark never stops the handler.
        """
        if decision is False:
            return
        try:
            await self._markread_marker.amark([event], wait=decision is True)
        except RuntimeError:  # closed meanwhile: the handler runs all the same, unmarked
            log.warning("line_markread: closed before a background handler's mark; not marked")

    def _run_step(
        self,
        destination: str | None,
        ticket: BlockingTicket,
        index: int,
        step: Step,
        *,
        loading: BodyLoading | None = None,
    ) -> None:
        """One step; *loading*: the body's animations, already started (``handle()``'s steps)."""
        route = step.route
        assert route is not None  # only steps with a handler get here
        marker = self._markread_marker
        if step.decision is True:
            marker._wait_event(ticket, index)
        answers = self._markread_answers
        run = answers.start(step.raw, route.once, route.push_fallback)
        if run is None:  # completed before: a redelivery or a duplicate
            if loading is not None:
                loading.skip(index)
            return
        if loading is not None:
            showing = loading.wait(index)
        else:
            showing = self._show(step.event, route.loading) if route.loading else None
        try:
            result = run.call(route.call, step.event, destination)
        finally:
            if showing is not None:
                showing.stop()
        if inspect.isawaitable(result):  # e.g. a functools.partial of an async function
            if inspect.iscoroutine(result):
                result.close()
            raise TypeError(
                f"handler {route.func!r} returned an awaitable: "
                "call 'await handler.handle_async(body, signature)' from async code"
            )
        answers.finish(run, route.once)

    async def _arun_steps(
        self,
        plan: Plan,
        ticket: Ticket,
        reservation: Reservation | None,
        loading: BodyLoading | None = None,
        held: tuple[ReadTarget | None, ...] | None = None,
    ) -> None:
        """``_run_steps`` on the loop."""
        try:
            for index, step in enumerate(plan.steps):
                route = step.route
                hold = None if held is None else held[index]
                if route is None:
                    log.info("No handler for %s and no default handler", type(step.event).__name__)
                    continue
                if route.background:
                    if reservation is None:  # routed anew once its model was built (rare)
                        reservation = self._reserve_count(1, asyncio.get_running_loop())
                    pool = reservation.pool
                    assert isinstance(pool, TaskPool)
                    threads = None if route.is_async else pool
                    job = functools.partial(
                        self._arun_picked_up,
                        plan.destination,
                        ticket,
                        index,
                        step,
                        threads,
                        hold=hold,
                    )
                    pool.put(reservation, job, step.event)  # BackgroundClosed: the webhook fails
                    continue
                if hold is not None:  # routed anew away from background (rare)
                    await self._amark_picked_up(step.event, step.decision)
                answers = self._markread_answers
                if route.loading or not answers.nonblocking:
                    await self._arun_step(
                        plan.destination, ticket, index, step, None, loading=loading
                    )
                    continue
                # The plain step, inline: no coroutine object per event for handlers
                # that use neither keyword (and the in-memory once store).
                if step.decision is True:
                    await self._markread_marker._await_event(ticket, index)
                run = answers.start(step.raw, route.once, route.push_fallback)
                if run is None:  # completed before: a redelivery or a duplicate
                    continue
                current = CURRENT_RUN.set(run)
                try:
                    result = route.call(step.event, plan.destination)
                    if inspect.isawaitable(result):
                        await result
                finally:
                    leave_run(current)
                answers.finish(run, route.once)
        finally:
            # Room a re-routed step, or a step after a handler that raised, did not use.
            if reservation is not None:
                reservation.cancel()

    async def _arun_picked_up(
        self,
        destination: str | None,
        ticket: Ticket,
        index: int,
        step: Step,
        threads: TaskPool | None,
        *,
        hold: ReadTarget | None,
    ) -> None:
        """``_run_picked_up`` on the loop: a background job marks its message, then runs."""
        if hold is not None:
            await self._amark_picked_up(step.event, step.decision)
        await self._arun_step(destination, ticket, index, step, threads)

    async def _arun_step(
        self,
        destination: str | None,
        ticket: Ticket,
        index: int,
        step: Step,
        threads: InThreads | None,
        *,
        loading: BodyLoading | None = None,
    ) -> None:
        """One step on the loop; a sync handler runs in the threads of *threads* if given."""
        route = step.route
        assert route is not None  # only steps with a handler get here
        if step.decision is True:
            await self._markread_marker._await_event(ticket, index)
        await self._arun_handler(
            route, step.raw, step.event, destination, threads, loading=loading, index=index
        )

    async def _arun_handler(
        self,
        route: Route,
        raw: Mapping[str, Any],
        event: Any,
        destination: str | None,
        threads: InThreads | None,
        *,
        loading: BodyLoading | None = None,
        index: int = 0,
    ) -> bool:
        """After the mark: handled once, loading, the call in its ``Run``, remembered.

        The part of a step a durable job shares (``_queue._worker``); whether
        the handler ran (``False``: it completed for this event before).
        """
        answers = self._markread_answers
        run = await answers.astart(raw, route.once, route.push_fallback)
        if run is None:  # completed before: a redelivery, a duplicate, a re-run job
            if loading is not None:
                loading.skip(index)
            return False
        if loading is not None:
            showing = await loading.await_(index)
        else:
            showing = await self._ashow(event, route.loading) if route.loading else None
        current = CURRENT_RUN.set(run)
        try:
            if threads is None:
                result = route.call(event, destination)
            else:
                result = await threads.in_thread(run.call, route.call, event, destination)
            if inspect.isawaitable(result):
                await result
        finally:
            leave_run(current)
            if showing is not None:
                showing.stop()
        await answers.afinish(run, route.once)
        return True

    def _loading_steps(self, plan: Plan) -> list[tuple[int, Step, int]]:
        """The body's ``loading=`` steps that run in ``handle()`` itself (not ``background=``).

        A step whose handler completed before (a redelivery) shows no animation.
        """
        answers = self._markread_answers
        return [
            (index, step, step.route.loading)
            for index, step in enumerate(plan.steps)
            if step.route is not None
            and step.route.loading
            and not step.route.background
            and not answers.known_handled(step.raw, step.route.once)
        ]

    def _begin_loading(
        self, plan: Plan, ticket: BlockingTicket, started: float
    ) -> BodyLoading | None:
        """The body's animations, each launched once its mark settled; waits end by the deadline."""
        steps = self._loading_steps(plan)
        if not steps:
            return None
        try:
            engine = self._markread_marker._background_engine()
        except RuntimeError:  # closed meanwhile: the handlers still run, without animation
            return None
        return self._markread_loader.begin_body(
            engine,
            [
                (i, step.event, seconds, ticket.futures[i] if step.decision is True else None)
                for i, step, seconds in steps
            ],
            started + self._markread_marker.settings.wait_timeout,
            threaded=True,
        )

    def _abegin_loading(self, plan: Plan, ticket: Ticket, started: float) -> BodyLoading | None:
        """``_begin_loading`` on the running loop."""
        steps = self._loading_steps(plan)
        if not steps:
            return None
        try:
            engine = self._markread_marker._engine()
        except RuntimeError:
            return None
        after = [ticket.waiters[i] if step.decision is True else None for i, step, _ in steps]
        return self._markread_loader.begin_body(
            engine,
            [
                (i, step.event, seconds, None if waiter is None else waiter.done)
                for (i, step, seconds), waiter in zip(steps, after, strict=True)
            ],
            started + self._markread_marker.settings.wait_timeout,
            threaded=False,
        )

    def _show(self, event: Any, seconds: int) -> Showing | None:
        """From a handler's thread: the loading animation, on the background loop."""
        try:
            engine = self._markread_marker._background_engine()
        except RuntimeError:  # closed meanwhile: the handler still runs, without animation
            return None
        return self._markread_loader.begin(engine, event, seconds)

    async def _ashow(self, event: Any, seconds: int) -> Showing | None:
        try:
            engine = self._markread_marker._engine()
        except RuntimeError:
            return None
        return await self._markread_loader.abegin(engine, event, seconds)

    def _thread_pool(self) -> ThreadPool:
        with self._markread_pool_lock:
            if self._markread_closed:
                raise BackgroundClosed("line_markread: this handler is closed")
            threads = self._markread_threads
            if threads is None:
                threads = self._markread_threads = ThreadPool(self._markread_marker.settings)
            return threads

    def _task_pool(self, loop: asyncio.AbstractEventLoop) -> TaskPool:
        with self._markread_pool_lock:
            if self._markread_closed:
                raise BackgroundClosed("line_markread: this handler is closed")
            pool = self._markread_tasks.get(loop)
            if pool is None:
                for gone in [lp for lp in self._markread_tasks if lp.is_closed()]:
                    retired = self._markread_tasks.pop(gone)
                    retired.end_if_loop_closed()
                    self._markread_retired += retired.stats()
                pool = self._markread_tasks[loop] = TaskPool(self._markread_marker.settings, loop)
            return pool

    # -- the loading animation, by hand --------------------------------------

    def show_loading(self, event: Any, seconds: bool | int = True) -> bool:
        """Show the loading animation in *event*'s 1:1 chat now; whether LINE accepted it.

        For handlers that decide themselves (``loading=`` does it for every
        event).  *seconds*: ``True`` (20) or 5..60 in steps of 5.  Blocking, one
        request (retried once, briefly) through the same engine and guard as
        the marks; not in a 1:1 chat, nothing is sent (counted as skipped).
        """
        seconds = _manual_seconds(seconds)
        user_id = loading_user(event)
        if user_id is None:
            self._markread_loader.skipped()
            return False
        engine = self._markread_marker._background_engine()
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is engine.loop:
            raise RuntimeError(
                "line_markread: show_loading() called on the plugin's own loop; use ashow_loading()"
            )
        coro = self._markread_loader.show(engine, user_id, seconds)
        return asyncio.run_coroutine_threadsafe(coro, engine.loop).result()

    async def ashow_loading(self, event: Any, seconds: bool | int = True) -> bool:
        """Async twin of ``show_loading``, on the running loop."""
        seconds = _manual_seconds(seconds)
        user_id = loading_user(event)
        if user_id is None:
            self._markread_loader.skipped()
            return False
        return await self._markread_loader.show(self._markread_marker._engine(), user_id, seconds)

    # -- answers: reply, or push once the token is too old ----------------------

    def reply(self, event: Any, *messages: Any, push_fallback: bool | None = None) -> ReplyResult:
        """Answer *event* with 1 to 5 ``linebot.v3.messaging`` messages, exactly once.  Blocking.

        With the event's reply token while it is usable (unused, younger than
        ``reply_window``); otherwise by push to the event's chat when
        ``push_fallback`` (this call's, else the handler's ``add()`` option) is
        ``True``, with an ``X-Line-Retry-Key`` derived from the event and this
        call's position in the handler run, so no re-run pushes it twice.
        Returns a ``ReplyResult`` (``REPLIED``, ``PUSHED``, ``ALREADY_DELIVERED``
        or ``FAILED`` with a reason, logged at WARNING); never raises for
        LINE's answers.  Bad messages raise ``TypeError``/``ValueError``.
        """
        marker = self._markread_marker
        return self._markread_answers.reply(
            marker._background_engine, event, messages, push_fallback
        )

    async def areply(
        self, event: Any, *messages: Any, push_fallback: bool | None = None
    ) -> ReplyResult:
        """Async twin of ``reply``, on the running loop."""
        marker = self._markread_marker
        return await self._markread_answers.areply(marker._engine, event, messages, push_fallback)

    # -- manual marking, counters, closing --------------------------------

    def mark_read(self, event: Any) -> Outcome:
        """Mark the chat of *event* read up to it, now (for handlers that opted out).  Blocking."""
        return self._markread_marker.mark([event])[0]

    async def amark_read(self, event: Any) -> Outcome:
        """Async twin of ``mark_read``."""
        return (await self._markread_marker.amark([event]))[0]

    @property
    def marker(self) -> Marker:
        """The ``Marker`` doing the work (settings, stats, manual marking of many events)."""
        return self._markread_marker

    @property
    def settings(self) -> Settings:
        return self._markread_marker.settings

    def stats(self) -> Stats:
        """An immutable ``Stats`` snapshot of the counters (marks, loading, background)."""
        total = self._markread_marker.stats()
        with self._markread_pool_lock:
            total += self._markread_retired
            pools: list[ThreadPool | TaskPool] = []
            for task_pool in self._markread_tasks.values():
                task_pool.end_if_loop_closed()  # its loop closed with handlers on it
                pools.append(task_pool)
            if self._markread_threads is not None:
                pools.append(self._markread_threads)
        for pool in pools:
            total += pool.stats()
        return total + self._markread_answers.stats()

    def _detach_pools(self) -> tuple[ThreadPool | None, list[TaskPool]]:
        with self._markread_pool_lock:
            self._markread_closed = True
            return self._markread_threads, list(self._markread_tasks.values())

    def close(self, grace: float | None = None) -> None:
        """Stop accepting, let background handlers finish, drain pending marks, release HTTP.

        Every background handler accepted so far (a ``handle()`` under way
        included) gets up to ``background_grace`` s, queued ones after the
        running one of their chat; what is left is counted
        (``stats().background_abandoned``) and reported in one WARNING naming
        the chats.  Then marks get up to *grace* (default ``close_grace``) s.
        """
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and running in self._markread_tasks:
            # Waiting here for tasks of this very loop would never end.
            raise RuntimeError(
                "line_markread: close() called inside a running event loop; "
                "use 'await aclose()' there"
            )
        threads, task_pools = self._detach_pools()
        background_grace = self._markread_marker.settings.background_grace
        if threads is not None:
            threads.close(background_grace)
        for pool in task_pools:
            if pool.loop.is_running():
                asyncio.run_coroutine_threadsafe(pool.aclose(background_grace), pool.loop).result()
            else:
                pool.end_if_loop_closed()
        self._markread_loader.stop_all()
        self._markread_marker.close(grace)
        if self._markread_queue is not None:
            self._markread_queue.close()

    async def aclose(self, grace: float | None = None) -> None:
        """Async twin of ``close()``."""
        threads, task_pools = self._detach_pools()
        background_grace = self._markread_marker.settings.background_grace
        running = asyncio.get_running_loop()
        closing: list[Awaitable[None]] = []
        for pool in task_pools:
            if pool.loop is running:
                closing.append(pool.aclose(background_grace))
            elif pool.loop.is_running():
                future = asyncio.run_coroutine_threadsafe(pool.aclose(background_grace), pool.loop)
                closing.append(asyncio.wrap_future(future))
            else:
                pool.end_if_loop_closed()
        if threads is not None:
            closing.append(asyncio.to_thread(threads.close, background_grace))
        if closing:
            await asyncio.gather(*closing)
        self._markread_loader.stop_all()
        await self._markread_marker.aclose(grace)
        if self._markread_queue is not None:
            await self._markread_queue.aclose()

    def __enter__(self) -> WebhookHandler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> WebhookHandler:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _refuse_background(plan: Plan) -> None:
    """Serverless mode: no handler may outlive the request (the platform freezes it)."""
    for step in plan.steps:
        # ``background=`` comes with the slow-handlers option; absent, nothing runs late.
        if step.route is not None and getattr(step.route, "background", False):
            raise ValueError(
                f"handler {step.route.func!r} runs in the background, which "
                "settle_before_return=True (serverless mode) does not allow: the platform "
                "freezes the process once the response is out.  Drop background=True, "
                "or settle_before_return=True on a server that keeps running."
            )


def _check_queue(queue: object) -> None:
    from ._queue import Backend  # noqa: PLC0415  # only bots with a queue load it

    if not isinstance(queue, Backend):
        raise TypeError(
            f"queue must be a durable queue such as line_markread.PostgresQueue, got {queue!r}"
        )


def _shared_once_store(queue: Backend | None) -> OnceStore | None:
    """The queue's own ``OnceStore`` (a ``Backend`` may offer ``once_store()``), or ``None``."""
    make = getattr(queue, "once_store", None)
    if make is None:
        return None
    store = make()
    if not isinstance(store, OnceStore):
        raise TypeError(f"{queue!r}.once_store() must return an OnceStore, got {store!r}")
    return store


def _split(plan: Plan) -> tuple[Plan, list[Any]]:
    """``_queue._handoff.split``, loaded only by bots with a queue."""
    from ._queue._handoff import split as split_plan  # noqa: PLC0415

    return split_plan(plan)


def _manual_seconds(seconds: object) -> int:
    value = validate_loading(seconds)
    if not value:
        raise ValueError("show_loading needs seconds (True, or 5..60 in steps of 5), not False")
    return value


_marking_classes: dict[type, type] = {}


def _marking_class(base: type) -> type:
    if base is linebot.v3.WebhookHandler:
        return WebhookHandler
    if base not in _marking_classes:
        # A bot's own subclass keeps its overrides, below ours in the MRO.
        _marking_classes[base] = type(f"MarkRead{base.__name__}", (WebhookHandler, base), {})
    return _marking_classes[base]


def install(
    handler: linebot.v3.WebhookHandler,
    *,
    access_token: str | None = None,
    configuration: Any = None,
    queue: Backend | None = None,
    once_store: OnceStore | None = None,
    reply_window: float = DEFAULT_REPLY_WINDOW,
    **options: Any,
) -> WebhookHandler:
    """Install the plugin onto an existing ``linebot.v3.WebhookHandler`` and return it.

    The same object is upgraded in place (it stays an instance of its class,
    and of ``line_markread.WebhookHandler``), so every module holding a
    reference to it gets the marking, and the handlers registered before the
    call keep working and are marked by default.
    """
    if isinstance(handler, WebhookHandler):
        raise ValueError("line_markread is already installed on this handler")
    if not isinstance(handler, linebot.v3.WebhookHandler):
        raise TypeError(
            f"install() takes a linebot.v3.WebhookHandler, got {type(handler).__name__}"
        )
    marker = Marker(access_token=access_token, configuration=configuration, **options)
    # The SDK keeps its registrations in `_handlers` (keyed like route_key) and
    # `_default`: read once here, the only place we look at SDK internals.
    existing = dict(getattr(handler, "_handlers", {}))
    default = getattr(handler, "_default", None)
    handler.__class__ = _marking_class(type(handler))
    upgraded: WebhookHandler = handler
    upgraded._install_markread(marker, queue, once_store, reply_window)
    for key, func in existing.items():
        upgraded._markread_routes[key] = upgraded._markread_route(func, None)
    if default is not None:
        upgraded._markread_default = upgraded._markread_route(default, None)
    return upgraded
