"""Background handlers (``background=True``), over real HTTP, for handle() and handle_async()."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from linebot.v3.webhooks import MessageEvent, StickerMessageContent, TextMessageContent

from line_markread import BackgroundClosed, BackgroundFull, WebhookHandler
from line_markread._background import DaemonThreads, Lanes, Reservation, ThreadPool
from line_markread.testing import (
    LOADING_PATH,
    TOKEN_MARK_AS_READ_PATH,
    FakeLinePlatform,
    Fault,
    follow_event,
    signed_body,
    sticker_event,
    text_event,
)

from .support import SECRET, AsyncDriver, Driver, HandlerFactory, sent_tokens

USER_A = "U" + "a" * 32
USER_B = "U" + "b" * 32


class Journal:
    """What background handlers did, and when, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: list[tuple[str, str, float]] = []
        self.changed = threading.Condition(self.lock)

    def note(self, what: str, text: str) -> None:
        with self.changed:
            self.entries.append((what, text, time.monotonic()))
            self.changed.notify_all()

    def wait_for(self, count: int, what: str = "end", timeout: float = 10.0) -> None:
        with self.changed:
            ok = self.changed.wait_for(
                lambda: sum(1 for e in self.entries if e[0] == what) >= count, timeout
            )
        assert ok, f"only {self.entries} after {timeout}s"

    def when(self, what: str, text: str) -> float:
        with self.lock:
            (moment,) = [m for w, t, m in self.entries if w == what and t == text]
        return moment

    def order(self, what: str) -> list[str]:
        with self.lock:
            return [t for w, t, _ in self.entries if w == what]


def handler_for(
    driver: Driver, journal: Journal, work: Callable[[str], object] = lambda text: None
) -> Callable[..., Any]:
    """A handler noting its start and end around *work* (async under handle_async)."""
    if driver.name == "async":

        async def on_text_async(event: Any) -> None:
            journal.note("start", event.message.text)
            await asyncio.to_thread(work, event.message.text)
            journal.note("end", event.message.text)

        return on_text_async

    def on_text(event: Any) -> None:
        journal.note("start", event.message.text)
        work(event.message.text)
        journal.note("end", event.message.text)

    return on_text


def body(*events: dict[str, Any]) -> tuple[str, str]:
    return signed_body(*events, channel_secret=SECRET)


# -- registration ------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 0, None, "yes"])
def test_background_takes_true_or_false_only(fake: FakeLinePlatform, value: object) -> None:
    with WebhookHandler(SECRET, configuration=fake.configuration()) as handler:
        with pytest.raises(TypeError, match="background"):
            handler.add(MessageEvent, background=value)  # type: ignore[arg-type]  # the point
        with pytest.raises(TypeError, match="background"):
            handler.default(background=value)  # type: ignore[arg-type]  # the point


@pytest.mark.parametrize(
    "option", ["background_workers", "background_backlog", "background_grace", "on_error"]
)
def test_bad_background_settings_raise_at_construction(fake: FakeLinePlatform, option: str) -> None:
    options: dict[str, Any] = {option: -1}
    with pytest.raises((TypeError, ValueError), match=option):
        WebhookHandler(SECRET, configuration=fake.configuration(), **options)


# -- the webhook is answered first --------------------------------------------


def test_handle_returns_while_the_handler_runs_and_the_handler_still_waits_for_its_mark(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler(wait_timeout=5.0, request_timeout=3.0)
    journal = Journal()
    release = threading.Event()
    handler.add(MessageEvent, message=TextMessageContent, background=True)(
        handler_for(driver, journal, lambda text: release.wait(10))
    )
    fake.script(TOKEN_MARK_AS_READ_PATH, Fault.delay(1.0))
    event = text_event("a slow question", user_id=USER_A)
    driver.handle(handler, *body(event))
    # Returned while LINE had not answered the mark yet (delayed 1 s; wait_timeout is 5 s).
    assert [r.completed for r in fake.requests()] in ([], [False])
    assert journal.order("start") == []
    journal.wait_for(1, "start")
    (mark,) = fake.wait_for_requests(1, path=TOKEN_MARK_AS_READ_PATH)
    assert mark.responded_at is not None
    assert mark.responded_at <= journal.when("start", "a slow question")
    assert handler.stats().background_pending == 1
    release.set()
    journal.wait_for(1)
    driver.close(handler)
    stats = handler.stats()
    assert (stats.background_started, stats.background_finished, stats.background_pending) == (
        1,
        1,
        0,
    )


def test_a_three_second_handler_does_not_hold_the_webhook(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()
    journal = Journal()
    handler.add(MessageEvent, message=TextMessageContent, background=True, loading=True)(
        handler_for(driver, journal, lambda text: time.sleep(3.0))
    )
    began = time.monotonic()
    driver.handle(handler, *body(text_event("think hard", user_id=USER_A)))
    took = time.monotonic() - began
    assert took < handler.settings.wait_timeout / 2, took
    journal.wait_for(1, "start")
    (start,) = fake.wait_for_requests(1, path=LOADING_PATH)
    (mark,) = fake.wait_for_requests(1, path=TOKEN_MARK_AS_READ_PATH)
    assert mark.responded_at is not None
    assert start.responded_at is not None
    assert mark.responded_at <= start.received_at
    assert start.responded_at <= journal.when("start", "think hard")
    journal.wait_for(1)


# -- one chat at a time, in order; chats in parallel ---------------------------


def test_one_chat_runs_one_at_a_time_in_arrival_order_while_other_chats_run_in_parallel(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()
    journal = Journal()
    b_ran = threading.Event()

    def work(text: str) -> None:
        if text == "a1":
            # Only a parallel run of user B's handler lets this one go on.
            assert b_ran.wait(10), "user B's handler did not run while user A's first one did"
        if text.startswith("b"):
            b_ran.set()
        time.sleep(0.02)

    handler.add(MessageEvent, message=TextMessageContent, background=True)(
        handler_for(driver, journal, work)
    )
    driver.handle(
        handler, *body(text_event("a1", user_id=USER_A), text_event("a2", user_id=USER_A))
    )
    driver.handle(
        handler, *body(text_event("b1", user_id=USER_B), text_event("a3", user_id=USER_A))
    )
    driver.handle(handler, *body(text_event("a4", user_id=USER_A)))
    journal.wait_for(5)
    a_runs = [(journal.when("start", t), journal.when("end", t)) for t in ("a1", "a2", "a3", "a4")]
    assert [t for t in journal.order("start") if t.startswith("a")] == ["a1", "a2", "a3", "a4"]
    for (_, end), (start, _) in itertools.pairwise(a_runs):
        assert end <= start, "two handlers of one chat overlapped"
    assert journal.when("start", "b1") < journal.when("end", "a1")


def test_async_handlers_run_on_the_calling_loop_and_sync_ones_in_threads(
    fake: FakeLinePlatform,
) -> None:
    driver = AsyncDriver()
    handler = WebhookHandler(SECRET, configuration=fake.configuration())
    seen: dict[str, Any] = {}
    done = threading.Event()

    @handler.add(MessageEvent, message=TextMessageContent, background=True)
    async def on_text(event: Any) -> None:
        seen["loop"] = asyncio.get_running_loop()

    @handler.default(background=True)
    def other(event: Any) -> None:
        seen["thread"] = threading.current_thread()
        done.set()

    try:
        driver.handle(
            handler, *body(text_event("hi", user_id=USER_A), follow_event(user_id=USER_B))
        )
        assert done.wait(10)
        driver.close(handler)
    finally:
        driver.finish()
    assert seen["loop"] is driver.loop
    assert seen["thread"] is not driver.thread
    assert seen["thread"].name.startswith("line-markread-handler")


# -- errors, back-pressure, closing -------------------------------------------


def test_an_exception_goes_to_the_log_and_on_error_and_the_pool_goes_on(
    fake: FakeLinePlatform,
    driver: Driver,
    new_handler: HandlerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors: list[tuple[BaseException, Any]] = []
    handler = new_handler(on_error=lambda exc, event: errors.append((exc, event)))
    journal = Journal()

    def work(text: str) -> None:
        if text == "boom":
            raise LookupError("the back office is down")

    handler.add(MessageEvent, message=TextMessageContent, background=True)(
        handler_for(driver, journal, work)
    )
    with caplog.at_level(logging.ERROR, logger="line_markread"):
        driver.handle(handler, *body(text_event("boom", user_id=USER_A)))
        driver.handle(handler, *body(text_event("after", user_id=USER_A)))
        journal.wait_for(1)
        driver.close(handler)
    assert journal.order("end") == ["after"]
    ((exc, event),) = errors
    assert isinstance(exc, LookupError)
    assert event.message.text == "boom"
    (record,) = [r for r in caplog.records if "background handler" in r.getMessage()]
    assert f"user:{USER_A}" in record.getMessage()
    assert record.exc_info is not None
    assert fake.access_token not in caplog.text
    stats = handler.stats()
    assert (stats.background_started, stats.background_finished, stats.background_failed) == (
        2,
        2,
        1,
    )


def test_a_raising_on_error_is_logged_and_the_pool_goes_on(
    fake: FakeLinePlatform,
    driver: Driver,
    new_handler: HandlerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def on_error(exc: BaseException, event: Any) -> None:
        raise RuntimeError("on_error itself fails")

    handler = new_handler(on_error=on_error)
    journal = Journal()

    def work(text: str) -> None:
        if text == "boom":
            raise LookupError("boom")

    handler.add(MessageEvent, message=TextMessageContent, background=True)(
        handler_for(driver, journal, work)
    )
    with caplog.at_level(logging.ERROR, logger="line_markread"):
        driver.handle(handler, *body(text_event("boom", user_id=USER_A)))
        driver.handle(handler, *body(text_event("after", user_id=USER_A)))
        journal.wait_for(1)
    assert "the on_error callback raised" in caplog.text


def test_a_full_pool_refuses_the_body_before_marking_anything(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler(background_workers=1, background_backlog=1)
    journal = Journal()
    release = threading.Event()
    handler.add(MessageEvent, message=TextMessageContent, background=True)(
        handler_for(driver, journal, lambda text: release.wait(10))
    )
    driver.handle(handler, *body(text_event("one", user_id=USER_A)))
    driver.handle(handler, *body(text_event("two", user_id=USER_B)))
    refused = text_event("three", user_id=USER_A)
    with pytest.raises(BackgroundFull, match="background_backlog"):
        driver.handle(handler, *body(refused))
    release.set()
    journal.wait_for(2)
    marked = [r.json for r in fake.wait_for_requests(2, path=TOKEN_MARK_AS_READ_PATH)]
    assert {"markAsReadToken": refused["message"]["markAsReadToken"]} not in marked
    assert len(fake.requests()) == 2, "nothing of the refused body reached LINE"
    assert handler.stats().background_refused == 1
    # Room again: the next body is taken.
    driver.handle(handler, *body(text_event("four", user_id=USER_A)))
    journal.wait_for(3)


def test_close_lets_background_handlers_finish(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler()
    journal = Journal()
    handler.add(MessageEvent, message=TextMessageContent, background=True)(
        handler_for(driver, journal, lambda text: time.sleep(0.2))
    )
    driver.handle(
        handler, *body(text_event("x1", user_id=USER_A), text_event("x2", user_id=USER_A))
    )
    driver.close(handler)
    assert journal.order("end") == ["x1", "x2"]
    stats = handler.stats()
    assert (stats.background_finished, stats.background_abandoned) == (2, 0)
    with pytest.raises(RuntimeError, match="closed"):
        driver.handle(handler, *body(text_event("late", user_id=USER_A)))


def test_close_reports_what_it_abandoned_after_the_grace(
    fake: FakeLinePlatform,
    driver: Driver,
    new_handler: HandlerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = new_handler(background_grace=0.2)
    journal = Journal()
    release = threading.Event()
    handler.add(MessageEvent, message=TextMessageContent, background=True)(
        handler_for(driver, journal, lambda text: release.wait(10))
    )
    y1, y2 = text_event("y1", user_id=USER_A), text_event("y2", user_id=USER_A)
    driver.handle(handler, *body(y1, y2))
    journal.wait_for(1, "start")
    with caplog.at_level(logging.WARNING, logger="line_markread"):
        driver.close(handler)
    release.set()
    assert "abandoned 2 background handler(s)" in caplog.text
    assert "1 never started, 1 still running" in caplog.text
    assert journal.order("start") == ["y1"]
    # The job that never started never marked its message: it stays unread.
    assert sent_tokens(fake) == [token(y1)]
    stats = handler.stats()
    assert (stats.background_abandoned, stats.background_pending) == (2, 0)


def test_background_handlers_run_in_a_forked_child(fake: FakeLinePlatform) -> None:
    """gunicorn forks workers after the app is built: the child gets a pool of its own."""
    handler = WebhookHandler(SECRET, configuration=fake.configuration())
    ran = threading.Event()
    handler.add(MessageEvent, message=TextMessageContent, background=True)(lambda event: ran.set())
    handler.handle(*body(text_event("parent", user_id=USER_A)))  # the parent's pool exists
    assert ran.wait(10)
    ran.clear()

    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a multi-threaded process; that is the point here.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        try:
            handler.handle(*body(text_event("child", user_id=USER_B)))
            code = 0 if ran.wait(5) else 1
            handler.close()
            os._exit(code)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    handler.close()
    assert os.waitstatus_to_exitcode(status) == 0


def test_close_inside_the_loop_of_background_tasks_raises_instead_of_hanging(
    fake: FakeLinePlatform,
) -> None:
    driver = AsyncDriver()
    handler = WebhookHandler(SECRET, configuration=fake.configuration())
    journal = Journal()
    handler.add(MessageEvent, message=TextMessageContent, background=True)(
        handler_for(driver, journal)
    )

    async def close_from_the_loop() -> None:
        handler.close()

    try:
        driver.handle(handler, *body(text_event("hi", user_id=USER_A)))
        journal.wait_for(1)
        future = asyncio.run_coroutine_threadsafe(close_from_the_loop(), driver.loop)
        with pytest.raises(RuntimeError, match="aclose"):
            future.result(timeout=10)
        driver.close(handler)
    finally:
        driver.finish()


def test_serverless_mode_refuses_background_at_registration(fake: FakeLinePlatform) -> None:
    """``settle_before_return=True``: nothing may outlive the request, so say so up front."""
    with WebhookHandler(
        SECRET, configuration=fake.configuration(), settle_before_return=True
    ) as handler:
        with pytest.raises(ValueError, match=r"background.*settle_before_return"):
            handler.add(MessageEvent, message=TextMessageContent, background=True)
        with pytest.raises(ValueError, match=r"background.*settle_before_return"):
            handler.default(background=True)
        handler.add(MessageEvent, message=TextMessageContent, loading=True)(lambda event: None)
    assert fake.requests() == []


def test_lanes_schedule_one_job_per_chat_within_the_worker_limit() -> None:
    """The pure scheduler behind both pools."""
    lanes: Lanes[str] = Lanes(workers=2, capacity=4)
    assert not lanes.reserve(5), "all or nothing"
    assert lanes.reserve(3)
    for chat, job in (("a", "a1"), ("a", "a2"), ("b", "b1")):
        lanes.put(chat, job)
    assert lanes.take() == [("a", "a1"), ("b", "b1")]
    assert lanes.take() == []  # a2 waits for a1, and both workers are busy
    lanes.finish("b")
    assert lanes.take() == []  # b is empty; a is still running a1
    lanes.finish("a")
    assert lanes.take() == [("a", "a2")]
    assert lanes.size == 1
    assert lanes.reserve(1)
    lanes.put("c", "c1")
    # Beyond a reservation (a step routed anew after planning) the room grows by one.
    reservation = Reservation(ThreadPool.__new__(ThreadPool), 0)
    lanes.take_reserved(reservation)
    lanes.put("a", "a3")
    assert lanes.size == 3
    # At close: what never started goes; a2, running, stays.
    assert sorted(lanes.drop_waiting()) == ["a3", "c1"]
    assert (lanes.size, lanes.running) == (1, 1)


# -- issue 16: close() racing handle(), leaked room, the loop's end, BaseExceptions ------


def test_a_body_whose_background_handler_cannot_run_after_close_fails_the_webhook(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    """close() gave up while handle() was under way: handle() raises, so LINE redelivers."""
    handler = new_handler(background_grace=0.2)
    journal = Journal()
    if driver.name == "sync":

        def plain(event: Any) -> None:
            handler.close()  # a shutdown arriving while this body's first handler runs

    else:

        async def plain(event: Any) -> None:  # type: ignore[misc]  # one name, two kinds
            await handler.aclose()

    handler.add(MessageEvent, message=TextMessageContent)(plain)
    handler.default(background=True)(lambda event: journal.note("start", "follow"))
    with pytest.raises(BackgroundClosed, match="will not run"):
        driver.handle(
            handler, *body(text_event("closing", user_id=USER_A), follow_event(user_id=USER_B))
        )
    assert isinstance(BackgroundClosed("x"), BackgroundFull), "code handling a full pool too"
    assert journal.order("start") == []
    stats = handler.stats()
    assert (stats.background_started, stats.background_refused, stats.background_pending) == (
        0,
        1,
        0,
    )


def test_a_raising_handler_gives_back_the_room_of_the_bodys_background_handlers(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler(background_workers=1, background_backlog=0, background_grace=30.0)
    journal = Journal()

    @handler.add(MessageEvent, message=TextMessageContent)
    def plain(event: Any) -> None:
        raise LookupError("the plain handler fails before the background step")

    handler.default(background=True)(lambda event: journal.note("end", "follow"))
    with pytest.raises(LookupError):
        driver.handle(
            handler, *body(text_event("boom", user_id=USER_A), follow_event(user_id=USER_B))
        )
    assert handler.stats().background_pending == 0
    # The pool holds one handler: a leaked reservation would refuse this body (BackgroundFull).
    driver.handle(handler, *body(follow_event(user_id=USER_B)))
    journal.wait_for(1)
    began = time.monotonic()
    driver.close(handler)
    took = time.monotonic() - began
    assert took < handler.settings.background_grace / 3, f"close() waited {took:.1f}s"
    stats = handler.stats()
    assert (stats.background_finished, stats.background_abandoned) == (1, 0)


def test_when_the_loop_ends_before_aclose_its_background_handlers_are_abandoned_and_reported(
    fake: FakeLinePlatform, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncio.run() (and aiohttp, uvicorn) cancel every task when the app ends."""
    handler = WebhookHandler(SECRET, configuration=fake.configuration())
    ran: list[str] = []
    both_started = asyncio.Event()

    @handler.add(MessageEvent, message=TextMessageContent, background=True)
    async def on_text(event: Any) -> None:
        ran.append(event.message.text)
        if len(ran) == 2:
            both_started.set()
        await asyncio.Event().wait()  # until the loop ends

    async def main() -> None:
        await handler.handle_async(
            *body(
                text_event("z1", user_id=USER_A),
                text_event("z2", user_id=USER_A),
                text_event("z3", user_id=USER_B),
            )
        )
        await asyncio.wait_for(both_started.wait(), 10)

    with caplog.at_level(logging.WARNING, logger="line_markread"):
        asyncio.run(main())
    stats = handler.stats()
    handler.close()
    assert sorted(ran) == ["z1", "z3"], "z2 waits for z1 and never starts"
    assert (
        stats.background_started,
        stats.background_finished,
        stats.background_abandoned,
        stats.background_pending,
    ) == (3, 0, 3, 0)
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = warning.getMessage()
    assert "abandoned 3 background handler(s): 1 never started, 2 cancelled" in text
    assert f"user:{USER_A}" in text
    assert f"user:{USER_B}" in text
    assert fake.access_token not in caplog.text


def test_a_loop_closed_without_cancelling_its_tasks_still_accounts_for_their_handlers(
    fake: FakeLinePlatform, caplog: pytest.LogCaptureFixture
) -> None:
    """``loop.run_until_complete(main()); loop.close()``: the tasks never ran again."""
    driver = AsyncDriver()
    handler = WebhookHandler(SECRET, configuration=fake.configuration())
    journal = Journal()

    @handler.add(MessageEvent, message=TextMessageContent, background=True)
    async def on_text(event: Any) -> None:
        journal.note("start", event.message.text)
        await asyncio.Event().wait()

    try:
        driver.handle(
            handler,
            *body(text_event("w1", user_id=USER_A), text_event("w2", user_id=USER_A)),
        )
        journal.wait_for(1, "start")
        driver.run(handler.marker.aclose())  # the marks' session closed; the handlers go on
    finally:
        driver.finish()  # stops and closes the loop, cancelling nothing
    with caplog.at_level(logging.WARNING, logger="line_markread"):
        stats = handler.stats()
        handler.close()
    assert (stats.background_started, stats.background_abandoned, stats.background_pending) == (
        2,
        2,
        0,
    )
    (warning,) = [r for r in caplog.records if "background handler" in r.getMessage()]
    assert "abandoned 2 background handler(s): 1 never started, 1 lost" in warning.getMessage()


@pytest.mark.parametrize("leaving", ["sys.exit", "KeyboardInterrupt"])
def test_a_sync_background_handler_leaving_with_a_base_exception_is_a_failure(
    fake: FakeLinePlatform,
    driver: Driver,
    new_handler: HandlerFactory,
    caplog: pytest.LogCaptureFixture,
    leaving: str,
) -> None:
    """In a pool thread these stop nothing: logged, ``on_error``, ``background_failed``."""
    errors: list[BaseException] = []
    handler = new_handler(on_error=lambda exc, event: errors.append(exc))
    journal = Journal()

    @handler.add(MessageEvent, message=TextMessageContent, background=True)
    def on_text(event: Any) -> None:  # sync, so in the pool's threads under both drivers
        if event.message.text == "leave":
            if leaving == "sys.exit":
                sys.exit(3)
            raise KeyboardInterrupt
        journal.note("end", event.message.text)

    with caplog.at_level(logging.ERROR, logger="line_markread"):
        driver.handle(handler, *body(text_event("leave", user_id=USER_A)))
        driver.handle(handler, *body(text_event("after", user_id=USER_A)))
        journal.wait_for(1)
        driver.close(handler)
    assert [type(e) for e in errors] == [SystemExit if leaving == "sys.exit" else KeyboardInterrupt]
    (record,) = [r for r in caplog.records if "background handler" in r.getMessage()]
    assert f"user:{USER_A}" in record.getMessage()
    stats = handler.stats()
    assert (stats.background_finished, stats.background_failed, stats.background_pending) == (
        2,
        1,
        0,
    )


def test_a_stray_cancelled_error_out_of_an_async_background_handler_is_a_failure(
    fake: FakeLinePlatform, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a cancellation of its task (not aclose()'s, not the loop's end): the handler failed."""
    driver = AsyncDriver()
    errors: list[BaseException] = []
    handler = WebhookHandler(
        SECRET, configuration=fake.configuration(), on_error=lambda exc, e: errors.append(exc)
    )
    journal = Journal()

    @handler.add(MessageEvent, message=TextMessageContent, background=True)
    async def on_text(event: Any) -> None:
        if event.message.text == "stray":
            cancelled = asyncio.get_running_loop().create_future()
            cancelled.cancel()  # e.g. a client library's request future, cancelled by it
            await cancelled
        journal.note("end", event.message.text)

    try:
        with caplog.at_level(logging.ERROR, logger="line_markread"):
            driver.handle(handler, *body(text_event("stray", user_id=USER_A)))
            driver.handle(handler, *body(text_event("after", user_id=USER_A)))
            journal.wait_for(1)
            driver.close(handler)
    finally:
        driver.finish()
    assert journal.order("end") == ["after"]
    assert [type(e) for e in errors] == [asyncio.CancelledError]
    assert "raised CancelledError" in caplog.text
    stats = handler.stats()
    assert (
        stats.background_finished,
        stats.background_failed,
        stats.background_abandoned,
    ) == (2, 1, 0)


def test_a_keyboard_interrupt_on_the_loop_is_reported_then_stops_the_loop_as_asyncio_does(
    fake: FakeLinePlatform,
) -> None:
    """Raised on the loop's thread it may be a real Ctrl-C: reported, never swallowed."""
    errors: list[BaseException] = []
    handler = WebhookHandler(
        SECRET, configuration=fake.configuration(), on_error=lambda exc, e: errors.append(exc)
    )

    @handler.add(MessageEvent, message=TextMessageContent, background=True)
    async def on_text(event: Any) -> None:
        raise KeyboardInterrupt

    async def serve() -> None:
        await handler.handle_async(*body(text_event("ctrl-c", user_id=USER_A)))
        await asyncio.Event().wait()  # a server runs until stopped

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(serve())
    stats = handler.stats()
    handler.close()
    assert [type(e) for e in errors] == [KeyboardInterrupt]
    assert (stats.background_finished, stats.background_failed) == (1, 1)


def test_queued_calls_still_run_when_no_new_thread_may_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Python 3.12+ refuses new threads at interpreter exit, while the exit drain still runs:
    the pool's threads are reused, so what is queued runs on the thread already there."""
    threads = DaemonThreads(4)
    busy, done = threading.Event(), Journal()

    def first() -> None:
        busy.wait(10)
        done.note("end", "first")

    threads.submit(first)

    def refused(self: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(threading.Thread, "start", refused)
    for n in range(3):
        threads.submit(lambda n=n: done.note("end", str(n)))  # type: ignore[misc]  # bound default
    busy.set()
    done.wait_for(4)
    assert done.order("end") == ["first", "0", "1", "2"]
    threads.stop()


# -- "Read" means the bot has picked the message up ----------------------------


def marks(fake: FakeLinePlatform, count: int) -> dict[str, Any]:
    """The fake's answered marks (at least *count*), by the text of the message they mark."""
    records = fake.wait_for_requests(count, path=TOKEN_MARK_AS_READ_PATH, timeout=10.0)
    return {r.json["markAsReadToken"]: r for r in records}  # type: ignore[index]  # JSON object


def token(event: dict[str, Any]) -> str:
    value = event["message"]["markAsReadToken"]
    assert isinstance(value, str)
    return value


def test_a_queued_background_message_is_marked_read_only_when_its_turn_comes(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler(wait_timeout=5.0)
    journal = Journal()
    release = threading.Event()
    handler.add(MessageEvent, message=TextMessageContent, background=True)(
        handler_for(driver, journal, lambda text: text == "first" and release.wait(10))
    )
    first = text_event("first", user_id=USER_A)
    second = text_event("second", user_id=USER_A)
    driver.handle(handler, *body(first))
    driver.handle(handler, *body(second))  # answered while the first handler still runs
    journal.wait_for(1, "start")
    first_mark = marks(fake, 1)[token(first)]
    # The second message waits in its chat's lane: nothing marks it yet ("Read" = picked up).
    assert token(second) not in sent_tokens(fake)
    release.set()
    journal.wait_for(2)
    second_mark = marks(fake, 2)[token(second)]
    assert sent_tokens(fake) == [token(first), token(second)]
    assert first_mark.responded_at <= journal.when("start", "first")
    assert journal.when("end", "first") <= second_mark.received_at
    assert second_mark.responded_at <= journal.when("start", "second")
    driver.close(handler)


def test_inline_steps_are_marked_before_handle_returns_background_ones_when_their_job_starts(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler(wait_timeout=5.0)
    journal = Journal()
    release = threading.Event()
    handler.add(MessageEvent, message=TextMessageContent, background=True)(
        handler_for(driver, journal, lambda text: text == "slow" and release.wait(10))
    )
    inline_ran = threading.Event()

    def on_sticker(event: Any) -> None:
        inline_ran.set()

    handler.add(MessageEvent, message=StickerMessageContent)(on_sticker)
    slow = text_event("slow", user_id=USER_A)
    queued = text_event("queued", user_id=USER_A)
    driver.handle(handler, *body(slow))
    journal.wait_for(1, "start")
    sticker = sticker_event(user_id=USER_B)
    driver.handle(handler, *body(queued, sticker))
    returned = time.monotonic()
    assert inline_ran.is_set()
    sticker_mark = marks(fake, 2)[token(sticker)]
    assert sticker_mark.responded_at <= returned  # the inline step waited for its mark
    assert token(queued) not in sent_tokens(fake)
    release.set()
    journal.wait_for(2)
    queued_mark = marks(fake, 3)[token(queued)]
    assert journal.when("end", "slow") <= queued_mark.received_at
    assert queued_mark.responded_at <= journal.when("start", "queued")
    driver.close(handler)
