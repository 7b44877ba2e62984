"""Soak: thousands of messages over many chats, with injected 503s and timeouts, on both paths.

Each test plays a seeded plan through one ``WebhookHandler`` against the fake
platform: chats are split into *lanes*; a lane sends its bodies one after
another (so each chat's messages arrive in order), all lanes run at once (so
bodies of different chats are concurrent).  A body carries 1-5 messages of at
most two chats of its lane.  About 10% of the messages are opted out by a
``mark_as_read`` policy.  The token endpoint is pre-scripted, from the same
seed, with ~5% 503s and ~1% hangs (a timeout at ``request_timeout``).

The plan runs in two phases over disjoint halves of the chats, with
``max_tracked_chats`` below a phase's chat count: after phase 1 the engine
holds as many chats as it ever will, so its retained memory (tracemalloc,
allocations made by the package itself) must stay flat in phase 2.

A third test plays the hostile phases of issue 9 on both paths: LINE hangs
while bursts of new chats arrive (every body released by ``wait_timeout``,
state bounded by ``max_tracked_chats``, the excess counted as ``overflowed``
and reported), LINE recovers (every chat's next message marked, every
failure counted and passed to ``on_failure``), and LINE answers every
request 1.2 s late (every mark lands, at most two requests each).

Plain ``pytest`` (``make test``) runs them at CI size; ``pytest --soak``
at full size (20,000 messages over 2,000 chats).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import importlib.util
import logging
import os
import random
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from linebot.v3.webhooks import MessageEvent, TextMessageContent

import line_markread
from line_markread import MarkFailure, Stats, WebhookHandler
from line_markread._targets import _chat_of
from line_markread.testing import (
    FakeLinePlatform,
    Fault,
    signed_body,
    text_event,
)

from .support import SECRET, TOKEN_PATH, AsyncDriver, Driver

RETRY_COST = 5
"""What the cheapest retry costs in the retry budget (``_guard.RETRY_COST``)."""

MEMORY_FACTOR = 1.3
"""Phase 2 may retain at most this much more than phase 1: growth per chat would double it."""
MEMORY_SLACK = 16 * 1024
"""Bytes of noise allowed on top of the factor.  Measured by the package's own files only, the
noise is about 2 KiB run to run, loaded or not; phase 1 holds about 45 KiB at CI size, so this
stays well below what keeping every forgotten chat would add (~50 KiB at CI size)."""
MEMORY_SAMPLES = 3
"""Snapshots per measurement; the smallest counts (a transient allocation is not retention)."""
REQUEST_TIMEOUT = 1.0
"""The default.  It only has to tell the injected hangs (never answered) from answers, and on a
loaded machine the loop's own lag, tracemalloc on, delays loopback answers past 0.2 s (the old
value): healthy first attempts then timed out by the hundred, drained the retry budget and
failed marks for good."""
WAIT_TIMEOUT = 3.0
"""Far above a mark here (a hang costs ``REQUEST_TIMEOUT``, its retry an answer), so handlers
wait for their marks."""
PHASE_LIMIT = 300.0
"""Seconds a phase may take (it needs a few at CI size): a handler stuck by a bug fails the
test instead of hanging the suite."""


@dataclass(frozen=True)
class Size:
    messages: int
    chats: int
    lanes: int
    """Bodies in flight at once (async: concurrent tasks; sync: threads)."""
    max_tracked_chats: int
    """Below a phase's chat count (chats // 2) so chats are forgotten, yet well above the
    chats busy at once (at most 2 per lane) so eviction always finds idle ones."""


ASYNC_SIZE = {False: Size(2_000, 200, 20, 60), True: Size(20_000, 2_000, 100, 400)}
SYNC_SIZE = {False: Size(1_200, 200, 16, 60), True: Size(20_000, 2_000, 16, 400)}


@dataclass(frozen=True)
class Message:
    chat: int
    seq: int
    """Position in its chat: 0, 1, 2, ... (its timestamp grows with it)."""
    opted_in: bool

    @property
    def token(self) -> str:
        return f"soak-{self.chat}-{self.seq}"

    def event(self) -> dict[str, Any]:
        return text_event(
            f"{'o' if self.opted_in else 'x'}{self.chat}:{self.seq}",
            user_id=f"U{self.chat:032d}",
            token=self.token,
            timestamp=1_700_000_000_000 + 1_000 * self.seq,
        )


Body = tuple[str, str]


@dataclass
class Plan:
    """What to send (per phase, per lane, the signed bodies) and what the platform answers."""

    messages: list[Message] = field(default_factory=list)
    phases: list[list[list[Body]]] = field(default_factory=list)
    faults: list[int | Fault] = field(default_factory=list)

    @classmethod
    def build(cls, size: Size, seed: int) -> Plan:
        rng = random.Random(seed)
        plan = cls()
        half = size.chats // 2
        for first_chat in (0, half):
            chats = range(first_chat, first_chat + half)
            counts = dict.fromkeys(chats, 1)
            for _ in range(size.messages // 2 - half):
                counts[rng.choice(chats)] += 1
            lanes: list[list[Body]] = []
            for lane in range(size.lanes):
                queues = {
                    chat: [Message(chat, seq, rng.random() >= 0.1) for seq in range(counts[chat])]
                    for chat in chats[lane :: size.lanes]
                }
                for queue in queues.values():
                    plan.messages.extend(queue)
                lanes.append([signed_body(*b, channel_secret=SECRET) for b in _bodies(rng, queues)])
            plan.phases.append(lanes)
        for _ in range(len(plan.messages)):  # more answers than requests: faults all along
            draw = rng.random()
            plan.faults.append(503 if draw < 0.05 else Fault.hang() if draw < 0.06 else 200)
        return plan

    def newest_opted_in(self) -> dict[int, Message]:
        newest: dict[int, Message] = {}
        for message in self.messages:
            if message.opted_in and message.seq >= newest.get(message.chat, message).seq:
                newest[message.chat] = message
        return newest


def _bodies(rng: random.Random, queues: dict[int, list[Message]]) -> Iterator[list[dict[str, Any]]]:
    """Interleave the chats' messages (each chat in order) into bodies of 1-5 from <= 2 chats."""
    stream: list[Message] = []
    heads = dict.fromkeys(queues, 0)
    while heads:
        chat = rng.choice(sorted(heads))
        stream.append(queues[chat][heads[chat]])
        heads[chat] += 1
        if heads[chat] == len(queues[chat]):
            del heads[chat]
    i = 0
    while i < len(stream):
        body: list[Message] = []
        limit = rng.randint(1, 5)
        while i < len(stream) and len(body) < limit:
            if len({m.chat for m in body} | {stream[i].chat}) > 2:
                break
            body.append(stream[i])
            i += 1
        yield [m.event() for m in body]


@dataclass
class Run:
    """What happened: handler starts, failures reported, memory and state after each phase."""

    started: list[tuple[int, int, float]] = field(default_factory=list)
    """(chat, seq, monotonic start) per handler call, in call order."""
    failed_chats: set[str] = field(default_factory=set)
    retained: list[int] = field(default_factory=list)
    tracked: list[int] = field(default_factory=list)


def soak_handler(fake: FakeLinePlatform, size: Size, run: Run) -> WebhookHandler:
    def failed(failure: MarkFailure) -> None:
        run.failed_chats.add(failure.chat.id)

    handler = WebhookHandler(
        SECRET,
        configuration=fake.configuration(),
        wait_timeout=WAIT_TIMEOUT,
        request_timeout=REQUEST_TIMEOUT,
        max_tracked_chats=size.max_tracked_chats,
        on_failure=failed,
        jitter_seed=1,
    )

    @handler.add(
        MessageEvent,
        message=TextMessageContent,
        mark_as_read=lambda event: event.message.text[0] == "o",
    )
    def on_text(event: Any) -> None:
        # Only ints and a float made here: nothing of the body is kept (the memory check).
        chat, seq = event.message.text[1:].split(":")
        run.started.append((int(chat), int(seq), time.monotonic()))

    return handler


PACKAGE = Path(line_markread.__file__).resolve().parent
"""The package's real directory, wherever it is installed.  Not a pattern on folder names: a
clone named ``line_markread`` (``git clone``'s default) holds ``.venv`` (aiohttp, attrs...)
and ``tests`` under that name too, and their memory is not the package's."""
TEST_KIT = PACKAGE / "testing"


@functools.cache
def is_package_file(filename: str) -> bool:
    """Whether *filename* (as tracemalloc names it) is one of the package's own modules."""
    if not os.path.isabs(filename):  # "<frozen ...>", "<string>": never the package's
        return False
    path = Path(filename).resolve()
    return path.is_relative_to(PACKAGE) and not path.is_relative_to(TEST_KIT)


def retained_by_package() -> int:
    """Bytes still allocated by line_markread's own code (its test kit excluded).

    The smallest of a few snapshots after a full collection: work still under way when a
    snapshot is taken (a connection closing on the loop thread) is not memory retained.
    """
    sizes = []
    for _ in range(MEMORY_SAMPLES):
        gc.collect()
        stats = tracemalloc.take_snapshot().statistics("filename")
        sizes.append(sum(s.size for s in stats if is_package_file(s.traceback[0].filename)))
    return min(sizes)


def end_of_phase(handler: WebhookHandler, run: Run) -> None:
    """Record the state and memory of a quiet engine.

    Callers first let ``wait_timeout`` pass: each body's timer holds its waiters until its
    deadline, settled or not, which is memory bounded by time, not by chats.
    """
    run.tracked.append(handler.marker.tracked_chats())
    run.retained.append(retained_by_package())


# -- the checks, shared by both paths ---------------------------------------------


def check(
    plan: Plan,
    run: Run,
    size: Size,
    *,
    stats: Stats,
    fake: FakeLinePlatform,
    caplog: pytest.LogCaptureFixture,
) -> None:
    requests, marked = fake.mark_requests(), fake.marked_tokens()
    tokens_of = [r.json["markAsReadToken"] if isinstance(r.json, dict) else None for r in requests]
    statuses = [r.status for r in requests]
    assert 503 in statuses, "the 503s were injected"
    assert any(r.outcome == "abandoned" for r in requests), "the hangs timed out"

    # Every handler ran exactly once, and each chat's in order.
    by_chat: dict[int, list[int]] = defaultdict(list)
    for chat, seq, _ in run.started:
        by_chat[chat].append(seq)
    expected: dict[int, list[int]] = defaultdict(list)
    for message in plan.messages:
        expected[message.chat].append(message.seq)
    assert len(run.started) == len(plan.messages)
    assert by_chat == expected

    # Opted-out messages were never sent.
    opted_out = {m.token for m in plan.messages if not m.opted_in}
    assert not opted_out & set(tokens_of)

    # Every chat's newest opted-in token ended marked.
    marked_set = set(marked)
    unmarked = [m for m in plan.newest_opted_in().values() if m.token not in marked_set]
    assert unmarked == []

    # Each opted-in handler started after LINE answered 200 for its token or a newer one
    # of its chat, unless released by wait_timeout or by a failure reported for its chat.
    answered: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for request, token in zip(requests, tokens_of, strict=True):
        if request.status == 200 and request.responded_at is not None and token:
            _, chat, seq = token.split("-")
            answered[int(chat)].append((request.responded_at, int(seq)))
    opted_in = {(m.chat, m.seq) for m in plan.messages if m.opted_in}
    early = [
        (chat, seq)
        for chat, seq, started in run.started
        if (chat, seq) in opted_in
        and f"U{chat:032d}" not in run.failed_chats
        and not any(at <= started and newer >= seq for at, newer in answered[chat])
    ]
    assert len(early) <= stats.timed_out

    # Within the retry budget.  Tokens only go down by retries (>= RETRY_COST each) and
    # up by refunds: 1 per first-try success, and a success after retries refunds its
    # last retry.  The balance starts at the capacity and never goes below 0, so
    #     RETRY_COST * (retries - successes after retries) <= capacity + first-try successes
    # Counted from the platform's records (a token is one mark here: every token is sent
    # by one job), which can only over-count successes, never under-count them.
    attempts: dict[str, list[int | None]] = defaultdict(list)
    for request, token in zip(requests, tokens_of, strict=True):
        if token:
            attempts[token].append(request.status)
    first_try = sum(tries == [200] for tries in attempts.values())
    after_retries = sum(len(tries) > 1 and 200 in tries for tries in attempts.values())
    capacity = 500  # the default retry_budget
    assert stats.retried <= capacity / RETRY_COST + first_try / RETRY_COST + after_retries
    assert stats.budget_exhausted == 0  # 6% faults never drain a 500-token budget

    # Per-chat state stayed bounded, and memory flat from N chats to 2N chats.
    assert max(run.tracked) <= size.max_tracked_chats
    phase1, phase2 = run.retained
    assert phase2 <= phase1 * MEMORY_FACTOR + MEMORY_SLACK, run.retained

    # No ERROR, and a WARNING only per mark that failed for good (none expected).
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(problems) == stats.failed, [r.getMessage() for r in problems]


# -- the soaks ------------------------------------------------------------------


@pytest.mark.soak
@pytest.mark.usefixtures("no_backoff")
async def test_soak_handle_async(
    fake: FakeLinePlatform, soak: bool, caplog: pytest.LogCaptureFixture
) -> None:
    size = ASYNC_SIZE[soak]
    plan = Plan.build(size, seed=5)
    fake.script(TOKEN_PATH, *plan.faults)
    run = Run()
    handler = soak_handler(fake, size, run)

    async def lane(bodies: list[Body]) -> None:
        for body, signature in bodies:
            await handler.handle_async(body, signature)

    caplog.set_level(logging.WARNING, logger="line_markread")
    tracemalloc.start()
    try:
        for lanes in plan.phases:
            await asyncio.wait_for(asyncio.gather(*map(lane, lanes)), PHASE_LIMIT)
            # Quiet first: measuring blocks the loop, which would time requests out.
            await asyncio.wait_for(handler.marker.aflush(), PHASE_LIMIT)
            end_of_phase(handler, run)
    finally:
        tracemalloc.stop()
        await handler.aclose(grace=30.0)

    check(plan, run, size, stats=handler.stats(), fake=fake, caplog=caplog)


@pytest.mark.soak
@pytest.mark.usefixtures("no_backoff")
def test_soak_handle_from_16_threads(
    fake: FakeLinePlatform, soak: bool, caplog: pytest.LogCaptureFixture
) -> None:
    size = SYNC_SIZE[soak]
    plan = Plan.build(size, seed=16)
    fake.script(TOKEN_PATH, *plan.faults)
    run = Run()
    handler = soak_handler(fake, size, run)

    def lane(bodies: list[Body]) -> None:
        for body, signature in bodies:
            handler.handle(body, signature)

    caplog.set_level(logging.WARNING, logger="line_markread")
    tracemalloc.start()
    try:
        with ThreadPoolExecutor(max_workers=16) as threads:
            try:
                for lanes in plan.phases:
                    for done in [threads.submit(lane, bodies) for bodies in lanes]:
                        done.result(timeout=PHASE_LIMIT)
                    handler.marker.flush()  # quiet first: marks in flight, then measure
                    end_of_phase(handler, run)
            finally:
                handler.close(grace=30.0)  # also releases threads stuck by a bug
    finally:
        tracemalloc.stop()

    check(plan, run, size, stats=handler.stats(), fake=fake, caplog=caplog)


# -- hostile phases: an outage with a burst of new chats, recovery, a slow API ----------


HOSTILE_SIZE = {False: (8, 15), True: (40, 50)}
"""(bodies, new chats per body) of the outage burst: CI size, ``--soak`` size."""


@pytest.mark.soak
def test_soak_through_an_outage_a_burst_and_a_slow_api(
    fake: FakeLinePlatform, driver: Driver, soak: bool, caplog: pytest.LogCaptureFixture
) -> None:
    bodies, per_body = HOSTILE_SIZE[soak]
    cap, slots, wait = 30, 8, 0.2
    failures: list[MarkFailure] = []

    def new_handler(retry_deadline: float) -> WebhookHandler:
        handler = WebhookHandler(
            SECRET,
            configuration=fake.configuration(),
            wait_timeout=wait,
            request_timeout=0.5,
            retry_deadline=retry_deadline,
            max_concurrency=slots,
            max_tracked_chats=cap,
            backoff_initial=0.01,
            backoff_max=0.02,
            on_failure=failures.append,
        )
        handler.add(MessageEvent, message=TextMessageContent)(lambda event: None)
        return handler

    handler = new_handler(retry_deadline=2.0)  # a short outage phase for CI
    caplog.set_level(logging.WARNING, logger="line_markread")

    def body_of(*events: dict[str, Any]) -> tuple[str, str]:
        return signed_body(*events, channel_secret=SECRET)

    # Phase 1: LINE hangs; a burst of new chats arrives.  Every body is released by
    # wait_timeout, and the engine's state stays bounded however many chats come.
    fake.script(TOKEN_PATH, *[Fault.hang()] * (bodies * per_body * 3))
    slowest, most_tracked = 0.0, 0
    for b in range(bodies):
        events = [text_event(f"o{b}", user_id=f"B{b}-{i}") for i in range(per_body)]
        start = time.monotonic()
        driver.handle(handler, *body_of(*events))
        slowest = max(slowest, time.monotonic() - start)
        most_tracked = max(most_tracked, handler.marker.tracked_chats())
    overflowed = handler.stats().overflowed
    assert slowest < wait + 1.5  # generous: scheduling noise on a loaded CI machine
    assert most_tracked <= cap + slots + per_body
    assert overflowed > 0

    # Phase 2: LINE recovers.  Each chat's next message is marked: nothing was lost
    # for good, and every mark of phase 1 that did not land was counted and reported.
    flush(handler, driver)
    fake.reset()
    recovered = []
    for b in range(bodies):
        events = [text_event(f"r{b}", user_id=f"B{b}-{i}") for i in range(per_body)]
        recovered += [e["message"]["markAsReadToken"] for e in events]
        driver.handle(handler, *body_of(*events))
    flush(handler, driver)
    driver.close(handler, 5.0)
    stats = handler.stats()
    assert set(recovered) <= set(fake.marked_tokens())
    assert stats.failed == len(failures) + stats.callbacks_dropped
    assert handler.marker.tracked_chats() <= cap + slots + per_body

    # Phase 3: LINE answers every request, but 1.2 s late: at most 2 requests a mark.
    # (A new handler: the outage above spent the channel's retry budget, as it should.)
    handler = new_handler(retry_deadline=30.0)
    slow = [text_event("s", user_id=f"S{i}") for i in range(per_body)]
    fake.script(TOKEN_PATH, *[Fault.delay(1.2)] * (2 * per_body))
    driver.handle(handler, *body_of(*slow))
    flush(handler, driver)
    driver.close(handler, 5.0)

    assert {e["message"]["markAsReadToken"] for e in slow} <= set(fake.marked_tokens())
    slow_tokens = {e["message"]["markAsReadToken"] for e in slow}
    slow_requests = [r for r in fake.mark_requests() if _token(r.json) in slow_tokens]
    assert len(slow_requests) <= 2 * per_body
    assert handler.stats().failed == 0


def flush(handler: WebhookHandler, driver: Driver) -> None:
    """Wait for every mark in progress, on the path's own loop."""
    if isinstance(driver, AsyncDriver):
        driver.run(handler.marker.aflush())
    else:
        handler.marker.flush()


def _token(document: object) -> object:
    return document.get("markAsReadToken") if isinstance(document, dict) else None


# -- the memory measurement itself ------------------------------------------------------


def test_memory_is_the_package_own_whatever_the_clone_folder_is_called(tmp_path: Path) -> None:
    # ``git clone`` names the folder ``line_markread``: its .venv and tests live under that
    # name too, and what they hold must not count as the package's (issue 16, item 21).
    clone = tmp_path / "line_markread"
    allocators: list[Callable[[int], list[bytearray]]] = []
    for where in (".venv/lib/python3/site-packages/aiohttp", "tests", "line_markread/testing"):
        path = clone / where / f"held_{len(allocators)}.py"
        path.parent.mkdir(parents=True)
        path.write_text("def allocate(n):\n    return [bytearray(1000) for _ in range(n)]\n")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        allocators.append(module.allocate)

    sources = [{"type": "user", "userId": f"U{i:032d}"} for i in range(1000)]
    tracemalloc.start()
    try:
        before = retained_by_package()
        foreign = [allocate(100) for allocate in allocators]  # 300 KB, none of it ours
        after_foreign = retained_by_package()
        own = [_chat_of(source) for source in sources]  # ChatIds, made by _targets.py
        after_own = retained_by_package()
    finally:
        tracemalloc.stop()

    assert sum(map(len, foreign)) == 300
    assert len(own) == 1000
    assert after_foreign - before < 10_000, (before, after_foreign)
    assert after_own - after_foreign > 1000 * 40, (after_foreign, after_own)
