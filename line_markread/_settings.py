"""Validated, immutable options shared by the marker and the webhook handler.

Every default is chosen against LINE's 2-second webhook deadline: a webhook
that is not answered within 2 s counts as failed (``request_timeout`` in LINE's
error statistics).  The handler therefore never waits more than
``wait_timeout`` (1 s) for its mark, leaving the other second to the bot's own
handlers and the HTTP answer; retries carry on in the background.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from ._outcome import MarkFailure
from ._targets import Mode


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{attribute.name} must be a positive number, got {value!r}")


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{attribute.name} must be a number >= 0, got {value!r}")


def _positive_int(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be an integer >= 1, got {value!r}")


def _non_negative_int(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{attribute.name} must be an integer >= 0, got {value!r}")


def _bool(_: object, attribute: attrs.Attribute[Any], value: bool) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be True or False, got {value!r}")


def _margin(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 5:
        raise ValueError(f"{attribute.name} must be a number >= 0 and < 5, got {value!r}")


def _mode(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in ("auto", "token", "user"):
        raise ValueError(f"mode must be 'auto', 'token' or 'user', got {value!r}")


def _optional_callable(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{attribute.name} must be callable or None, got {value!r}")


@attrs.frozen(kw_only=True)
class Settings:
    """How the plugin marks messages read.  Pass these as keyword arguments.

    Every value is validated when the handler or marker is built, so a typo
    fails at start-up rather than on the first message.
    """

    mode: Mode = attrs.field(default="auto", validator=_mode)
    """``"token"``: the read-token API (all accounts, any chat).  ``"user"``: the
    corporate user-ID API (1:1 chats only, needs LINE's approval).  ``"auto"``: the
    token when the message carries one, else the user ID in 1:1 chats."""

    wait_timeout: float = attrs.field(default=1.0, validator=_non_negative)
    """Longest time (s) one webhook body holds its handlers back waiting for
    marks.  It bounds the whole body, not each handler: half of LINE's 2 s."""

    request_timeout: float = attrs.field(default=1.0, validator=_positive)
    """Connect timeout, and the first attempt's whole timeout (s) until LINE has
    answered; then the first attempt adapts to recent successes' response times,
    within ``request_timeout`` and 4 times it (``_retry.first_attempt_timeout``).
    Each retry may take ``TIMEOUT_GROWTH`` (4) times longer than the attempt
    before it (1, 4, 16 s), never past ``retry_deadline``: a slow but healthy LINE
    still gets a mark through in two requests (one after the first success),
    while the handler's wait stays bounded by ``wait_timeout`` alone.  The SDK's
    clients default to none (sync) or 300 s (async); 1 s still covers a cold TLS
    connection from another continent."""

    max_attempts: int = attrs.field(default=5, validator=_positive_int)
    """Attempts per mark, the first included."""

    retry_deadline: float = attrs.field(default=30.0, validator=_positive)
    """No new attempt starts later than this (s) after the first one."""

    backoff_initial: float = attrs.field(default=0.1, validator=_non_negative)
    """Upper bound (s) of the first backoff; it doubles per retry (full jitter)."""

    backoff_max: float = attrs.field(default=5.0, validator=_non_negative)
    """Cap (s) on one backoff delay."""

    coalesce: bool = attrs.field(default=True, validator=_bool)
    """One request per chat per body (the newest token marks all earlier
    messages), and a newer message supersedes an older one still retrying.
    ``False``: one request per event."""

    retry_budget: int = attrs.field(default=500, validator=_non_negative_int)
    """Retry quota per channel, in tokens: a retry costs 5 (10 after a timeout), a
    first-try success gives 1 back (the AWS SDKs' standard mode).  A sustained
    LINE outage therefore cannot multiply traffic; first attempts never wait for it."""

    auth_cooldown: float = attrs.field(default=60.0, validator=_positive)
    """After a 401 (token wrong: every endpoint) or a 403 (that endpoint), send
    nothing there for this long (s): LINE would refuse it all the same."""

    rate_limit_cooldown: float = attrs.field(default=1.0, validator=_non_negative)
    """After a 429 without ``Retry-After``, pause the channel's requests to that endpoint
    this long (s); LINE limits each endpoint separately, so the others go on."""

    max_rate_limit_pause: float = attrs.field(default=60.0, validator=_non_negative)
    """Cap (s) on one endpoint's pause after a 429: a ``Retry-After: 86400`` (or 400
    digits) pauses it this long at most, and each mark is still bounded
    by ``retry_deadline``.  A ``Retry-After`` that is not a number or a date is
    treated as absent."""

    max_concurrency: int = attrs.field(default=100, validator=_positive_int)
    """Requests in flight at once, per event loop: at ~50 ms a request, about
    LINE's limit of 2,000 requests per second per endpoint, while a burst of
    100 chats still goes out in one wave."""

    max_tracked_chats: int = attrs.field(default=10_000, validator=_positive_int)
    """Chats whose newest marked message is remembered (least recently used
    idle chats are forgotten first), so memory does not grow with every chat
    the bot has ever seen.  It also caps the chats with a mark in progress
    (at most one queued mark per chat): during an outage a new chat's mark
    beyond it fails at once, counted in ``stats().overflowed``."""

    mark_standby: bool = attrs.field(default=False, validator=_bool)
    """Mark events with ``mode == "standby"`` (another channel is active and
    this one must not act), normally left alone."""

    mark_unhandled: bool = attrs.field(default=False, validator=_bool)
    """Mark message events that no handler (not even the default) handles."""

    close_grace: float = attrs.field(default=2.0, validator=_non_negative)
    """How long ``close()``/``aclose()`` lets pending marks finish before cancelling them.
    An attempt may start during the grace only with a timeout that ends within
    it; none starts after it, so closing takes at most the grace plus a moment."""

    on_failure: Callable[[MarkFailure], None] | None = attrs.field(
        default=None, validator=_optional_callable
    )
    """Called with a ``MarkFailure`` (no secrets in it) when a mark fails for good.
    It runs on a dedicated thread, one call at a time, never on the engine's
    loop: a slow or raising callback delays no mark.  At most
    ``CALLBACK_QUEUE`` (1,000) failures wait for it; beyond, they are counted
    in ``stats().callbacks_dropped`` and logged once."""

    jitter_seed: int | None = attrs.field(default=None)
    """Seed for the backoff jitter, for reproducible runs (demo, tests)."""

    settle_before_return: bool = attrs.field(default=False, validator=_bool)
    """Serverless mode (AWS Lambda, Cloud Functions, Cloud Run): ``handle()`` and
    ``handle_async()`` return only once every mark of the body has settled (marked,
    failed for good, or cut at ``settle_timeout``), because the platform freezes
    or throttles the process as soon as the response is out and a mark still
    retrying in the background would be lost.  Handlers marked ``background=True``
    are refused in this mode: nothing may outlive the request."""

    settle_timeout: float = attrs.field(default=1.8, validator=_positive)
    """Serverless mode: the longest time (s), counted from the start of ``handle()``,
    that a body's marks may keep it from returning: under LINE's 2 s webhook
    deadline.  A mark still in progress then is left to the engine (and logged);
    on a platform that freezes the process it resumes, or gives up, on the next
    invocation."""

    # -- slow handlers: the loading animation and background handlers ------

    loading_wait: float = attrs.field(default=0.5, validator=_non_negative)
    """How long (s) a ``loading=`` handler waits for LINE to accept its loading
    animation (``202``) before it starts anyway.  Waiting puts the animation
    before the reply at LINE, so the reply hides it; a slow or failing loading
    request delays the handler by this much at most, and in ``handle()`` itself
    (no ``background=``) never past the body's ``wait_timeout``.  ``0``: only
    requested first."""

    loading_limit: float = attrs.field(default=120.0, validator=_non_negative)
    """No loading animation is started again later than this (s) after the first,
    however long the handler runs: a handler stuck for minutes should not
    look busy forever."""

    loading_margin: float = attrs.field(default=1.0, validator=_margin)
    """The animation is started again this long (s) before it would expire while
    the handler still runs, so it does not flicker off (a request takes time)."""

    background_workers: int = attrs.field(default=32, validator=_positive_int)
    """``background=True`` handlers running at once, per pool (threads for
    ``handle()``, tasks per event loop for ``handle_async()``).  Slow handlers
    mostly wait on I/O (a model, a back office), so more than the CPUs; 32 is
    ``ThreadPoolExecutor``'s own ceiling and keeps a burst from opening
    hundreds of connections to the service the handlers call."""

    background_backlog: int = attrs.field(default=1000, validator=_non_negative_int)
    """``background=True`` handlers accepted but not started yet, per pool.  A
    body that would overflow it is refused whole with ``BackgroundFull`` before
    anything is marked (the messages stay unread; LINE may redeliver)."""

    background_grace: float = attrs.field(default=25.0, validator=_non_negative)
    """How long ``close()``/``aclose()`` lets background handlers finish (under
    the 30 s most process managers give before they kill)."""

    on_error: Callable[[BaseException, Any], None] | None = attrs.field(
        default=None, validator=_optional_callable
    )
    """Called with ``(exception, event)`` when a ``background=True`` handler raises
    (it is logged either way; nobody else is there to see it)."""
