"""The SDK's FastAPI echo bot (examples/fastapi-echo) on ``handle_async``, marking every
message read first.

    python examples/fastapi_bot.py [--port PORT] [--host HOST]

Served by uvicorn; ``line_markread.starlette.lifespan`` closes the handler on shutdown,
around the app's own lifespan, which builds the SDK's API client once per app (one per
request costs tens of milliseconds of CPU each).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from _common import line_settings, parse_args, serve_asgi
from fastapi import FastAPI, HTTPException, Request
from linebot.v3.exceptions import InvalidSignatureError
from linebot.v3.messaging import (
    AsyncApiClient,
    AsyncMessagingApi,
    ReplyMessageRequest,
    TextMessage,
)
from linebot.v3.webhooks import MessageEvent, StickerMessageContent, TextMessageContent

import line_markread.starlette
from line_markread import WebhookHandler

channel_secret, configuration = line_settings()

# The one-line change: line_markread's WebhookHandler instead of the SDK's WebhookParser.
handler = WebhookHandler(channel_secret, configuration=configuration)


@contextlib.asynccontextmanager
async def line_api_client(app: FastAPI) -> AsyncIterator[None]:
    """One SDK API client (and its connection pool) for the app's lifetime."""
    async with AsyncApiClient(configuration) as api_client:
        app.state.line_api = AsyncMessagingApi(api_client)
        yield


app = FastAPI(lifespan=line_markread.starlette.lifespan(handler, inner=line_api_client))


@app.post("/callback")
async def handle_callback(request: Request) -> str:
    signature = request.headers.get("X-Line-Signature", "")

    # get request body as bytes (line_markread checks that it is UTF-8)
    body = await request.body()

    try:
        await handler.handle_async(body, signature)
    except InvalidSignatureError:
        raise HTTPException(status_code=400, detail="Invalid signature") from None

    return "OK"


@handler.add(MessageEvent, message=TextMessageContent)
async def handle_message(event: Any) -> None:
    # LINE has marked this message read by now: the user sees "Read" before the echo.
    line_bot_api: AsyncMessagingApi = app.state.line_api
    await line_bot_api.reply_message(
        ReplyMessageRequest(
            reply_token=event.reply_token, messages=[TextMessage(text=event.message.text)]
        )
    )


@handler.add(MessageEvent, message=StickerMessageContent, mark_as_read=False)
async def handle_sticker(event: Any) -> None:
    """Opted out: stickers stay unread, say for a human agent in LINE Official Account Manager."""


if __name__ == "__main__":
    options = parse_args(__doc__)
    serve_asgi(app, options.host, options.port)
