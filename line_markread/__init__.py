"""line_markread: every LINE message marked read before your bot's handler replies.

A plugin for ``line-bot-sdk`` (``linebot.v3``).  Swap the SDK's
``WebhookHandler`` for ours, or install onto the one you have with
``install(handler, access_token=...)``.  See the README for the ordering
guarantee and every option.
"""

from __future__ import annotations

from ._body import WebhookBodyError
from ._handler import WebhookHandler, install
from ._marker import Marker
from ._outcome import MarkFailure, Outcome
from ._read_first import read_first
from ._retry import is_testing, set_testing
from ._settings import Settings
from ._stats import Stats
from ._targets import ChatId
from ._version import __version__

__all__ = [
    "ChatId",
    "MarkFailure",
    "Marker",
    "Outcome",
    "Settings",
    "Stats",
    "WebhookBodyError",
    "WebhookHandler",
    "__version__",
    "install",
    "is_testing",
    "read_first",
    "set_testing",
]
