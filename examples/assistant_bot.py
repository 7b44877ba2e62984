"""A slow assistant on aiohttp: read, then "typing...", then the answer.

    python examples/assistant_bot.py [--port PORT] [--host HOST]

Bots that call a language model or a back office take seconds to answer.
Two keywords on the handler give the user the whole sequence and keep the
webhook within LINE's 2-second deadline:

* ``loading=True``: once the message is read, LINE's loading animation shows
  in the 1:1 chat until the answer arrives (started again while the handler
  thinks);
* ``background=True``: the webhook is answered at once; the handler runs
  afterwards, still only after the message is read, one at a time per chat.

The answer goes out with ``handler.areply()``: the reply token while it works
(LINE gives it about a minute), a push when the model took longer
(``push_fallback=True``; a push costs message quota, a reply does not), and
never twice, even when LINE redelivers the message.

The "model" here is a sleep of ``ASSISTANT_THINKING_SECONDS`` (default 3),
then an echo, so a run against a fake platform shows the mark-as-read
request, the loading animation and the reply, in that order.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from _common import line_settings, parse_args, serve_aiohttp
from aiohttp import web
from linebot.v3.messaging import TextMessage
from linebot.v3.webhooks import MessageEvent, StickerMessageContent, TextMessageContent

import line_markread.aiohttp
from line_markread import WebhookHandler

channel_secret, configuration = line_settings()
thinking_seconds = float(os.getenv("ASSISTANT_THINKING_SECONDS", "3"))

handler = WebhookHandler(channel_secret, configuration=configuration)
log = logging.getLogger("assistant_bot")


async def ask_the_model(question: str) -> str:
    await asyncio.sleep(thinking_seconds)  # a language model, a back office, ...
    return question


@handler.add(
    MessageEvent, message=TextMessageContent, loading=True, background=True, push_fallback=True
)
async def handle_message(event: Any) -> None:
    # Read by now, and the loading animation shows while the model thinks.
    answer = await ask_the_model(event.message.text)
    result = await handler.areply(event, TextMessage(text=answer))
    if not result.delivered:  # already logged by the plugin; a bot may meter it too
        log.info("answer not delivered: %s", result.reason)


@handler.add(MessageEvent, message=StickerMessageContent, mark_as_read=False)
async def handle_sticker(event: Any) -> None:
    """Opted out: stickers stay unread, say for a human agent in LINE Official Account Manager."""


def create_app() -> web.Application:
    app = web.Application()
    # areply() sends through the handler's own client: nothing else to open or close.
    line_markread.aiohttp.init_app(app, handler)  # POST /callback; drained on app cleanup
    return app


if __name__ == "__main__":
    options = parse_args(__doc__)
    serve_aiohttp(create_app(), options.host, options.port)
