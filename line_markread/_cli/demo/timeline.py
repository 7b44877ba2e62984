"""The demo's witnesses and what they write: messages, the cast, the timeline, the trace.

The timeline is merged from three witnesses sharing one clock
(``time.monotonic``, one process): the fake platform's request records, the
plugin's DEBUG trace (see ``_engine._trace``) and the bot's own handlers.
`Cast` maps every key a witness names a message by back to ``alice#2``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs

from ...testing import (
    LOADING_PATH,
    REPLY_PATH,
    TOKEN_MARK_AS_READ_PATH,
    RecordedRequest,
    image_event,
    sticker_event,
    text_event,
)

GROUP = "friends"
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "gina", "hana")

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
    thinking: float = 0.0
    """Seconds the bot's slow handler (photos: ``loading=``, ``background=True``) takes."""

    def to_json(self) -> dict[str, Any]:
        # Read and reply tokens are per-message credentials: left out even though fake.
        public = ("label", "chat", "index", "sender", "kind", "text", "expect", "thinking")
        return {"type": "message", **{name: getattr(self, name) for name in public}}


@attrs.frozen
class Entry:
    """One line of the timeline.  ``t_ms`` counts from the start of the run."""

    t_ms: float
    chat: str
    what: str
    """scene, webhook, mark-sent, line-answered, mark-retry, mark-superseded,
    mark-marked, mark-failed, handler, handler-done, loading, reply, webhook-answered."""
    source: str
    """Which witness saw it: ``demo``, ``bot``, ``plugin`` (the trace) or ``line`` (the fake)."""
    message: str | None = None
    status: int | None = None
    attempt: int | None = None
    delay_ms: float | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        record = attrs.asdict(self)
        record["t_ms"] = round(self.t_ms, 3)
        if self.delay_ms is not None:
            record["delay_ms"] = round(self.delay_ms, 3)
        return {"type": "event", **record}


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

    def photo(self, sender: str, question: str, *, thinking: float) -> dict[str, Any]:
        """A photo with a question about it: the bot's slow handler takes *thinking* s."""
        event = image_event(user_id=self.user_ids[sender])
        return self._add(
            event, sender, chat=sender, text=question, expect=MARKED, thinking=thinking
        )

    def rejected_text(self, sender: str, text: str) -> dict[str, Any]:
        event = text_event(text, user_id=self.user_ids[sender])
        return self._add(event, sender, chat=sender, text=text, expect=REJECTED)

    def _add(
        self,
        event: dict[str, Any],
        sender: str,
        *,
        chat: str,
        text: str,
        expect: str,
        thinking: float = 0.0,
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
            thinking=thinking,
        )
        self.messages.append(message)
        for key in (message.token, message.reply_token, message.message_id):
            self._by_key[key] = message
        return event

    def find(self, key: object) -> Message | None:
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
        self, what: str, chat: str, source: str, *, at: float | None = None, **fields: Any
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
        if record.path == TOKEN_MARK_AS_READ_PATH:
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
        elif record.path == LOADING_PATH:
            seconds = body.get("loadingSeconds")
            answered = record.responded_at
            timeline.add(
                "loading",
                cast.chat_label(f"user:{body.get('chatId')}"),
                "line",
                at=record.received_at,
                status=record.status,
                # How long LINE took to answer: the animation is on from then.
                delay_ms=None if answered is None else (answered - record.received_at) * 1000,
                detail=f"{seconds} s" if seconds is not None else "",
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
