"""Durable background handlers: the backend seam between the webhook and a job queue.

Without ``queue=``, ``background=True`` handlers run in the web process's own
pool (``_background``).  With a queue, ``handle()``/``handle_async()`` turn a
body's background steps into ``Job`` records and hand them to the backend in
one call (``defer``/``adefer``), *before* anything of the body is marked or
run; a worker process later rebuilds each event, marks it read, shows the
loading animation and runs the handler (``_queue._worker``).

What a backend must promise (and ``PostgresQueue`` does, through procrastinate):

* all of a body's jobs are accepted together or not at all; failure raises
  ``QueueUnavailable`` (a ``BackgroundFull``) so the framework answers 500 and
  LINE redelivers;
* a ``webhook_event_id`` already accepted creates no second job;
* jobs with the same ``chat`` run one at a time, in the order they were
  accepted, whatever process runs them.

A backend may also offer ``once_store()``: an ``OnceStore`` every process of
the queue shares ("handled once", answers delivered).  ``WebhookHandler``
uses it unless given ``once_store=``; ``PostgresQueue``'s keeps it in the
same database.

An SQS FIFO backend would map ``chat`` to ``MessageGroupId`` and
``webhook_event_id`` to ``MessageDeduplicationId``; nothing here depends on
PostgreSQL.  This module imports neither procrastinate nor psycopg.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs

from .._background import BackgroundFull


class QueueUnavailable(BackgroundFull):
    """The queue could not take a body (database unreachable, full, or refusing).

    Raised by ``handle()``/``handle_async()`` before any of the body's messages
    is marked or any handler runs, so nothing is lost: the framework answers
    500 and LINE redelivers (with redelivery on).  A ``BackgroundFull``, so code
    that already handles a full in-process pool handles this too.  The message
    names the cause, never the database password.
    """


@attrs.frozen
class Job:
    """One background step of a webhook body, as a backend stores it.

    Everything is JSON-ready so that any process can run it: the event's raw
    JSON (rebuilt into the SDK model by the worker), the webhook's
    ``destination``, which handler (``handler``: the function's qualified
    name, checked by the worker against the route it finds for the event;
    ``route``: the SDK's handler key), the ``chat`` whose jobs run one at a
    time (``None``: no chat, no order), the event's ``webhookEventId`` and when
    the web process accepted it (epoch seconds, for wait-time warnings).
    """

    event: Mapping[str, Any] = attrs.field(repr=False)
    destination: str | None
    handler: str
    route: str
    chat: str | None
    webhook_event_id: str | None
    accepted_at: float = attrs.field(factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "event": dict(self.event),
            "destination": self.destination,
            "handler": self.handler,
            "route": self.route,
            "chat": self.chat,
            "webhook_event_id": self.webhook_event_id,
            "accepted_at": self.accepted_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Job:
        """The job back from its stored JSON; ``ValueError`` if it is not one of ours."""
        try:
            event = data["event"]
            if not isinstance(event, dict):
                raise TypeError("event is not an object")
            return cls(
                event=event,
                destination=_opt_str(data.get("destination")),
                handler=str(data["handler"]),
                route=str(data["route"]),
                chat=_opt_str(data.get("chat")),
                webhook_event_id=_opt_str(data.get("webhook_event_id")),
                accepted_at=float(data.get("accepted_at", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a line_markread job: {type(e).__name__}: {e}") from None


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


@attrs.frozen
class QueueStats:
    """What a queue holds and what this process did with it.

    The first five come from the database (every web process and worker
    sees the same numbers): jobs waiting (``depth``), running, failed for
    good, retried after a handler error, and re-run after their worker
    died (``stalled_recovered``).  The rest count this process's calls:
    jobs deferred, redelivered events that created no job
    (``duplicates``), and bodies refused with ``QueueUnavailable``.
    """

    depth: int = 0
    running: int = 0
    failed: int = 0
    retried: int = 0
    stalled_recovered: int = 0
    deferred: int = 0
    duplicates: int = 0
    refused: int = 0


@runtime_checkable
class Backend(Protocol):
    """The seam: what ``WebhookHandler(queue=...)`` needs from a durable queue."""

    def defer(self, jobs: Sequence[Job]) -> int:
        """Accept all of *jobs* at once (or raise ``QueueUnavailable``); how many were new."""

    async def adefer(self, jobs: Sequence[Job]) -> int:
        """Async twin of ``defer``."""

    def stats(self) -> QueueStats:
        """A snapshot of ``QueueStats``."""

    def close(self) -> None:
        """Release connections (sync callers)."""

    async def aclose(self) -> None:
        """Release connections (on the running loop)."""


def handler_name(func: Callable[..., Any]) -> str:
    """A handler's identity across processes: its qualified name.

    Not its module: a bot run as ``python bot.py`` is ``__main__`` in the web
    process and ``bot`` in the worker.  The route key that comes with it tells
    same-named functions apart.
    """
    return str(getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func)))


def chat_of(raw: Mapping[str, Any]) -> str | None:
    """The chat of an event's JSON (``user:U...``, ``group:C...``, ``room:R...``), or ``None``."""
    source = raw.get("source")
    if not isinstance(source, dict):
        return None
    for key, kind in (("groupId", "group"), ("roomId", "room"), ("userId", "user")):
        value = source.get(key)
        if isinstance(value, str) and value:
            return f"{kind}:{value}"
    return None


def event_id_of(raw: Mapping[str, Any]) -> str | None:
    value = raw.get("webhookEventId")
    return value if isinstance(value, str) and value else None


__all__ = [
    "Backend",
    "Job",
    "QueueStats",
    "QueueUnavailable",
    "chat_of",
    "event_id_of",
    "handler_name",
]
