"""Hostile HTTP servers on raw sockets, written independently of ``line_markread.testing``.

The fake platform speaks HTTP through aiohttp and plays by its rules; these
servers do not.  Each ``RawServer`` binds port 0 on 127.0.0.1, serves every
connection on its own thread, parses just enough of a request (request line,
headers, a ``Content-Length`` body) to record it, and then lets a test's
*respond* function write whatever bytes it likes: garbage, a trickle, a
redirect, an echo of the headers, a body of 50 MB, or nothing at all.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import attrs


@attrs.frozen
class RawRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float
    """``time.monotonic()`` when the request's last byte arrived."""

    @property
    def json(self) -> object:
        return json.loads(self.body)


Respond = Callable[[RawRequest, socket.socket, "RawServer"], bool]
"""Answer one request on the socket; return ``False`` to close the connection."""


class RawServer:
    """A TCP server whose answers are whatever bytes *respond* writes."""

    def __init__(self, respond: Respond) -> None:
        self._respond = respond
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(None)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[RawRequest] = []
        self.bytes_written = 0
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._connections: list[socket.socket] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._closing.set()
        # shutdown() wakes the accept() blocked on another thread; close() alone does not.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._cond:
            connections, self._connections = self._connections, []
        for conn in connections:
            _quietly_close(conn)
        self._accepter.join(5)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[RawRequest]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"expected {count} requests, got {len(self.requests)}")
            return list(self.requests)

    def wrote(self, count: int) -> None:
        with self._cond:
            self.bytes_written += count

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._cond:
                self._connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        try:
            while not self._closing.is_set():
                request, buffer = _read_request(conn, buffer)
                if request is None:
                    return
                with self._cond:
                    self.requests.append(request)
                    self._cond.notify_all()
                if not self._respond(request, conn, self):
                    return
        except OSError:
            return
        finally:
            _quietly_close(conn)


def _quietly_close(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()


def _read_request(conn: socket.socket, buffer: bytes) -> tuple[RawRequest | None, bytes]:
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        rest += chunk
    body, rest = rest[:length], rest[length:]
    return RawRequest(method, path, headers, body, time.monotonic()), rest


# -- answers ------------------------------------------------------------------


def http_response(
    status: int,
    body: bytes = b"",
    *,
    headers: dict[str, str] | None = None,
    reason: str = "X",
) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    # UTF-8, as a server that sends "²" in Retry-After does (aiohttp decodes it so).
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def send(conn: socket.socket, server: RawServer, data: bytes) -> None:
    conn.sendall(data)
    server.wrote(len(data))


def answer_with(*responses: bytes, then: bytes | None = None) -> Respond:
    """Answer requests with *responses* in order, then with *then* (``200 {}`` by default)."""
    queue: Iterator[bytes] = iter(responses)
    final = http_response(200, b"{}") if then is None else then
    lock = threading.Lock()

    def respond(request: RawRequest, conn: socket.socket, server: RawServer) -> bool:
        with lock:
            data = next(queue, final)
        send(conn, server, data)
        return True

    return respond


def hang(release: threading.Event) -> Respond:
    """Read the request, answer nothing until *release* is set (then close)."""

    def respond(request: RawRequest, conn: socket.socket, server: RawServer) -> bool:
        release.wait(30)
        return False

    return respond


def after(delay: float, then: Respond) -> Respond:
    """Answer like *then*, *delay* seconds late: a slow but healthy API."""

    def respond(request: RawRequest, conn: socket.socket, server: RawServer) -> bool:
        time.sleep(delay)
        return then(request, conn, server)

    return respond
