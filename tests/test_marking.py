"""Coalescing, supersession, retries and timeouts: the engine's guarantees, for both paths."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from linebot.v3.messaging import Configuration
from linebot.v3.webhooks import MessageEvent, TextMessageContent

from line_markread import MarkFailure, Outcome, WebhookHandler
from line_markread.testing import FakeLinePlatform, Fault, message_event, text_event

from .support import (
    FAST_RETRIES,
    SECRET,
    TOKEN_PATH,
    Driver,
    HandlerFactory,
    body_of,
    mark_answered_before,
    sent_tokens,
    token_of,
    with_text_handler,
)

# -- coalescing ---------------------------------------------------------------


def test_one_request_per_chat_per_body_with_the_newest_token(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    started: dict[str, float] = {}
    handler = with_text_handler(new_handler(), started=started)
    burst = [text_event(str(i), user_id="U1", timestamp=1_000 + i) for i in range(5)]
    other = text_event("x", user_id="U2")

    driver.handle(handler, *body_of(*burst, other))

    assert sorted(sent_tokens(fake)) == sorted([token_of(burst[-1]), token_of(other)])
    assert len(started) == 6
    newest = {token_of(burst[-1])}
    for event in burst:
        assert mark_answered_before(fake, newest, started[token_of(event)])
    assert handler.stats().coalesced == 4


def test_newest_is_by_timestamp_then_position(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = with_text_handler(new_handler())
    late = text_event("late", user_id="U1", timestamp=5_000)
    early = text_event("early", user_id="U1", timestamp=4_000)
    tie_first = text_event("tie1", user_id="U2", timestamp=7_000)
    tie_last = text_event("tie2", user_id="U2", timestamp=7_000)

    driver.handle(handler, *body_of(late, early, tie_first, tie_last))

    assert sorted(sent_tokens(fake)) == sorted([token_of(late), token_of(tie_last)])


def test_without_coalescing_each_event_gets_its_request(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = with_text_handler(new_handler(coalesce=False))
    burst = [text_event(str(i), user_id="U1") for i in range(4)]

    driver.handle(handler, *body_of(*burst))
    driver.close(handler)

    assert sorted(sent_tokens(fake)) == sorted(token_of(e) for e in burst)


def test_opted_out_events_do_not_lend_their_token_to_the_chat(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    """The newest *opted-in* token is sent: an opted-out newer message stays unread."""
    handler = new_handler()

    @handler.add(
        MessageEvent,
        message=TextMessageContent,
        mark_as_read=lambda event: event.message.text != "private",
    )
    def on_text(event: Any) -> None:
        pass

    public, private = text_event("public", user_id="U1"), text_event("private", user_id="U1")
    driver.handle(handler, *body_of(public, private))
    driver.close(handler)

    assert sent_tokens(fake) == [token_of(public)]


# -- across bodies ------------------------------------------------------------


def test_a_token_older_than_the_marked_one_is_not_sent(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = with_text_handler(new_handler())
    newer = text_event("newer", user_id="U1", timestamp=2_000)
    older = text_event("older", user_id="U1", timestamp=1_000, redelivery=True)

    driver.handle(handler, *body_of(newer))
    driver.handle(handler, *body_of(older))

    assert sent_tokens(fake) == [token_of(newer)]
    assert handler.stats().already_read == 1


def test_a_newer_message_supersedes_an_older_one_in_backoff(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    # The older mark fails once, then backs off for long; the newer message
    # arrives meanwhile and its success must end the older retry for good.
    handler = with_text_handler(new_handler(wait_timeout=0.05, backoff_initial=60.0, jitter_seed=1))
    fake.script(TOKEN_PATH, 503)
    older = text_event("older", user_id="U1", timestamp=1_000)
    newer = text_event("newer", user_id="U1", timestamp=2_000)

    driver.handle(handler, *body_of(older))  # released by wait_timeout
    fake.wait_for_requests(1, path=TOKEN_PATH)
    driver.handle(handler, *body_of(newer))
    driver.close(handler, 5.0)

    assert [(r.json, r.status) for r in fake.mark_requests()] == [
        ({"markAsReadToken": token_of(older)}, 503),
        ({"markAsReadToken": token_of(newer)}, 200),
    ]
    stats = handler.stats()
    assert (stats.superseded, stats.failed, stats.marked) == (1, 0, 1)


def test_waiters_of_an_older_body_are_released_by_the_newer_success(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler(wait_timeout=30.0, backoff_initial=60.0, jitter_seed=1)
    fake.script(TOKEN_PATH, 503)
    older = text_event("older", user_id="U1", timestamp=1_000)
    newer = text_event("newer", user_id="U1", timestamp=2_000)
    outcomes: dict[str, Any] = {}

    @handler.add(MessageEvent, message=TextMessageContent)
    def on_text(event: Any) -> None:
        outcomes[event.message.text] = time.monotonic()

    first = threading.Thread(target=driver.handle, args=(handler, *body_of(older)))
    first.start()
    fake.wait_for_requests(1, path=TOKEN_PATH)  # the older mark failed; it now backs off
    driver.handle(handler, *body_of(newer))
    first.join(timeout=10)

    assert not first.is_alive()
    assert set(outcomes) == {"older", "newer"}
    assert mark_answered_before(fake, {token_of(newer)}, outcomes["older"])
    assert len(fake.mark_requests()) == 2


# -- retries ------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_retryable_statuses_are_retried_until_marked(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory, status: int
) -> None:
    started: dict[str, float] = {}
    handler = with_text_handler(new_handler(**FAST_RETRIES), started=started)
    fake.script(TOKEN_PATH, status, status)
    event = text_event(user_id="U1")

    driver.handle(handler, *body_of(event))

    assert [r.status for r in fake.mark_requests()] == [status, status, 200]
    assert mark_answered_before(fake, {token_of(event)}, started[token_of(event)])
    assert handler.stats().retried == 2


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Fault.drop(), id="dropped"),
        pytest.param(Fault.reset(), id="reset"),
        pytest.param(Fault.hang(), id="timeout"),
    ],
)
def test_no_answer_is_retried_like_a_5xx(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory, fault: Fault
) -> None:
    handler = with_text_handler(new_handler(request_timeout=0.2, wait_timeout=5.0, **FAST_RETRIES))
    fake.script(TOKEN_PATH, fault)
    event = text_event(user_id="U1")

    driver.handle(handler, *body_of(event))

    assert fake.marked_tokens() == [token_of(event)]
    assert handler.stats().retried == 1


def test_connection_refused_is_retried_then_reported(driver: Driver) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    failures: list[MarkFailure] = []
    ran: list[str] = []
    handler = WebhookHandler(
        SECRET,
        configuration=Configuration(host=f"http://127.0.0.1:{port}", access_token="unused"),
        max_attempts=3,
        on_failure=failures.append,
        **FAST_RETRIES,
    )
    handler.add(MessageEvent, message=TextMessageContent)(lambda event: ran.append("ran"))

    driver.handle(handler, *body_of(text_event(user_id="U1")))
    driver.close(handler)

    assert ran == ["ran"]
    assert [(f.status, f.attempts) for f in failures] == [(None, 3)]
    assert handler.stats().requests == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413])
def test_other_4xx_are_final(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory, status: int
) -> None:
    failures: list[MarkFailure] = []
    started: dict[str, float] = {}
    handler = with_text_handler(
        new_handler(on_failure=failures.append, **FAST_RETRIES), started=started
    )
    fake.script(TOKEN_PATH, status)
    event = text_event(user_id="U1")

    driver.handle(handler, *body_of(event))
    handler.marker.flush()  # on_failure runs on its own thread: flush waits for it

    assert [r.status for r in fake.mark_requests()] == [status]
    assert token_of(event) in started  # a failed mark never stops the handler
    assert len(failures) == 1
    assert failures[0].status == status
    assert failures[0].attempts == 1
    assert failures[0].request_id == fake.mark_requests()[0].request_id
    assert handler.stats().failed == 1


def test_attempts_are_bounded(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = with_text_handler(new_handler(max_attempts=3, **FAST_RETRIES))
    fake.script(TOKEN_PATH, *[503] * 10)

    driver.handle(handler, *body_of(text_event(user_id="U1")))

    assert [r.status for r in fake.mark_requests()] == [503, 503, 503]
    assert handler.stats().failed == 1


def test_no_attempt_starts_after_the_retry_deadline(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = with_text_handler(
        new_handler(max_attempts=1000, retry_deadline=1.5, backoff_initial=0.05, backoff_max=0.05)
    )
    fake.script(TOKEN_PATH, *[503] * 1000)

    driver.handle(handler, *body_of(text_event(user_id="U1")))
    driver.close(handler, 10.0)

    marks = fake.mark_requests()
    assert handler.stats().failed == 1
    # The bot starts no attempt after 1.5 s; the margin covers loopback delivery.
    assert marks[-1].received_at - marks[0].received_at <= 1.5 + 0.25
    assert 1 < len(marks) < 1000


def test_retry_after_is_honoured(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = with_text_handler(new_handler(wait_timeout=5.0, **FAST_RETRIES))
    fake.script(TOKEN_PATH, Fault.status(429, retry_after="1"))

    driver.handle(handler, *body_of(text_event(user_id="U1")))

    first, second = fake.mark_requests()
    assert (first.status, second.status) == (429, 200)
    assert first.responded_at is not None
    assert second.received_at - first.responded_at >= 0.9  # a lower bound: sleeps never end early


def test_retry_after_beyond_the_deadline_gives_up(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = with_text_handler(new_handler(retry_deadline=2.0))
    fake.script(TOKEN_PATH, Fault.status(429, retry_after="3600"))

    driver.handle(handler, *body_of(text_event(user_id="U1")))

    assert [r.status for r in fake.mark_requests()] == [429]
    assert handler.stats().failed == 1


# -- waiting ------------------------------------------------------------------


def test_wait_timeout_bounds_the_whole_body_not_each_handler(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    started: dict[str, float] = {}
    handler = with_text_handler(
        new_handler(wait_timeout=0.3, request_timeout=10.0), started=started
    )
    events = [text_event(str(i), user_id=f"U{i}") for i in range(5)]
    for _ in events:
        fake.script(TOKEN_PATH, Fault.hang())

    began = time.monotonic()
    driver.handle(handler, *body_of(*events))
    took = time.monotonic() - began

    assert len(started) == 5
    assert took < 5 * 0.3  # waiting per handler would take at least 1.5 s
    assert handler.stats().timed_out == 5
    arrivals = fake.wait_for_requests(5, path=TOKEN_PATH, completed=False)
    assert max(r.received_at for r in arrivals) <= min(started.values())


def test_marking_goes_on_after_the_handler_is_released(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = with_text_handler(new_handler(wait_timeout=0.0, backoff_initial=0.2, backoff_max=0.2))
    fake.script(TOKEN_PATH, 503, 503)
    event = text_event(user_id="U1")

    driver.handle(handler, *body_of(event))
    fake.wait_for_requests(3, path=TOKEN_PATH)

    assert fake.marked_tokens() == [token_of(event)]


def test_the_timeout_releases_a_handler_whose_request_is_still_queued(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    # One request slot; chat A's request hangs in it until its 0.5 s attempt
    # timeout.  B's request cannot go out before then, but wait_timeout bounds
    # B's handler all the same (issue 9, item 2); B is marked later.
    started: dict[str, float] = {}
    handler = with_text_handler(
        new_handler(wait_timeout=0.05, max_concurrency=1, request_timeout=0.5, **FAST_RETRIES),
        started=started,
    )
    a, b = text_event("a", user_id="UA"), text_event("b", user_id="UB")
    fake.script(TOKEN_PATH, Fault.hang())

    driver.handle(handler, *body_of(a, b))

    first = fake.wait_for_requests(1, path=TOKEN_PATH, completed=False)[0]
    assert first.json == {"markAsReadToken": token_of(a)}
    assert started[token_of(b)] - first.received_at < 0.4  # not held until the slot frees
    assert started[token_of(a)] < started[token_of(b)]
    # Only A's first request hangs; closing drains the queued mark of B.
    driver.close(handler, 5.0)
    assert token_of(b) in fake.marked_tokens()  # the queued mark went on afterwards


def test_requests_in_flight_are_bounded(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = with_text_handler(new_handler(max_concurrency=2, wait_timeout=10.0))
    events = [text_event(str(i), user_id=f"U{i}") for i in range(6)]
    for _ in events:
        fake.script(TOKEN_PATH, Fault.delay(0.1))

    driver.handle(handler, *body_of(*events))

    marks = fake.mark_requests()
    assert len(marks) == 6
    for mark in marks:
        overlapping = [
            other
            for other in marks
            if other.received_at <= mark.received_at < (other.responded_at or 0.0)
        ]
        assert len(overlapping) <= 2


# -- closing ------------------------------------------------------------------


def test_close_drains_pending_retries(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = with_text_handler(new_handler(wait_timeout=0.0, backoff_initial=0.2, backoff_max=0.2))
    fake.script(TOKEN_PATH, 503)
    event = text_event(user_id="U1")

    driver.handle(handler, *body_of(event))
    driver.close(handler, 10.0)

    assert fake.marked_tokens() == [token_of(event)]


def test_close_cancels_what_the_grace_period_cannot_drain(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = with_text_handler(new_handler(wait_timeout=0.0, backoff_initial=60.0, jitter_seed=3))
    fake.script(TOKEN_PATH, 503)

    driver.handle(handler, *body_of(text_event(user_id="U1")))
    fake.wait_for_requests(1, path=TOKEN_PATH)
    began = time.monotonic()
    driver.close(handler, 0.1)

    assert time.monotonic() - began < 5.0
    assert handler.stats().failed == 1
    with pytest.raises(RuntimeError, match="closed"):
        driver.handle(handler, *body_of(text_event(user_id="U1")))


def test_outcomes_reach_manual_callers(fake: FakeLinePlatform, new_handler: HandlerFactory) -> None:
    handler = new_handler()
    fake.reject_token("bad-token")
    good = text_event(user_id="U1")
    bad = message_event(
        {"type": "text", "id": "1", "text": "x", "quoteToken": "q", "markAsReadToken": "bad-token"},
        user_id="U2",
    )
    follow = {"type": "follow"}
    assert handler.marker.mark([good, bad, follow]) == [
        Outcome.MARKED,
        Outcome.FAILED,
        Outcome.SKIPPED,
    ]
