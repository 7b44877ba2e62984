"""Checks of the ordering guarantee on a ``FakeLinePlatform``'s records.

Plain functions raising ``AssertionError`` with a readable account of the
requests, usable from any test runner; the pytest plugin builds its
fixtures on them.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from ._endpoints import (
    LOADING_PATH,
    MARK_AS_READ_PATHS,
    REPLY_PATH,
    TOKEN_MARK_AS_READ_PATH,
    USER_MARK_AS_READ_PATH,
)
from ._fake_platform import FakeLinePlatform
from ._records import RecordedRequest

__all__ = ["assert_loading_before_replied", "assert_marked_before_replied", "assert_not_marked"]

Event = Mapping[str, Any]


# -- checks -------------------------------------------------------------------

ChatKey = tuple[str, str]


@attrs.frozen
class _Message:
    chat: ChatKey
    user_id: str | None
    order: tuple[int, int]
    token: str | None
    reply_token: str | None
    label: str


# -- messages the kit built, so a mark by a token left out of ``events`` still counts --

_KNOWN_LIMIT = 100_000
"""Messages remembered at most (the oldest forgotten first): a long test session stays small."""

_known_lock = threading.Lock()
_known: OrderedDict[str, tuple[ChatKey, int, int]] = OrderedDict()
"""Read token -> (chat, timestamp, build order) of every message event the builders made."""
_built = itertools.count()


def remember_message(event: Event) -> None:
    """Note a message event the kit built: the chat and order its read token marks up to."""
    message, source = event.get("message"), event.get("source")
    if not isinstance(message, Mapping) or not isinstance(source, Mapping):
        return
    token, chat, timestamp = message.get("markAsReadToken"), _chat(source), event.get("timestamp")
    if not isinstance(token, str) or chat is None or not isinstance(timestamp, int):
        return
    with _known_lock:
        _known[token] = (chat, timestamp, next(_built))
        if len(_known) > _KNOWN_LIMIT:
            _known.popitem(last=False)


def _known_order(token: str | None) -> tuple[ChatKey, tuple[int, float]] | None:
    if token is None:
        return None
    with _known_lock:
        known = _known.get(token)
    return None if known is None else (known[0], (known[1], known[2]))


def _chat(source: Mapping[str, Any]) -> ChatKey | None:
    for kind, key in (("group", "groupId"), ("room", "roomId"), ("user", "userId")):
        if source.get("type") == kind and isinstance(source.get(key), str):
            return kind, source[key]
    return None


def _messages(events: Iterable[Event]) -> list[_Message]:
    found = []
    for position, event in enumerate(events):
        message = event.get("message")
        source = event.get("source")
        if event.get("type") != "message" or not isinstance(message, Mapping):
            continue
        if not isinstance(source, Mapping) or (chat := _chat(source)) is None:
            continue
        token = message.get("markAsReadToken")
        reply_token = event.get("replyToken")
        found.append(
            _Message(
                chat=chat,
                user_id=source.get("userId") if chat[0] == "user" else None,
                order=(int(event.get("timestamp", 0)), position),
                token=token if isinstance(token, str) else None,
                reply_token=reply_token if isinstance(reply_token, str) else None,
                label=f"{message.get('type')} message {message.get('id')} in {chat[0]} {chat[1]}",
            )
        )
    return found


def _marked_up_to(
    record: RecordedRequest, by_token: Mapping[str, _Message], message: _Message
) -> bool:
    """Whether *record* (a 200 mark) marked *message*'s chat read up to *message* or later.

    The marked token is looked up among the events given, then among every
    message the kit's builders made: a newer message of the chat left out of
    the events (its mark covered this one too) counts as well.  Between two
    messages of equal timestamp the one built later is newer; if this message
    was not built by the kit, only a strictly later timestamp counts.
    """
    body = record.json if isinstance(record.json, Mapping) else {}
    if record.path == TOKEN_MARK_AS_READ_PATH:
        token = body.get("markAsReadToken", "")
        marked = by_token.get(token)
        if marked is not None:
            return marked.chat == message.chat and marked.order >= message.order
        known = _known_order(token if isinstance(token, str) else None)
        if known is None or known[0] != message.chat:
            return False
        own = _known_order(message.token)
        floor = own[1] if own is not None else (message.order[0], math.inf)
        return known[1] > floor
    if record.path == USER_MARK_AS_READ_PATH:
        chat = body.get("chat")
        return (
            message.user_id is not None
            and isinstance(chat, Mapping)
            and chat.get("userId") == message.user_id
        )
    return False


def _expected(events: Iterable[Event], opted_out: Iterable[Event]) -> dict[str, _Message]:
    """The messages among *events* expected to be marked, by reply token."""
    skipped = {m.reply_token for m in _messages(opted_out)}
    return {
        m.reply_token: m
        for m in _messages(events)
        if m.reply_token is not None and m.reply_token not in skipped
    }


def assert_marked_before_replied(
    platform: FakeLinePlatform,
    events: Iterable[Event],
    *,
    opted_out: Iterable[Event] = (),
    replies: int | None = None,
    timeout: float = 5.0,
) -> None:
    """Assert that every reply to one of *events* came after LINE had marked it read.

    For each reply request (``POST /v2/bot/message/reply``) to a message among
    *events* (the webhook event dicts the bot received), the fake must have
    answered ``200`` to a mark-as-read request for that message or a newer
    one of the same chat (or, with the user-ID API, for that user) before
    the reply arrived.  The newer message need not be among *events*: any
    message the kit's builders made counts.  Replies to messages in
    *opted_out* (those your handlers do not mark, ``mark_as_read=False``) are
    not checked.  Fails if none of the other messages got a reply, so a bot
    that never replies does not pass by accident.  With *replies*, first
    waits (up to *timeout* s) for that many reply requests, for bots that
    reply in the background.
    """
    if replies is not None:
        platform.wait_for_requests(replies, path=REPLY_PATH, timeout=timeout, completed=False)
    events = list(events)
    messages = _messages(events)
    by_reply = _expected(events, opted_out)
    by_token = {m.token: m for m in messages if m.token is not None}
    records = platform.requests()
    marks = [r for r in records if r.path in MARK_AS_READ_PATHS and r.status == 200]
    checked = 0
    problems = []
    for reply in records:
        body = reply.json if isinstance(reply.json, Mapping) else {}
        if reply.path != REPLY_PATH or body.get("replyToken") not in by_reply:
            continue
        message = by_reply[body["replyToken"]]
        checked += 1
        covering = [m for m in marks if _marked_up_to(m, by_token, message)]
        if not any(
            m.responded_at is not None and m.responded_at <= reply.received_at for m in covering
        ):
            late = " (its mark was answered only after the reply)" if covering else ""
            problems.append(f"replied to {message.label} before it was marked read{late}")
    if checked == 0:
        raise AssertionError(
            f"no reply to any of the {len(by_reply)} message(s) expected to be marked: "
            "nothing to check "
            f"(requests seen: {_summary(records)})"
        )
    if problems:
        raise AssertionError(
            f"{len(problems)} of {checked} replies came before the message was marked read:\n  "
            + "\n  ".join(problems)
            + f"\nrequests seen: {_summary(records)}"
        )


def assert_loading_before_replied(
    platform: FakeLinePlatform,
    events: Iterable[Event],
    *,
    opted_out: Iterable[Event] = (),
    replies: int | None = None,
    timeout: float = 5.0,
) -> None:
    """Assert read, then the loading animation, then the reply, for every reply in a 1:1 chat.

    First ``assert_marked_before_replied`` (with the same arguments).  Then,
    for each reply to a message among *events* sent in a 1:1 chat, the fake
    must have answered ``202`` to a loading start for that user that arrived
    after the message's chat was marked read up to it (a 200 for it or a
    newer message) and was answered before the reply arrived.  Replies in
    groups and rooms are not checked here (LINE shows no animation there),
    nor replies to messages in *opted_out*.
    """
    events, opted_out = list(events), list(opted_out)
    assert_marked_before_replied(
        platform, events, opted_out=opted_out, replies=replies, timeout=timeout
    )
    messages = _messages(events)
    by_reply = _expected(events, opted_out)
    by_token = {m.token: m for m in messages if m.token is not None}
    records = platform.requests()
    marks = [r for r in records if r.path in MARK_AS_READ_PATHS and r.status == 200]
    starts = [r for r in records if r.path == LOADING_PATH and r.status == 202]
    problems = []
    for reply in records:
        body = reply.json if isinstance(reply.json, Mapping) else {}
        if reply.path != REPLY_PATH or body.get("replyToken") not in by_reply:
            continue
        message = by_reply[body["replyToken"]]
        if message.user_id is None:
            continue
        read_at = min(
            (
                m.responded_at
                for m in marks
                if m.responded_at is not None and _marked_up_to(m, by_token, message)
            ),
            default=None,
        )
        shown = [
            s
            for s in starts
            if isinstance(s.json, Mapping)
            and s.json.get("chatId") == message.user_id
            and s.responded_at is not None
            and s.responded_at <= reply.received_at
            and (read_at is None or read_at <= s.received_at)
        ]
        if not shown:
            problems.append(f"replied to {message.label} with no loading animation shown first")
    if problems:
        raise AssertionError(
            f"{len(problems)} replies came without a loading animation after the mark:\n  "
            + "\n  ".join(problems)
            + f"\nrequests seen: {_summary(records)}"
        )


def assert_not_marked(platform: FakeLinePlatform, events: Iterable[Event]) -> None:
    """Assert that no mark-as-read request carried the read token of any of *events*.

    For handlers that opt out (``mark_as_read=False``).  A newer message of the
    same chat still marks these as read on LINE's side, as the API does.
    """
    tokens = {m.token: m for m in _messages(events) if m.token is not None}
    sent = [
        tokens[token]
        for r in platform.mark_requests()
        if isinstance(r.json, Mapping) and (token := r.json.get("markAsReadToken")) in tokens
    ]
    if sent:
        raise AssertionError(
            "mark-as-read requests were sent for: " + ", ".join(m.label for m in sent)
        )


def _summary(records: Iterable[RecordedRequest]) -> str:
    return ", ".join(f"{r.method} {r.path} -> {r.status or r.outcome}" for r in records) or "none"
