"""From a planned body to queue jobs: the one place ``_handler`` calls for ``queue=``.

``split(plan)`` takes the body's ``background=True`` steps out of the plan
(with their read targets: on the durable path a message is marked when a
worker picks its job up, not when the webhook arrives) and returns them as
``Job`` records; the rest of the plan runs in the web process as before.
"""

from __future__ import annotations

import attrs

from .._dispatch import Plan
from . import Job, chat_of, event_id_of, handler_name


def split(plan: Plan) -> tuple[Plan, list[Job]]:
    """The plan without its background steps, and those steps as jobs (body order)."""
    jobs: list[Job] = []
    keep = []
    for step, target in zip(plan.steps, plan.targets, strict=True):
        route = step.route
        if route is None or not route.background:
            keep.append((step, target))
            continue
        if step.predicted is not None:
            event_name, message_name = step.predicted
        else:  # built during planning: its classes are known
            event_name = type(step.event).__name__
            message = getattr(step.event, "message", None)
            message_name = None if message is None else type(message).__name__
        key = event_name if message_name is None else f"{event_name}_{message_name}"
        jobs.append(
            Job(
                event=step.raw,
                destination=plan.destination,
                handler=handler_name(route.func),
                route=key,
                chat=chat_of(step.raw),
                webhook_event_id=event_id_of(step.raw),
            )
        )
    if not jobs:
        return plan, jobs
    kept = attrs.evolve(
        plan,
        steps=tuple(step for step, _ in keep),
        targets=tuple(target for _, target in keep),
    )
    return kept, jobs
