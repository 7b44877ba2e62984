"""
Faults: what the fake LINE platform does instead of answering normally.

`Fault` says what happens on the wire (a status, a delay, a hang, a dropped
or reset connection); `Scripts` holds the per-path queues that
`FakeLinePlatform.script` fills and each arriving request takes from.  The
wire-level actions that are not an HTTP answer (closing, resetting) live here
too, so a new kind of fault is a class method plus its action.
"""

from __future__ import annotations

import socket
import struct
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

import attrs

if TYPE_CHECKING:
    import threading

    from aiohttp import web

_Action = Literal["respond", "hang", "drop", "lose", "reset"]


@attrs.frozen
class Fault:
    """
    A scripted answer for `FakeLinePlatform.script`.

    Build it with the class methods (`Fault.status`, `Fault.delay`,
    `Fault.hang`, `Fault.drop`, `Fault.reset`) rather than by hand: they say
    what happens on the wire, the fields only say how.
    """

    action: _Action
    http_status: int = 200
    retry_after: str | None = None
    body: bytes | None = None
    after: float = 0.0
    """Seconds to wait before acting."""

    @classmethod
    def status(
        cls,
        code: int,
        *,
        retry_after: str | None = None,
        body: str | bytes | None = None,
        delay: float = 0.0,
    ) -> Fault:
        """
        Answer with *code*.

        Without *body*, an error status gets a LINE-style JSON error body and
        200 gets the endpoint's normal handling.  A given *body* is sent
        as-is, still labelled JSON, so tests can send what LINE never would
        (HTML from a proxy, nothing at all).  *retry_after* becomes a
        ``Retry-After`` header.
        """
        check_status(code)
        if delay < 0:
            raise ValueError(f"delay must be >= 0, not {delay!r}")
        raw = body.encode() if isinstance(body, str) else body
        return cls("respond", code, retry_after, raw, delay)

    @classmethod
    def delay(cls, seconds: float, then: int = 200) -> Fault:
        """Answer *then* (200: normally) after *seconds*."""
        return cls.status(then, delay=seconds)

    @classmethod
    def hang(cls) -> Fault:
        """
        Never answer.

        The request ends when the client gives up and disconnects, or when
        the fake stops (which closes the connection without an answer).
        """
        return cls("hang")

    @classmethod
    def drop(cls, *, processed: bool = False) -> Fault:
        """Close the connection without answering: the client sees a disconnect.

        ``processed=True``: the fake acts on the request first (a push is
        accepted, a reply token used) and only the answer is lost, as when a
        connection breaks after LINE did the work: the case retry keys exist for.
        """
        return cls("lose" if processed else "drop")

    @classmethod
    def reset(cls) -> Fault:
        """Abort the connection with a TCP RST: the client sees a connection reset."""
        return cls("reset")

    def _is_normal(self) -> bool:
        return self.action == "respond" and self.http_status == 200 and self.body is None


def check_status(code: int) -> None:
    if not 100 <= code <= 599:
        raise ValueError(f"not an HTTP status: {code!r}")


class Scripts:
    """
    The queued faults, per path and per read token, first in first out.

    A token's queue is taken before its path's: a test can slow one chat's
    mark down whatever order concurrent requests happen to arrive in.

    Guarded by the platform's lock (passed in), so taking a fault is atomic
    with recording the request that takes it, and `FakeLinePlatform.reset`
    forgets both at once.
    """

    def __init__(self, lock: threading.Condition) -> None:
        self._lock = lock
        self._queues: dict[str, deque[Fault]] = {}
        self._token_queues: dict[str, deque[Fault]] = {}

    def add(self, path: str, faults: Iterable[Fault]) -> None:
        with self._lock:
            self._queues.setdefault(path, deque()).extend(faults)

    def add_for_token(self, token: str, faults: Iterable[Fault]) -> None:
        with self._lock:
            self._token_queues.setdefault(token, deque()).extend(faults)

    def take(self, path: str, token: str | None = None) -> Fault | None:
        """The next fault for *token* (if any), else for *path*; None to answer normally."""
        with self._lock:
            queue = self._token_queues.get(token) if token is not None else None
            if not queue:
                queue = self._queues.get(path)
            return queue.popleft() if queue else None

    def clear(self) -> None:
        with self._lock:
            self._queues.clear()
            self._token_queues.clear()


def close_connection(request: web.BaseRequest, *, rst: bool) -> None:
    """Close *request*'s connection unanswered: with a FIN, or with a RST if *rst*."""
    transport = request.transport
    if transport is None:
        return
    if rst:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger with a zero timeout: close() sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()
