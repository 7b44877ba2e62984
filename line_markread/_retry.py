"""Retry policy: pure decisions about one failed attempt.

LINE's guide for mark-as-read: retry on 5xx and on timeouts.  We also retry
connection errors (the same failure seen earlier) and 429 (rate limited;
``Retry-After`` honoured when LINE sends one and it fits in the deadline).
Any other 4xx will fail the same way again, so it is final.
"""

from __future__ import annotations

import enum
import random

from ._http import ApiResponse
from ._settings import Settings

_testing = False


class _RestoreTesting:
    """What ``set_testing`` returns: leaving its ``with`` block restores the previous state."""

    __slots__ = ("_previous",)

    def __init__(self, previous: bool) -> None:
        self._previous = previous

    def __repr__(self) -> str:
        return f"<set_testing: restores {self._previous} on exit>"

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        global _testing  # noqa: PLW0603 - one process-wide switch is the point
        _testing = self._previous


def set_testing(on: bool = True) -> _RestoreTesting:
    """Turn backoff waits off (``True``) or back on, for fast tests of bots using the plugin.

    Attempts, classification and counting are unchanged; only the sleeping
    between attempts is skipped.  Takes effect at once; used as a context
    manager (``with set_testing(True): ...``) it also restores the previous
    state on exit, like ``stamina.set_testing``.
    """
    global _testing
    if not isinstance(on, bool):
        raise TypeError(f"set_testing takes True or False, got {on!r}")
    previous, _testing = _testing, on
    return _RestoreTesting(previous)


def is_testing() -> bool:
    """Whether ``set_testing(True)`` is in force (backoff waits skipped)."""
    return _testing


class Verdict(enum.Enum):
    DONE = "done"
    RETRY = "retry"
    GIVE_UP = "give up"


def classify(response: ApiResponse | None) -> Verdict:
    """``None`` stands for no answer at all (timeout, connection error)."""
    if response is None:
        return Verdict.RETRY
    if 200 <= response.status < 300:
        return Verdict.DONE
    if response.status >= 500 or response.status == 429:
        return Verdict.RETRY
    return Verdict.GIVE_UP


def next_delay(
    attempt: int,
    response: ApiResponse | None,
    settings: Settings,
    rng: random.Random,
    time_left: float,
) -> float | None:
    """Seconds to wait before attempt ``attempt + 1``, or ``None`` to give up.

    Exponential backoff with full jitter (AWS's "Exponential Backoff And
    Jitter"): many bots retrying one LINE outage spread out instead of
    arriving together.
    """
    if attempt >= settings.max_attempts:
        return None
    if response is not None and response.retry_after is not None:
        delay = response.retry_after
    else:
        ceiling = min(settings.backoff_max, settings.backoff_initial * 2 ** (attempt - 1))
        delay = rng.uniform(0.0, ceiling)
    if _testing:
        delay = 0.0
    if delay >= time_left:
        return None
    return delay


TIMEOUT_GROWTH = 4
"""Each retry may wait this many times longer for LINE than the attempt before it."""


def attempt_timeout(attempt: int, settings: Settings, time_left: float) -> float:
    """How long attempt *attempt* (1-based) may take, connecting and reading included.

    ``request_timeout`` for the first, growing by ``TIMEOUT_GROWTH`` per retry
    (1, 4, 16 s with the defaults): a slow but healthy LINE (every answer in
    1.2 s, or 3 s) gets a mark through by the second request, and a hanging
    one costs no more attempts than ``max_attempts`` and the retry budget
    allow.  Never longer than *time_left* (to ``retry_deadline``), but never
    shorter than ``request_timeout`` either: an attempt that may start may
    also get its answer.
    """
    grown = settings.request_timeout * float(TIMEOUT_GROWTH ** min(attempt - 1, 16))
    return max(settings.request_timeout, min(grown, time_left))
