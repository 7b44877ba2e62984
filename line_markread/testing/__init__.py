"""
Test support for bots that use line_markread, and for line_markread itself.

`FakeLinePlatform` is a local HTTP server that behaves like the parts of the
LINE Messaging API a bot touches when it marks messages as read and replies:
point your bot's ``Configuration`` at it, script failures, and assert on the
requests it recorded.  The webhook builders make the events and signed bodies
LINE would send to your bot, so tests go through the SDK's real parsing.

``set_testing()`` turns the plugin's backoff waits off, so tests of retries
run at full speed (attempts and their order are unchanged).

Nothing here talks to LINE.  Importing this module is cheap: the fake
platform (aiohttp) and the webhook builders load on first use of a name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .._retry import is_testing, set_testing
    from ._answers import answers_of, assert_answered_once
    from ._assertions import (
        assert_loading_before_replied,
        assert_marked_before_replied,
        assert_not_marked,
    )
    from ._fake_platform import (
        BOT_INFO_PATH,
        LOADING_PATH,
        PUSH_PATH,
        REPLY_PATH,
        TOKEN_MARK_AS_READ_PATH,
        USER_MARK_AS_READ_PATH,
        WEBHOOK_ENDPOINT_PATH,
        WEBHOOK_TEST_PATH,
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
    "LOADING_PATH",
    "PUSH_PATH",
    "REPLY_PATH",
    "TOKEN_MARK_AS_READ_PATH",
    "USER_MARK_AS_READ_PATH",
    "WEBHOOK_ENDPOINT_PATH",
    "WEBHOOK_TEST_PATH",
    "FakeLinePlatform",
    "Fault",
    "RecordedRequest",
    "SignedWebhook",
    "WebhookFactory",
    "answers_of",
    "assert_answered_once",
    "assert_loading_before_replied",
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

_LAZY = {
    "BOT_INFO_PATH": "._fake_platform",
    "LOADING_PATH": "._fake_platform",
    "PUSH_PATH": "._fake_platform",
    "REPLY_PATH": "._fake_platform",
    "TOKEN_MARK_AS_READ_PATH": "._fake_platform",
    "USER_MARK_AS_READ_PATH": "._fake_platform",
    "WEBHOOK_ENDPOINT_PATH": "._fake_platform",
    "WEBHOOK_TEST_PATH": "._fake_platform",
    "FakeLinePlatform": "._fake_platform",
    "Fault": "._fake_platform",
    "RecordedRequest": "._fake_platform",
    "SignedWebhook": "._webhooks",
    "WebhookFactory": "._webhooks",
    "answers_of": "._answers",
    "assert_answered_once": "._answers",
    "assert_loading_before_replied": "._assertions",
    "assert_marked_before_replied": "._assertions",
    "assert_not_marked": "._assertions",
    "follow_event": "._webhooks",
    "image_event": "._webhooks",
    "is_testing": ".._retry",
    "message_event": "._webhooks",
    "postback_event": "._webhooks",
    "set_testing": ".._retry",
    "sign": "._webhooks",
    "signed_body": "._webhooks",
    "sticker_event": "._webhooks",
    "text_event": "._webhooks",
    "unfollow_event": "._webhooks",
    "webhook_body": "._webhooks",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
