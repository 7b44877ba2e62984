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
from collections.abc import Mapping
from typing import Any, Callable, Literal, Optional, Union, cast

import attrs
from linebot.v3.webhooks import MessageEvent

from ._body import ParsedBody
from ._settings import Settings
from ._targets import ReadTarget, Skip, read_target

log = logging.getLogger(__name__)

Decision = Union[bool, Literal["nowait"]]
"""What one handler wants for one event: ``True``, ``False`` or ``"nowait"``."""

MarkPolicy = Union[bool, Literal["nowait"], Callable[[Any], Decision]]
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


def route_key(event: type, message: Optional[type] = None) -> str:
    """The SDK's handler key for an event class (and message content class)."""
    return event.__name__ if message is None else f"{event.__name__}_{message.__name__}"


@attrs.frozen
class Route:
    """A registered handler function and its ``mark_as_read`` policy."""

    func: Callable[..., Any]
    policy: MarkPolicy
    arity: int
    is_async: bool

    @classmethod
    def of(cls, func: Callable[..., Any], policy: MarkPolicy) -> Route:
        if not callable(func):
            raise TypeError(f"a handler must be callable, got {func!r}")
        # The SDK's rule, verbatim: varargs or 2 parameters -> (event, destination).
        spec = inspect.getfullargspec(func)
        arity = 2 if spec.varargs is not None else min(len(spec.args), 2)
        return cls(func, policy, arity, inspect.iscoroutinefunction(func))

    def call(self, event: Any, destination: Optional[str]) -> Any:
        if self.arity == 2:
            return self.func(event, destination)
        if self.arity == 1:
            return self.func(event)
        return self.func()


def find_route(
    routes: Mapping[str, Route], default: Optional[Route], event: Any
) -> Optional[Route]:
    route = None
    if isinstance(event, MessageEvent):
        route = routes.get(route_key(type(event), type(event.message)))
    if route is None:
        route = routes.get(route_key(type(event)))
    return default if route is None else route


def decide(route: Optional[Route], event: Any, settings: Settings) -> Decision:
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


@attrs.frozen
class Step:
    """One event of a body, planned: its handler, what it wants, and what to mark."""

    event: Any
    route: Optional[Route]
    decision: Decision
    target: Union[ReadTarget, Skip]


@attrs.frozen
class Plan:
    destination: Optional[str]
    steps: tuple[Step, ...]
    targets: tuple[Optional[ReadTarget], ...]
    """Per step: what to mark, or ``None`` (nothing to mark, or opted out)."""
    skipped: int
    opted_out: int


def plan_body(
    body: ParsedBody, routes: Mapping[str, Route], default: Optional[Route], settings: Settings
) -> Plan:
    steps = []
    targets: list[Optional[ReadTarget]] = []
    skipped = opted_out = 0
    for parsed in body.events:
        route = find_route(routes, default, parsed.model)
        target = read_target(parsed.raw, mode=settings.mode, mark_standby=settings.mark_standby)
        decision: Decision = False
        if target is not Skip.NOT_A_MESSAGE:
            decision = decide(route, parsed.model, settings)
            if decision is False:
                opted_out += route is not None
            elif isinstance(target, Skip):
                skipped += 1
        steps.append(Step(parsed.model, route, decision, target))
        marks = decision is not False and isinstance(target, ReadTarget)
        targets.append(target if marks else None)  # type: ignore[arg-type]  # narrowed by `marks`
    return Plan(body.destination, tuple(steps), tuple(targets), skipped, opted_out)
