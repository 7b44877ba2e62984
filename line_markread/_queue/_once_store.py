"""``PostgresOnceStore``: "handled once" in the queue's database, shared by every process.

``MemoryOnceStore`` remembers what *this* process did.  On the durable path
that is not enough: a job re-run after its worker died runs on another
worker, and a redelivered event may reach another web replica.  This store
keeps the same keys (``_once``: an event's handler completed, answer *n*
delivered, the reply token used, a reply written ahead) in
``line_markread_once`` (``key text PRIMARY KEY, created_at``), so every web
process and worker of the queue sees them; the workers' maintenance prunes
keys older than the queue's ``retention`` (at least 24 h: LINE's retry-key
window, and longer than LINE redelivers).

``remember`` is an idempotent ``INSERT ... ON CONFLICT DO NOTHING``, ``seen``
an existence check, each on a connection of the queue's own small pools (the
sync one from handler threads, the running loop's from async code): one
statement in autocommit, one round trip.

The database unreachable (or the table missing: a schema from before this
store, until ``line-markread queue init`` runs again) never stops a handler:
``seen`` answers ``False`` and ``remember`` records nothing, with one WARNING
per burst.  The cost is the in-memory store's: an event may run again, and an
answer may be sent again by a re-run that finds no record (a push still
carries its derived ``X-Line-Retry-Key``, so LINE drops the copy).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from ._postgres import ONCE_TABLE, redact_url

if TYPE_CHECKING:
    from ._postgres import PostgresQueue

log = logging.getLogger(__name__)

_SEEN = f"SELECT 1 FROM {ONCE_TABLE} WHERE key = %s"
_REMEMBER = f"INSERT INTO {ONCE_TABLE} (key) VALUES (%s) ON CONFLICT DO NOTHING"


class PostgresOnceStore:
    """An ``OnceStore`` in the queue's database: one record for every worker and replica.

    What ``WebhookHandler(queue=PostgresQueue(...))`` uses unless
    ``once_store=`` names another; get one with ``queue.once_store()``.
    Thread-safe; ``seen``/``remember`` block for one short statement (handler
    threads), ``aseen``/``aremember`` run on the caller's loop.
    """

    def __init__(self, queue: PostgresQueue) -> None:
        self.queue = queue
        self._lock = threading.Lock()
        self._down = False

    def __repr__(self) -> str:
        return f"<PostgresOnceStore {redact_url(self.queue.url)}>"

    # -- the four methods of OnceStore -----------------------------------------

    def seen(self, key: str) -> bool:
        try:
            found = self.queue._idle_sync.run(_seen_sync, key)
        except Exception as e:
            self._failed("seen", e)
            return False
        self._ok()
        return found

    def remember(self, key: str) -> None:
        try:
            self.queue._idle_sync.run(_remember_sync, key)
        except Exception as e:
            self._failed("remember", e)
            return
        self._ok()

    async def aseen(self, key: str) -> bool:
        try:
            found = await self.queue._idle_async().arun(_seen_async, key)
        except Exception as e:
            self._failed("seen", e)
            return False
        self._ok()
        return found

    async def aremember(self, key: str) -> None:
        try:
            await self.queue._idle_async().arun(_remember_async, key)
        except Exception as e:
            self._failed("remember", e)
            return
        self._ok()

    # -- one WARNING per burst ------------------------------------------------

    def _failed(self, what: str, error: Exception) -> None:
        with self._lock:
            first, self._down = not self._down, True
        if first:
            url = self.queue.url
            reason = f"{type(error).__name__}: {error}".replace(url, redact_url(url))
            log.warning(
                "line_markread: the once store could not %s a key (%s); until it can, "
                "handlers may run again for a redelivered event or a re-run job "
                "(run `line-markread queue init` if the table is missing)",
                what,
                reason[:300],
                extra={"markread_event": "once_store_unavailable"},
            )

    def _ok(self) -> None:
        if self._down:
            with self._lock:
                recovered, self._down = self._down, False
            if recovered:
                log.warning("line_markread: the once store works again")


def _seen_sync(conn: Any, key: str) -> bool:
    return conn.execute(_SEEN, (key,)).fetchone() is not None  # autocommit: one round trip


def _remember_sync(conn: Any, key: str) -> None:
    conn.execute(_REMEMBER, (key,))


async def _seen_async(conn: Any, key: str) -> bool:
    cursor = await conn.execute(_SEEN, (key,))
    return await cursor.fetchone() is not None


async def _remember_async(conn: Any, key: str) -> None:
    await conn.execute(_REMEMBER, (key,))
