from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from linebot.v3.exceptions import InvalidSignatureError
from linebot.v3.models import UnknownEvent
from linebot.v3.webhook import WebhookParser
from linebot.v3.webhooks import (
    FollowEvent,
    GroupSource,
    ImageMessageContent,
    MessageEvent,
    PostbackEvent,
    RoomSource,
    StickerMessageContent,
    TextMessageContent,
    UnfollowEvent,
    UserSource,
)

from line_markread.testing import (
    follow_event,
    image_event,
    message_event,
    postback_event,
    sign,
    signed_body,
    sticker_event,
    text_event,
    unfollow_event,
    webhook_body,
)

SECRET = "fake-channel-secret"


def parse(*events: dict[str, Any]) -> list[Any]:
    body, signature = signed_body(*events, channel_secret=SECRET)
    parsed: list[Any] = WebhookParser(SECRET).parse(body, signature)
    return parsed


@pytest.mark.parametrize(
    ("build", "content_class"),
    [
        (text_event, TextMessageContent),
        (sticker_event, StickerMessageContent),
        (image_event, ImageMessageContent),
    ],
)
def test_message_builders_parse_with_their_token(
    build: Callable[..., dict[str, Any]], content_class: Any
) -> None:
    """The SDK parses each message event into its class, read token included."""
    (event,) = parse(build(token="the-token"))

    assert isinstance(event, MessageEvent)
    assert isinstance(event.message, content_class)
    assert event.message.mark_as_read_token == "the-token"
    assert event.message.quote_token


@pytest.mark.parametrize("build", [text_event, sticker_event, image_event])
def test_default_tokens_are_fresh(build: Callable[..., dict[str, Any]]) -> None:
    """Without a token, each event gets its own, and the SDK sees it."""
    raw = [build() for _ in range(50)]
    tokens = [e["message"]["markAsReadToken"] for e in raw]

    assert len(set(tokens)) == 50
    assert all(t.startswith("mart-") for t in tokens)
    assert [e.message.mark_as_read_token for e in parse(*raw)] == tokens


def test_text_event_content() -> None:
    """Text, ids and flags given to the builder are what the bot receives."""
    raw = text_event(
        "héllo 🌸",
        user_id="Uuser",
        timestamp=1234,
        mode="standby",
        redelivery=True,
        webhook_event_id="01ARZ3NDEKTSV4RRFFQ69G5FAV",
        message_id="42",
        reply_token="reply-me",
    )

    (event,) = parse(raw)

    assert event.message.text == "héllo 🌸"
    assert event.message.id == "42"
    assert event.source == UserSource(type="user", user_id="Uuser")
    assert event.timestamp == 1234
    assert event.mode.value == "standby"
    assert event.delivery_context.is_redelivery is True
    assert event.webhook_event_id == "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    assert event.reply_token == "reply-me"


def test_sticker_ids() -> None:
    """Sticker package and id are passed through."""
    (event,) = parse(sticker_event(package_id="11537", sticker_id="52002734"))

    assert (event.message.package_id, event.message.sticker_id) == ("11537", "52002734")


def test_sources() -> None:
    """Group and room events name their chat, and the user only if given."""
    group, group_with_user, room_with_user = parse(
        text_event(group_id="Cgroup"),
        text_event(group_id="Cgroup", user_id="Uuser"),
        text_event(room_id="Rroom", user_id="Uuser"),
    )

    assert isinstance(group.source, GroupSource)
    assert (group.source.group_id, group.source.user_id) == ("Cgroup", None)
    assert (group_with_user.source.group_id, group_with_user.source.user_id) == (
        "Cgroup",
        "Uuser",
    )
    assert isinstance(room_with_user.source, RoomSource)
    assert (room_with_user.source.room_id, room_with_user.source.user_id) == ("Rroom", "Uuser")


def test_group_and_room_are_exclusive() -> None:
    """An event can't come from both a group and a room."""
    with pytest.raises(ValueError, match="group or a room"):
        text_event(group_id="C", room_id="R")


def test_default_user_ids_look_like_line_ids_and_differ() -> None:
    """A default user id is "U" and 32 hex digits, fresh for each event."""
    ids = [text_event()["source"]["userId"] for _ in range(20)]

    assert all(re.fullmatch(r"U[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == 20


def test_default_identifiers_are_unique() -> None:
    """Event ids, message ids, reply tokens and quote tokens never repeat."""
    events = [text_event() for _ in range(200)] + [image_event() for _ in range(200)]

    for key in ("webhookEventId", "replyToken"):
        assert len({e[key] for e in events}) == len(events), key
    for key in ("id", "quoteToken"):
        assert len({e["message"][key] for e in events}) == len(events), key


def test_webhook_event_ids_are_ulid_shaped() -> None:
    """26 Crockford base32 characters, like LINE's ULIDs."""
    ids = [text_event()["webhookEventId"] for _ in range(20)]

    assert all(re.fullmatch(r"[0-7][0-9A-HJKMNP-TV-Z]{25}", i) for i in ids)


def test_default_timestamps_strictly_increase() -> None:
    """Events built in a row have strictly increasing timestamps, whatever the builder."""
    builders: list[Callable[[], dict[str, Any]]] = [
        text_event,
        sticker_event,
        image_event,
        follow_event,
        unfollow_event,
        postback_event,
    ]
    stamps = [builders[i % len(builders)]()["timestamp"] for i in range(600)]

    assert all(a < b for a, b in itertools.pairwise(stamps))


def test_without_token() -> None:
    """include_token=False builds a message without a read token, as older messages were."""
    raw = text_event(include_token=False)

    (event,) = parse(raw)

    assert "markAsReadToken" not in raw["message"]
    assert event.message.mark_as_read_token is None


def test_token_and_no_token_conflict() -> None:
    """Asking for no token while giving one is a mistake, not a choice."""
    with pytest.raises(ValueError, match="include_token"):
        text_event(token="t", include_token=False)


def test_unknown_message_type_becomes_unknown_event() -> None:
    """
    The SDK turns a message type it doesn't know into an UnknownEvent, which
    keeps neither the message nor its token: only the raw body has them.
    """
    raw = message_event({"type": "hologram", "id": "1", "markAsReadToken": "t"})
    body, signature = signed_body(raw, channel_secret=SECRET)

    (event,) = WebhookParser(SECRET).parse(body, signature)

    assert isinstance(event, UnknownEvent)
    assert event.type == "message"
    assert json.loads(body)["events"][0]["message"]["markAsReadToken"] == "t"


def test_message_event_copies_and_fills_id() -> None:
    """The given message is not mutated; an id is added only where missing."""
    message = {"type": "text", "text": "x", "quoteToken": "q"}

    filled = message_event(message)["message"]
    kept = message_event({**message, "id": "7"})["message"]
    overridden = message_event({**message, "id": "7"}, message_id="8")["message"]

    assert "id" not in message
    assert filled["id"].isdigit()
    assert kept["id"] == "7"
    assert overridden["id"] == "8"


def test_follow_unfollow_postback() -> None:
    """Non-message events parse into their SDK classes."""
    follow, unfollow, postback = parse(
        follow_event(user_id="Uf", is_unblocked=True),
        unfollow_event(user_id="Uu"),
        postback_event("action=buy", group_id="Cg"),
    )

    assert isinstance(follow, FollowEvent)
    assert follow.follow.is_unblocked is True
    assert follow.source.user_id == "Uf"
    assert follow.reply_token
    assert isinstance(unfollow, UnfollowEvent)
    assert unfollow.source.user_id == "Uu"
    assert isinstance(postback, PostbackEvent)
    assert postback.postback.data == "action=buy"
    assert postback.source.group_id == "Cg"


def test_webhook_body_is_compact_json_with_events_in_order() -> None:
    """The body has the destination and the events in the order given."""
    first, second = text_event("1"), text_event("2")

    body = webhook_body(first, second, destination="Udest")

    assert json.loads(body) == {"destination": "Udest", "events": [first, second]}
    assert ", " not in body
    assert ": " not in body
    assert json.loads(webhook_body())["destination"].startswith("U")


def test_sign_matches_the_sdk_check() -> None:
    """The SDK accepts our signature, for text and bytes alike, and rejects another secret's."""
    body = webhook_body(text_event("日本語"))

    assert sign(body, SECRET) == sign(body.encode(), SECRET)
    assert WebhookParser(SECRET).parse(body, sign(body.encode(), SECRET))
    with pytest.raises(InvalidSignatureError):
        WebhookParser(SECRET).parse(body, sign(body, "another-secret"))


def test_sign_known_value() -> None:
    """base64(HMAC-SHA256(secret, body)), checked against `openssl dgst -sha256 -hmac secret`."""
    assert sign("{}", "secret") == "dzJZAsrKgS3CWXM6rNBGtzgXNyx3e42VtAJkdHRRbhM="


def test_signed_body() -> None:
    """signed_body is webhook_body plus its signature."""
    event = text_event()

    body, signature = signed_body(event, channel_secret=SECRET, destination="Ux")

    assert body == webhook_body(event, destination="Ux")
    assert signature == sign(body, SECRET)
