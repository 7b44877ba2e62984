"""What the example bots share: command line, environment, and serving until Ctrl-C/SIGTERM.

Not part of line_markread.  It keeps each example what it should be: the
SDK's own example plus one line.  Every example:

* runs as ``python examples/NAME.py [--port PORT] [--host HOST]`` (``PORT`` in
  the environment works too; default 8000; all interfaces unless ``--host``;
  ``--port 0`` picks a free port);
* prints ``Listening on http://HOST:PORT/callback`` on stdout once it listens;
* reads ``LINE_CHANNEL_SECRET`` and ``LINE_CHANNEL_ACCESS_TOKEN`` (required)
  and ``LINE_API_HOST`` (optional: the LINE API base URL, say a fake platform);
* stops cleanly on Ctrl-C or SIGTERM, exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import warnings
from types import FrameType
from typing import Any

from aiohttp import web
from linebot.v3.messaging import Configuration

DEFAULT_PORT = 8000
ALL_INTERFACES = "0.0.0.0"  # a bot must be reachable by LINE


def line_settings() -> tuple[str, Configuration]:
    """The channel secret, and a ``Configuration`` with the access token and API host.

    Exits with status 1 and says what is missing when a required variable is unset.
    """
    channel_secret = os.getenv("LINE_CHANNEL_SECRET")
    access_token = os.getenv("LINE_CHANNEL_ACCESS_TOKEN")
    missing = [
        name
        for name, value in [
            ("LINE_CHANNEL_SECRET", channel_secret),
            ("LINE_CHANNEL_ACCESS_TOKEN", access_token),
        ]
        if not value
    ]
    if missing or channel_secret is None:
        sys.exit(f"Specify {' and '.join(missing)} as environment variable(s).")
    # host=None is LINE's own API (https://api.line.me).
    return channel_secret, Configuration(host=os.getenv("LINE_API_HOST"), access_token=access_token)


def parse_args(description: str | None) -> argparse.Namespace:
    """``--port`` (default: ``$PORT``, else 8000) and ``--host`` (default: all interfaces)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    env_port = os.getenv("PORT")
    parser.add_argument(
        "-p",
        "--port",
        type=int,
        default=None,
        help=f"port to listen on (default: $PORT, else {DEFAULT_PORT}; 0: any free port)",
    )
    parser.add_argument(
        "--host", default=ALL_INTERFACES, help="interface to listen on (default: all)"
    )
    options = parser.parse_args()
    if options.port is None:
        try:
            options.port = int(env_port) if env_port else DEFAULT_PORT
        except ValueError:
            parser.error(f"PORT must be a port number, not {env_port!r}")
    return options


def announce(host: str, port: int, server: str) -> None:
    """Say where the bot listens, once it does (scripts and tests wait for this line)."""
    print(f"Listening on http://{host}:{port}/callback ({server})", flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def sigterm_like_ctrl_c() -> None:
    """Make SIGTERM (``docker stop``, systemd, Kubernetes) stop the bot the way Ctrl-C does."""
    signal.signal(signal.SIGTERM, _interrupt)


def serve_wsgi(app: Any, host: str, port: int) -> None:
    """Serve a WSGI app until Ctrl-C/SIGTERM: waitress (multi-threaded) if installed,
    else Werkzeug's development server.  In production use any WSGI server you like.
    """
    sigterm_like_ctrl_c()
    try:
        import waitress  # type: ignore[import-untyped]  # noqa: PLC0415  # optional
    except ImportError:
        waitress = None
    if waitress is not None:
        # A burst of webhooks queues for a moment: expected, not worth a warning each time.
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        # waitress's shutdown can drop a just-closed client socket without closing it (seen
        # under load): its ResourceWarning is the server's, not the bot's or the plugin's.
        warnings.filterwarnings("ignore", category=ResourceWarning, module=r"waitress\.")
        connections: dict[int, Any] = {}
        server = waitress.create_server(app, map=connections, host=host, port=port, threads=16)
        announce(host, server.effective_port, "waitress, 16 threads")
        try:
            server.run()  # returns on Ctrl-C/SIGTERM, once the requests in progress are done
        finally:
            waitress.wasyncore.close_all(connections)  # the listening socket and idle clients
        return
    from werkzeug.serving import make_server  # noqa: PLC0415  # only the Flask fallback needs it

    dev_server = make_server(host, port, app, threaded=True)
    announce(host, dev_server.server_port, "Werkzeug development server")
    try:
        dev_server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        dev_server.server_close()


def serve_aiohttp(app: web.Application, host: str, port: int) -> None:
    """Serve an aiohttp app until Ctrl-C/SIGTERM; the app's cleanup runs before returning."""
    with contextlib.suppress(KeyboardInterrupt):  # where signal handlers are not available
        asyncio.run(_serve_aiohttp(app, host, port))


async def _serve_aiohttp(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        announce(host, runner.addresses[0][1], "aiohttp")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # Windows
                loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()  # runs app.cleanup_ctx: the handler drains and closes


def serve_asgi(app: Any, host: str, port: int) -> None:
    """Serve an ASGI app with uvicorn until Ctrl-C/SIGTERM; its lifespan shutdown runs first."""
    import uvicorn  # noqa: PLC0415  # only the FastAPI example needs it

    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again
    # for whoever handled it before: make that a KeyboardInterrupt, not a kill.
    sigterm_like_ctrl_c()
    sock = socket.create_server((host, port))
    try:
        server = uvicorn.Server(uvicorn.Config(app, lifespan="on"))
        announce(host, sock.getsockname()[1], "uvicorn")
        with contextlib.suppress(KeyboardInterrupt):
            server.run(sockets=[sock])
    finally:
        sock.close()
