"""Did each message get its answer, exactly once?  Checked on a ``FakeLinePlatform``'s records.

An answer reaches the user when LINE accepts it: a reply answered ``200``
for the event's reply token, or a push answered ``2xx`` carrying one of the
retry keys ``reply()`` derives for the event (``_reply.retry_key``).  A
``409`` for a repeated key delivers nothing new, and neither does a request
whose answer was dropped *unless* the fake processed it
(``Fault.drop(processed=True)``): that one counts, as it would at LINE.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._reply import MAX_MESSAGES, retry_key
from ._endpoints import PUSH_PATH, REPLY_PATH, RETRY_KEY_HEADER
from ._fake_platform import FakeLinePlatform
from ._records import RecordedRequest

__all__ = ["answers_of", "assert_answered_once"]

Event = Mapping[str, Any]

_POSITIONS = 32
"""Answers per event looked for: far more than any handler sends."""


def _accepted(record: RecordedRequest, processed: set[str]) -> bool:
    if record.status is not None and 200 <= record.status < 300:
        return True
    return record.request_id in processed


def answers_of(platform: FakeLinePlatform, event: Event) -> list[RecordedRequest]:
    """The requests that delivered an answer to *event* (replies with its token, keyed pushes)."""
    token = event.get("replyToken")
    event_id = event.get("webhookEventId")
    keys = (
        {retry_key(event_id, p) for p in range(_POSITIONS)} if isinstance(event_id, str) else set()
    )
    processed = platform._processed_request_ids()
    found = []
    for record in platform._records.all():
        if not _accepted(record, processed):
            continue
        body = record.json if isinstance(record.json, dict) else {}
        replied = (
            record.path == REPLY_PATH and token is not None and body.get("replyToken") == token
        )
        pushed = record.path == PUSH_PATH and record.headers.get(RETRY_KEY_HEADER) in keys
        if replied or pushed:
            found.append(record)
    return found


def assert_answered_once(
    platform: FakeLinePlatform, *events: Event, answers: int = 1, timeout: float = 5.0
) -> None:
    """Each of *events* got exactly *answers* accepted answers (default 1): none lost, none twice.

    *events* are the raw event JSON objects the test sent (``text_event(...)``).
    Waits up to *timeout* seconds for answers still to come (background
    handlers), then checks the counts.
    """
    if not 1 <= answers <= MAX_MESSAGES * _POSITIONS:
        raise ValueError(f"answers must be a positive count, got {answers!r}")
    lock = platform._records.lock
    with lock:  # woken by every arrival and completion; no polling
        lock.wait_for(lambda: all(len(answers_of(platform, e)) >= answers for e in events), timeout)
    problems = []
    for event in events:
        got = answers_of(platform, event)
        if len(got) != answers:
            seen = ", ".join(
                f"{r.path} -> {r.status or r.outcome}"
                for r in platform._records.all()
                if r.path in (REPLY_PATH, PUSH_PATH)
            )
            problems.append(
                f"event {event.get('webhookEventId')} got {len(got)} answer(s), "
                f"expected {answers}; replies and pushes so far: [{seen}]"
            )
    if problems:
        raise AssertionError("\n".join(problems))
