from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import itertools
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from linebot.v3.messaging import (
    ApiClient,
    ChatReference,
    MarkMessagesAsReadByTokenRequest,
    MarkMessagesAsReadRequest,
    MessagingApi,
    ReplyMessageRequest,
    ShowLoadingAnimationRequest,
    TextMessage,
)
from linebot.v3.webhooks import MessageEvent, StickerMessageContent, TextMessageContent

from line_markread import WebhookHandler
from line_markread.testing import (
    FakeLinePlatform,
    Fault,
    RecordedRequest,
    WebhookFactory,
    assert_marked_before_replied,
    signed_body,
    sticker_event,
    text_event,
)

TOKEN_API = "/v2/bot/chat/markAsRead"
USER_API = "/v2/bot/message/markAsRead"
BOT_INFO = "/v2/bot/info"
REPLY = "/v2/bot/message/reply"
LOADING = "/v2/bot/chat/loading/start"

ACCESS_TOKEN = "secret-channel-access-token"
AUTH = {"Authorization": f"Bearer {ACCESS_TOKEN}"}


@pytest.fixture
def fake() -> Iterator[FakeLinePlatform]:
    with FakeLinePlatform(access_token=ACCESS_TOKEN) as platform:
        yield platform


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


class Answer:
    def __init__(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    def json(self) -> Any:
        return json.loads(self.body)


async def call(
    session: aiohttp.ClientSession,
    fake: FakeLinePlatform,
    path: str,
    body: object = None,
    *,
    method: str = "POST",
    headers: Mapping[str, str] = AUTH,
    raw: bytes | None = None,
    timeout: float | None = None,
) -> Answer:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    async with session.request(
        method,
        fake.url + path,
        data=data,
        headers={"Content-Type": "application/json", **headers},
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as response:
        return Answer(response.status, await response.read(), response.headers)


# -- normal answers ------------------------------------------------------


async def test_token_mark_as_read(fake: FakeLinePlatform, session: aiohttp.ClientSession) -> None:
    """A well-formed token request gets 200 {}, a request id, and is recorded."""
    answer = await call(session, fake, TOKEN_API, {"markAsReadToken": "tok"})

    assert answer.status == 200
    assert answer.json() == {}
    assert answer.headers["x-line-request-id"]
    (record,) = fake.requests()
    assert record.method == "POST"
    assert record.path == TOKEN_API
    assert record.json == {"markAsReadToken": "tok"}
    assert record.raw_body == b'{"markAsReadToken": "tok"}'
    assert record.authorized
    assert record.status == 200
    assert record.outcome == "responded"
    assert record.request_id == answer.headers["x-line-request-id"]
    assert fake.marked_tokens() == ["tok"]


async def test_user_mark_as_read(fake: FakeLinePlatform, session: aiohttp.ClientSession) -> None:
    """The user-ID API answers 200 {} and is not a token mark."""
    answer = await call(session, fake, USER_API, {"chat": {"userId": "Uabc"}})

    assert (answer.status, answer.json()) == (200, {})
    assert [r.path for r in fake.mark_requests()] == [USER_API]
    assert fake.marked_tokens() == []


USER_ID = "U" + "0123456789abcdef" * 2


async def test_loading_start(fake: FakeLinePlatform, session: aiohttp.ClientSession) -> None:
    """The loading animation answers 202 {}, is recorded, and is neither a mark nor a reply."""
    answer = await call(session, fake, LOADING, {"chatId": USER_ID, "loadingSeconds": 5})
    default = await call(session, fake, LOADING, {"chatId": USER_ID})

    assert (answer.status, answer.json()) == (202, {})
    assert (default.status, default.json()) == (202, {})
    assert answer.headers["x-line-request-id"]
    assert [r.status for r in fake.loading_requests()] == [202, 202]
    assert fake.mark_requests() == []


@pytest.mark.parametrize(
    ("body", "prop"),
    [
        ({"chatId": "C" + "0" * 32, "loadingSeconds": 20}, "chatId"),  # a group
        ({"chatId": "R" + "0" * 32, "loadingSeconds": 20}, "chatId"),  # a room
        ({"chatId": "Ushort", "loadingSeconds": 20}, "chatId"),
        ({"loadingSeconds": 20}, "chatId"),
        ({"chatId": USER_ID, "loadingSeconds": 0}, "loadingSeconds"),
        ({"chatId": USER_ID, "loadingSeconds": 7}, "loadingSeconds"),
        ({"chatId": USER_ID, "loadingSeconds": 65}, "loadingSeconds"),
        ({"chatId": USER_ID, "loadingSeconds": "20"}, "loadingSeconds"),
        ({"chatId": USER_ID, "loadingSeconds": True}, "loadingSeconds"),
        ([USER_ID], "chatId"),
    ],
)
async def test_loading_start_is_validated_like_line(
    fake: FakeLinePlatform, session: aiohttp.ClientSession, body: object, prop: str
) -> None:
    """400 for a chat that is not a user, or seconds outside 5..60 or not a multiple of 5."""
    answer = await call(session, fake, LOADING, body)

    assert answer.status == 400
    assert answer.json()["details"][0]["property"] == prop


async def test_loading_start_needs_auth_and_can_be_scripted(
    fake: FakeLinePlatform, session: aiohttp.ClientSession
) -> None:
    """401 without the token; scripted faults apply to its path like to any other."""
    unauthorized = await call(session, fake, LOADING, {"chatId": USER_ID}, headers={})
    fake.script(LOADING, 503)
    scripted = await call(session, fake, LOADING, {"chatId": USER_ID})
    normal = await call(session, fake, LOADING, {"chatId": USER_ID})

    assert [unauthorized.status, scripted.status, normal.status] == [401, 503, 202]


def test_sdk_show_loading_animation_against_the_fake(fake: FakeLinePlatform) -> None:
    """The SDK's own call reaches the fake and gets its 202."""
    with ApiClient(fake.configuration()) as client:
        MessagingApi(client).show_loading_animation(
            ShowLoadingAnimationRequest(chat_id=USER_ID, loading_seconds=10)
        )
    (record,) = fake.loading_requests()
    assert (record.status, record.json) == (202, {"chatId": USER_ID, "loadingSeconds": 10})


async def test_bot_info(fake: FakeLinePlatform, session: aiohttp.ClientSession) -> None:
    """Bot info reflects the settings, and set_bot_info changes them."""
    first = (await call(session, fake, BOT_INFO, method="GET")).json()
    fake.set_bot_info(chat_mode="bot", mark_as_read_mode="auto", bot_name="Renamed")
    second = (await call(session, fake, BOT_INFO, method="GET")).json()

    assert first["displayName"] == "Fake Bot"
    assert (first["chatMode"], first["markAsReadMode"]) == ("chat", "manual")
    assert first["userId"].startswith("U")
    assert first["basicId"].startswith("@")
    assert (second["displayName"], second["chatMode"], second["markAsReadMode"]) == (
        "Renamed",
        "bot",
        "auto",
    )
    assert fake.mark_requests() == []


async def test_reply(fake: FakeLinePlatform, session: aiohttp.ClientSession) -> None:
    """A reply gets one sent message (id and quote token) per message."""
    messages = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]

    answer = await call(session, fake, REPLY, {"replyToken": "r", "messages": messages})

    assert answer.status == 200
    sent = answer.json()["sentMessages"]
    assert len(sent) == 2
    assert all(m["id"] and m["quoteToken"] for m in sent)
    assert sent[0]["id"] != sent[1]["id"]


def test_sdk_client_works_against_the_fake(fake: FakeLinePlatform) -> None:
    """line-bot-sdk's own client, given configuration(), talks to the fake and parses it."""
    with ApiClient(fake.configuration()) as client:
        api = MessagingApi(client)
        info = api.get_bot_info()
        api.mark_messages_as_read_by_token(
            MarkMessagesAsReadByTokenRequest(mark_as_read_token="sdk-token")
        )
        api.mark_messages_as_read(MarkMessagesAsReadRequest(chat=ChatReference(user_id="Uu")))
        reply = api.reply_message(
            ReplyMessageRequest(reply_token="r", messages=[TextMessage(text="hi")])
        )

    assert (info.chat_mode, info.mark_as_read_mode) == ("chat", "manual")
    assert len(reply.sent_messages) == 1
    assert fake.marked_tokens() == ["sdk-token"]
    assert all(r.authorized and r.status == 200 for r in fake.requests())


def test_sync_client_urllib(fake: FakeLinePlatform) -> None:
    """A plain blocking client works too, success and error alike."""
    good = urllib.request.Request(
        fake.url + TOKEN_API,
        data=b'{"markAsReadToken": "u"}',
        headers={**AUTH, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(good) as response:
        assert (response.status, response.read()) == (200, b"{}")

    bad = urllib.request.Request(fake.url + TOKEN_API, data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(bad)
    with caught.value:
        assert caught.value.code == 401

    assert [r.status for r in fake.wait_for_requests(2)] == [200, 401]


# -- errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": ACCESS_TOKEN}],
    ids=["missing", "wrong", "no-bearer"],
)
@pytest.mark.parametrize("path", [TOKEN_API, USER_API, REPLY])
async def test_unauthorized(
    fake: FakeLinePlatform,
    session: aiohttp.ClientSession,
    headers: dict[str, str],
    path: str,
) -> None:
    """Without the right bearer token: 401, checked before the (here invalid) body."""
    answer = await call(session, fake, path, {"bad": "body"}, headers=headers)

    assert answer.status == 401
    assert answer.json()["message"].startswith("Authentication failed.")
    assert answer.headers["x-line-request-id"]
    assert not fake.requests()[0].authorized


async def test_bot_info_needs_auth(fake: FakeLinePlatform, session: aiohttp.ClientSession) -> None:
    """GET endpoints check the token too."""
    answer = await call(session, fake, BOT_INFO, method="GET", headers={})

    assert answer.status == 401


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        (TOKEN_API, b""),
        (TOKEN_API, b"not json"),
        (TOKEN_API, b"[]"),
        (TOKEN_API, b"{}"),
        (TOKEN_API, b'{"markAsReadToken": ""}'),
        (TOKEN_API, b'{"markAsReadToken": 5}'),
        (USER_API, b"null"),
        (USER_API, b"{}"),
        (USER_API, b'{"chat": "Uabc"}'),
        (USER_API, b'{"chat": {}}'),
        (USER_API, b'{"chat": {"userId": ""}}'),
        (REPLY, b"{}"),
        (REPLY, b'{"replyToken": "r"}'),
        (REPLY, b'{"replyToken": "r", "messages": []}'),
        (REPLY, b'{"replyToken": "r", "messages": [1]}'),
        (REPLY, b'{"replyToken": "r", "messages": [{"text": "no type"}]}'),
        (REPLY, json.dumps({"replyToken": "r", "messages": [{"type": "text"}] * 6}).encode()),
        (REPLY, b'{"replyToken": "", "messages": [{"type": "text"}]}'),
    ],
)
async def test_bad_bodies(
    fake: FakeLinePlatform, session: aiohttp.ClientSession, path: str, raw: bytes
) -> None:
    """Malformed bodies get 400 with a LINE-style error body."""
    answer = await call(session, fake, path, raw=raw)

    assert answer.status == 400
    error = answer.json()
    assert isinstance(error["message"], str)
    assert all({"message", "property"} <= set(d) for d in error.get("details", []))
    assert fake.marked_tokens() == []


async def test_rejected_token(fake: FakeLinePlatform, session: aiohttp.ClientSession) -> None:
    """A rejected token gets 400 like another bot's token would; others still pass."""
    fake.reject_token("foreign", "other")

    rejected = await call(session, fake, TOKEN_API, {"markAsReadToken": "foreign"})
    accepted = await call(session, fake, TOKEN_API, {"markAsReadToken": "mine"})

    assert rejected.status == 400
    assert rejected.json()["message"] == "Invalid markAsReadToken"
    assert accepted.status == 200
    assert fake.marked_tokens() == ["mine"]


async def test_user_api_disabled(session: aiohttp.ClientSession) -> None:
    """Without the corporate option, the user-ID API answers 403."""
    with FakeLinePlatform(access_token=ACCESS_TOKEN, user_api_enabled=False) as fake:
        answer = await call(session, fake, USER_API, {"chat": {"userId": "Uabc"}})

    assert answer.status == 403
    assert answer.json()["message"]


@pytest.mark.parametrize(
    ("path", "method", "body"),
    [
        (TOKEN_API, "POST", {"markAsReadToken": "t"}),
        (USER_API, "POST", {"chat": {"userId": "U"}}),
        (BOT_INFO, "GET", None),
        (REPLY, "POST", {"replyToken": "r", "messages": [{"type": "text", "text": "x"}]}),
    ],
)
async def test_retry_key_is_refused(
    fake: FakeLinePlatform,
    session: aiohttp.ClientSession,
    path: str,
    method: str,
    body: object,
) -> None:
    """X-Line-Retry-Key is for push-like endpoints only: anywhere else it's a 400."""
    headers = {**AUTH, "X-Line-Retry-Key": "123e4567-e89b-12d3-a456-426614174000"}

    answer = await call(session, fake, path, body, method=method, headers=headers)

    assert answer.status == 400
    assert "retry key" in answer.json()["message"]
    assert fake.marked_tokens() == []


async def test_unknown_path_and_wrong_method(
    fake: FakeLinePlatform, session: aiohttp.ClientSession
) -> None:
    """Unknown paths are a JSON 404; known paths with the wrong method a JSON 405."""
    missing = await call(session, fake, "/v2/bot/nope", {})
    wrong = await call(session, fake, TOKEN_API, method="GET")

    assert (missing.status, missing.json()["message"]) == (404, "Not found")
    assert wrong.status == 405
    assert wrong.json()["message"]


# -- scripted faults -------------------------------------------------------


async def test_scripted_statuses_in_order_then_normal(
    fake: FakeLinePlatform, session: aiohttp.ClientSession
) -> None:
    """Scripted statuses are served first in first out, then the endpoint is normal again."""
    fake.script(TOKEN_API, 500, 503)
    fake.script(TOKEN_API, 429, 200, 502)

    answers = [await call(session, fake, TOKEN_API, {"markAsReadToken": f"t{i}"}) for i in range(7)]

    assert [a.status for a in answers] == [500, 503, 429, 200, 502, 200, 200]
    assert all(isinstance(a.json()["message"], str) for a in answers if a.status != 200)
    assert all(a.headers["x-line-request-id"] for a in answers)
    assert fake.marked_tokens() == ["t3", "t5", "t6"]


async def test_script_is_per_path(fake: FakeLinePlatform, session: aiohttp.ClientSession) -> None:
    """A script for one endpoint doesn't touch the others."""
    fake.script(USER_API, 500)

    token = await call(session, fake, TOKEN_API, {"markAsReadToken": "t"})
    user = await call(session, fake, USER_API, {"chat": {"userId": "U"}})

    assert (token.status, user.status) == (200, 500)


async def test_scripted_fault_comes_before_validation(
    fake: FakeLinePlatform, session: aiohttp.ClientSession
) -> None:
    """A scripted status answers even an unauthorized, malformed request, which is recorded."""
    fake.script(TOKEN_API, 503)

    answer = await call(session, fake, TOKEN_API, raw=b"garbage", headers={})

    assert answer.status == 503
    (record,) = fake.requests()
    assert (record.status, record.authorized, record.raw_body) == (503, False, b"garbage")


async def test_retry_after(fake: FakeLinePlatform, session: aiohttp.ClientSession) -> None:
    """Fault.status can add a Retry-After header."""
    fake.script(TOKEN_API, Fault.status(429, retry_after="3"), 429)

    with_header = await call(session, fake, TOKEN_API, {"markAsReadToken": "t"})
    without = await call(session, fake, TOKEN_API, {"markAsReadToken": "t"})

    assert (with_header.status, with_header.headers["Retry-After"]) == (429, "3")
    assert "Retry-After" not in without.headers


@pytest.mark.parametrize(
    "body", ["<html>502 Bad Gateway</html>", b"", b"\xff\xfe"], ids=["html", "empty", "binary"]
)
async def test_raw_error_body(
    fake: FakeLinePlatform, session: aiohttp.ClientSession, body: str | bytes
) -> None:
    """A given body is sent exactly, JSON or not."""
    fake.script(TOKEN_API, Fault.status(502, body=body))

    answer = await call(session, fake, TOKEN_API, {"markAsReadToken": "t"})

    assert answer.status == 502
    assert answer.body == (body.encode() if isinstance(body, str) else body)


async def test_delay(fake: FakeLinePlatform, session: aiohttp.ClientSession) -> None:
    """A delayed answer comes after a later, undelayed one, with the scripted status."""
    fake.script(TOKEN_API, Fault.delay(0.3, then=503))

    slow = asyncio.ensure_future(call(session, fake, TOKEN_API, {"markAsReadToken": "slow"}))
    await fake.await_requests(1, completed=False)
    fast = await call(session, fake, TOKEN_API, {"markAsReadToken": "fast"})
    slow_answer = await slow

    assert (fast.status, slow_answer.status) == (200, 503)
    slow_record, fast_record = fake.wait_for_requests(2)
    assert fast_record.responded_at is not None
    assert slow_record.responded_at is not None
    assert slow_record.received_at < fast_record.received_at
    assert fast_record.responded_at < slow_record.responded_at
    assert slow_record.responded_at - slow_record.received_at >= 0.2


async def test_delay_then_normal_success(
    fake: FakeLinePlatform, session: aiohttp.ClientSession
) -> None:
    """Fault.delay defaults to the normal answer, which marks the token."""
    fake.script(TOKEN_API, Fault.delay(0.01))

    answer = await call(session, fake, TOKEN_API, {"markAsReadToken": "late"})

    assert (answer.status, answer.json()) == (200, {})
    assert fake.marked_tokens() == ["late"]


async def test_hang_released_by_client_timeout(
    fake: FakeLinePlatform, session: aiohttp.ClientSession
) -> None:
    """A hung request times out on the client and is then recorded as abandoned."""
    fake.script(TOKEN_API, Fault.hang())

    with pytest.raises(asyncio.TimeoutError):
        await call(session, fake, TOKEN_API, {"markAsReadToken": "t"}, timeout=0.1)
    (record,) = await fake.await_requests(1)
    after = await call(session, fake, TOKEN_API, {"markAsReadToken": "t2"})

    assert (record.outcome, record.status, record.responded_at) == ("abandoned", None, None)
    assert after.status == 200
    assert fake.marked_tokens() == ["t2"]


async def test_hang_released_by_stop(session: aiohttp.ClientSession) -> None:
    """stop() doesn't wait for a hung request: it closes it, and the client sees a disconnect."""
    fake = FakeLinePlatform(access_token=ACCESS_TOKEN).start()
    fake.script(TOKEN_API, Fault.hang())
    pending = asyncio.ensure_future(call(session, fake, TOKEN_API, {"markAsReadToken": "t"}))
    await fake.await_requests(1, completed=False)

    fake.stop()

    with pytest.raises(aiohttp.ServerDisconnectedError):
        await pending
    (record,) = fake.requests()
    assert (record.outcome, record.status) == ("dropped", None)


async def test_delay_released_by_stop(session: aiohttp.ClientSession) -> None:
    """A long delay doesn't hold stop() either."""
    fake = FakeLinePlatform(access_token=ACCESS_TOKEN).start()
    fake.script(TOKEN_API, Fault.delay(3600))
    pending = asyncio.ensure_future(call(session, fake, TOKEN_API, {"markAsReadToken": "t"}))
    await fake.await_requests(1, completed=False)

    fake.stop()

    with pytest.raises(aiohttp.ServerDisconnectedError):
        await pending
    assert fake.requests()[0].outcome == "dropped"


async def test_drop(fake: FakeLinePlatform, session: aiohttp.ClientSession) -> None:
    """A dropped request is a disconnect to the client, and complete with no status."""
    fake.script(TOKEN_API, Fault.drop())

    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(session, fake, TOKEN_API, {"markAsReadToken": "t"})
    (record,) = fake.wait_for_requests(1)

    assert (record.outcome, record.status, record.responded_at) == ("dropped", None, None)
    assert fake.marked_tokens() == []


async def test_reset(fake: FakeLinePlatform, session: aiohttp.ClientSession) -> None:
    """A reset request is a connection reset to the client."""
    fake.script(TOKEN_API, Fault.reset())

    with pytest.raises(aiohttp.ClientOSError) as caught:
        await call(session, fake, TOKEN_API, {"markAsReadToken": "t"})

    assert caught.value.errno == errno.ECONNRESET
    assert fake.wait_for_requests(1)[0].outcome == "dropped"


def test_fault_validation() -> None:
    """Impossible statuses and negative delays are refused up front."""
    with pytest.raises(ValueError, match="HTTP status"):
        Fault.status(99)
    with pytest.raises(ValueError, match="HTTP status"):
        FakeLinePlatform().script(TOKEN_API, 600)
    with pytest.raises(ValueError, match="delay"):
        Fault.delay(-1)


# -- latency ---------------------------------------------------------------


async def test_latency_can_be_changed_while_running(
    fake: FakeLinePlatform, session: aiohttp.ClientSession
) -> None:
    """Latency delays every answer, errors included, from when it's set."""
    fake.latency = 0.5
    with pytest.raises(asyncio.TimeoutError):
        await call(session, fake, TOKEN_API, {"markAsReadToken": "t"}, timeout=0.05)
    await fake.await_requests(1)

    fake.latency = 0.0
    answer = await call(session, fake, BOT_INFO, method="GET")

    assert answer.status == 200
    assert [r.outcome for r in fake.requests()] == ["abandoned", "responded"]


async def test_latency_applies_to_errors(session: aiohttp.ClientSession) -> None:
    """Even a 401 waits for the latency."""
    with FakeLinePlatform(latency=0.2) as fake:
        answer = await call(session, fake, TOKEN_API, {}, headers={})
        (record,) = fake.requests()

    assert answer.status == 401
    assert record.responded_at is not None
    assert record.responded_at - record.received_at >= 0.1


# -- records and waiting ---------------------------------------------------


async def test_records_are_ordered_and_timed(
    fake: FakeLinePlatform, session: aiohttp.ClientSession
) -> None:
    """Records come in arrival order, each received before it was answered."""
    for i in range(5):
        await call(session, fake, TOKEN_API, {"markAsReadToken": f"t{i}"})

    records = fake.requests()

    assert [r.json for r in records] == [{"markAsReadToken": f"t{i}"} for i in range(5)]
    for record in records:
        assert record.responded_at is not None
        assert record.received_at <= record.responded_at
    assert all(a.received_at <= b.received_at for a, b in itertools.pairwise(records))
    assert len({r.request_id for r in records}) == 5


async def test_requests_is_a_snapshot(
    fake: FakeLinePlatform, session: aiohttp.ClientSession
) -> None:
    """Changing the returned list changes nothing in the fake."""
    await call(session, fake, TOKEN_API, {"markAsReadToken": "t"})

    fake.requests().clear()

    assert len(fake.requests()) == 1


async def test_authorization_is_redacted(
    fake: FakeLinePlatform, session: aiohttp.ClientSession
) -> None:
    """The access token never shows up in a record; other headers do, case-insensitively."""
    await call(session, fake, TOKEN_API, {"markAsReadToken": "t"}, headers={**AUTH, "X-Mine": "1"})

    (record,) = fake.requests()

    assert record.headers["authorization"] == "[REDACTED]"
    assert record.headers["x-mine"] == "1"
    assert ACCESS_TOKEN not in repr(record)
    assert ACCESS_TOKEN not in repr(fake.requests())


def test_wait_for_requests_times_out_helpfully(fake: FakeLinePlatform) -> None:
    """The timeout error says what was expected and what came."""
    with pytest.raises(TimeoutError, match=r"expected 1 complete request\(s\) to /v2/bot/chat"):
        fake.wait_for_requests(1, path=TOKEN_API, timeout=0.05)


async def test_await_requests_times_out_helpfully(
    fake: FakeLinePlatform, session: aiohttp.ClientSession
) -> None:
    """The async wait fails the same way, and lists what did come."""
    await call(session, fake, BOT_INFO, method="GET")

    with pytest.raises(TimeoutError, match=r"got 0 .*GET /v2/bot/info -> 200"):
        await fake.await_requests(1, path=TOKEN_API, timeout=0.05)


async def test_await_requests_filters_by_path(
    fake: FakeLinePlatform, session: aiohttp.ClientSession
) -> None:
    """Waiting for a path ignores requests to other paths."""
    await call(session, fake, BOT_INFO, method="GET")
    waiter = asyncio.ensure_future(fake.await_requests(2, path=TOKEN_API))
    await call(session, fake, TOKEN_API, {"markAsReadToken": "a"})
    await call(session, fake, TOKEN_API, {"markAsReadToken": "b"})

    records = await waiter

    assert [r.json for r in records] == [{"markAsReadToken": "a"}, {"markAsReadToken": "b"}]


def test_wait_for_requests_from_another_thread(fake: FakeLinePlatform) -> None:
    """A sync wait wakes when a request sent from elsewhere completes."""

    async def send() -> None:
        async with aiohttp.ClientSession() as s:
            await call(s, fake, TOKEN_API, {"markAsReadToken": "x"})

    # The client runs after the wait started, on a loop in a worker thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sent = pool.submit(asyncio.run, send())
        records = fake.wait_for_requests(1, path=TOKEN_API)
        sent.result()

    assert records[0].status == 200


async def test_reset_forgets_records_scripts_and_rejections(
    session: aiohttp.ClientSession,
) -> None:
    """reset() starts over, except for the settings."""
    with FakeLinePlatform(access_token=ACCESS_TOKEN, bot_name="Kept") as fake:
        fake.set_bot_info(chat_mode="bot")
        await call(session, fake, TOKEN_API, {"markAsReadToken": "before"})
        fake.script(TOKEN_API, 500)
        fake.reject_token("t")

        fake.reset()
        answer = await call(session, fake, TOKEN_API, {"markAsReadToken": "t"})
        info = (await call(session, fake, BOT_INFO, method="GET")).json()

    assert answer.status == 200
    assert [r.json for r in fake.requests()] == [{"markAsReadToken": "t"}, None]
    assert fake.marked_tokens() == ["t"]
    assert (info["displayName"], info["chatMode"]) == ("Kept", "bot")


async def test_marked_tokens_in_response_order(
    fake: FakeLinePlatform, session: aiohttp.ClientSession
) -> None:
    """marked_tokens follows answers, not arrivals; failed marks are left out."""
    fake.script(TOKEN_API, Fault.delay(0.2), 500)

    first = asyncio.ensure_future(call(session, fake, TOKEN_API, {"markAsReadToken": "first"}))
    await fake.await_requests(1, completed=False)
    failed = await call(session, fake, TOKEN_API, {"markAsReadToken": "failed"})
    await call(session, fake, TOKEN_API, {"markAsReadToken": "second"})
    await first

    assert failed.status == 500
    assert fake.marked_tokens() == ["second", "first"]


async def test_many_concurrent_requests(
    fake: FakeLinePlatform, session: aiohttp.ClientSession
) -> None:
    """Concurrent requests are all answered and all recorded."""
    answers = await asyncio.gather(
        *(call(session, fake, TOKEN_API, {"markAsReadToken": f"t{i}"}) for i in range(200))
    )

    assert {a.status for a in answers} == {200}
    assert sorted(fake.marked_tokens()) == sorted(f"t{i}" for i in range(200))
    assert len(fake.wait_for_requests(200)) == 200


# -- lifecycle -------------------------------------------------------------


def test_two_instances_at_once() -> None:
    """Each instance has its own port and its own records."""
    with FakeLinePlatform() as one, FakeLinePlatform() as two:
        assert one.url != two.url
        request = urllib.request.Request(
            one.url + BOT_INFO, headers={"Authorization": "Bearer fake-access-token"}
        )
        with urllib.request.urlopen(request) as response:
            assert response.status == 200

        assert len(one.requests()) == 1
        assert two.requests() == []


def test_lifecycle() -> None:
    """url needs a running fake; start twice is an error; stop is idempotent; restart works."""
    fake = FakeLinePlatform()
    with pytest.raises(RuntimeError, match="not running"):
        _ = fake.url
    assert "stopped" in repr(fake)

    assert fake.start() is fake
    with pytest.raises(RuntimeError, match="already running"):
        fake.start()
    assert fake.url.startswith("http://127.0.0.1:")
    assert fake.url in repr(fake)
    fake.stop()
    fake.stop()

    with fake:
        assert fake.url.startswith("http://127.0.0.1:")
    with pytest.raises(RuntimeError):
        _ = fake.url


async def test_async_context_manager(session: aiohttp.ClientSession) -> None:
    """async with starts and stops it like with does."""
    async with FakeLinePlatform() as fake:
        answer = await call(
            session,
            fake,
            BOT_INFO,
            method="GET",
            headers={"Authorization": "Bearer fake-access-token"},
        )
        assert answer.status == 200
    with pytest.raises(RuntimeError):
        _ = fake.url


def test_configuration(fake: FakeLinePlatform) -> None:
    """configuration() points the SDK at the fake with its access token."""
    config = fake.configuration()

    assert config.host == fake.url
    assert config.access_token == ACCESS_TOKEN


def test_recorded_request_is_frozen() -> None:
    """Records can't be changed by the test that holds them."""
    record = RecordedRequest(
        method="GET",
        path="/",
        json=None,
        raw_body=b"",
        authorized=False,
        headers={},
        received_at=0.0,
        responded_at=None,
        status=None,
        request_id="r",
    )

    with pytest.raises(AttributeError):
        record.status = 200  # type: ignore[misc]  # frozen: the point of the test
    assert not record.completed


async def test_a_token_script_comes_before_the_path_script(
    fake: FakeLinePlatform, session: aiohttp.ClientSession
) -> None:
    fake.script("/v2/bot/chat/markAsRead", 503)
    fake.script_token("slow-token", Fault.status(500), Fault.status(502))
    statuses = []
    for token in ("slow-token", "other", "slow-token", "slow-token", "other"):
        async with session.post(
            f"{fake.url}/v2/bot/chat/markAsRead",
            json={"markAsReadToken": token},
            headers={"Authorization": f"Bearer {fake.access_token}"},
        ) as response:
            statuses.append(response.status)
    assert statuses == [500, 503, 502, 200, 200]
    fake.reset()
    fake.script_token("slow-token", 500)
    fake.reset()  # forgets token scripts too
    async with session.post(
        f"{fake.url}/v2/bot/chat/markAsRead",
        json={"markAsReadToken": "slow-token"},
        headers={"Authorization": f"Bearer {fake.access_token}"},
    ) as response:
        assert response.status == 200


# -- issue 16 item 19: the test kit's assertions ---------------------------------------

SECRET = "kit-channel-secret"


def _reply(platform: FakeLinePlatform, event: Any) -> None:
    with ApiClient(platform.configuration()) as client:
        MessagingApi(client).reply_message(
            ReplyMessageRequest(reply_token=event.reply_token, messages=[TextMessage(text="ok")])
        )


def _replying_bot(platform: FakeLinePlatform, **sticker_options: Any) -> WebhookHandler:
    handler = WebhookHandler(SECRET, configuration=platform.configuration())
    handler.add(MessageEvent, message=TextMessageContent)(lambda event: _reply(platform, event))
    handler.add(MessageEvent, message=StickerMessageContent, **sticker_options)(
        lambda event: _reply(platform, event)
    )
    return handler


def test_a_newer_message_left_out_of_events_still_covers_its_chat(
    fake: FakeLinePlatform,
) -> None:
    older, newer = text_event("1", user_id="U1"), text_event("2", user_id="U1")
    with _replying_bot(fake) as handler:
        handler.handle(*signed_body(older, newer, channel_secret=SECRET))
    assert fake.marked_tokens() == [newer["message"]["markAsReadToken"]]  # one mark for both

    assert_marked_before_replied(fake, [older])  # covered by the newer message's mark
    assert_marked_before_replied(fake, [newer])
    assert_marked_before_replied(fake, [older, newer])


def test_a_reply_before_any_mark_of_its_chat_still_fails(fake: FakeLinePlatform) -> None:
    early, other_chat = text_event("1", user_id="U1"), text_event("2", user_id="U2")
    with ApiClient(fake.configuration()) as client:
        MessagingApi(client).reply_message(
            ReplyMessageRequest(reply_token=early["replyToken"], messages=[TextMessage(text="x")])
        )
    with _replying_bot(fake) as handler:  # a newer message, but of another chat, marked later
        handler.handle(*signed_body(other_chat, channel_secret=SECRET))
    with pytest.raises(AssertionError, match="before it was marked read"):
        assert_marked_before_replied(fake, [early])


def test_the_factory_form_skips_replies_to_opted_out_messages(fake: FakeLinePlatform) -> None:
    webhooks = WebhookFactory(SECRET)
    sticker, text = sticker_event(user_id="U1"), text_event("hi", user_id="U2")
    webhook = webhooks(sticker, text)
    with _replying_bot(fake, mark_as_read=False) as handler:  # stickers opt out, still answered
        handler.handle(webhook.body, webhook.signature)

    webhooks.assert_marked_before_replied(fake, opted_out=[sticker])
    assert_marked_before_replied(fake, webhook.events, opted_out=[sticker])
    webhooks.assert_not_marked(fake, sticker)
    with pytest.raises(AssertionError, match="sticker message"):
        webhooks.assert_marked_before_replied(fake)  # told nothing, it expects every mark
    with pytest.raises(AssertionError, match="no reply to any of the 0 message"):
        webhooks.assert_marked_before_replied(fake, opted_out=[sticker, text])


def test_requests_is_a_method_like_the_other_record_views(fake: FakeLinePlatform) -> None:
    for name in ("requests", "mark_requests", "loading_requests", "marked_tokens"):
        assert callable(getattr(fake, name)), name
    assert fake.requests() == fake.mark_requests() == fake.loading_requests() == []
