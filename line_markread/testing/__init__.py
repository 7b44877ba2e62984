"""
Test support for bots that use line_markread, and for line_markread itself.

`FakeLinePlatform` is a local HTTP server that behaves like the parts of the
LINE Messaging API a bot touches when it marks messages as read and replies:
point your bot's ``Configuration`` at it, script failures, and assert on the
requests it recorded.  The webhook builders make the events and signed bodies
LINE would send to your bot, so tests go through the SDK's real parsing.

``set_testing()`` turns the plugin's backoff waits off, so tests of retries
run at full speed (attempts and their order are unchanged).

Nothing here talks to LINE.
"""

from __future__ import annotations

from .._retry import is_testing, set_testing
from ._assertions import assert_marked_before_replied, assert_not_marked
from ._fake_platform import (
    BOT_INFO_PATH,
    REPLY_PATH,
    TOKEN_MARK_AS_READ_PATH,
    USER_MARK_AS_READ_PATH,
    FakeLinePlatform,
    Fault,
    RecordedRequest,
)
from ._webhooks import (
    SignedWebhook,
    WebhookFactory,
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

__all__ = [
    "BOT_INFO_PATH",
    "REPLY_PATH",
    "TOKEN_MARK_AS_READ_PATH",
    "USER_MARK_AS_READ_PATH",
    "FakeLinePlatform",
    "Fault",
    "RecordedRequest",
    "SignedWebhook",
    "WebhookFactory",
    "assert_marked_before_replied",
    "assert_not_marked",
    "follow_event",
    "image_event",
    "is_testing",
    "message_event",
    "postback_event",
    "set_testing",
    "sign",
    "signed_body",
    "sticker_event",
    "text_event",
    "unfollow_event",
    "webhook_body",
]
