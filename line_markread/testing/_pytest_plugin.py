"""pytest plugin for bots that use line_markread (entry point ``pytest11: line_markread``).

Fixtures (all prefixed ``line_`` so they clash with nobody's):

``line_platform``
    A started ``FakeLinePlatform``, stopped after the test.  Point the bot at
    it: ``Configuration(host=line_platform.url, access_token=line_platform.access_token)``
    (or ``line_platform.configuration()``).
``line_channel_secret``
    The channel secret the bot under test is built with.  Override it in
    your ``conftest.py`` if your bot reads its own.
``line_webhook``
    A ``WebhookFactory`` for that secret: ``line_webhook(text_event("hi"))``
    returns a ``SignedWebhook`` with ``body``, ``signature`` and ``headers``
    ready to POST.  It remembers the events it signed, so
    ``line_webhook.assert_marked_before_replied(line_platform)`` can check the
    guarantee the plugin gives.

``assert_marked_before_replied(platform, events)`` and
``assert_not_marked(platform, events)`` are the same checks for events you
built yourself.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    # Every pytest session in an environment with line-markread installed loads
    # this module: the fake platform (aiohttp) and the SDK load only when a
    # fixture is used.
    from ._fake_platform import FakeLinePlatform
    from ._webhooks import WebhookFactory

# -- fixtures -------------------------------------------------------------------


@pytest.fixture
def line_platform() -> Iterator[FakeLinePlatform]:
    """A running ``FakeLinePlatform`` (127.0.0.1, random port), stopped after the test."""
    from ._fake_platform import FakeLinePlatform  # noqa: PLC0415  # lazy: cheap pytest start-up

    with FakeLinePlatform() as platform:
        yield platform


@pytest.fixture
def line_channel_secret() -> str:
    """The channel secret ``line_webhook`` signs with; override it to match your bot's."""
    return secrets.token_hex(16)


@pytest.fixture
def line_webhook(line_channel_secret: str) -> WebhookFactory:
    """A ``WebhookFactory`` signing with ``line_channel_secret``."""
    from ._webhooks import WebhookFactory  # noqa: PLC0415  # lazy: cheap pytest start-up

    return WebhookFactory(line_channel_secret)
