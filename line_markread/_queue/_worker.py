"""``line-markread worker``: runs the durable background jobs of one ``WebhookHandler``.

A procrastinate worker with one task, ``line_markread.handle``.  Each job:

1. rebuild the SDK event from its JSON and find its route among the handler's
   registered ones (the same lookup the webhook used); a job that cannot be
   rebuilt, or names a handler this code does not have, fails for good
   (``on_error``, an ERROR line) and the chat's next job runs;
2. mark the message read through the handler's own ``Marker`` (retries,
   budget, auth latch as everywhere): "Read" means a worker picked it up;
3. the steps' own path (``WebhookHandler._arun_handler``): a job whose event
   was handled before (a re-run after a crash; ``once=True``) runs nothing;
   else the loading animation (``loading=``), then the handler (async ones on
   the worker's loop, sync ones in its threads) in its ``Run``, so
   ``reply()`` numbers its answers and knows the reply token's age (from the
   job's ``accepted_at``), and the once store remembers the event when it
   returns;
4. an exception goes to ``on_error`` and the log (chat, never a token), then
   the job is retried if the handler has a ``RetryPolicy``, else fails.

procrastinate's ``lock=`` (the chat) makes one chat's jobs run one at a time in
the order they were accepted, across every worker; a job waiting for a retry
keeps its place.  Beside the jobs, every worker runs ``_maintain`` every few
seconds: jobs of workers whose heartbeat stopped (``kill -9``, a lost node)
are retried through procrastinate's public ``get_stalled_jobs``/``retry_job``,
accepted ``webhookEventId``s and once-store keys older than the retention are
pruned, and a chat whose oldest job has waited longer than ``wait_warning``
gets one WARNING.

Signals: SIGTERM/SIGINT stop fetching, running jobs get ``grace`` seconds,
jobs still running then are handed back (they run again on another worker),
and the process exits 0.  A lost database stops the procrastinate worker; it
is restarted with backoff until the database is back (jobs it was running
are recovered as stalled).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import re
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from .._background import report_error
from .._body import build_event
from .._dispatch import decide, find_route
from . import Job, handler_name
from ._postgres import (
    ACCEPTED_TABLE,
    COUNTERS_TABLE,
    ONCE_TABLE,
    QUEUE_NAME,
    TASK_NAME,
    PostgresQueue,
)

if TYPE_CHECKING:
    import procrastinate
    from procrastinate.jobs import Job as ProcrastinateJob

    from .._handler import WebhookHandler

log = logging.getLogger(__name__)

BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 10.0
PRUNE_EVERY = 60.0
ORPHAN_AFTER = 5.0
"""Seconds after its task ended that a job still ``doing`` counts as unrecorded."""
ENDED_KEPT = 100_000


class JobFailed(Exception):
    """A durable job did not complete: its handler raised, or it cannot run here.

    Carries no event data (procrastinate logs its message), only the chat
    and the cause's type; ``retryable`` is whether the handler's retry policy
    may try it again.
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class _CallStringFilter(logging.Filter):
    """Cut job arguments (the raw event: reply tokens, message text) out of procrastinate's logs."""

    _CALL = re.compile(
        r"(line_markread\.handle\[[^\]]*\])\(.*?\)(?=( ended with| \(started|$))", re.S
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and TASK_NAME in record.msg:
            record.msg = self._CALL.sub(r"\1(...)", record.msg)
        job = getattr(record, "job", None)
        if isinstance(job, dict) and "task_kwargs" in job:
            record.job = {k: v for k, v in job.items() if k != "task_kwargs"}
        return True


def quiet_procrastinate_logs() -> None:
    """Install the redaction on procrastinate's loggers (idempotent)."""
    for name in ("procrastinate", "procrastinate.worker", "procrastinate.jobs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _CallStringFilter) for f in logger.filters):
            logger.addFilter(_CallStringFilter())


class JobRunner:
    """The body of the ``line_markread.handle`` task, for one handler."""

    def __init__(self, handler: WebhookHandler, queue: PostgresQueue, concurrency: int) -> None:
        self.handler = handler
        self.queue = queue
        self.settings = handler.settings
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="line-markread-job"
        )
        self.app: procrastinate.App | None = None
        self.running: set[int] = set()
        """Ids of the jobs in this runner now."""
        self.ended: dict[int, float] = {}
        """Ids of jobs this runner finished lately, and when (monotonic): see ``Maintenance``."""
        self.worker_ids: set[int] = set()
        """procrastinate's ids of this process's worker (a new one after each reconnect)."""

    async def run(self, context: Any, /, **data: Any) -> None:
        procrastinate_job = getattr(context, "job", None)
        job_id = getattr(procrastinate_job, "id", None)
        worker_id = getattr(procrastinate_job, "worker_id", None)
        if isinstance(worker_id, int):
            self.worker_ids.add(worker_id)
        if not isinstance(job_id, int):
            await self._run(context, data)
            return
        self.running.add(job_id)
        try:
            await self._run(context, data)
        finally:
            self.running.discard(job_id)
            self.ended[job_id] = time.monotonic()
            while len(self.ended) > ENDED_KEPT:  # bounded: the oldest go first
                del self.ended[next(iter(self.ended))]

    async def _run(self, context: Any, data: Mapping[str, Any]) -> None:
        job = self._job(data)
        event = self._event(job)
        handler = self.handler
        route = find_route(handler._markread_routes, handler._markread_default, event)
        if route is None or handler_name(route.func) != job.handler:
            found = "no handler" if route is None else f"handler {handler_name(route.func)!r}"
            error = JobFailed(
                f"job for {job.chat or '?'} names handler {job.handler!r} ({job.route}) but "
                f"this worker's handler has {found} for it: deploy the same code to web "
                "and workers",
                retryable=False,
            )
            report_error(self.settings, error, event)
            raise error
        # The reply token's minute started when the web process received the webhook
        # (wall clocks: the job crossed processes), not when this job started.
        handler._markread_answers.arrived([job.event], ago=max(0.0, time.time() - job.accepted_at))
        # The mark first, as the in-process pool's jobs do: "Read" = picked up.
        await handler._amark_picked_up(event, decide(route, event, self.settings))
        try:
            # The steps' own path: skipped if the event was handled before (a re-run
            # job), loading, the call in its Run (reply() numbers its answers), remembered.
            await handler._arun_handler(
                route, job.event, event, job.destination, None if route.is_async else self
            )
        except Exception as e:
            report_error(self.settings, e, event)
            policy = self.queue.retry_policy(job.handler)
            attempts = int(getattr(getattr(context, "job", None), "attempts", 0))
            retry = policy is not None and policy.delay(attempts + 1) is not None
            if retry:
                await self.count("retried")
            raise JobFailed(
                f"handler {job.handler!r} for {job.chat or '?'} raised {type(e).__name__}"
                + (" (will retry)" if retry else ""),
                retryable=retry,
            ) from None

    def in_thread(self, func: Callable[..., object], *args: Any) -> Awaitable[object]:
        """Run sync *func* in this runner's threads, in the caller's context (tracing spans)."""
        context = contextvars.copy_context()
        return asyncio.get_running_loop().run_in_executor(self.executor, context.run, func, *args)

    def _job(self, data: Mapping[str, Any]) -> Job:
        try:
            return Job.from_json(data)
        except ValueError as e:
            error = JobFailed(f"unreadable job: {e}", retryable=False)
            report_error(self.settings, error, None)
            raise error from None

    def _event(self, job: Job) -> Any:
        try:
            return build_event(dict(job.event))
        except Exception as e:
            error = JobFailed(
                f"the event of a job for {job.chat or '?'} cannot be rebuilt "
                f"({type(e).__name__}); was the SDK changed?",
                retryable=False,
            )
            report_error(self.settings, error, None)
            raise error from None

    async def count(self, name: str, value: int = 1) -> None:
        """Add to a counter every process sees (``QueueStats``); best effort."""
        if self.app is None:
            return
        with contextlib.suppress(Exception):
            await self.app.connector.execute_query_async(
                f"INSERT INTO {COUNTERS_TABLE} (name, value) VALUES (%(name)s, %(value)s) "
                f"ON CONFLICT (name) DO UPDATE SET value = {COUNTERS_TABLE}.value + EXCLUDED.value",
                name=name,
                value=value,
            )


def _retry_strategy(queue: PostgresQueue) -> Any:
    import procrastinate  # noqa: PLC0415

    class _PerHandler(procrastinate.BaseRetryStrategy):
        """Retry by the job's handler policy; a job cut short by shutdown runs again, at once."""

        def get_retry_decision(
            self, *, exception: BaseException, job: ProcrastinateJob
        ) -> procrastinate.RetryDecision | None:
            if isinstance(exception, JobFailed):
                if not exception.retryable:
                    return None
                policy = queue.retry_policy(str(job.task_kwargs.get("handler")))
                delay = None if policy is None else policy.delay(job.attempts + 1)
                if delay is None:
                    return None
                decision: procrastinate.RetryDecision = procrastinate.RetryDecision(
                    retry_in={"seconds": int(delay + 0.999)}
                )
                return decision
            if isinstance(exception, asyncio.CancelledError) or (
                type(exception).__name__ == "JobAborted"
            ):
                return procrastinate.RetryDecision(retry_in={"seconds": 0})
            return None

    return _PerHandler()


class Maintenance:
    """Every worker's side loop: stalled jobs, redelivery records, wait warnings."""

    def __init__(self, app: procrastinate.App, queue: PostgresQueue, runner: JobRunner) -> None:
        self.app = app
        self.queue = queue
        self.runner = runner
        self.tick = min(5.0, queue.stalled_after / 3)
        self._pruned_at = 0.0
        self._warned: set[str] = set()

    async def run(self) -> None:
        while True:
            try:
                await self.once()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the database is away: the worker loop notices too
                log.debug("line_markread: maintenance skipped: %s", type(e).__name__)
            await asyncio.sleep(self.tick)

    async def once(self) -> None:
        now = time.monotonic()
        if now - self._pruned_at >= PRUNE_EVERY:
            await self.app.connector.execute_query_async(
                f"DELETE FROM {ACCEPTED_TABLE} WHERE accepted_at < now() - "
                "make_interval(secs => %(retention)s)",
                retention=self.queue.retention,
            )
            # The once store's keys too (push retry keys live 24 h at LINE; retention >= that).
            await self.app.connector.execute_query_async(
                f"DELETE FROM {ONCE_TABLE} WHERE created_at < now() - "
                "make_interval(secs => %(retention)s)",
                retention=self.queue.retention,
            )
            self._pruned_at = now
        await self.recover_stalled()
        await self.recover_unrecorded()
        await self.warn_waiting()

    async def recover_unrecorded(self) -> int:
        """Jobs this process finished whose end the database never recorded: run them again.

        procrastinate records a job's end after the task returns; if the database
        is lost just then, the job stays ``doing`` under this (live, heartbeating)
        worker, so it is never "stalled" and its chat would wait forever.
        """
        now = time.monotonic()
        runner = self.runner
        manager = self.app.job_manager
        recovered = 0
        for worker_id in list(runner.worker_ids):
            doing = await manager.list_jobs_async(
                queue=QUEUE_NAME, status="doing", worker_id=worker_id
            )
            for job in doing:
                ended = None if job.id is None else runner.ended.get(job.id)
                if job.id in runner.running or ended is None or now - ended < ORPHAN_AFTER:
                    continue
                try:
                    await manager.retry_job(job)
                except Exception:
                    continue
                recovered += 1
                log.warning(
                    "line_markread: job %s of %s runs again: its end was not recorded "
                    "(the database was lost)",
                    job.id,
                    job.lock or "?",
                    extra={"markread_event": "job_unrecorded", "markread_chat": job.lock},
                )
        if recovered:
            await runner.count("stalled_recovered", recovered)
        return recovered

    async def recover_stalled(self) -> int:
        manager = self.app.job_manager
        stalled = await manager.get_stalled_jobs(
            queue=QUEUE_NAME, seconds_since_heartbeat=self.queue.stalled_after
        )
        recovered = 0
        for job in stalled:
            try:
                await manager.retry_job(job)
            except Exception:  # another worker was first: it is no longer 'doing'
                continue
            recovered += 1
            log.warning(
                "line_markread: job %s of %s runs again: its worker stopped sending heartbeats",
                job.id,
                job.lock or "?",
                extra={"markread_event": "job_stalled", "markread_chat": job.lock},
            )
        if recovered:
            await self.runner.count("stalled_recovered", recovered)
        return recovered

    async def warn_waiting(self) -> None:
        waiting = await self.app.job_manager.list_jobs_async(queue=QUEUE_NAME, status="todo")
        oldest: dict[str, float] = {}
        for job in waiting:
            chat = job.lock
            accepted = job.task_kwargs.get("accepted_at")
            if chat is None or not isinstance(accepted, (int, float)):
                continue
            oldest[chat] = min(oldest.get(chat, accepted), float(accepted))
        now = time.time()
        late = {chat for chat, at in oldest.items() if now - at > self.queue.wait_warning}
        for chat in sorted(late - self._warned):
            log.warning(
                "line_markread: the oldest job of %s has waited %.0f s (more than %.0f s): "
                "add workers, or look for a slow handler",
                chat,
                now - oldest[chat],
                self.queue.wait_warning,
                extra={"markread_event": "job_waiting", "markread_chat": chat},
            )
        self._warned = late


async def run_worker(
    handler: WebhookHandler,
    queue: PostgresQueue,
    *,
    concurrency: int = 8,
    grace: float = 30.0,
    install_signals: bool = True,
    stop: asyncio.Event | None = None,
) -> int:
    """Run jobs until SIGTERM/SIGINT (or *stop*); the exit status (0: a clean stop)."""
    import procrastinate  # noqa: PLC0415  # the extra

    quiet_procrastinate_logs()
    stop = asyncio.Event() if stop is None else stop
    loop = asyncio.get_running_loop()
    if install_signals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    runner = JobRunner(handler, queue, concurrency)
    # Up to `concurrency` jobs use the once store at once (a statement or two per job and
    # per answer): keep as many idle connections, not connect anew for each of them.
    queue.pool_size = max(queue.pool_size, concurrency)
    backoff = BACKOFF_INITIAL
    try:
        while not stop.is_set():
            app = procrastinate.App(
                connector=procrastinate.PsycopgConnector(
                    conninfo=queue.url, min_size=1, max_size=concurrency + 4
                )
            )
            app.task(
                name=TASK_NAME,
                queue=QUEUE_NAME,
                pass_context=True,
                retry=_retry_strategy(queue),
            )(runner.run)
            started = time.monotonic()
            opened = asyncio.Event()
            attempt = asyncio.create_task(
                _run_once(app, queue, runner, concurrency, grace, stop, opened)
            )
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({attempt, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not opened.is_set() and not attempt.done():
                attempt.cancel()  # stopped while still connecting: nothing runs yet
            try:
                await attempt
            except asyncio.CancelledError:
                break
            except Exception as e:
                if stop.is_set():
                    break
                log.error(
                    "line_markread: the worker lost the database (%s); reconnecting in %.1f s",
                    type(e).__name__,
                    backoff,
                    extra={"markread_event": "worker_reconnect"},
                )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = BACKOFF_INITIAL if time.monotonic() - started > 60 else backoff
                backoff = min(BACKOFF_MAX, backoff * 2)
                continue
            backoff = BACKOFF_INITIAL
    finally:
        if install_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        runner.executor.shutdown(wait=False)
        await handler.aclose()
    return 0


async def _run_once(  # noqa: PLR0917  # one private call site, in run_worker
    app: procrastinate.App,
    queue: PostgresQueue,
    runner: JobRunner,
    concurrency: int,
    grace: float,
    stop: asyncio.Event,
    opened: asyncio.Event,
) -> None:
    async with app.open_async():
        opened.set()
        runner.app = app
        maintenance = Maintenance(app, queue, runner)
        side = asyncio.create_task(maintenance.run(), name="line-markread-maintenance")
        worker = asyncio.create_task(
            app.run_worker_async(
                queues=[QUEUE_NAME],
                concurrency=concurrency,
                install_signal_handlers=False,
                shutdown_graceful_timeout=grace,
                update_heartbeat_interval=queue.stalled_after / 3,
                stalled_worker_timeout=queue.stalled_after,
                delete_jobs="successful",
                fetch_job_polling_interval=queue.poll_interval,
            ),
            name="line-markread-worker",
        )
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({worker, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not worker.done():
                log.info("line_markread: stopping: no new jobs; %.0f s for running ones", grace)
                worker.cancel()  # procrastinate's graceful stop, bounded by grace
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        finally:
            stopping.cancel()
            side.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await side
            runner.app = None
