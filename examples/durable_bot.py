"""A durable echo bot: background handlers run by worker processes, jobs in PostgreSQL.

    pip install 'line-markread[postgres]'
    export DATABASE_URL=postgresql://user:password@host/dbname
    line-markread queue init                                # once per deploy; idempotent
    python examples/durable_bot.py [--port PORT]            # any number of web processes
    line-markread worker examples.durable_bot:handler       # any number of workers

The web process verifies each webhook, stores one job per message in
PostgreSQL and answers LINE at once; a worker marks the message read when it
picks the job up, shows the loading animation and echoes with
``handler.areply()``/``handler.reply()``: the reply token while it works,
else a push.  One chat's messages are handled one at a time, in order,
whichever processes got them; a worker that dies has its job run again by
another, which does not send an answer the first one delivered.  Text
messages go to an ``async def`` handler, stickers to a plain ``def`` one:
both work.

``DURABLE_BOT_DELAY`` (seconds, default 0) makes each handler that slow, to
watch the order hold under load.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from typing import Any

# The worker imports this file as ``examples.durable_bot``; the helpers sit beside it.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import line_settings, parse_args, serve_aiohttp
from aiohttp import web
from linebot.v3.messaging import TextMessage
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

# With queue=, "handled once" lives in the same database (queue.once_store()): a job
# re-run after a crash, or an event redelivered to another web process, is not
# answered twice.
handler = WebhookHandler(
    channel_secret, configuration=configuration, queue=PostgresQueue(database_url)
)


# push_fallback=True: a job that starts late (a busy queue) or thinks long answers by push
# once the reply token is past its minute (push counts against the monthly quota).
@handler.add(
    MessageEvent, message=TextMessageContent, loading=True, background=True, push_fallback=True
)
async def echo_text(event: Any) -> None:
    # A worker runs this; the message was marked read when the worker picked it up.
    if DELAY:
        await asyncio.sleep(DELAY)
    await handler.areply(event, TextMessage(text=event.message.text))


@handler.add(MessageEvent, message=StickerMessageContent, background=True, push_fallback=True)
def echo_sticker(event: Any) -> None:
    # A plain function: the worker runs it in a thread, in the chat's turn all the same.
    if DELAY:
        threading.Event().wait(DELAY)
    handler.reply(event, TextMessage(text=f"sticker {event.message.sticker_id}"))


def create_app() -> web.Application:
    app = web.Application()
    # POST /callback; on cleanup the handler drains its marks and closes the queue.
    line_markread.aiohttp.init_app(app, handler)
    return app


if __name__ == "__main__":
    options = parse_args(__doc__)
    serve_aiohttp(create_app(), options.host, options.port)
