"""line_markread: every LINE message marked read before your bot's handler replies.

A plugin for ``line-bot-sdk`` (``linebot.v3``).  Swap the SDK's
``WebhookHandler`` for ours, or install onto the one you have with
``install(handler, access_token=...)``.  See the README for the ordering
guarantee and every option.

Importing the package is cheap: ``linebot`` and ``aiohttp`` load on first
use of a name that needs them (module ``__getattr__``, as in stamina), so the
pytest plugin costs test suites that never touch LINE next to nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from ._version import __version__

if TYPE_CHECKING:
    from ._background import BackgroundFull
    from ._body import WebhookBodyError
    from ._handler import WebhookHandler, install
    from ._marker import Marker
    from ._outcome import MarkFailure, Outcome
    from ._queue import QueueStats, QueueUnavailable
    from ._queue._postgres import PostgresQueue, RetryPolicy
    from ._read_first import read_first
    from ._retry import is_testing, set_testing
    from ._settings import Settings
    from ._stats import Stats
    from ._targets import ChatId

__all__ = [
    "BackgroundFull",
    "ChatId",
    "MarkFailure",
    "Marker",
    "Outcome",
    "PostgresQueue",
    "QueueStats",
    "QueueUnavailable",
    "RetryPolicy",
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

_LAZY = {
    "BackgroundFull": "._background",
    "ChatId": "._targets",
    "MarkFailure": "._outcome",
    "Marker": "._marker",
    "Outcome": "._outcome",
    "PostgresQueue": "._queue._postgres",
    "QueueStats": "._queue",
    "QueueUnavailable": "._queue",
    "RetryPolicy": "._queue._postgres",
    "Settings": "._settings",
    "Stats": "._stats",
    "WebhookBodyError": "._body",
    "WebhookHandler": "._handler",
    "install": "._handler",
    "is_testing": "._retry",
    "read_first": "._read_first",
    "set_testing": "._retry",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
