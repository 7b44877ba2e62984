"""An aiohttp echo bot with ``async def`` handlers, marking every message read first.

    python examples/aiohttp_bot.py [--port PORT] [--host HOST]

``line_markread.aiohttp.init_app`` adds ``POST /callback`` (400 on a bad
signature) and closes the handler when the app shuts down.
"""

from __future__ import annotations

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

# The one-line change: line_markread's WebhookHandler instead of the SDK's.
handler = WebhookHandler(channel_secret, configuration=configuration)


@handler.add(MessageEvent, message=TextMessageContent)
async def handle_message(event: Any) -> None:
    # LINE has marked this message read by now: the user sees "Read" before the echo.
    async with AsyncApiClient(configuration) as api_client:
        line_bot_api = AsyncMessagingApi(api_client)
        await line_bot_api.reply_message(
            ReplyMessageRequest(
                reply_token=event.reply_token, messages=[TextMessage(text=event.message.text)]
            )
        )


@handler.add(MessageEvent, message=StickerMessageContent, mark_as_read=False)
async def handle_sticker(event: Any) -> None:
    """Opted out: stickers stay unread, say for a human agent in LINE Official Account Manager."""


def create_app() -> web.Application:
    app = web.Application()
    line_markread.aiohttp.init_app(app, handler)  # POST /callback; closed on app cleanup
    return app


if __name__ == "__main__":
    options = parse_args(__doc__)
    serve_aiohttp(create_app(), options.host, options.port)
