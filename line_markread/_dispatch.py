"""Handler dispatch: which function runs for an event, and what it wants marked.

Pure helpers shared by ``handle()`` and ``handle_async()``: the lookup order
and the calling convention are the SDK's own (message-specific handler, then
event-level, then the default; called with ``(event, destination)``,
``(event)`` or ``()`` by the number of parameters), so a bot behaves exactly as
it did before the plugin, only with its messages read first.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal, cast

import attrs
from linebot.v3.webhooks import MessageEvent

from ._body import ParsedBody, build_event
from ._settings import Settings
from ._shapes import Prediction, predict
from ._targets import ReadTarget, Skip, read_target

log = logging.getLogger(__name__)

Decision = bool | Literal["nowait"]
"""What one handler wants for one event: ``True``, ``False`` or ``"nowait"``."""

MarkPolicy = bool | Literal["nowait"] | Callable[[Any], Decision]
"""The ``mark_as_read=`` value of ``handler.add(...)``: a decision, or a function of the event."""


def is_decision(value: object) -> bool:
    """``True``, ``False`` or ``"nowait"``, compared by identity: ``1`` or ``None`` are not."""
    return value is True or value is False or (isinstance(value, str) and value == "nowait")


def validate_policy(policy: object) -> MarkPolicy:
    """Check a ``mark_as_read=`` value where it is given, not when the first message comes.

    Compared with ``is``: ``1``, ``0``, ``""`` or ``None`` are mistakes, not
    shorthands, and must not silently turn into "mark" or "don't mark".
    """
    if is_decision(policy) or callable(policy):
        return cast(MarkPolicy, policy)  # checked just above (TypeGuard needs Python 3.10)
    raise TypeError(
        f"mark_as_read must be True, False, 'nowait' or a callable(event), got {policy!r}"
    )


def validate_background(value: object) -> bool:
    """Check a ``background=`` value at registration: exactly ``True`` or ``False``."""
    if value is True or value is False:
        return value
    raise TypeError(f"background must be True or False, got {value!r}")


def route_key(event: type, message: type | None = None) -> str:
    """The SDK's handler key for an event class (and message content class)."""
    return event.__name__ if message is None else f"{event.__name__}_{message.__name__}"


@attrs.frozen
class Route:
    """A registered handler function, its ``mark_as_read`` policy and how it runs.

    ``loading``: seconds of loading animation to show after the mark and
    before the handler (``0``: none; see ``_loading``).  ``background``: run
    after the webhook was answered, in the handler's pool (see ``_background``).
    Both are validated where they are given, like the policy.
    """

    func: Callable[..., Any]
    policy: MarkPolicy
    arity: int
    is_async: bool
    loading: int = 0
    background: bool = False
    once: bool = True
    """Skip the handler for an event it completed before (``_once``)."""
    push_fallback: bool = False
    """``reply()`` pushes when the reply token is no longer usable (``_reply``)."""

    @classmethod
    def of(
        cls,
        func: Callable[..., Any],
        policy: MarkPolicy,
        *,
        loading: int = 0,
        background: bool = False,
        once: bool = True,
        push_fallback: bool = False,
    ) -> Route:
        if not callable(func):
            raise TypeError(f"a handler must be callable, got {func!r}")
        # The SDK's rule, verbatim: varargs or 2 parameters -> (event, destination).
        spec = inspect.getfullargspec(func)
        arity = 2 if spec.varargs is not None else min(len(spec.args), 2)
        is_async = inspect.iscoroutinefunction(func)
        return cls(func, policy, arity, is_async, loading, background, once, push_fallback)

    def call(self, event: Any, destination: str | None) -> Any:
        if self.arity == 2:
            return self.func(event, destination)
        if self.arity == 1:
            return self.func(event)
        return self.func()


def find_route(routes: Mapping[str, Route], default: Route | None, event: Any) -> Route | None:
    """The SDK's lookup for a built model: message-specific key, event key, default."""
    if isinstance(event, MessageEvent):
        return route_by_name(routes, default, (type(event).__name__, type(event.message).__name__))
    return route_by_name(routes, default, (type(event).__name__, None))


def route_by_name(
    routes: Mapping[str, Route], default: Route | None, names: Prediction
) -> Route | None:
    """``find_route`` from class names (``_shapes.predict``), before any model is built."""
    event_name, message_name = names
    route = None
    if message_name is not None:
        route = routes.get(f"{event_name}_{message_name}")
    if route is None:
        route = routes.get(event_name)
    return default if route is None else route


def decide(route: Route | None, event: Any, settings: Settings) -> Decision:
    """What the handler about to run wants for *event*; a policy's mistakes mean "don't mark".

    A bot that hands some chats to human agents decides per event; if that
    decision raises or answers nonsense, leaving the message unread is the
    safe side (the agent still sees it unread), and the error is logged.
    """
    if route is None:
        return settings.mark_unhandled
    policy = route.policy
    if not callable(policy):
        return policy
    try:
        decision = policy(event)
    except Exception:
        log.exception("line_markread: the mark_as_read policy %r raised; not marking", policy)
        return False
    if is_decision(decision):
        return decision
    log.error(
        "line_markread: the mark_as_read policy %r returned %r; expected True, False or "
        "'nowait'; not marking",
        policy,
        decision,
    )
    return False


@attrs.define
class Step:
    """One event of a body, planned: its handler and what it wants.

    ``event`` is the SDK model the handler receives.  It is built during
    planning only when something needs it before the requests go out (a
    callable policy, or JSON whose classes ``_shapes.predict`` cannot vouch
    for); otherwise ``Plan.build_events`` fills it in while they are in flight.
    """

    event: Any
    route: Route | None
    decision: Decision
    raw: dict[str, Any] = attrs.field(repr=False, kw_only=True)
    predicted: Prediction | None = attrs.field(default=None, kw_only=True)
    """The class names the route was looked up by, when ``event`` was not built first."""


@attrs.frozen
class Plan:
    destination: str | None
    steps: tuple[Step, ...]
    targets: tuple[ReadTarget | None, ...]
    """Per step: what to mark, or ``None`` (nothing to mark, or opted out)."""
    skipped: int
    opted_out: int
    routes: Mapping[str, Route] = attrs.field(repr=False)
    default: Route | None = attrs.field(repr=False)

    def build_events(self) -> None:
        """Build the SDK models not built during planning (after the requests have left)."""
        for step in self.steps:
            if step.event is None:
                step.event = build_event(step.raw)
                step.route = _verified_route(
                    step.event, step.predicted, self.routes, self.default, step.route
                )


def hold_background_marks(plan: Plan) -> tuple[Plan, tuple[ReadTarget | None, ...]]:
    """The plan without its ``background=True`` steps' read targets, and those targets.

    "Read" means the bot has picked the message up: a background step's message
    is marked when its job starts in its chat's lane (in the in-process pool, as
    a durable worker does), not when the webhook arrives; the body's other
    steps are marked at once, as before.  The second value has one entry per
    step: the target its job marks, or ``None``.
    """
    held = tuple(
        target if step.route is not None and step.route.background else None
        for step, target in zip(plan.steps, plan.targets, strict=True)
    )
    if not any(held):
        return plan, held
    kept = tuple(
        None if hold is not None else target
        for target, hold in zip(plan.targets, held, strict=True)
    )
    return attrs.evolve(plan, targets=kept), held


def _verified_route(
    event: Any,
    predicted: Prediction | None,
    routes: Mapping[str, Route],
    default: Route | None,
    planned: Route | None,
) -> Route | None:
    """A safety net: the route was picked from the JSON; the built model must agree with it.

    ``_shapes.predict`` only answers when it is sure (tests/test_planning.py
    holds it to the SDK), so this never fires unless a future SDK changes its
    rules; then the handler the SDK would call still runs, and the log says so.
    """
    if predicted is None:
        return planned
    actual = (
        type(event).__name__,
        type(event.message).__name__ if isinstance(event, MessageEvent) else None,
    )
    if actual == predicted:
        return planned
    log.error(
        "line_markread: planned %s from the webhook JSON but the SDK built %s; please report "
        "this (the handler for %s runs)",
        predicted,
        actual,
        actual,
    )
    return find_route(routes, default, event)


def plan_body(
    body: ParsedBody, routes: Mapping[str, Route], default: Route | None, settings: Settings
) -> Plan:
    """Route, decide and target every event from its JSON, building models only where needed.

    A model is built here, before any request, when the route's policy is a
    callable (it decides on the model) or when ``predict`` is not sure which
    classes the SDK will pick; so a body the SDK would reject is rejected
    here, before anything is sent.
    """
    steps = []
    targets: list[ReadTarget | None] = []
    skipped = opted_out = 0
    mode, mark_standby = settings.mode, settings.mark_standby
    others: list[Step] = []
    for raw in body.events:
        target = read_target(raw, mode=mode, mark_standby=mark_standby)
        if target is Skip.NOT_A_MESSAGE:
            # Nothing to mark or decide: routed below, once the body's requests are known.
            step = Step(None, None, False, raw=raw)
            others.append(step)
            steps.append(step)
            targets.append(None)
            continue
        predicted = predict(raw)
        event: Any = None
        if predicted is None:
            event = build_event(raw)
            route = find_route(routes, default, event)
        else:
            route = route_by_name(routes, default, predicted)
            if route is not None and callable(route.policy):
                event = build_event(raw)
                route = _verified_route(event, predicted, routes, default, route)
        decision = decide(route, event, settings)
        if decision is False:
            opted_out += route is not None
        elif isinstance(target, Skip):
            skipped += 1
        steps.append(Step(event, route, decision, raw=raw, predicted=predicted))
        targets.append(target if decision is not False and isinstance(target, ReadTarget) else None)
    # Every step is routed before anything is sent (the handler checks routes first).
    # When requests will leave before the remaining models are built, each of those
    # must be certain to build: predicted, or built (and perhaps refused) now.  With
    # no request to overlap, building now costs what building later would.
    sending = any(targets)
    for step in others:
        step.predicted = predict(step.raw) if sending else None
        if step.predicted is None:
            step.event = build_event(step.raw)
            step.route = find_route(routes, default, step.event)
        else:
            step.route = route_by_name(routes, default, step.predicted)
    return Plan(body.destination, tuple(steps), tuple(targets), skipped, opted_out, routes, default)
