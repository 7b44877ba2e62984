"""Flask glue: a ready-made ``POST /callback`` view.

Imported only by Flask users (``import line_markread`` never imports it)::

    from flask import Flask
    import line_markread.flask
    from line_markread import WebhookHandler

    handler = WebhookHandler(CHANNEL_SECRET, access_token=CHANNEL_ACCESS_TOKEN)
    app = Flask(__name__)
    line_markread.flask.init_app(app, handler)  # POST /callback

Flask has no shutdown hook: call ``handler.close()`` when your server stops
(the Flask example does it in a ``finally``).  A handler nobody closed still
drains its pending marks at interpreter exit.  ``webhook_view`` and
``init_app`` have the same names and meaning in ``line_markread.aiohttp``
and ``line_markread.starlette``.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, request

from ._glue import SIGNATURE_HEADER, respond
from ._handler import WebhookHandler

__all__ = ["SIGNATURE_HEADER", "init_app", "webhook_view"]


def webhook_view(handler: WebhookHandler) -> Callable[[], tuple[str, int]]:
    """The webhook view: ``handler.handle(body, signature)``.

    ``400`` for a missing or bad ``X-Line-Signature`` and for a body that is
    not a LINE webhook (no API request is made for either), ``200 OK``
    otherwise.  An exception from one of the bot's handlers propagates, so
    Flask answers ``500`` and logs it.
    """

    def line_webhook() -> tuple[str, int]:
        answer = respond(handler, request.get_data(), request.headers.get(SIGNATURE_HEADER))
        return answer.text, answer.status

    return line_webhook


def init_app(
    app: Flask,
    handler: WebhookHandler,
    *,
    path: str = "/callback",
    endpoint: str = "line_webhook",
) -> Flask:
    """Serve ``POST path`` with ``webhook_view(handler)``; the handler is kept in
    ``app.extensions["line_markread"]``.  Returns *app*."""
    app.add_url_rule(path, endpoint, webhook_view(handler), methods=["POST"])
    app.extensions["line_markread"] = handler
    return app
