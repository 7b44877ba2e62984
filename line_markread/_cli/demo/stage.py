"""The demo's stage: a real aiohttp bot on ``line_markread``, set up against the fake LINE.

The bot is built like the SDK's examples: an aiohttp app whose
``WebhookHandler`` (``handle_async``, async handlers) is served by
``line_markread.aiohttp.webhook_view`` and replies through the reply
endpoint.  The fake LINE platform itself is started by `play` (in
``demo/__init__``), around the bot.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
from aiohttp import web
from linebot.v3.webhooks import (
    ImageMessageContent,
    MessageEvent,
    StickerMessageContent,
    TextMessageContent,
)

from ..._handler import WebhookHandler
from ...aiohttp import webhook_view
from ...testing import REPLY_PATH, FakeLinePlatform
from .timeline import Message, Timeline

# Obviously fake credentials: the demo never talks to LINE, and never prints these.
DEMO_CHANNEL_SECRET = "demo-channel-secret-not-a-real-one"
DEMO_ACCESS_TOKEN = "demo-access-token-not-a-real-one"

# Short backoffs keep the run under a second; the wait_timeout stays the
# production default, so the handlers really do wait for their marks.
DEMO_SETTINGS: Mapping[str, Any] = {
    "backoff_initial": 0.02,
    "backoff_max": 0.2,
    "wait_timeout": 1.0,
    "request_timeout": 1.0,
    "close_grace": 1.0,
    # The photo handler shows a 5 s animation; started again 3 s before it
    # would end (every 2 s), so a 3 s handler shows one refresh, well clear
    # of its reply (a refresh racing a reply would show the animation again).
    "loading_margin": 3.0,
}

PHOTO_LOADING_SECONDS = 5


class DemoBot:
    """An aiohttp bot like the SDK's examples, on ``line_markread.WebhookHandler``."""

    def __init__(self, fake: FakeLinePlatform, timeline: Timeline, seed: int) -> None:
        self._timeline = timeline
        self._reply_url = fake.url + REPLY_PATH
        self._auth = {"Authorization": f"Bearer {fake.access_token}"}
        self.handler = WebhookHandler(
            DEMO_CHANNEL_SECRET,
            configuration=fake.configuration(),
            jitter_seed=seed,
            **DEMO_SETTINGS,
        )
        self._register_handlers()
        self._view = webhook_view(self.handler)
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    def _register_handlers(self) -> None:
        # Closures, not bound methods: the SDK counts ``self`` among a handler's parameters.
        @self.handler.add(MessageEvent, message=TextMessageContent)
        async def on_text(event: Any) -> None:
            self._handler_ran(event, "handler ran")
            await self._reply(event.reply_token, f"you said: {event.message.text}")

        @self.handler.add(
            MessageEvent,
            message=ImageMessageContent,
            loading=PHOTO_LOADING_SECONDS,
            background=True,
        )
        async def on_photo(event: Any) -> None:
            # A slow answer (a model looking at the photo), after the webhook was answered.
            self._handler_ran(event, "slow handler started (background=True, loading=5)")
            message = self._timeline.cast.find(event.message.id)
            await asyncio.sleep(message.thinking if message else 0.0)
            self._handler_ran(event, "slow handler done", what="handler-done")
            await self._reply(event.reply_token, "that is a cat")

        @self.handler.add(MessageEvent, message=StickerMessageContent, mark_as_read=False)
        async def on_sticker(event: Any) -> None:
            self._handler_ran(event, "handler ran (opted out: mark_as_read=False)")
            await self._reply(event.reply_token, "nice sticker")

    def _handler_ran(self, event: Any, detail: str, what: str = "handler") -> None:
        message = self._timeline.cast.find(event.message.id)
        chat = message.chat if message else "?"
        label = message.label if message else None
        self._timeline.add(what, chat, "bot", message=label, detail=detail)

    async def _reply(self, reply_token: str, text: str) -> None:
        assert self._session is not None
        payload = {"replyToken": reply_token, "messages": [{"type": "text", "text": text}]}
        async with self._session.post(self._reply_url, json=payload, headers=self._auth) as r:
            await r.read()

    async def start(self) -> str:
        """Serve on a free loopback port; return the webhook URL."""
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_post("/callback", self._callback)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/callback"

    async def stop(self) -> None:
        await self.handler.aclose()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _callback(self, request: web.Request) -> web.StreamResponse:
        # aiohttp keeps the body it read, so the plugin's own view reads it again.
        self._note_webhook(await request.text())
        return await self._view(request)

    def _note_webhook(self, body: str) -> None:
        cast = self._timeline.cast
        found = [cast.find(e.get("message", {}).get("id")) for e in json.loads(body)["events"]]
        messages = [m for m in found if m is not None]
        chat = messages[0].chat if messages else "?"
        self._timeline.add("webhook", chat, "bot", detail=_describe(messages))


def _describe(messages: Sequence[Message]) -> str:
    if len(messages) == 1:
        return f'webhook received: {messages[0].label} "{messages[0].text}"'
    labels = ", ".join(m.label for m in messages)
    return f"webhook received: {len(messages)} messages ({labels})"
