"""Handled once: what this process already did for an event, by ``webhookEventId``.

LINE redelivers an event (same ``webhookEventId``, same reply token,
``deliveryContext.isRedelivery: true``) when the bot answered the webhook
late or with an error, and says duplicates can arrive without redelivery too.
The engine never *marks* an event twice (``_engine``); this module keeps a
handler from *running* twice: once a handler returned without raising, its
event's key is remembered, and a later delivery of the same event skips it.
A handler that raised is not remembered, so a redelivery runs it again: LINE
redelivers exactly because of such errors.

The same store remembers the answers ``reply()`` delivered (``answer_key``),
the reply tokens it used (``token_key``) and, written before a reply that a
push could follow, the reply it was about to send (``attempt_key``), so a
re-run of a handler (once disabled, or a durable job after a crash) never
sends an answer twice.

``OnceStore`` is the seam: ``MemoryOnceStore`` (bounded, this process only)
is the default; a store shared by every worker (the PostgreSQL queue) makes
the record hold across processes and replicas.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Protocol, runtime_checkable

DEFAULT_ONCE_SIZE = 40_000
"""Keys ``MemoryOnceStore`` keeps (least recently used forgotten first): about 6 MB.

A handler's default store keeps ``KEYS_PER_EVENT`` keys per event for
``max_tracked_chats`` (10,000) events, as many ``webhookEventId``s as the
engine keeps for its marks.  LINE redelivers within minutes; 10,000 events
is the traffic of hours for most bots."""

KEYS_PER_EVENT = 4
"""Handled, and for a first answer: delivered, token used, reply written ahead."""


def event_key(event_id: str) -> str:
    """The key saying "a handler of this event completed"."""
    return f"handled/{event_id}"


def answer_key(event_id: str, position: int) -> str:
    """The key saying "answer number *position* (from 0) of this event was delivered"."""
    return f"answer/{event_id}/{position}"


def attempt_key(event_id: str, position: int) -> str:
    """The key saying "a reply of answer *position* was about to be sent" (written ahead)."""
    return f"attempt/{event_id}/{position}"


def token_key(event_id: str) -> str:
    """The key saying "this event's reply token was used (or may have been)"."""
    return f"token/{event_id}"


def validate_once(value: object) -> bool:
    """Check a ``once=`` value at registration: exactly ``True`` or ``False``."""
    if value is True or value is False:
        return value
    raise TypeError(f"once must be True or False, got {value!r}")


@runtime_checkable
class OnceStore(Protocol):
    """Where "already done" keys live.  Paired sync/async methods, as the handler's paths.

    ``seen(key)``: whether ``remember(key)`` happened (and is still kept).
    ``remember(key)``: record it; idempotent.  Both must be safe to call from
    several threads (sync handlers run in pools) and never block for long: the
    sync methods run in handler threads, the async ones on an event loop.
    A store may forget old keys (bounded memory, a retention period): a
    forgotten event runs again if LINE ever sends it again.
    """

    def seen(self, key: str) -> bool: ...

    def remember(self, key: str) -> None: ...

    async def aseen(self, key: str) -> bool: ...

    async def aremember(self, key: str) -> None: ...


class MemoryOnceStore:
    """The default ``OnceStore``: the newest *size* keys of this process, thread-safe.

    Nothing survives a restart and nothing is shared with other workers; the
    durable queue's store does both.
    """

    def __init__(self, size: int = DEFAULT_ONCE_SIZE) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        self._size = size
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<MemoryOnceStore {len(self._keys)}/{self._size} keys>"

    def __len__(self) -> int:
        return len(self._keys)

    def seen(self, key: str) -> bool:
        with self._lock:
            if key not in self._keys:
                return False
            self._keys.move_to_end(key)
            return True

    def remember(self, key: str) -> None:
        with self._lock:
            self._keys[key] = None
            self._keys.move_to_end(key)
            if len(self._keys) > self._size:
                self._keys.popitem(last=False)

    async def aseen(self, key: str) -> bool:
        return self.seen(key)

    async def aremember(self, key: str) -> None:
        self.remember(key)
