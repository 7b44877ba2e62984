"""A durable echo bot: background handlers run by worker processes, jobs in PostgreSQL.

    pip install 'line-markread[postgres]'
    export DATABASE_URL=postgresql://user:password@host/dbname
    line-markread queue init                                # once per deploy; idempotent
    python examples/durable_bot.py [--port PORT]            # any number of web processes
    line-markread worker examples.durable_bot:handler       # any number of workers

The web process verifies each webhook, stores one job per message in
PostgreSQL and answers LINE at once; a worker marks the message read when it
picks the job up, shows the loading animation and echoes.  One chat's
messages are handled one at a time, in order, whichever processes got them;
a worker that dies has its job run again by another.  Text messages go to an
``async def`` handler, stickers to a plain ``def`` one: both work.

``DURABLE_BOT_DELAY`` (seconds, default 0) makes each handler that slow, to
watch the order hold under load.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

# The worker imports this file as ``examples.durable_bot``; the helpers sit beside it.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import line_settings, parse_args, serve_aiohttp
from aiohttp import web
from linebot.v3.messaging import (
    ApiClient,
    AsyncApiClient,
    AsyncMessagingApi,
    MessagingApi,
    ReplyMessageRequest,
    TextMessage,
)
from linebot.v3.webhooks import (
    MessageEvent,
    StickerMessageContent,
    TextMessageContent,
)

import line_markread.aiohttp
from line_markread import PostgresQueue, WebhookHandler

channel_secret, configuration = line_settings()
database_url = os.getenv("DATABASE_URL")
if not database_url:
    sys.exit("Specify DATABASE_URL (a PostgreSQL URL) as environment variable.")
DELAY = float(os.getenv("DURABLE_BOT_DELAY", "0"))

handler = WebhookHandler(
    channel_secret, configuration=configuration, queue=PostgresQueue(database_url)
)

# One SDK client per process (async: per event loop), made on first use: the same
# module runs in the web process and in every worker.
_async_apis: dict[asyncio.AbstractEventLoop, AsyncMessagingApi] = {}
_sync_api: MessagingApi | None = None
_sync_lock = threading.Lock()


async def async_api() -> AsyncMessagingApi:
    loop = asyncio.get_running_loop()
    if loop not in _async_apis:
        api = _async_apis[loop] = AsyncMessagingApi(AsyncApiClient(configuration))
        # Closed when the loop shuts down (asyncio.run finalizes live async generators),
        # in the web process and in a worker alike.
        keeper = _close_at_loop_end(api)
        await keeper.__anext__()
        _keepers.append(keeper)
    return _async_apis[loop]


_keepers: list[AsyncIterator[None]] = []


async def _close_at_loop_end(api: AsyncMessagingApi) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await api.api_client.close()


def sync_api() -> MessagingApi:
    global _sync_api  # noqa: PLW0603  # one client per process, made on first use
    with _sync_lock:
        if _sync_api is None:
            _sync_api = MessagingApi(ApiClient(configuration))
        return _sync_api


@handler.add(MessageEvent, message=TextMessageContent, loading=True, background=True)
async def echo_text(event: Any) -> None:
    # A worker runs this; the message was marked read when the worker picked it up.
    if DELAY:
        await asyncio.sleep(DELAY)
    await (await async_api()).reply_message(
        ReplyMessageRequest(
            reply_token=event.reply_token, messages=[TextMessage(text=event.message.text)]
        )
    )


@handler.add(MessageEvent, message=StickerMessageContent, background=True)
def echo_sticker(event: Any) -> None:
    # A plain function: the worker runs it in a thread, in the chat's turn all the same.
    if DELAY:
        threading.Event().wait(DELAY)
    sync_api().reply_message(
        ReplyMessageRequest(
            reply_token=event.reply_token,
            messages=[TextMessage(text=f"sticker {event.message.sticker_id}")],
        )
    )


def create_app() -> web.Application:
    app = web.Application()
    # POST /callback; on cleanup the handler drains its marks and closes the queue.
    line_markread.aiohttp.init_app(app, handler)
    return app


if __name__ == "__main__":
    options = parse_args(__doc__)
    serve_aiohttp(create_app(), options.host, options.port)
