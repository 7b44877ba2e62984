"""What the framework glue modules share: the signature header, the answers, closing.

``aiohttp``, ``starlette``, ``flask``, ``django`` and ``aws_lambda`` each do
their framework's I/O and nothing else: read the body and the
``X-Line-Signature`` header, call ``respond``/``arespond``, and turn the
``Answer`` into their response type.  So every integration answers a bad
request the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol

import attrs
from linebot.v3.exceptions import InvalidSignatureError

from ._body import WebhookBodyError

if TYPE_CHECKING:
    from ._handler import WebhookHandler

SIGNATURE_HEADER = "X-Line-Signature"
"""LINE's signature header (header names are case-insensitive)."""

CONTENT_TYPE = "text/plain; charset=utf-8"


class AsyncClosable(Protocol):
    """A ``WebhookHandler`` or a ``Marker``: anything with ``await aclose()``."""

    def aclose(self) -> Awaitable[None]: ...


@attrs.frozen
class Answer:
    """The HTTP status and plain-text body a webhook endpoint answers with."""

    status: int
    text: str


OK = Answer(200, "OK\n")
MISSING_SIGNATURE = Answer(400, "Missing signature\n")
INVALID_SIGNATURE = Answer(400, "Invalid signature\n")
INVALID_BODY = Answer(400, "Invalid webhook body\n")

REJECTED = (InvalidSignatureError, WebhookBodyError)
"""What ``handle()`` raises before any request for a webhook LINE did not send: 400."""


def rejection(error: BaseException) -> Answer:
    """The 400 answer for one of ``REJECTED``."""
    return INVALID_SIGNATURE if isinstance(error, InvalidSignatureError) else INVALID_BODY


def respond(handler: WebhookHandler, body: str | bytes, signature: str | None) -> Answer:
    """``handler.handle(body, signature)`` and the answer for it.

    ``400`` for a missing or bad signature and for a body that is not a LINE
    webhook (no API request is made for either), ``200`` otherwise.  An
    exception from one of the bot's handlers propagates: the framework
    answers ``500`` and logs it.
    """
    if signature is None:
        return MISSING_SIGNATURE
    try:
        handler.handle(body, signature)
    except REJECTED as error:
        return rejection(error)
    return OK


async def arespond(handler: WebhookHandler, body: str | bytes, signature: str | None) -> Answer:
    """Async twin of ``respond``: ``await handler.handle_async(body, signature)``."""
    if signature is None:
        return MISSING_SIGNATURE
    try:
        await handler.handle_async(body, signature)
    except REJECTED as error:
        return rejection(error)
    return OK
