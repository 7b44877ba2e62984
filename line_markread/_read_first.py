"""``@read_first``: the one-decorator form, for bots that keep the SDK's own ``WebhookHandler``.

Two ways it runs:

* Under the SDK's unmodified ``linebot.v3.WebhookHandler`` the decorated
  function is a wrapper that marks its event read (through a ``Marker``:
  retries, bounds and coalescing across calls included), then calls the
  function.  The SDK calls handlers one at a time, so the events of one body
  are marked one after another here; the installed forms mark a whole body
  at once.
* Under a handler where the plugin is installed (``line_markread.WebhookHandler``
  or ``install()``), ``add()`` finds the options on the wrapper and registers
  the original function with them, exactly as if they had been given to
  ``handler.add(...)``: one engine, body-level coalescing, never a second mark.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast, overload

import attrs

from ._dispatch import MarkPolicy, Route, decide, validate_policy
from ._http import HOST_VARIABLE, Credentials
from ._loading import validate_loading
from ._marker import Marker

F = TypeVar("F", bound=Callable[..., Any])

ATTRIBUTE = "__line_markread_read_first__"
"""Where the wrapper keeps its ``ReadFirst`` options, for ``add()`` to find."""

TOKEN_VARIABLE = "LINE_CHANNEL_ACCESS_TOKEN"


@attrs.frozen
class ReadFirst:
    """What ``@read_first(...)`` asked for, kept on the wrapper."""

    func: Callable[..., Any]
    mark_as_read: MarkPolicy
    marker: Marker | None = attrs.field(default=None, repr=False)
    configuration: Any = attrs.field(default=None, repr=False)
    loading: int = 0
    """Seconds of loading animation after the mark (0: none), as ``handler.add(loading=)``."""


def options_of(func: Callable[..., Any]) -> ReadFirst | None:
    """The ``read_first`` options of *func*, if it is a ``read_first`` wrapper."""
    options = getattr(func, ATTRIBUTE, None)
    return options if isinstance(options, ReadFirst) else None


_shared_lock = threading.Lock()
_shared: dict[Credentials, Marker] = {}


def _shared_marker(configuration: Any) -> Marker:
    """One ``Marker`` per host and token, for every ``read_first`` without ``marker=``.

    Shared so that the handlers of one bot mark through one engine (one
    keep-alive session, one watermark per chat, supersession across handlers).
    """
    if configuration is None:
        token = os.environ.get(TOKEN_VARIABLE, "")
        if not token.strip():
            raise RuntimeError(
                f"line_markread.read_first: no channel access token; set {TOKEN_VARIABLE} "
                f"(and optionally {HOST_VARIABLE}), or pass read_first(marker=...) or "
                "read_first(configuration=...)"
            )
        # LINE_API_HOST applies as for every other entry point (Credentials).
        credentials = Credentials.from_arguments(token, None)
    else:
        credentials = Credentials.from_arguments(None, configuration)
    with _shared_lock:
        marker = _shared.get(credentials)
        if marker is None or marker.closed:
            marker = _shared[credentials] = Marker(
                access_token=credentials.access_token, host=credentials.host
            )
        return marker


def _marker_for(options: ReadFirst) -> Marker:
    return options.marker if options.marker is not None else _shared_marker(options.configuration)


def _wrap(options: ReadFirst) -> Callable[..., Any]:
    func = options.func
    # The SDK passes (event, destination) to a function taking *args; the
    # original function is then called by the SDK's own arity rule.
    route = Route.of(func, options.mark_as_read)

    if route.is_async:

        @functools.wraps(func)
        async def async_wrapper(*args: Any) -> Any:
            event, destination = _event_and_destination(args)
            if event is not None:
                marker = _marker_for(options)
                decision = decide(route, event, marker.settings)
                if decision is not False:
                    await marker.amark([event], wait=decision is True)
                if options.loading:
                    showing = await marker._loader.abegin(marker._engine(), event, options.loading)
                    try:
                        return await cast(Awaitable[Any], route.call(event, destination))
                    finally:
                        if showing is not None:
                            showing.stop()
            result = route.call(event, destination)
            return await cast(Awaitable[Any], result)

        wrapper: Callable[..., Any] = async_wrapper
    else:

        @functools.wraps(func)
        def sync_wrapper(*args: Any) -> Any:
            event, destination = _event_and_destination(args)
            if event is not None:
                marker = _marker_for(options)
                decision = decide(route, event, marker.settings)
                if decision is not False:
                    marker.mark([event], wait=decision is True)
                if options.loading:
                    engine = marker._background_engine()
                    showing = marker._loader.begin(engine, event, options.loading)
                    try:
                        return route.call(event, destination)
                    finally:
                        if showing is not None:
                            showing.stop()
            return route.call(event, destination)

        wrapper = sync_wrapper
    setattr(wrapper, ATTRIBUTE, options)
    return wrapper


def _event_and_destination(args: tuple[Any, ...]) -> tuple[Any, str | None]:
    event = args[0] if args else None
    destination = args[1] if len(args) > 1 else None
    return event, destination


@overload
def read_first(func: F, /) -> F: ...


@overload
def read_first(
    *,
    mark_as_read: MarkPolicy = True,
    marker: Marker | None = None,
    configuration: Any = None,
    loading: bool | int = False,
) -> Callable[[F], F]: ...


def read_first(
    func: F | None = None,
    /,
    *,
    mark_as_read: MarkPolicy = True,
    marker: Marker | None = None,
    configuration: Any = None,
    loading: bool | int = False,
) -> F | Callable[[F], F]:
    """Mark the decorated handler's message read, awaited, before it runs.

    Put it directly under ``@handler.add(...)``.  On the SDK's own
    ``WebhookHandler`` it marks through a shared ``Marker`` built from
    ``LINE_CHANNEL_ACCESS_TOKEN`` (and ``LINE_API_HOST``), or the given
    ``marker=`` or ``configuration=``; a missing token is a ``RuntimeError``
    at the first event.  On a handler with the plugin installed, its options
    act exactly as ``handler.add(..., mark_as_read=...)`` would.
    ``mark_as_read`` and ``loading`` take the values ``handler.add`` takes
    (``background=`` is an option of ``handler.add`` only: the SDK's own handler
    calls the function while LINE waits for the webhook's answer).
    """
    policy = validate_policy(mark_as_read)
    seconds = validate_loading(loading)
    if marker is not None and configuration is not None:
        raise TypeError("read_first takes marker= or configuration=, not both")
    if marker is not None and not isinstance(marker, Marker):
        raise TypeError(f"marker must be a line_markread.Marker, got {type(marker).__name__}")

    def decorate(function: F) -> F:
        if not callable(function):
            raise TypeError(f"read_first decorates a handler function, got {function!r}")
        if options_of(function) is not None:
            raise ValueError(f"{function!r} is already decorated with read_first")
        options = ReadFirst(function, policy, marker, configuration, seconds)
        return cast(F, _wrap(options))

    if func is not None:
        return decorate(func)
    return decorate
