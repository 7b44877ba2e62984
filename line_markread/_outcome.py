"""What became of a mark: the values the engine hands back to callers and to ``on_failure``.

A leaf module, so the settings (which type ``on_failure``), the engine and
the public ``__init__`` can all name these without importing each other.
"""

from __future__ import annotations

import enum

import attrs

from ._targets import ChatId


class Outcome(enum.Enum):
    """What became of one event's mark, as far as its caller waited."""

    MARKED = "marked"
    """LINE answered 200 for this message or a newer one of its chat."""
    FAILED = "failed"
    """The mark failed for good (final error, attempts or deadline exhausted, closed)."""
    TIMED_OUT = "timed out"
    """``wait_timeout`` passed first; marking goes on in the background (sent or still queued)."""
    PENDING = "pending"
    """Not waited for (``"nowait"``, or ``wait=False``); marking goes on."""
    SKIPPED = "skipped"
    """Nothing was sent: no usable target, or the handler opted out."""


@attrs.frozen
class MarkFailure:
    """Handed to ``on_failure`` when a mark fails for good.  Holds no token or secret."""

    chat: ChatId
    endpoint: str
    """The API path the mark went to: ``/v2/bot/chat/markAsRead`` (read token) or
    ``/v2/bot/message/markAsRead`` (user ID)."""
    status: int | None
    """LINE's HTTP status of the last attempt; ``None`` when it got no answer."""
    reason: str
    """LINE's error message, or what went wrong on the way."""
    attempts: int
    request_id: str | None
    """LINE's ``x-line-request-id`` of the last attempt, for LINE's support."""
