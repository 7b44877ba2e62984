"""``line-markread queue init|status``: the durable queue's schema and what it holds."""

from __future__ import annotations

import argparse
import json
import os
import sys

import attrs

DATABASE_URL_ENV = "DATABASE_URL"
PROG = "line-markread queue"


def add_database_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        metavar="URL",
        default=None,
        help=f"PostgreSQL URL (default: ${DATABASE_URL_ENV})",
    )


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    queue = commands.add_parser(
        "queue",
        help="the durable queue in PostgreSQL: create its schema, show what it holds",
        description="Manage the PostgreSQL queue of durable background handlers.",
    )
    actions = queue.add_subparsers(dest="queue_command", metavar="ACTION")
    init = actions.add_parser(
        "init",
        help="create or check the schema (procrastinate's and line_markread's); idempotent",
        description="Create procrastinate's schema where it is missing and line_markread's "
        "tables; safe to run on every deploy (one at a time, under an advisory lock).",
    )
    add_database_url(init)
    status = actions.add_parser(
        "status",
        help="jobs waiting, running, failed, retried and recovered from dead workers",
        description="Print the queue's numbers (every web process and worker shares them).",
    )
    status.add_argument("--json", action="store_true", help="one JSON object on stdout")
    add_database_url(status)


def _url(args: argparse.Namespace) -> str | None:
    url = args.database_url or os.environ.get(DATABASE_URL_ENV)
    if not url:
        print(
            f"{PROG}: no database: give --database-url or set {DATABASE_URL_ENV}", file=sys.stderr
        )
        return None
    return str(url)


def run(args: argparse.Namespace) -> int:
    if args.queue_command is None:
        print(f"{PROG}: give an action: init or status (see --help)", file=sys.stderr)
        return 2
    url = _url(args)
    if url is None:
        return 2
    from .._queue._postgres import (  # noqa: PLC0415  # the extra, only for this command
        init_schema,
        read_stats_blocking,
        redact_url,
    )

    try:
        if args.queue_command == "init":
            done = init_schema(url)
            print(f"queue schema {done} ({redact_url(url)})")
            return 0
        from .._queue import QueueStats  # noqa: PLC0415

        stats = QueueStats(**read_stats_blocking(url))
    except Exception as e:
        reason = str(e).replace(url, redact_url(url))
        print(f"{PROG} {args.queue_command}: {type(e).__name__}: {reason}", file=sys.stderr)
        return 1
    numbers = {k: v for k, v in attrs.asdict(stats).items() if k in _DATABASE_FIELDS}
    if args.json:
        print(json.dumps(numbers))
    else:
        for name, value in numbers.items():
            print(f"{name.replace('_', ' ')}: {value}")
    return 0


_DATABASE_FIELDS = ("depth", "running", "failed", "retried", "stalled_recovered")
