"""Durable background handlers, in one process: a real PostgreSQL, the fake LINE platform.

The web side (``handle``/``handle_async`` with ``queue=PostgresQueue``) and a
worker (``run_worker``, what ``line-markread worker`` runs) share this
process here, so each semantic is shown quickly and exactly; the same code
across real processes, signals and crashes is tests/test_durable_processes.py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from linebot.v3.messaging import TextMessage
from linebot.v3.webhooks import MessageEvent, StickerMessageContent, TextMessageContent

from line_markread import (
    Delivery,
    MemoryOnceStore,
    PostgresQueue,
    QueueUnavailable,
    ReplyResult,
    RetryPolicy,
    WebhookHandler,
    install,
)
from line_markread._queue import Job
from line_markread._queue._once_store import PostgresOnceStore
from line_markread._queue._postgres import init_schema
from line_markread._queue._worker import JobFailed, run_worker
from line_markread.testing import (
    REPLY_PATH,
    FakeLinePlatform,
    assert_answered_once,
    sticker_event,
    text_event,
)

from .support import SECRET, body_of, token_of

WAIT = 60.0
"""Generous: a loaded 2-core machine."""


@pytest.fixture
def schema(database_url: str) -> str:
    assert init_schema(database_url) == "created"
    assert init_schema(database_url) == "up to date"  # idempotent
    return database_url


def durable_handler(
    fake: FakeLinePlatform, url: str, **options: Any
) -> tuple[WebhookHandler, PostgresQueue]:
    queue_options = {k: options.pop(k) for k in ("retry",) if k in options}
    queue = PostgresQueue(url, stalled_after=3, **queue_options)
    handler = WebhookHandler(SECRET, configuration=fake.configuration(), queue=queue, **options)
    return handler, queue


@contextlib.asynccontextmanager
async def worker(handler: WebhookHandler, queue: PostgresQueue) -> AsyncIterator[None]:
    """``run_worker`` on this loop until the block ends (a clean stop, as on SIGTERM)."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_worker(handler, queue, concurrency=4, grace=10, install_signals=False, stop=stop)
    )
    try:
        yield
    finally:
        stop.set()
        assert await asyncio.wait_for(task, WAIT) == 0


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Wait (polling the test's own state, which has no event to wait on) up to WAIT s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_webhook_only_queues_then_the_worker_marks_and_runs_in_chat_order(
    fake: FakeLinePlatform, schema: str
) -> None:
    handler, queue = durable_handler(fake, schema)
    ran: list[tuple[str, str]] = []
    marked_first: list[bool] = []
    running: collections.Counter[str] = collections.Counter()
    overlapped: list[str] = []
    lock = threading.Lock()

    def begin(user: str) -> None:
        with lock:
            running[user] += 1
            if running[user] > 1:
                overlapped.append(user)

    def end(user: str, text: str) -> None:
        with lock:
            running[user] -= 1
            ran.append((user, text))

    @handler.add(MessageEvent, message=TextMessageContent, background=True)
    async def on_text(event: Any) -> None:
        begin(event.source.user_id)
        marked_first.append(event.message.mark_as_read_token in fake.marked_tokens())
        await asyncio.sleep(0.05)
        end(event.source.user_id, event.message.text)

    @handler.add(MessageEvent, message=StickerMessageContent, background=True)
    def on_sticker(event: Any) -> None:  # a sync handler: the worker's threads
        begin(event.source.user_id)
        marked_first.append(event.message.mark_as_read_token in fake.marked_tokens())
        time.sleep(0.05)  # a slow handler (in a worker thread)
        end(event.source.user_id, "sticker")

    users = ["U" + str(n) * 32 for n in range(3)]
    events = [
        text_event(f"{n}", user_id=user) if n % 3 else sticker_event(user_id=user)
        for n in range(6)
        for user in users
    ]
    for event in events:
        await handler.handle_async(*body_of(event))
    # Accepted and answered, nothing marked: "Read" waits until a worker picks it up.
    assert fake.requests() == []
    assert (await queue.astats()).depth == len(events)

    async with worker(handler, queue):
        await until(lambda: len(ran) == len(events), "every job")
    assert all(marked_first)
    assert overlapped == []  # never two handlers of one chat at once
    for user in users:
        assert [text for u, text in ran if u == user] == [
            "sticker" if n % 3 == 0 else f"{n}" for n in range(6)
        ]
    stats = await queue.astats()
    assert (stats.depth, stats.running, stats.failed, stats.deferred) == (0, 0, 0, len(events))


def test_sync_handle_queues_async_background_handlers_too(
    fake: FakeLinePlatform, schema: str
) -> None:
    handler, queue = durable_handler(fake, schema)

    @handler.add(MessageEvent, message=TextMessageContent, background=True)
    async def on_text(event: Any) -> None:
        raise AssertionError("not run here: no worker in this test")

    handler.handle(*body_of(text_event("a"), text_event("b")))  # sync web, async handler: fine
    assert queue.stats().depth == 2
    assert queue.stats().deferred == 2
    assert fake.requests() == []
    handler.close()


async def test_a_redelivered_event_creates_no_second_job(
    fake: FakeLinePlatform, schema: str
) -> None:
    handler, queue = durable_handler(fake, schema)
    ran: list[str] = []

    @handler.add(MessageEvent, message=TextMessageContent, background=True)
    async def on_text(event: Any) -> None:
        ran.append(event.message.text)

    first = text_event("once", user_id="U" + "a" * 32)
    again = dict(first, deliveryContext={"isRedelivery": True})
    await handler.handle_async(*body_of(first))
    await handler.handle_async(*body_of(first))  # the same body (LINE retried a lost answer)
    await handler.handle_async(*body_of(again))  # LINE's redelivery of it
    await handler.handle_async(*body_of(first, text_event("next", user_id="U" + "a" * 32)))
    stats = await queue.astats()
    assert (stats.depth, stats.deferred, stats.duplicates) == (2, 2, 3)
    async with worker(handler, queue):
        await until(lambda: len(ran) == 2, "both jobs")
    assert ran == ["once", "next"]


@pytest.mark.parametrize("path", ["sync", "async"])
async def test_database_unreachable_raises_before_anything_is_marked_or_run(
    fake: FakeLinePlatform, tmp_path: Any, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    url = f"postgresql://postgres:s3cret@/nowhere?host={tmp_path}&port=5432"
    handler, queue = durable_handler(fake, url)
    inline: list[str] = []

    @handler.add(MessageEvent, message=TextMessageContent, background=True)
    async def on_text(event: Any) -> None:
        raise AssertionError("never queued")

    @handler.add(MessageEvent, message=StickerMessageContent)
    def on_sticker(event: Any) -> None:  # inline, in the web process (sync: both paths)
        inline.append("ran")

    caplog.set_level(logging.ERROR)
    for _ in range(3):
        body = body_of(text_event("lost?"), sticker_event())
        call = (
            asyncio.to_thread(handler.handle, *body)
            if path == "sync"
            else handler.handle_async(*body)
        )
        with pytest.raises(QueueUnavailable) as raised:
            await call
        assert "s3cret" not in str(raised.value)
    assert fake.requests() == []  # nothing marked: LINE redelivers, the user sees no "Read"
    assert inline == []  # nor the body's other handlers
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1  # one ERROR per burst
    assert "s3cret" not in caplog.text
    assert queue.stats().refused == 3  # the background jobs of 3 bodies
    await handler.aclose()


async def test_a_handler_error_goes_to_on_error_then_the_chats_next_job_runs(
    fake: FakeLinePlatform, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[tuple[BaseException, Any]] = []
    handler, queue = durable_handler(
        fake, schema, on_error=lambda exc, event: errors.append((exc, event))
    )
    ran: list[str] = []

    @handler.add(MessageEvent, message=TextMessageContent, background=True)
    async def on_text(event: Any) -> None:
        if event.message.text == "boom":
            raise ValueError("boom")
        ran.append(event.message.text)

    user = "U" + "b" * 32
    await handler.handle_async(*body_of(text_event("boom", user_id=user)))
    await handler.handle_async(*body_of(text_event("after", user_id=user)))
    async with worker(handler, queue):
        await until(lambda: ran == ["after"], "the next job")
    assert [type(e).__name__ for e, _ in errors] == ["ValueError"]
    assert errors[0][1].message.text == "boom"
    assert f"user:{user}" in caplog.text
    assert fake.access_token not in caplog.text
    assert (await queue.astats()).failed == 1


async def test_a_retry_policy_runs_the_job_again_before_the_chats_next_one(
    fake: FakeLinePlatform, schema: str
) -> None:
    calls: list[str] = []

    async def on_text(event: Any) -> None:
        calls.append(event.message.text)
        if calls.count("flaky") == 1 and event.message.text == "flaky":
            raise ConnectionError("the model timed out")

    handler, queue = durable_handler(fake, schema, retry={on_text: RetryPolicy(3, wait=0)})
    handler.add(MessageEvent, message=TextMessageContent, background=True)(on_text)
    user = "U" + "c" * 32
    await handler.handle_async(*body_of(text_event("flaky", user_id=user)))
    await handler.handle_async(*body_of(text_event("later", user_id=user)))
    async with worker(handler, queue):
        await until(lambda: "later" in calls, "the chat's next job")
    assert calls == ["flaky", "flaky", "later"]
    stats = await queue.astats()
    assert (stats.retried, stats.failed) == (1, 0)


@pytest.mark.parametrize("broken", ["unknown handler", "event cannot be rebuilt"])
async def test_a_job_that_cannot_run_here_fails_cleanly_and_the_chat_goes_on(
    fake: FakeLinePlatform, schema: str, broken: str
) -> None:
    errors: list[BaseException] = []
    handler, queue = durable_handler(fake, schema, on_error=lambda exc, e: errors.append(exc))
    ran: list[str] = []

    @handler.add(MessageEvent, message=TextMessageContent, background=True)
    async def on_text(event: Any) -> None:
        ran.append(event.message.text)

    user = "U" + "d" * 32
    good = text_event("fine", user_id=user)
    if broken == "unknown handler":  # e.g. the web was deployed before the workers
        raw = text_event("orphan", user_id=user)
        job = Job(raw, None, "renamed_handler", "MessageEvent_TextMessageContent", None, None)
    else:  # e.g. an SDK upgrade that no longer reads old JSON
        raw = {"type": "message", "message": {"type": "text"}}
        job = Job(raw, None, "on_text", "MessageEvent_TextMessageContent", None, None)
    job = Job(
        job.event, None, job.handler, job.route, f"user:{user}", f"evt-{broken.replace(' ', '-')}"
    )
    assert await queue.adefer([job]) == 1
    await handler.handle_async(*body_of(good))
    async with worker(handler, queue):
        await until(lambda: ran == ["fine"], "the chat's next job")
    assert [type(e) for e in errors] == [JobFailed]
    assert (await queue.astats()).failed == 1
    assert token_of(good) in fake.marked_tokens()


async def test_a_message_is_marked_when_its_job_starts_not_when_the_webhook_came(
    fake: FakeLinePlatform, schema: str
) -> None:
    handler, queue = durable_handler(fake, schema)
    gate = asyncio.Event()
    ran: list[str] = []

    @handler.add(MessageEvent, message=TextMessageContent, background=True)
    async def on_text(event: Any) -> None:
        if event.message.text == "slow":
            await gate.wait()
        ran.append(event.message.text)

    user = "U" + "e" * 32
    slow, waiting = text_event("slow", user_id=user), text_event("waiting", user_id=user)
    await handler.handle_async(*body_of(slow, waiting))
    async with worker(handler, queue):
        await until(lambda: token_of(slow) in fake.marked_tokens(), "the first mark")
        # The second message's job has not started: it stays unread meanwhile.
        assert token_of(waiting) not in fake.marked_tokens()
        gate.set()
        await until(lambda: ran == ["slow", "waiting"], "both jobs")
    assert fake.marked_tokens().index(token_of(slow)) < fake.marked_tokens().index(
        token_of(waiting)
    )
    assert not [r for r in fake.requests() if r.path == REPLY_PATH]


async def test_workers_prune_old_redelivery_and_once_records_and_warn_about_a_waiting_chat(
    fake: FakeLinePlatform, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    import psycopg  # noqa: PLC0415  # the extra, like the module under test

    queue = PostgresQueue(schema, stalled_after=3, wait_warning=0.5)
    handler = WebhookHandler(SECRET, configuration=fake.configuration(), queue=queue)
    gate = asyncio.Event()

    @handler.add(MessageEvent, message=TextMessageContent, background=True)
    async def on_text(event: Any) -> None:
        await gate.wait()

    async with await psycopg.AsyncConnection.connect(schema, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO line_markread_accepted VALUES "
            "('ancient', now() - interval '49 hours'), ('recent', now() - interval '47 hours')"
        )

        await conn.execute(  # the once store's keys: the same retention
            "INSERT INTO line_markread_once VALUES "
            "('handled/ancient', now() - interval '49 hours'), "
            "('handled/recent', now() - interval '47 hours')"
        )

        async def kept() -> set[str]:
            cursor = await conn.execute(
                "SELECT webhook_event_id FROM line_markread_accepted "
                "UNION ALL SELECT key FROM line_markread_once"
            )
            return {row[0] for row in await cursor.fetchall()}

        user = "U" + "f" * 32
        await handler.handle_async(*body_of(text_event("stuck", user_id=user)))
        await handler.handle_async(*body_of(text_event("waits", user_id=user)))
        caplog.set_level(logging.WARNING)
        async with worker(handler, queue):
            await until(lambda: "has waited" in caplog.text, "the wait WARNING")
            gate.set()
        remaining = await kept()
    assert "ancient" not in remaining  # older than the retention (48 h): pruned
    assert "handled/ancient" not in remaining
    assert {"recent", "handled/recent"} <= remaining
    assert f"user:{user}" in caplog.text


def test_a_forked_child_queues_on_its_own_connection_and_the_parent_keeps_its_own(
    schema: str,
) -> None:
    queue = PostgresQueue(schema)
    chat = "user:U" + "9" * 32

    def job(n: int) -> Job:
        raw = text_event(f"{n}", user_id="U" + "9" * 32)
        return Job(raw, None, "h", "MessageEvent_TextMessageContent", chat, f"fork-{n}")

    assert queue.defer([job(1)]) == 1  # the parent now keeps an idle connection
    session = queue._idle_sync._idle[0].info.backend_pid
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a multi-threaded process; that is the point here.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        try:
            queued = queue.defer([job(2)])
            queue.close()  # as a child does at its shutdown
            os._exit(0 if queued == 1 else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert queue.defer([job(3)]) == 1
    # The child neither used nor closed the parent's session: the same one serves on.
    assert queue._idle_sync._idle[0].info.backend_pid == session
    assert queue.stats().depth == 3
    queue.close()


def test_install_takes_a_queue_too(fake: FakeLinePlatform, schema: str) -> None:
    import linebot.v3  # noqa: PLC0415

    sdk_handler = linebot.v3.WebhookHandler(SECRET)
    queue = PostgresQueue(schema)
    handler = install(sdk_handler, configuration=fake.configuration(), queue=queue)
    assert handler.queue is queue

    @handler.add(MessageEvent, message=TextMessageContent, background=True)
    def on_text(event: Any) -> None:
        raise AssertionError("run by a worker, not here")

    handler.handle(*body_of(text_event("durable")))
    assert queue.stats().deferred == 1
    assert fake.requests() == []
    handler.close()
    with pytest.raises(TypeError, match="durable queue"):
        WebhookHandler(SECRET, access_token="t", queue="postgresql://nope")  # type: ignore[arg-type]


def test_without_the_extra_the_queue_says_which_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['procrastinate'] = None\n"
        "from line_markread import PostgresQueue\n"
        "try:\n"
        "    PostgresQueue('postgresql://u:pw@h/db')\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert "line-markread[postgres]" in result.stdout


# -- exactly one answer per message, on the durable path (issue 18) ------------------------


def answer_handlers(
    handler: WebhookHandler,
    ran: list[str],
    results: list[ReplyResult],
    *,
    think: float = 0.0,
    **options: Any,
) -> None:
    """A durable ``async def`` text handler and a ``def`` sticker handler, each answering once."""

    @handler.add(MessageEvent, message=TextMessageContent, background=True, **options)
    async def on_text(event: Any) -> None:
        await asyncio.sleep(think)  # a slow model call
        results.append(await handler.areply(event, TextMessage(text="text answer")))
        ran.append("text")

    @handler.add(MessageEvent, message=StickerMessageContent, background=True, **options)
    def on_sticker(event: Any) -> None:
        time.sleep(think)
        results.append(handler.reply(event, TextMessage(text="sticker answer")))
        ran.append("sticker")


async def test_a_job_run_again_on_another_worker_after_it_completed_runs_nothing(
    fake: FakeLinePlatform, schema: str
) -> None:
    handler, queue = durable_handler(fake, schema)
    ran: list[str] = []
    results: list[ReplyResult] = []
    answer_handlers(handler, ran, results)
    text, sticker = text_event("hi", user_id="U" + "1" * 32), sticker_event(user_id="U" + "2" * 32)
    await handler.handle_async(*body_of(text, sticker))
    async with worker(handler, queue):
        await until(lambda: sorted(ran) == ["sticker", "text"], "both jobs")
    assert [r.delivery for r in results] == [Delivery.REPLIED] * 2
    # The same jobs once more (a job whose end the database never recorded runs again),
    # on another worker: a process of its own, which never saw these events.
    other, other_queue = durable_handler(fake, schema)
    assert isinstance(other._markread_answers.store, PostgresOnceStore)
    answer_handlers(other, ran, results)
    again = [
        Job(raw, None, name, route, f"user:{raw['source']['userId']}", None)
        for raw, name, route in (
            (text, "answer_handlers.<locals>.on_text", "MessageEvent_TextMessageContent"),
            (sticker, "answer_handlers.<locals>.on_sticker", "MessageEvent_StickerMessageContent"),
        )
    ]
    assert await other_queue.adefer(again) == 2
    async with worker(other, other_queue):
        await until(lambda: other.stats().already_handled == 2, "both re-runs skipped")
    assert sorted(ran) == ["sticker", "text"]  # no handler ran twice
    assert_answered_once(fake, text, sticker)


@pytest.mark.parametrize("path", ["sync", "async"])
async def test_a_redelivery_to_another_web_replica_runs_its_inline_handler_nothing(
    fake: FakeLinePlatform, schema: str, path: str
) -> None:
    ran: list[str] = []

    def replica(**options: Any) -> WebhookHandler:
        handler = WebhookHandler(
            SECRET, configuration=fake.configuration(), queue=PostgresQueue(schema), **options
        )

        @handler.add(MessageEvent, message=TextMessageContent)  # inline: the web process
        def on_text(event: Any) -> None:
            ran.append(event.message.text)

        return handler

    async def deliver(handler: WebhookHandler, event: dict[str, Any]) -> None:
        if path == "sync":
            await asyncio.to_thread(handler.handle, *body_of(event))
        else:
            await handler.handle_async(*body_of(event))

    first, second = replica(), replica()
    event = text_event("hello")
    await deliver(first, event)
    await deliver(second, dict(event, deliveryContext={"isRedelivery": True}))
    assert ran == ["hello"]
    assert second.stats().already_handled == 1
    # An explicit once_store wins over the queue's: this replica remembers only itself.
    third = replica(once_store=MemoryOnceStore())
    await deliver(third, event)
    assert ran == ["hello", "hello"]
    for handler in (first, second, third):
        await handler.aclose()


@pytest.mark.parametrize("push_fallback", [True, False])
async def test_a_durable_handler_finishing_after_the_tokens_life_pushes_once_or_says_why(
    fake: FakeLinePlatform, schema: str, caplog: pytest.LogCaptureFixture, push_fallback: bool
) -> None:
    # The web process and the worker are two handlers (two processes' worth): the token's
    # clock starts when the web one received the webhook (the job's accepted_at).
    web, _ = durable_handler(fake, schema)
    handler, queue = durable_handler(fake, schema, reply_window=0.5)
    ran: list[str] = []
    results: list[ReplyResult] = []
    answer_handlers(web, [], [], push_fallback=push_fallback)
    answer_handlers(handler, ran, results, think=0.8, push_fallback=push_fallback)
    text, sticker = (
        text_event("slow", user_id="U" + "3" * 32),
        sticker_event(user_id="U" + "4" * 32),
    )
    await web.handle_async(*body_of(text, sticker))
    await web.aclose()
    caplog.set_level(logging.WARNING)
    async with worker(handler, queue):
        await until(lambda: len(ran) == 2, "both jobs")
    assert not fake.reply_requests()  # the token was past reply_window: never tried
    if push_fallback:
        assert [r.delivery for r in results] == [Delivery.PUSHED] * 2
        assert all("past reply_window" in (r.reason or "") for r in results)
        assert_answered_once(fake, text, sticker)
        assert len(fake.push_requests()) == 2
    else:
        assert [r.delivery for r in results] == [Delivery.FAILED] * 2
        assert all("push_fallback is off" in (r.reason or "") for r in results)
        assert not fake.push_requests()
        warned = [r.getMessage() for r in caplog.records if "was not delivered" in r.getMessage()]
        for event in (text, sticker):  # one WARNING each, naming the event
            assert sum(event["webhookEventId"] in line for line in warned) == 1
    assert handler.stats().answers_pushed == (2 if push_fallback else 0)
    assert handler.stats().answers_failed == (0 if push_fallback else 2)


@pytest.mark.parametrize("cause", ["database unreachable", "table missing"])
async def test_a_once_store_that_cannot_answer_lets_handlers_run_and_warns_once(
    fake: FakeLinePlatform,
    database_url: str,
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
    cause: str,
) -> None:
    if cause == "database unreachable":
        url = f"postgresql://postgres:s3cret@/nowhere?host={tmp_path}&port=5432"
    else:  # a database whose schema predates the once store (queue init not run again)
        url = database_url
    store = PostgresQueue(url).once_store()
    caplog.set_level(logging.WARNING)
    for _ in range(2):
        assert store.seen("handled/x") is False  # a handler runs: at least once
        store.remember("handled/x")  # nothing recorded, nothing raised
        assert await store.aseen("handled/x") is False
        await store.aremember("handled/x")
    warnings_ = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_) == 1  # one per burst
    assert "queue init" in warnings_[0]
    assert "s3cret" not in caplog.text
    assert "s3cret" not in repr(store)
    await store.queue.aclose()


def test_the_workers_database_url_takes_the_queues_once_store_along(
    fake: FakeLinePlatform,
) -> None:
    # `line-markread worker --database-url` swaps the queue: "handled once" must follow it.
    first, second = PostgresQueue("postgresql://a/one"), PostgresQueue("postgresql://b/two")
    handler = WebhookHandler(SECRET, configuration=fake.configuration(), queue=first)
    assert handler._markread_answers.store is first.once_store()
    handler._markread_use_queue(second)
    assert handler._markread_answers.store is second.once_store()
    chosen = MemoryOnceStore()
    mine = WebhookHandler(
        SECRET, configuration=fake.configuration(), queue=first, once_store=chosen
    )
    mine._markread_use_queue(second)
    assert mine._markread_answers.store is chosen  # the bot's own choice stays
    handler.close()
    mine.close()
