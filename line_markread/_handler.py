"""``WebhookHandler``: the SDK's handler, with every message marked read before its handler runs.

The last step of the data flow: parse the body (``_body``), plan each event
(``_dispatch``), start all marks at once (``_marker``/``_engine``), then run
the handlers in body order, each waiting only for its own chat.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Callable, Optional, TypeVar, Union

import linebot.v3

from ._body import parse_body
from ._dispatch import MarkPolicy, Plan, Route, plan_body, route_key, validate_policy
from ._marker import Marker
from ._outcome import Outcome
from ._settings import Settings
from ._stats import Stats

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class WebhookHandler(linebot.v3.WebhookHandler):  # type: ignore[misc]  # the SDK is untyped
    """A drop-in ``linebot.v3.WebhookHandler`` that marks each message read before its handler.

    ``access_token=`` (or ``configuration=``, a ``linebot.v3.messaging.Configuration``)
    is the channel access token the mark-as-read API needs; any ``Settings``
    option may follow as a keyword.  Use ``handle()`` from sync frameworks
    (Flask) and ``await handle_async()`` from async ones (aiohttp, FastAPI),
    where handlers may be ``async def``.
    """

    def __init__(
        self,
        channel_secret: str,
        skip_signature_verification: Callable[[], bool] = lambda: False,
        *,
        access_token: Optional[str] = None,
        configuration: Any = None,
        **options: Any,
    ) -> None:
        super().__init__(channel_secret, skip_signature_verification)
        self._install_markread(
            Marker(access_token=access_token, configuration=configuration, **options)
        )

    def _install_markread(self, marker: Marker) -> None:
        # Attribute names are prefixed so they cannot clash with the SDK's own.
        self._markread_marker = marker
        self._markread_routes: dict[str, Route] = {}
        self._markread_default: Optional[Route] = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._markread_marker!r}>"

    # -- registration -----------------------------------------------------

    def add(
        self,
        event: type,
        message: Union[type, list[type], tuple[type, ...], None] = None,
        *,
        mark_as_read: MarkPolicy = True,
    ) -> Callable[[F], F]:
        """Register a handler, as in the SDK, with what to do before it runs.

        ``mark_as_read``: ``True`` (mark, and wait for it), ``False`` (never
        mark: e.g. chats handed to a human agent), ``"nowait"`` (mark, but do
        not hold the handler), or a function ``(event) -> True | False | "nowait"``
        called per event before any handler of the body runs.
        """
        policy = validate_policy(mark_as_read)
        messages = message if isinstance(message, (list, tuple)) else [message]

        def decorator(func: F) -> F:
            for item in messages:
                self._markread_routes[route_key(event, item)] = Route.of(func, policy)
            return func

        return decorator

    def default(self, *, mark_as_read: MarkPolicy = True) -> Callable[[F], F]:
        """Register the handler for events no other handler takes, as in the SDK."""
        policy = validate_policy(mark_as_read)

        def decorator(func: F) -> F:
            self._markread_default = Route.of(func, policy)
            return func

        return decorator

    # -- handling ---------------------------------------------------------

    def _plan(self, body: Union[str, bytes], signature: str) -> Plan:
        return plan_body(
            parse_body(self.parser, body, signature),
            self._markread_routes,
            self._markread_default,
            self._markread_marker.settings,
        )

    def handle(self, body: Union[str, bytes], signature: str) -> None:
        """Verify, mark every message read, and run the handlers: for sync frameworks.

        Raises ``InvalidSignatureError`` (bad signature) and ``WebhookBodyError``
        (not a webhook body) before any request; a handler's exception
        propagates unchanged; a failed mark never raises.
        """
        self._markread_marker._check_open()  # the only RuntimeError for a closed handler
        plan = self._plan(body, signature)
        for step in plan.steps:
            if step.route is not None and step.route.is_async:
                raise TypeError(
                    f"handler {step.route.func!r} is a coroutine function: "
                    "call 'await handler.handle_async(body, signature)' from async code"
                )
        marker = self._markread_marker
        ticket = marker._submit(plan.targets, skipped=plan.skipped, opted_out=plan.opted_out)
        for index, step in enumerate(plan.steps):
            if step.route is None:
                log.info("No handler for %s and no default handler", type(step.event).__name__)
                continue
            if step.decision is True:
                marker._wait_event(ticket, index)
            result = step.route.call(step.event, plan.destination)
            if inspect.isawaitable(result):  # e.g. a functools.partial of an async function
                if inspect.iscoroutine(result):
                    result.close()
                raise TypeError(
                    f"handler {step.route.func!r} returned an awaitable: "
                    "call 'await handler.handle_async(body, signature)' from async code"
                )

    async def handle_async(self, body: Union[str, bytes], signature: str) -> None:
        """``handle()`` for async frameworks: marks on the running loop; handlers may be async."""
        self._markread_marker._check_open()  # the only RuntimeError for a closed handler
        plan = self._plan(body, signature)
        marker = self._markread_marker
        ticket = await marker._asubmit(plan.targets, skipped=plan.skipped, opted_out=plan.opted_out)
        for index, step in enumerate(plan.steps):
            if step.route is None:
                log.info("No handler for %s and no default handler", type(step.event).__name__)
                continue
            if step.decision is True:
                await marker._await_event(ticket, index)
            result = step.route.call(step.event, plan.destination)
            if inspect.isawaitable(result):
                await result

    # -- manual marking, counters, closing --------------------------------

    def mark_read(self, event: Any) -> Outcome:
        """Mark the chat of *event* read up to it, now (for handlers that opted out).  Blocking."""
        return self._markread_marker.mark([event])[0]

    async def amark_read(self, event: Any) -> Outcome:
        """Async twin of ``mark_read``."""
        return (await self._markread_marker.amark([event]))[0]

    @property
    def marker(self) -> Marker:
        """The ``Marker`` doing the work (settings, stats, manual marking of many events)."""
        return self._markread_marker

    @property
    def settings(self) -> Settings:
        return self._markread_marker.settings

    def stats(self) -> Stats:
        """An immutable ``Stats`` snapshot of the counters."""
        return self._markread_marker.stats()

    def close(self, grace: Optional[float] = None) -> None:
        """Drain pending marks (up to ``close_grace`` s) and release the HTTP session."""
        self._markread_marker.close(grace)

    async def aclose(self, grace: Optional[float] = None) -> None:
        """Async twin of ``close()``."""
        await self._markread_marker.aclose(grace)

    def __enter__(self) -> WebhookHandler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> WebhookHandler:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


_marking_classes: dict[type, type] = {}


def _marking_class(base: type) -> type:
    if base is linebot.v3.WebhookHandler:
        return WebhookHandler
    if base not in _marking_classes:
        # A bot's own subclass keeps its overrides, below ours in the MRO.
        _marking_classes[base] = type(f"MarkRead{base.__name__}", (WebhookHandler, base), {})
    return _marking_classes[base]


def install(
    handler: linebot.v3.WebhookHandler,
    *,
    access_token: Optional[str] = None,
    configuration: Any = None,
    **options: Any,
) -> WebhookHandler:
    """Install the plugin onto an existing ``linebot.v3.WebhookHandler`` and return it.

    The same object is upgraded in place (it stays an instance of its class,
    and of ``line_markread.WebhookHandler``), so every module holding a
    reference to it gets the marking, and the handlers registered before the
    call keep working and are marked by default.
    """
    if isinstance(handler, WebhookHandler):
        raise ValueError("line_markread is already installed on this handler")
    if not isinstance(handler, linebot.v3.WebhookHandler):
        raise TypeError(
            f"install() takes a linebot.v3.WebhookHandler, got {type(handler).__name__}"
        )
    marker = Marker(access_token=access_token, configuration=configuration, **options)
    # The SDK keeps its registrations in `_handlers` (keyed like route_key) and
    # `_default`: read once here, the only place we look at SDK internals.
    existing = dict(getattr(handler, "_handlers", {}))
    default = getattr(handler, "_default", None)
    handler.__class__ = _marking_class(type(handler))
    upgraded: WebhookHandler = handler
    upgraded._install_markread(marker)
    for key, func in existing.items():
        upgraded._markread_routes[key] = Route.of(func, True)
    if default is not None:
        upgraded._markread_default = Route.of(default, True)
    return upgraded
