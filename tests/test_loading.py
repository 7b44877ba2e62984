"""The loading animation (``loading=``), over real HTTP, for handle() and handle_async()."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import linebot.v3
import pytest
from linebot.v3.webhook import WebhookParser
from linebot.v3.webhooks import MessageEvent, TextMessageContent

from line_markread import Marker, WebhookHandler, read_first
from line_markread.testing import (
    LOADING_PATH,
    REPLY_PATH,
    TOKEN_MARK_AS_READ_PATH,
    FakeLinePlatform,
    Fault,
    RecordedRequest,
    WebhookFactory,
    assert_loading_before_replied,
    signed_body,
    text_event,
)

from .support import SECRET, Driver, HandlerFactory, mark_answered_before


def reply(fake: FakeLinePlatform, event: Any, text: str) -> None:
    """A reply as a bot makes it (blocking; fine from a handler's thread)."""
    request = urllib.request.Request(
        fake.url + REPLY_PATH,
        data=json.dumps(
            {"replyToken": event.reply_token, "messages": [{"type": "text", "text": text}]}
        ).encode(),
        headers={
            "Authorization": f"Bearer {fake.access_token}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200


def slow(driver: Driver, seconds: float, then: Callable[[Any], None]) -> Callable[..., Any]:
    """A handler that takes *seconds*, then calls *then*: async under handle_async.

    A sync handler run inline by handle_async would block the loop that keeps
    the animation up, as it would block everything else there.
    """
    if driver.name == "async":

        async def on_text_async(event: Any) -> None:
            await asyncio.sleep(seconds)
            then(event)

        return on_text_async

    def on_text(event: Any) -> None:
        time.sleep(seconds)
        then(event)

    return on_text


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Check *condition* until it holds (a generous *timeout*: the machine may be loaded)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def loading(fake: FakeLinePlatform) -> list[RecordedRequest]:
    return fake.loading_requests()


# -- registration ------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False, 5, 20, 60])
def test_valid_loading_values_register(fake: FakeLinePlatform, value: object) -> None:
    with WebhookHandler(SECRET, configuration=fake.configuration()) as handler:
        handler.add(MessageEvent, message=TextMessageContent, loading=value)(lambda e: None)  # type: ignore[arg-type]  # checking what is accepted
        handler.default(loading=value)(lambda e: None)  # type: ignore[arg-type]  # idem


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (1, ValueError),  # not True: seconds, and not a multiple of 5
        (0, ValueError),
        (4, ValueError),
        (7, ValueError),
        (65, ValueError),
        (-5, ValueError),
        (None, TypeError),
        ("20", TypeError),
        (20.0, TypeError),
    ],
)
def test_bad_loading_values_raise_at_registration(
    fake: FakeLinePlatform, value: object, error: type[Exception]
) -> None:
    with WebhookHandler(SECRET, configuration=fake.configuration()) as handler:
        with pytest.raises(error, match="loading"):
            handler.add(MessageEvent, message=TextMessageContent, loading=value)  # type: ignore[arg-type]  # the point
        with pytest.raises(error, match="loading"):
            handler.default(loading=value)  # type: ignore[arg-type]  # the point
        assert handler.stats() == type(handler.stats())()


@pytest.mark.parametrize("option", ["loading_wait", "loading_limit", "loading_margin"])
def test_bad_loading_settings_raise_at_construction(fake: FakeLinePlatform, option: str) -> None:
    options: dict[str, Any] = {option: -1}
    with pytest.raises(ValueError, match=option):
        WebhookHandler(SECRET, configuration=fake.configuration(), **options)
    with pytest.raises(ValueError, match="loading_margin"):
        WebhookHandler(SECRET, configuration=fake.configuration(), loading_margin=5)


# -- the sequence ------------------------------------------------------------


def test_mark_then_loading_then_handler_then_reply_in_a_one_to_one_chat(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()
    started: list[float] = []

    def answer(event: Any) -> None:
        reply(fake, event, "done")

    inner = slow(driver, 0.05, answer)
    if driver.name == "async":

        async def on_text(event: Any) -> None:
            started.append(time.monotonic())
            await inner(event)

    else:

        def on_text(event: Any) -> None:  # type: ignore[misc]  # the sync twin
            started.append(time.monotonic())
            inner(event)

    handler.add(MessageEvent, message=TextMessageContent, loading=True)(on_text)
    event = text_event("what is the answer?")
    driver.handle(handler, *signed_body(event, channel_secret=SECRET))

    (mark,) = [r for r in fake.requests() if r.path == TOKEN_MARK_AS_READ_PATH]
    (start,) = loading(fake)
    (answered,) = [r for r in fake.requests() if r.path == REPLY_PATH]
    assert start.json == {"chatId": event["source"]["userId"], "loadingSeconds": 20}
    assert start.status == 202
    assert start.authorized
    assert mark.status == 200
    assert mark.responded_at is not None
    assert start.responded_at is not None
    # Read, then the animation (accepted before the handler started), then the reply.
    assert mark.responded_at <= start.received_at
    assert start.responded_at <= started[0] <= answered.received_at
    stats = handler.stats()
    assert (stats.loading_started, stats.loading_failed, stats.loading_skipped) == (1, 0, 0)


def test_no_loading_in_groups_and_rooms_and_the_handler_still_runs(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()
    ran: list[str] = []
    handler.add(MessageEvent, message=TextMessageContent, loading=10)(
        lambda event: ran.append(event.message.text)
    )
    body = signed_body(
        text_event("in a group", group_id="C" + "1" * 32),
        text_event("in a room", room_id="R" + "2" * 32),
        channel_secret=SECRET,
    )
    driver.handle(handler, *body)
    assert ran == ["in a group", "in a room"]
    assert loading(fake) == []
    assert len([r for r in fake.requests() if r.path == TOKEN_MARK_AS_READ_PATH]) == 2
    assert handler.stats().loading_skipped == 2


def test_handlers_without_loading_send_none(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()
    handler.add(MessageEvent, message=TextMessageContent)(lambda event: None)
    driver.handle(handler, *signed_body(text_event("hi"), channel_secret=SECRET))
    assert loading(fake) == []
    stats = handler.stats()
    assert (stats.loading_started, stats.loading_failed, stats.loading_skipped) == (0, 0, 0)


def test_refreshed_while_the_handler_outlasts_it_and_never_after_it_returns(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    # loading=5 and a 4.5 s margin: started again every 0.5 s while the handler runs.
    handler = new_handler(loading_margin=4.5)
    returned: list[float] = []
    handler.add(MessageEvent, message=TextMessageContent, loading=5)(
        slow(driver, 1.3, lambda event: returned.append(time.monotonic()))
    )
    driver.handle(handler, *signed_body(text_event("slow one"), channel_secret=SECRET))
    starts = loading(fake)
    assert 2 <= len(starts) <= 4, [round(r.received_at - starts[0].received_at, 2) for r in starts]
    assert all(r.json == {"chatId": starts[0].json["chatId"], "loadingSeconds": 5} for r in starts)  # type: ignore[index]  # JSON object
    # Two more refresh intervals: nothing is started once the handler has returned.
    time.sleep(1.0)
    assert [r for r in loading(fake) if r.received_at > returned[0]] == []
    assert handler.stats().loading_started == len(loading(fake))


def test_no_start_after_loading_limit_however_long_the_handler_runs(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    # Starts due at 0, 0.5, 1.0, ...: the limit of 0.6 s allows the first two only.
    handler = new_handler(loading_margin=4.5, loading_limit=0.6)
    handler.add(MessageEvent, message=TextMessageContent, loading=5)(slow(driver, 1.5, print))
    driver.handle(handler, *signed_body(text_event("very slow"), channel_secret=SECRET))
    assert len(loading(fake)) == 2


# -- failures ----------------------------------------------------------------


def test_a_hanging_loading_request_delays_the_handler_by_loading_wait_at_most(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler(loading_wait=0.2, request_timeout=5.0)
    fake.script(LOADING_PATH, Fault.hang())
    started: list[float] = []
    handler.add(MessageEvent, message=TextMessageContent, loading=True)(
        lambda event: started.append(time.monotonic())
    )
    driver.handle(handler, *signed_body(text_event("hi"), channel_secret=SECRET))
    (start,) = fake.wait_for_requests(1, path=LOADING_PATH, completed=False)
    assert started, "the handler ran"
    # Well before LINE would have answered (never) or the request timed out (5 s).
    assert started[0] - start.received_at < 2.0


def test_a_failing_loading_request_is_retried_once_then_counted_and_logged_once(
    fake: FakeLinePlatform,
    driver: Driver,
    new_handler: HandlerFactory,
    no_backoff: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = new_handler()
    fake.script(LOADING_PATH, 500, 500, 400, 500, 500)
    ran: list[str] = []
    handler.add(MessageEvent, message=TextMessageContent, loading=True)(
        lambda event: ran.append(event.message.text)
    )
    with caplog.at_level(logging.WARNING, logger="line_markread"):
        driver.handle(handler, *signed_body(text_event("one"), channel_secret=SECRET))
        driver.handle(handler, *signed_body(text_event("two"), channel_secret=SECRET))
        driver.handle(handler, *signed_body(text_event("three"), channel_secret=SECRET))
    assert ran == ["one", "two", "three"]
    # 500 then 500 (one retry); 400 (final, no retry); 500 then 500.
    assert [r.status for r in fake.wait_for_requests(5, path=LOADING_PATH)] == [
        500,
        500,
        400,
        500,
        500,
    ]
    stats = handler.stats()
    assert (stats.loading_started, stats.loading_failed) == (0, 3)
    warnings = [r for r in caplog.records if "loading animation failed" in r.getMessage()]
    assert len(warnings) == 1, "one WARNING per burst of failures"
    assert fake.access_token not in caplog.text

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="line_markread"):
        driver.handle(handler, *signed_body(text_event("four"), channel_secret=SECRET))
    assert handler.stats().loading_started == 1
    assert "succeed again" in caplog.text


def test_a_401_on_loading_latches_the_channel_and_the_handler_still_runs(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()
    fake.script(LOADING_PATH, 401)
    ran: list[str] = []
    handler.add(MessageEvent, message=TextMessageContent, loading=True)(
        lambda event: ran.append(event.message.text)
    )
    driver.handle(handler, *signed_body(text_event("one"), channel_secret=SECRET))
    driver.handle(handler, *signed_body(text_event("two"), channel_secret=SECRET))
    assert ran == ["one", "two"]
    # The 401 latched the token: neither the second animation nor its mark was sent.
    assert [r.status for r in loading(fake)] == [401]
    assert handler.stats().loading_failed == 2


# -- by hand -----------------------------------------------------------------


def test_show_loading_by_hand(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()
    answers: list[bool] = []
    if driver.name == "async":

        async def on_text(event: Any) -> None:
            answers.append(await handler.ashow_loading(event, 10))

    else:

        def on_text(event: Any) -> None:  # type: ignore[misc]  # the sync twin
            answers.append(handler.show_loading(event, 10))

    handler.add(MessageEvent, message=TextMessageContent)(on_text)
    body = signed_body(
        text_event("1:1"), text_event("group", group_id="C" + "3" * 32), channel_secret=SECRET
    )
    driver.handle(handler, *body)
    assert answers == [True, False]
    (start,) = loading(fake)
    assert start.json["loadingSeconds"] == 10  # type: ignore[index]  # JSON object
    stats = handler.stats()
    assert (stats.loading_started, stats.loading_skipped) == (1, 1)


@pytest.mark.parametrize(
    ("value", "error"), [(False, ValueError), (3, ValueError), (None, TypeError)]
)
def test_show_loading_checks_its_seconds(
    fake: FakeLinePlatform, value: object, error: type[Exception]
) -> None:
    with (
        WebhookHandler(SECRET, configuration=fake.configuration()) as handler,
        pytest.raises(error),
    ):
        handler.show_loading(object(), value)  # type: ignore[arg-type]  # the point
    assert fake.requests() == []


# -- the test kit's check ------------------------------------------------------


def test_assert_loading_before_replied_passes_for_a_loading_bot_in_chats_and_groups(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()
    handler.add(MessageEvent, message=TextMessageContent, loading=True)(
        slow(driver, 0.01, lambda event: reply(fake, event, "ok"))
    )
    webhook = WebhookFactory(SECRET)
    signed = webhook(text_event("1:1"), text_event("group", group_id="C" + "4" * 32))
    driver.handle(handler, signed.body, signed.signature)
    webhook.assert_loading_before_replied(fake)
    assert_loading_before_replied(fake, webhook.events, replies=2)


def test_assert_loading_before_replied_fails_without_an_animation_or_with_a_late_one(
    fake: FakeLinePlatform,
) -> None:
    handler = WebhookHandler(SECRET, configuration=fake.configuration())

    def reply_then_show(event: Any) -> None:
        reply(fake, event, "too early")
        if event.message.text == "late":
            handler.show_loading(event, 5)

    handler.add(MessageEvent, message=TextMessageContent)(reply_then_show)
    webhook = WebhookFactory(SECRET)
    signed = webhook(text_event("none"), text_event("late"))
    with handler:
        handler.handle(signed.body, signed.signature)
    assert len(loading(fake)) == 1
    with pytest.raises(AssertionError, match="2 replies came without a loading animation"):
        webhook.assert_loading_before_replied(fake)


def test_assert_loading_before_replied_fails_when_the_mark_came_after_the_reply(
    fake: FakeLinePlatform,
) -> None:
    # The SDK's own handler: no mark at all, an animation, then the reply.
    sdk = linebot.v3.WebhookHandler(SECRET)

    def on_text(event: Any) -> None:
        with WebhookHandler(SECRET, configuration=fake.configuration()) as helper:
            helper.show_loading(event)
        reply(fake, event, "unread")

    sdk.add(MessageEvent, message=TextMessageContent)(on_text)

    webhook = WebhookFactory(SECRET)
    signed = webhook(text_event("hi"))
    sdk.handle(signed.body, signed.signature)
    with pytest.raises(AssertionError, match="before the message was marked read"):
        webhook.assert_loading_before_replied(fake)


# -- @read_first(loading=...) ------------------------------------------------------


def _sequence_holds(fake: FakeLinePlatform, started: float, seconds: int) -> None:
    (mark,) = [r for r in fake.requests() if r.path == TOKEN_MARK_AS_READ_PATH]
    (start,) = loading(fake)
    assert mark.responded_at is not None
    assert start.responded_at is not None
    assert mark.responded_at <= start.received_at
    assert start.responded_at <= started
    assert start.json["loadingSeconds"] == seconds  # type: ignore[index]  # JSON object


def test_read_first_loading_on_the_sdks_own_handler(fake: FakeLinePlatform) -> None:
    marker = Marker(configuration=fake.configuration())
    sdk = linebot.v3.WebhookHandler(SECRET)
    started: list[float] = []

    def on_text(event: Any) -> None:
        started.append(time.monotonic())

    sdk.add(MessageEvent, message=TextMessageContent)(
        read_first(marker=marker, loading=10)(on_text)
    )
    with marker:
        sdk.handle(*signed_body(text_event("hi"), channel_secret=SECRET))
        assert marker.stats().loading_started == 1
    _sequence_holds(fake, started[0], 10)


def test_read_first_loading_awaited_directly(fake: FakeLinePlatform) -> None:
    started: list[float] = []

    async def main() -> None:
        async with Marker(configuration=fake.configuration()) as marker:

            async def on_text(event: Any) -> None:
                started.append(time.monotonic())

            wrapped = read_first(marker=marker, loading=True)(on_text)
            (model,) = WebhookParser(SECRET).parse(
                *signed_body(text_event("hi"), channel_secret=SECRET)
            )
            await wrapped(model)

    asyncio.run(main())
    _sequence_holds(fake, started[0], 20)


def test_read_first_loading_on_an_installed_handler(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()
    started: list[float] = []
    handler.add(MessageEvent, message=TextMessageContent)(
        read_first(loading=15)(lambda event: started.append(time.monotonic()))
    )
    driver.handle(handler, *signed_body(text_event("hi"), channel_secret=SECRET))
    _sequence_holds(fake, started[0], 15)
    with pytest.raises(TypeError, match="loading= given both"):
        handler.add(MessageEvent, loading=5)(read_first(loading=15)(lambda event: None))
    with pytest.raises(ValueError, match="loading"):
        read_first(loading=3)


# -- issue 16: closing, the body's time, no start after the handler, 429 per endpoint ----------


CLOSES_WHILE_LOADING = textwrap.dedent(
    """
    import asyncio, gc, logging, os, sys

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)  # asyncio's ERRORs, shown
    from linebot.v3.messaging import Configuration
    from linebot.v3.webhooks import MessageEvent, TextMessageContent
    from line_markread import WebhookHandler
    from line_markread.testing import signed_body, text_event

    path, grace = sys.argv[1], float(sys.argv[2])
    config = Configuration(host=os.environ["LINE_API_HOST"], access_token="fake-access-token")
    handler = WebhookHandler(
        "secret", configuration=config, loading_wait=0.05, request_timeout=10.0, wait_timeout=5.0
    )

    async def on_text_async(event):
        pass

    on_text = (lambda event: None) if path == "sync" else on_text_async
    handler.add(MessageEvent, message=TextMessageContent, loading=True)(on_text)
    events = [text_event(str(i), user_id="U%032x" % i) for i in range(12)]
    body, signature = signed_body(*events, channel_secret="secret")
    if path == "sync":
        handler.handle(body, signature)
        handler.close(grace)
    else:
        async def main():
            await handler.handle_async(body, signature)
            await handler.aclose(grace)
        asyncio.run(main())
    del handler
    gc.collect()
    print("closed", flush=True)
    """
)


@pytest.mark.parametrize("path", ["sync", "async"])
@pytest.mark.parametrize("grace", [0.0, 0.2])
def test_close_while_loading_requests_hang_logs_nothing_and_leaves_no_task(
    fake: FakeLinePlatform, tmp_path: Path, path: str, grace: float
) -> None:
    # Issue 16.8: every animation of the body still has its request on the wire at close.
    script = tmp_path / "bot.py"
    script.write_text(CLOSES_WHILE_LOADING)
    fake.script(LOADING_PATH, *[Fault.hang()] * 12)
    done = subprocess.run(
        [sys.executable, "-W", "default", "-X", "dev", str(script), path, str(grace)],
        env={**os.environ, "LINE_API_HOST": fake.url, "PYTHONASYNCIODEBUG": "0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert len(fake.loading_requests()) == 12
    assert (done.returncode, done.stdout) == (0, "closed\n"), done.stderr
    for complaint in ("Task was destroyed", "Event loop is closed", "Unclosed", "Traceback"):
        assert complaint not in done.stderr, done.stderr


def test_a_body_of_ten_users_with_a_hanging_loading_endpoint_keeps_to_wait_timeout(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    # Issue 16.10: before, each event waited loading_wait in turn (10 x 0.5 s).
    handler = new_handler(wait_timeout=1.0, request_timeout=10.0)
    fake.script(LOADING_PATH, *[Fault.hang()] * 10)
    started: dict[str, float] = {}

    def note(event: Any) -> None:
        started[event.message.mark_as_read_token] = time.monotonic()

    handler.add(MessageEvent, message=TextMessageContent, loading=True)(slow(driver, 0.0, note))
    events = [text_event(str(i), user_id=f"U{i:032x}") for i in range(10)]
    body = signed_body(*events, channel_secret=SECRET)
    began = time.monotonic()
    driver.handle(handler, *body)
    took = time.monotonic() - began

    assert took < 1.0 + 1.5, f"handle took {took:.2f}s"
    assert len(started) == 10
    assert list(started) == [e["message"]["markAsReadToken"] for e in events]  # body order
    starts = fake.wait_for_requests(10, path=LOADING_PATH, completed=False)
    marks = {r.json["markAsReadToken"]: r for r in fake.mark_requests()}  # type: ignore[index]  # JSON
    by_user = {r.json["chatId"]: r for r in starts}  # type: ignore[index]  # JSON
    for event in events:
        mark = marks[event["message"]["markAsReadToken"]]
        start = by_user[event["source"]["userId"]]
        assert mark.responded_at is not None
        # read, then the animation, then the handler
        assert mark.responded_at <= start.received_at
        assert start.received_at <= started[event["message"]["markAsReadToken"]]


def test_a_failed_loading_start_is_not_retried_once_the_handler_returned(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    # Issue 16.11: the first start's 503 comes after the handler replied and returned; the
    # retry it would have earned must not put "typing..." under the answer.
    handler = new_handler(loading_wait=0.1, request_timeout=3.0)
    fake.script(LOADING_PATH, Fault.status(503, delay=1.5), Fault.delay(0.2, then=202))
    returned: list[float] = []

    def answer(event: Any) -> None:
        reply(fake, event, "done")
        returned.append(time.monotonic())

    handler.add(MessageEvent, message=TextMessageContent, loading=True)(slow(driver, 0.0, answer))
    driver.handle(handler, *signed_body(text_event("quick"), channel_secret=SECRET))
    (first, *_) = fake.wait_for_requests(1, path=LOADING_PATH)  # its 503, after the reply
    assert first.status == 503
    assert first.responded_at is not None
    assert returned[0] < first.responded_at
    # The animation's outcome is counted once its last request (a retry, before) is answered.
    wait_until(lambda: handler.stats().loading_failed + handler.stats().loading_started >= 1)
    (answered,) = [r for r in fake.requests() if r.path == REPLY_PATH]
    assert [r for r in fake.loading_requests() if r.received_at > answered.received_at] == []
    assert (handler.stats().loading_failed, handler.stats().loading_started) == (1, 0)


def test_a_429_from_loading_pauses_loading_only_and_marking_goes_on(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    # Issue 16.12: LINE limits each endpoint separately; loading/start's 429 says nothing
    # about mark-as-read.
    handler = new_handler()
    fake.script(LOADING_PATH, Fault.status(429, retry_after="30"))
    started: dict[str, float] = {}

    def note(event: Any) -> None:
        started[event.message.mark_as_read_token] = time.monotonic()

    handler.add(MessageEvent, message=TextMessageContent, loading=True)(slow(driver, 0.0, note))
    a, b = text_event("a", user_id="U" + "a" * 32), text_event("b", user_id="U" + "b" * 32)
    # b's first attempt is answered (503) after a's animation was refused: its retry comes
    # during the loading pause, in the same body.
    fake.script_token(b["message"]["markAsReadToken"], Fault.status(503, delay=0.4))
    later = [text_event(f"c{i}", user_id=f"U{i:032x}") for i in range(3)]
    driver.handle(handler, *signed_body(a, b, channel_secret=SECRET))
    driver.handle(handler, *signed_body(*later, channel_secret=SECRET))

    tokens = [e["message"]["markAsReadToken"] for e in (a, b, *later)]
    assert sorted(fake.marked_tokens()) == sorted(tokens)
    for token in tokens:
        assert mark_answered_before(fake, {token}, started[token]), "read before its handler"
    (refused,) = fake.loading_requests()  # nothing more was sent to the paused endpoint
    assert refused.status == 429
    stats = handler.stats()
    assert stats.marked == 5
    assert stats.loading_started == 0


def test_close_ends_a_show_loading_by_hand_that_hangs(
    fake: FakeLinePlatform,
    driver: Driver,
    new_handler: HandlerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Issue 16.8, by hand: the request is the engine's too, cancelled and awaited at close.
    handler = new_handler(request_timeout=10.0)
    fake.script(LOADING_PATH, Fault.hang())
    answers: list[bool] = []
    if driver.name == "async":

        async def on_text(event: Any) -> None:
            answers.append(await handler.ashow_loading(event))

    else:

        def on_text(event: Any) -> None:  # type: ignore[misc]  # the sync twin
            answers.append(handler.show_loading(event))

    handler.add(MessageEvent, message=TextMessageContent)(on_text)
    body = signed_body(text_event("hi"), channel_secret=SECRET)
    worker = threading.Thread(target=driver.handle, args=(handler, *body))
    with caplog.at_level(logging.WARNING):
        worker.start()
        fake.wait_for_requests(1, path=LOADING_PATH, completed=False)
        began = time.monotonic()
        driver.close(handler, 0.0)
        worker.join(timeout=8.0)
        gc.collect()
    assert not worker.is_alive(), "show_loading still waits for its request after close"
    assert time.monotonic() - began < 5.0
    assert answers == [False]
    complaints = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert complaints == []
