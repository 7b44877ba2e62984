"""The demo's verdict: every guarantee as a pure function of the evidence.

`judge` turns the messages, the merged timeline and the plugin's ``stats()``
into one `Check` per guarantee and a `Summary`, so the exit status is
evidence, not decoration.  Nothing here does I/O.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from ..._stats import Stats
from ..._version import __version__
from .timeline import MARKED, OPTED_OUT, REJECTED, Entry, Message

LINE_WEBHOOK_DEADLINE_MS = 2000.0
BACKGROUND_WEBHOOK_MS = 500.0
"""A webhook whose handlers run in the background is answered well within this."""


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


# -- the guarantees -----------------------------------------------------------


@attrs.frozen
class Evidence:
    messages: tuple[Message, ...]
    entries: tuple[Entry, ...]
    stats: Stats

    def of(self, what: str, label: str | None = None, chat: str | None = None) -> list[Entry]:
        return [
            e
            for e in self.entries
            if e.what == what
            and (label is None or e.message == label)
            and (chat is None or e.chat == chat)
        ]

    def index(self, label: str | None) -> int:
        return next((m.index for m in self.messages if m.label == label), 0)

    def statuses(self, label: str) -> list[int | None]:
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


def _slow(ev: Evidence) -> list[Message]:
    return [m for m in ev.messages if m.thinking > 0]


def _first(entries: Sequence[Entry]) -> Entry | None:
    return entries[0] if entries else None


def _read_at(ev: Evidence, message: Message) -> float | None:
    """When LINE first answered 200 for *message* or a newer message of its chat."""
    return next(
        (
            a.t_ms
            for a in ev.of("line-answered", chat=message.chat)
            if a.status == 200 and ev.index(a.message) >= message.index
        ),
        None,
    )


def _shown_in_order(ev: Evidence, message: Message) -> bool:
    """Read, then a loading start LINE accepted (202), then the handler, then the reply."""
    handler = _first(ev.of("handler", message.label))
    reply = _first(ev.of("reply", message.label))
    read_at = _read_at(ev, message)
    if handler is None or reply is None or read_at is None:
        return False
    return read_at <= handler.t_ms <= reply.t_ms and any(
        start.status == 202
        and read_at <= start.t_ms
        and start.t_ms + (start.delay_ms or 0.0) <= handler.t_ms
        for start in ev.of("loading", chat=message.chat)
    )


def check_slow_question(ev: Evidence) -> Check:
    slow = _slow(ev)
    chats = {m.chat for m in slow}
    answers = [e for e in ev.of("webhook-answered") if e.chat in chats]
    slowest = max((e.delay_ms or 0.0 for e in answers), default=0.0)
    in_order = [m.label for m in slow if _shown_in_order(ev, m)]
    ok = (
        bool(slow)
        and bool(answers)
        and slowest < BACKGROUND_WEBHOOK_MS
        and len(in_order) == len(slow)
    )
    return Check(
        "slow handler in the background: webhook answered at once; read, loading, then reply",
        ok,
        f"webhooks answered in {slowest:.0f} ms at most while handlers took "
        f"{', '.join(f'{m.thinking:g} s' for m in slow) or 'nothing'}; "
        f"in order for {len(in_order)} of {len(slow)}",
    )


def check_loading_refreshed(ev: Evidence) -> Check:
    """The animation is started again while a handler outlasts it, and never after it returned."""
    refreshed, late = [], []
    for message in _slow(ev):
        handler = _first(ev.of("handler", message.label))
        done = _first(ev.of("handler-done", message.label))
        if handler is None or done is None:
            continue
        starts = [s.t_ms for s in ev.of("loading", chat=message.chat)]
        during = [t for t in starts if handler.t_ms < t <= done.t_ms]
        if during:
            refreshed.append(f"{message.label}: {len(during)} refresh(es)")
        # Between this handler's end and the chat's next handler, only that
        # next message's own animation may start.
        following = [h.t_ms for h in ev.of("handler", chat=message.chat) if h.t_ms > done.t_ms]
        until = min(following, default=float("inf"))
        after = [t for t in starts if done.t_ms < t < until]
        if len(after) > (1 if following else 0):
            late.append(message.label)
    ok = bool(refreshed) and not late
    detail = "; ".join(refreshed) or "no refresh"
    if late:
        detail += f"; started after the handler returned for {', '.join(late)}"
    return Check("loading animation refreshed while the handler ran, none after", ok, detail)


def check_chat_order(ev: Evidence) -> Check:
    """Background handlers of one chat one at a time, in arrival order; read when picked up.

    "Read" means the bot has picked the message up: a follow-up queued behind
    a slow handler of its chat is marked only once that handler is done.
    """
    overlaps = []
    checked = 0
    for chat in {m.chat for m in _slow(ev)}:
        labels = [m.label for m in ev.messages if m.chat == chat and m.thinking > 0]
        for earlier, later in itertools.pairwise(labels):
            done = _first(ev.of("handler-done", earlier))
            start = _first(ev.of("handler", later))
            read = _first(ev.of("line-answered", later))
            checked += 1
            if done is None or start is None or start.t_ms < done.t_ms:
                overlaps.append(f"{later} before {earlier} was done")
            elif read is None or read.t_ms < done.t_ms:
                overlaps.append(f"{later} read before {earlier} was done")
    return Check(
        "one chat's background handlers one at a time, in order, each read when its turn came",
        checked > 0 and not overlaps,
        "; ".join(overlaps)
        or f"{checked} follow-up(s) waited for the earlier answer, unread until then",
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
    check_slow_question,
    check_loading_refreshed,
    check_chat_order,
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
