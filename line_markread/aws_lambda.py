"""AWS Lambda glue: API Gateway (REST v1, HTTP v2) and Function URL events into ``handle()``.

No framework needed (``import line_markread`` never imports it)::

    import line_markread.aws_lambda
    from line_markread import WebhookHandler

    handler = WebhookHandler(
        CHANNEL_SECRET, access_token=CHANNEL_ACCESS_TOKEN, settle_before_return=True
    )
    lambda_handler = line_markread.aws_lambda.lambda_handler(handler)

Lambda freezes the process as soon as the function returns, so the handler
must be built with ``settle_before_return=True`` (serverless mode): every
mark of the body has settled before the response goes out.
``lambda_handler`` refuses a handler without it.

The event's body may be base64-encoded (``isBase64Encoded``); header names
are matched case-insensitively (lower-case in v2 and Function URLs).  The
response has the shape all three integrations accept: ``400`` for a
missing or bad signature or a body that is not a LINE webhook, ``405`` for a
method other than POST, ``200`` otherwise.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Mapping
from typing import Any

from ._glue import CONTENT_TYPE, SIGNATURE_HEADER, Answer, respond
from ._handler import WebhookHandler

__all__ = ["SIGNATURE_HEADER", "handle_event", "lambda_handler"]

log = logging.getLogger(__name__)

LambdaHandler = Callable[[Mapping[str, Any], Any], dict[str, Any]]
"""``(event, context) -> response``: the signature AWS calls."""

NOT_AN_HTTP_EVENT = Answer(400, "Not an API Gateway or Function URL event\n")
METHOD_NOT_ALLOWED = Answer(405, "Method not allowed\n")


def lambda_handler(handler: WebhookHandler) -> LambdaHandler:
    """The function AWS calls: ``lambda_handler = line_markread.aws_lambda.lambda_handler(h)``.

    Raises ``ValueError`` at once (at cold start, not per event) unless
    *handler* has ``settle_before_return=True``.
    """
    if not handler.settings.settle_before_return:
        raise ValueError(
            "line_markread.aws_lambda needs WebhookHandler(..., settle_before_return=True): "
            "Lambda freezes the process when the function returns, and a mark still in "
            "progress then would be lost"
        )

    def line_webhook(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        return handle_event(handler, event)

    return line_webhook


def handle_event(handler: WebhookHandler, event: Mapping[str, Any]) -> dict[str, Any]:
    """Answer one API Gateway v1/v2 or Function URL *event*: the response dictionary."""
    return _response(_answer(handler, event))


def _answer(handler: WebhookHandler, event: Mapping[str, Any]) -> Answer:
    if not isinstance(event, Mapping) or not isinstance(event.get("body", ""), (str, type(None))):
        log.warning("line_markread: the Lambda event is not an API Gateway/Function URL event")
        return NOT_AN_HTTP_EVENT
    method = _method(event)
    if method is not None and method.upper() != "POST":
        return METHOD_NOT_ALLOWED
    body = event.get("body") or ""
    raw: str | bytes = body  # text as is: one with a lone surrogate is refused by handle(), 400
    if event.get("isBase64Encoded"):
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            log.warning("line_markread: the Lambda event's base64 body does not decode")
            return NOT_AN_HTTP_EVENT
    return respond(handler, raw, _header(event, SIGNATURE_HEADER))


def _method(event: Mapping[str, Any]) -> str | None:
    """``httpMethod`` (REST v1) or ``requestContext.http.method`` (HTTP v2, Function URLs)."""
    method = event.get("httpMethod")
    if isinstance(method, str):
        return method
    context = event.get("requestContext")
    http = context.get("http") if isinstance(context, Mapping) else None
    method = http.get("method") if isinstance(http, Mapping) else None
    return method if isinstance(method, str) else None


def _header(event: Mapping[str, Any], name: str) -> str | None:
    """A header's value, any case; v1's ``multiValueHeaders`` when ``headers`` lacks it."""
    wanted = name.lower()
    for field in ("headers", "multiValueHeaders"):
        headers = event.get(field)
        if not isinstance(headers, Mapping):
            continue
        for key, value in headers.items():
            if isinstance(key, str) and key.lower() == wanted:
                first = (value[0] if value else None) if isinstance(value, list) else value
                if isinstance(first, str):
                    return first
    return None


def _response(answer: Answer) -> dict[str, Any]:
    return {
        "statusCode": answer.status,
        "headers": {"Content-Type": CONTENT_TYPE},
        "body": answer.text,
        "isBase64Encoded": False,
    }
