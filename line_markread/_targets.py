"""Events -> read targets: which chat to mark, through which endpoint, with what.

Pure functions over the raw webhook JSON (see ``_body``), so known and unknown
message types, and SDK models handed to the functional ``Marker``, all go
through one decision.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Any, Literal

import attrs

Mode = Literal["auto", "token", "user"]
"""Which mark-as-read endpoint to use; see ``Settings.mode``."""


class Endpoint(enum.Enum):
    """The two mark-as-read APIs; the value is the request path."""

    TOKEN = "/v2/bot/chat/markAsRead"
    USER = "/v2/bot/message/markAsRead"


@attrs.frozen
class ChatId:
    """A conversation: ``kind`` is ``"user"`` (1:1), ``"group"`` or ``"room"``."""

    kind: str
    id: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


@attrs.frozen
class ReadTarget:
    """One mark-as-read request to make: marking it marks every earlier message in ``chat``.

    ``value`` (a read token or a user ID) is left out of the repr: read tokens
    are per-message credentials and are not logged.
    """

    chat: ChatId
    endpoint: Endpoint
    value: str = attrs.field(repr=False)
    timestamp: int
    event_id: str | None = attrs.field(default=None, eq=False)
    """The ``webhookEventId``: a redelivered event is recognised by it."""

    def payload(self) -> bytes:
        """The JSON request body for ``endpoint``."""
        if self.endpoint is Endpoint.TOKEN:
            return json.dumps({"markAsReadToken": self.value}).encode()
        return json.dumps({"chat": {"userId": self.value}}).encode()


class Skip(enum.Enum):
    """Why a message event cannot be marked."""

    NOT_A_MESSAGE = "not a message event"
    STANDBY = "standby mode: another channel is active"
    NO_CHAT = "no usable source (user, group or room ID)"
    NO_TOKEN = "no usable markAsReadToken"
    NOT_ONE_TO_ONE = "the user-ID API marks 1:1 chats only"


def _nonempty_str(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _chat_of(source: object) -> ChatId | None:
    if not isinstance(source, Mapping):
        return None
    kind = source.get("type")
    if not isinstance(kind, str):  # may be any JSON (a list is not even hashable)
        return None
    key = {"user": "userId", "group": "groupId", "room": "roomId"}.get(kind)
    if key is None:
        return None
    chat_id = source.get(key)
    return ChatId(kind, chat_id) if _nonempty_str(chat_id) else None  # type: ignore[arg-type]  # checked


def read_target(  # noqa: PLR0911 - one early return per reason an event cannot be marked
    raw: Mapping[str, Any], *, mode: Mode, mark_standby: bool
) -> ReadTarget | Skip:
    """Decide how to mark the event *raw* (webhook JSON), or why it cannot be."""
    if raw.get("type") != "message":
        return Skip.NOT_A_MESSAGE
    event_mode = raw.get("mode")
    # An SDK model's to_dict() gives the EventMode enum rather than its string.
    if getattr(event_mode, "value", event_mode) == "standby" and not mark_standby:
        return Skip.STANDBY
    chat = _chat_of(raw.get("source"))
    if chat is None:
        return Skip.NO_CHAT
    timestamp = raw.get("timestamp")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        timestamp = 0
    event_id = raw.get("webhookEventId")
    event_id = event_id if isinstance(event_id, str) and event_id else None
    message = raw.get("message")
    token = message.get("markAsReadToken") if isinstance(message, Mapping) else None

    if mode != "user" and isinstance(token, str) and token:
        return ReadTarget(chat, Endpoint.TOKEN, token, timestamp, event_id)
    if mode == "token":
        return Skip.NO_TOKEN
    if chat.kind != "user":
        return Skip.NOT_ONE_TO_ONE if mode == "user" else Skip.NO_TOKEN
    return ReadTarget(chat, Endpoint.USER, chat.id, timestamp, event_id)


def raw_event(event: object) -> Mapping[str, Any]:
    """The webhook JSON of *event*: a mapping as is, or an SDK model's ``to_dict()``.

    Anything else is a ``TypeError``; an event of the legacy ``linebot`` (v2) SDK
    gets one that says so and what to do instead.
    """
    if isinstance(event, Mapping):
        return event
    to_dict = getattr(event, "to_dict", None)
    if callable(to_dict):
        data = to_dict()
        if isinstance(data, Mapping):
            return data
    kind = type(event)
    if kind.__module__.startswith("linebot.models"):
        # The v2 SDK's MessageEvent has the same name as linebot.v3's: say which one it is.
        raise TypeError(
            f"got {kind.__module__}.{kind.__qualname__}, an event of the legacy linebot (v2) "
            "SDK, which line_markread does not read; parse webhooks with linebot.v3 "
            "(linebot.v3.WebhookParser or WebhookHandler), or pass the raw JSON events "
            "(json.loads(body)['events'])"
        )
    raise TypeError(f"expected a linebot.v3 webhook event or its JSON mapping, got {kind.__name__}")
