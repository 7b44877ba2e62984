"""The SDK's aiohttp echo bot (examples/aiohttp-echo): it parses webhooks itself with
``WebhookParser`` and marks messages read with line_markread's ``Marker``.

    python examples/parser_bot.py [--port PORT] [--host HOST]
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from _common import line_settings, parse_args, serve_aiohttp
from aiohttp import web
from linebot.v3.exceptions import InvalidSignatureError
from linebot.v3.messaging import (
    AsyncApiClient,
    AsyncMessagingApi,
    ReplyMessageRequest,
    TextMessage,
)
from linebot.v3.webhook import WebhookParser
from linebot.v3.webhooks import MessageEvent, StickerMessageContent, TextMessageContent

import line_markread.aiohttp
from line_markread import Marker

channel_secret, configuration = line_settings()

parser = WebhookParser(channel_secret)
marker = Marker(configuration=configuration)


def is_sticker(event: object) -> bool:
    return isinstance(getattr(event, "message", None), StickerMessageContent)


async def callback(request: web.Request) -> web.Response:
    signature = request.headers.get("X-Line-Signature", "")
    body = await request.text()

    try:
        events = parser.parse(body, signature)
    except InvalidSignatureError:
        return web.Response(status=400, text="Invalid signature")

    # The one line: mark the messages read before replying.  Opt-out: stickers
    # stay unread, say for a human agent in LINE Official Account Manager.
    await marker.amark(e for e in events if not is_sticker(e))

    line_bot_api = request.app[LINE_API]
    for event in events:
        if not isinstance(event, MessageEvent):
            continue
        if not isinstance(event.message, TextMessageContent):
            continue
        await line_bot_api.reply_message(
            ReplyMessageRequest(
                reply_token=event.reply_token, messages=[TextMessage(text=event.message.text)]
            )
        )

    return web.Response(text="OK\n")


LINE_API = web.AppKey("line_api", AsyncMessagingApi)


async def line_api_client(app: web.Application) -> AsyncIterator[None]:
    """One SDK API client (and its connection pool) for the app's lifetime."""
    async with AsyncApiClient(configuration) as api_client:
        app[LINE_API] = AsyncMessagingApi(api_client)
        yield


def create_app() -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(line_api_client)
    app.add_routes([web.post("/callback", callback)])
    app.cleanup_ctx.append(line_markread.aiohttp.lifespan(marker))  # drain marks, close session
    return app


if __name__ == "__main__":
    options = parse_args(__doc__)
    serve_aiohttp(create_app(), options.host, options.port)
