"""Pure decisions: read targets, retry classification, backoff, Retry-After, set_testing."""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest
from linebot.v3.webhooks import MessageEvent, TextMessageContent

from line_markread import ChatId, Settings, is_testing, set_testing
from line_markread._dispatch import Route, decide
from line_markread._guard import ChannelGuard
from line_markread._http import ApiResponse, parse_retry_after
from line_markread._retry import (
    LATENCY_WINDOW,
    Latencies,
    Verdict,
    attempt_timeout,
    classify,
    first_attempt_timeout,
    next_delay,
)
from line_markread._targets import Endpoint, ReadTarget, Skip, read_target
from line_markread.testing import LOADING_PATH, FakeLinePlatform, text_event

from .support import TOKEN_PATH, Driver, HandlerFactory, body_of


def target(raw: dict[str, Any], mode: Any = "auto", standby: bool = False) -> object:
    return read_target(raw, mode=mode, mark_standby=standby)


def test_targets_for_each_kind_of_chat() -> None:
    user = text_event(user_id="U1", token="t1", timestamp=5)
    group = text_event(group_id="G1", user_id="U1", token="t2", timestamp=6)
    room = text_event(room_id="R1", token="t3", timestamp=7)

    assert target(user) == ReadTarget(ChatId("user", "U1"), Endpoint.TOKEN, "t1", 5)
    assert target(group) == ReadTarget(ChatId("group", "G1"), Endpoint.TOKEN, "t2", 6)
    assert target(room) == ReadTarget(ChatId("room", "R1"), Endpoint.TOKEN, "t3", 7)
    assert target(user, "user") == ReadTarget(ChatId("user", "U1"), Endpoint.USER, "U1", 5)
    assert target(group, "user") is Skip.NOT_ONE_TO_ONE
    assert target({"type": "follow"}) is Skip.NOT_A_MESSAGE
    assert target(text_event(user_id="U1", mode="standby")) is Skip.STANDBY
    assert isinstance(target(text_event(user_id="U1", mode="standby"), standby=True), ReadTarget)


def test_read_tokens_stay_out_of_reprs() -> None:
    assert "t-secretish" not in repr(target(text_event(user_id="U1", token="t-secretish")))


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.DONE),
        (500, Verdict.RETRY),
        (503, Verdict.RETRY),
        (429, Verdict.RETRY),
        (400, Verdict.GIVE_UP),
        (401, Verdict.GIVE_UP),
        (403, Verdict.GIVE_UP),
        (404, Verdict.GIVE_UP),
        (None, Verdict.RETRY),
    ],
)
def test_classification(status: int | None, verdict: Verdict) -> None:
    assert classify(None if status is None else ApiResponse(status)) is verdict


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    settings = Settings(backoff_initial=0.1, backoff_max=1.0, max_attempts=100)
    rng = random.Random(0)
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        delays = [next_delay(attempt, None, settings, rng, 100.0) for _ in range(200)]
        assert all(d is not None and 0.0 <= d <= ceiling for d in delays)
        assert max(d for d in delays if d is not None) > ceiling / 2  # spread, not fixed


def test_backoff_respects_attempts_deadline_and_retry_after() -> None:
    settings = Settings(max_attempts=3)
    rng = random.Random(0)
    assert next_delay(3, None, settings, rng, 100.0) is None
    assert next_delay(1, ApiResponse(429, retry_after=2.0), settings, rng, 100.0) == 2.0
    assert next_delay(1, ApiResponse(429, retry_after=2.0), settings, rng, 1.0) is None


def test_retry_after_parsing() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_set_testing_restores_the_previous_state_as_a_context_manager() -> None:
    assert is_testing() is False
    with set_testing(True):
        assert is_testing() is True
        with set_testing(False):
            assert is_testing() is False
        assert is_testing() is True
    assert is_testing() is False
    set_testing(True)  # also takes effect without a with-block
    try:
        assert is_testing() is True
    finally:
        set_testing(False)
    with pytest.raises(TypeError):
        set_testing(1)  # type: ignore[arg-type]  # the mistake under test


@pytest.mark.usefixtures("no_backoff")
def test_set_testing_turns_waiting_off_but_not_retrying(
    fake: FakeLinePlatform, driver: Driver, new_handler: HandlerFactory
) -> None:
    handler = new_handler(backoff_initial=600.0, backoff_max=600.0)
    handler.add(MessageEvent, message=TextMessageContent)(lambda event: None)
    fake.script(TOKEN_PATH, 503, 503)

    driver.handle(handler, *body_of(text_event(user_id="U1")))

    assert [r.status for r in fake.mark_requests()] == [503, 503, 200]


# -- decide: what the handler about to run wants --------------------------------


def _route(policy: Any) -> Route:
    return Route.of(lambda event: None, policy)


def test_decide_follows_the_route_or_mark_unhandled(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings()
    event = object()
    assert decide(None, event, settings) is False
    assert decide(None, event, Settings(mark_unhandled=True)) is True
    assert decide(_route(True), event, settings) is True
    assert decide(_route("nowait"), event, settings) == "nowait"
    assert decide(_route(lambda e: "nowait"), event, settings) == "nowait"
    assert decide(_route(lambda e: False), event, settings) is False


def test_a_broken_policy_means_unread_and_an_error(caplog: pytest.LogCaptureFixture) -> None:
    def raises(event: object) -> bool:
        raise LookupError("agent directory down")

    with caplog.at_level(logging.ERROR, logger="line_markread"):
        assert decide(_route(raises), object(), Settings()) is False
        assert decide(_route(lambda e: 1), object(), Settings()) is False
        assert decide(_route(lambda e: None), object(), Settings()) is False
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 3


# -- the channel guard, on an injected clock --------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_auth_latch_lasts_its_cooldown_then_lifts() -> None:
    clock = Clock()
    guard = ChannelGuard(retry_budget=10, auth_cooldown=60.0, rate_limit_cooldown=1.0, clock=clock)
    guard.latch(Endpoint.USER, 403)
    assert guard.latched(Endpoint.USER)
    assert not guard.latched(Endpoint.TOKEN)  # a 403 latches its endpoint only
    guard.latch(Endpoint.TOKEN, 401)
    assert guard.latched(Endpoint.TOKEN)  # a 401: everything
    assert guard.latched(Endpoint.USER)
    clock.now += 59.9
    assert guard.latched(Endpoint.TOKEN)
    clock.now += 0.2
    assert not guard.latched(Endpoint.TOKEN)
    assert not guard.latched(Endpoint.USER)


def test_the_429_pause_takes_retry_after_or_the_cooldown() -> None:
    clock = Clock()
    guard = ChannelGuard(retry_budget=10, auth_cooldown=60.0, rate_limit_cooldown=1.5, clock=clock)
    path = Endpoint.TOKEN.value
    assert guard.pause_left(path) == 0.0
    guard.rate_limited(path, None)
    assert guard.pause_left(path) == pytest.approx(1.5)
    guard.rate_limited(path, 4.0)
    assert guard.pause_left(path) == pytest.approx(4.0)
    guard.rate_limited(path, 0.5)  # a shorter pause never cuts a longer one
    assert guard.pause_left(path) == pytest.approx(4.0)
    clock.now += 4.0
    assert guard.pause_left(path) == 0.0


def test_a_429_pauses_only_the_endpoint_that_answered_it() -> None:
    # Issue 16.12: LINE limits each endpoint separately (loading/start 100/s, marks 2,000/s).
    clock = Clock()
    guard = ChannelGuard(retry_budget=10, auth_cooldown=60.0, rate_limit_cooldown=1.0, clock=clock)
    guard.rate_limited(LOADING_PATH, 30.0)
    assert guard.pause_left(LOADING_PATH) == pytest.approx(30.0)
    assert guard.pause_left(Endpoint.TOKEN.value) == 0.0
    assert guard.pause_left(Endpoint.USER.value) == 0.0
    guard.rate_limited(Endpoint.USER.value, None)
    assert guard.pause_left(Endpoint.USER.value) == pytest.approx(1.0)
    assert guard.pause_left(Endpoint.TOKEN.value) == 0.0


def test_the_retry_budget_spends_and_refills() -> None:
    guard = ChannelGuard(retry_budget=12, auth_cooldown=60.0, rate_limit_cooldown=1.0)
    assert guard.spend_retry(after_timeout=False) == 5
    assert guard.spend_retry(after_timeout=False) == 5
    assert guard.spend_retry(after_timeout=False) == 0  # 2 tokens left: refused, none taken
    assert guard.spend_retry(after_timeout=True) == 0
    guard.record_success(5)  # a success after a retry returns that retry's cost
    guard.record_success(0)  # a first-try success gives one back
    assert guard.spend_retry(after_timeout=True) == 0  # 8 < 10
    assert guard.spend_retry(after_timeout=False) == 5


# -- the adaptive first-attempt timeout (issue 16.20) ------------------------------------


def test_the_first_attempt_timeout_adapts_to_a_slow_but_healthy_line_within_bounds() -> None:
    assert first_attempt_timeout([], 1.0) == 1.0  # nothing seen yet
    assert first_attempt_timeout([0.05] * 20, 1.0) == 1.0  # never below request_timeout
    assert first_attempt_timeout([1.2] * 20, 1.0) == pytest.approx(1.8)  # waited for, with room
    assert first_attempt_timeout([3.0] * 20, 1.0) == 4.0  # never above the second attempt's
    assert first_attempt_timeout([30.0], 0.5) == 2.0
    # A few slow outliers (under 10 %) do not stretch it; a slow tenth does.
    assert first_attempt_timeout([0.1] * 29 + [3.5] * 3, 1.0) == 1.0
    assert first_attempt_timeout([0.1] * 28 + [2.0] * 4, 1.0) == 3.0


def test_latencies_keep_a_bounded_window_of_recent_successes() -> None:
    latencies = Latencies(1.0)
    assert latencies.first_timeout == 1.0
    latencies.observe(1.2)
    assert latencies.first_timeout == pytest.approx(1.8)
    for _ in range(LATENCY_WINDOW):  # LINE got fast again: the slow answer is forgotten
        latencies.observe(0.05)
    assert latencies.first_timeout == 1.0


def test_only_the_first_attempt_uses_the_adaptive_timeout() -> None:
    settings = Settings(request_timeout=1.0)
    assert attempt_timeout(1, settings, 30.0) == 1.0
    assert attempt_timeout(1, settings, 30.0, first=1.8) == 1.8
    assert attempt_timeout(1, settings, 1.5, first=1.8) == 1.5  # within the deadline
    assert attempt_timeout(1, settings, 0.1, first=1.8) == 1.0  # but never below request_timeout
    assert attempt_timeout(2, settings, 30.0, first=1.8) == 4.0
    assert attempt_timeout(3, settings, 30.0, first=1.8) == 16.0
