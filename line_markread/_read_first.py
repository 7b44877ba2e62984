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
import inspect
import itertools
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar, cast, overload

import attrs
from linebot.v3.webhooks import Event

from ._dispatch import MarkPolicy, Route, decide, validate_policy
from ._http import HOST_VARIABLE, Credentials
from ._loading import validate_loading
from ._marker import Marker
from ._threads import start_daemon

log = logging.getLogger(__name__)

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
    """The ``read_first`` options of *func*, if it is a ``read_first`` wrapper.

    For a wrapper bound to an instance (``handler.add(...)(bot.on_text)``), the
    original function comes back with that instance as its first argument, so
    an installed handler calls the method with its ``self``.
    """
    options = getattr(func, ATTRIBUTE, None)
    if not isinstance(options, ReadFirst):
        return None
    if inspect.ismethod(func) and not inspect.ismethod(options.func):
        # A partial, not a bound method: the SDK's arity rule counts a bound
        # method's self, a partial's signature leaves it out.
        return attrs.evolve(options, func=functools.partial(options.func, func.__self__))
    return options


# -- the shared markers ---------------------------------------------------------
#
# One Marker per host and token, for every read_first without marker=, so that
# the handlers of one bot mark through one engine (one keep-alive session, one
# watermark per chat, supersession across handlers).  Each costs a thread and a
# few fds, so a token rotated in the environment must not keep the old one: the
# marker of the previous LINE_CHANNEL_ACCESS_TOKEN is retired (no new call gets
# it) and closed, its pending marks drained, once the calls using it are over.

_shared_lock = threading.Lock()
_shared: dict[Credentials, Marker] = {}
_in_use: dict[Marker, int] = {}
"""Calls under way per shared marker: a retired marker is closed when its count ends."""
_retired: set[Marker] = set()
_from_environment: Credentials | None = None
"""The credentials ``LINE_CHANNEL_ACCESS_TOKEN``/``LINE_API_HOST`` named last."""
_closers: list[threading.Thread] = []


def _credentials_of(configuration: Any) -> Credentials:
    """The shared marker's key; with no configuration, from the environment (retiring the last)."""
    global _from_environment  # noqa: PLW0603  # the process's one environment
    if configuration is not None:
        return Credentials.from_arguments(None, configuration)
    token = os.environ.get(TOKEN_VARIABLE, "")
    if not token.strip():
        raise RuntimeError(
            f"line_markread.read_first: no channel access token; set {TOKEN_VARIABLE} "
            f"(and optionally {HOST_VARIABLE}), or pass read_first(marker=...) or "
            "read_first(configuration=...)"
        )
    # LINE_API_HOST applies as for every other entry point (Credentials).
    credentials = Credentials.from_arguments(token, None)
    if _from_environment is not None and _from_environment != credentials:
        _retire(_from_environment)  # the token (or host) was rotated
    _from_environment = credentials
    return credentials


def _retire(credentials: Credentials) -> None:
    """No new call gets this marker; it is closed once no call uses it (lock held)."""
    marker = _shared.pop(credentials, None)
    if marker is None:
        return
    if _in_use.get(marker, 0) == 0:
        _close_later(marker)
    else:
        _retired.add(marker)


def _close_later(marker: Marker) -> None:
    """Close *marker* on a thread of its own: closing drains, and the caller may be a loop."""
    _closers[:] = [t for t in _closers if t.is_alive()]
    _closers.append(start_daemon(_close_quietly, marker, name="line_markread-retire"))


def _close_quietly(marker: Marker) -> None:
    try:
        marker.close()
    except Exception:  # best effort: nothing waits for this thread
        log.exception("line_markread: closing the marker of a rotated access token failed")


def _acquire(options: ReadFirst) -> Marker:
    """The marker for one call: the given one, or a shared one held until ``_release``."""
    if options.marker is not None:
        return options.marker
    with _shared_lock:
        credentials = _credentials_of(options.configuration)
        marker = _shared.get(credentials)
        if marker is None or marker.closed:
            marker = _shared[credentials] = Marker(
                access_token=credentials.access_token, host=credentials.host
            )
        _in_use[marker] = _in_use.get(marker, 0) + 1
        return marker


def _release(options: ReadFirst, marker: Marker) -> None:
    if options.marker is not None:
        return
    with _shared_lock:
        left = _in_use.pop(marker, 1) - 1
        if left > 0:
            _in_use[marker] = left
        elif marker in _retired:
            _retired.discard(marker)
            _close_later(marker)


def _join_closers(timeout: float) -> bool:
    """For tests: wait until every retired marker is closed; whether they all are."""
    with _shared_lock:
        closers = list(_closers)
    for closer in closers:
        closer.join(timeout)
    return not any(closer.is_alive() for closer in closers)


# -- the wrapper ----------------------------------------------------------------


def _looks_like_event(value: object) -> bool:
    """A webhook event: a ``linebot.v3`` model or its JSON (or a legacy model, refused later)."""
    if isinstance(value, Event):
        return True
    if isinstance(value, Mapping):
        return isinstance(value.get("type"), str) and (
            "webhookEventId" in value or "timestamp" in value
        )
    return type(value).__module__.startswith("linebot.models")


def _find_event(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    for value in itertools.chain(args, kwargs.values()):
        if _looks_like_event(value):
            return value
    return None


@attrs.frozen
class _Calling:
    """How the decorated function is called: everything passed through, as given.

    One exception, the SDK's own handler: it calls a function taking ``*args``
    (the wrapper) with ``(event, destination)``, and would have called the
    function itself with as many of them as it takes.  So a call shaped so
    (the event, then a destination string or ``None``, last) to a function
    taking fewer positional arguments gets the first ones only: ``(event)``,
    ``()``, or ``(self, event)`` for a method.
    """

    name: str
    capacity: int | None
    """Positional parameters of the function (``None``: it takes ``*args``)."""
    signature: inspect.Signature | None

    @classmethod
    def of(cls, func: Callable[..., Any]) -> _Calling:
        spec = inspect.getfullargspec(func)
        capacity = None if spec.varargs is not None else len(spec.args)
        if capacity is not None and inspect.ismethod(func):
            capacity -= 1  # a bound method's spec names self
        try:
            signature: inspect.Signature | None = inspect.signature(func)
        except (TypeError, ValueError):  # pragma: no cover - a callable without a signature
            signature = None
        name = getattr(func, "__qualname__", None) or repr(func)
        return cls(name, capacity, signature)

    def arguments(
        self, event: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, ...]:
        """The positional arguments to call with; ``TypeError`` (before any mark) if none fit."""
        if (
            self.capacity is not None
            and len(args) > self.capacity
            and not kwargs
            and len(args) >= 2  # the event and the destination
            and args[-2] is event
            and (args[-1] is None or isinstance(args[-1], str))
        ):
            args = args[: self.capacity]
        if self.signature is not None:
            try:
                self.signature.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(
                    f"@read_first: {self.name}() cannot be called with these arguments "
                    f"({e}); nothing was marked"
                ) from None
        return args


def _no_event(name: str) -> TypeError:
    return TypeError(
        f"@read_first: no argument of {name}() is a webhook event (a linebot.v3 event model, "
        "or its JSON with 'type' and 'timestamp'); nothing to mark"
    )


def _wrap(options: ReadFirst) -> Callable[..., Any]:
    route = Route.of(options.func, options.mark_as_read)
    calling = _Calling.of(options.func)
    wrap = _async_wrapper if route.is_async else _sync_wrapper
    wrapper = functools.wraps(options.func)(wrap(options, route, calling))
    setattr(wrapper, ATTRIBUTE, options)
    return wrapper


def _prepare(
    calling: _Calling, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, tuple[Any, ...]]:
    """The event among the arguments, and the positional arguments to call with."""
    event = _find_event(args, kwargs)
    if event is None:
        raise _no_event(calling.name)
    return event, calling.arguments(event, args, kwargs)


def _sync_wrapper(options: ReadFirst, route: Route, calling: _Calling) -> Callable[..., Any]:
    func = options.func

    def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
        event, args = _prepare(calling, args, kwargs)
        marker = _acquire(options)
        try:
            decision = decide(route, event, marker.settings)
            if decision is not False:
                marker.mark([event], wait=decision is True)
            showing = None
            if options.loading:
                engine = marker._background_engine()
                showing = marker._loader.begin(engine, event, options.loading)
            try:
                return func(*args, **kwargs)
            finally:
                if showing is not None:
                    showing.stop()
        finally:
            _release(options, marker)

    return sync_wrapper


def _async_wrapper(options: ReadFirst, route: Route, calling: _Calling) -> Callable[..., Any]:
    func = options.func

    async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
        event, args = _prepare(calling, args, kwargs)
        marker = _acquire(options)
        try:
            decision = decide(route, event, marker.settings)
            if decision is not False:
                await marker.amark([event], wait=decision is True)
            showing = None
            if options.loading:
                showing = await marker._loader.abegin(marker._engine(), event, options.loading)
            try:
                return await func(*args, **kwargs)
            finally:
                if showing is not None:
                    showing.stop()
        finally:
            _release(options, marker)

    return async_wrapper


# -- misuse: @read_first above @handler.add -------------------------------------


def _caller_scope() -> Iterator[object]:
    """The values the code applying the decorator sees: its locals, then its globals."""
    try:
        frame = sys._getframe(1)
    except (AttributeError, ValueError):  # pragma: no cover - not CPython
        return
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back  # type: ignore[assignment]  # None ends the loop
    if frame is None:  # pragma: no cover - decorated from this module itself
        return
    yield from list(frame.f_locals.values())
    if frame.f_globals is not frame.f_locals:
        yield from list(frame.f_globals.values())


def _registered_in(handler: object, function: object) -> bool:
    """Whether *handler* (a ``linebot.v3.WebhookHandler``) already runs *function* itself."""
    routes = getattr(handler, "_markread_routes", None)
    if isinstance(routes, dict):  # the plugin's handler: its own routes
        default = getattr(handler, "_markread_default", None)
        return any(getattr(r, "func", None) is function for r in [*routes.values(), default])
    handlers = getattr(handler, "_handlers", None)  # the SDK's own: read, never changed
    registered = list(handlers.values()) if isinstance(handlers, dict) else []
    return any(f is function for f in [*registered, getattr(handler, "_default", None)])


def _check_not_above_add(function: Callable[..., Any]) -> None:
    """Refuse ``@read_first`` above ``@handler.add(...)``: the handler kept the bare function.

    Decorators apply bottom-up, so there ``handler.add`` registered the
    undecorated function and the wrapper would never be called: nothing would
    ever be marked, silently.  Found through the handlers the decorating code
    can name (its locals and module globals: where bots keep theirs).
    """
    import linebot.v3  # noqa: PLC0415  # loaded already by the plugin's other modules

    for value in _caller_scope():
        if isinstance(value, linebot.v3.WebhookHandler) and _registered_in(value, function):
            name = getattr(function, "__qualname__", None) or repr(function)
            raise TypeError(
                f"@read_first is above @handler.add(...) on {name}: the handler registered "
                "the undecorated function, so its messages would never be marked by "
                "read_first; put @read_first directly under @handler.add(...)"
            )


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
        _check_not_above_add(function)
        options = ReadFirst(function, policy, marker, configuration, seconds)
        return cast(F, _wrap(options))

    if func is not None:
        return decorate(func)
    return decorate
