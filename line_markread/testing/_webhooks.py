"""
Builders for webhook events and signed webhook bodies, as LINE sends them.

They return plain JSON-ready dicts rather than SDK models, so a test feeds its
bot exactly the bytes LINE would and the SDK's own parsing runs too.  Every
identifier defaults to a fresh unique value, so events built in a row never
collide the way copy-pasted fixtures do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from ._assertions import (
    assert_loading_before_replied,
    assert_marked_before_replied,
    assert_not_marked,
    remember_message,
)
from ._fake_platform import FakeLinePlatform

DEFAULT_DESTINATION = "Ufakebotdestination0000000000000"

SIGNATURE_HEADER = "X-Line-Signature"

Event = Mapping[str, Any]
"""A webhook event as JSON (what the builders return)."""

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

_tokens = itertools.count(1)
_message_ids = itertools.count(secrets.randbelow(10**17) + 10**17)
_timestamp_lock = threading.Lock()
_last_timestamp = 0


def _user_id() -> str:
    return "U" + secrets.token_hex(16)


def _read_token() -> str:
    return f"mart-{next(_tokens)}-{secrets.token_hex(8)}"


def _quote_token() -> str:
    return "q" + secrets.token_urlsafe(24)


def _timestamp() -> int:
    """Now in milliseconds, but always later than the previous default."""
    global _last_timestamp  # noqa: PLW0603  # one clock shared by every builder
    with _timestamp_lock:
        _last_timestamp = max(int(time.time() * 1000), _last_timestamp + 1)
        return _last_timestamp


def _ulid() -> str:
    """A ULID-shaped id: 48 bits of milliseconds then 80 random bits, in Crockford base32."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def _source(user_id: str | None, group_id: str | None, room_id: str | None) -> dict[str, Any]:
    if group_id is not None and room_id is not None:
        raise ValueError("an event comes from a group or a room, not both")
    if group_id is not None:
        source: dict[str, Any] = {"type": "group", "groupId": group_id}
    elif room_id is not None:
        source = {"type": "room", "roomId": room_id}
    else:
        return {"type": "user", "userId": user_id if user_id is not None else _user_id()}
    if user_id is not None:
        source["userId"] = user_id
    return source


def _event(
    kind: str,
    *,
    source: dict[str, Any],
    timestamp: int | None,
    mode: str,
    redelivery: bool,
    webhook_event_id: str | None,
) -> dict[str, Any]:
    return {
        "type": kind,
        "source": source,
        "timestamp": timestamp if timestamp is not None else _timestamp(),
        "mode": mode,
        "webhookEventId": webhook_event_id if webhook_event_id is not None else _ulid(),
        "deliveryContext": {"isRedelivery": redelivery},
    }


def message_event(
    message: Mapping[str, Any],
    *,
    user_id: str | None = None,
    group_id: str | None = None,
    room_id: str | None = None,
    timestamp: int | None = None,
    mode: str = "active",
    redelivery: bool = False,
    webhook_event_id: str | None = None,
    message_id: str | None = None,
    reply_token: str | None = None,
) -> dict[str, Any]:
    """
    A message event carrying *message* as given (copied).

    Use it for message types the other builders don't cover, including ones
    the SDK doesn't know.  The message gets an ``id`` if it has none (or
    *message_id*); nothing else is added, so a message without
    ``markAsReadToken`` stays without one.
    """
    content = dict(message)
    if message_id is not None:
        content["id"] = message_id
    else:
        content.setdefault("id", str(next(_message_ids)))
    event = _event(
        "message",
        source=_source(user_id, group_id, room_id),
        timestamp=timestamp,
        mode=mode,
        redelivery=redelivery,
        webhook_event_id=webhook_event_id,
    )
    event["replyToken"] = reply_token if reply_token is not None else secrets.token_hex(16)
    event["message"] = content
    remember_message(event)
    return event


def _with_token(content: dict[str, Any], token: str | None, include_token: bool) -> dict[str, Any]:
    content["quoteToken"] = _quote_token()
    if include_token:
        content["markAsReadToken"] = token if token is not None else _read_token()
    elif token is not None:
        raise ValueError("token given but include_token is False")
    return content


def text_event(
    text: str = "hello",
    *,
    user_id: str | None = None,
    group_id: str | None = None,
    room_id: str | None = None,
    token: str | None = None,
    include_token: bool = True,
    timestamp: int | None = None,
    mode: str = "active",
    redelivery: bool = False,
    webhook_event_id: str | None = None,
    message_id: str | None = None,
    reply_token: str | None = None,
) -> dict[str, Any]:
    """
    A text message event.

    The message's ``markAsReadToken`` is *token*, or a fresh unique one;
    ``include_token=False`` leaves it out, like LINE did before read tokens.
    """
    return message_event(
        _with_token({"type": "text", "text": text}, token, include_token),
        user_id=user_id,
        group_id=group_id,
        room_id=room_id,
        timestamp=timestamp,
        mode=mode,
        redelivery=redelivery,
        webhook_event_id=webhook_event_id,
        message_id=message_id,
        reply_token=reply_token,
    )


def sticker_event(
    *,
    package_id: str = "446",
    sticker_id: str = "1988",
    user_id: str | None = None,
    group_id: str | None = None,
    room_id: str | None = None,
    token: str | None = None,
    include_token: bool = True,
    timestamp: int | None = None,
    mode: str = "active",
    redelivery: bool = False,
    webhook_event_id: str | None = None,
    message_id: str | None = None,
    reply_token: str | None = None,
) -> dict[str, Any]:
    """A sticker message event; the token works as in `text_event`."""
    sticker = {
        "type": "sticker",
        "packageId": package_id,
        "stickerId": sticker_id,
        "stickerResourceType": "STATIC",
    }
    return message_event(
        _with_token(sticker, token, include_token),
        user_id=user_id,
        group_id=group_id,
        room_id=room_id,
        timestamp=timestamp,
        mode=mode,
        redelivery=redelivery,
        webhook_event_id=webhook_event_id,
        message_id=message_id,
        reply_token=reply_token,
    )


def image_event(
    *,
    user_id: str | None = None,
    group_id: str | None = None,
    room_id: str | None = None,
    token: str | None = None,
    include_token: bool = True,
    timestamp: int | None = None,
    mode: str = "active",
    redelivery: bool = False,
    webhook_event_id: str | None = None,
    message_id: str | None = None,
    reply_token: str | None = None,
) -> dict[str, Any]:
    """An image message event (content held by LINE); the token works as in `text_event`."""
    image = {"type": "image", "contentProvider": {"type": "line"}}
    return message_event(
        _with_token(image, token, include_token),
        user_id=user_id,
        group_id=group_id,
        room_id=room_id,
        timestamp=timestamp,
        mode=mode,
        redelivery=redelivery,
        webhook_event_id=webhook_event_id,
        message_id=message_id,
        reply_token=reply_token,
    )


def follow_event(
    *,
    user_id: str | None = None,
    timestamp: int | None = None,
    mode: str = "active",
    redelivery: bool = False,
    webhook_event_id: str | None = None,
    reply_token: str | None = None,
    is_unblocked: bool = False,
) -> dict[str, Any]:
    """A user added the bot as a friend (or unblocked it): an event with no message to mark."""
    event = _event(
        "follow",
        source=_source(user_id, None, None),
        timestamp=timestamp,
        mode=mode,
        redelivery=redelivery,
        webhook_event_id=webhook_event_id,
    )
    event["replyToken"] = reply_token if reply_token is not None else secrets.token_hex(16)
    event["follow"] = {"isUnblocked": is_unblocked}
    return event


def unfollow_event(
    *,
    user_id: str | None = None,
    timestamp: int | None = None,
    mode: str = "active",
    redelivery: bool = False,
    webhook_event_id: str | None = None,
) -> dict[str, Any]:
    """A user blocked the bot; LINE sends no reply token for it."""
    return _event(
        "unfollow",
        source=_source(user_id, None, None),
        timestamp=timestamp,
        mode=mode,
        redelivery=redelivery,
        webhook_event_id=webhook_event_id,
    )


def postback_event(
    data: str = "action=fake",
    *,
    user_id: str | None = None,
    group_id: str | None = None,
    room_id: str | None = None,
    timestamp: int | None = None,
    mode: str = "active",
    redelivery: bool = False,
    webhook_event_id: str | None = None,
    reply_token: str | None = None,
) -> dict[str, Any]:
    """A user tapped a postback action: not a message, so nothing to mark as read."""
    event = _event(
        "postback",
        source=_source(user_id, group_id, room_id),
        timestamp=timestamp,
        mode=mode,
        redelivery=redelivery,
        webhook_event_id=webhook_event_id,
    )
    event["replyToken"] = reply_token if reply_token is not None else secrets.token_hex(16)
    event["postback"] = {"data": data}
    return event


def webhook_body(*events: Mapping[str, Any], destination: str = DEFAULT_DESTINATION) -> str:
    """The JSON text of a webhook request carrying *events* in order, compact like LINE's."""
    return json.dumps(
        {"destination": destination, "events": list(events)},
        separators=(",", ":"),
        ensure_ascii=False,
    )


def sign(body: str | bytes, channel_secret: str) -> str:
    """The ``X-Line-Signature`` for *body*: base64 of its HMAC-SHA256 under the channel secret."""
    raw = body.encode() if isinstance(body, str) else body
    digest = hmac.new(channel_secret.encode(), raw, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def signed_body(
    *events: Mapping[str, Any], channel_secret: str, destination: str = DEFAULT_DESTINATION
) -> tuple[str, str]:
    """A webhook body carrying *events* and its signature: ``(body, signature)``."""
    body = webhook_body(*events, destination=destination)
    return body, sign(body, channel_secret)


# -- signed requests ----------------------------------------------------------

SIGNATURE_HEADER = "X-Line-Signature"


@attrs.frozen
class SignedWebhook:
    """A webhook request as LINE would send it: POST ``body`` with ``headers``."""

    body: str
    signature: str
    events: tuple[Event, ...] = attrs.field(repr=False)

    @property
    def headers(self) -> dict[str, str]:
        """``X-Line-Signature`` and ``Content-Type``, as LINE sends them."""
        return {SIGNATURE_HEADER: self.signature, "Content-Type": "application/json"}


class WebhookFactory:
    """Makes signed webhook requests for one channel secret and remembers their events."""

    def __init__(self, channel_secret: str) -> None:
        self.channel_secret = channel_secret
        self.events: list[Event] = []
        """Every event signed so far, in order."""

    def __repr__(self) -> str:
        return f"<WebhookFactory events={len(self.events)}>"

    def __call__(self, *events: Event, destination: str = DEFAULT_DESTINATION) -> SignedWebhook:
        """A signed webhook carrying *events* in order (none: LINE's "Verify" request)."""
        body = webhook_body(*events, destination=destination)
        self.events.extend(events)
        return SignedWebhook(body=body, signature=self.sign(body), events=tuple(events))

    def sign(self, body: str | bytes) -> str:
        """The ``X-Line-Signature`` of *body* under this channel secret."""
        return sign(body, self.channel_secret)

    def assert_marked_before_replied(
        self,
        platform: FakeLinePlatform,
        *,
        opted_out: Iterable[Event] = (),
        replies: int | None = None,
        timeout: float = 5.0,
    ) -> None:
        """``assert_marked_before_replied`` over every event this factory signed.

        Every message is expected to be marked except those in *opted_out* (the
        ones your bot's handlers opt out of): replies to those are not checked.
        """
        assert_marked_before_replied(
            platform, self.events, opted_out=opted_out, replies=replies, timeout=timeout
        )

    def assert_loading_before_replied(
        self,
        platform: FakeLinePlatform,
        *,
        opted_out: Iterable[Event] = (),
        replies: int | None = None,
        timeout: float = 5.0,
    ) -> None:
        """``assert_loading_before_replied`` over every event this factory signed."""
        assert_loading_before_replied(
            platform, self.events, opted_out=opted_out, replies=replies, timeout=timeout
        )

    def assert_answered_once(
        self,
        platform: FakeLinePlatform,
        *events: Event,
        answers: int = 1,
        timeout: float = 5.0,
    ) -> None:
        """``assert_answered_once`` for *events*, by default every message event signed so far."""
        from ._answers import assert_answered_once  # noqa: PLC0415  # loads the plugin's _reply

        chosen = events or tuple(e for e in self.events if e.get("type") == "message")
        assert_answered_once(platform, *chosen, answers=answers, timeout=timeout)

    def assert_not_marked(self, platform: FakeLinePlatform, *events: Event) -> None:
        """``assert_not_marked`` for *events* (say, the ones your bot opts out of)."""
        assert_not_marked(platform, events)
