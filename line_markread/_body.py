"""Webhook body -> events: the first step of the data flow.

``parse_body`` verifies the signature (the SDK's own validator, unchanged)
and decodes the JSON once; the events stay plain JSON objects, from which
``_dispatch`` reads the route and the read target (a message type LINE adds
tomorrow, which the SDK turns into an ``UnknownEvent`` without its
``markAsReadToken``, is still marked).  ``build_event`` makes the SDK model a
handler receives, with the SDK's fallback; the handler calls it while the
mark-as-read requests are already in flight.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import attrs
from linebot.v3.exceptions import InvalidSignatureError
from linebot.v3.models.events import UnknownEvent
from linebot.v3.webhooks import Event

log = logging.getLogger(__name__)


class WebhookBodyError(ValueError):
    """The webhook body is not a LINE webhook: not UTF-8, not JSON, or not shaped like one.

    Raised only after the signature was verified (or verification is skipped),
    and before any mark-as-read request is made.  A ``ValueError`` like the
    ``json.JSONDecodeError`` the SDK raises, so existing ``except`` clauses keep working.
    """


@attrs.frozen
class ParsedBody:
    """A verified, decoded webhook body: its events as JSON objects, no SDK model built yet."""

    destination: str | None
    events: tuple[dict[str, Any], ...] = attrs.field(repr=False)


def parse_body(parser: Any, body: str | bytes, signature: str) -> ParsedBody:
    """Verify *signature* with the SDK *parser*'s validator, then parse *body*.

    Raises ``InvalidSignatureError`` exactly as the SDK does, and
    ``WebhookBodyError`` for anything that is not a LINE webhook body.
    """
    if isinstance(body, (bytes, bytearray)):
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as e:
            raise WebhookBodyError("webhook body is not valid UTF-8") from e
    elif isinstance(body, str):
        text = body
    else:
        raise TypeError(f"webhook body must be str or bytes, got {type(body).__name__}")
    _verify(parser, text, signature)

    try:
        document = json.loads(text)
    except ValueError as e:
        raise WebhookBodyError(f"webhook body is not JSON: {e}") from e
    except RecursionError as e:  # a signed body of 2,000 "[": not a webhook, not a crash
        raise WebhookBodyError("webhook body is JSON nested too deeply") from e
    if not isinstance(document, dict):
        raise WebhookBodyError("webhook body must be a JSON object")
    raw_events = document.get("events")
    if not isinstance(raw_events, list):
        raise WebhookBodyError("webhook body must have an 'events' list")
    for raw in raw_events:
        if not isinstance(raw, dict):
            raise WebhookBodyError(f"webhook event must be a JSON object, got {type(raw).__name__}")
    destination = document.get("destination")
    return ParsedBody(
        destination=destination if isinstance(destination, str) else None,
        events=tuple(raw_events),
    )


def _verify(parser: Any, text: str, signature: object) -> None:
    """The SDK's signature check, with what it cannot take answered as a bad signature."""
    if not isinstance(signature, str):
        # The SDK would fail deep inside hmac; a missing header is a bad signature.
        raise InvalidSignatureError("Invalid signature. signature is missing")
    if parser.skip_signature_verification():
        return
    if not signature.isascii():
        # LINE's signature is base64, so ASCII.  A byte that is not UTF-8 arrives from
        # aiohttp (or in a Lambda event) as a lone surrogate, which the SDK's validator
        # cannot even encode: a bad signature, never a 500.  The value is not quoted:
        # it may be neither printable nor encodable by a log handler.
        raise InvalidSignatureError("Invalid signature. signature is not ASCII")
    try:
        valid = parser.signature_validator.validate(text, signature)
    except UnicodeEncodeError as e:  # a str body with a lone surrogate: not LINE's bytes
        raise WebhookBodyError("webhook body is not valid UTF-8 text") from e
    if not valid:
        raise InvalidSignatureError("Invalid signature. signature=" + signature)


def build_event(raw: dict[str, Any]) -> Any:
    """The SDK model of one event, as ``WebhookParser.parse`` builds it.

    Raises ``WebhookBodyError`` where the SDK would raise (not even an
    ``UnknownEvent`` can be made of it).
    """
    try:
        model = Event.from_dict(raw)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        # Same fallback as the SDK's parser, widened to the errors a malformed
        # event raises from the generated models.
        log.info(
            "Unknown or malformed event of type %r; passed on as UnknownEvent", raw.get("type")
        )
        try:
            model = UnknownEvent.new_from_json_dict(raw)
        except (ValueError, TypeError, RecursionError) as e:
            raise WebhookBodyError(f"webhook event could not be parsed: {e}") from e
    return model
