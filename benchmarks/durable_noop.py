"""The no-op durable bot the queue benchmarks run workers of (``bench_durable.py``)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from linebot.v3.messaging import Configuration
from linebot.v3.webhooks import MessageEvent, TextMessageContent

from line_markread import PostgresQueue, WebhookHandler

DELAY = float(os.environ.get("DURABLE_NOOP_DELAY", "0"))

handler = WebhookHandler(
    os.environ["LINE_CHANNEL_SECRET"],
    configuration=Configuration(
        host=os.environ["LINE_API_HOST"], access_token=os.environ["LINE_CHANNEL_ACCESS_TOKEN"]
    ),
    queue=PostgresQueue(os.environ["DATABASE_URL"]),
)


@handler.add(MessageEvent, message=TextMessageContent, background=True)
async def noop(event: Any) -> None:
    if DELAY:
        await asyncio.sleep(DELAY)
