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
    from ._background import BackgroundClosed, BackgroundFull
    from ._body import WebhookBodyError
    from ._handler import WebhookHandler, install
    from ._marker import Marker
    from ._once import MemoryOnceStore, OnceStore
    from ._outcome import MarkFailure, Outcome
    from ._queue import QueueStats, QueueUnavailable
    from ._queue._postgres import PostgresQueue, RetryPolicy
    from ._read_first import read_first
    from ._reply import Delivery, ReplyResult
    from ._retry import is_testing, set_testing
    from ._settings import Settings
    from ._stats import Stats
    from ._targets import ChatId

__all__ = [
    "BackgroundClosed",
    "BackgroundFull",
    "ChatId",
    "Delivery",
    "MarkFailure",
    "Marker",
    "MemoryOnceStore",
    "OnceStore",
    "Outcome",
    "PostgresQueue",
    "QueueStats",
    "QueueUnavailable",
    "ReplyResult",
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
    "BackgroundClosed": "._background",
    "BackgroundFull": "._background",
    "ChatId": "._targets",
    "Delivery": "._reply",
    "MarkFailure": "._outcome",
    "Marker": "._marker",
    "MemoryOnceStore": "._once",
    "OnceStore": "._once",
    "Outcome": "._outcome",
    "PostgresQueue": "._queue._postgres",
    "QueueStats": "._queue",
    "QueueUnavailable": "._queue",
    "ReplyResult": "._reply",
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
