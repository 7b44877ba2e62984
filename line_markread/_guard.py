"""Channel-wide protections: the retry budget, the auth latch and the rate-limit pauses.

A channel access token is one identity at LINE, whatever event loop or
thread sends with it, so these live in one ``ChannelGuard`` per ``Marker``,
shared by its engines (hence the lock).  They exist so that the plugin never
amplifies a LINE outage and never hammers LINE with requests it knows are
going to be refused.

LINE rate-limits each endpoint of a channel separately (``loading/start``
at 100 requests/s, mark-as-read at 2,000/s), so a ``429`` pauses the
endpoint that answered it, keyed by its path: a burst of loading animations
never stops marking.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ._targets import Endpoint

log = logging.getLogger(__name__)

RETRY_COST = 5
"""Budget tokens a retry after a 5xx, 429 or connection error costs (AWS SDKs' standard mode)."""
TIMEOUT_RETRY_COST = 10
"""Budget tokens a retry after a timeout costs: a timeout hints at overload, so retry it less."""
SUCCESS_REFILL = 1
"""Budget tokens a first-try success gives back; a success after retries returns their cost."""


class ChannelGuard:
    """Decides, before each attempt, whether sending is allowed now."""

    def __init__(
        self,
        *,
        retry_budget: int,
        auth_cooldown: float,
        rate_limit_cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._capacity = retry_budget
        self._tokens = retry_budget
        self._auth_cooldown = auth_cooldown
        self._rate_limit_cooldown = rate_limit_cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._paused_until: dict[str, float] = {}
        self._latched_until: dict[Endpoint | None, float] = {}

    # -- the retry budget -------------------------------------------------

    def spend_retry(self, after_timeout: bool) -> int:
        """Take the cost of one retry from the budget and return it; 0 (nothing taken) if short.

        First attempts never ask: a new message is always tried once.
        """
        cost = TIMEOUT_RETRY_COST if after_timeout else RETRY_COST
        with self._lock:
            if self._tokens < cost:
                return 0
            self._tokens -= cost
            return cost

    def record_success(self, refund: int) -> None:
        """A 200: return *refund* (the last retry's cost), or ``SUCCESS_REFILL`` on a first try."""
        with self._lock:
            self._tokens = min(self._capacity, self._tokens + (refund or SUCCESS_REFILL))

    # -- 401 / 403 latch --------------------------------------------------

    def latch(self, endpoint: Endpoint, status: int) -> None:
        """Stop sending after a 401 (anywhere: the token is wrong) or a 403 (to that endpoint)."""
        key = None if status == 401 else endpoint
        now = self._clock()
        with self._lock:
            already = self._latched_until.get(key, 0.0) > now
            self._latched_until[key] = now + self._auth_cooldown
        if already:
            return
        if status == 401:
            log.error(
                "line_markread: LINE rejected the channel access token (401); check "
                "LINE_CHANNEL_ACCESS_TOKEN (expired or revoked?). Mark-as-read paused for %.0fs.",
                self._auth_cooldown,
            )
        else:
            log.error(
                "line_markread: LINE refused %s (403)%s. Requests to it paused for %.0fs.",
                endpoint.value,
                "; the user-ID API needs LINE's corporate application: use mode='token'"
                if endpoint is Endpoint.USER
                else "",
                self._auth_cooldown,
            )

    def latched(self, endpoint: Endpoint) -> bool:
        now = self._clock()
        latched = self._latched_until
        return latched.get(None, 0.0) > now or latched.get(endpoint, 0.0) > now

    # -- 429 pause, per endpoint -------------------------------------------

    def rate_limited(self, path: str, retry_after: float | None) -> None:
        """A 429 from *path*: pause that endpoint for ``Retry-After`` (or ``rate_limit_cooldown``).

        Every engine and thread of the channel pauses it; other endpoints go on.
        """
        pause = self._rate_limit_cooldown if retry_after is None else retry_after
        until = self._clock() + pause
        with self._lock:
            self._paused_until[path] = max(self._paused_until.get(path, 0.0), until)

    def pause_left(self, path: str) -> float:
        """Seconds until *path* may be sent to again after a 429 (0 when it may)."""
        return max(0.0, self._paused_until.get(path, 0.0) - self._clock())
