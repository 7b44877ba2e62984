"""An aiohttp echo bot with ``async def`` handlers, marking every message read first.

    python examples/aiohttp_bot.py [--port PORT] [--host HOST]

``line_markread.aiohttp.init_app`` adds ``POST /callback`` (400 on a bad
signature) and closes the handler when the app shuts down.  The SDK's API
client is built once per app, in a cleanup context: building one per
request costs tens of milliseconds of CPU each.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from _common import line_settings, parse_args, serve_aiohttp
from aiohttp import web
from linebot.v3.messaging import (
    AsyncApiClient,
    AsyncMessagingApi,
    ReplyMessageRequest,
    TextMessage,
)
from linebot.v3.webhooks import MessageEvent, StickerMessageContent, TextMessageContent

import line_markread.aiohttp
from line_markread import WebhookHandler

channel_secret, configuration = line_settings()

LINE_API = web.AppKey("line_api", AsyncMessagingApi)


async def line_api_client(app: web.Application) -> AsyncIterator[None]:
    """One SDK API client (and its connection pool) for the app's lifetime."""
    async with AsyncApiClient(configuration) as api_client:
        app[LINE_API] = AsyncMessagingApi(api_client)
        yield


def create_app() -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(line_api_client)

    # The one-line change: line_markread's WebhookHandler instead of the SDK's.
    handler = WebhookHandler(channel_secret, configuration=configuration)

    @handler.add(MessageEvent, message=TextMessageContent)
    async def handle_message(event: Any) -> None:
        # LINE has marked this message read by now: the user sees "Read" before the echo.
        await app[LINE_API].reply_message(
            ReplyMessageRequest(
                reply_token=event.reply_token, messages=[TextMessage(text=event.message.text)]
            )
        )

    @handler.add(MessageEvent, message=StickerMessageContent, mark_as_read=False)
    async def handle_sticker(event: Any) -> None:
        """Opted out: stickers stay unread, say for a human agent in LINE Official Account
        Manager."""

    # POST /callback; on cleanup the handler drains its marks, then the API client closes.
    line_markread.aiohttp.init_app(app, handler)
    return app


if __name__ == "__main__":
    options = parse_args(__doc__)
    serve_aiohttp(create_app(), options.host, options.port)
