"""line_markread: every LINE message marked read before your bot's handler replies.

A plugin for ``line-bot-sdk`` (``linebot.v3``).  Swap the SDK's
``WebhookHandler`` for ours, or install onto the one you have with
``mark_as_read(handler, access_token=...)``.  See the README for the
ordering guarantee and every option.
"""

from __future__ import annotations

from ._body import WebhookBodyError
from ._handler import WebhookHandler, mark_as_read
from ._marker import Marker
from ._outcome import MarkFailure, Outcome
from ._settings import Settings
from ._stats import Stats
from ._targets import ChatId, Endpoint, ReadTarget, Skip
from ._version import __version__

__all__ = [
    "ChatId",
    "Endpoint",
    "MarkFailure",
    "Marker",
    "Outcome",
    "ReadTarget",
    "Settings",
    "Skip",
    "Stats",
    "WebhookBodyError",
    "WebhookHandler",
    "__version__",
    "mark_as_read",
]
