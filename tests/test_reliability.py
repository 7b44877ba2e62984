"""Outages, throttling, refusals, duplicates and shutdown: the fault matrix beyond plain retries."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from line_markread import Marker, MarkFailure
from line_markread.testing import FakeLinePlatform, Fault, message_event, text_event

from .support import (
    FAST_RETRIES,
    TOKEN_PATH,
    USER_PATH,
    Driver,
    HandlerFactory,
    body_of,
    sent_tokens,
    token_of,
    with_text_handler,
)

# -- 429 ----------------------------------------------------------------------


def test_a_429_pauses_its_endpoint_for_the_whole_channel(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = with_text_handler(
        new_handler(rate_limit_cooldown=0.3, wait_timeout=0.05, **FAST_RETRIES)
    )
    fake.script(TOKEN_PATH, 429)
    a, b = text_event(user_id="UA"), text_event(user_id="UB")

    driver.handle(handler, *body_of(a))
    (throttled,) = fake.wait_for_requests(1, path=TOKEN_PATH)
    driver.handle(handler, *body_of(b))  # another chat, during the pause
    driver.close(handler, 5.0)

    assert throttled.responded_at is not None
    later = [r for r in fake.mark_requests() if r is not fake.mark_requests()[0]]
    assert sorted(r.json["markAsReadToken"] for r in later) == sorted([token_of(a), token_of(b)])  # type: ignore[index]  # JSON
    assert min(r.received_at for r in later) - throttled.responded_at >= 0.25


# -- 401 / 403 ----------------------------------------------------------------


def test_a_401_latches_every_endpoint_with_one_error(
    fake: FakeLinePlatform,
    driver: Driver,
    new_handler: HandlerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []
    handler = with_text_handler(new_handler(auth_cooldown=0.5, **FAST_RETRIES), ran=ran)
    fake.script(TOKEN_PATH, 401)

    with caplog.at_level(logging.WARNING, logger="line_markread"):
        for i in range(5):
            driver.handle(handler, *body_of(text_event(str(i), user_id=f"U{i}")))
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]

    assert ran == ["0", "1", "2", "3", "4"]
    assert [r.status for r in fake.mark_requests()] == [401]
    assert len(errors) == 1
    assert "LINE_CHANNEL_ACCESS_TOKEN" in errors[0].getMessage()
    assert handler.stats().latched == 4
    assert handler.stats().failed == 5
    # That the latch lifts after auth_cooldown is proven on an injected clock in
    # test_policies.py (test_the_auth_latch_lasts_its_cooldown_then_lifts).


def test_a_403_latches_only_the_endpoint_that_refused(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    fake.user_api_enabled = False
    handler = new_handler(auth_cooldown=60.0)
    handler.default()(lambda event: None)
    tokenless = [
        message_event({"type": "hologram", "id": str(i)}, user_id=f"U{i}") for i in range(3)
    ]
    with_token = text_event(user_id="U7")

    for event in tokenless:
        driver.handle(handler, *body_of(event))
    driver.handle(handler, *body_of(with_token))

    assert [(r.path, r.status) for r in fake.mark_requests()] == [
        (USER_PATH, 403),
        (TOKEN_PATH, 200),
    ]
    assert handler.stats().latched == 2


def test_exhausted_attempts_log_one_warning_with_status_and_request_id(
    fake: FakeLinePlatform,
    driver: Driver,
    new_handler: HandlerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []
    handler = with_text_handler(new_handler(max_attempts=3, **FAST_RETRIES), ran=ran)
    fake.script(TOKEN_PATH, 503, 503, 503)

    with caplog.at_level(logging.WARNING, logger="line_markread"):
        driver.handle(handler, *body_of(text_event("x", user_id="U1")))

    (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    last = fake.mark_requests()[-1]
    assert "503" in warning.getMessage()
    assert last.request_id in warning.getMessage()
    assert ran == ["x"]


def test_an_endpoint_that_hangs_releases_the_handler_and_gives_up_by_the_deadline(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    ran: list[str] = []
    handler = with_text_handler(
        new_handler(
            wait_timeout=0.2,
            request_timeout=0.2,
            retry_deadline=1.0,
            max_attempts=100,
            **FAST_RETRIES,
        ),
        ran=ran,
    )
    fake.script(TOKEN_PATH, *[Fault.hang()] * 100)

    began = time.monotonic()
    driver.handle(handler, *body_of(text_event("x", user_id="U1")))
    released = time.monotonic() - began
    driver.close(handler, 10.0)  # returns once the mark has given up
    gave_up = time.monotonic() - began

    assert ran == ["x"]
    assert released < 1.0  # wait_timeout (0.2 s), not the retry deadline
    assert handler.stats().failed == 1
    assert handler.stats().timed_out == 1
    # No attempt starts after 1 s; the last one may take its 0.2 s timeout.
    assert gave_up < 1.0 + 0.2 + 1.0


# -- the retry budget ----------------------------------------------------------


def test_a_sustained_outage_spends_the_retry_budget_and_successes_refill_it(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = with_text_handler(new_handler(retry_budget=10, max_attempts=5, **FAST_RETRIES))
    fake.script(TOKEN_PATH, *[503] * 40)

    for i in range(8):  # 8 first tries, but only 2 retries in all (10 tokens, 5 each)
        driver.handle(handler, *body_of(text_event(user_id=f"Uout{i}")))
    during = handler.stats()
    assert during.requests == 8 + 2
    assert during.budget_exhausted == 8  # each mark ended on an empty budget
    assert during.failed == 8

    fake.reset()  # LINE recovers
    for i in range(10):  # ten first-try successes give back ten tokens
        driver.handle(handler, *body_of(text_event(user_id=f"Uok{i}")))
    fake.script(TOKEN_PATH, 503, 503, 503)
    driver.handle(handler, *body_of(text_event(user_id="Uagain")))
    after = handler.stats()
    assert after.retried - during.retried == 2
    assert after.budget_exhausted - during.budget_exhausted == 1


# -- odd answers -------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Fault.status(502, body=b"<html>Bad Gateway</html>"), id="html"),
        pytest.param(Fault.status(500, body=b""), id="empty"),
        pytest.param(Fault.status(503, body=b'{"message": 5}'), id="odd-json"),
    ],
)
def test_non_json_error_bodies_are_classified_by_status(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory, fault: Fault
) -> None:
    handler = with_text_handler(new_handler(**FAST_RETRIES))
    fake.script(TOKEN_PATH, fault)
    event = text_event(user_id="U1")

    driver.handle(handler, *body_of(event))

    assert fake.marked_tokens() == [token_of(event)]


def test_a_final_error_with_a_non_json_body_is_reported_without_the_token(
    fake: FakeLinePlatform,
    driver: Driver,
    new_handler: HandlerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures: list[MarkFailure] = []
    handler = with_text_handler(new_handler(on_failure=failures.append))
    fake.script(TOKEN_PATH, Fault.status(400, body=b"nope"))
    event = text_event(user_id="U1")

    with caplog.at_level(logging.DEBUG, logger="line_markread"):
        driver.handle(handler, *body_of(event))
        handler.marker.flush()  # on_failure runs on its own thread: flush waits for it

    assert [(f.status, f.reason) for f in failures] == [(400, "nope")]
    assert token_of(event) not in caplog.text
    assert token_of(event) not in repr(failures)


# -- duplicates ----------------------------------------------------------------


def test_a_redelivered_event_is_not_marked_twice(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    ran: list[str] = []
    handler = with_text_handler(new_handler(), ran=ran)
    event = text_event("once", user_id="U1")
    again = dict(event, deliveryContext={"isRedelivery": True})

    driver.handle(handler, *body_of(event))
    driver.handle(handler, *body_of(again))

    # The SDK would run the handler twice; the plugin runs it once (tests/test_once.py).
    assert ran == ["once"]
    assert handler.stats().already_handled == 1
    assert handler.stats().duplicates == 1
    assert sent_tokens(fake) == [token_of(event)]


def test_a_duplicate_of_a_failed_mark_is_tried_again(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = with_text_handler(new_handler())
    fake.script(TOKEN_PATH, 400)
    event = text_event(user_id="U1")

    driver.handle(handler, *body_of(event))
    driver.handle(handler, *body_of(event))

    assert [r.status for r in fake.mark_requests()] == [400, 200]


# -- processes that never close -------------------------------------------------

NEVER_CLOSES = textwrap.dedent(
    """
    import asyncio, os, sys
    from linebot.v3.messaging import Configuration
    from linebot.v3.webhooks import MessageEvent, TextMessageContent
    from line_markread import WebhookHandler
    from line_markread.testing import Fault, signed_body, text_event

    config = Configuration(host=os.environ["LINE_API_HOST"], access_token="fake-access-token")
    handler = WebhookHandler("secret", configuration=config, wait_timeout=0.0)
    handler.add(MessageEvent, message=TextMessageContent)(lambda event: print("handled"))
    body, signature = signed_body(text_event(user_id="U1"), channel_secret="secret")
    if sys.argv[1] == "sync":
        handler.handle(body, signature)
    else:
        async def main():
            await handler.handle_async(body, signature)
        asyncio.run(main())
    """
)


@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_bot_that_never_closes_exits_quietly(
    fake: FakeLinePlatform, tmp_path: Path, path: str
) -> None:
    script = tmp_path / "bot.py"
    script.write_text(NEVER_CLOSES)
    fake.script(TOKEN_PATH, Fault.delay(0.3))  # still pending when the script ends
    done = subprocess.run(
        [sys.executable, "-W", "error", "-X", "dev", str(script), path],
        env={**os.environ, "LINE_API_HOST": fake.url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert (done.returncode, done.stdout, done.stderr) == (0, "handled\n", "")


# -- a slow but healthy LINE (issue 16.20) ---------------------------------------------


def test_a_slow_but_healthy_api_costs_one_request_per_mark_after_warm_up(
    fake: FakeLinePlatform,
) -> None:
    # Every answer takes 1.2 x request_timeout: before, each first attempt timed out and every
    # mark cost two requests.  Once a success showed how slow LINE is, first attempts wait.
    fake.script(TOKEN_PATH, *[Fault.delay(0.6)] * 100)
    with Marker(configuration=fake.configuration(), request_timeout=0.5, **FAST_RETRIES) as marker:
        marker.mark([text_event("warm-up", user_id="U" + "f" * 32)], wait=False)
        marker.flush()
        warmed = marker.stats()
        for batch in range(4):
            events = [text_event(str(i), user_id=f"U{batch}{i:031x}") for i in range(5)]
            marker.mark(events, wait=False)
            marker.flush()
        stats = marker.stats()
    assert warmed.marked == 1
    marks, requests = stats.marked - warmed.marked, stats.requests - warmed.requests
    assert (marks, stats.failed) == (20, 0)
    assert requests <= 1.2 * marks, f"{requests} requests for {marks} marks"
