"""Handled once: a redelivered or duplicated event does not run its handler again.

Over real HTTP, for ``handle()`` and ``handle_async()``, ``def`` and ``async
def`` handlers, inline and ``background=True``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from line_markread import MemoryOnceStore, OnceStore
from line_markread._once import answer_key, event_key, validate_once
from line_markread.testing import FakeLinePlatform, text_event

from .answering import CASES, Bot, Case, make_bots, redelivered


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    value: Case = request.param
    return value


@pytest.fixture
def bot(fake: FakeLinePlatform, case: Case) -> Iterator[Callable[..., Bot]]:
    yield from make_bots(fake, case)


def just_run(bot: Bot, event: Any) -> None:
    return None


def test_a_redelivered_body_after_success_runs_nothing(
    fake: FakeLinePlatform, bot: Callable[..., Bot], caplog: pytest.LogCaptureFixture
) -> None:
    b = bot()
    b.register(just_run)
    first = text_event("hi")
    b.send(first)
    b.wait_ends(1)
    b.settle()
    with caplog.at_level(logging.DEBUG, logger="line_markread"):
        b.send(redelivered(first))
        b.send(first)  # a duplicate without the redelivery flag: LINE says it happens too
        b.wait_stat("already_handled", 2)
        b.settle()
    assert b.runs == ["hi"]
    assert b.handler.stats().already_handled == 2
    # Marks keep their own de-duplication: one request, the duplicates counted there.
    assert b.handler.stats().duplicates == 2
    assert len(fake.mark_requests()) == 1
    assert any("handled before" in r.getMessage() for r in caplog.records)


def test_after_a_handler_error_the_redelivery_runs_it_again(bot: Callable[..., Bot]) -> None:
    b = bot()
    failures = [RuntimeError("the model timed out")]

    def flaky(bot: Bot, event: Any) -> None:
        if failures:
            raise failures.pop()

    b.register(flaky)
    first = text_event("hi")
    if b.case.background:
        b.send(first)  # the pool logs it and goes on
        b.wait_stat("background_failed", 1)
    else:
        with pytest.raises(RuntimeError, match="model timed out"):
            b.send(first)
    b.send(redelivered(first))
    b.wait_ends(2)
    b.settle()
    b.send(redelivered(first))  # completed now: not again
    b.wait_stat("already_handled", 1)
    assert b.runs == ["hi", "hi"]


def test_once_false_runs_every_delivery(bot: Callable[..., Bot]) -> None:
    b = bot()
    b.register(just_run, once=False)
    first = text_event("hi")
    b.send(first)
    b.wait_ends(1)
    b.settle()
    b.send(redelivered(first))
    b.wait_ends(2)
    b.settle()
    assert b.runs == ["hi", "hi"]
    assert b.handler.stats().already_handled == 0


def test_the_memory_is_bounded_and_the_oldest_event_is_forgotten(
    bot: Callable[..., Bot],
) -> None:
    b = bot(once_store=MemoryOnceStore(size=2))
    b.register(just_run)
    one, two = text_event("one"), text_event("two")
    b.send(one)
    b.send(two)
    b.wait_ends(2)
    b.settle()
    b.send(redelivered(two))  # still known (now the newest)
    b.wait_stat("already_handled", 1)
    b.send(text_event("three"))  # pushes "one" out
    b.wait_ends(3)
    b.settle()
    b.send(redelivered(one))  # forgotten: runs again, as after a restart
    b.wait_ends(4)
    assert b.runs == ["one", "two", "three", "one"]


def test_a_custom_store_is_consulted_and_written_through_its_protocol(
    bot: Callable[..., Bot],
) -> None:
    class Recording(MemoryOnceStore):
        def __init__(self) -> None:
            super().__init__()
            self.remembered: list[str] = []

        def remember(self, key: str) -> None:
            self.remembered.append(key)
            super().remember(key)

    store = Recording()
    assert isinstance(store, OnceStore)
    b = bot(once_store=store)
    b.register(just_run)
    event = text_event("hi")
    b.send(event)
    b.wait_ends(1)
    b.settle()
    assert store.seen(event_key(event["webhookEventId"]))
    if b.case.path == "sync":  # the async path writes through aremember, not remember
        assert store.remembered == [event_key(event["webhookEventId"])]


def test_bad_options_raise_at_registration(fake: FakeLinePlatform) -> None:
    from line_markread import WebhookHandler  # noqa: PLC0415  # heavy

    from .support import SECRET  # noqa: PLC0415

    with WebhookHandler(SECRET, configuration=fake.configuration()) as handler:
        with pytest.raises(TypeError, match="once must be True or False"):
            handler.add(object, once=1)  # type: ignore[arg-type]  # the point
        with pytest.raises(TypeError, match="push_fallback must be True or False"):
            handler.add(object, push_fallback="yes")  # type: ignore[arg-type]  # the point
    with pytest.raises(TypeError, match="OnceStore"):
        WebhookHandler(SECRET, configuration=fake.configuration(), once_store=object())  # type: ignore[arg-type]  # the point
    with pytest.raises(ValueError, match="reply_window"):
        WebhookHandler(SECRET, configuration=fake.configuration(), reply_window=61)
    with pytest.raises(ValueError, match="positive"):
        MemoryOnceStore(size=0)
    assert validate_once(True) is True


def test_memory_store_keeps_the_newest_keys() -> None:
    store = MemoryOnceStore(size=2)
    store.remember("a")
    store.remember("b")
    assert store.seen("a")  # touched: now the newest
    store.remember("c")
    assert store.seen("a")
    assert store.seen("c")
    assert not store.seen("b")
    assert len(store) == 2
    assert answer_key("e", 1) != answer_key("e", 2) != event_key("e")


def test_a_redelivered_event_shows_no_loading_animation(
    fake: FakeLinePlatform, bot: Callable[..., Bot]
) -> None:
    """LINE has no call that ends an animation: one started for a redelivery would show
    "typing..." under the answer already given, so a handled event starts none."""
    b = bot()
    b.register(just_run, loading=5)
    first = text_event("hi")
    b.send(first)
    b.wait_ends(1)
    b.settle()
    assert len(fake.loading_requests()) == 1
    b.send(redelivered(first))
    b.wait_stat("already_handled", 1)
    b.settle()
    assert b.runs == ["hi"]
    assert len(fake.loading_requests()) == 1
