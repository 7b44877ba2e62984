"""The conversation the demo plays: scenes, sent as LINE would send them.

Each scene is an async function of the `Conversation`, listed with its title
in `SCENES`; a new scene is one function plus one row.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from ...testing import REPLY_PATH, TOKEN_MARK_AS_READ_PATH, FakeLinePlatform, Fault, signed_body
from .stage import DEMO_CHANNEL_SECRET
from .timeline import USERS, Timeline


class Conversation:
    """Plays scenes as LINE would: signed webhook bodies, POSTed to the bot."""

    def __init__(self, fake: FakeLinePlatform, timeline: Timeline, webhook_url: str) -> None:
        self.fake = fake
        self.timeline = timeline
        self.cast = timeline.cast
        self._url = webhook_url
        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        await self._session.close()

    def scene(self, title: str) -> None:
        self.timeline.add("scene", "", "demo", detail=title)

    async def deliver(self, *events: Mapping[str, Any]) -> None:
        """POST one webhook body and note when the bot answered (LINE allows it 2 s)."""
        body, signature = signed_body(*events, channel_secret=DEMO_CHANNEL_SECRET)
        chat = self.cast.find(events[0]["message"]["id"])
        headers = {"X-Line-Signature": signature, "Content-Type": "application/json"}
        started = time.monotonic()
        async with self._session.post(self._url, data=body.encode(), headers=headers) as r:
            await r.read()
        took = (time.monotonic() - started) * 1000
        self.timeline.add(
            "webhook-answered",
            chat.chat if chat else "?",
            "demo",
            status=r.status,
            delay_ms=took,
            detail=f"bot answered the webhook {r.status} after {took:.0f} ms",
        )


async def several_users_at_once(c: Conversation) -> None:
    await asyncio.gather(*(c.deliver(c.cast.text(name, f"hi, {name} here")) for name in USERS[:3]))


async def burst_from_one_user(c: Conversation) -> None:
    texts = ("wait", "one more thing", "actually", "never mind")
    await c.deliver(*(c.cast.text("dave", text) for text in texts))


async def group_chat(c: Conversation) -> None:
    lines = (("alice", "lunch?"), ("bob", "yes"), ("carol", "12:30"))
    await c.deliver(*(c.cast.text(name, text, group=True) for name, text in lines))


async def opted_out_sticker(c: Conversation) -> None:
    await c.deliver(c.cast.sticker("carol"))


async def outage_that_recovers(c: Conversation) -> None:
    c.fake.script(TOKEN_MARK_AS_READ_PATH, 503, 503)
    await c.deliver(c.cast.text("frank", "is anyone there?"))


async def newer_message_supersedes_retry(c: Conversation) -> None:
    # Retry-After holds the first mark in its backoff long enough, whatever the
    # seed, for the second message to arrive while it is still pending.
    c.fake.script(TOKEN_MARK_AS_READ_PATH, Fault.status(503, retry_after="1"))
    first = asyncio.ensure_future(c.deliver(c.cast.text("erin", "hello?")))
    try:
        await c.timeline.wait_for(lambda e: e.what == "mark-retry" and e.chat == "erin", timeout=3)
        await c.deliver(c.cast.text("erin", "hello??"))
    finally:
        await first


async def invalid_read_token(c: Conversation) -> None:
    event = c.cast.rejected_text("gina", "hi (my read token is not for this bot)")
    c.fake.reject_token(event["message"]["markAsReadToken"])
    await c.deliver(event)


async def slow_question(c: Conversation) -> None:
    # A 3 s answer in the background: the webhook is answered at once, the chat
    # is read, the animation shows (and is refreshed), then the reply comes.  Her
    # follow-up waits for the first answer: one chat, one handler at a time, and
    # it stays unread until then ("Read" means the bot has picked it up).
    replies = len([r for r in c.fake.requests() if r.path == REPLY_PATH])
    await c.deliver(c.cast.photo("hana", "what is in this photo?", thinking=3.0))
    # The webhook was answered before the mark: let it land, so the second
    # photo is a follow-up in this story, not a newer message superseding it.
    await c.timeline.wait_for(lambda e: e.what == "mark-marked" and e.chat == "hana", timeout=3)
    await c.deliver(c.cast.photo("hana", "and this one?", thinking=0.3))
    await c.fake.await_requests(replies + 2, path=REPLY_PATH, timeout=10)


Scene = Callable[[Conversation], Awaitable[None]]
SCENES: tuple[tuple[str, Scene], ...] = (
    ("Three users write at once", several_users_at_once),
    ("dave sends a burst: four messages in one webhook", burst_from_one_user),
    ("A group chat: three members in one webhook", group_chat),
    ("carol sends a sticker; its handler opted out (mark_as_read=False)", opted_out_sticker),
    ("Mark-as-read outage: 503, 503, then it recovers", outage_that_recovers),
    ("erin writes again while her first mark waits to retry", newer_message_supersedes_retry),
    ("gina's read token is rejected by LINE (400)", invalid_read_token),
    ("hana asks about two photos: a slow answer in the background", slow_question),
)


async def converse(conversation: Conversation) -> None:
    conversation.timeline.restart()
    try:
        for title, scene in SCENES:
            conversation.scene(title)
            await scene(conversation)
    finally:
        await conversation.close()
