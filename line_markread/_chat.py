"""Per-chat state of the marking engine: watermark, marks in progress, waiters.

Plain records with no I/O, so ``_engine`` reads as the state machine alone.
Everything here is touched only from the engine's event loop.

Messages are ordered by ``Key = (timestamp, arrival sequence)``: LINE's
timestamp first, the order the plugin saw them second.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence

import attrs

from ._outcome import Outcome
from ._targets import ReadTarget

Key = tuple[int, int]
"""(LINE timestamp in ms, arrival sequence): the order of messages in a chat."""


class BodyWaiters:
    """The waiters of one submitted body still unsettled, and its deadline timer.

    The timer is cancelled as soon as the last waiter settles, so a body's
    waiters are not kept alive until its deadline just to be found settled.
    """

    __slots__ = ("timer", "unsettled")

    def __init__(self) -> None:
        self.unsettled = 0
        self.timer: asyncio.TimerHandle | None = None

    def settled(self) -> None:
        self.unsettled -= 1
        if self.unsettled == 0 and self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Waiter:
    __slots__ = ("body", "done", "key", "sink")

    def __init__(self, key: Key, loop: asyncio.AbstractEventLoop) -> None:
        self.key = key
        self.done: asyncio.Future[Outcome] = loop.create_future()
        self.body: BodyWaiters | None = None
        self.sink: concurrent.futures.Future[Outcome] | None = None
        """A waiting thread's future (the sync hand-over): given the outcome in ``release``."""

    def release(self, outcome: Outcome) -> None:
        if not self.done.done():
            self.done.set_result(outcome)
            if self.sink is not None:
                # Set here, not from a done-callback: no extra callback on the loop per event.
                self.sink.set_result(outcome)
            if self.body is not None:
                self.body.settled()

    def expire(self) -> None:
        """The body's ``wait_timeout`` is over: ``TIMED_OUT``, whether or not a request went out.

        Marking goes on (or fails, counted) in the background; the handler's
        wait is bounded by ``wait_timeout`` under every API behaviour and any
        queue length.
        """
        self.release(Outcome.TIMED_OUT)


class Job:
    __slots__ = ("in_flight", "key", "settled", "superseded", "target", "task")

    def __init__(self, target: ReadTarget, key: Key) -> None:
        self.target = target
        self.key = key
        self.task: asyncio.Task[None] | None = None
        self.in_flight = False
        self.superseded = False
        # Marked or failed (and counted): a task cancelled at close that is not
        # settled yet is counted as failed by the close.
        self.settled = False


class Chat:
    __slots__ = ("jobs", "marked", "waiters")

    def __init__(self) -> None:
        self.marked: Key | None = None
        self.jobs: list[Job] = []
        self.waiters: list[Waiter] = []

    def is_idle(self) -> bool:
        return not self.jobs and not any(not w.done.done() for w in self.waiters)

    def prune(self) -> None:
        """Forget waiters already released (by ``wait_timeout``): only unresolved ones matter."""
        if self.waiters:
            self.waiters = [w for w in self.waiters if not w.done.done()]

    def covers(self, key: Key) -> bool:
        return self.marked is not None and self.marked >= key


@attrs.frozen
class Ticket:
    """The waiters of one batch (a webhook body), in order; ``None`` where nothing is marked."""

    waiters: tuple[Waiter | None, ...]

    async def outcome(self, index: int) -> Outcome:
        """Wait for event *index* (a waiter has one consumer: awaiting it directly is safe)."""
        waiter = self.waiters[index]
        return Outcome.SKIPPED if waiter is None else await waiter.done


def expire_all(waiters: list[Waiter]) -> None:
    for waiter in waiters:
        waiter.expire()


def failed_ticket(
    targets: Sequence[ReadTarget | None], loop: asyncio.AbstractEventLoop
) -> tuple[Ticket, int]:
    """A ticket whose marks all failed already (closed meanwhile), and how many there are."""
    waiters: list[Waiter | None] = []
    for target in targets:
        if target is None:
            waiters.append(None)
            continue
        waiter = Waiter((target.timestamp, -1), loop)
        waiter.release(Outcome.FAILED)
        waiters.append(waiter)
    return Ticket(tuple(waiters)), len(waiters) - waiters.count(None)
