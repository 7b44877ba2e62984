"""The demo's verdict: every guarantee as a pure function of the evidence.

`judge` turns the messages, the merged timeline and the plugin's ``stats()``
into one `Check` per guarantee and a `Summary`, so the exit status is
evidence, not decoration.  Nothing here does I/O.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any, Callable, Optional

import attrs

from ..._stats import Stats
from ..._version import __version__
from .timeline import MARKED, OPTED_OUT, REJECTED, Entry, Message

LINE_WEBHOOK_DEADLINE_MS = 2000.0


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
