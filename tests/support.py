"""Shared test helpers: the sync/async drivers, the channel secret, bodies and what LINE saw."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from linebot.v3.webhooks import MessageEvent, TextMessageContent

from line_markread import WebhookHandler
from line_markread.testing import (
    TOKEN_MARK_AS_READ_PATH,
    USER_MARK_AS_READ_PATH,
    FakeLinePlatform,
    signed_body,
)

SECRET = "test-channel-secret"

FAST_RETRIES: dict[str, Any] = {"backoff_initial": 0.01, "backoff_max": 0.02}
"""Backoff short enough that retry tests take milliseconds, yet real sleeps."""

TOKEN_PATH = TOKEN_MARK_AS_READ_PATH
USER_PATH = USER_MARK_AS_READ_PATH


def body_of(*events: dict[str, Any]) -> tuple[str, str]:
    return signed_body(*events, channel_secret=SECRET)


def token_of(event: dict[str, Any]) -> str:
    token = event["message"]["markAsReadToken"]
    assert isinstance(token, str)
    return token


def sent_tokens(fake: FakeLinePlatform) -> list[str]:
    return [r.json["markAsReadToken"] for r in fake.requests() if r.path == TOKEN_PATH]  # type: ignore[index]  # JSON object


def mark_answered_before(fake: FakeLinePlatform, tokens: set[str], moment: float) -> bool:
    """Whether LINE had answered 200 to a mark of one of *tokens* before *moment*."""
    return any(
        r.path == TOKEN_PATH
        and r.status == 200
        and r.responded_at is not None
        and r.responded_at <= moment
        and r.json["markAsReadToken"] in tokens  # type: ignore[index]  # JSON object
        for r in fake.requests()
    )


HandlerFactory = Callable[..., WebhookHandler]
"""The ``new_handler`` fixture: options in, a handler on the fake platform out."""


class Driver:
    """Runs a handler's bodies through ``handle()`` or ``handle_async()``.

    Semantics tests take the ``driver`` fixture and so run once per path: the
    same assertions hold for sync and async bots.
    """

    name = ""

    def handle(self, handler: WebhookHandler, body: str | bytes, signature: str) -> None:
        raise NotImplementedError

    def close(self, handler: WebhookHandler, grace: float | None = None) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        pass


class SyncDriver(Driver):
    name = "sync"

    def handle(self, handler: WebhookHandler, body: str | bytes, signature: str) -> None:
        handler.handle(body, signature)

    def close(self, handler: WebhookHandler, grace: float | None = None) -> None:
        handler.close(grace)


class AsyncDriver(Driver):
    """Runs ``handle_async`` on an event loop that keeps running, as in a real async server."""

    name = "async"

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def handle(self, handler: WebhookHandler, body: str | bytes, signature: str) -> None:
        self.run(handler.handle_async(body, signature))

    def close(self, handler: WebhookHandler, grace: float | None = None) -> None:
        self.run(handler.aclose(grace))

    def finish(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def with_text_handler(
    handler: WebhookHandler,
    *,
    started: dict[str, float] | None = None,
    ran: list[str] | None = None,
) -> WebhookHandler:
    """Register a text handler noting when it started (by read token) and what it saw."""

    @handler.add(MessageEvent, message=TextMessageContent)
    def on_text(event: Any) -> None:
        if started is not None:
            started[event.message.mark_as_read_token] = time.monotonic()
        if ran is not None:
            ran.append(event.message.text)

    return handler
