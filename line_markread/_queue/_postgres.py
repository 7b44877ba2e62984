"""``PostgresQueue``: durable background handlers in PostgreSQL, through procrastinate.

The web side.  ``defer``/``adefer`` run one transaction per body on a
connection of our own small pool:

1. ``INSERT`` the body's ``webhookEventId``s into ``line_markread_accepted``
   (``ON CONFLICT DO NOTHING RETURNING``): the ones that come back are new;
2. procrastinate's ``batch_defer`` of the new ones' jobs on that same
   connection (its public ``configure(connection=...)``), one call per chat
   with ``lock=`` the chat, in body order;
3. ``COMMIT``.

So a body is accepted whole or not at all, and a redelivered event (its id
already in the table) creates no second job, even when the first delivery
committed and then lost its answer.  Any failure (database unreachable,
disk full, pool exhausted) is one ``QueueUnavailable`` and one ERROR line per
burst; the next success logs the recovery.

procrastinate and psycopg load when the first queue is made, never when
``line_markread`` is imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from . import Job, QueueStats, QueueUnavailable

if TYPE_CHECKING:
    import procrastinate

    from ._once_store import PostgresOnceStore

log = logging.getLogger(__name__)

TASK_NAME = "line_markread.handle"
"""The one procrastinate task every durable background job runs as."""

QUEUE_NAME = "line_markread"

ACCEPTED_TABLE = "line_markread_accepted"
COUNTERS_TABLE = "line_markread_counters"
ONCE_TABLE = "line_markread_once"

OWN_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {ACCEPTED_TABLE} (
    webhook_event_id text PRIMARY KEY,
    accepted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS {ACCEPTED_TABLE}_at ON {ACCEPTED_TABLE} (accepted_at);
CREATE TABLE IF NOT EXISTS {COUNTERS_TABLE} (
    name text PRIMARY KEY,
    value bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS {ONCE_TABLE} (
    key text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS {ONCE_TABLE}_at ON {ONCE_TABLE} (created_at);
"""
"""line_markread's own tables, created by ``queue init`` next to procrastinate's.

``line_markread_accepted`` is the redelivery record, ``line_markread_once``
the "handled once" record (``PostgresOnceStore``: events whose handler
completed, answers delivered, reply tokens used); the workers prune both after
``retention``.  Each is a ``CREATE ... IF NOT EXISTS``: ``queue init`` stays
idempotent, and running it again adds a table a newer version needs.
"""

SCHEMA_LOCK = 0x4C4D5251  # "LMRQ": one `queue init` at a time per database


@attrs.frozen
class RetryPolicy:
    """How often a handler's job is tried again after the handler raised.

    ``attempts``: runs in all (``1``: never retried); ``wait``: seconds
    before the first retry, doubling each time up to ``max_wait``.  The
    chat's later jobs wait behind a job that will be retried (order first).
    """

    attempts: int = attrs.field(validator=attrs.validators.ge(1))
    wait: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))
    max_wait: float = attrs.field(default=60.0, validator=attrs.validators.ge(0))

    def delay(self, failed_runs: int) -> float | None:
        """Seconds until the next run after *failed_runs* failures, or ``None``: give up."""
        if failed_runs >= self.attempts:
            return None
        return float(min(self.max_wait, self.wait * 2 ** (failed_runs - 1)))


def redact_url(url: str) -> str:
    """The URL without its password, for log lines and exceptions."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<database URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class PostgresQueue:
    """Durable background handlers: jobs in PostgreSQL, run by ``line-markread worker``.

    ``WebhookHandler(..., queue=PostgresQueue(os.environ["DATABASE_URL"]))``:
    each ``background=True`` handler's event becomes a job in the database
    before the webhook is answered, and any number of worker processes run
    them: marked read when a worker picks the job up, one at a time per chat in
    arrival order, again on a live worker if its worker dies.  Needs the extra
    ``line_markread[postgres]`` and the schema (``line-markread queue init``).

    ``retry``: per handler function, a ``RetryPolicy`` (or an ``int``, the
    number of runs) for jobs whose handler raised; default: never retried.
    ``retention``: how long (seconds) an accepted ``webhookEventId`` keeps a
    redelivery from creating a second job, and the once store (``once_store()``,
    the handler's default with this queue) keeps what was handled and answered
    (at least a day: LINE's retry keys live 24 h).
    ``stalled_after``: seconds without a heartbeat after which a worker counts
    as dead and its running jobs run again elsewhere.  ``wait_warning``:
    seconds a chat's oldest job may wait before the workers log a WARNING.
    ``pool_size``/``timeout``: the web side's connections and how long a
    webhook waits for one (LINE's deadline is 2 s).  ``poll_interval``: how
    often an idle worker looks for jobs; new jobs wake workers at once
    (LISTEN/NOTIFY), but a chat's next job becomes runnable when the previous
    one finishes, which notifies nobody, so this bounds the gap between two
    messages of one chat.
    """

    def __init__(
        self,
        url: str,
        *,
        retry: Mapping[Callable[..., Any], RetryPolicy | int] | None = None,
        retention: float = 48 * 3600.0,
        stalled_after: float = 30.0,
        wait_warning: float = 60.0,
        pool_size: int = 4,
        timeout: float = 1.5,
        poll_interval: float = 0.05,
    ) -> None:
        if not isinstance(url, str) or not url:
            raise ValueError("PostgresQueue needs a database URL (e.g. $DATABASE_URL)")
        if retention < 24 * 3600:
            raise ValueError("retention must be at least 24 hours (86400 s): LINE redelivers late")
        if stalled_after < 3:
            raise ValueError("stalled_after must be at least 3 s (heartbeats every third of it)")
        self.url = url
        self.retention = retention
        self.stalled_after = stalled_after
        self.wait_warning = wait_warning
        self.pool_size = pool_size
        self.timeout = timeout
        self.poll_interval = poll_interval
        self._retry: dict[str, RetryPolicy] = {}
        for func, policy in (retry or {}).items():
            from . import handler_name  # noqa: PLC0415  # same package; cycle-free here

            self._retry[handler_name(func)] = (
                policy if isinstance(policy, RetryPolicy) else RetryPolicy(attempts=policy)
            )
        try:
            import procrastinate  # noqa: PLC0415  # the extra, loaded only by its users
            import psycopg  # noqa: F401, PLC0415  # (checked here, used on first defer)
        except ImportError as e:
            raise ImportError(
                "PostgresQueue needs the 'postgres' extra: pip install 'line-markread[postgres]' "
                f"(procrastinate and psycopg; {e})"
            ) from None

        self.app: procrastinate.App = procrastinate.App(
            connector=procrastinate.PsycopgConnector(conninfo=url)
        )
        self._lock = threading.Lock()
        self._idle_sync = Connections(self)
        self._async_pools: dict[asyncio.AbstractEventLoop, AsyncConnections] = {}
        self._closed = False
        self._down = False
        self._once: PostgresOnceStore | None = None
        self._deferred = 0
        self._duplicates = 0
        self._refused = 0

    def __repr__(self) -> str:
        return f"<PostgresQueue {redact_url(self.url)}>"

    def replace(self, **changes: Any) -> PostgresQueue:
        """A new queue with the same options but *changes* (``url=``, ``stalled_after=``...)."""
        options: dict[str, Any] = {
            "url": self.url,
            "retention": self.retention,
            "stalled_after": self.stalled_after,
            "wait_warning": self.wait_warning,
            "pool_size": self.pool_size,
            "timeout": self.timeout,
            "poll_interval": self.poll_interval,
        }
        options.update(changes)
        url = options.pop("url")
        queue = PostgresQueue(url, **options)
        queue._retry = dict(self._retry)
        return queue

    def retry_policy(self, handler: str) -> RetryPolicy | None:
        return self._retry.get(handler)

    def once_store(self) -> PostgresOnceStore:
        """The "handled once" record in this queue's database, shared by every process.

        ``WebhookHandler(queue=this)`` uses it unless given ``once_store=``:
        an event whose handler completed is not run again, and an answer
        ``reply()`` delivered is not sent again, whichever web process or
        worker meets the event next.  One store per queue.
        """
        from ._once_store import PostgresOnceStore  # noqa: PLC0415  # imports this module

        with self._lock:
            if self._once is None:
                self._once = PostgresOnceStore(self)
            return self._once

    # -- accepting a body ----------------------------------------------------

    def defer(self, jobs: Sequence[Job]) -> int:
        """Accept a body's jobs in one transaction; how many were new (not redeliveries)."""
        if not jobs:
            return 0
        try:
            fresh = self._idle_sync.run(self._defer_on_sync, jobs)
        except RuntimeError:
            raise
        except Exception as e:
            raise self._refuse(len(jobs), e) from None
        self._accepted(len(jobs), len(fresh))
        return len(fresh)

    async def adefer(self, jobs: Sequence[Job]) -> int:
        """Async twin of ``defer``, on connections of the running loop."""
        if not jobs:
            return 0
        try:
            fresh = await self._idle_async().arun(self._defer_on_async, jobs)
        except RuntimeError:
            raise
        except Exception as e:
            raise self._refuse(len(jobs), e) from None
        self._accepted(len(jobs), len(fresh))
        return len(fresh)

    def _defer_on_sync(self, conn: Any, jobs: Sequence[Job]) -> list[Job]:
        with conn.transaction():
            fresh = _fresh(jobs, self._accept_sync(conn, jobs))
            for chat, group in _by_chat(fresh):
                deferrer = self.app.configure_task(
                    TASK_NAME, lock=chat, queue=QUEUE_NAME, connection=conn
                )
                deferrer.batch_defer(*(job.to_json() for job in group))
        return fresh

    async def _defer_on_async(self, conn: Any, jobs: Sequence[Job]) -> list[Job]:
        async with conn.transaction():
            fresh = _fresh(jobs, await self._accept_async(conn, jobs))
            for chat, group in _by_chat(fresh):
                deferrer = self.app.configure_task(
                    TASK_NAME, lock=chat, queue=QUEUE_NAME, connection=conn
                )
                await deferrer.batch_defer_async(*(job.to_json() for job in group))
        return fresh

    _ACCEPT = (
        f"INSERT INTO {ACCEPTED_TABLE} (webhook_event_id) "
        "SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING RETURNING webhook_event_id"
    )

    def _accept_sync(self, conn: Any, jobs: Sequence[Job]) -> set[str]:
        ids = sorted({j.webhook_event_id for j in jobs if j.webhook_event_id is not None})
        if not ids:
            return set()
        return {row[0] for row in conn.execute(self._ACCEPT, (ids,)).fetchall()}

    async def _accept_async(self, conn: Any, jobs: Sequence[Job]) -> set[str]:
        ids = sorted({j.webhook_event_id for j in jobs if j.webhook_event_id is not None})
        if not ids:
            return set()
        cursor = await conn.execute(self._ACCEPT, (ids,))
        return {row[0] for row in await cursor.fetchall()}

    def _accepted(self, count: int, fresh: int) -> None:
        with self._lock:
            self._deferred += fresh
            self._duplicates += count - fresh
            recovered, self._down = self._down, False
        if recovered:
            log.warning("line_markread: the job queue accepts bodies again")
        if fresh < count:
            log.debug("line_markread: %d redelivered event(s) already queued", count - fresh)

    def _refuse(self, count: int, error: Exception) -> QueueUnavailable:
        with self._lock:
            self._refused += count
            first, self._down = not self._down, True
        reason = f"{type(error).__name__}: {error}".replace(self.url, redact_url(self.url))
        if first:  # one ERROR per burst; the recovery is logged too
            log.error(
                "line_markread: the job queue refused a body (%s); answering with an error so "
                "LINE redelivers; nothing of it was marked or run",
                reason[:300],
                extra={"markread_event": "queue_unavailable"},
            )
        return QueueUnavailable(
            f"line_markread: {count} background job(s) could not be queued "
            f"({type(error).__name__}); nothing of this body was marked or run"
        )

    # -- connections ---------------------------------------------------------

    def _idle_async(self) -> AsyncConnections:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closed:
                raise RuntimeError("line_markread: this queue is closed")
            pool = self._async_pools.get(loop)
            if pool is None:
                for gone in [lp for lp in self._async_pools if lp.is_closed()]:
                    del self._async_pools[gone]
                pool = self._async_pools[loop] = AsyncConnections(self)
            return pool

    # -- stats, closing ------------------------------------------------------

    def stats(self) -> QueueStats:
        """Database view (``depth``, ``running``...) plus this process's counters.

        Reads the database (one short query on a connection of its own); if
        it is unreachable, the database fields are ``-1``.
        """
        with self._lock:
            local = {
                "deferred": self._deferred,
                "duplicates": self._duplicates,
                "refused": self._refused,
            }
        try:
            remote = read_stats_blocking(self.url)
        except Exception:
            remote = dict.fromkeys(
                ("depth", "running", "failed", "retried", "stalled_recovered"), -1
            )
        return QueueStats(**remote, **local)

    async def astats(self) -> QueueStats:
        """Async twin of ``stats``."""
        with self._lock:
            local = {
                "deferred": self._deferred,
                "duplicates": self._duplicates,
                "refused": self._refused,
            }
        try:
            remote = await read_stats(self.url)
        except Exception:
            remote = dict.fromkeys(
                ("depth", "running", "failed", "retried", "stalled_recovered"), -1
            )
        return QueueStats(**remote, **local)

    def close(self) -> None:
        """Close the web side's idle connections (those of other loops: on their loop)."""
        with self._lock:
            self._closed = True
            loops = list(self._async_pools.items())
            self._async_pools.clear()
        self._idle_sync.close()
        for loop, pool in loops:
            if loop.is_running():
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(pool.aclose(), loop).result(5)

    async def aclose(self) -> None:
        """Async twin of ``close``."""
        running = asyncio.get_running_loop()
        with self._lock:
            self._closed = True
            loops = list(self._async_pools.items())
            self._async_pools.clear()
        await asyncio.to_thread(self._idle_sync.close)
        for loop, pool in loops:
            if loop is running:
                await pool.aclose()
            elif loop.is_running():
                future = asyncio.run_coroutine_threadsafe(pool.aclose(), loop)
                with contextlib.suppress(Exception):
                    await asyncio.wrap_future(future)


T = TypeVar("T")
A = TypeVar("A")


class Connections:
    """The web side's few connections: idle ones kept, a broken one never reused.

    Deliberately not a pool with a background reconnect loop: with the database
    down, a webhook must fail fast (connection refused: at once; unreachable:
    ``timeout``) and quietly, one ERROR per burst.  A body whose kept
    connection turns out dead (the database restarted) is tried once more on a
    fresh one: nothing was committed.
    """

    def __init__(self, queue: PostgresQueue) -> None:
        self._queue = queue
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _connect(self) -> Any:
        import psycopg  # noqa: PLC0415  # the extra

        # autocommit: a body's defer is an explicit transaction (`conn.transaction()`), and
        # the once store's single statements then take one round trip, not BEGIN/COMMIT too.
        return psycopg.connect(
            self._queue.url, connect_timeout=max(1, round(self._queue.timeout)), autocommit=True
        )

    def run(self, work: Callable[[Any, A], T], jobs: A) -> T:
        import psycopg  # noqa: PLC0415

        with self._lock:
            if self._pid != os.getpid():
                # A forked child (gunicorn --preload): the parent's sockets are not ours to
                # use, nor to close (closing would end the parent's sessions); forget them.
                self._idle, self._pid = [], os.getpid()
            conn = self._idle.pop() if self._idle else None
        reused = conn is not None
        for _ in range(2):
            if conn is None:
                conn = self._connect()
            try:
                result = work(conn, jobs)
            except psycopg.OperationalError:
                conn.close()
                conn = None
                if not reused:
                    raise
                reused = False  # a kept connection died: once more, fresh
                continue
            except BaseException:
                conn.close()
                raise
            self._keep(conn)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _keep(self, conn: Any) -> None:
        with self._lock:
            if len(self._idle) < self._queue.pool_size and not self._queue._closed:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()


class AsyncConnections:
    """``Connections`` for one event loop (psycopg's async connections are per loop)."""

    def __init__(self, queue: PostgresQueue) -> None:
        self._queue = queue
        self._idle: list[Any] = []

    async def arun(self, work: Callable[[Any, A], Awaitable[T]], jobs: A) -> T:
        import psycopg  # noqa: PLC0415

        conn = self._idle.pop() if self._idle else None
        reused = conn is not None
        for _ in range(2):
            if conn is None:
                conn = await psycopg.AsyncConnection.connect(
                    self._queue.url,
                    connect_timeout=max(1, round(self._queue.timeout)),
                    autocommit=True,  # as in Connections._connect
                )
            try:
                result = await work(conn, jobs)
            except psycopg.OperationalError:
                await conn.close()
                conn = None
                if not reused:
                    raise
                reused = False
                continue
            except BaseException:
                await conn.close()
                raise
            if len(self._idle) < self._queue.pool_size and not self._queue._closed:
                self._idle.append(conn)
            else:
                await conn.close()
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.close()


def _fresh(jobs: Sequence[Job], new_ids: set[str]) -> list[Job]:
    """The jobs to create: new event ids (each once), and events without an id."""
    fresh = []
    for job in jobs:
        if job.webhook_event_id is None:
            fresh.append(job)
        elif job.webhook_event_id in new_ids:
            new_ids.discard(job.webhook_event_id)  # a body naming one id twice: one job
            fresh.append(job)
    return fresh


def _by_chat(jobs: list[Job]) -> list[tuple[str | None, list[Job]]]:
    """Runs of consecutive jobs of one chat (one ``batch_defer`` each), in body order."""
    groups: list[tuple[str | None, list[Job]]] = []
    for job in jobs:
        if groups and groups[-1][0] == job.chat:
            groups[-1][1].append(job)
        else:
            groups.append((job.chat, [job]))
    return groups


async def read_stats(url: str) -> dict[str, int]:
    """The database's side of ``QueueStats``: procrastinate's job counts, and our counters."""
    import procrastinate  # noqa: PLC0415
    import psycopg  # noqa: PLC0415

    # Our counters first: a plain connection fails at once when the database is away
    # (a pool would wait for it).
    async with await psycopg.AsyncConnection.connect(url, connect_timeout=5) as conn:
        cursor = await conn.execute(f"SELECT name, value FROM {COUNTERS_TABLE}")
        counters = {str(name): int(value) for name, value in await cursor.fetchall()}
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=url, min_size=1, max_size=1)
    )
    async with app.open_async():
        queues = list(await app.job_manager.list_queues_async(queue=QUEUE_NAME))
    counts = queues[0] if queues else {}
    return {
        "depth": int(counts.get("todo", 0)),
        "running": int(counts.get("doing", 0)),
        "failed": int(counts.get("failed", 0)),
        "retried": counters.get("retried", 0),
        "stalled_recovered": counters.get("stalled_recovered", 0),
    }


def read_stats_blocking(url: str) -> dict[str, int]:
    """``read_stats`` from sync code, even inside a running loop (a thread of its own)."""
    result: list[dict[str, int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(read_stats(url)))
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run, name="line-markread-stats")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def init_schema(url: str) -> str:
    """Create (or check) procrastinate's schema and ours; idempotent.  What was done, in words.

    procrastinate's schema comes from its public ``SchemaManager.get_schema()``
    and is applied only where its jobs table is missing; an existing one must
    be one this procrastinate can use (else: apply procrastinate's migrations,
    ``procrastinate schema --migrations-path``).  One ``queue init`` at a time
    (an advisory lock), so two deploys starting together do not collide.
    """
    import psycopg  # noqa: PLC0415
    from procrastinate.schema import SchemaManager  # noqa: PLC0415

    with psycopg.connect(url, connect_timeout=10) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        row = conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()
        created = row is None or row[0] is None
        if created:
            conn.execute(SchemaManager.get_schema())
        else:
            fetch = conn.execute(
                "SELECT to_regprocedure('procrastinate_fetch_job_v2(character varying[], bigint)')"
            ).fetchone()
            if fetch is None or fetch[0] is None:
                raise RuntimeError(
                    "the database holds an older procrastinate schema: apply procrastinate's "
                    "migrations (see `procrastinate schema --migrations-path`), then run "
                    "`line-markread queue init` again"
                )
        conn.execute(OWN_SCHEMA)
        conn.commit()
    return "created" if created else "up to date"
