"""The public surface: construction, installing, bad input, secrets, threads, fork, manual marks."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import attrs
import linebot.v3
import pytest
from linebot.v3.exceptions import InvalidSignatureError
from linebot.v3.messaging import Configuration
from linebot.v3.webhook import WebhookParser
from linebot.v3.webhooks import MessageEvent, StickerMessageContent, TextMessageContent

from line_markread import (
    Marker,
    Outcome,
    Settings,
    WebhookBodyError,
    WebhookHandler,
    _stats,
    install,
)
from line_markread.testing import (
    FakeLinePlatform,
    Fault,
    sign,
    signed_body,
    sticker_event,
    text_event,
    webhook_body,
)

from .support import (
    SECRET,
    TOKEN_PATH,
    Driver,
    HandlerFactory,
    body_of,
    mark_answered_before,
    sent_tokens,
    token_of,
)

# -- construction -------------------------------------------------------------


def test_exactly_one_of_access_token_and_configuration() -> None:
    with pytest.raises(TypeError, match="exactly one"):
        WebhookHandler(SECRET)
    with pytest.raises(TypeError, match="exactly one"):
        WebhookHandler(SECRET, access_token="t", configuration=Configuration(access_token="t"))
    with pytest.raises(ValueError, match="access_token"):
        WebhookHandler(SECRET, access_token="")
    with pytest.raises(ValueError, match="access_token"):
        Marker(configuration=Configuration(host="http://127.0.0.1:1"))


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("mode", "tokens"),
        ("wait_timeout", -1),
        ("request_timeout", 0),
        ("max_attempts", 0),
        ("max_attempts", 1.5),
        ("retry_deadline", "30"),
        ("coalesce", 1),
        ("max_concurrency", 0),
        ("max_tracked_chats", 0),
        ("mark_standby", "yes"),
        ("mark_unhandled", None),
        ("on_failure", "print"),
        ("backoff_initial", -0.1),
    ],
)
def test_options_are_validated_at_construction(option: str, value: object) -> None:
    options: dict[str, Any] = {option: value}
    with pytest.raises((TypeError, ValueError), match=option):
        WebhookHandler(SECRET, access_token="t", **options)


def test_unknown_options_are_rejected() -> None:
    with pytest.raises(TypeError, match="wait_timout"):
        WebhookHandler(SECRET, access_token="t", wait_timout=1.0)


def test_settings_are_immutable_and_defaults_respect_lines_deadline() -> None:
    settings = Settings()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        settings.wait_timeout = 5.0  # type: ignore[misc]  # frozen: the point of the test
    assert settings.wait_timeout < 2.0  # LINE gives a webhook 2 s in all
    assert settings.request_timeout < 2.0


def test_the_configurations_host_and_token_are_used(fake: FakeLinePlatform) -> None:
    handler = WebhookHandler(SECRET, configuration=fake.configuration())
    handler.add(MessageEvent, message=TextMessageContent)(lambda event: None)
    try:
        handler.handle(*body_of(text_event(user_id="U1")))
    finally:
        handler.close()

    (mark,) = fake.mark_requests()
    assert mark.authorized
    assert "X-Line-Retry-Key" not in mark.headers
    assert mark.headers["Content-Type"] == "application/json"


# -- installing onto an existing handler --------------------------------------


def test_install_upgrades_the_sdk_handler_in_place(fake: FakeLinePlatform, driver: Driver) -> None:
    sdk_handler = linebot.v3.WebhookHandler(SECRET)
    ran: list[str] = []

    def registered_before(event: Any) -> None:
        ran.append("before")

    sdk_handler.add(MessageEvent, message=TextMessageContent)(registered_before)

    handler = install(sdk_handler, configuration=fake.configuration())

    @handler.add(MessageEvent, message=StickerMessageContent, mark_as_read=False)
    def registered_after(event: Any) -> None:
        ran.append("after")

    try:
        assert handler is sdk_handler
        assert isinstance(handler, linebot.v3.WebhookHandler)
        assert isinstance(handler, WebhookHandler)
        text, sticker = text_event(user_id="U1"), sticker_event(user_id="U1")
        driver.handle(handler, *body_of(text, sticker))
    finally:
        driver.close(handler)

    assert ran == ["before", "after"]
    assert sent_tokens(fake) == [token_of(text)]
    with pytest.raises(ValueError, match="already installed"):
        install(handler, access_token="t")


def test_install_keeps_a_subclass_and_its_default(fake: FakeLinePlatform) -> None:
    class MyHandler(linebot.v3.WebhookHandler):  # type: ignore[misc]  # untyped SDK
        def greeting(self) -> str:
            return "hi"

    mine = MyHandler(SECRET)
    defaults: list[str] = []
    mine.default()(lambda event: defaults.append("default"))

    handler = install(mine, configuration=fake.configuration())
    try:
        assert isinstance(handler, MyHandler)
        assert handler.greeting() == "hi"
        sticker = sticker_event(user_id="U1")
        handler.handle(*body_of(sticker))
    finally:
        handler.close()

    assert defaults == ["default"]
    assert sent_tokens(fake) == [token_of(sticker)]


def test_install_refuses_what_is_not_an_sdk_handler() -> None:
    with pytest.raises(TypeError, match=r"linebot\.v3\.WebhookHandler"):
        install(object(), access_token="t")


# -- bad input ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param("{not json", WebhookBodyError, id="malformed-json"),
        pytest.param("[1, 2]", WebhookBodyError, id="not-an-object"),
        pytest.param('{"events": {}}', WebhookBodyError, id="events-not-a-list"),
        pytest.param("{}", WebhookBodyError, id="no-events"),
        pytest.param('{"events": [1]}', WebhookBodyError, id="event-not-an-object"),
        pytest.param(b'{"events": []}\xff', WebhookBodyError, id="not-utf-8"),
    ],
)
def test_malformed_bodies_raise_a_documented_error_and_send_nothing(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory, body: Any, error: type
) -> None:
    handler = new_handler()
    # Caught as ValueError, what the SDK's JSONDecodeError is: existing except clauses still work.
    with pytest.raises(ValueError) as raised:  # noqa: PT011 - the exact type is checked below
        driver.handle(handler, body, sign(body, SECRET))
    assert type(raised.value) is error
    driver.close(handler)
    assert fake.requests() == []


def test_a_bad_or_missing_signature_raises_the_sdks_error_and_sends_nothing(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()
    ran: list[str] = []
    handler.add(MessageEvent, message=TextMessageContent)(lambda event: ran.append("ran"))
    body = webhook_body(text_event(user_id="U1"))

    with pytest.raises(InvalidSignatureError):
        driver.handle(handler, body, sign(body, "another-secret"))
    with pytest.raises(InvalidSignatureError):
        driver.handle(handler, body, None)  # type: ignore[arg-type]  # a missing header
    driver.close(handler)

    assert ran == []
    assert fake.requests() == []


def test_a_huge_body_is_handled_without_trouble(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()
    texts: list[int] = []
    handler.add(MessageEvent, message=TextMessageContent)(
        lambda event: texts.append(len(event.message.text))
    )
    big = text_event("x" * 10_000_000, user_id="U1")
    driver.handle(handler, *body_of(big))
    assert texts == [10_000_000]
    assert sent_tokens(fake) == [token_of(big)]


def test_a_handlers_exception_propagates_and_other_marks_go_on(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()
    boom = RuntimeError("handler bug")

    @handler.add(MessageEvent, message=TextMessageContent)
    def on_text(event: Any) -> None:
        raise boom

    first, second = text_event(user_id="U1"), text_event(user_id="U2")
    with pytest.raises(RuntimeError) as raised:
        driver.handle(handler, *body_of(first, second))
    driver.close(handler)

    assert raised.value is boom
    assert sorted(fake.marked_tokens()) == sorted([token_of(first), token_of(second)])


def test_sync_handle_refuses_async_handlers_before_marking(
    fake: FakeLinePlatform, new_handler: HandlerFactory
) -> None:
    handler = new_handler()

    @handler.add(MessageEvent, message=TextMessageContent)
    async def on_text(event: Any) -> None:
        pass

    with pytest.raises(TypeError, match="handle_async"):
        handler.handle(*body_of(text_event(user_id="U1")))
    handler.close()
    assert fake.requests() == []


async def test_handle_async_awaits_whatever_awaitable_a_handler_returns(
    fake: FakeLinePlatform,
) -> None:
    ran: list[str] = []

    async def reply(prefix: str, event: Any) -> None:
        ran.append(prefix + event.message.text)

    async with WebhookHandler(SECRET, configuration=fake.configuration()) as handler:
        handler.add(MessageEvent, message=TextMessageContent)(functools.partial(reply, "> "))
        await handler.handle_async(*body_of(text_event("hi", user_id="U1")))
        with pytest.raises(TypeError, match="handle_async"):
            handler.handle(*body_of(text_event("ho", user_id="U2")))
    assert ran == ["> hi"]


async def test_handle_async_awaits_async_handlers_after_their_mark(
    fake: FakeLinePlatform,
) -> None:
    handler = WebhookHandler(SECRET, configuration=fake.configuration())
    started: dict[str, float] = {}

    @handler.add(MessageEvent, message=TextMessageContent)
    async def on_text(event: Any) -> None:
        await asyncio.sleep(0)
        started[event.message.mark_as_read_token] = time.monotonic()

    event = text_event(user_id="U1")
    try:
        await handler.handle_async(*body_of(event))
    finally:
        await handler.aclose()
    assert mark_answered_before(fake, {token_of(event)}, started[token_of(event)])


# -- secrets ------------------------------------------------------------------


def test_the_access_token_never_shows(
    fake: FakeLinePlatform, driver: Driver, caplog: pytest.LogCaptureFixture
) -> None:
    token = "SECRET-ACCESS-TOKEN-9f8e7d"
    fake.access_token = token
    failures: list[Any] = []
    handler = WebhookHandler(
        SECRET,
        configuration=Configuration(host=fake.url, access_token=token),
        on_failure=failures.append,
        max_attempts=2,
        backoff_initial=0.0,
    )
    handler.add(MessageEvent, message=TextMessageContent)(lambda event: None)
    fake.script(TOKEN_PATH, 503, 401)
    with caplog.at_level(logging.DEBUG):
        driver.handle(handler, *body_of(text_event(user_id="U1")))
        driver.close(handler)

    shown = " ".join(
        [caplog.text, repr(handler), repr(handler.marker), repr(handler.settings), repr(failures)]
    )
    assert failures
    assert token not in shown
    assert SECRET not in shown


# -- threads, fork, memory ----------------------------------------------------


def test_handle_is_safe_from_many_threads(fake: FakeLinePlatform) -> None:
    handler = WebhookHandler(SECRET, configuration=fake.configuration())
    ran: list[str] = []
    lock = threading.Lock()

    @handler.add(MessageEvent, message=TextMessageContent)
    def on_text(event: Any) -> None:
        with lock:
            ran.append(event.message.mark_as_read_token)

    bodies = [
        [text_event(str(i), user_id=f"U{t}", timestamp=1_000 * t + i) for i in range(3)]
        for t in range(16)
    ]
    errors: list[BaseException] = []

    def worker(events: list[dict[str, Any]]) -> None:
        try:
            for event in events:  # one body per message, one after another per chat
                handler.handle(*body_of(event))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(events,)) for events in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    handler.close()

    assert errors == []
    assert len(ran) == 48
    marked = set(fake.marked_tokens())
    assert all(token_of(events[-1]) in marked for events in bodies)


def test_handle_works_in_a_forked_child(fake: FakeLinePlatform) -> None:
    handler = WebhookHandler(SECRET, configuration=fake.configuration())
    handler.add(MessageEvent, message=TextMessageContent)(lambda event: None)
    parent_event, child_event = text_event(user_id="Uparent"), text_event(user_id="Uchild")
    handler.handle(*body_of(parent_event))  # the parent's loop thread now exists

    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a multi-threaded process; that is the point here.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        try:
            handler.handle(*body_of(child_event))
            handler.close()
            os._exit(0 if handler.stats().marked >= 1 else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    handler.close()

    assert os.waitstatus_to_exitcode(status) == 0
    assert sorted(fake.marked_tokens()) == sorted([token_of(parent_event), token_of(child_event)])


def test_per_chat_state_is_bounded(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler(max_tracked_chats=10)
    handler.add(MessageEvent, message=TextMessageContent)(lambda event: None)
    for i in range(50):
        driver.handle(handler, *body_of(text_event(user_id=f"U{i}")))
        assert handler.marker.tracked_chats() <= 11
    assert handler.marker.tracked_chats() <= 10
    assert len(fake.marked_tokens()) == 50


def test_forgetting_chats_mid_body_loses_nothing(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    # One chat of memory: the already-read chat A goes idle inside the second
    # body and is forgotten to make room for B, while that body still holds it.
    handler = new_handler(max_tracked_chats=1)
    handler.add(MessageEvent, message=TextMessageContent)(lambda event: None)
    newer_a = text_event(user_id="UA", timestamp=2_000)
    older_a, b = text_event(user_id="UA", timestamp=1_000), text_event(user_id="UB")

    driver.handle(handler, *body_of(newer_a))
    driver.handle(handler, *body_of(older_a, b))

    assert sent_tokens(fake) == [token_of(newer_a), token_of(b)]
    assert handler.stats().already_read == 1


# -- stats, manual marking, the functional marker -------------------------------


def test_stats_are_an_immutable_snapshot(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()
    handler.add(MessageEvent, message=TextMessageContent)(lambda event: None)
    before = handler.stats()
    driver.handle(handler, *body_of(text_event(user_id="U1")))
    after = handler.stats()

    assert (before.requests, after.requests, after.marked) == (0, 1, 1)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        after.requests = 0  # type: ignore[misc]  # the mutation under test


def test_an_opted_out_handler_can_mark_later(fake: FakeLinePlatform) -> None:
    handler = WebhookHandler(SECRET, configuration=fake.configuration())
    outcomes: list[Outcome] = []

    @handler.add(MessageEvent, message=TextMessageContent, mark_as_read=False)
    def on_text(event: Any) -> None:
        assert fake.mark_requests() == []
        outcomes.append(handler.mark_read(event))

    event = text_event(user_id="U1")
    try:
        handler.handle(*body_of(event))
    finally:
        handler.close()
    assert outcomes == [Outcome.MARKED]
    assert fake.marked_tokens() == [token_of(event)]


async def test_an_opted_out_async_handler_can_mark_later(fake: FakeLinePlatform) -> None:
    handler = WebhookHandler(SECRET, configuration=fake.configuration())
    outcomes: list[Outcome] = []

    @handler.add(MessageEvent, message=TextMessageContent, mark_as_read=False)
    async def on_text(event: Any) -> None:
        outcomes.append(await handler.amark_read(event))

    event = text_event(user_id="U1")
    try:
        await handler.handle_async(*body_of(event))
    finally:
        await handler.aclose()
    assert outcomes == [Outcome.MARKED]
    assert fake.marked_tokens() == [token_of(event)]


async def test_the_marker_serves_bots_that_parse_webhooks_themselves(
    fake: FakeLinePlatform,
) -> None:
    parser = WebhookParser(SECRET)
    marker = Marker(configuration=fake.configuration())
    first, second, other = (
        text_event("1", user_id="U1"),
        text_event("2", user_id="U1"),
        sticker_event(user_id="U2"),
    )
    body, signature = signed_body(first, second, other, channel_secret=SECRET)
    events = parser.parse(body, signature)
    try:
        outcomes = await marker.amark(events)
    finally:
        await marker.aclose()

    assert outcomes == [Outcome.MARKED] * 3
    assert sorted(sent_tokens(fake)) == sorted([token_of(second), token_of(other)])
    assert marker.stats().coalesced == 1


def test_the_marker_has_a_blocking_twin(fake: FakeLinePlatform) -> None:
    marker = Marker(configuration=fake.configuration())
    fake.script(TOKEN_PATH, Fault.delay(0.2))
    try:
        assert marker.mark([text_event(user_id="U1")], wait=False) == [Outcome.PENDING]
        fake.wait_for_requests(1, path=TOKEN_PATH)
        assert marker.mark([text_event(user_id="U2")]) == [Outcome.MARKED]
    finally:
        marker.close()
    assert len(fake.marked_tokens()) == 2


def test_handlers_and_markers_close_as_context_managers(fake: FakeLinePlatform) -> None:
    with WebhookHandler(SECRET, configuration=fake.configuration()) as handler:
        handler.add(MessageEvent, message=TextMessageContent)(lambda event: None)
        handler.handle(*body_of(text_event(user_id="U1")))
    with Marker(configuration=fake.configuration()) as marker:
        marker.mark([text_event(user_id="U2")])
    assert handler.marker.closed
    assert marker.closed


async def test_async_context_managers_close_on_the_running_loop(fake: FakeLinePlatform) -> None:
    async with WebhookHandler(SECRET, configuration=fake.configuration()) as handler:
        handler.add(MessageEvent, message=TextMessageContent)(lambda event: None)
        await handler.handle_async(*body_of(text_event(user_id="U1")))
    async with Marker(configuration=fake.configuration()) as marker:
        await marker.amark([text_event(user_id="U2")])
    assert handler.marker.closed
    assert marker.closed
    assert len(fake.marked_tokens()) == 2


def test_flush_waits_for_marks_in_progress(fake: FakeLinePlatform) -> None:
    handler = WebhookHandler(SECRET, configuration=fake.configuration(), wait_timeout=0.0)
    handler.add(MessageEvent, message=TextMessageContent)(lambda event: None)
    fake.script(TOKEN_PATH, Fault.delay(0.6))
    event = text_event(user_id="U1")
    with handler:
        handler.handle(*body_of(event))
        assert fake.marked_tokens() == []  # released at once; the 200 is 0.6 s away
        handler.marker.flush()
        assert fake.marked_tokens() == [token_of(event)]


async def test_aflush_waits_for_marks_in_progress(fake: FakeLinePlatform) -> None:
    fake.script(TOKEN_PATH, Fault.delay(0.6))
    event = text_event(user_id="U1")
    async with Marker(configuration=fake.configuration()) as marker:
        assert await marker.amark([event], wait=False) == [Outcome.PENDING]
        await marker.aflush()
        assert fake.marked_tokens() == [token_of(event)]


def test_closing_is_idempotent_and_final(fake: FakeLinePlatform) -> None:
    marker = Marker(configuration=fake.configuration())
    marker.mark([text_event(user_id="U1")])
    marker.close()
    marker.close()
    with pytest.raises(RuntimeError, match="closed"):
        marker.mark([text_event(user_id="U1")])


def test_events_of_the_legacy_sdk_get_an_error_that_says_what_to_do(
    fake: FakeLinePlatform,
) -> None:
    """Issue 16 item 18: the v2 parser's ``MessageEvent`` has the v3 one's name."""
    import linebot  # the legacy (v2) package line-bot-sdk 3 still ships  # noqa: PLC0415

    event = text_event("hi", user_id="U1")
    body, signature = signed_body(event, channel_secret=SECRET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy SDK warns that it is deprecated
        (legacy,) = linebot.WebhookParser(SECRET).parse(body, signature)
    assert type(legacy).__module__ == "linebot.models.events"
    with Marker(configuration=fake.configuration()) as marker:
        with pytest.raises(TypeError) as raised:
            marker.mark([legacy])
        message = str(raised.value)
        assert "linebot.models.events.MessageEvent" in message
        assert "legacy linebot (v2)" in message
        assert "linebot.v3" in message
        assert "raw JSON" in message
        assert fake.mark_requests() == []
        # What the message advises works: the body's own JSON events.
        assert marker.mark(json.loads(body)["events"]) == [Outcome.MARKED]
    assert fake.marked_tokens() == [token_of(event)]


def test_line_api_host_from_the_environment_is_one_rule_for_every_entry_point(
    fake: FakeLinePlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16 item 17: explicit argument, then ``LINE_API_HOST``, then api.line.me."""
    from line_markread import read_first  # noqa: PLC0415  # only this test uses it
    from line_markread._read_first import _shared  # noqa: PLC0415

    with FakeLinePlatform() as elsewhere:
        monkeypatch.setenv("LINE_API_HOST", fake.url + "/")  # as set by hand: a trailing slash
        monkeypatch.setenv("LINE_CHANNEL_ACCESS_TOKEN", fake.access_token)
        token = fake.access_token
        events = [text_event(str(n), user_id=f"U{n}") for n in range(5)]

        with Marker(access_token=token) as marker:
            assert marker.mark([events[0]]) == [Outcome.MARKED]
        with WebhookHandler(SECRET, access_token=token) as handler:
            handler.add(MessageEvent, message=TextMessageContent)(lambda event: None)
            handler.handle(*body_of(events[1]))
        with install(linebot.v3.WebhookHandler(SECRET), access_token=token) as installed:
            installed.add(MessageEvent, message=TextMessageContent)(lambda event: None)
            installed.handle(*body_of(events[2]))
        sdk_handler = linebot.v3.WebhookHandler(SECRET)
        sdk_handler.add(MessageEvent, message=TextMessageContent)(read_first(lambda event: None))
        try:
            sdk_handler.handle(*body_of(events[3]))
        finally:
            for shared in list(_shared.values()):
                shared.close()
            _shared.clear()
        # The explicit argument wins over the environment: host= or a configuration.
        monkeypatch.setenv("LINE_API_HOST", fake.url)
        with Marker(access_token=elsewhere.access_token, host=elsewhere.url) as marker:
            assert marker.mark([events[4]]) == [Outcome.MARKED]
        with Marker(configuration=elsewhere.configuration()) as marker:
            assert marker.mark([text_event(user_id="U5")]) == [Outcome.MARKED]

        assert fake.marked_tokens() == [token_of(e) for e in events[:4]]
        assert len(elsewhere.marked_tokens()) == 2


def test_a_bad_host_is_refused_at_construction_naming_where_it_came_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LINE_API_HOST", "api.line.me")
    with pytest.raises(ValueError, match="LINE_API_HOST must be an http"):
        Marker(access_token="t")
    with pytest.raises(ValueError, match="host must be an http"):
        Marker(access_token="t", host="ftp://example")
    with pytest.raises(TypeError, match="configuration carries its own host"):
        Marker(configuration=Configuration(access_token="t"), host="http://127.0.0.1:1")
    monkeypatch.setenv("LINE_API_HOST", "  ")  # blank: as if unset
    assert "https://api.line.me" in repr(Marker(access_token="t"))


def test_duplicates_counts_every_redelivery_as_its_doc_says(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    """Issue 16 item 19: the counter and its documentation agree."""
    handler = new_handler()
    handler.add(MessageEvent, message=TextMessageContent)(lambda event: None)
    fake.script(TOKEN_PATH, 400)
    event = text_event(user_id="U1")
    for _ in range(3):  # delivered, redelivered after a failed mark, redelivered once more
        driver.handle(handler, *body_of(event))

    assert [r.status for r in fake.mark_requests()] == [400, 200]  # sent again once only
    assert handler.stats().duplicates == 2  # both redeliveries, the one sent again included
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    promises = [inspect.getsource(_stats), readme]
    assert not any("never sent twice" in text for text in promises)
    assert all("first mark failed" in text for text in promises)
