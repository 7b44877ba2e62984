"""
A fake LINE Messaging API server for tests and benchmarks.

It is a real HTTP server on 127.0.0.1, so the code under test goes through its
real HTTP client, connection pool and timeouts.  It runs on its own event loop
in a daemon thread: that way it works the same from synchronous tests, from
async tests on any event loop and from benchmarks, and a bot that blocks its
own loop can't stall the fake (nor make a timeout test pass by accident).

This module is the server: lifecycle, the public methods, and the path of
one request (record it, take its fault, answer).  The parts live beside it:
``_faults`` (scripted failures), ``_records`` (what was seen, and waits on
it), ``_endpoints`` (LINE's endpoints and validation).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from .._threads import start_daemon
from ._endpoints import (
    BOT_INFO_PATH,
    JSON,
    LOADING_PATH,
    MARK_AS_READ_PATHS,
    PUSH_PATH,
    REPLY_PATH,
    REPLY_TOKEN_LIFETIME,
    TOKEN_MARK_AS_READ_PATH,
    USER_MARK_AS_READ_PATH,
    WEBHOOK_ENDPOINT_PATH,
    WEBHOOK_TEST_PATH,
    Account,
    answer_with_headers,
    error_body,
)
from ._faults import Fault, Scripts, close_connection
from ._records import RecordedRequest, Records, RequestOutcome

if TYPE_CHECKING:
    from types import TracebackType

    from linebot.v3.messaging import Configuration

__all__ = [
    "BOT_INFO_PATH",
    "LOADING_PATH",
    "MARK_AS_READ_PATHS",
    "PUSH_PATH",
    "REPLY_PATH",
    "TOKEN_MARK_AS_READ_PATH",
    "USER_MARK_AS_READ_PATH",
    "WEBHOOK_ENDPOINT_PATH",
    "WEBHOOK_TEST_PATH",
    "FakeLinePlatform",
    "Fault",
    "RecordedRequest",
    "RequestOutcome",
]

_REDACTED = "[REDACTED]"


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
        clock: Callable[[], float] = time.monotonic,
        reply_token_lifetime: float = REPLY_TOKEN_LIFETIME,
    ) -> None:
        self.access_token = access_token
        self.latency = latency
        self._records = Records()
        self._scripts = Scripts(self._records.lock)
        self._account = Account(
            self._records.lock,
            bot_name=bot_name,
            chat_mode=chat_mode,
            mark_as_read_mode=mark_as_read_mode,
            user_api_enabled=user_api_enabled,
            clock=clock,
            reply_token_lifetime=reply_token_lifetime,
        )

        self._lifecycle = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.BaseRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._port: int | None = None

        self._lost_accepted: set[str] = set()
        """Request IDs accepted whose answer was dropped (``Fault.drop(processed=True)``)."""
        self._request_ids = itertools.count()
        self._request_id_prefix = secrets.token_hex(6)

    @property
    def user_api_enabled(self) -> bool:
        """Whether the older mark-as-read API (by user ID) is allowed; 403 if not."""
        return self._account.user_api_enabled

    @user_api_enabled.setter
    def user_api_enabled(self, enabled: bool) -> None:
        self._account.user_api_enabled = enabled

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
            thread = start_daemon(_run_loop, loop, name="FakeLinePlatform")
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
        account = self._account
        with account.lock:
            if chat_mode is not None:
                account.chat_mode = chat_mode
            if mark_as_read_mode is not None:
                account.mark_as_read_mode = mark_as_read_mode
            if bot_name is not None:
                account.bot_name = bot_name

    def script(self, path: str, *responses: int | Fault) -> None:
        """
        Queue the next answers for *path*, first in first out.

        An int is `Fault.status` of it: an error status with a LINE-style body,
        or 200 for the normal answer.  Scripted answers come before any
        validation; once the queue is empty, the endpoint behaves normally.
        """
        faults = [r if isinstance(r, Fault) else Fault.status(r) for r in responses]
        self._scripts.add(path, faults)

    def script_token(self, token: str, *responses: int | Fault) -> None:
        """
        Queue the next answers to mark-as-read requests carrying read token *token*.

        Taken before the path's queue (see `script`), so concurrent marks of
        several chats each get their own fault whatever order they arrive in.
        """
        faults = [r if isinstance(r, Fault) else Fault.status(r) for r in responses]
        self._scripts.add_for_token(token, faults)

    def set_webhook_endpoint(
        self,
        url: str,
        *,
        active: bool = True,
        channel_secret: str | None = None,
        deadline: float | None = None,
    ) -> None:
        """Set the bot's webhook URL, as the LINE Developers Console does.

        ``GET WEBHOOK_ENDPOINT_PATH`` answers it; ``POST WEBHOOK_TEST_PATH``
        calls it for real with a body signed with *channel_secret* (default:
        ``"fake-channel-secret"``) and counts an answer later than *deadline*
        seconds (LINE's 2 s by default) as a ``request_timeout``.
        """
        account = self._account
        with account.lock:
            account.webhook_endpoint = url
            account.webhook_active = active
            if channel_secret is not None:
                account.channel_secret = channel_secret
            if deadline is not None:
                account.webhook_deadline = deadline

    def reject_token(self, *tokens: str) -> None:
        """Answer 400 for these mark-as-read tokens, as LINE does for another bot's tokens."""
        with self._account.lock:
            self._account.rejected.update(tokens)

    def issue_reply_tokens(self, *sources: object) -> list[str]:
        """LINE sends these webhooks now: their reply tokens' lifetime starts on the fake's clock.

        *sources*: ``SignedWebhook``s, webhook bodies (``str``/``bytes``) or
        event mappings.  A token issued again (a redelivery) works again for
        its lifetime, unless it was used or ``REDELIVERY_TOKEN_LIMIT`` passed
        since it was first issued.  Tokens never issued are taken as fresh
        (only used ones are refused).  Returns the tokens.
        """
        tokens = [t for source in sources for t in _reply_tokens(source)]
        account = self._account
        with account.lock:
            now = account.clock()
            for token in tokens:
                first, _ = account.issued.get(token, (now, now))
                account.issued[token] = (first, now)
        return tokens

    def reset(self) -> None:
        """Forget records, scripts, rejected and used tokens, retry keys; keep the settings."""
        with self._records.lock:  # All at once: no arrival sees half of it.
            self._scripts.clear()
            self._account.rejected.clear()
            self._account.issued.clear()
            self._account.used_reply_tokens.clear()
            self._account.retry_keys.clear()
            self._lost_accepted.clear()
            self._records.clear()

    # -- records ----------------------------------------------------------

    def requests(self) -> list[RecordedRequest]:
        """A copy of all records so far, in arrival order, in flight ones included.

        A method, like ``mark_requests()`` and ``loading_requests()``: each call
        takes a fresh copy under the fake's lock.
        """
        return self._records.all()

    def mark_requests(self) -> list[RecordedRequest]:
        """The records of requests to either mark-as-read endpoint."""
        return self._records.mark_requests()

    def loading_requests(self) -> list[RecordedRequest]:
        """The records of loading-animation requests (``LOADING_PATH``), in arrival order."""
        return [r for r in self._records.all() if r.path == LOADING_PATH]

    def _processed_request_ids(self) -> set[str]:
        with self._records.lock:
            return set(self._lost_accepted)

    def push_requests(self) -> list[RecordedRequest]:
        """The records of push requests (``PUSH_PATH``), in arrival order."""
        return [r for r in self._records.all() if r.path == PUSH_PATH]

    def reply_requests(self) -> list[RecordedRequest]:
        """The records of reply requests (``REPLY_PATH``), in arrival order."""
        return [r for r in self._records.all() if r.path == REPLY_PATH]

    def marked_tokens(self) -> list[str]:
        """The tokens of token-API requests answered 200, in the order they were answered."""
        return self._records.marked_tokens()

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
        return self._records.wait(count, path, timeout, completed)

    async def await_requests(
        self,
        count: int,
        *,
        path: str | None = None,
        timeout: float = 5.0,
        completed: bool = True,
    ) -> list[RecordedRequest]:
        """`wait_for_requests` for async code: waits without blocking the running loop."""
        return await self._records.await_(count, path, timeout, completed)

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
            if fault is not None and fault.action == "lose":
                lost = await self._respond(record, None)  # LINE does the work; the answer is lost
                if 200 <= lost.status < 300:
                    with self._records.lock:
                        self._lost_accepted.add(record.request_id)
                fault = Fault.drop()
            if fault is not None and fault.action == "hang":
                assert self._stopping is not None
                await self._stopping.wait()
                fault = Fault.drop()
            if fault is not None and fault.action in ("drop", "reset"):
                self._records.complete(attrs.evolve(record, outcome="dropped"), generation, index)
                finished = True
                close_connection(request, rst=fault.action == "reset")
                # aiohttp fails to write this to the closed transport, takes it
                # for a client disconnect and sends nothing, as we want.
                return web.Response()
            response = await self._respond(record, fault)
            responded = attrs.evolve(
                record,
                outcome="responded",
                status=response.status,
                responded_at=time.monotonic(),
            )
            self._records.complete(responded, generation, index)
            finished = True
            try:
                await response.prepare(request)
                await response.write_eof()
            except ConnectionError:  # The client went away first after all.
                self._records.complete(attrs.evolve(record, outcome="abandoned"), generation, index)
                return web.Response()
            return response
        finally:
            if not finished:  # Cancelled: the client went away.
                self._records.complete(attrs.evolve(record, outcome="abandoned"), generation, index)

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
        with self._records.lock:  # The first to arrive takes the first fault.
            generation, index = self._records.arrive(record)
            token = parsed.get("markAsReadToken") if isinstance(parsed, dict) else None
            fault = self._scripts.take(request.path, token if isinstance(token, str) else None)
        return record, fault, generation, index

    async def _respond(self, record: RecordedRequest, fault: Fault | None) -> web.Response:
        headers: dict[str, str] = {}
        if fault is None or fault._is_normal():
            code, body, headers = await answer_with_headers(self._account, record)
        else:
            code = fault.http_status
            body = fault.body if fault.body is not None else error_body(code)
        response = web.Response(status=code, body=body, content_type=JSON)
        response.headers["x-line-request-id"] = record.request_id
        response.headers.update(headers)
        if fault is not None and fault.retry_after is not None:
            response.headers["Retry-After"] = fault.retry_after
        return response


def _reply_tokens(source: object) -> list[str]:
    """The reply tokens of a ``SignedWebhook``, a body, or an event mapping."""
    body = getattr(source, "body", source)
    if isinstance(body, (str, bytes)):
        body = json.loads(body)
    if not isinstance(body, Mapping):
        raise TypeError(f"not a webhook, body or event: {type(source).__name__}")
    events: Iterable[Any] = body.get("events", [body])
    return [
        e["replyToken"]
        for e in events
        if isinstance(e, Mapping) and isinstance(e.get("replyToken"), str)
    ]


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
