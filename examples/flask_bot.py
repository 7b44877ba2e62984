"""The SDK's Flask echo bot (examples/flask-echo), marking every message read first.

    python examples/flask_bot.py [--port PORT] [--host HOST]

The one-line change is marked below.  Handlers stay synchronous.  ``app`` is a
plain WSGI app: serve it with waitress or gunicorn (``gunicorn flask_bot:app``)
as well as with ``python examples/flask_bot.py``.
"""

from __future__ import annotations

from typing import Any

from _common import line_settings, parse_args, serve_wsgi
from flask import Flask, abort, request
from linebot.v3 import WebhookHandler
from linebot.v3.exceptions import InvalidSignatureError
from linebot.v3.messaging import ApiClient, MessagingApi, ReplyMessageRequest, TextMessage
from linebot.v3.webhooks import MessageEvent, StickerMessageContent, TextMessageContent

from line_markread import install

app = Flask(__name__)

channel_secret, configuration = line_settings()

# The one-line change: every message is marked read before its handler runs.
handler = install(WebhookHandler(channel_secret), configuration=configuration)
line_bot_api = MessagingApi(ApiClient(configuration))  # once per app, not per request


@app.route("/callback", methods=["POST"])
def callback() -> str:
    # get X-Line-Signature header value
    signature = request.headers.get("X-Line-Signature", "")

    # get request body as text
    body = request.get_data(as_text=True)
    app.logger.debug("Request body: %s", body)

    # handle webhook body
    try:
        handler.handle(body, signature)
    except InvalidSignatureError:
        app.logger.info("Invalid signature. Check your channel access token/channel secret.")
        abort(400)

    return "OK"


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
    app.logger.info("Sticker left unread for a human agent")


if __name__ == "__main__":
    options = parse_args(__doc__)
    try:
        serve_wsgi(app, options.host, options.port)
    finally:
        handler.close()  # drain pending marks, close the HTTP session
