"""The bots being compared: the same two handlers (text message, follow) wired five ways.

* ``naive-sync``: the SDK's ``WebhookHandler``; the text handler first marks with
  ``MessagingApi(ApiClient(configuration))`` opened per event, as the SDK's README
  shows for ``reply_message``.
* ``naive-async``: ``WebhookParser`` plus one shared ``AsyncMessagingApi`` awaited per
  event, as in the SDK's aiohttp/FastAPI examples.
* ``plugin-sync`` / ``plugin-async``: ``line_markread.WebhookHandler`` with default
  options, through ``handle`` / ``handle_async``.
* ``floor``: the SDK's ``WebhookParser``, one bare keep-alive ``aiohttp`` POST per chat
  (newest token), all at once, then the SDK's dispatch rule: the least work that
  has the same effect.
* ``sdk-sync`` / ``sdk-async``: the SDK's plain ``WebhookHandler`` marking nothing,
  the baseline for events with nothing to mark (S4).

Every handler calls ``Probe.hit(event)`` first thing, which records when it started.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import linebot.v3
from linebot.v3.messaging import (
    ApiClient,
    AsyncApiClient,
    AsyncMessagingApi,
    Configuration,
    MarkMessagesAsReadByTokenRequest,
    MessagingApi,
)
from linebot.v3.webhook import WebhookParser
from linebot.v3.webhooks import FollowEvent, MessageEvent, TextMessageContent

import line_markread

CHANNEL_SECRET = "bench-channel-secret"

# Not in the SDK's README: the harness bounds every request in time (the fake never
# takes this long, so it changes no measurement).
_NAIVE_TIMEOUT = 10.0

SyncHandle = Callable[[str, str], None]
AsyncHandle = Callable[[str, str], Awaitable[None]]


class Probe:
    """Where handlers report that they started: message ID (or user ID) -> perf_counter."""

    def __init__(self) -> None:
        self.events = 0
        self.starts: dict[str, float] = {}
        self.recording = False

    def hit(self, event: Any) -> None:
        self.events += 1
        if self.recording:
            message = getattr(event, "message", None)
            key = message.id if message is not None else event.source.user_id
            self.starts[key] = time.perf_counter()

    def start_recording(self) -> None:
        self.starts = {}
        self.recording = True

    def stop_recording(self) -> dict[str, float]:
        self.recording = False
        starts, self.starts = self.starts, {}
        return starts


class Variant:
    """One way of handling a webhook body; exactly one of ``sync``/``aio`` is set."""

    def __init__(
        self,
        name: str,
        *,
        sync: SyncHandle | None = None,
        aio: AsyncHandle | None = None,
        close: Callable[[], Awaitable[None]] | None = None,
        stats: Callable[[], Any] | None = None,
        marker: line_markread.Marker | None = None,
    ) -> None:
        assert (sync is None) != (aio is None)
        self.name = name
        self.sync = sync
        self.aio = aio
        self._close = close
        self.stats = stats
        self.marker = marker

    @property
    def is_async(self) -> bool:
        return self.aio is not None

    async def aclose(self) -> None:
        if self._close is not None:
            await self._close()


def _register(
    handler: Any,
    probe: Probe,
    mark: Callable[[Any], None] | None = None,
    add_options: dict[str, Any] | None = None,
) -> None:
    options = add_options or {}

    @handler.add(MessageEvent, message=TextMessageContent, **options)  # type: ignore[untyped-decorator]  # SDK
    def on_text(event: Any) -> None:
        if mark is not None:
            mark(event)
        probe.hit(event)

    @handler.add(FollowEvent, **options)  # type: ignore[untyped-decorator]  # untyped SDK
    def on_follow(event: Any) -> None:
        probe.hit(event)


FEATURE_OFF_OPTIONS: dict[str, Any] = {"loading": False, "background": False}
"""Per-handler options of the newer features, explicitly off (the S3 "features off" rows)."""


def features_available() -> bool:
    """Whether ``line_markread.WebhookHandler.add`` takes the newer per-handler keywords."""
    parameters = inspect.signature(line_markread.WebhookHandler.add).parameters
    return all(name in parameters for name in FEATURE_OFF_OPTIONS)


def naive_sync(configuration: Configuration, probe: Probe) -> Variant:
    handler = linebot.v3.WebhookHandler(CHANNEL_SECRET)

    def mark(event: Any) -> None:
        with ApiClient(configuration) as api_client:
            MessagingApi(api_client).mark_messages_as_read_by_token(
                MarkMessagesAsReadByTokenRequest(
                    mark_as_read_token=event.message.mark_as_read_token
                ),
                _request_timeout=_NAIVE_TIMEOUT,
            )

    _register(handler, probe, mark)
    return Variant("naive-sync", sync=handler.handle)


def naive_async(configuration: Configuration, probe: Probe) -> Variant:
    """Must be built on the benchmark's event loop (the SDK's client binds to it)."""
    parser = WebhookParser(CHANNEL_SECRET)
    client = AsyncApiClient(configuration)
    api = AsyncMessagingApi(client)

    async def handle(body: str, signature: str) -> None:
        for event in parser.parse(body, signature):
            if isinstance(event, MessageEvent) and event.message.mark_as_read_token:
                await api.mark_messages_as_read_by_token(
                    MarkMessagesAsReadByTokenRequest(
                        mark_as_read_token=event.message.mark_as_read_token
                    ),
                    _request_timeout=_NAIVE_TIMEOUT,
                )
            probe.hit(event)

    return Variant("naive-async", aio=handle, close=client.close)


def plugin_sync(
    configuration: Configuration,
    probe: Probe,
    add_options: dict[str, Any] | None = None,
    **options: Any,
) -> Variant:
    handler = line_markread.WebhookHandler(CHANNEL_SECRET, configuration=configuration, **options)
    _register(handler, probe, add_options=add_options)

    async def close() -> None:
        await asyncio.to_thread(handler.close)

    return Variant(
        "plugin-sync", sync=handler.handle, close=close, stats=handler.stats, marker=handler.marker
    )


def plugin_async(
    configuration: Configuration,
    probe: Probe,
    name: str = "plugin-async",
    add_options: dict[str, Any] | None = None,
    **options: Any,
) -> Variant:
    handler = line_markread.WebhookHandler(CHANNEL_SECRET, configuration=configuration, **options)
    _register(handler, probe, add_options=add_options)
    return Variant(
        name, aio=handler.handle_async, close=handler.aclose, stats=handler.stats,
        marker=handler.marker,
    )  # fmt: skip


def _chat_key(event: Any) -> str | None:
    source = event.source
    for attribute in ("group_id", "room_id", "user_id"):
        value = getattr(source, attribute, None)
        if value:
            return str(value)
    return None


def floor(configuration: Configuration, probe: Probe) -> Variant:
    """Must be built on the benchmark's event loop (the session binds to it)."""
    parser = WebhookParser(CHANNEL_SECRET)
    url = configuration.host.rstrip("/") + "/v2/bot/chat/markAsRead"
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        headers={
            "Authorization": f"Bearer {configuration.access_token}",
            "Content-Type": "application/json",
        },
    )
    # The SDK's dispatch rule (linebot.v3.WebhookHandler.handle), minus its per-call inspect.
    handlers: dict[str, Callable[[Any], None]] = {}
    _register(_Registry(handlers), probe)

    async def post(token: str) -> None:
        async with session.post(url, data=json.dumps({"markAsReadToken": token})) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"floor: mark-as-read answered {response.status}")

    async def handle(body: str, signature: str) -> None:
        events = parser.parse(body, signature)
        newest: dict[str, str] = {}
        for event in events:
            if isinstance(event, MessageEvent) and event.message.mark_as_read_token:
                chat = _chat_key(event)
                if chat is not None:
                    newest[chat] = event.message.mark_as_read_token
        if len(newest) == 1:
            await post(next(iter(newest.values())))
        elif newest:
            await asyncio.gather(*(post(token) for token in newest.values()))
        for event in events:
            func = None
            if isinstance(event, MessageEvent):
                func = handlers.get(f"{type(event).__name__}_{type(event.message).__name__}")
            if func is None:
                func = handlers.get(type(event).__name__)
            if func is not None:
                func(event)

    return Variant("floor", aio=handle, close=session.close)


class _Registry:
    """Enough of ``WebhookHandler.add`` for ``_register`` to fill a plain dict."""

    def __init__(self, handlers: dict[str, Callable[[Any], None]]) -> None:
        self._handlers = handlers

    def add(
        self, event: type, message: type | None = None
    ) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
        key = event.__name__ if message is None else f"{event.__name__}_{message.__name__}"

        def decorator(func: Callable[[Any], None]) -> Callable[[Any], None]:
            self._handlers[key] = func
            return func

        return decorator


def sdk_sync(probe: Probe) -> Variant:
    handler = linebot.v3.WebhookHandler(CHANNEL_SECRET)
    _register(handler, probe)
    return Variant("sdk-sync", sync=handler.handle)


def sdk_async(probe: Probe) -> Variant:
    handler = linebot.v3.WebhookHandler(CHANNEL_SECRET)
    _register(handler, probe)

    async def handle(body: str, signature: str) -> None:
        handler.handle(body, signature)

    return Variant("sdk-async", aio=handle)
