"""The echo bot as a Google Cloud Function (or on Cloud Run), marking every message read first.

    functions-framework --target callback --source examples/gcf_bot.py --port PORT

``callback`` is an HTTP function (it gets a Flask request), deployable with
``gcloud functions deploy --runtime python312 --trigger-http --entry-point callback``
next to a ``requirements.txt`` naming ``line-markread``.  Configuration from the
environment: ``LINE_CHANNEL_SECRET``, ``LINE_CHANNEL_ACCESS_TOKEN`` (required),
``LINE_API_HOST`` (optional).

Cloud Run and Cloud Functions throttle the CPU once the response is out, so
the handler runs in serverless mode (``settle_before_return=True``): the
function returns once its marks are done, retries included.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import functions_framework
from flask import Request
from linebot.v3.exceptions import InvalidSignatureError
from linebot.v3.messaging import (
    ApiClient,
    Configuration,
    MessagingApi,
    ReplyMessageRequest,
    TextMessage,
)
from linebot.v3.webhooks import MessageEvent, StickerMessageContent, TextMessageContent

from line_markread import WebhookBodyError, WebhookHandler


def line_settings() -> tuple[str, Configuration]:
    """The channel secret and a ``Configuration``; exit 1 saying what is missing."""
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
    return channel_secret, Configuration(host=os.getenv("LINE_API_HOST"), access_token=access_token)


channel_secret, configuration = line_settings()

handler = WebhookHandler(channel_secret, configuration=configuration, settle_before_return=True)
line_bot_api = MessagingApi(ApiClient(configuration))  # once per instance, not per request


@functions_framework.http
def callback(request: Request) -> tuple[str, int]:
    signature = request.headers.get("X-Line-Signature")
    if signature is None:
        return "Missing signature\n", 400
    try:
        handler.handle(request.get_data(), signature)  # returns once the marks are done
    except InvalidSignatureError:
        return "Invalid signature\n", 400
    except WebhookBodyError:
        return "Invalid webhook body\n", 400
    return "OK\n", 200


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
