"""``@read_first``: the one-decorator form, on the SDK's own handler and on installed ones."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import linebot.v3
import pytest
from linebot.v3.messaging import Configuration
from linebot.v3.webhook import WebhookParser
from linebot.v3.webhooks import MessageEvent, StickerMessageContent, TextMessageContent

from line_markread import Marker, WebhookHandler, install, read_first
from line_markread._read_first import _join_closers, _shared
from line_markread.testing import (
    TOKEN_MARK_AS_READ_PATH,
    FakeLinePlatform,
    sticker_event,
    text_event,
)

from .support import SECRET, AsyncDriver, body_of, mark_answered_before, token_of


@pytest.fixture
def line_env(fake: FakeLinePlatform, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The SDK examples' environment, pointing at the fake; shared markers closed after."""
    monkeypatch.setenv("LINE_CHANNEL_ACCESS_TOKEN", fake.access_token)
    monkeypatch.setenv("LINE_API_HOST", fake.url)
    yield
    for marker in list(_shared.values()):
        marker.close()
    _shared.clear()


@pytest.mark.usefixtures("line_env")
def test_on_the_sdks_own_handler_the_decorated_function_runs_after_its_mark(
    fake: FakeLinePlatform,
) -> None:
    handler = linebot.v3.WebhookHandler(SECRET)  # the SDK's own class, untouched
    started: dict[str, float] = {}
    stickers: list[str] = []

    @handler.add(MessageEvent, message=TextMessageContent)
    @read_first
    def on_text(event: Any) -> None:
        started[event.message.mark_as_read_token] = time.monotonic()

    @handler.add(MessageEvent, message=StickerMessageContent)
    def on_sticker(event: Any) -> None:  # not decorated: untouched
        stickers.append(event.message.mark_as_read_token)

    first, second = text_event("a", user_id="U1"), text_event("b", user_id="U2")
    sticker = sticker_event(user_id="U3")
    handler.handle(*body_of(first, sticker, second))

    assert set(started) == {token_of(first), token_of(second)}
    for token, moment in started.items():
        assert mark_answered_before(fake, {token}, moment)
    assert stickers == [token_of(sticker)]
    marked = {r.json["markAsReadToken"] for r in fake.mark_requests()}  # type: ignore[index]  # JSON object
    assert token_of(sticker) not in marked


@pytest.mark.usefixtures("line_env")
def test_keeps_the_sdks_calling_convention(fake: FakeLinePlatform) -> None:
    handler = linebot.v3.WebhookHandler(SECRET)
    seen: list[Any] = []

    @handler.add(MessageEvent, message=TextMessageContent)
    @read_first
    def with_destination(event: Any, destination: Any) -> None:
        seen.append(destination)

    @handler.default()
    @read_first
    def no_arguments() -> None:
        seen.append("default")

    handler.handle(*body_of(text_event(user_id="U1"), sticker_event(user_id="U2")))

    assert seen == ["Ufakebotdestination0000000000000", "default"]
    # The wrapper receives the event even where the function takes none: both are marked.
    assert len(fake.wait_for_requests(2, path=TOKEN_MARK_AS_READ_PATH)) == 2


@pytest.mark.usefixtures("line_env")
def test_options_opt_out_and_nowait(fake: FakeLinePlatform) -> None:
    handler = linebot.v3.WebhookHandler(SECRET)
    ran: list[str] = []

    @handler.add(MessageEvent, message=TextMessageContent)
    @read_first(mark_as_read=lambda event: "nowait" if event.message.text == "later" else False)
    def on_text(event: Any) -> None:
        ran.append(event.message.text)

    later, never = text_event("later", user_id="U1"), text_event("never", user_id="U2")
    handler.handle(*body_of(later, never))

    assert ran == ["later", "never"]
    fake.wait_for_requests(1, path=TOKEN_MARK_AS_READ_PATH)
    marked = [r.json["markAsReadToken"] for r in fake.mark_requests()]  # type: ignore[index]  # JSON object
    assert marked == [token_of(later)]


def test_no_token_is_a_clear_error_at_the_first_event(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LINE_CHANNEL_ACCESS_TOKEN", raising=False)
    handler = linebot.v3.WebhookHandler(SECRET)

    @handler.add(MessageEvent, message=TextMessageContent)
    @read_first  # decorating needs no token: a module imports before its settings load
    def on_text(event: Any) -> None:
        raise AssertionError("must not run unmarked")

    with pytest.raises(RuntimeError, match="LINE_CHANNEL_ACCESS_TOKEN"):
        handler.handle(*body_of(text_event(user_id="U1")))


def test_an_explicit_marker_or_configuration(fake: FakeLinePlatform) -> None:
    handler = linebot.v3.WebhookHandler(SECRET)
    with Marker(configuration=fake.configuration()) as marker:

        @handler.add(MessageEvent, message=TextMessageContent)
        @read_first(marker=marker)
        def on_text(event: Any) -> None:
            pass

        handler.handle(*body_of(text_event(user_id="U1")))
        assert marker.stats().marked == 1

    other = linebot.v3.WebhookHandler(SECRET)

    @other.add(MessageEvent, message=TextMessageContent)
    @read_first(configuration=fake.configuration())
    def on_other_text(event: Any) -> None:
        pass

    try:
        other.handle(*body_of(text_event(user_id="U2")))
        assert len(fake.wait_for_requests(2, path=TOKEN_MARK_AS_READ_PATH)) == 2
    finally:
        for shared in list(_shared.values()):
            shared.close()
        _shared.clear()


def test_bad_options_fail_at_decoration() -> None:
    with pytest.raises(TypeError, match="mark_as_read"):
        read_first(mark_as_read=1)  # type: ignore[call-overload]  # the mistake under test
    with pytest.raises(TypeError, match="not both"):
        read_first(marker=Marker(access_token="t"), configuration=object())
    with pytest.raises(TypeError, match="Marker"):
        read_first(marker=object())  # type: ignore[call-overload]  # the mistake under test


@pytest.mark.usefixtures("line_env")
async def test_an_async_function_called_directly_marks_first(fake: FakeLinePlatform) -> None:
    """A ``WebhookParser`` bot dispatches itself: awaiting the wrapper marks, then runs."""
    parser = WebhookParser(SECRET)
    started: list[float] = []

    @read_first
    async def on_text(event: Any) -> str:
        started.append(time.monotonic())
        return str(event.message.text)

    event = text_event("hi", user_id="U1")
    (model,) = parser.parse(*body_of(event))
    assert await on_text(model) == "hi"
    assert mark_answered_before(fake, {token_of(event)}, started[0])
    for marker in list(_shared.values()):
        await marker.aclose()
    _shared.clear()


# -- on installed handlers: the options act as handler.add's, one engine ----------


def test_on_an_installed_handler_one_request_per_chat_per_body(fake: FakeLinePlatform) -> None:
    with WebhookHandler(SECRET, configuration=fake.configuration()) as handler:
        ran: list[str] = []

        @handler.add(MessageEvent, message=TextMessageContent)
        @read_first
        def on_text(event: Any) -> None:
            ran.append(event.message.text)

        events = [text_event(str(n), user_id="U1") for n in range(3)]
        handler.handle(*body_of(*events))

        assert ran == ["0", "1", "2"]
        assert handler.stats().requests == 1  # coalesced by the handler's engine, not per call
        assert [r.json["markAsReadToken"] for r in fake.mark_requests()] == [token_of(events[-1])]  # type: ignore[index]  # JSON object


def test_install_takes_decorated_functions_registered_before(fake: FakeLinePlatform) -> None:
    sdk_handler = linebot.v3.WebhookHandler(SECRET)
    ran: list[str] = []

    @sdk_handler.add(MessageEvent, message=TextMessageContent)
    @read_first(mark_as_read=False)
    def on_text(event: Any) -> None:
        ran.append(event.message.text)

    handler = install(sdk_handler, configuration=fake.configuration())
    try:
        handler.handle(*body_of(text_event("kept unread", user_id="U1")))
        assert ran == ["kept unread"]
        assert handler.stats().opted_out == 1
        assert fake.mark_requests() == []
    finally:
        handler.close()


async def test_async_function_on_an_installed_handler_is_marked_once(
    fake: FakeLinePlatform,
) -> None:
    async with WebhookHandler(SECRET, configuration=fake.configuration()) as handler:
        started: list[float] = []

        @handler.add(MessageEvent, message=TextMessageContent)
        @read_first(mark_as_read="nowait")
        async def on_text(event: Any) -> None:
            await asyncio.sleep(0)
            started.append(time.monotonic())

        await handler.handle_async(*body_of(text_event(user_id="U1")))
        await handler.marker.aflush()
        assert len(started) == 1
        assert handler.stats().requests == 1


def test_options_given_twice_or_for_another_channel_are_refused(fake: FakeLinePlatform) -> None:
    with WebhookHandler(SECRET, configuration=fake.configuration()) as handler:

        def on_text(event: Any) -> None:
            pass

        with pytest.raises(TypeError, match="one place"):
            handler.add(MessageEvent, message=TextMessageContent, mark_as_read=False)(
                read_first(on_text)
            )
        with Marker(access_token="another") as other, pytest.raises(ValueError, match="Marker"):
            handler.add(MessageEvent)(read_first(marker=other)(on_text))
        elsewhere = Configuration(host=fake.url, access_token="another-token")  # no space: refused
        with pytest.raises(ValueError, match="another channel"):
            handler.default()(read_first(configuration=elsewhere)(on_text))


def test_decorating_twice_is_refused() -> None:
    def on_text(event: Any) -> None:
        pass

    with pytest.raises(ValueError, match="already decorated"):
        read_first(read_first(on_text))


def test_the_async_driver_runs_decorated_handlers(fake: FakeLinePlatform) -> None:
    """The installed path through a long-running loop, as an aiohttp or FastAPI server runs it."""
    driver = AsyncDriver()
    handler = WebhookHandler(SECRET, configuration=fake.configuration())
    started: dict[str, float] = {}

    @handler.add(MessageEvent, message=TextMessageContent)
    @read_first
    async def on_text(event: Any) -> None:
        started[event.message.mark_as_read_token] = time.monotonic()

    try:
        event = text_event(user_id="U1")
        driver.handle(handler, *body_of(event))
        assert mark_answered_before(fake, {token_of(event)}, started[token_of(event)])
    finally:
        driver.close(handler)
        driver.finish()


# -- issue 16 item 16: everything passed through, the event found among the arguments --


def _parsed(*events: dict[str, Any]) -> list[Any]:
    return list(WebhookParser(SECRET).parse(*body_of(*events)))


@pytest.mark.usefixtures("line_env")
def test_methods_keyword_and_extra_arguments_pass_through_after_the_mark(
    fake: FakeLinePlatform,
) -> None:
    calls: list[tuple[Any, ...]] = []

    class Bot:
        @read_first
        def on_text(self, event: Any, reply: str = "") -> None:
            calls.append((self, event.message.text, reply, len(fake.marked_tokens())))

    @read_first
    def with_extras(prefix: str, event: Any, *rest: Any, **named: Any) -> None:
        calls.append((prefix, event["message"]["text"], rest, named))

    bot = Bot()
    first, second, third = (text_event(str(n), user_id=f"U{n}") for n in range(3))
    model_1, model_2 = _parsed(first, second)
    bot.on_text(model_1)
    bot.on_text(event=model_2, reply="hi")
    with_extras("p", third, 1, 2, flag=True)  # the event's JSON, as a parser bot may keep it

    assert calls == [
        (bot, "0", "", 1),
        (bot, "1", "hi", 2),
        ("p", "2", (1, 2), {"flag": True}),
    ]
    assert fake.marked_tokens() == [token_of(first), token_of(second), token_of(third)]


@pytest.mark.usefixtures("line_env")
async def test_an_async_method_with_keyword_arguments_passes_through(
    fake: FakeLinePlatform,
) -> None:
    class Bot:
        @read_first
        async def on_text(self, event: Any, *, reply: str) -> tuple[Any, str, str]:
            await asyncio.sleep(0)
            return self, event.message.text, reply

    bot = Bot()
    event = text_event("hello", user_id="U1")
    (model,) = _parsed(event)
    assert await bot.on_text(model, reply="r") == (bot, "hello", "r")
    assert await bot.on_text(reply="s", event=model) == (bot, "hello", "s")
    assert fake.marked_tokens()[0] == token_of(event)
    for marker in list(_shared.values()):
        await marker.aclose()
    _shared.clear()


@pytest.mark.usefixtures("line_env")
def test_a_method_on_the_sdks_own_handler_gets_what_it_takes(fake: FakeLinePlatform) -> None:
    handler = linebot.v3.WebhookHandler(SECRET)
    seen: list[Any] = []

    class Bot:
        @read_first
        def on_text(self, event: Any) -> None:
            seen.append((self, event.message.text))

    bot = Bot()
    handler.add(MessageEvent, message=TextMessageContent)(bot.on_text)
    event = text_event("m", user_id="U1")
    handler.handle(*body_of(event))
    assert seen == [(bot, "m")]
    assert fake.marked_tokens() == [token_of(event)]


@pytest.mark.usefixtures("line_env")
def test_a_call_that_cannot_run_raises_before_anything_is_marked(fake: FakeLinePlatform) -> None:
    @read_first
    def on_text(event: Any) -> None:
        raise AssertionError("must not run")

    (model,) = _parsed(text_event(user_id="U1"))
    with pytest.raises(TypeError, match=r"on_text\(\) cannot be called"):
        on_text(model, "unexpected", 3)  # type: ignore[call-arg]  # the mistake under test
    with pytest.raises(TypeError, match=r"no argument of .*on_text.* is a webhook event"):
        on_text("not an event")
    assert fake.requests() == []


# -- issue 16 item 15: @read_first above @handler.add is refused, not silent -----------


def test_read_first_above_the_sdks_add_is_refused_at_decoration() -> None:
    handler = linebot.v3.WebhookHandler(SECRET)

    with pytest.raises(TypeError, match=r"above @handler\.add"):

        @read_first
        @handler.add(MessageEvent, message=TextMessageContent)
        def on_text(event: Any) -> None:
            pass

    with pytest.raises(TypeError, match=r"above @handler.add\(...\) on .*on_default"):

        @read_first(mark_as_read="nowait")
        @handler.default()
        def on_default(event: Any) -> None:
            pass

    # Underneath, as documented, is fine; so is decorating a function nobody registered.
    @handler.add(MessageEvent, message=StickerMessageContent)
    @read_first
    def on_sticker(event: Any) -> None:
        pass

    read_first(lambda event: None)


def test_read_first_above_an_installed_handlers_add_is_refused(fake: FakeLinePlatform) -> None:
    def build() -> None:
        handler = WebhookHandler(SECRET, configuration=fake.configuration())  # a local
        try:

            @read_first(loading=True)  # its options would be silently ignored
            @handler.add(MessageEvent, message=TextMessageContent)
            def on_text(event: Any) -> None:
                pass

        finally:
            handler.close()

    with pytest.raises(TypeError, match=r"put @read_first directly under @handler\.add"):
        build()


# -- issue 16 item 14: a rotated token's shared marker is closed, not kept ----------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.usefixtures("line_env")
def test_rotating_the_access_token_keeps_threads_and_fds_bounded(
    fake: FakeLinePlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = linebot.v3.WebhookHandler(SECRET)

    @handler.add(MessageEvent, message=TextMessageContent)
    @read_first
    def on_text(event: Any) -> None:
        pass

    events = []
    baseline: tuple[int, int] | None = None
    for n in range(20):
        token = f"rotated-token-{n}"
        fake.access_token = token
        monkeypatch.setenv("LINE_CHANNEL_ACCESS_TOKEN", token)
        events.append(text_event(str(n), user_id=f"U{n}"))
        handler.handle(*body_of(events[-1]))
        assert _join_closers(30)
        if baseline is None:
            baseline = (threading.active_count(), _open_fds())

    assert baseline is not None
    assert fake.marked_tokens() == [token_of(e) for e in events]  # each with its own token
    # Flat, with slack for a thread still ending under load (each kept marker cost 2 and ~5 fds).
    assert threading.active_count() <= baseline[0] + 4
    assert _open_fds() <= baseline[1] + 10
    assert len(_shared) == 1


@pytest.mark.usefixtures("line_env")
async def test_a_rotated_tokens_marker_closes_after_the_calls_using_it(
    fake: FakeLinePlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    @read_first
    async def on_text(event: Any) -> None:
        if event.message.text == "slow":
            entered.set()
            await release.wait()

    slow, fast = text_event("slow", user_id="U1"), text_event("fast", user_id="U2")
    (slow_model,) = _parsed(slow)
    (fast_model,) = _parsed(fast)
    slow_call = asyncio.create_task(on_text(slow_model))
    await entered.wait()
    (old,) = _shared.values()

    fake.access_token = "rotated-token"
    monkeypatch.setenv("LINE_CHANNEL_ACCESS_TOKEN", "rotated-token")
    await on_text(fast_model)  # a new marker for the new token; the old one is still in use
    assert not old.closed
    release.set()
    await slow_call
    assert await asyncio.to_thread(_join_closers, 30)
    assert old.closed
    assert fake.marked_tokens() == [token_of(slow), token_of(fast)]
    for marker in list(_shared.values()):
        await marker.aclose()
    _shared.clear()


def test_a_method_on_an_installed_handler_keeps_its_self(fake: FakeLinePlatform) -> None:
    seen: list[Any] = []

    class Bot:
        @read_first(mark_as_read="nowait")
        def on_text(self, event: Any) -> None:
            seen.append((self, event.message.text))

    bot = Bot()
    with WebhookHandler(SECRET, configuration=fake.configuration()) as handler:
        handler.add(MessageEvent, message=TextMessageContent)(bot.on_text)
        handler.handle(*body_of(text_event("m", user_id="U1")))
        handler.marker.flush()
        assert seen == [(bot, "m")]
        assert handler.stats().marked == 1
