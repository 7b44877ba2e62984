"""The ``line-markread`` command line (also ``python -m line_markread``).

``demo`` shows the plugin working with nothing to configure; ``check`` tells
the owner of a real account whether it needs the plugin.  ``main`` returns
the exit status instead of exiting, so tests (and other tools) can call it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from .._version import __version__

PROG = "line-markread"
DEFAULT_SEED = 7
EXIT_BROKEN_PIPE = 141
"""What a shell reports for a program killed by SIGPIPE, as ``cmd | head`` users expect."""

DEMO_EPILOG = """\
exit status:
  0  every guarantee held
  1  at least one guarantee did not hold (or the demo could not run)
  141  stdout was closed early (e.g. piped into head)

Runs on loopback only (a fake LINE platform and a real aiohttp bot); nothing
to configure, nothing sent to LINE."""


def build_parser() -> argparse.ArgumentParser:
    # Only the chosen command loads its modules: --help and check stay quick.
    from .check import DEFAULT_HOST, EXIT_STATUS_HELP, TOKEN_ENV  # noqa: PLC0415  # lazy: fast --help

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Mark LINE messages read before your bot replies: demo, account check, "
        "and the durable queue's worker.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="play a scripted conversation against a fake LINE platform and check every guarantee",
        description="Start a fake LINE platform and a real bot using line_markread, play a "
        "scripted conversation as signed webhooks (several users, a burst, a group, an "
        "opted-out sticker, a 503 outage, a superseded retry, a rejected read token) and "
        "print the timeline and whether every guarantee held.",
        epilog=DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line on stdout (messages, events, checks, then a summary)",
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        metavar="N",
        help=f"seed of the retry jitter, for reproducible runs (default: {DEFAULT_SEED})",
    )
    demo.add_argument(
        "--html",
        metavar="PATH",
        help="also write the run as one self-contained HTML page (chat views, a sequence "
        "diagram per scene, the guarantees) to PATH",
    )

    check = commands.add_parser(
        "check",
        help="ask LINE whether your account needs line_markread (GET /v2/bot/info)",
        description="Call GET /v2/bot/info with your channel access token and report the "
        "bot's name, chatMode and markAsReadMode, with advice; with --webhook, also whether "
        "LINE reaches the bot's webhook and gets an answer within its 2-second deadline.",
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument(
        "--access-token",
        metavar="TOKEN",
        help=f"channel access token (default: ${TOKEN_ENV}; prefer the variable, "
        "a flag shows in the process list)",
    )
    check.add_argument(
        "--host",
        default=DEFAULT_HOST,
        metavar="URL",
        help=f"Messaging API base URL (default: {DEFAULT_HOST})",
    )
    check.add_argument("--json", action="store_true", help="one JSON object on stdout")
    check.add_argument(
        "--webhook",
        action="store_true",
        help="also ask LINE where the webhook points and have LINE call it now "
        "(GET /v2/bot/channel/webhook/endpoint, POST /v2/bot/channel/webhook/test): "
        "does it answer within LINE's 2 seconds?",
    )
    check.add_argument(
        "--mode",
        choices=("auto", "token", "user"),
        default="auto",
        help="the mode= your handler passes to line_markread (default: auto); "
        "'user' (the legacy user-ID mark-as-read API) gets a warning",
    )

    from . import queue, worker  # noqa: PLC0415  # argparse only; the queue loads when run

    worker.add_parser(commands)
    queue.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (argparse's own exits included)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return _run(args)
    except BrokenPipeError:
        # The reader left early (``| head``): not an error worth a traceback.
        # Point stdout at devnull so the interpreter's final flush stays quiet.
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        with contextlib.suppress(OSError, ValueError):  # stdout may have no descriptor
            os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        return _demo(as_json=args.json, seed=args.seed, html_path=args.html)
    if args.command in ("worker", "queue"):
        from . import queue, worker  # noqa: PLC0415  # loaded only for these commands

        return worker.run(args) if args.command == "worker" else queue.run(args)
    from .check import run  # noqa: PLC0415  # loaded only for this command

    return int(
        run(
            access_token=args.access_token,
            host=args.host,
            as_json=args.json,
            webhook=args.webhook,
            mode=args.mode,
        )
    )


def _demo(*, as_json: bool, seed: int, html_path: str | None) -> int:
    from .demo import run  # noqa: PLC0415  # aiohttp and the SDK load only when needed

    try:
        return run(as_json=as_json, seed=seed, html_path=html_path)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise
    except Exception as e:  # the demo's verdict is its exit status: say why, don't trace back
        print(f"{PROG} demo: could not run: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
