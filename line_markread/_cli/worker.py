"""``line-markread worker MODULE:ATTR``: run a bot's durable background handlers.

Loads the bot's ``WebhookHandler`` the way uvicorn and gunicorn load apps
(``MODULE:ATTR``, the current folder importable), takes its ``queue=``
(``--database-url`` or ``DATABASE_URL`` override the queue's URL), and runs
``_queue._worker.run_worker`` until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
import threading

from .queue import DATABASE_URL_ENV, add_database_url

PROG = "line-markread worker"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = commands.add_parser(
        "worker",
        help="run the durable background handlers (queue=PostgresQueue) of MODULE:ATTR",
        description="Run the background=True handlers of the WebhookHandler found at "
        "MODULE:ATTR (as uvicorn names apps, e.g. mybot:handler) from its PostgreSQL queue: "
        "each message is marked read when its job starts, one job per chat at a time in "
        "arrival order, across every worker.  SIGTERM or Ctrl-C: no new jobs, running ones "
        "get --grace seconds, exit 0 (unfinished jobs run again on another worker).",
        epilog="exit status: 0 stopped by a signal; 1 could not start (the reason on stderr)",
    )
    worker.add_argument("target", metavar="MODULE:ATTR", help="where the WebhookHandler is")
    worker.add_argument(
        "--concurrency",
        type=int,
        default=8,
        metavar="N",
        help="jobs run at once by this process (different chats; default 8)",
    )
    worker.add_argument(
        "--grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, how long running jobs may finish (default 30)",
    )
    worker.add_argument(
        "--stalled-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a worker silent this long is dead and its jobs run again elsewhere "
        "(default: the queue's stalled_after, 30)",
    )
    worker.add_argument("-v", "--verbose", action="store_true", help="log every job")
    add_database_url(worker)


def load_handler(target: str) -> object:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected MODULE:ATTR (e.g. mybot:handler), got {target!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as uvicorn and gunicorn do
    module = importlib.import_module(module_name)
    value: object = module
    for part in attr.split("."):
        value = getattr(value, part)
    return value


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        logging.getLogger("procrastinate").setLevel(logging.WARNING)
    if args.concurrency < 1:
        print(f"{PROG}: --concurrency must be at least 1", file=sys.stderr)
        return 1
    try:
        from .._handler import WebhookHandler  # noqa: PLC0415
        from .._queue._postgres import PostgresQueue  # noqa: PLC0415

        handler = load_handler(args.target)
        if not isinstance(handler, WebhookHandler):
            raise TypeError(
                f"{args.target} is {type(handler).__name__}, not a line_markread WebhookHandler"
            )
        queue = handler.queue
        if not isinstance(queue, PostgresQueue):
            raise TypeError(
                f"{args.target} has no queue=PostgresQueue(...): its background handlers run "
                "in the web process, so there is nothing for a worker to do"
            )
        url = args.database_url or os.environ.get(DATABASE_URL_ENV) or queue.url
        if url != queue.url or args.stalled_after is not None:
            queue = queue.replace(
                url=url,
                stalled_after=queue.stalled_after
                if args.stalled_after is None
                else args.stalled_after,
            )
            handler._markread_use_queue(queue)
    except Exception as e:  # a start-up failure: say why, no traceback
        print(f"{PROG}: cannot start: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    from .._queue._worker import run_worker  # noqa: PLC0415

    status = asyncio.run(run_worker(handler, queue, concurrency=args.concurrency, grace=args.grace))
    logging.shutdown()
    if threading.active_count() > 1:
        # A sync handler still running past the grace cannot be stopped; its job runs
        # again elsewhere.  Leave without waiting for its thread.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status
