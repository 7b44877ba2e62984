"""The echo bot on AWS Lambda, marking every message read first.

Behind API Gateway (REST API or HTTP API, proxy integration) or a Lambda
Function URL; configure the function's handler as ``lambda_bot.lambda_handler``
and deploy this file with ``line-markread`` installed.  Configuration comes
from the function's environment: ``LINE_CHANNEL_SECRET``,
``LINE_CHANNEL_ACCESS_TOKEN`` (required) and ``LINE_API_HOST`` (optional).

Lambda freezes the process as soon as the function returns, so the handler
runs in serverless mode (``settle_before_return=True``): each invocation
returns once its marks are done, retries included (bounded by
``settle_timeout``, under LINE's 2 s webhook deadline).  Everything built at
import time (the handler, the SDK's API client) is reused by warm invocations.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from linebot.v3.messaging import (
    ApiClient,
    Configuration,
    MessagingApi,
    ReplyMessageRequest,
    TextMessage,
)
from linebot.v3.webhooks import MessageEvent, StickerMessageContent, TextMessageContent

import line_markread.aws_lambda
from line_markread import WebhookHandler


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
line_bot_api = MessagingApi(ApiClient(configuration))  # once, reused by warm invocations


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


# What AWS calls: lambda_handler(event, context) -> {"statusCode": ..., "body": ...}
lambda_handler = line_markread.aws_lambda.lambda_handler(handler)
