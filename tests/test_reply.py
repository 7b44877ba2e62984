"""``reply()``/``areply()``: one answer per message, by reply token or, opted in, by push.

Over real HTTP against the fake, whose reply tokens work once and expire on
its clock and whose push honours ``X-Line-Retry-Key`` (``409`` on a repeat).
For ``handle()`` and ``handle_async()``, ``def`` and ``async def`` handlers,
inline and ``background=True``.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from line_markread import Delivery, MemoryOnceStore, WebhookHandler
from line_markread._http import ApiResponse
from line_markread._reply import (
    chat_of,
    is_quota,
    retry_key,
    serialize,
    token_problem,
)
from line_markread.testing import (
    PUSH_PATH,
    REPLY_PATH,
    TOKEN_MARK_AS_READ_PATH,
    FakeLinePlatform,
    Fault,
    WebhookFactory,
    assert_answered_once,
    text_event,
)

from .answering import CASES, Bot, Case, make_bots, redelivered, text, think
from .support import SECRET

USER = "U" + "c" * 32
GROUP = "C" + "d" * 32

QUOTA = json.dumps({"message": "You have reached your monthly limit."})


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    value: Case = request.param
    return value


@pytest.fixture
def bot(fake: FakeLinePlatform, case: Case) -> Iterator[Callable[..., Bot]]:
    yield from make_bots(fake, case)


def answer(bot: Bot, event: Any) -> list[Any]:
    return [text(f"re: {event.message.text}")]


def slow_answer(bot: Bot, event: Any) -> list[Any]:
    think(0.1)  # past reply_window=0.05
    return [text(f"re: {event.message.text}")]


def results(bot: Bot, count: int) -> list[Any]:
    bot.wait_ends(count)
    return list(bot.results)


def test_a_prompt_answer_is_a_reply_with_the_token(
    fake: FakeLinePlatform, bot: Callable[..., Bot]
) -> None:
    b = bot()
    b.register(answer)
    event = text_event("hi", user_id=USER)
    b.send(event)
    (result,) = results(b, 1)
    assert result.delivery is Delivery.REPLIED
    assert result.delivered
    (reply,) = fake.reply_requests()
    assert reply.json == {
        "replyToken": event["replyToken"],
        "messages": [{"type": "text", "text": "re: hi"}],
    }
    assert "X-Line-Retry-Key" not in reply.headers
    assert fake.push_requests() == []
    assert_answered_once(fake, event)
    assert b.handler.stats().answers_replied == 1
    # The reply follows the mark, as every answer does.
    (mark,) = [r for r in fake.mark_requests() if r.path == TOKEN_MARK_AS_READ_PATH]
    assert mark.responded_at is not None
    assert mark.responded_at <= reply.received_at


def test_past_the_token_life_the_opted_in_answer_is_pushed_exactly_once(
    fake: FakeLinePlatform, bot: Callable[..., Bot]
) -> None:
    b = bot(reply_window=0.05)
    b.register(slow_answer, push_fallback=True)
    event = text_event("hi", user_id=USER)
    b.send(event)
    (result,) = results(b, 1)
    assert result.delivery is Delivery.PUSHED
    assert "past reply_window" in (result.reason or "")
    assert fake.reply_requests() == []
    (push,) = fake.push_requests()
    assert push.json == {"to": USER, "messages": [{"type": "text", "text": "re: hi"}]}
    key = push.headers["X-Line-Retry-Key"]
    assert key == result.retry_key == retry_key(event["webhookEventId"], 0)
    assert uuid.UUID(key).version == 5
    assert_answered_once(fake, event)
    assert b.handler.stats().answers_pushed == 1


def test_past_the_token_life_without_opt_in_nothing_is_sent_and_it_says_so(
    fake: FakeLinePlatform, bot: Callable[..., Bot], caplog: pytest.LogCaptureFixture
) -> None:
    b = bot(reply_window=0.05)
    b.register(slow_answer)
    event = text_event("hi", user_id=USER)
    with caplog.at_level(logging.WARNING, logger="line_markread"):
        b.send(event)
        (result,) = results(b, 1)
    assert result.delivery is Delivery.FAILED
    assert not result.delivered
    assert "push_fallback is off" in (result.reason or "")
    assert fake.reply_requests() == []
    assert fake.push_requests() == []
    assert b.handler.stats().answers_failed == 1
    (warning,) = [r for r in caplog.records if "not delivered" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert event["webhookEventId"] in warning.getMessage()
    assert event["replyToken"] not in caplog.text


def test_a_per_call_opt_in_overrides_the_handler_default(
    fake: FakeLinePlatform, bot: Callable[..., Bot]
) -> None:
    b = bot(reply_window=0.05)
    b.register(slow_answer)
    event = text_event("hi", group_id=GROUP, user_id=USER)
    b.send(event)
    b.wait_ends(1)
    b.settle()
    # The bot decides itself, later, for the same event: push to the group this time.
    if b.case.path == "sync":
        late = b.handler.reply(_model(event), text("sorry, late"), push_fallback=True)
    else:
        late = b.driver.run(  # type: ignore[attr-defined]  # AsyncDriver
            b.handler.areply(_model(event), text("sorry, late"), push_fallback=True)
        )
    assert late.delivery is Delivery.PUSHED
    (push,) = fake.push_requests()
    assert push.json["to"] == GROUP  # type: ignore[index]  # JSON object


def test_an_answer_after_the_handler_returned_continues_its_positions(
    fake: FakeLinePlatform, bot: Callable[..., Bot]
) -> None:
    b = bot()
    b.register(answer)
    event = text_event("hi", user_id=USER)
    b.send(event)
    (first,) = results(b, 1)
    b.settle()
    # A follow-up from outside the handler run (say, a job the handler started).
    if b.case.path == "sync":
        later = b.handler.reply(_model(event), text("one more thing"), push_fallback=True)
    else:
        later = b.driver.run(  # type: ignore[attr-defined]  # AsyncDriver
            b.handler.areply(_model(event), text("one more thing"), push_fallback=True)
        )
    assert (first.delivery, first.position) == (Delivery.REPLIED, 0)
    assert (later.delivery, later.position) == (Delivery.PUSHED, 1)
    assert_answered_once(fake, event, answers=2)


def test_the_fake_expires_tokens_on_its_clock_and_the_plugin_falls_back_to_push(
    bot: Callable[..., Bot],
) -> None:
    now = [1000.0]
    with FakeLinePlatform(clock=lambda: now[0]) as fake:
        b = Bot(bot().case, fake)  # default reply_window: the plugin thinks the token is fine
        try:
            b.register(answer, push_fallback=True)
            event = text_event("hi", user_id=USER)
            fake.issue_reply_tokens(event)
            now[0] += 61  # LINE's minute is over, on LINE's clock
            b.send(event)
            (result,) = results(b, 1)
            assert result.delivery is Delivery.PUSHED
            assert "refused the reply token" in (result.reason or "")
            (reply,) = fake.reply_requests()
            assert reply.status == 400
            assert_answered_once(fake, event)
        finally:
            b.close()


def test_a_token_works_once_so_a_second_answer_is_pushed(
    fake: FakeLinePlatform, bot: Callable[..., Bot]
) -> None:
    b = bot()

    def two_answers(bot: Bot, event: Any) -> list[Any]:
        return [text("one"), text("two")]

    b.register(two_answers, push_fallback=True)
    event = text_event("hi", user_id=USER)
    b.send(event)
    first, second = results(b, 1)
    assert (first.delivery, second.delivery) == (Delivery.REPLIED, Delivery.PUSHED)
    assert (first.position, second.position) == (0, 1)
    assert second.retry_key == retry_key(event["webhookEventId"], 1)
    assert len(fake.reply_requests()) == 1  # the plugin knew the token was spent
    assert_answered_once(fake, event, answers=2)


def test_a_push_whose_answer_was_lost_is_retried_and_409_counts_as_delivered(
    fake: FakeLinePlatform, bot: Callable[..., Bot], no_backoff: None
) -> None:
    b = bot(reply_window=0.0)
    b.register(slow_answer, push_fallback=True)
    fake.script(PUSH_PATH, Fault.drop(processed=True))  # LINE accepted it; the answer is lost
    event = text_event("hi", user_id=USER)
    b.send(event)
    (result,) = results(b, 1)
    assert result.delivery is Delivery.ALREADY_DELIVERED
    assert result.delivered
    first, retry = fake.push_requests()
    assert first.outcome == "dropped"
    assert retry.status == 409
    assert first.headers["X-Line-Retry-Key"] == retry.headers["X-Line-Retry-Key"]
    assert result.request_id == first.request_id  # x-line-accepted-request-id
    assert_answered_once(fake, event)
    stats = b.handler.stats()
    assert (stats.answers_already_delivered, stats.answers_retried) == (1, 1)


def test_a_push_dropped_before_line_saw_it_is_retried_and_sent_once(
    fake: FakeLinePlatform, bot: Callable[..., Bot], no_backoff: None
) -> None:
    b = bot(reply_window=0.0)
    b.register(slow_answer, push_fallback=True)
    fake.script(PUSH_PATH, Fault.drop(), 503)
    event = text_event("hi", user_id=USER)
    b.send(event)
    (result,) = results(b, 1)
    assert result.delivery is Delivery.PUSHED
    assert [r.status for r in fake.push_requests()] == [None, 503, 200]
    assert_answered_once(fake, event)


def test_a_re_run_of_the_handler_pushes_once(
    fake: FakeLinePlatform, bot: Callable[..., Bot]
) -> None:
    """A crash re-run: the same handler runs twice for one event (once=False here)."""
    b = bot(reply_window=0.0)
    b.register(slow_answer, once=False, push_fallback=True)
    event = text_event("hi", user_id=USER)
    b.send(event)
    b.wait_ends(1)
    b.settle()
    b.send(redelivered(event))
    first, again = results(b, 2)
    assert first.delivery is Delivery.PUSHED
    assert again.delivery is Delivery.ALREADY_DELIVERED  # known here: nothing sent
    assert len(fake.push_requests()) == 1
    # Another process (a worker after a crash) knows nothing: LINE's 409 stops the copy.
    other = Bot(b.case, fake, reply_window=0.0)
    try:
        other.register(slow_answer, push_fallback=True)
        other.send(redelivered(event))
        (elsewhere,) = results(other, 1)
    finally:
        other.close()
    assert elsewhere.delivery is Delivery.ALREADY_DELIVERED
    assert elsewhere.status == 409
    assert [r.status for r in fake.push_requests()] == [200, 409]
    assert_answered_once(fake, event)


class Crash(Exception):
    """The process dies here (in the test: an exception nobody catches)."""


class CrashingStore(MemoryOnceStore):
    """A store shared by two 'processes' whose first writer dies right after LINE's 200."""

    def __init__(self) -> None:
        super().__init__()
        self.crash_on = "answer/"

    def remember(self, key: str) -> None:
        if key.startswith(self.crash_on):
            self.crash_on = "never"
            raise Crash(key)
        super().remember(key)

    async def aremember(self, key: str) -> None:
        self.remember(key)


def test_a_re_run_after_a_crash_between_the_reply_and_its_record_sends_no_second_copy(
    fake: FakeLinePlatform, bot: Callable[..., Bot]
) -> None:
    store = CrashingStore()
    b = bot(once_store=store)
    b.register(answer, push_fallback=True)
    event = text_event("hi", user_id=USER)
    if b.case.background:
        b.send(event)
        b.wait_stat("background_failed", 1)
    else:
        with pytest.raises(Crash):
            b.send(event)
    assert [r.status for r in fake.reply_requests()] == [200]
    # The job runs again elsewhere, with the same (durable) store: no reply, and no push.
    other = Bot(b.case, fake, once_store=store)
    try:
        other.register(answer, push_fallback=True)
        other.send(redelivered(event))
        (again,) = results(other, 1)
    finally:
        other.close()
    assert again.delivery is Delivery.FAILED
    assert again.uncertain
    assert len(fake.reply_requests()) == 1
    assert fake.push_requests() == []
    assert_answered_once(fake, event)


def test_an_answer_sent_before_the_handler_failed_is_not_sent_again_on_redelivery(
    fake: FakeLinePlatform, bot: Callable[..., Bot]
) -> None:
    b = bot()
    failures = [RuntimeError("after the answer")]

    def fail_once() -> None:
        if failures:
            raise failures.pop()

    b.register(answer, after=fail_once)
    event = text_event("hi", user_id=USER)
    if b.case.background:
        b.send(event)
        b.wait_stat("background_failed", 1)
    else:
        with pytest.raises(RuntimeError):
            b.send(event)
    b.send(redelivered(event))
    first, again = results(b, 2)
    assert first.delivery is Delivery.REPLIED
    assert again.delivery is Delivery.ALREADY_DELIVERED
    assert len(fake.reply_requests()) == 1
    assert_answered_once(fake, event)


def test_transient_failures_are_retried_like_marks(
    fake: FakeLinePlatform, bot: Callable[..., Bot], no_backoff: None
) -> None:
    b = bot()
    b.register(answer)
    fake.script(REPLY_PATH, 500, Fault.status(429, retry_after="0"))
    event = text_event("hi", user_id=USER)
    b.send(event)
    (result,) = results(b, 1)
    assert result.delivery is Delivery.REPLIED
    assert [r.status for r in fake.reply_requests()] == [500, 429, 200]
    assert b.handler.stats().answers_retried == 2
    assert_answered_once(fake, event)


def test_a_reply_whose_answer_was_lost_is_not_pushed_as_a_second_copy(
    fake: FakeLinePlatform, bot: Callable[..., Bot], no_backoff: None
) -> None:
    b = bot()
    b.register(answer, push_fallback=True)
    fake.script(REPLY_PATH, Fault.drop(processed=True))  # LINE replied; the answer is lost
    event = text_event("hi", user_id=USER)
    b.send(event)
    (result,) = results(b, 1)
    assert result.delivery is Delivery.FAILED
    assert result.uncertain
    assert "uncertain" in (result.reason or "")
    assert [r.status for r in fake.reply_requests()] == [None, 400]
    assert fake.push_requests() == []
    assert_answered_once(fake, event)  # the lost answer did reach the user, once


def test_the_monthly_quota_is_reported_and_not_retried(
    fake: FakeLinePlatform, bot: Callable[..., Bot], caplog: pytest.LogCaptureFixture
) -> None:
    b = bot(reply_window=0.0)
    b.register(slow_answer, push_fallback=True)
    fake.script(PUSH_PATH, Fault.status(429, body=QUOTA))
    event = text_event("hi", user_id=USER)
    with caplog.at_level(logging.WARNING, logger="line_markread"):
        b.send(event)
        (result,) = results(b, 1)
    assert result.delivery is Delivery.FAILED
    assert "monthly message quota" in (result.reason or "")
    assert len(fake.push_requests()) == 1
    assert any(r.levelno == logging.ERROR and "quota" in r.getMessage() for r in caplog.records)
    # The quota says nothing about rate limits: marks are not paused by it.
    b.send(text_event("next", user_id=USER))
    b.wait_ends(2)
    assert [r.status for r in fake.mark_requests()][-1] == 200


def test_a_rate_limit_beyond_the_deadline_is_reported_as_such(
    fake: FakeLinePlatform, bot: Callable[..., Bot], no_backoff: None
) -> None:
    b = bot(reply_window=0.0, max_attempts=2)
    b.register(slow_answer, push_fallback=True)
    fake.script(PUSH_PATH, 429, 429)
    event = text_event("hi", user_id=USER)
    b.send(event)
    (result,) = results(b, 1)
    assert result.delivery is Delivery.FAILED
    assert "rate limited" in (result.reason or "")
    assert len(fake.push_requests()) == 2


def test_bad_messages_raise_in_the_caller_before_anything_is_sent(
    fake: FakeLinePlatform,
) -> None:
    with WebhookHandler(SECRET, configuration=fake.configuration()) as handler:
        event = _model(text_event("hi", user_id=USER))
        with pytest.raises(ValueError, match="1 to 5"):
            handler.reply(event)
        with pytest.raises(ValueError, match="1 to 5"):
            handler.reply(event, *[text("x")] * 6)
        with pytest.raises(TypeError, match="message models"):
            handler.reply(event, "just a string")
        with pytest.raises(TypeError, match="push_fallback"):
            handler.reply(event, text("x"), push_fallback=1)  # type: ignore[arg-type]  # the point
    assert fake.reply_requests() == []
    assert fake.push_requests() == []


def test_the_webhook_factory_waits_for_answers_still_to_come(
    fake: FakeLinePlatform, bot: Callable[..., Bot]
) -> None:
    b = bot()
    b.register(slow_answer)
    webhooks = WebhookFactory(SECRET)
    signed = webhooks(text_event("one", user_id=USER), text_event("two", user_id=USER))
    b.driver.handle(b.handler, signed.body, signed.signature)
    webhooks.assert_answered_once(fake)  # background answers arrive after handle() returned
    with pytest.raises(AssertionError, match="got 1 answer"):
        webhooks.assert_answered_once(fake, answers=2, timeout=0.1)


# -- the fake's side, over raw HTTP -----------------------------------------------------


def _post(fake: FakeLinePlatform, path: str, body: object, **headers: str) -> tuple[int, Any, Any]:
    request = urllib.request.Request(
        fake.url + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {fake.access_token}", **headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


def test_fake_push_accepts_a_retry_key_once_and_reports_the_accepted_request(
    fake: FakeLinePlatform,
) -> None:
    key = str(uuid.uuid4())
    body = {"to": USER, "messages": [{"type": "text", "text": "x"}]}
    status, first, headers = _post(fake, PUSH_PATH, body, **{"X-Line-Retry-Key": key})
    assert status == 200
    accepted_id = headers["x-line-request-id"]
    status, again, headers = _post(fake, PUSH_PATH, body, **{"X-Line-Retry-Key": key})
    assert status == 409
    assert headers["x-line-accepted-request-id"] == accepted_id
    assert again["sentMessages"] == first["sentMessages"]
    assert _post(fake, PUSH_PATH, body)[0] == 200  # without a key: sent again
    assert _post(fake, PUSH_PATH, body, **{"X-Line-Retry-Key": "nope"})[0] == 400
    assert _post(fake, PUSH_PATH, {"to": "someone", "messages": body["messages"]})[0] == 400
    # Still refused where LINE refuses it.
    mark = {"markAsReadToken": "t"}
    assert _post(fake, TOKEN_MARK_AS_READ_PATH, mark, **{"X-Line-Retry-Key": key})[0] == 400


def test_fake_reply_tokens_work_once_and_expire_but_a_redelivery_renews_them() -> None:
    now = [0.0]
    with FakeLinePlatform(clock=lambda: now[0]) as fake:
        messages = [{"type": "text", "text": "x"}]
        used, late, renewed = text_event(), text_event(), text_event()
        fake.issue_reply_tokens(used, late, renewed)
        assert (
            _post(fake, REPLY_PATH, {"replyToken": used["replyToken"], "messages": messages})[0]
            == 200
        )
        status, error, _ = _post(
            fake, REPLY_PATH, {"replyToken": used["replyToken"], "messages": messages}
        )
        assert (status, error["message"]) == (400, "Invalid reply token")
        now[0] += 61
        assert (
            _post(fake, REPLY_PATH, {"replyToken": late["replyToken"], "messages": messages})[0]
            == 400
        )
        fake.issue_reply_tokens(redelivered(renewed))  # LINE redelivers it now
        assert (
            _post(fake, REPLY_PATH, {"replyToken": renewed["replyToken"], "messages": messages})[0]
            == 200
        )
        # Unless it was used, or 20 minutes passed since the event.
        fake.issue_reply_tokens(redelivered(used))
        assert (
            _post(fake, REPLY_PATH, {"replyToken": used["replyToken"], "messages": messages})[0]
            == 400
        )
        stale = text_event()
        fake.issue_reply_tokens(stale)
        now[0] += 20 * 60 + 1
        fake.issue_reply_tokens(redelivered(stale))
        assert (
            _post(fake, REPLY_PATH, {"replyToken": stale["replyToken"], "messages": messages})[0]
            == 400
        )


# -- the pure decisions ------------------------------------------------------------------


def test_retry_keys_are_uuids_fixed_by_event_and_position() -> None:
    assert retry_key("E1", 0) == retry_key("E1", 0)
    assert len({retry_key("E1", 0), retry_key("E1", 1), retry_key("E2", 0)}) == 3
    assert uuid.UUID(retry_key("E1", 0)).version == 5


def test_token_problems() -> None:
    fine = {"reply_token": "r", "used": False, "age": 1.0, "window": 50.0, "event_age": 1.0}
    assert token_problem(**fine) is None  # type: ignore[arg-type]
    assert "no reply token" in token_problem(**{**fine, "reply_token": None})  # type: ignore[arg-type,operator]
    assert "used" in token_problem(**{**fine, "used": True})  # type: ignore[arg-type,operator]
    assert "reply_window" in token_problem(**{**fine, "age": 50.5})  # type: ignore[arg-type,operator]
    assert "expired" in token_problem(**{**fine, "age": None, "event_age": 1300.0})  # type: ignore[arg-type,operator]
    assert is_quota(ApiResponse(429, message="You have reached your monthly limit."))
    assert not is_quota(ApiResponse(429, message="The API rate limit has been exceeded."))
    assert serialize([{"type": "text", "text": "x"}]) == [{"type": "text", "text": "x"}]


def test_chat_of_prefers_group_then_room_then_user() -> None:
    assert chat_of(_model(text_event(group_id=GROUP, user_id=USER))) == GROUP
    assert chat_of(_model(text_event(user_id=USER))) == USER
    assert chat_of(object()) is None


# -- helpers ----------------------------------------------------------------------------


def _model(event: dict[str, Any]) -> Any:
    from linebot.v3.webhooks import Event  # noqa: PLC0415  # heavy

    return Event.from_dict(event)
