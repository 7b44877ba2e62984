"""Deploy anywhere: serverless mode, the Lambda and Django glue, tracing, newer SDK events.

The example bots run as real processes in ``test_examples.py``; here the
glue modules are called the way their platform calls them (Lambda with the
documented API Gateway v1/v2 and Function URL event shapes, Django through
its request handling), always against the fake LINE platform.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
from linebot.v3.webhooks import MessageEditedEvent, MessageEvent, TextMessageContent

import line_markread.aws_lambda
from line_markread import WebhookHandler
from line_markread._dispatch import Route, route_key
from line_markread.testing import (
    TOKEN_MARK_AS_READ_PATH,
    FakeLinePlatform,
    Fault,
    WebhookFactory,
    sticker_event,
    text_event,
)

from .support import SECRET, AsyncDriver, Driver, HandlerFactory, with_text_handler

webhooks = WebhookFactory(SECRET)

# A mark whose first attempt fails slowly and whose retry answers late: the
# handler's wait (wait_timeout) is long over before the mark settles.
SLOW_RETRY = (Fault.status(503, delay=0.3), Fault.delay(0.3))


# -- serverless mode ---------------------------------------------------------------


@pytest.mark.usefixtures("no_backoff")
@pytest.mark.parametrize("settle", [True, False], ids=["settle", "default"])
def test_serverless_mode_returns_only_once_the_retried_mark_settled(
    fake: FakeLinePlatform, new_handler: HandlerFactory, driver: Driver, settle: bool
) -> None:
    fake.script(TOKEN_MARK_AS_READ_PATH, *SLOW_RETRY)
    started: dict[str, float] = {}
    handler = with_text_handler(
        new_handler(wait_timeout=0.05, settle_before_return=settle, settle_timeout=30.0),
        started=started,
    )
    event = text_event()
    webhook = webhooks(event)

    driver.handle(handler, webhook.body, webhook.signature)
    returned = time.monotonic()

    failed, retried = fake.wait_for_requests(2, path=TOKEN_MARK_AS_READ_PATH)
    assert (failed.status, retried.status) == (503, 200)
    assert retried.responded_at is not None
    # The handler itself was released by wait_timeout, long before the mark settled.
    assert started[event["message"]["markAsReadToken"]] < retried.responded_at
    if settle:
        assert retried.responded_at < returned
    else:  # the default: the retry carries on in the background (a frozen Lambda loses it)
        assert returned < retried.responded_at


def test_serverless_mode_is_bounded_by_settle_timeout(
    fake: FakeLinePlatform,
    new_handler: HandlerFactory,
    driver: Driver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.script(TOKEN_MARK_AS_READ_PATH, Fault.hang())
    handler = with_text_handler(
        new_handler(
            wait_timeout=0.05, request_timeout=20.0, settle_before_return=True, settle_timeout=0.3
        )
    )
    webhook = webhooks(text_event())
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="line_markread"):
        driver.handle(handler, webhook.body, webhook.signature)
    assert time.monotonic() - began < 10.0  # cut at 0.3 s, not at the 20 s request timeout
    assert fake.requests()[0].responded_at is None  # still hanging: the mark was cut, not settled
    assert "still had a mark in progress after settle_timeout" in caplog.text
    driver.close(handler, grace=0.0)


def test_serverless_mode_with_nothing_to_mark_returns_at_once(
    fake: FakeLinePlatform, new_handler: HandlerFactory, driver: Driver
) -> None:
    handler = new_handler(settle_before_return=True)
    webhook = webhooks(sticker_event())  # no handler: not marked (mark_unhandled is off)
    began = time.monotonic()
    driver.handle(handler, webhook.body, webhook.signature)
    assert time.monotonic() - began < 5.0
    assert fake.requests() == []


@attrs.frozen
class _BackgroundRoute(Route):
    """A route as the slow-handlers option registers it (``add(..., background=True)``)."""

    background: bool = True


@pytest.mark.parametrize("settle", [True, False], ids=["settle", "default"])
def test_serverless_mode_refuses_background_handlers_before_any_request(
    fake: FakeLinePlatform, new_handler: HandlerFactory, driver: Driver, settle: bool
) -> None:
    ran: list[str] = []
    handler = with_text_handler(new_handler(settle_before_return=settle), ran=ran)
    key = route_key(MessageEvent, TextMessageContent)
    route = handler._markread_routes[key]
    handler._markread_routes[key] = _BackgroundRoute(
        route.func, route.policy, route.arity, route.is_async
    )
    webhook = webhooks(text_event("hi"))
    if settle:
        with pytest.raises(ValueError, match=r"background.*settle_before_return"):
            driver.handle(handler, webhook.body, webhook.signature)
        assert (ran, fake.requests()) == ([], [])
    else:
        driver.handle(handler, webhook.body, webhook.signature)
        driver.close(handler)  # a background handler runs after handle(); close drains it
        assert ran == ["hi"]


def test_settle_options_are_validated() -> None:
    with pytest.raises(TypeError, match="settle_before_return"):
        WebhookHandler(SECRET, access_token="t", settle_before_return=1)
    with pytest.raises(ValueError, match="settle_timeout"):
        WebhookHandler(SECRET, access_token="t", settle_timeout=0)


# -- AWS Lambda --------------------------------------------------------------------


def _rest_api_v1(body: str, headers: dict[str, str], method: str = "POST") -> dict[str, Any]:
    """An API Gateway REST API (payload 1.0) proxy event, as AWS documents it."""
    return {
        "resource": "/callback",
        "path": "/callback",
        "httpMethod": method,
        "headers": {"Host": "abc123.execute-api.ap-northeast-1.amazonaws.com", **headers},
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "httpMethod": method,
            "path": "/prod/callback",
            "protocol": "HTTP/1.1",
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "resourcePath": "/callback",
            "stage": "prod",
            "identity": {"sourceIp": "147.92.150.192", "userAgent": "LineBotWebhook/2.0"},
        },
        "body": body,
        "isBase64Encoded": False,
    }


def _http_api_v2(
    body: str, headers: dict[str, str], *, base64_body: bool, method: str = "POST"
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event: lower-case headers, maybe base64."""
    return {
        "version": "2.0",
        "routeKey": "POST /callback",
        "rawPath": "/callback",
        "rawQueryString": "",
        "headers": {"host": "abc123.execute-api.ap-northeast-1.amazonaws.com"}
        | {k.lower(): v for k, v in headers.items()},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.ap-northeast-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {
                "method": method,
                "path": "/callback",
                "protocol": "HTTP/1.1",
                "sourceIp": "147.92.150.192",
                "userAgent": "LineBotWebhook/2.0",
            },
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": "POST /callback",
            "stage": "$default",
            "time": "28/Nov/2026:00:00:00 +0000",
            "timeEpoch": 1795824000000,
        },
        "body": base64.b64encode(body.encode()).decode() if base64_body else body,
        "isBase64Encoded": base64_body,
    }


def _function_url(body: str, headers: dict[str, str], *, base64_body: bool) -> dict[str, Any]:
    """A Lambda Function URL event: payload 2.0 with ``routeKey`` ``$default``."""
    event = _http_api_v2(body, headers, base64_body=base64_body)
    event["routeKey"] = event["requestContext"]["routeKey"] = "$default"
    event["requestContext"]["domainName"] = "abcdefg.lambda-url.ap-northeast-1.on.aws"
    event["requestContext"]["apiId"] = event["requestContext"]["domainPrefix"] = "abcdefg"
    return event


SHAPES: dict[str, Callable[[str, dict[str, str]], dict[str, Any]]] = {
    "rest-v1": _rest_api_v1,
    "http-v2": lambda body, headers: _http_api_v2(body, headers, base64_body=False),
    "http-v2-base64": lambda body, headers: _http_api_v2(body, headers, base64_body=True),
    "function-url": lambda body, headers: _function_url(body, headers, base64_body=False),
    "function-url-base64": lambda body, headers: _function_url(body, headers, base64_body=True),
}


@pytest.fixture
def lambda_handler(fake: FakeLinePlatform) -> Iterator[line_markread.aws_lambda.LambdaHandler]:
    handler = WebhookHandler(
        SECRET, configuration=fake.configuration(), settle_before_return=True, wait_timeout=0.05
    )
    with_text_handler(handler)
    yield line_markread.aws_lambda.lambda_handler(handler)
    handler.close()


@pytest.mark.usefixtures("no_backoff")
@pytest.mark.parametrize("shape", SHAPES)
def test_lambda_answers_every_event_shape_with_its_marks_settled(
    fake: FakeLinePlatform, lambda_handler: line_markread.aws_lambda.LambdaHandler, shape: str
) -> None:
    fake.script(TOKEN_MARK_AS_READ_PATH, *SLOW_RETRY)
    event = text_event("こんにちは")  # non-ASCII: base64 and UTF-8 both matter
    webhook = webhooks(event)

    response = lambda_handler(SHAPES[shape](webhook.body, webhook.headers), None)
    returned = time.monotonic()

    assert response == {
        "statusCode": 200,
        "headers": {"Content-Type": "text/plain; charset=utf-8"},
        "body": "OK\n",
        "isBase64Encoded": False,
    }
    # Everything the body needed was over before the function returned (Lambda
    # freezes the process right then).
    assert all(r.responded_at is not None and r.responded_at < returned for r in fake.requests())
    assert [r.status for r in fake.mark_requests()] == [503, 200]
    assert fake.marked_tokens() == [event["message"]["markAsReadToken"]]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("headers", "text"),
    [
        pytest.param({"X-Line-Signature": "bm90IHRoZSBzaWduYXR1cmU="}, "Invalid signature\n"),
        pytest.param({}, "Missing signature\n"),
    ],
    ids=["bad", "missing"],
)
def test_lambda_answers_400_to_a_bad_signature(
    fake: FakeLinePlatform,
    lambda_handler: line_markread.aws_lambda.LambdaHandler,
    shape: str,
    headers: dict[str, str],
    text: str,
) -> None:
    webhook = webhooks(text_event())
    response = lambda_handler(SHAPES[shape](webhook.body, headers), None)
    assert (response["statusCode"], response["body"]) == (400, text)
    assert fake.requests() == []


@pytest.mark.parametrize(
    "event",
    [
        pytest.param({"Records": [{"eventSource": "aws:sqs"}]}, id="sqs"),
        pytest.param({"body": 42, "httpMethod": "POST"}, id="body-not-text"),
        pytest.param(
            {"body": "***", "isBase64Encoded": True, "headers": {"x-line-signature": "x"}},
            id="bad-base64",
        ),
    ],
)
def test_lambda_answers_400_to_an_event_that_is_not_a_webhook(
    fake: FakeLinePlatform,
    lambda_handler: line_markread.aws_lambda.LambdaHandler,
    event: dict[str, Any],
) -> None:
    response = lambda_handler(event, None)
    assert response["statusCode"] == 400
    assert fake.requests() == []


def test_lambda_finds_the_signature_in_multi_value_headers_alone(
    fake: FakeLinePlatform, lambda_handler: line_markread.aws_lambda.LambdaHandler
) -> None:
    """REST APIs may deliver ``headers: null`` with the values in ``multiValueHeaders``."""
    event = text_event()
    webhook = webhooks(event)
    shape = _rest_api_v1(webhook.body, webhook.headers)
    shape["headers"] = None
    shape["multiValueHeaders"] = {"x-line-signature": [webhook.signature]}
    assert lambda_handler(shape, None)["statusCode"] == 200
    assert fake.marked_tokens() == [event["message"]["markAsReadToken"]]


def test_lambda_answers_405_to_other_methods(
    fake: FakeLinePlatform, lambda_handler: line_markread.aws_lambda.LambdaHandler
) -> None:
    webhook = webhooks(text_event())
    for event in (
        _rest_api_v1(webhook.body, webhook.headers, method="GET"),
        _http_api_v2(webhook.body, webhook.headers, base64_body=False, method="GET"),
    ):
        assert lambda_handler(event, None)["statusCode"] == 405
    assert fake.requests() == []


def test_lambda_refuses_a_handler_without_serverless_mode() -> None:
    with (
        WebhookHandler(SECRET, access_token="t") as handler,
        pytest.raises(ValueError, match="settle_before_return=True"),
    ):
        line_markread.aws_lambda.lambda_handler(handler)


# -- Django (in-process; the example runs as a real server in test_examples) --------------


@pytest.fixture(scope="module")
def django_settings() -> None:
    from django.conf import settings  # noqa: PLC0415  # Django tests configure it once

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["testserver"],
            ROOT_URLCONF=__name__,
            SECRET_KEY="not-a-secret-tests-only",
            MIDDLEWARE=[
                "django.middleware.common.CommonMiddleware",
                "django.middleware.csrf.CsrfViewMiddleware",
            ],
        )
        import django  # noqa: PLC0415

        django.setup()


urlpatterns: list[Any] = []
"""This module is the test URLconf: each test puts its route here."""


def _django_post(body: str | None, headers: dict[str, str], *, method: str = "post") -> Any:
    from django.test import Client  # noqa: PLC0415  # needs settings

    client = Client(enforce_csrf_checks=True)
    if method == "get":
        return client.get("/callback", headers=headers)
    return client.post("/callback", data=body, content_type="application/json", headers=headers)


@pytest.mark.usefixtures("django_settings")
def test_django_sync_view_marks_before_the_handler_and_maps_errors(
    fake: FakeLinePlatform,
) -> None:
    import line_markread.django  # noqa: PLC0415  # needs settings

    with WebhookHandler(SECRET, configuration=fake.configuration()) as handler:
        with_text_handler(handler)
        urlpatterns[:] = [line_markread.django.webhook_route(handler)]
        event = text_event()
        webhook = webhooks(event)

        ok = _django_post(webhook.body, webhook.headers)
        bad = _django_post(webhook.body, {"X-Line-Signature": "bm90"})
        missing = _django_post(webhook.body, {})
        not_post = _django_post(None, webhook.headers, method="get")

    assert (ok.status_code, ok.content) == (200, b"OK\n")  # no CSRF token needed
    assert (bad.status_code, bad.content) == (400, b"Invalid signature\n")
    assert (missing.status_code, missing.content) == (400, b"Missing signature\n")
    assert not_post.status_code == 405
    assert fake.marked_tokens() == [event["message"]["markAsReadToken"]]


@pytest.mark.usefixtures("django_settings")
async def test_django_async_view_awaits_handle_async(fake: FakeLinePlatform) -> None:
    from django.test import AsyncClient  # noqa: PLC0415

    import line_markread.django  # noqa: PLC0415  # needs settings

    ran: list[str] = []
    handler = WebhookHandler(SECRET, configuration=fake.configuration())

    @handler.add(MessageEvent, message=TextMessageContent)
    async def on_text(event: Any) -> None:
        ran.append(event.message.text)

    urlpatterns[:] = [line_markread.django.webhook_route(handler, asynchronous=True)]
    event = text_event("async")
    webhook = webhooks(event)
    client = AsyncClient(enforce_csrf_checks=True)
    try:
        response = await client.post(
            "/callback", data=webhook.body, content_type="application/json", headers=webhook.headers
        )
        bad = await client.post(
            "/callback",
            data=webhook.body,
            content_type="application/json",
            headers={"X-Line-Signature": "eA=="},
        )
    finally:
        await handler.aclose()
    assert (response.status_code, bad.status_code) == (200, 400)
    assert ran == ["async"]  # an async handler: only handle_async() can run it
    assert fake.marked_tokens() == [event["message"]["markAsReadToken"]]


# -- tracing -----------------------------------------------------------------------------


def test_a_webhooks_trace_contains_its_marks_http_spans(
    fake: FakeLinePlatform, new_handler: HandlerFactory, driver: Driver
) -> None:
    from opentelemetry.instrumentation.aiohttp_client import (  # noqa: PLC0415  # dev extra
        AioHttpClientInstrumentor,
    )
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: PLC0415
        InMemorySpanExporter,
    )

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer(__name__)
    instrumentor = AioHttpClientInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        handler = with_text_handler(new_handler())
        first, second = webhooks(text_event()), webhooks(text_event())

        def sync_webhook(body: str, signature: str) -> None:
            with tracer.start_as_current_span("webhook"):
                handler.handle(body, signature)
            handler.marker.flush()

        async def async_webhook(body: str, signature: str) -> None:
            with tracer.start_as_current_span("webhook"):
                await handler.handle_async(body, signature)
            await handler.marker.aflush()

        for webhook in (first, second):
            if isinstance(driver, AsyncDriver):
                driver.run(async_webhook(webhook.body, webhook.signature))
            else:
                sync_webhook(webhook.body, webhook.signature)
    finally:
        instrumentor.uninstrument()

    spans = exporter.get_finished_spans()
    roots = [s for s in spans if s.name == "webhook"]
    marks = [
        s
        for s in spans
        if TOKEN_MARK_AS_READ_PATH
        in str((s.attributes or {}).get("url.full", (s.attributes or {}).get("http.url", "")))
    ]
    assert len(roots) == 2
    assert len(marks) == 2, [(s.name, s.attributes) for s in spans]
    for root, mark in zip(roots, marks, strict=True):
        assert root.context is not None
        assert mark.context is not None
        assert mark.context.trace_id == root.context.trace_id  # one trace per webhook
        assert mark.parent is not None
        assert mark.parent.span_id == root.context.span_id


# -- newer SDK events ---------------------------------------------------------------------


def _message_edited(group_id: str) -> dict[str, Any]:
    """A ``messageEdited`` event (SDK 3.25+, group chats): it carries the edited message."""
    edited = text_event("edited text", group_id=group_id)
    return {**edited, "type": "messageEdited"}


def test_message_edited_events_are_not_marked_and_their_handler_runs(
    fake: FakeLinePlatform, new_handler: HandlerFactory, driver: Driver
) -> None:
    group = "C" + "0" * 32
    ran: list[str] = []
    handler = with_text_handler(new_handler(mark_unhandled=True), ran=ran)

    @handler.add(MessageEditedEvent)
    def on_edit(event: Any) -> None:
        assert isinstance(event, MessageEditedEvent)
        ran.append("edited: " + event.message.text)

    edited = _message_edited(group)
    message = text_event("new", group_id=group)
    webhook = webhooks(edited, message)
    driver.handle(handler, webhook.body, webhook.signature)

    assert ran == ["edited: edited text", "new"]
    # An edit is not a new message: only the message event is marked.
    assert fake.marked_tokens() == [message["message"]["markAsReadToken"]]
    assert handler.stats().skipped == 0  # not a message event at all, like a follow


def test_an_unhandled_message_edited_event_is_not_marked(
    fake: FakeLinePlatform, new_handler: HandlerFactory, driver: Driver
) -> None:
    handler = new_handler(mark_unhandled=True)
    webhook = webhooks(_message_edited("C" + "1" * 32))
    driver.handle(handler, webhook.body, webhook.signature)
    assert fake.requests() == []


# -- several processes: see test_examples for the real thing; the engine's part here ------


def test_two_handlers_marking_the_same_chat_both_hold_read_before_reply(
    fake: FakeLinePlatform, new_handler: HandlerFactory, driver: Driver
) -> None:
    """Two replicas share nothing but LINE: each marks its own bodies, LINE takes both."""
    user = "U" + "2" * 32
    one, two = new_handler(), new_handler()
    replied: list[str] = []
    for handler in (one, two):

        @handler.add(MessageEvent, message=TextMessageContent)
        def on_text(event: Any) -> None:
            replied.append(event.message.mark_as_read_token)

    events = [text_event(f"m{n}", user_id=user) for n in range(6)]
    for n, event in enumerate(events):
        webhook = webhooks(event)
        driver.handle(one if n % 2 else two, webhook.body, webhook.signature)
    assert replied == [e["message"]["markAsReadToken"] for e in events]
    assert sorted(fake.marked_tokens()) == sorted(replied)  # no replica skipped another's message
