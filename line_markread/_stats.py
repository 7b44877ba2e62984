"""Counters of what the plugin did, and the immutable snapshot users read."""

from __future__ import annotations

import attrs


@attrs.frozen
class Stats:
    """A snapshot of counters since the handler or marker was built.  Add two with ``+``."""

    requests: int = 0
    """HTTP attempts sent to LINE (first tries and retries)."""
    marked: int = 0
    """Attempts LINE answered with 200: the chat is read up to that message."""
    retried: int = 0
    """Attempts after the first for the same mark."""
    failed: int = 0
    """Marks given up: final error, attempts or deadline exhausted, or cancelled at close."""
    coalesced: int = 0
    """Messages not sent on their own because a newer message of the same chat covered them."""
    superseded: int = 0
    """Marks abandoned (before or between retries) because a newer message of the chat took over."""
    already_read: int = 0
    """Messages not sent because their chat was already marked up to a newer message."""
    skipped: int = 0
    """Message events with nothing to mark: no token or chat, standby, not 1:1 (user-ID API)."""
    opted_out: int = 0
    """Message events whose handler said ``mark_as_read=False`` (or whose policy raised)."""
    timed_out: int = 0
    """Handlers released by ``wait_timeout`` before their mark finished (marking went on)."""
    budget_exhausted: int = 0
    """Retries not made because the channel's retry budget was spent (the mark failed)."""
    latched: int = 0
    """Marks not sent at all because LINE answered 401/403 recently (the auth latch)."""
    duplicates: int = 0
    """Events seen before (same ``webhookEventId``, e.g. a redelivery), sent again or not.

    One is sent again only if its first mark failed for good; a mark that
    succeeded or is still in progress is never repeated.  Counting every
    redelivery says how often LINE redelivered, which is the signal worth
    watching (a webhook that failed or answered late)."""
    overflowed: int = 0
    """Marks failed unsent because ``max_tracked_chats`` chats already had one in
    progress (a long outage with many new chats); also counted in ``failed``."""
    callbacks_dropped: int = 0
    """Failures not passed to ``on_failure`` because 1,000 calls were already
    waiting for it (a callback slower than the failures); logged once per overflow."""
    loading_started: int = 0
    """Loading animations LINE accepted (``202``), refreshes included."""
    loading_failed: int = 0
    """Loading animations not shown: LINE refused, no answer after a brief retry, or paused."""
    loading_skipped: int = 0
    """Loading animations not requested because the chat is not 1:1 (groups and rooms)."""
    background_started: int = 0
    """``background=True`` handlers accepted to run later."""
    background_finished: int = 0
    """Background handlers that returned or raised."""
    background_failed: int = 0
    """Background handlers that raised (logged and passed to ``on_error``)."""
    background_abandoned: int = 0
    """Background handlers not run, or still running, when ``close()`` (or the drain at
    interpreter exit) gave up waiting, or cancelled or dropped when their event loop ended."""
    background_refused: int = 0
    """Events refused with ``BackgroundFull`` (a full backlog) or ``BackgroundClosed`` (a
    closed pool): their bodies raised, so LINE may redeliver them."""
    already_handled: int = 0
    """Handlers not run because they completed for that ``webhookEventId`` before (``once=``)."""
    answers_replied: int = 0
    """``reply()`` answers sent with the event's reply token."""
    answers_pushed: int = 0
    """``reply()`` answers sent by push (the token was too old or refused; ``push_fallback``)."""
    answers_already_delivered: int = 0
    """``reply()`` answers not sent again: an earlier run delivered them, or LINE said ``409``."""
    answers_failed: int = 0
    """``reply()`` answers not delivered (token unusable without ``push_fallback``, errors)."""
    answers_retried: int = 0
    """Reply and push attempts after the first for the same answer."""

    @property
    def background_pending(self) -> int:
        """Background handlers accepted and not over yet (waiting their turn or running).

        A gauge, derived from the counters so that every field stays a counter
        and ``+`` stays meaningful.
        """
        return self.background_started - self.background_finished - self.background_abandoned

    def __add__(self, other: Stats) -> Stats:
        if not isinstance(other, Stats):
            return NotImplemented
        return Stats(**{f: getattr(self, f) + getattr(other, f) for f in _FIELDS})


_FIELDS = tuple(a.name for a in attrs.fields(Stats))


class Counters:
    """The mutable counters of one engine; only its event loop's thread writes them."""

    __slots__ = _FIELDS

    requests: int
    marked: int
    retried: int
    failed: int
    coalesced: int
    superseded: int
    already_read: int
    skipped: int
    opted_out: int
    timed_out: int
    budget_exhausted: int
    latched: int
    duplicates: int
    overflowed: int
    callbacks_dropped: int
    loading_started: int
    loading_failed: int
    loading_skipped: int
    background_started: int
    background_finished: int
    background_failed: int
    background_abandoned: int
    background_refused: int
    already_handled: int
    answers_replied: int
    answers_pushed: int
    answers_already_delivered: int
    answers_failed: int
    answers_retried: int

    def __init__(self) -> None:
        for name in _FIELDS:
            setattr(self, name, 0)

    def snapshot(self) -> Stats:
        return Stats(**{name: getattr(self, name) for name in _FIELDS})


# The annotations above exist for the type checker; they must name exactly the Stats fields.
assert tuple(Counters.__annotations__) == _FIELDS
