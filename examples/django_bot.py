"""The echo bot as a single-file Django project, marking every message read first.

    python examples/django_bot.py [--port PORT] [--host HOST]

``line_markread.django.webhook_route`` serves ``POST /callback`` (400 on a bad
signature, no CSRF token needed: LINE signs the body).  ``application`` is a
plain WSGI app: serve it with gunicorn (``gunicorn django_bot:application``),
uWSGI or waitress as well as with ``python examples/django_bot.py``.  In a
project of your own, put the ``handler`` in a module of your app and the
route in ``urls.py``; under ASGI use ``webhook_route(handler, asynchronous=True)``.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import django
from _common import line_settings, parse_args, serve_wsgi
from django.conf import settings
from linebot.v3.messaging import ApiClient, MessagingApi, ReplyMessageRequest, TextMessage
from linebot.v3.webhooks import MessageEvent, StickerMessageContent, TextMessageContent

from line_markread import WebhookHandler

channel_secret, configuration = line_settings()

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],  # behind your proxy, name your host here
    ROOT_URLCONF=__name__,
    SECRET_KEY=os.getenv("DJANGO_SECRET_KEY") or secrets.token_urlsafe(32),
    MIDDLEWARE=[
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
    ],
)
django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402  # needs the settings above

import line_markread.django  # noqa: E402  # needs the settings above

# The one-line change: line_markread's WebhookHandler instead of the SDK's.
handler = WebhookHandler(channel_secret, configuration=configuration)
line_bot_api = MessagingApi(ApiClient(configuration))  # once per process, not per request


@handler.add(MessageEvent, message=TextMessageContent)
def handle_message(event: Any) -> None:
    # LINE has marked this message read by now: the user sees "Read" before the echo.
    line_bot_api.reply_message_with_http_info(
        ReplyMessageRequest(
            reply_token=event.reply_token, messages=[TextMessage(text=event.message.text)]
        )
    )


@handler.add(MessageEvent, message=StickerMessageContent, mark_as_read=False)
def handle_sticker(event: Any) -> None:
    """Opted out: stickers stay unread, say for a human agent in LINE Official Account Manager."""


urlpatterns = [line_markread.django.webhook_route(handler)]  # POST /callback

application = get_wsgi_application()

if __name__ == "__main__":
    options = parse_args(__doc__)
    try:
        serve_wsgi(application, options.host, options.port)
    finally:
        handler.close()  # drain pending marks, close the HTTP session
