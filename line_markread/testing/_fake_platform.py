"""
A fake LINE Messaging API server for tests and benchmarks.

It is a real HTTP server on 127.0.0.1, so the code under test goes through its
real HTTP client, connection pool and timeouts.  It runs on its own event loop
in a daemon thread: that way it works the same from synchronous tests, from
async tests on any event loop and from benchmarks, and a bot that blocks its
own loop can't stall the fake (nor make a timeout test pass by accident).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import itertools
import json
import secrets
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Literal

import attrs
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

if TYPE_CHECKING:
    from types import TracebackType

    from linebot.v3.messaging import Configuration


TOKEN_MARK_AS_READ_PATH = "/v2/bot/chat/markAsRead"
USER_MARK_AS_READ_PATH = "/v2/bot/message/markAsRead"
BOT_INFO_PATH = "/v2/bot/info"
REPLY_PATH = "/v2/bot/message/reply"

MARK_AS_READ_PATHS = frozenset({TOKEN_MARK_AS_READ_PATH, USER_MARK_AS_READ_PATH})

_AUTH_FAILED = (
    "Authentication failed. Confirm that the access token in the authorization header is valid."
)
_REDACTED = "[REDACTED]"
_JSON = "application/json"
_EMPTY_OBJECT = b"{}"

# The messages LINE's API uses for these statuses where we know them; other
# statuses fall back to the HTTP reason phrase.
_ERROR_MESSAGES: Mapping[int, str] = {
    400: "The request body has 1 error(s)",
    401: _AUTH_FAILED,
    403: "Access to this API is not available for your account",
    404: "Not found",
    429: "The API rate limit has been exceeded. Try again later.",
    500: "An error occurred in the server",
}

_Action = Literal["respond", "hang", "drop", "reset"]
RequestOutcome = Literal["pending", "responded", "dropped", "abandoned"]


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
        _check_status(code)
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
    def drop(cls) -> Fault:
        """Close the connection without answering: the client sees a disconnect."""
        return cls("drop")

    @classmethod
    def reset(cls) -> Fault:
        """Abort the connection with a TCP RST: the client sees a connection reset."""
        return cls("reset")

    def _is_normal(self) -> bool:
        return self.action == "respond" and self.http_status == 200 and self.body is None


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


def _check_status(code: int) -> None:
    if not 100 <= code <= 599:
        raise ValueError(f"not an HTTP status: {code!r}")


def _error_body(status: int, message: str | None = None, details: list[Any] | None = None) -> bytes:
    if message is None:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        message = _ERROR_MESSAGES.get(status, phrase)
    payload: dict[str, Any] = {"message": message}
    if details:
        payload["details"] = details
    return json.dumps(payload).encode()


def _invalid(prop: str, message: str = "must be specified") -> tuple[int, bytes]:
    return 400, _error_body(400, details=[{"message": message, "property": prop}])


def _nonempty_str(value: object) -> bool:
    return isinstance(value, str) and value != ""


class FakeLinePlatform:
    """
    A fake of the LINE Messaging API endpoints that line_markread talks to.

    Serves the two mark-as-read endpoints, bot info and reply, validates
    authentication and bodies like LINE does, records every request, and
    can be scripted to fail in the ways a network and an API fail.

    All methods are thread-safe and may be called while requests are in
    flight.
    """

    def __init__(
        self,
        *,
        access_token: str = "fake-access-token",
        bot_name: str = "Fake Bot",
        chat_mode: str = "chat",
        mark_as_read_mode: str = "manual",
        user_api_enabled: bool = True,
        latency: float = 0.0,
    ) -> None:
        self.access_token = access_token
        self.user_api_enabled = user_api_enabled
        self.latency = latency
        self._bot_name = bot_name
        self._chat_mode = chat_mode
        self._mark_as_read_mode = mark_as_read_mode
        self._bot_user_id = "U" + secrets.token_hex(16)
        self._basic_id = "@" + secrets.token_hex(4)

        self._cond = threading.Condition()
        # Guarded by _cond:
        self._records: list[RecordedRequest] = []
        # Counts by path, and in total under None, so waiting stays cheap when
        # a benchmark sends thousands of requests.
        self._arrived: Counter[str | None] = Counter()
        self._finished: Counter[str | None] = Counter()
        self._generation = 0
        self._marked: list[str] = []
        self._scripts: dict[str, deque[Fault]] = {}
        self._rejected: set[str] = set()
        self._listeners: list[Callable[[], None]] = []

        self._lifecycle = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.BaseRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._port: int | None = None

        self._request_ids = itertools.count()
        self._request_id_prefix = secrets.token_hex(6)
        self._message_ids = itertools.count(secrets.randbelow(10**17) + 10**17)

    def __repr__(self) -> str:
        where = f"url={self.url!r}" if self._port is not None else "stopped"
        return f"<FakeLinePlatform {where}>"

    # -- lifecycle --------------------------------------------------------

    def start(self) -> FakeLinePlatform:
        """Start serving; return once the socket is listening."""
        with self._lifecycle:
            if self._loop is not None:
                raise RuntimeError("FakeLinePlatform is already running")
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=_run_loop, args=(loop,), name="FakeLinePlatform", daemon=True
            )
            thread.start()
            try:
                self._port = asyncio.run_coroutine_threadsafe(self._serve(), loop).result()
            except BaseException:
                loop.call_soon_threadsafe(loop.stop)
                thread.join()
                raise
            self._loop, self._thread = loop, thread
        return self

    def stop(self) -> None:
        """
        Stop serving and join the thread; a no-op if not running.

        Requests still waiting (hung, delayed) are released: their
        connections are closed without an answer.
        """
        with self._lifecycle:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None:
                return
            if threading.current_thread() is thread:
                raise RuntimeError("stop() can't be called from the fake's own thread")
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result()
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join()
                self._loop = self._thread = None
                self._port = None

    def __enter__(self) -> FakeLinePlatform:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> FakeLinePlatform:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL, like ``http://127.0.0.1:54321``, to use as the API host."""
        if self._port is None:
            raise RuntimeError("FakeLinePlatform is not running: call start() first")
        return f"http://127.0.0.1:{self._port}"

    def configuration(self) -> Configuration:
        """A line-bot-sdk ``Configuration`` pointing at this fake, with its token."""
        from linebot.v3.messaging import Configuration  # noqa: PLC0415  # heavy import

        return Configuration(host=self.url, access_token=self.access_token)

    # -- settings and fault injection ------------------------------------

    def set_bot_info(
        self,
        *,
        chat_mode: str | None = None,
        mark_as_read_mode: str | None = None,
        bot_name: str | None = None,
    ) -> None:
        """Change what ``GET /v2/bot/info`` answers from now on."""
        with self._cond:
            if chat_mode is not None:
                self._chat_mode = chat_mode
            if mark_as_read_mode is not None:
                self._mark_as_read_mode = mark_as_read_mode
            if bot_name is not None:
                self._bot_name = bot_name

    def script(self, path: str, *responses: int | Fault) -> None:
        """
        Queue the next answers for *path*, first in first out.

        An int is `Fault.status` of it: an error status with a LINE-style body,
        or 200 for the normal answer.  Scripted answers come before any
        validation; once the queue is empty, the endpoint behaves normally.
        """
        faults = [r if isinstance(r, Fault) else Fault.status(r) for r in responses]
        with self._cond:
            self._scripts.setdefault(path, deque()).extend(faults)

    def reject_token(self, *tokens: str) -> None:
        """Answer 400 for these mark-as-read tokens, as LINE does for another bot's tokens."""
        with self._cond:
            self._rejected.update(tokens)

    def reset(self) -> None:
        """Forget records, scripts and rejected tokens; keep the settings."""
        with self._cond:
            self._records = []
            self._arrived.clear()
            self._finished.clear()
            self._marked = []
            self._generation += 1
            self._scripts.clear()
            self._rejected.clear()
            self._notify()

    # -- records ----------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of all records so far, in arrival order, in flight ones included."""
        with self._cond:
            return list(self._records)

    def mark_requests(self) -> list[RecordedRequest]:
        """The records of requests to either mark-as-read endpoint."""
        with self._cond:
            return [r for r in self._records if r.path in MARK_AS_READ_PATHS]

    def marked_tokens(self) -> list[str]:
        """The tokens of token-API requests answered 200, in the order they were answered."""
        with self._cond:
            return list(self._marked)

    def wait_for_requests(
        self,
        count: int,
        *,
        path: str | None = None,
        timeout: float = 5.0,
        completed: bool = True,
    ) -> list[RecordedRequest]:
        """
        Block until at least *count* requests (to *path*, if given) are complete.

        Complete means answered, dropped or abandoned: after this returns,
        the client has everything it will ever get for them.  Returns all the
        complete matching records in arrival order.  With
        ``completed=False``, waits for arrivals instead (and returns in-flight
        records too): that's how to know a hung request has reached the fake.
        """
        with self._cond:
            if self._cond.wait_for(lambda: self._enough(count, path, completed), timeout):
                return self._matching(path, completed)
            raise TimeoutError(self._timeout_message(count, path, timeout, completed))

    async def await_requests(
        self,
        count: int,
        *,
        path: str | None = None,
        timeout: float = 5.0,
        completed: bool = True,
    ) -> list[RecordedRequest]:
        """`wait_for_requests` for async code: waits without blocking the running loop."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def poke() -> None:
            # If that loop is closed, nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(changed.set)

        deadline = loop.time() + timeout
        with self._cond:
            self._listeners.append(poke)
        try:
            while True:
                changed.clear()
                with self._cond:
                    if self._enough(count, path, completed):
                        return self._matching(path, completed)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    with self._cond:
                        raise TimeoutError(self._timeout_message(count, path, timeout, completed))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
        finally:
            with self._cond:
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
        # Called with _cond held.
        self._cond.notify_all()
        for poke in self._listeners:
            poke()

    # -- serving (everything below runs on the fake's own loop) ----------

    async def _serve(self) -> int:
        self._stopping = asyncio.Event()
        # handler_cancellation: a client that gives up ends its hung request.
        # shutdown_timeout is a backstop: stop() releases waiting handlers first.
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        port: int = runner.addresses[0][1]
        return port

    async def _shutdown(self) -> None:
        assert self._stopping is not None
        assert self._runner is not None
        self._stopping.set()
        await self._runner.cleanup()
        self._runner = None

    async def _pause(self, seconds: float) -> bool:
        """Wait *seconds*; False if the fake started stopping meanwhile."""
        assert self._stopping is not None
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            return True
        return False

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        record, fault, generation, index = await self._arrive(request)
        # Each outcome is recorded *before* the client can see it, so a test
        # that got its answer can look at the records right away.
        finished = False
        try:
            wait = self.latency + (fault.after if fault is not None else 0.0)
            if wait > 0 and not await self._pause(wait):
                fault = Fault.drop()
            if fault is not None and fault.action == "hang":
                assert self._stopping is not None
                await self._stopping.wait()
                fault = Fault.drop()
            if fault is not None and fault.action in ("drop", "reset"):
                self._complete(attrs.evolve(record, outcome="dropped"), generation, index)
                finished = True
                _close(request, rst=fault.action == "reset")
                # aiohttp fails to write this to the closed transport, takes it
                # for a client disconnect and sends nothing, as we want.
                return web.Response()
            response = self._respond(record, fault)
            responded = attrs.evolve(
                record,
                outcome="responded",
                status=response.status,
                responded_at=time.monotonic(),
            )
            self._complete(responded, generation, index)
            finished = True
            try:
                await response.prepare(request)
                await response.write_eof()
            except ConnectionError:  # The client went away first after all.
                self._complete(attrs.evolve(record, outcome="abandoned"), generation, index)
                return web.Response()
            return response
        finally:
            if not finished:  # Cancelled: the client went away.
                self._complete(attrs.evolve(record, outcome="abandoned"), generation, index)

    async def _arrive(
        self, request: web.BaseRequest
    ) -> tuple[RecordedRequest, Fault | None, int, int]:
        received_at = time.monotonic()
        raw = await request.read()
        try:
            parsed: object | None = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        headers = CIMultiDict(request.headers)
        authorized = headers.get("Authorization") == f"Bearer {self.access_token}"
        if "Authorization" in headers:
            headers["Authorization"] = _REDACTED
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            json=parsed,
            raw_body=raw,
            authorized=authorized,
            headers=CIMultiDictProxy(headers),
            received_at=received_at,
            responded_at=None,
            status=None,
            request_id=f"{self._request_id_prefix}-{next(self._request_ids):010x}",
        )
        with self._cond:
            generation, index = self._generation, len(self._records)
            self._records.append(record)
            self._arrived[None] += 1
            self._arrived[record.path] += 1
            scripted = self._scripts.get(request.path)
            fault = scripted.popleft() if scripted else None
            self._notify()
        return record, fault, generation, index

    def _respond(self, record: RecordedRequest, fault: Fault | None) -> web.Response:
        if fault is None or fault._is_normal():
            code, body = self._answer(record)
        else:
            code = fault.http_status
            body = fault.body if fault.body is not None else _error_body(code)
        response = web.Response(status=code, body=body, content_type=_JSON)
        response.headers["x-line-request-id"] = record.request_id
        if fault is not None and fault.retry_after is not None:
            response.headers["Retry-After"] = fault.retry_after
        return response

    def _complete(self, done: RecordedRequest, generation: int, index: int) -> None:
        token = done.json.get("markAsReadToken") if isinstance(done.json, dict) else None
        with self._cond:
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

    def _answer(self, record: RecordedRequest) -> tuple[int, bytes]:
        path = record.path
        endpoint = _ENDPOINTS.get(path)
        if endpoint is None:
            return 404, _error_body(404)
        if record.method != endpoint[0]:
            return 405, _error_body(405, "Method not allowed")
        if not record.authorized:
            return 401, _error_body(401)
        if "X-Line-Retry-Key" in record.headers:
            # LINE accepts it on push, multicast, narrowcast and broadcast only.
            return 400, _error_body(400, "The retry key can't be used with this endpoint")
        return endpoint[1](self, record.json)

    def _token_mark_as_read(self, body: object | None) -> tuple[int, bytes]:
        if not isinstance(body, dict):
            return _invalid("markAsReadToken", "The request body must be a JSON object")
        token = body.get("markAsReadToken")
        if not _nonempty_str(token):
            return _invalid("markAsReadToken")
        with self._cond:
            rejected = token in self._rejected
        if rejected:
            return 400, _error_body(400, "Invalid markAsReadToken")
        return 200, _EMPTY_OBJECT

    def _user_mark_as_read(self, body: object | None) -> tuple[int, bytes]:
        if not self.user_api_enabled:
            return 403, _error_body(403)
        if not isinstance(body, dict):
            return _invalid("chat", "The request body must be a JSON object")
        chat = body.get("chat")
        if not isinstance(chat, dict) or not _nonempty_str(chat.get("userId")):
            return _invalid("chat.userId")
        return 200, _EMPTY_OBJECT

    def _bot_info(self, body: object | None) -> tuple[int, bytes]:
        with self._cond:
            info = {
                "userId": self._bot_user_id,
                "basicId": self._basic_id,
                "displayName": self._bot_name,
                "chatMode": self._chat_mode,
                "markAsReadMode": self._mark_as_read_mode,
            }
        return 200, json.dumps(info).encode()

    def _reply(self, body: object | None) -> tuple[int, bytes]:
        if not isinstance(body, dict):
            return _invalid("replyToken", "The request body must be a JSON object")
        if not _nonempty_str(body.get("replyToken")):
            return _invalid("replyToken")
        messages = body.get("messages")
        if not isinstance(messages, list) or not 1 <= len(messages) <= 5:
            return _invalid("messages", "size must be between 1 and 5")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not _nonempty_str(message.get("type")):
                return _invalid(f"messages[{i}].type")
        sent = [
            {"id": str(next(self._message_ids)), "quoteToken": secrets.token_urlsafe(24)}
            for _ in messages
        ]
        return 200, json.dumps({"sentMessages": sent}).encode()


_Endpoint = Callable[[FakeLinePlatform, object], tuple[int, bytes]]
_ENDPOINTS: Mapping[str, tuple[str, _Endpoint]] = {
    TOKEN_MARK_AS_READ_PATH: ("POST", FakeLinePlatform._token_mark_as_read),
    USER_MARK_AS_READ_PATH: ("POST", FakeLinePlatform._user_mark_as_read),
    BOT_INFO_PATH: ("GET", FakeLinePlatform._bot_info),
    REPLY_PATH: ("POST", FakeLinePlatform._reply),
}


def _remove_last(items: list[str], value: str) -> None:
    for i in range(len(items) - 1, -1, -1):
        if items[i] == value:
            del items[i]
            return


def _close(request: web.BaseRequest, *, rst: bool) -> None:
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


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        # Let closing connections finish and end whatever is left, so that
        # nothing warns about pending tasks or unclosed transports.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        asyncio.set_event_loop(None)
