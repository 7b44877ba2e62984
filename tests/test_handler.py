"""The ordering guarantee and per-handler options, for handle() and handle_async()."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from linebot.v3.models.events import UnknownEvent
from linebot.v3.webhooks import (
    FollowEvent,
    MessageEvent,
    StickerMessageContent,
    TextMessageContent,
)

from line_markread.testing import (
    FakeLinePlatform,
    Fault,
    follow_event,
    message_event,
    sticker_event,
    text_event,
)

from .support import (
    TOKEN_PATH,
    USER_PATH,
    Driver,
    HandlerFactory,
    body_of,
    mark_answered_before,
    sent_tokens,
    token_of,
)


def test_each_handler_starts_after_its_message_is_marked(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()
    events = [text_event("one", user_id="U1"), text_event("two", user_id="U2")]
    started: dict[str, float] = {}

    @handler.add(MessageEvent, message=TextMessageContent)
    def on_text(event: Any) -> None:
        started[event.message.mark_as_read_token] = time.monotonic()

    driver.handle(handler, *body_of(*events))

    assert set(started) == {token_of(e) for e in events}
    for token, moment in started.items():
        assert mark_answered_before(fake, {token}, moment)


def test_handlers_run_in_body_order_after_all_marks_started(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()
    events = [text_event(str(i), user_id=f"U{i}") for i in range(4)]
    for _ in events:
        fake.script(TOKEN_PATH, Fault.delay(0.05))
    order: list[str] = []
    first_start: list[float] = []

    @handler.add(MessageEvent, message=TextMessageContent)
    def on_text(event: Any) -> None:
        first_start.append(time.monotonic())
        order.append(event.message.text)

    driver.handle(handler, *body_of(*events))

    assert order == ["0", "1", "2", "3"]
    marks = fake.mark_requests()
    assert len(marks) == 4
    assert max(r.received_at for r in marks) <= first_start[0]


def test_a_handler_waits_only_for_its_own_chat(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler(wait_timeout=5.0)
    fast, slow = text_event("fast", user_id="Ufast"), text_event("slow", user_id="Uslow")
    fake.script_token(token_of(slow), Fault.delay(0.4))
    started: dict[str, float] = {}

    @handler.add(MessageEvent, message=TextMessageContent)
    def on_text(event: Any) -> None:
        started[event.message.text] = time.monotonic()

    driver.handle(handler, *body_of(fast, slow))

    slow_mark = next(
        r for r in fake.mark_requests() if r.json == {"markAsReadToken": token_of(slow)}
    )
    assert slow_mark.responded_at is not None
    assert started["fast"] < slow_mark.responded_at <= started["slow"]


def test_opt_out_is_never_marked_and_still_runs(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()
    ran: list[str] = []

    @handler.add(MessageEvent, message=StickerMessageContent, mark_as_read=False)
    def on_sticker(event: Any) -> None:
        ran.append("sticker")

    sticker = sticker_event(user_id="U1")
    driver.handle(handler, *body_of(sticker))

    assert ran == ["sticker"]
    assert fake.mark_requests() == []
    assert handler.stats().opted_out == 1


def test_nowait_marks_without_holding_the_handler(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()
    fake.script(TOKEN_PATH, Fault.delay(0.5))
    started: list[float] = []

    @handler.add(MessageEvent, message=TextMessageContent, mark_as_read="nowait")
    def on_text(event: Any) -> None:
        started.append(time.monotonic())

    event = text_event(user_id="U1")
    driver.handle(handler, *body_of(event))
    (mark,) = fake.wait_for_requests(1, path=TOKEN_PATH)

    assert mark.status == 200
    assert mark.responded_at is not None
    assert started[0] < mark.responded_at
    assert fake.marked_tokens() == [token_of(event)]


def test_callable_policy_decides_per_event(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()
    handed_to_agent = {"Uagent"}
    decisions: list[str] = []

    def unless_agent(event: Any) -> bool:
        decisions.append(event.source.user_id)
        return event.source.user_id not in handed_to_agent

    ran: list[str] = []

    @handler.add(MessageEvent, message=TextMessageContent, mark_as_read=unless_agent)
    def on_text(event: Any) -> None:
        ran.append(event.source.user_id)

    bot, agent = text_event(user_id="Ubot"), text_event(user_id="Uagent")
    driver.handle(handler, *body_of(bot, agent))

    assert decisions == ["Ubot", "Uagent"]
    assert ran == ["Ubot", "Uagent"]
    assert sent_tokens(fake) == [token_of(bot)]
    assert handler.stats().opted_out == 1


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param(lambda event: 1 / 0, id="raises"),
        pytest.param(lambda event: "yes", id="nonsense"),
        pytest.param(lambda event: 1, id="truthy-int"),
        pytest.param(lambda event: None, id="none"),
    ],
)
def test_a_broken_policy_leaves_the_message_unread_and_logs(
    fake: FakeLinePlatform,
    driver: Driver,
    new_handler: HandlerFactory,
    policy: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = new_handler()
    ran: list[str] = []

    @handler.add(MessageEvent, message=TextMessageContent, mark_as_read=policy)
    def on_text(event: Any) -> None:
        ran.append("ran")

    with caplog.at_level(logging.ERROR, logger="line_markread"):
        driver.handle(handler, *body_of(text_event(user_id="U1")))

    assert ran == ["ran"]
    assert fake.mark_requests() == []
    assert any("mark_as_read policy" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("bad", [1, 0, None, "", "no", "NOWAIT", 1.0])
def test_mark_as_read_values_are_compared_by_identity(
    new_handler: HandlerFactory, bad: Any
) -> None:
    handler = new_handler()
    with pytest.raises(TypeError, match="mark_as_read must be"):
        handler.add(MessageEvent, message=TextMessageContent, mark_as_read=bad)
    with pytest.raises(TypeError, match="mark_as_read must be"):
        handler.default(mark_as_read=bad)


def test_the_handler_that_runs_decides(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    """Message-specific handler, then event-level, then default: as the SDK looks them up."""
    handler = new_handler()
    ran: list[str] = []

    @handler.add(MessageEvent, mark_as_read=False)
    def on_any_message(event: Any) -> None:
        ran.append("event-level")

    @handler.add(MessageEvent, message=TextMessageContent)
    def on_text(event: Any) -> None:
        ran.append("text")

    @handler.default(mark_as_read=False)
    def on_other(event: Any) -> None:
        ran.append("default")

    text, sticker = text_event(user_id="U1"), sticker_event(user_id="U2")
    driver.handle(handler, *body_of(text, sticker, follow_event()))

    assert ran == ["text", "event-level", "default"]
    assert sent_tokens(fake) == [token_of(text)]


def test_default_handler_marks_by_default(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()
    destinations: list[Any] = []

    @handler.default()
    def anything(event: Any, destination: Any) -> None:
        destinations.append(destination)

    sticker = sticker_event(user_id="U1")
    driver.handle(handler, *body_of(sticker))

    assert sent_tokens(fake) == [token_of(sticker)]
    assert destinations == ["Ufakebotdestination0000000000000"]


@pytest.mark.parametrize("mark_unhandled", [False, True])
def test_unhandled_messages_follow_mark_unhandled(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory, mark_unhandled: bool
) -> None:
    handler = new_handler(mark_unhandled=mark_unhandled)

    @handler.add(FollowEvent)
    def on_follow() -> None:
        pass

    event = text_event(user_id="U1")
    driver.handle(handler, *body_of(event, follow_event()))
    driver.close(handler)  # drains: nobody waits for an unhandled message's mark

    assert sent_tokens(fake) == ([token_of(event)] if mark_unhandled else [])


@pytest.mark.parametrize("mark_standby", [False, True])
def test_standby_events_follow_mark_standby(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory, mark_standby: bool
) -> None:
    handler = new_handler(mark_standby=mark_standby)
    ran: list[str] = []

    @handler.add(MessageEvent, message=TextMessageContent)
    def on_text(event: Any) -> None:
        ran.append("ran")

    event = text_event(user_id="U1", mode="standby")
    driver.handle(handler, *body_of(event))

    assert ran == ["ran"]
    assert sent_tokens(fake) == ([token_of(event)] if mark_standby else [])
    assert handler.stats().skipped == (0 if mark_standby else 1)


def test_unknown_message_types_are_marked_through_their_raw_token(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()
    seen: list[Any] = []

    @handler.add(UnknownEvent)
    def on_unknown(event: Any) -> None:
        seen.append(event)

    hologram = message_event(
        {"type": "hologram", "id": "1", "markAsReadToken": "hologram-token"}, user_id="U1"
    )
    driver.handle(handler, *body_of(hologram))

    assert len(seen) == 1
    assert sent_tokens(fake) == ["hologram-token"]


def test_events_without_a_usable_target_are_skipped_and_counted(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler(mode="token")
    ran: list[str] = []

    @handler.default()
    def anything(event: Any) -> None:
        ran.append(type(event).__name__)

    no_token = message_event({"type": "hologram", "id": "1"}, user_id="U1")
    empty = message_event({"type": "hologram", "id": "2", "markAsReadToken": ""}, user_id="U1")
    not_str = message_event({"type": "hologram", "id": "3", "markAsReadToken": 7}, user_id="U1")
    odd_source = text_event(user_id="U1")
    odd_source["source"] = {"type": "spaceship", "shipId": "S1"}
    driver.handle(handler, *body_of(no_token, empty, not_str, odd_source))

    assert len(ran) == 4
    assert fake.mark_requests() == []
    assert handler.stats().skipped == 4


def test_user_mode_uses_the_user_id_api_in_one_to_one_chats_only(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler(mode="user")

    @handler.add(MessageEvent, message=TextMessageContent)
    def on_text(event: Any) -> None:
        pass

    driver.handle(
        handler, *body_of(text_event(user_id="U1"), text_event(group_id="G1", user_id="U2"))
    )

    assert [(r.path, r.json) for r in fake.mark_requests()] == [
        (USER_PATH, {"chat": {"userId": "U1"}})
    ]
    assert handler.stats().skipped == 1


def test_auto_mode_falls_back_to_the_user_id_in_one_to_one_chats(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()  # mode="auto"

    @handler.default()
    def anything(event: Any) -> None:
        pass

    tokenless_1to1 = message_event({"type": "hologram", "id": "1"}, user_id="U1")
    tokenless_group = message_event({"type": "hologram", "id": "2"}, group_id="G1")
    with_token = text_event(room_id="R1")
    driver.handle(handler, *body_of(tokenless_1to1, tokenless_group, with_token))

    assert sorted((r.path, str(r.json)) for r in fake.mark_requests()) == sorted(
        [
            (USER_PATH, str({"chat": {"userId": "U1"}})),
            (TOKEN_PATH, str({"markAsReadToken": token_of(with_token)})),
        ]
    )
    assert handler.stats().skipped == 1


def test_group_and_room_chats_are_marked_by_token(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()

    @handler.add(MessageEvent, message=TextMessageContent)
    def on_text(event: Any) -> None:
        pass

    group, room = text_event(group_id="G1", user_id="U1"), text_event(room_id="R1")
    driver.handle(handler, *body_of(group, room))

    assert sorted(sent_tokens(fake)) == sorted([token_of(group), token_of(room)])


def test_handler_argument_conventions_are_the_sdks(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()
    calls: list[tuple[Any, ...]] = []

    @handler.add(MessageEvent, message=TextMessageContent)
    def two(event: Any, destination: Any) -> None:
        calls.append(("two", destination))

    @handler.add(MessageEvent, message=StickerMessageContent)
    def none() -> None:
        calls.append(("none",))

    @handler.add(FollowEvent)
    def varargs(*args: Any) -> None:
        calls.append(("varargs", len(args)))

    driver.handle(
        handler, *body_of(text_event(user_id="U1"), sticker_event(user_id="U2"), follow_event())
    )

    assert calls == [
        ("two", "Ufakebotdestination0000000000000"),
        ("none",),
        ("varargs", 2),
    ]


def test_message_lists_register_one_handler_for_several_types(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()
    ran: list[str] = []

    @handler.add(
        MessageEvent, message=[TextMessageContent, StickerMessageContent], mark_as_read=False
    )
    def on_either(event: Any) -> None:
        ran.append(event.message.type)

    driver.handle(handler, *body_of(text_event(user_id="U1"), sticker_event(user_id="U1")))

    assert ran == ["text", "sticker"]
    assert fake.mark_requests() == []
