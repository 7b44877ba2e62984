"""
The LINE endpoints the fake serves, with LINE's validation and answers.

Each endpoint is one handler function, ``(account, body) -> (status, body)``,
and one row of `ENDPOINTS` (path -> method and handler).  A handler that
must do I/O (the webhook test calls the bot) is a coroutine function of
the same shape, awaited on the fake's loop.  `answer` applies
what every endpoint shares (404, 405, 401, no retry key) before the handler
runs.  `Account` is what LINE knows about the bot, which the handlers answer
from; scripted faults come before all of this (see ``_faults``).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import http
import inspect
import itertools
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from ._records import RecordedRequest

TOKEN_MARK_AS_READ_PATH = "/v2/bot/chat/markAsRead"
USER_MARK_AS_READ_PATH = "/v2/bot/message/markAsRead"
BOT_INFO_PATH = "/v2/bot/info"
REPLY_PATH = "/v2/bot/message/reply"
PUSH_PATH = "/v2/bot/message/push"
LOADING_PATH = "/v2/bot/chat/loading/start"
WEBHOOK_ENDPOINT_PATH = "/v2/bot/channel/webhook/endpoint"
WEBHOOK_TEST_PATH = "/v2/bot/channel/webhook/test"

WEBHOOK_DEADLINE = 2.0
"""Seconds LINE gives a bot to answer a webhook; later is a ``request_timeout``."""
DEFAULT_CHANNEL_SECRET = "fake-channel-secret"

MARK_AS_READ_PATHS = frozenset({TOKEN_MARK_AS_READ_PATH, USER_MARK_AS_READ_PATH})

JSON = "application/json"

RETRY_KEY_HEADER = "X-Line-Retry-Key"
ACCEPTED_REQUEST_ID_HEADER = "x-line-accepted-request-id"

REPLY_TOKEN_LIFETIME = 60.0
"""Seconds a reply token works after its webhook (LINE: "within one minute")."""
REDELIVERY_TOKEN_LIMIT = 20 * 60.0
"""Seconds after the first webhook past which a redelivered token no longer works."""
RETRY_KEY_WINDOW = 24 * 60 * 60.0
"""Seconds LINE remembers an accepted ``X-Line-Retry-Key`` (24 hours)."""

_AUTH_FAILED = (
    "Authentication failed. Confirm that the access token in the authorization header is valid."
)
_EMPTY_OBJECT = b"{}"

# The messages LINE's API uses for these statuses where we know them; other
# statuses fall back to the HTTP reason phrase.
_ERROR_MESSAGES: Mapping[int, str] = {
    400: "The request body has 1 error(s)",
    401: _AUTH_FAILED,
    403: "Access to this API is not available for your account",
    404: "Not found",
    429: "The API rate limit has been exceeded. Try again later.",
    500: "An error occurred in the server",
}

Answer = tuple[int, bytes]
"""An HTTP status and a JSON body."""


class Account:
    """
    What LINE knows about the bot: the state the handlers answer from.

    Guarded by the platform's lock (passed in), except `user_api_enabled`,
    a plain flag tests flip.
    """

    def __init__(
        self,
        lock: threading.Condition,
        *,
        bot_name: str,
        chat_mode: str,
        mark_as_read_mode: str,
        user_api_enabled: bool,
        clock: Callable[[], float] = time.monotonic,
        reply_token_lifetime: float = REPLY_TOKEN_LIFETIME,
    ) -> None:
        self.lock = lock
        self.user_api_enabled = user_api_enabled
        self.clock = clock
        """The fake's clock for reply-token expiry and retry-key memory (injectable)."""
        self.reply_token_lifetime = reply_token_lifetime
        # Guarded by lock:
        self.bot_name = bot_name
        self.chat_mode = chat_mode
        self.mark_as_read_mode = mark_as_read_mode
        self.rejected: set[str] = set()
        self.issued: dict[str, tuple[float, float]] = {}
        """Reply tokens sent in webhooks: (first issued, last issued) on ``clock``."""
        self.used_reply_tokens: set[str] = set()
        self.retry_keys: dict[str, tuple[str, float, bytes]] = {}
        """Accepted retry keys: (request ID, when, the answer's body)."""
        # Fixed:
        self.bot_user_id = "U" + secrets.token_hex(16)
        self.basic_id = "@" + secrets.token_hex(4)
        self.message_ids = itertools.count(secrets.randbelow(10**17) + 10**17)
        # The webhook settings of the channel (guarded by lock):
        self.webhook_endpoint = ""
        self.webhook_active = False
        self.channel_secret = DEFAULT_CHANNEL_SECRET
        self.webhook_deadline = WEBHOOK_DEADLINE


Handler = Callable[[Account, object], Answer | Awaitable[Answer]]
"""An endpoint's own logic, given the account and the parsed JSON body (None if none):
a plain function, or a coroutine function when it does I/O."""


@attrs.frozen
class Endpoint:
    method: str
    handler: Handler
    retry_key: bool = False
    """Whether LINE accepts ``X-Line-Retry-Key`` here (push, multicast, narrowcast, broadcast)."""


def error_body(status: int, message: str | None = None, details: list[Any] | None = None) -> bytes:
    """A LINE-style JSON error body: ``{"message": ..., "details": [...]}``."""
    if message is None:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        message = _ERROR_MESSAGES.get(status, phrase)
    payload: dict[str, Any] = {"message": message}
    if details:
        payload["details"] = details
    return json.dumps(payload).encode()


def _invalid(prop: str, message: str = "must be specified") -> Answer:
    return 400, error_body(400, details=[{"message": message, "property": prop}])


_USER_ID = re.compile(r"U[0-9a-f]{32}")
"""A LINE user ID: the only chat the loading animation takes (not groups, not rooms)."""


def _nonempty_str(value: object) -> bool:
    return isinstance(value, str) and value != ""


async def answer(account: Account, record: RecordedRequest) -> Answer:
    """The normal answer to *record*: the checks every endpoint shares, then its handler."""
    status, body, _ = await answer_with_headers(account, record)
    return status, body


async def answer_with_headers(
    account: Account, record: RecordedRequest
) -> tuple[int, bytes, dict[str, str]]:
    """``answer``, with the extra headers it sends (``x-line-accepted-request-id`` on a 409)."""
    endpoint = ENDPOINTS.get(record.path)
    if endpoint is None:
        return 404, error_body(404), {}
    if record.method != endpoint.method:
        return 405, error_body(405, "Method not allowed"), {}
    if not record.authorized:
        return 401, error_body(401), {}
    key = record.headers.get(RETRY_KEY_HEADER)
    if key is None:
        result = endpoint.handler(account, record.json)
        return (*(await result if inspect.isawaitable(result) else result), {})
    return _keyed(account, endpoint, record, key)


def _keyed(
    account: Account, endpoint: Endpoint, record: RecordedRequest, key: str
) -> tuple[int, bytes, dict[str, str]]:
    """A request with ``X-Line-Retry-Key``: accepted once per key within LINE's 24 h."""
    if not endpoint.retry_key:
        # LINE accepts it on push, multicast, narrowcast and broadcast only.
        return 400, error_body(400, "The retry key can't be used with this endpoint"), {}
    try:
        uuid.UUID(key)
    except ValueError:
        return 400, error_body(400, "The retry key must be a UUID"), {}
    with account.lock:  # the check and the acceptance are one step: concurrent retries race
        now = account.clock()
        accepted = account.retry_keys.get(key)
        if accepted is not None and now - accepted[1] < RETRY_KEY_WINDOW:
            request_id, _, sent = accepted
            document = json.loads(sent) if sent else {}
            document["message"] = "The retry key is already accepted"
            return 409, json.dumps(document).encode(), {ACCEPTED_REQUEST_ID_HEADER: request_id}
        result = endpoint.handler(account, record.json)
        assert not inspect.isawaitable(result)  # keyed endpoints answer under the lock
        status, body = result
        if 200 <= status < 300:
            account.retry_keys[key] = (record.request_id, now, body)
    return status, body, {}


# -- the handlers ---------------------------------------------------------


def token_mark_as_read(account: Account, body: object | None) -> Answer:
    """``POST /v2/bot/chat/markAsRead``: mark read by the event's ``markAsReadToken``."""
    if not isinstance(body, dict):
        return _invalid("markAsReadToken", "The request body must be a JSON object")
    token = body.get("markAsReadToken")
    if not _nonempty_str(token):
        return _invalid("markAsReadToken")
    with account.lock:
        rejected = token in account.rejected
    if rejected:
        return 400, error_body(400, "Invalid markAsReadToken")
    return 200, _EMPTY_OBJECT


def user_mark_as_read(account: Account, body: object | None) -> Answer:
    """``POST /v2/bot/message/markAsRead``: the older API, by user ID."""
    if not account.user_api_enabled:
        return 403, error_body(403)
    if not isinstance(body, dict):
        return _invalid("chat", "The request body must be a JSON object")
    chat = body.get("chat")
    if not isinstance(chat, dict) or not _nonempty_str(chat.get("userId")):
        return _invalid("chat.userId")
    return 200, _EMPTY_OBJECT


def loading_start(account: Account, body: object | None) -> Answer:
    """``POST /v2/bot/chat/loading/start``: 202 ``{}``; 400 unless a user ID and 5..60 s by 5."""
    if not isinstance(body, dict):
        return _invalid("chatId", "The request body must be a JSON object")
    chat_id = body.get("chatId")
    if not isinstance(chat_id, str) or not _USER_ID.fullmatch(chat_id):
        return _invalid("chatId", "Invalid chatId")
    seconds = body.get("loadingSeconds", 20)  # LINE's default when omitted
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not 5 <= seconds <= 60:
        return _invalid("loadingSeconds", "must be between 5 and 60 in increments of 5")
    if seconds % 5:
        return _invalid("loadingSeconds", "must be between 5 and 60 in increments of 5")
    return 202, _EMPTY_OBJECT


def bot_info(account: Account, body: object | None) -> Answer:
    """``GET /v2/bot/info``: the bot's name and its chat and mark-as-read modes."""
    with account.lock:
        info = {
            "userId": account.bot_user_id,
            "basicId": account.basic_id,
            "displayName": account.bot_name,
            "chatMode": account.chat_mode,
            "markAsReadMode": account.mark_as_read_mode,
        }
    return 200, json.dumps(info).encode()


def _messages_problem(body: dict[str, Any]) -> Answer | None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not 1 <= len(messages) <= 5:
        return _invalid("messages", "size must be between 1 and 5")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not _nonempty_str(message.get("type")):
            return _invalid(f"messages[{i}].type")
    return None


def _sent(account: Account, body: dict[str, Any]) -> Answer:
    sent = [
        {"id": str(next(account.message_ids)), "quoteToken": secrets.token_urlsafe(24)}
        for _ in body["messages"]
    ]
    return 200, json.dumps({"sentMessages": sent}).encode()


def webhook_endpoint(account: Account, body: object | None) -> Answer:
    """``GET /v2/bot/channel/webhook/endpoint``: the URL LINE calls and whether it is on.

    A channel with no URL set answers ``{"endpoint": "", "active": false}``.
    """
    with account.lock:
        info = {"endpoint": account.webhook_endpoint, "active": account.webhook_active}
    return 200, json.dumps(info).encode()


async def webhook_test(account: Account, body: object | None) -> Answer:
    """``POST /v2/bot/channel/webhook/test``: LINE calls the webhook and says how it went.

    The bot gets a signed body with no events, as LINE's own check sends,
    over real HTTP; the answer is LINE's ``success``, ``timestamp``,
    ``statusCode`` (0 when no answer came), ``reason`` (``OK``,
    ``could_not_connect``, ``request_timeout``, ``error_status_code``,
    ``unclassified``: the reasons of LINE's webhook error statistics) and
    ``detail``.  The body may name another ``endpoint`` to test.
    """
    with account.lock:
        url, secret = account.webhook_endpoint, account.channel_secret
        deadline, destination = account.webhook_deadline, account.bot_user_id
    if body is not None:
        if not isinstance(body, dict):
            return _invalid("endpoint", "The request body must be a JSON object")
        if "endpoint" in body:
            if not _nonempty_str(body["endpoint"]) or len(body["endpoint"]) > 500:
                return _invalid("endpoint", "Invalid webhook endpoint URL")
            url = body["endpoint"]
    if not url.startswith(("https://", "http://")):
        return 400, error_body(400, "Webhook endpoint URL is not set")
    payload = json.dumps({"destination": destination, "events": []})
    status, reason, detail = await _call_webhook(url, payload, secret, deadline)
    result = {
        "success": reason == "OK",
        "timestamp": datetime.datetime.now(datetime.timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "statusCode": status,
        "reason": reason,
        "detail": detail,
    }
    return 200, json.dumps(result).encode()


async def _call_webhook(
    url: str, payload: str, secret: str, deadline: float
) -> tuple[int, str, str]:
    """POST the signed *payload* to the bot: (status code, reason, detail)."""
    import aiohttp  # noqa: PLC0415  # the fake's server has loaded it already

    digest = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()
    headers = {
        "Content-Type": JSON,
        "X-Line-Signature": base64.b64encode(digest).decode(),
        "User-Agent": "LineBotWebhook/2.0",
    }
    timeout = aiohttp.ClientTimeout(total=deadline)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, data=payload.encode(), headers=headers, allow_redirects=False) as r,
        ):
            await r.read()
            status = r.status
    except asyncio.TimeoutError:
        return 0, "request_timeout", "Request timeout"
    except aiohttp.ClientConnectorError:
        return 0, "could_not_connect", f"Connection failed: {url}"
    except (aiohttp.ClientError, ValueError):
        return 0, "unclassified", "unclassified"
    if 200 <= status < 300:
        return status, "OK", str(status)
    return status, "error_status_code", str(status)


def reply_token_expired(account: Account, token: str) -> bool:
    """Whether an issued token is past its life on the account's clock (lock held)."""
    issued = account.issued.get(token)
    if issued is None:  # not issued through the fake: its age is unknown, taken as fresh
        return False
    first, last = issued
    now = account.clock()
    return now - last > account.reply_token_lifetime or now - first > REDELIVERY_TOKEN_LIMIT


def reply(account: Account, body: object | None) -> Answer:
    """``POST /v2/bot/message/reply``: 1 to 5 messages, each with a type; a token works once.

    A token used before, or issued (``FakeLinePlatform.issue_reply_tokens``)
    longer ago than its lifetime on the fake's clock, gets LINE's 400
    "Invalid reply token".
    """
    if not isinstance(body, dict):
        return _invalid("replyToken", "The request body must be a JSON object")
    token = body.get("replyToken")
    if not isinstance(token, str) or token == "":
        return _invalid("replyToken")
    problem = _messages_problem(body)
    if problem is not None:
        return problem
    with account.lock:
        if token in account.used_reply_tokens or reply_token_expired(account, token):
            return 400, error_body(400, "Invalid reply token")
        account.used_reply_tokens.add(token)
    return _sent(account, body)


_CHAT_ID = re.compile(r"[UCR][0-9a-f]{32}")
"""A push target: a user (U), group (C) or room (R) ID."""


def push(account: Account, body: object | None) -> Answer:
    """``POST /v2/bot/message/push``: 1 to 5 messages to a user, group or room ID.

    ``X-Line-Retry-Key`` is checked before this runs (``answer_with_headers``).
    """
    if not isinstance(body, dict):
        return _invalid("to", "The request body must be a JSON object")
    to = body.get("to")
    if not isinstance(to, str) or not _CHAT_ID.fullmatch(to):
        return _invalid("to", "Invalid user, group or room ID")
    problem = _messages_problem(body)
    if problem is not None:
        return problem
    return _sent(account, body)


ENDPOINTS: Mapping[str, Endpoint] = {
    TOKEN_MARK_AS_READ_PATH: Endpoint("POST", token_mark_as_read),
    USER_MARK_AS_READ_PATH: Endpoint("POST", user_mark_as_read),
    BOT_INFO_PATH: Endpoint("GET", bot_info),
    REPLY_PATH: Endpoint("POST", reply),
    PUSH_PATH: Endpoint("POST", push, retry_key=True),
    LOADING_PATH: Endpoint("POST", loading_start),
    WEBHOOK_ENDPOINT_PATH: Endpoint("GET", webhook_endpoint),
    WEBHOOK_TEST_PATH: Endpoint("POST", webhook_test),
}
