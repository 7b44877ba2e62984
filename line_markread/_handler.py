"""``WebhookHandler``: the SDK's handler, with every message marked read before its handler runs.

The last step of the data flow: parse the body (``_body``), plan each event
(``_dispatch``), start all marks at once (``_marker``/``_engine``), then run
the handlers in body order, each waiting only for its own chat.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import time
from typing import Any, Callable, Optional, TypeVar, Union

import linebot.v3

from ._body import parse_body
from ._dispatch import MarkPolicy, Plan, Route, plan_body, route_key, validate_policy
from ._marker import Marker
from ._outcome import Outcome
from ._read_first import options_of
from ._settings import Settings
from ._stats import Stats

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class Unset(enum.Enum):
    """The default of ``add()``'s options: "not given", which ``None`` cannot say.

    ``None`` is a mistake to refuse (``mark_as_read=None`` raises), so it
    cannot double as the marker for "not given here, maybe by ``@read_first``".
    """

    UNSET = "unset"


UNSET = Unset.UNSET


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
        mark_as_read: Union[MarkPolicy, Unset] = UNSET,
    ) -> Callable[[F], F]:
        """Register a handler, as in the SDK, with what to do before it runs.

        ``mark_as_read``: ``True`` (the default: mark, and wait for it),
        ``False`` (never mark: e.g. chats handed to a human agent), ``"nowait"``
        (mark, but do not hold the handler), or a function
        ``(event) -> True | False | "nowait"`` called per event before any
        handler of the body runs.  A function decorated with ``@read_first(...)``
        brings its own options; giving them here as well is an error.
        """
        policy = None if mark_as_read is UNSET else validate_policy(mark_as_read)
        messages = message if isinstance(message, (list, tuple)) else [message]

        def decorator(func: F) -> F:
            route = self._markread_route(func, policy)
            for item in messages:
                self._markread_routes[route_key(event, item)] = route
            return func

        return decorator

    def default(self, *, mark_as_read: Union[MarkPolicy, Unset] = UNSET) -> Callable[[F], F]:
        """Register the handler for events no other handler takes, as in the SDK."""
        policy = None if mark_as_read is UNSET else validate_policy(mark_as_read)

        def decorator(func: F) -> F:
            self._markread_default = self._markread_route(func, policy)
            return func

        return decorator

    def _markread_route(self, func: Callable[..., Any], policy: Optional[MarkPolicy]) -> Route:
        """The route for *func*: ``add()``'s options, or those of its ``@read_first`` wrapper."""
        options = options_of(func)
        if options is None:
            return Route.of(func, True if policy is None else policy)
        if policy is not None:
            raise TypeError(
                f"{options.func!r}: mark_as_read= given both to handler.add() and to "
                "@read_first(); give it in one place"
            )
        marker = self._markread_marker
        if options.marker is not None and options.marker is not marker:
            raise ValueError(
                f"{options.func!r}: @read_first(marker=...) names another Marker than this "
                "handler's; on an installed handler, drop marker= (the handler's marker marks)"
            )
        if options.configuration is not None and not marker.uses(options.configuration):
            raise ValueError(
                f"{options.func!r}: @read_first(configuration=...) names another channel or "
                "host than this handler's; drop configuration= on an installed handler"
            )
        return Route.of(options.func, options.mark_as_read)

    # -- handling ---------------------------------------------------------

    def _plan(self, body: Union[str, bytes], signature: str) -> Plan:
        plan = plan_body(
            parse_body(self.parser, body, signature),
            self._markread_routes,
            self._markread_default,
            self._markread_marker.settings,
        )
        if self._markread_marker.settings.settle_before_return:
            _refuse_background(plan)
        return plan

    def handle(self, body: Union[str, bytes], signature: str) -> None:
        """Verify, mark every message read, and run the handlers: for sync frameworks.

        Raises ``InvalidSignatureError`` (bad signature) and ``WebhookBodyError``
        (not a webhook body) before any request; a handler's exception
        propagates unchanged; a failed mark never raises.  With
        ``settle_before_return=True`` it returns only once the body's marks have
        settled (or ``settle_timeout`` has passed).
        """
        self._markread_marker._check_open()  # the only RuntimeError for a closed handler
        started = time.monotonic()  # the background loop's clock
        plan = self._plan(body, signature)
        for step in plan.steps:
            if step.route is not None and step.route.is_async:
                raise TypeError(
                    f"handler {step.route.func!r} is a coroutine function: "
                    "call 'await handler.handle_async(body, signature)' from async code"
                )
        marker = self._markread_marker
        ticket = marker._submit(plan.targets, skipped=plan.skipped, opted_out=plan.opted_out)
        # The loop thread sends the requests while this thread builds the SDK models.
        plan.build_events()
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
        if marker.settings.settle_before_return:
            marker._settle(plan.targets, started + marker.settings.settle_timeout)

    async def handle_async(self, body: Union[str, bytes], signature: str) -> None:
        """``handle()`` for async frameworks: marks on the running loop; handlers may be async."""
        self._markread_marker._check_open()  # the only RuntimeError for a closed handler
        started = asyncio.get_running_loop().time()
        plan = self._plan(body, signature)
        marker = self._markread_marker
        ticket = await marker._asubmit(plan.targets, skipped=plan.skipped, opted_out=plan.opted_out)
        if any(plan.targets):
            # Two loop iterations (aiohttp's request task, then its body writer) put the
            # requests on the wire of a pooled connection; the models are built while
            # LINE answers.  In the same iterations as the requests: no extra polls.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        plan.build_events()
        for index, step in enumerate(plan.steps):
            if step.route is None:
                log.info("No handler for %s and no default handler", type(step.event).__name__)
                continue
            if step.decision is True:
                await marker._await_event(ticket, index)
            result = step.route.call(step.event, plan.destination)
            if inspect.isawaitable(result):
                await result
        if marker.settings.settle_before_return:
            await marker._asettle(plan.targets, started + marker.settings.settle_timeout)

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


def _refuse_background(plan: Plan) -> None:
    """Serverless mode: no handler may outlive the request (the platform freezes it)."""
    for step in plan.steps:
        # ``background=`` comes with the slow-handlers option; absent, nothing runs late.
        if step.route is not None and getattr(step.route, "background", False):
            raise ValueError(
                f"handler {step.route.func!r} runs in the background, which "
                "settle_before_return=True (serverless mode) does not allow: the platform "
                "freezes the process once the response is out.  Drop background=True, "
                "or settle_before_return=True on a server that keeps running."
            )


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
        upgraded._markread_routes[key] = upgraded._markread_route(func, None)
    if default is not None:
        upgraded._markread_default = upgraded._markread_route(default, None)
    return upgraded
