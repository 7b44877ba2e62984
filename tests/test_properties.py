"""Properties of coalescing and supersession over random interleavings of bodies and faults.

Hypothesis draws a scenario: a few chats; bodies of 1-4 messages, each with a
chat, a timestamp from a small range (so ties and out-of-order arrivals are
common) and an opt-in/opt-out decision; a grouping of the bodies into waves
(a wave's bodies are handled concurrently, waves one after another); a
script of answers for the token endpoint (200, 503, 400, hang); a short or a
long ``wait_timeout``; and one or four concurrent requests.  It is run over
real HTTP against one ``FakeLinePlatform`` per test, through ``handle()``
(a wave's bodies from threads) and ``handle_async()`` (a wave gathered).

After each run (every handler returned, the handler closed and drained):

(a) the newest opted-in token of each chat ended marked, unless it got a 400;
(b) no handler started before LINE answered 200 for its token or a newer one
    of its chat, except those released by ``wait_timeout`` or by a final 400;
(c) the engine never sent a token older than one it had already seen marked
    in the same chat;
(d) per body and chat, at most one token was sent: the newest opted-in one;
(e) opted-out tokens were never sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from linebot.v3.webhooks import MessageEvent, TextMessageContent

from line_markread import WebhookHandler
from line_markread.testing import FakeLinePlatform, Fault, signed_body, text_event

from .support import SECRET, TOKEN_PATH

REQUEST_TIMEOUT = 0.1
"""What a scripted hang costs.  With at most 6 faults and 10 attempts, nothing runs out of
attempts: only a 400 fails a mark for good."""
MAX_FAULTS = 6
WAVE_LIMIT = 10.0
"""Seconds a wave may take (it needs at most ``wait_timeout`` plus the hangs): a bug that
leaves a handler waiting forever fails the example instead of hanging the suite."""


@dataclass(frozen=True)
class Msg:
    chat: int
    ts: int
    opted_in: bool
    wave: int
    body: int
    """Index of its body over the whole scenario (bodies of a wave are consecutive)."""
    pos: int

    @property
    def token(self) -> str:
        return f"prop-{self.body}-{self.pos}"

    @property
    def user_id(self) -> str:
        return f"Uprop{self.chat}"

    @property
    def event_id(self) -> str:
        return f"01PROP{self.body:08d}{self.pos:012d}"

    def event(self) -> dict[str, Any]:
        return text_event(
            f"{'o' if self.opted_in else 'x'}{self.chat}",
            user_id=self.user_id,
            token=self.token,
            timestamp=1_700_000_000_000 + self.ts,
            webhook_event_id=self.event_id,
        )


@dataclass(frozen=True)
class Scenario:
    bodies: tuple[tuple[Msg, ...], ...]
    waves: tuple[tuple[int, ...], ...]
    """Body indexes per wave."""
    faults: tuple[str, ...]
    wait_timeout: float
    max_concurrency: int

    @property
    def messages(self) -> list[Msg]:
        return [m for body in self.bodies for m in body]

    def script(self) -> list[int | Fault]:
        return [Fault.hang() if f == "hang" else int(f) for f in self.faults]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    chats = draw(st.integers(1, 3))
    message = st.tuples(
        st.integers(0, chats - 1), st.integers(0, 3), st.sampled_from([True, True, True, False])
    )
    raw = draw(st.lists(st.lists(message, min_size=1, max_size=4), min_size=1, max_size=6))
    new_wave = draw(st.lists(st.booleans(), min_size=len(raw), max_size=len(raw)))
    bodies: list[tuple[Msg, ...]] = []
    waves: list[list[int]] = []
    for index, (events, fresh) in enumerate(zip(raw, new_wave, strict=True)):
        if fresh or not waves:
            waves.append([])
        waves[-1].append(index)
        bodies.append(
            tuple(
                Msg(chat, ts, opted_in, len(waves) - 1, index, pos)
                for pos, (chat, ts, opted_in) in enumerate(events)
            )
        )
    faults = draw(st.lists(st.sampled_from(["200", "503", "400", "hang"]), max_size=MAX_FAULTS))
    return Scenario(
        bodies=tuple(bodies),
        waves=tuple(tuple(w) for w in waves),
        faults=tuple(faults),
        wait_timeout=draw(st.sampled_from([0.05, 2.0])),
        max_concurrency=draw(st.sampled_from([1, 4])),
    )


# -- what happened --------------------------------------------------------------


@dataclass
class Posted:
    """One request the engine started, or one 200 it got, in the order the engine saw them."""

    token: str
    status: int | None
    """``None`` for the request itself; 200 for the answer that marked the chat."""
    answer: bool


class _EngineTrace(logging.Handler):
    """Reads the engine's public DEBUG trace (``markread_event`` records) as ``Posted``.

    All of an engine's requests run on its one event loop and it logs each step
    as it takes it, so this order is the order the engine knew things in (the
    fake's clock cannot say whether a request was already on its way).
    """

    def __init__(self, tokens: dict[str, str]) -> None:
        super().__init__(logging.DEBUG)
        self.tokens = tokens
        self.posts: list[Posted] = []

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "markread_event", None)
        token = self.tokens.get(getattr(record, "markread_event_id", None) or "")
        if token is None:
            return
        if event == "sent":
            self.posts.append(Posted(token, None, answer=False))
        elif event == "marked":
            self.posts.append(Posted(token, 200, answer=True))


@contextlib.contextmanager
def engine_posts(scenario: Scenario) -> Iterator[list[Posted]]:
    """Record each request the engine starts and each 200 it gets, from its DEBUG trace."""
    trace = _EngineTrace({m.event_id: m.token for m in scenario.messages})
    logger = logging.getLogger("line_markread._engine")
    level = logger.level
    logger.addHandler(trace)
    logger.setLevel(logging.DEBUG)
    try:
        yield trace.posts
    finally:
        logger.removeHandler(trace)
        logger.setLevel(level)


@dataclass
class Outcome:
    started: dict[str, float]
    """Token -> monotonic time its handler started."""
    posts: list[Posted]
    timed_out: int


def build_handler(fake: FakeLinePlatform, scenario: Scenario, started: dict[str, float]) -> Any:
    handler = WebhookHandler(
        SECRET,
        configuration=fake.configuration(),
        wait_timeout=scenario.wait_timeout,
        request_timeout=REQUEST_TIMEOUT,
        max_attempts=10,
        max_concurrency=scenario.max_concurrency,
        jitter_seed=0,
    )

    @handler.add(
        MessageEvent,
        message=TextMessageContent,
        mark_as_read=lambda event: event.message.text[0] == "o",
    )
    def on_text(event: Any) -> None:
        started[event.message.mark_as_read_token] = time.monotonic()

    return handler


def signed(scenario: Scenario) -> list[tuple[str, str]]:
    return [
        signed_body(*(m.event() for m in body), channel_secret=SECRET) for body in scenario.bodies
    ]


def run_async(fake: FakeLinePlatform, scenario: Scenario) -> Outcome:
    started: dict[str, float] = {}
    handler = build_handler(fake, scenario, started)
    bodies = signed(scenario)

    async def play() -> None:
        try:
            for wave in scenario.waves:
                waiting = asyncio.gather(*(handler.handle_async(*bodies[i]) for i in wave))
                await asyncio.wait_for(waiting, WAVE_LIMIT)
        finally:
            await handler.aclose(grace=30.0)

    with engine_posts(scenario) as posts:
        asyncio.run(play())
    return Outcome(started, posts, handler.stats().timed_out)


def run_sync(fake: FakeLinePlatform, scenario: Scenario, threads: ThreadPoolExecutor) -> Outcome:
    started: dict[str, float] = {}
    handler = build_handler(fake, scenario, started)
    bodies = signed(scenario)
    with engine_posts(scenario) as posts:
        try:
            for wave in scenario.waves:
                for done in [threads.submit(handler.handle, *bodies[i]) for i in wave]:
                    done.result(timeout=WAVE_LIMIT)
        finally:
            handler.close(grace=30.0)  # also releases a handler stuck by a bug
    return Outcome(started, posts, handler.stats().timed_out)


# -- the properties ---------------------------------------------------------------


def arrived_before(a: Msg, b: Msg, *, ordered_waves: bool) -> bool:
    """Whether *a* certainly reached the engine before *b* (its arrival order breaks ties).

    Bodies of one wave are submitted in list order by ``asyncio.gather``; from threads,
    in no known order.
    """
    if a.wave != b.wave:
        return a.wave < b.wave
    if a.body == b.body:
        return a.pos < b.pos
    return ordered_waves and a.body < b.body


def may_cover(s: Msg, m: Msg, *, ordered_waves: bool) -> bool:
    """Whether a 200 for *s* may mark *m* read: same chat, and *s* not older than *m*."""
    if s.chat != m.chat:
        return False
    return (
        s is m
        or s.ts > m.ts
        or (s.ts == m.ts and not arrived_before(s, m, ordered_waves=ordered_waves))
    )


def check_properties(
    scenario: Scenario, outcome: Outcome, fake: FakeLinePlatform, *, ordered_waves: bool
) -> None:
    messages = scenario.messages
    by_token = {m.token: m for m in messages}
    requests = fake.mark_requests()
    sent = [p for p in outcome.posts if not p.answer]
    got_400 = {
        r.json["markAsReadToken"] for r in requests if r.status == 400 and isinstance(r.json, dict)
    }
    marked = set(fake.marked_tokens())

    # Every handler ran once.
    assert sorted(outcome.started) == sorted(by_token)

    # (e) opted-out tokens were never sent.
    assert not {p.token for p in sent if not by_token[p.token].opted_in}

    # (a) the newest opted-in token of each chat ended marked, unless it got a final 400.
    for chat in {m.chat for m in messages if m.opted_in}:
        opted_in = [m for m in messages if m.chat == chat and m.opted_in]
        newest_ts = max(m.ts for m in opted_in)
        newest = {m.token for m in opted_in if m.ts == newest_ts}  # ties: arrival decides
        assert newest & (marked | got_400), f"(a) chat {chat}: none of {newest} marked"

    # (b) no handler before its chat was marked up to it, unless released by the
    # timeout or by a final 400 of a mark that covered it.
    def answered(m: Msg, statuses: set[int]) -> bool:
        return any(
            r.status in statuses
            and r.responded_at is not None
            and r.responded_at <= outcome.started[m.token]
            and isinstance(r.json, dict)
            and may_cover(by_token[r.json["markAsReadToken"]], m, ordered_waves=ordered_waves)
            for r in requests
        )

    early = [m for m in messages if m.opted_in and not answered(m, {200, 400})]
    assert len(early) <= outcome.timed_out, f"(b) ran before their mark: {early}"

    # (c) never a token older than one the engine already saw marked in its chat.
    seen_marked: dict[int, list[Msg]] = defaultdict(list)
    for post in outcome.posts:
        m = by_token[post.token]
        if post.answer and post.status == 200:
            seen_marked[m.chat].append(m)
        elif not post.answer:
            newer = [
                s
                for s in seen_marked[m.chat]
                if s is not m and not may_cover(m, s, ordered_waves=ordered_waves)
            ]
            assert not newer, f"(c) sent {m} after {newer[0]} was marked"

    # (d) per body and chat, at most one token sent: the newest opted-in one.
    sent_tokens = {p.token for p in sent}
    for body in scenario.bodies:
        for chat in {m.chat for m in body}:
            candidates = [m for m in body if m.chat == chat and m.opted_in]
            went = [m for m in candidates if m.token in sent_tokens]
            assert len(went) <= 1, f"(d) one body sent {len(went)} tokens for chat {chat}"
            if went:
                assert went[0] == max(candidates, key=lambda m: (m.ts, m.pos))


# -- the tests --------------------------------------------------------------------


def hypothesis_settings(soak: bool) -> settings:
    # Derandomized: CI runs the same examples every time; --soak explores new ones.
    return settings(
        max_examples=400 if soak else 150,
        deadline=None,
        derandomize=not soak,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@pytest.mark.usefixtures("no_backoff")
def test_properties_through_handle_async(fake: FakeLinePlatform, soak: bool) -> None:
    @hypothesis_settings(soak)
    @given(scenarios())
    def run(scenario: Scenario) -> None:
        fake.reset()
        fake.script(TOKEN_PATH, *scenario.script())
        outcome = run_async(fake, scenario)
        check_properties(scenario, outcome, fake, ordered_waves=True)

    run()


@pytest.mark.usefixtures("no_backoff")
def test_properties_through_handle_from_threads(fake: FakeLinePlatform, soak: bool) -> None:
    with ThreadPoolExecutor(max_workers=4) as threads:

        @hypothesis_settings(soak)
        @given(scenarios())
        def run(scenario: Scenario) -> None:
            fake.reset()
            fake.script(TOKEN_PATH, *scenario.script())
            outcome = run_sync(fake, scenario, threads)
            check_properties(scenario, outcome, fake, ordered_waves=False)

        run()


def token_of_event(event: dict[str, Any]) -> str:
    return str(event["message"]["markAsReadToken"])


# -- found by reasoning over these properties ---------------------------------------


async def test_an_older_mark_outlives_the_failure_of_the_newer_one(
    fake: FakeLinePlatform,
) -> None:
    handler = WebhookHandler(
        SECRET, configuration=fake.configuration(), request_timeout=0.5, wait_timeout=1.0
    )
    handler.add(MessageEvent, message=TextMessageContent)(lambda event: None)
    fake.script(TOKEN_PATH, Fault.hang(), 400)  # the older one hangs, the newer one is refused
    older = text_event("older", user_id="U1", timestamp=1_000)
    newer = text_event("newer", user_id="U1", timestamp=2_000)

    first = asyncio.ensure_future(handler.handle_async(*signed_body(older, channel_secret=SECRET)))
    await fake.await_requests(1, path=TOKEN_PATH, completed=False)
    await handler.handle_async(*signed_body(newer, channel_secret=SECRET))  # 400: failed
    # The older request hangs until its 0.5 s timeout: it is still in flight here.
    assert not fake.mark_requests()[0].completed
    await first  # the older request times out at 0.5 s, superseded by a mark that failed
    stats = handler.stats()
    await handler.aclose()

    # Its mark is retried (and marked) once the newer one has failed, well before 1 s.
    assert stats.timed_out == 0
    assert token_of_event(older) in fake.marked_tokens()
    assert stats.failed == 1  # only the refused newer token
