"""The framework glue: line_markread.aiohttp, line_markread.starlette, line_markread.flask.

Each is driven through its framework's own request path (aiohttp's test
server over real HTTP, Starlette/FastAPI through the ASGI protocol, Flask's
test client) against the fake platform.  The examples' end-to-end tests run
the same glue under real servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, MutableMapping
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from fastapi import FastAPI
from flask import Flask
from linebot.v3.webhooks import MessageEvent, TextMessageContent
from starlette.applications import Starlette

import line_markread.aiohttp
import line_markread.flask
import line_markread.starlette
from line_markread import Marker, WebhookHandler
from line_markread.testing import FakeLinePlatform, WebhookFactory, sticker_event, text_event

FRAMEWORKS = (
    *("flask", "werkzeug", "fastapi", "starlette", "uvicorn", "waitress"),
    *("django", "functions_framework", "gunicorn"),
    *("linebot", "aiohttp"),  # the import stays lazy: see test_imports.py
)


def test_importing_line_markread_imports_no_web_framework() -> None:
    code = textwrap.dedent(
        f"""
        import sys
        import line_markread, line_markread.testing, line_markread.testing._pytest_plugin
        loaded = sorted(m for m in {FRAMEWORKS!r} if m in sys.modules)
        assert not loaded, loaded
        """
    )
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True, timeout=60)


Seen = list[tuple[str, list[str]]]
"""Per text message handled: its read token, and the tokens marked when its handler ran."""


@pytest.fixture
def seen() -> Seen:
    return []


@pytest.fixture
def handler(
    line_platform: FakeLinePlatform, line_channel_secret: str, seen: Seen
) -> Iterator[WebhookHandler]:
    """A handler whose text handler records what was marked when it ran, in *seen*."""
    h = WebhookHandler(line_channel_secret, configuration=line_platform.configuration())

    @h.add(MessageEvent, message=TextMessageContent)
    def on_text(event: Any) -> None:
        seen.append((event.message.mark_as_read_token, line_platform.marked_tokens()))

    yield h
    if not h.marker.closed:
        h.close()


def assert_marked_first(seen: Seen, event: dict[str, Any]) -> None:
    token = event["message"]["markAsReadToken"]
    assert [t for t, _ in seen] == [token]
    assert token in seen[0][1], "the handler ran before its message was marked read"


# -- aiohttp ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def aiohttp_client(app: web.Application) -> AsyncIterator[TestClient[Any, Any]]:
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()  # runs the app's cleanup


@pytest.mark.asyncio
async def test_aiohttp_init_app_serves_callback_and_closes_on_cleanup(
    handler: WebhookHandler, line_webhook: WebhookFactory, seen: Seen
) -> None:
    app = line_markread.aiohttp.init_app(web.Application(), handler)
    event = text_event("hi")
    async with aiohttp_client(app) as client:
        webhook = line_webhook(event)
        response = await client.post("/callback", data=webhook.body, headers=webhook.headers)
        assert (response.status, await response.text()) == (200, "OK\n")
        assert_marked_first(seen, event)
        assert not handler.marker.closed
    assert handler.marker.closed


@pytest.mark.asyncio
async def test_aiohttp_rejects_bad_requests_without_calling_line(
    handler: WebhookHandler, line_webhook: WebhookFactory, line_platform: FakeLinePlatform
) -> None:
    app = web.Application()
    app.add_routes([line_markread.aiohttp.webhook_route(handler, "/hook")])
    webhook = line_webhook(text_event())
    not_json = "not json"
    async with aiohttp_client(app) as client:
        for headers, body, text in [
            ({}, webhook.body, "Missing signature\n"),
            ({"X-Line-Signature": "bad"}, webhook.body, "Invalid signature\n"),
            ({"X-Line-Signature": line_webhook.sign(not_json)}, not_json, "Invalid webhook body\n"),
        ]:
            response = await client.post("/hook", data=body, headers=headers)
            assert (response.status, await response.text()) == (400, text)
        assert (await client.post("/callback", data=webhook.body)).status == 404
    assert line_platform.requests() == []


@pytest.mark.asyncio
async def test_aiohttp_lifespan_closes_a_marker(line_platform: FakeLinePlatform) -> None:
    marker = Marker(configuration=line_platform.configuration())
    app = web.Application()
    app.cleanup_ctx.append(line_markread.aiohttp.lifespan(marker))
    async with aiohttp_client(app):
        assert await marker.amark([text_event()]) == [line_markread.Outcome.MARKED]
    assert marker.closed


# -- Starlette / FastAPI, through the ASGI protocol ----------------------------------

ASGIApp = Callable[..., Coroutine[Any, Any, None]]


@contextlib.asynccontextmanager
async def asgi_lifespan(app: ASGIApp) -> AsyncIterator[MutableMapping[str, Any]]:
    """Run *app*'s lifespan as a server does: startup, yield its state, shutdown."""
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope: dict[str, Any] = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    assert (await from_app.get())["type"] == "lifespan.startup.complete"
    try:
        yield scope["state"]
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        assert (await from_app.get())["type"] == "lifespan.shutdown.complete"
        await task


async def asgi_post(
    app: ASGIApp,
    path: str,
    body: str,
    headers: dict[str, str],
    state: MutableMapping[str, Any],
) -> tuple[int, bytes]:
    """One ``POST`` through *app*, as an ASGI server would send it."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": dict(state),
    }
    incoming = [{"type": "http.request", "body": body.encode(), "more_body": False}]
    done = asyncio.Event()
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop()
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    await app(scope, receive, send)
    return status, b"".join(chunks)


@pytest.mark.asyncio
async def test_starlette_route_and_lifespan(
    handler: WebhookHandler, line_webhook: WebhookFactory, seen: Seen
) -> None:
    app = Starlette(
        routes=[line_markread.starlette.webhook_route(handler)],
        lifespan=line_markread.starlette.lifespan(handler),
    )
    event = text_event("hi")
    async with asgi_lifespan(app) as state:
        webhook = line_webhook(event)
        assert await asgi_post(app, "/callback", webhook.body, webhook.headers, state) == (
            200,
            b"OK\n",
        )
        assert_marked_first(seen, event)
        assert not handler.marker.closed
    assert handler.marker.closed


@pytest.mark.asyncio
async def test_starlette_rejects_bad_requests_without_calling_line(
    handler: WebhookHandler, line_webhook: WebhookFactory, line_platform: FakeLinePlatform
) -> None:
    app = Starlette(routes=[line_markread.starlette.webhook_route(handler)])
    webhook = line_webhook(sticker_event())
    async with asgi_lifespan(app) as state:
        for headers, body, text in [
            ({}, webhook.body, b"Missing signature\n"),
            ({"X-Line-Signature": "bad"}, webhook.body, b"Invalid signature\n"),
            ({"X-Line-Signature": line_webhook.sign("[]")}, "[]", b"Invalid webhook body\n"),
        ]:
            assert await asgi_post(app, "/callback", body, headers, state) == (400, text)
    assert line_platform.requests() == []


@pytest.mark.asyncio
async def test_fastapi_init_app_keeps_the_apps_own_lifespan(
    handler: WebhookHandler, line_webhook: WebhookFactory, seen: Seen
) -> None:
    steps: list[str] = []

    @contextlib.asynccontextmanager
    async def own_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        steps.append("own startup")
        yield {"db": "connected"}
        steps.append(f"own shutdown, handler closed: {handler.marker.closed}")

    app = line_markread.starlette.init_app(FastAPI(lifespan=own_lifespan), handler, path="/line")
    event = text_event()
    async with asgi_lifespan(app) as state:
        assert state == {"db": "connected"}
        webhook = line_webhook(event)
        assert (await asgi_post(app, "/line", webhook.body, webhook.headers, state))[0] == 200
        assert_marked_first(seen, event)
    assert steps == ["own startup", "own shutdown, handler closed: False"]
    assert handler.marker.closed


@pytest.mark.asyncio
async def test_starlette_lifespan_closes_a_marker(line_platform: FakeLinePlatform) -> None:
    marker = Marker(configuration=line_platform.configuration())
    app = Starlette(lifespan=line_markread.starlette.lifespan(marker))
    async with asgi_lifespan(app):
        assert await marker.amark([text_event()]) == [line_markread.Outcome.MARKED]
    assert marker.closed


# -- Flask ----------------------------------------------------------------------------


def test_flask_init_app(
    handler: WebhookHandler,
    line_webhook: WebhookFactory,
    line_platform: FakeLinePlatform,
    seen: Seen,
) -> None:
    app = line_markread.flask.init_app(Flask(__name__), handler)
    assert app.extensions["line_markread"] is handler
    client = app.test_client()
    bad = line_webhook(text_event())
    for headers, body, text in [
        ({}, bad.body, b"Missing signature\n"),
        ({"X-Line-Signature": "bad"}, bad.body, b"Invalid signature\n"),
        ({"X-Line-Signature": "\xff\xfe="}, bad.body, b"Invalid signature\n"),  # WSGI: latin-1
        ({"X-Line-Signature": line_webhook.sign("{}")}, "{}", b"Invalid webhook body\n"),
    ]:
        response = client.post("/callback", data=body, headers=headers)
        assert (response.status_code, response.data) == (400, text)
    assert line_platform.requests() == []

    event = text_event("hi")
    webhook = line_webhook(event)
    response = client.post("/callback", data=webhook.body, headers=webhook.headers)
    assert (response.status_code, response.data) == (200, b"OK\n")
    assert_marked_first(seen, event)
