"""Retry policy: pure decisions about one failed attempt.

LINE's guide for mark-as-read: retry on 5xx and on timeouts.  We also retry
connection errors (the same failure seen earlier) and 429 (rate limited;
``Retry-After`` honoured when LINE sends one and it fits in the deadline).
Any other 4xx will fail the same way again, so it is final.

How long each attempt may take is decided here too: the first adapts to the
response times LINE showed lately (``Latencies``), within bounds, so a slow
but healthy LINE is not sent every mark twice.
"""

from __future__ import annotations

import collections
import enum
import random
from collections.abc import Sequence

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


def attempt_timeout(
    attempt: int, settings: Settings, time_left: float, first: float | None = None
) -> float:
    """How long attempt *attempt* (1-based) may take, connecting and reading included.

    *first* (default ``request_timeout``) for the first: ``Latencies`` makes
    it adaptive.  Each retry may take ``request_timeout`` times
    ``TIMEOUT_GROWTH`` per retry (4, 16 s with the defaults): a slow but
    healthy LINE (every answer in 1.2 s, or 3 s) gets a mark through by the
    second request, and a hanging one costs no more attempts than
    ``max_attempts`` and the retry budget allow.  Never longer than
    *time_left* (to ``retry_deadline``), but never shorter than
    ``request_timeout`` either: an attempt that may start may also get its
    answer.
    """
    if attempt <= 1:
        grown = settings.request_timeout if first is None else first
    else:
        grown = settings.request_timeout * float(TIMEOUT_GROWTH ** min(attempt - 1, 16))
    return max(settings.request_timeout, min(grown, time_left))


LATENCY_WINDOW = 32
"""Successful answers whose response times the adaptive first-attempt timeout looks at."""
LATENCY_PERCENTILE = 0.9
"""The share of recent successes the first attempt should wait long enough for."""
LATENCY_HEADROOM = 1.5
"""The first attempt waits this many times that percentile: jitter must not cost a retry."""


def first_attempt_timeout(latencies: Sequence[float], request_timeout: float) -> float:
    """The first attempt's timeout from recent successes' response times (pure).

    ``request_timeout`` until LINE has answered; then ``LATENCY_HEADROOM``
    times the ``LATENCY_PERCENTILE`` of *latencies*, clamped to
    ``[request_timeout, TIMEOUT_GROWTH * request_timeout]``: a LINE that
    answers every request in 1.2 s (``request_timeout`` 1 s) is then waited
    for, instead of being sent each mark twice, and a first attempt never
    waits longer than a second one would (4 s with the defaults).  A few
    slow outliers (under 10 %) do not move it.
    """
    if not latencies:
        return request_timeout
    ordered = sorted(latencies)
    high = ordered[min(len(ordered) - 1, int(LATENCY_PERCENTILE * len(ordered)))]
    return min(max(request_timeout, high * LATENCY_HEADROOM), request_timeout * TIMEOUT_GROWTH)


class Latencies:
    """Response times of the last ``LATENCY_WINDOW`` successes, and the first timeout from them.

    One per engine (its loop only, no lock).  Only successes count: a timeout
    says nothing about how long an answer takes, and a hanging LINE must not
    stretch the first attempts (it keeps them at ``request_timeout``, as no
    success comes).
    """

    __slots__ = ("_first", "_request_timeout", "_samples")

    def __init__(self, request_timeout: float) -> None:
        self._request_timeout = request_timeout
        self._samples: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._first = request_timeout

    def observe(self, seconds: float) -> None:
        """A success that took *seconds* (from sending to LINE's answer)."""
        self._samples.append(seconds)
        self._first = first_attempt_timeout(self._samples, self._request_timeout)

    @property
    def first_timeout(self) -> float:
        """The first attempt's timeout now (``request_timeout`` before any success)."""
        return self._first
