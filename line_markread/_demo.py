"""``line-markread demo``: a real bot, a fake LINE, and a conversation that tests every guarantee.

Nothing is mocked.  The bot is an aiohttp web app whose ``WebhookHandler``
(``handle_async``, async handlers) replies through the reply endpoint; the
conversation is played as signed webhooks over loopback HTTP; the plugin talks
to ``line_markread.testing.FakeLinePlatform`` exactly as it would to LINE.

The timeline is merged from three witnesses sharing one clock
(``time.monotonic``, one process): the fake platform's request records, the
plugin's DEBUG trace (see ``_engine._trace``) and the bot's own handlers.  The
guarantees are then checked against that timeline, so the exit status is
evidence, not decoration.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from typing import Any, Callable, Optional, TextIO

import aiohttp
import attrs
from aiohttp import web
from linebot.v3.exceptions import InvalidSignatureError
from linebot.v3.webhooks import MessageEvent, StickerMessageContent, TextMessageContent

from ._body import WebhookBodyError
from ._handler import WebhookHandler
from ._stats import Stats
from ._version import __version__
from .testing import (
    FakeLinePlatform,
    Fault,
    RecordedRequest,
    signed_body,
    sticker_event,
    text_event,
)

# Obviously fake credentials: the demo never talks to LINE, and never prints these.
DEMO_CHANNEL_SECRET = "demo-channel-secret-not-a-real-one"
DEMO_ACCESS_TOKEN = "demo-access-token-not-a-real-one"

TOKEN_MARK_PATH = "/v2/bot/chat/markAsRead"
REPLY_PATH = "/v2/bot/message/reply"
LINE_WEBHOOK_DEADLINE_MS = 2000.0

# Short backoffs keep the run under a second; the wait_timeout stays the
# production default, so the handlers really do wait for their marks.
DEMO_SETTINGS: Mapping[str, Any] = {
    "backoff_initial": 0.02,
    "backoff_max": 0.2,
    "wait_timeout": 1.0,
    "request_timeout": 1.0,
    "close_grace": 1.0,
}

GROUP = "friends"
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "gina")

# What each message is expected to get, which decides which guarantees apply.
MARKED, OPTED_OUT, REJECTED = "marked", "opted-out", "rejected"


# -- records --------------------------------------------------------------


@attrs.frozen
class Message:
    """One message the demo sends, as a person would name it: ``alice#2`` is alice's 2nd."""

    label: str
    chat: str
    index: int
    """Position in its chat, from 1: a higher index is a newer message."""
    sender: str
    kind: str
    text: str
    expect: str
    """``marked``, ``opted-out`` (handler said ``mark_as_read=False``) or ``rejected`` (400)."""
    token: str = attrs.field(repr=False)
    reply_token: str = attrs.field(repr=False)
    message_id: str = attrs.field(repr=False)

    def to_json(self) -> dict[str, Any]:
        # Read and reply tokens are per-message credentials: left out even though fake.
        public = ("label", "chat", "index", "sender", "kind", "text", "expect")
        return {"type": "message", **{name: getattr(self, name) for name in public}}


@attrs.frozen
class Entry:
    """One line of the timeline.  ``t_ms`` counts from the start of the run."""

    t_ms: float
    chat: str
    what: str
    """scene, webhook, mark-sent, line-answered, mark-retry, mark-superseded,
    mark-marked, mark-failed, handler, reply, webhook-answered."""
    source: str
    """Which witness saw it: ``demo``, ``bot``, ``plugin`` (the trace) or ``line`` (the fake)."""
    message: Optional[str] = None
    status: Optional[int] = None
    attempt: Optional[int] = None
    delay_ms: Optional[float] = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        record = attrs.asdict(self)
        record["t_ms"] = round(self.t_ms, 3)
        if self.delay_ms is not None:
            record["delay_ms"] = round(self.delay_ms, 3)
        return {"type": "event", **record}


@attrs.frozen
class Check:
    """One guarantee and whether the timeline shows it held."""

    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "check", **attrs.asdict(self)}


@attrs.frozen
class Summary:
    ok: bool
    seed: int
    messages: int
    mark_requests: int
    replies: int
    read_before_reply: int
    read_before_reply_due: int
    checks_passed: int
    checks: int
    elapsed_ms: float
    """From the first scene to the end of the run (setting up the fake and the bot excluded)."""
    version: str = __version__

    def to_json(self) -> dict[str, Any]:
        record = attrs.asdict(self)
        record["elapsed_ms"] = round(self.elapsed_ms, 1)
        return {"type": "summary", **record}


@attrs.frozen
class Result:
    messages: tuple[Message, ...]
    entries: tuple[Entry, ...]
    checks: tuple[Check, ...]
    summary: Summary


# -- the cast: people, chats, and every message by each key a witness uses --


class Cast:
    """Builds the conversation's webhook events and remembers each message by every key.

    The witnesses name a message differently (the fake by read or reply
    token, the bot by message ID, the trace by chat ID); this maps them all
    back to ``alice#2``.
    """

    def __init__(self) -> None:
        self.user_ids = {name: "U" + secrets.token_hex(16) for name in USERS}
        self.group_id = "C" + secrets.token_hex(16)
        self.chat_labels = {f"user:{uid}": name for name, uid in self.user_ids.items()}
        self.chat_labels[f"group:{self.group_id}"] = GROUP
        self.messages: list[Message] = []
        self._counts: collections.Counter[str] = collections.Counter()
        self._by_key: dict[str, Message] = {}

    def text(self, sender: str, text: str, *, group: bool = False) -> dict[str, Any]:
        group_id = self.group_id if group else None
        event = text_event(text, user_id=self.user_ids[sender], group_id=group_id)
        return self._add(event, sender, chat=GROUP if group else sender, text=text, expect=MARKED)

    def sticker(self, sender: str) -> dict[str, Any]:
        event = sticker_event(user_id=self.user_ids[sender])
        return self._add(event, sender, chat=sender, text="(sticker)", expect=OPTED_OUT)

    def rejected_text(self, sender: str, text: str) -> dict[str, Any]:
        event = text_event(text, user_id=self.user_ids[sender])
        return self._add(event, sender, chat=sender, text=text, expect=REJECTED)

    def _add(
        self, event: dict[str, Any], sender: str, *, chat: str, text: str, expect: str
    ) -> dict[str, Any]:
        self._counts[chat] += 1
        index = self._counts[chat]
        content = event["message"]
        message = Message(
            label=f"{chat}#{index}",
            chat=chat,
            index=index,
            sender=sender,
            kind=content["type"],
            text=text,
            expect=expect,
            token=content["markAsReadToken"],
            reply_token=event["replyToken"],
            message_id=content["id"],
        )
        self.messages.append(message)
        for key in (message.token, message.reply_token, message.message_id):
            self._by_key[key] = message
        return event

    def find(self, key: object) -> Optional[Message]:
        """The message whose read token, reply token or message ID is *key*."""
        return self._by_key.get(key) if isinstance(key, str) else None

    def chat_label(self, chat_id: object) -> str:
        return self.chat_labels.get(str(chat_id), str(chat_id))


# -- the timeline and the plugin's trace ------------------------------------


class Timeline:
    """Entries from every witness, on one clock, and a way to wait for one to appear."""

    def __init__(self, cast: Cast) -> None:
        self.cast = cast
        self.started = time.monotonic()
        self.entries: list[Entry] = []
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()

    def add(
        self, what: str, chat: str, source: str, *, at: Optional[float] = None, **fields: Any
    ) -> None:
        at = time.monotonic() if at is None else at
        self.entries.append(Entry((at - self.started) * 1000, chat, what, source, **fields))
        # The trace may in principle come from another thread; the event is the loop's.
        self._loop.call_soon_threadsafe(self._changed.set)

    async def wait_for(self, predicate: Callable[[Entry], bool], timeout: float) -> bool:
        """Wait until an entry matching *predicate* exists; False after *timeout* seconds."""
        deadline = self._loop.time() + timeout
        while not any(predicate(entry) for entry in list(self.entries)):
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    def restart(self) -> None:
        """Count from now: setting up the fake and the bot is not part of the story."""
        self.started = time.monotonic()

    def sorted(self) -> tuple[Entry, ...]:
        return tuple(sorted(self.entries, key=lambda entry: entry.t_ms))


_TRACE_WHAT = {
    "sent": "mark-sent",
    "retry": "mark-retry",
    "marked": "mark-marked",
    "superseded": "mark-superseded",
    "failed": "mark-failed",
}


class TraceHandler(logging.Handler):
    """Turns the engine's structured DEBUG records into timeline entries, as they happen."""

    def __init__(self, timeline: Timeline) -> None:
        super().__init__(logging.DEBUG)
        self._timeline = timeline

    def emit(self, record: logging.LogRecord) -> None:
        what = _TRACE_WHAT.get(getattr(record, "markread_event", None) or "")
        if what is None:
            return
        delay = getattr(record, "markread_delay", None)
        self._timeline.add(
            what,
            self._timeline.cast.chat_label(getattr(record, "markread_chat", "")),
            "plugin",
            attempt=getattr(record, "markread_attempt", None),
            status=getattr(record, "markread_status", None),
            delay_ms=None if delay is None else float(delay) * 1000,
        )


@contextlib.contextmanager
def tracing(handler: logging.Handler) -> Iterator[None]:
    """Route the plugin's logs to *handler* for the run only, and put everything back after.

    Propagation is off meanwhile: the demo shows the failure it provokes in
    its timeline, not as a stray warning on stderr.
    """
    logger = logging.getLogger("line_markread")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def line_entries(cast: Cast, records: Sequence[RecordedRequest], timeline: Timeline) -> None:
    """Add what the fake LINE platform saw: answers to marks, and replies as LINE received them."""
    for record in records:
        body = record.json if isinstance(record.json, Mapping) else {}
        if record.path == TOKEN_MARK_PATH:
            message = cast.find(body.get("markAsReadToken"))
            timeline.add(
                "line-answered",
                message.chat if message else "?",
                "line",
                at=record.responded_at or record.received_at,
                message=message.label if message else None,
                status=record.status,
                detail=record.outcome,
            )
        elif record.path == REPLY_PATH:
            message = cast.find(body.get("replyToken"))
            texts = [m.get("text", "") for m in body.get("messages", []) if isinstance(m, Mapping)]
            timeline.add(
                "reply",
                message.chat if message else "?",
                "line",
                at=record.received_at,
                message=message.label if message else None,
                status=record.status,
                detail=" / ".join(texts),
            )


# -- the bot ----------------------------------------------------------------


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
        self._session: Optional[aiohttp.ClientSession] = None
        self._runner: Optional[web.AppRunner] = None

    def _register_handlers(self) -> None:
        # Closures, not bound methods: the SDK counts ``self`` among a handler's parameters.
        @self.handler.add(MessageEvent, message=TextMessageContent)
        async def on_text(event: Any) -> None:
            self._handler_ran(event, "handler ran")
            await self._reply(event.reply_token, f"you said: {event.message.text}")

        @self.handler.add(MessageEvent, message=StickerMessageContent, mark_as_read=False)
        async def on_sticker(event: Any) -> None:
            self._handler_ran(event, "handler ran (opted out: mark_as_read=False)")
            await self._reply(event.reply_token, "nice sticker")

    def _handler_ran(self, event: Any, detail: str) -> None:
        message = self._timeline.cast.find(event.message.id)
        chat = message.chat if message else "?"
        label = message.label if message else None
        self._timeline.add("handler", chat, "bot", message=label, detail=detail)

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

    async def _callback(self, request: web.Request) -> web.Response:
        body = await request.text()
        self._note_webhook(body)
        try:
            await self.handler.handle_async(body, request.headers.get("X-Line-Signature", ""))
        except (InvalidSignatureError, WebhookBodyError):
            return web.Response(status=400, text="Bad request")
        return web.Response(text="OK")

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


# -- the conversation ---------------------------------------------------------


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
    c.fake.script(TOKEN_MARK_PATH, 503, 503)
    await c.deliver(c.cast.text("frank", "is anyone there?"))


async def newer_message_supersedes_retry(c: Conversation) -> None:
    # Retry-After holds the first mark in its backoff long enough, whatever the
    # seed, for the second message to arrive while it is still pending.
    c.fake.script(TOKEN_MARK_PATH, Fault.status(503, retry_after="1"))
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


Scene = Callable[[Conversation], Awaitable[None]]
SCENES: tuple[tuple[str, Scene], ...] = (
    ("Three users write at once", several_users_at_once),
    ("dave sends a burst: four messages in one webhook", burst_from_one_user),
    ("A group chat: three members in one webhook", group_chat),
    ("carol sends a sticker; its handler opted out (mark_as_read=False)", opted_out_sticker),
    ("Mark-as-read outage: 503, 503, then it recovers", outage_that_recovers),
    ("erin writes again while her first mark waits to retry", newer_message_supersedes_retry),
    ("gina's read token is rejected by LINE (400)", invalid_read_token),
)


async def converse(conversation: Conversation) -> None:
    conversation.timeline.restart()
    try:
        for title, scene in SCENES:
            conversation.scene(title)
            await scene(conversation)
    finally:
        await conversation.close()


async def play(seed: int) -> Result:
    """Run the whole demo on the running loop and check what happened."""
    cast = Cast()
    timeline = Timeline(cast)
    fake = FakeLinePlatform(access_token=DEMO_ACCESS_TOKEN, bot_name="Demo Bot")
    await asyncio.to_thread(fake.start)
    try:
        with tracing(TraceHandler(timeline)):
            bot = DemoBot(fake, timeline, seed)
            try:
                await converse(Conversation(fake, timeline, await bot.start()))
            finally:
                await bot.stop()
        line_entries(cast, fake.requests, timeline)
    finally:
        await asyncio.to_thread(fake.stop)
    elapsed_ms = (time.monotonic() - timeline.started) * 1000
    return judge(tuple(cast.messages), timeline.sorted(), bot.handler.stats(), seed, elapsed_ms)


# -- the guarantees -----------------------------------------------------------


@attrs.frozen
class Evidence:
    messages: tuple[Message, ...]
    entries: tuple[Entry, ...]
    stats: Stats

    def of(self, what: str, label: Optional[str] = None, chat: Optional[str] = None) -> list[Entry]:
        return [
            e
            for e in self.entries
            if e.what == what
            and (label is None or e.message == label)
            and (chat is None or e.chat == chat)
        ]

    def index(self, label: Optional[str]) -> int:
        return next((m.index for m in self.messages if m.label == label), 0)

    def statuses(self, label: str) -> list[Optional[int]]:
        return [e.status for e in self.of("line-answered", label)]

    def expecting(self, expect: str) -> list[Message]:
        return [m for m in self.messages if m.expect == expect]

    def read_before_reply(self, message: Message) -> bool:
        """A 200 for this message or a newer one of its chat reached the bot before the reply."""
        replies = self.of("reply", message.label)
        if len(replies) != 1:
            return False
        return any(
            answer.status == 200
            and self.index(answer.message) >= message.index
            and answer.t_ms <= replies[0].t_ms
            for answer in self.of("line-answered", chat=message.chat)
        )

    def handled_and_replied(self, message: Message) -> bool:
        replies = self.of("reply", message.label)
        return len(self.of("handler", message.label)) == 1 and [r.status for r in replies] == [200]


def check_read_before_reply(ev: Evidence) -> Check:
    due = ev.expecting(MARKED)
    held = [m for m in due if ev.read_before_reply(m)]
    late = ", ".join(m.label for m in due if m not in held)
    detail = f"{len(held)} of {len(due)} replies" + (f"; not for {late}" if late else "")
    return Check("read before reply", bool(due) and len(held) == len(due), detail)


def check_every_handler(ev: Evidence) -> Check:
    done = [m for m in ev.messages if ev.handled_and_replied(m)]
    missing = ", ".join(m.label for m in ev.messages if m not in done)
    detail = f"{len(done)} of {len(ev.messages)} messages" + (f"; not {missing}" if missing else "")
    return Check("every handler ran once and its reply was accepted", not missing, detail)


def check_opted_out(ev: Evidence) -> Check:
    opted = ev.expecting(OPTED_OUT)
    sent = [m.label for m in opted if ev.statuses(m.label)]
    ok = bool(opted) and not sent and all(ev.handled_and_replied(m) for m in opted)
    return Check(
        "opted-out sticker never marked, its handler still ran",
        ok,
        "no mark-as-read request carried its token" if ok else _answers(ev, opted),
    )


def check_rejected(ev: Evidence) -> Check:
    rejected = ev.expecting(REJECTED)
    ok = bool(rejected) and all(
        ev.statuses(m.label) == [400]
        and ev.of("mark-failed", chat=m.chat)
        and ev.handled_and_replied(m)
        for m in rejected
    )
    return Check(
        "invalid read token: one 400, no retry, handler still ran", ok, _answers(ev, rejected)
    )


def check_outage(ev: Evidence) -> Check:
    retried = [
        m
        for m in ev.expecting(MARKED)
        if len(ev.statuses(m.label)) > 1 and ev.statuses(m.label)[-1] == 200
    ]
    ok = any(ev.of("mark-retry", chat=m.chat) for m in retried)
    return Check("503 outage retried until LINE answered 200", ok, _answers(ev, retried))


def _answers(ev: Evidence, messages: Sequence[Message]) -> str:
    """``frank#1: LINE answered 503, 503, 200`` for each message."""
    seen = [f"{m.label}: {', '.join(map(str, ev.statuses(m.label))) or 'none'}" for m in messages]
    return "LINE answered " + ("; ".join(seen) or "nothing")


def check_superseded(ev: Evidence) -> Check:
    superseded = ev.of("mark-superseded")
    chats = {e.chat for e in superseded}
    covered = [
        m.label
        for m in ev.expecting(MARKED)
        if m.chat in chats and ev.statuses(m.label) and 200 not in ev.statuses(m.label)
    ]
    ok = bool(covered) and all(ev.read_before_reply(m) for m in ev.messages if m.label in covered)
    return Check(
        "a newer message superseded an older retrying mark",
        ok,
        f"superseded in {', '.join(sorted(chats)) or 'no chat'}; "
        f"read through a newer message: {', '.join(covered) or 'none'}",
    )


def check_coalesced(ev: Evidence) -> Check:
    by_chat = collections.Counter(m.chat for m in ev.expecting(MARKED))
    busy = [chat for chat, count in by_chat.items() if count > 2]
    requests = {chat: len(ev.of("line-answered", chat=chat)) for chat in busy}
    ok = bool(busy) and all(count == 1 for count in requests.values())
    detail = "; ".join(
        f"{chat}: {by_chat[chat]} messages, {requests[chat]} request" for chat in busy
    )
    return Check("one request per chat per webhook (burst, group)", ok, detail)


def check_fewer_requests(ev: Evidence) -> Check:
    requests = len(ev.of("line-answered"))
    return Check(
        "fewer requests than messages",
        requests < len(ev.messages),
        f"{requests} mark-as-read requests for {len(ev.messages)} messages",
    )


def check_webhook_deadline(ev: Evidence) -> Check:
    answers = ev.of("webhook-answered")
    slow = [
        e for e in answers if e.status != 200 or (e.delay_ms or 0.0) >= LINE_WEBHOOK_DEADLINE_MS
    ]
    slowest = max((e.delay_ms or 0.0 for e in answers), default=0.0)
    return Check(
        "every webhook answered 200 within LINE's 2 s",
        bool(answers) and not slow,
        f"{len(answers) - len(slow)} of {len(answers)}; slowest {slowest:.0f} ms",
    )


def check_stats(ev: Evidence) -> Check:
    answers = ev.of("line-answered")
    marked = sum(e.status == 200 for e in answers)
    ok = ev.stats.requests == len(answers) and ev.stats.marked == marked
    return Check(
        "plugin's stats() agree with LINE's records",
        ok,
        f"requests {ev.stats.requests}/{len(answers)}, marked {ev.stats.marked}/{marked}, "
        f"retried {ev.stats.retried}, superseded {ev.stats.superseded}, failed {ev.stats.failed}",
    )


CHECKS: tuple[Callable[[Evidence], Check], ...] = (
    check_read_before_reply,
    check_every_handler,
    check_opted_out,
    check_rejected,
    check_outage,
    check_superseded,
    check_coalesced,
    check_fewer_requests,
    check_webhook_deadline,
    check_stats,
)


def judge(
    messages: tuple[Message, ...],
    entries: tuple[Entry, ...],
    stats: Stats,
    seed: int,
    elapsed_ms: float,
) -> Result:
    evidence = Evidence(messages, entries, stats)
    checks = tuple(check(evidence) for check in CHECKS)
    due = evidence.expecting(MARKED)
    summary = Summary(
        ok=all(c.ok for c in checks),
        seed=seed,
        messages=len(messages),
        mark_requests=len(evidence.of("line-answered")),
        replies=len(evidence.of("reply")),
        read_before_reply=sum(evidence.read_before_reply(m) for m in due),
        read_before_reply_due=len(due),
        checks_passed=sum(c.ok for c in checks),
        checks=len(checks),
        elapsed_ms=elapsed_ms,
    )
    return Result(messages, entries, checks, summary)


# -- output -------------------------------------------------------------------


@attrs.frozen
class Style:
    """Colour and aligned columns for a person at a terminal; plain lines for pipes and files."""

    colour: bool
    aligned: bool

    @classmethod
    def for_stream(cls, stream: TextIO) -> Style:
        tty = _isatty(stream)
        plain = bool(os.environ.get("NO_COLOR")) or os.environ.get("TERM") == "dumb"
        return cls(colour=tty and not plain, aligned=tty)

    def paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and code else text


def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed stream
        return False


_BOLD, _DIM, _RED, _GREEN, _YELLOW, _BLUE, _MAGENTA, _CYAN = (
    "1", "2", "31", "32", "33", "34", "35", "36",
)  # fmt: skip


def _answered(entry: Entry) -> tuple[str, str]:
    label, status = entry.message or "?", entry.status
    if status == 200:
        return f"LINE: 200, chat read up to {label}", _GREEN
    colour = _YELLOW if status is None or status >= 500 else _RED
    return f"LINE: {status or entry.detail} for {label}'s mark", colour


def _retry(entry: Entry) -> tuple[str, str]:
    why = entry.status if entry.status is not None else "no answer"
    return f"retry in {entry.delay_ms or 0:.0f} ms after {why}", _YELLOW


_DESCRIPTIONS: Mapping[str, Callable[[Entry], tuple[str, str]]] = {
    "mark-sent": lambda e: (f"mark-as-read sent (attempt {e.attempt})", _CYAN),
    "line-answered": _answered,
    "mark-retry": _retry,
    "mark-superseded": lambda e: (
        "older mark superseded: a newer message of this chat takes over",
        _MAGENTA,
    ),
    "mark-marked": lambda e: ("marked read", _GREEN),
    "mark-failed": lambda e: ("mark-as-read failed for good; the handler runs anyway", _RED),
    "handler": lambda e: (f"{e.detail} for {e.message}", _BOLD),
    "reply": lambda e: (f'reply for {e.message} reached LINE ({e.status}): "{e.detail}"', _BLUE),
    "webhook-answered": lambda e: (e.detail, _DIM),
}


def describe(entry: Entry) -> tuple[str, str]:
    """What a person reads for *entry*, and its colour."""
    how = _DESCRIPTIONS.get(entry.what)
    return how(entry) if how is not None else (entry.detail, _BLUE)


def render_entry(entry: Entry, style: Style, width: int) -> str:
    if entry.what == "scene":
        return "\n" + style.paint(f"== {entry.detail} ==", _BOLD)
    text, colour = describe(entry)
    if not style.aligned:
        return f"{entry.t_ms:.1f}ms {entry.chat} {text}"
    when = style.paint(f"{entry.t_ms:8.1f} ms", _DIM)
    return f"{when}  {entry.chat:<{width}}  {style.paint(text, colour)}"


def render(result: Result, out: TextIO, style: Style) -> None:
    print(
        "line-markread demo: a bot using line_markread and a fake LINE platform, "
        f"on loopback (seed {result.summary.seed})",
        file=out,
    )
    width = max((len(e.chat) for e in result.entries), default=0)
    for entry in result.entries:
        print(render_entry(entry, style, width), file=out)
    print("\n" + style.paint("Guarantees", _BOLD), file=out)
    for check in result.checks:
        verdict = style.paint("PASS", _GREEN) if check.ok else style.paint("FAIL", _RED + ";1")
        print(f"  {verdict}  {check.name}: {check.detail}", file=out)
    print("\n" + summary_line(result.summary), file=out)
    closing = "Every guarantee held." if result.summary.ok else "Some guarantees did NOT hold."
    print(style.paint(closing, _GREEN if result.summary.ok else _RED + ";1"), file=out)


def summary_line(s: Summary) -> str:
    return (
        f"{s.messages} messages, {s.mark_requests} mark-as-read requests "
        f"(one per message would be {s.messages}); read before reply for "
        f"{s.read_before_reply} of {s.read_before_reply_due} replies "
        f"({s.replies - s.read_before_reply_due} exempt: opted out or token rejected); "
        f"{s.checks_passed} of {s.checks} guarantees held; "
        f"the conversation took {s.elapsed_ms:.0f} ms."
    )


def write_json(result: Result, out: TextIO) -> None:
    """One JSON object per line: messages, timeline events, checks, then the summary."""
    records = [
        *(m.to_json() for m in result.messages),
        *(e.to_json() for e in result.entries),
        *(c.to_json() for c in result.checks),
        result.summary.to_json(),
    ]
    for record in records:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    out.flush()


def run(*, seed: int, as_json: bool = False, out: Optional[TextIO] = None) -> int:
    """Play the demo; 0 if every guarantee held, 1 otherwise."""
    out = sys.stdout if out is None else out
    result = asyncio.run(play(seed))
    if as_json:
        write_json(result, out)
    else:
        render(result, out, Style.for_stream(out))
    return 0 if result.summary.ok else 1
