"""
Recorded requests: what the fake LINE platform saw, and the waits on it.

`Records` owns the one condition variable of the fake: the records, the
counters that keep waiting cheap, the tokens marked read, and the listeners
that wake async waiters on other loops.  The fake's other state (scripts,
the account) shares its lock, so one request's arrival and the fault it takes
are recorded atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Literal

import attrs

from ._endpoints import MARK_AS_READ_PATHS, TOKEN_MARK_AS_READ_PATH

RequestOutcome = Literal["pending", "responded", "dropped", "abandoned"]


@attrs.frozen
class RecordedRequest:
    """
    One request as the fake saw it, and what it did about it.

    Records are replaced (never mutated) when the request completes, so a
    record you hold keeps the state it had when you got it.
    """

    method: str
    path: str
    json: object | None
    """The parsed JSON body, or None when the body is empty or not JSON."""
    raw_body: bytes
    authorized: bool
    """Whether ``Authorization`` was exactly ``Bearer <access_token>``."""
    headers: Mapping[str, str]
    """Case-insensitive request headers, with the ``Authorization`` value redacted."""
    received_at: float
    """`time.monotonic` when the request arrived."""
    responded_at: float | None
    """`time.monotonic` when the response was sent; None if none was."""
    status: int | None
    """The status sent; None if no response was sent (yet)."""
    request_id: str
    """The ``x-line-request-id`` sent (or that would have been sent)."""
    outcome: RequestOutcome = "pending"
    """
    ``pending`` while in flight; ``responded``; ``dropped`` when the fake
    closed the connection without answering (drop/reset faults, or a stop
    while the request was waiting); ``abandoned`` when the client went away
    first.
    """

    @property
    def completed(self) -> bool:
        """Whether the fake is done with this request."""
        return self.outcome != "pending"


class Records:
    """Every request in arrival order, and blocking and async waits for them; thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        """The fake's lock (reentrant); hold it to make several changes atomic."""
        # Guarded by lock:
        self._records: list[RecordedRequest] = []
        # Counts by path, and in total under None, so waiting stays cheap when
        # a benchmark sends thousands of requests.
        self._arrived: Counter[str | None] = Counter()
        self._finished: Counter[str | None] = Counter()
        self._generation = 0
        self._marked: list[str] = []
        self._listeners: list[Callable[[], None]] = []

    def arrive(self, record: RecordedRequest) -> tuple[int, int]:
        """Record an arrival; return the (generation, index) that `complete` needs."""
        with self.lock:
            generation, index = self._generation, len(self._records)
            self._records.append(record)
            self._arrived[None] += 1
            self._arrived[record.path] += 1
            self._notify()
        return generation, index

    def complete(self, done: RecordedRequest, generation: int, index: int) -> None:
        """Replace the record at *index* with its final state (unless `clear` forgot it)."""
        token = done.json.get("markAsReadToken") if isinstance(done.json, dict) else None
        with self.lock:
            if generation == self._generation:  # Otherwise reset() forgot it.
                if isinstance(token, str) and done.path == TOKEN_MARK_AS_READ_PATH:
                    if done.status == 200:
                        self._marked.append(token)
                    elif self._records[index].status == 200:  # Its answer was lost.
                        _remove_last(self._marked, token)
                if not self._records[index].completed:
                    self._finished[None] += 1
                    self._finished[done.path] += 1
                self._records[index] = done
            self._notify()

    def clear(self) -> None:
        """Forget every record; requests in flight complete into the void."""
        with self.lock:
            self._records = []
            self._arrived.clear()
            self._finished.clear()
            self._marked = []
            self._generation += 1
            self._notify()

    def all(self) -> list[RecordedRequest]:
        with self.lock:
            return list(self._records)

    def mark_requests(self) -> list[RecordedRequest]:
        with self.lock:
            return [r for r in self._records if r.path in MARK_AS_READ_PATHS]

    def marked_tokens(self) -> list[str]:
        with self.lock:
            return list(self._marked)

    def wait(
        self, count: int, path: str | None, timeout: float, completed: bool
    ) -> list[RecordedRequest]:
        """See `FakeLinePlatform.wait_for_requests`."""
        with self.lock:
            if self.lock.wait_for(lambda: self._enough(count, path, completed), timeout):
                return self._matching(path, completed)
            raise TimeoutError(self._timeout_message(count, path, timeout, completed))

    async def await_(
        self, count: int, path: str | None, timeout: float, completed: bool
    ) -> list[RecordedRequest]:
        """See `FakeLinePlatform.await_requests`."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def poke() -> None:
            # If that loop is closed, nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(changed.set)

        deadline = loop.time() + timeout
        with self.lock:
            self._listeners.append(poke)
        try:
            while True:
                changed.clear()
                with self.lock:
                    if self._enough(count, path, completed):
                        return self._matching(path, completed)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    with self.lock:
                        raise TimeoutError(self._timeout_message(count, path, timeout, completed))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
        finally:
            with self.lock:
                self._listeners.remove(poke)

    def _matching(self, path: str | None, completed: bool) -> list[RecordedRequest]:
        return [
            r
            for r in self._records
            if (path is None or r.path == path) and (r.completed or not completed)
        ]

    def _enough(self, count: int, path: str | None, completed: bool) -> bool:
        return (self._finished if completed else self._arrived)[path] >= count

    def _timeout_message(
        self, count: int, path: str | None, timeout: float, completed: bool
    ) -> str:
        what = "complete request(s)" if completed else "request(s)"
        where = f" to {path}" if path else ""
        got = len(self._matching(path, completed))
        pending = sum(not r.completed for r in self._records)
        seen = ", ".join(f"{r.method} {r.path} -> {r.status or r.outcome}" for r in self._records)
        return (
            f"expected {count} {what}{where} within {timeout}s, got {got} "
            f"({pending} in flight); all requests so far: [{seen}]"
        )

    def _notify(self) -> None:
        # Called with lock held.
        self.lock.notify_all()
        for poke in self._listeners:
            poke()


def _remove_last(items: list[str], value: str) -> None:
    for i in range(len(items) - 1, -1, -1):
        if items[i] == value:
            del items[i]
            return
