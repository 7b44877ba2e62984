"""Planning from the webhook JSON (issue 13): the SDK's routes, and nothing sent too early.

The handler sends the mark-as-read requests before the SDK's models are
built, choosing each event's handler from the JSON (``_shapes.predict``).
These tests hold that choice to the SDK: over realistic events of every kind,
mutated by hypothesis (keys dropped, values replaced by arbitrary JSON),

(a) whenever ``predict`` answers, it names exactly the classes the SDK's
    parse makes (and it answers for every unmutated shape, so the fast path
    is really taken);
(b) over real HTTP, a body the SDK would reject is rejected before any
    request reaches the fake platform, and otherwise every handler runs with
    exactly the model and the route the SDK's own parse would give, and no
    request carries a token that the SDK-parsed plan would not mark.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from linebot.v3 import WebhookParser
from linebot.v3.models.events import UnknownEvent
from linebot.v3.webhooks import (
    FollowEvent,
    ImageMessageContent,
    MessageEvent,
    PostbackEvent,
    StickerMessageContent,
    TextMessageContent,
)

import line_markread._dispatch as dispatch
from line_markread import WebhookBodyError, WebhookHandler
from line_markread._body import build_event
from line_markread._dispatch import Route, decide, find_route
from line_markread._settings import Settings
from line_markread._shapes import predict
from line_markread._targets import ReadTarget, read_target
from line_markread.testing import (
    FakeLinePlatform,
    follow_event,
    image_event,
    message_event,
    postback_event,
    signed_body,
    sticker_event,
    text_event,
    unfollow_event,
)

from .support import SECRET, AsyncDriver, Driver, SyncDriver


def _base_events() -> list[tuple[dict[str, Any], tuple[str, str | None]]]:
    """One event of each shape a bot meets, with the classes the SDK makes of it."""
    emoji = {"index": 0, "length": 6, "productId": "p", "emojiId": "e"}
    mention = {"mentionees": [{"index": 0, "length": 4, "type": "user", "userId": "U1"}]}
    text_rich = text_event("$hello @bob", group_id="G1", user_id="U1")
    text_rich["message"].update(emojis=[emoji], mention=mention, quotedMessageId="42")
    sticker_text = sticker_event(user_id="U2")
    sticker_text["message"].update(text="hi", keywords=["a", "b"])
    location = message_event(
        {"type": "location", "latitude": 35.6, "longitude": 139.7, "markAsReadToken": "t"},
        room_id="R1",
    )
    future_message = message_event({"type": "hologram", "markAsReadToken": "t"}, user_id="U3")
    future_event = follow_event(user_id="U4")
    future_event["type"] = "teleport"
    return [
        (text_event("hi", user_id="U1"), ("MessageEvent", "TextMessageContent")),
        (text_event("hi", group_id="G1"), ("MessageEvent", "TextMessageContent")),
        (text_event("hi", room_id="R1", mode="standby"), ("MessageEvent", "TextMessageContent")),
        (text_rich, ("MessageEvent", "TextMessageContent")),
        (sticker_event(user_id="U2"), ("MessageEvent", "StickerMessageContent")),
        (sticker_text, ("MessageEvent", "StickerMessageContent")),
        (image_event(user_id="U2"), ("MessageEvent", "ImageMessageContent")),
        (location, ("MessageEvent", "LocationMessageContent")),
        (future_message, ("UnknownEvent", None)),
        (follow_event(user_id="U5"), ("FollowEvent", None)),
        (unfollow_event(user_id="U5"), ("UnfollowEvent", None)),
        (postback_event("a=1", user_id="U6"), ("PostbackEvent", None)),
        (future_event, ("UnknownEvent", None)),
    ]


BASE = _base_events()


def _classes(model: Any) -> tuple[str, str | None]:
    message = type(model.message).__name__ if isinstance(model, MessageEvent) else None
    return type(model).__name__, message


def _sdk_parse(raw: dict[str, Any]) -> tuple[str, str | None] | None:
    """The SDK's own WebhookParser on a body of *raw*; None if it raises."""
    body = json.dumps({"destination": "Ubot", "events": [raw]})
    try:
        events = WebhookParser(SECRET, lambda: True).parse(body, "")
    except Exception:  # the SDK's parser raises whatever the models raise
        return None
    return _classes(events[0])


@pytest.mark.parametrize(
    ("raw", "expected"), BASE, ids=[e[1][0] + str(i) for i, e in enumerate(BASE)]
)
def test_every_common_shape_is_predicted_as_the_sdk_parses_it(
    raw: dict[str, Any], expected: tuple[str, str | None]
) -> None:
    assert _sdk_parse(raw) == expected
    assert _classes(build_event(raw)) == expected
    assert predict(raw) == expected


JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [
            "",
            "text",
            "image",
            "sticker",
            "message",
            "follow",
            "user",
            "group",
            "active",
            "standby",
            "STATIC",
            "hologram",
            "U1",
        ]
    ),
    st.text(max_size=5),
)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield (*prefix, index)
            yield from _paths(item, (*prefix, index))


@st.composite
def event_shapes(draw: st.DrawFn) -> dict[str, Any]:
    """A realistic event, then up to three mutations: a key dropped or a value replaced."""
    raw: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(BASE))[0])
    for _ in range(draw(st.integers(0, 3))):
        paths = list(_paths(raw))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = raw
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON_VALUE)
    if draw(st.booleans()):  # an extra key, as LINE adds fields over time
        raw[draw(st.sampled_from(["newField", "webhook_event_id", "delivery_context"]))] = draw(
            JSON_VALUE
        )
    return raw


REPLACEMENTS: list[Any] = [
    None,
    True,
    False,
    0,
    7,
    1.5,
    "",
    "x",
    "text",
    [],
    [1],
    {},
    {"type": "user"},
]
_DELETE = object()


def _single_mutations() -> Iterator[dict[str, Any]]:
    """Every event of BASE with one key removed or one value swapped for another JSON type."""
    for raw, _ in BASE:
        for path in _paths(raw):
            for replacement in [_DELETE, *REPLACEMENTS]:
                mutated = copy.deepcopy(raw)
                parent: Any = mutated
                for step in path[:-1]:
                    parent = parent[step]
                if replacement is _DELETE:
                    if not isinstance(parent, dict):
                        continue
                    del parent[path[-1]]
                else:
                    parent[path[-1]] = replacement
                yield mutated


def test_every_single_mutation_is_predicted_soundly() -> None:
    """Exhaustive over one change at a time; the hypothesis test below combines up to three."""
    predicted = 0
    for raw in _single_mutations():
        reference = _reference(raw)
        guess = predict(raw)
        if guess is not None:
            predicted += 1
            assert guess == reference, raw
    assert predicted > 100  # the fast path covers harmless changes (extra or optional fields)


def _reference(raw: dict[str, Any]) -> tuple[str, str | None] | None:
    """The classes the plugin's SDK-model path makes of *raw* (None: it rejects the body)."""
    try:
        return _classes(build_event(raw))
    except WebhookBodyError:
        return None


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_shapes())
def test_a_prediction_is_always_the_sdk_parse(raw: dict[str, Any]) -> None:
    reference = _reference(raw)
    sdk = _sdk_parse(raw)
    if sdk is not None:  # where the SDK's parser copes, the plugin's models are the SDK's
        assert sdk == reference
    predicted = predict(raw)
    if predicted is not None:
        assert reference is not None, "predicted a route for an event the parse rejects"
        assert predicted == reference


# -- over HTTP: routes, models and requests against the SDK-parsed plan ------------------

_tokens = itertools.count()
_lock = threading.Lock()

POLICIES: dict[str, Any] = {
    "MessageEvent_TextMessageContent": True,
    "MessageEvent_StickerMessageContent": False,
    "MessageEvent_ImageMessageContent": lambda event: "nowait",
    "MessageEvent": True,
    "UnknownEvent": lambda event: event.type != "hologram",
    "FollowEvent": True,
}
KEY_CLASSES: dict[str, tuple[type, type | None]] = {
    "MessageEvent_TextMessageContent": (MessageEvent, TextMessageContent),
    "MessageEvent_StickerMessageContent": (MessageEvent, StickerMessageContent),
    "MessageEvent_ImageMessageContent": (MessageEvent, ImageMessageContent),
    "MessageEvent": (MessageEvent, None),
    "UnknownEvent": (UnknownEvent, None),
    "FollowEvent": (FollowEvent, None),
}


def _fresh_tokens(raw: dict[str, Any]) -> dict[str, Any]:
    message = raw.get("message")
    if isinstance(message, dict) and isinstance(message.get("markAsReadToken"), str):
        with _lock:
            message["markAsReadToken"] = f"plan-token-{next(_tokens)}"
    return raw


def _handled_once(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events whose handler runs: a repeated ``webhookEventId`` is handled once."""
    seen: set[str] = set()
    run = []
    for raw in events:
        event_id = raw.get("webhookEventId")
        if isinstance(event_id, str) and event_id:
            if event_id in seen:
                continue
            seen.add(event_id)
        run.append(raw)
    return run


def _expected(events: list[dict[str, Any]]) -> tuple[list[Any], set[bytes]] | None:
    """The plan made the old way (every SDK model first): handler calls and allowed payloads."""
    settings_ = Settings()
    try:
        models = [build_event(raw) for raw in events]
    except WebhookBodyError:
        return None
    routes = {key: Route.of(_recorder(key), policy) for key, policy in POLICIES.items()}
    default = Route.of(_recorder("default"), "nowait")
    calls, payloads = [], set()
    run = _handled_once(events)
    for raw, model in zip(events, models, strict=True):
        route = find_route(routes, default, model)
        assert route is not None
        if any(raw is r for r in run):
            calls.append((route.func.__name__, _classes(model)))
        target = read_target(raw, mode="auto", mark_standby=False)
        if isinstance(target, ReadTarget) and decide(route, model, settings_) is not False:
            payloads.add(target.payload())
    return calls, payloads


def _keeper(seen: list[Any]) -> Any:
    def keep(event: Any) -> None:
        seen.append(event)

    return keep


def _recorder(name: str, seen: list[Any] | None = None) -> Any:
    def record(event: Any) -> None:
        if seen is not None:
            seen.append((name, _classes(event), event))

    record.__name__ = name
    return record


@pytest.fixture(scope="module")
def platform() -> Iterator[FakeLinePlatform]:
    with FakeLinePlatform() as fake:
        yield fake


@pytest.mark.parametrize("path", ["sync", "async"])
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(events=st.lists(event_shapes(), min_size=1, max_size=4))
def test_handlers_and_requests_match_the_sdk_parsed_plan(
    platform: FakeLinePlatform, path: str, events: list[dict[str, Any]]
) -> None:
    events = [_fresh_tokens(copy.deepcopy(raw)) for raw in events]
    expected = _expected(events)
    platform.reset()
    driver: Driver = SyncDriver() if path == "sync" else AsyncDriver()
    seen: list[Any] = []
    handler = WebhookHandler(SECRET, configuration=platform.configuration())
    try:
        for key, policy in POLICIES.items():
            event_class, message_class = KEY_CLASSES[key]
            handler.add(event_class, message_class, mark_as_read=policy)(_recorder(key, seen))
        handler.default(mark_as_read="nowait")(_recorder("default", seen))
        body, signature = signed_body(*events, channel_secret=SECRET)
        if expected is None:
            with pytest.raises(WebhookBodyError):
                driver.handle(handler, body, signature)
            driver.close(handler)
            assert platform.requests() == [], "a request left for a body the SDK rejects"
            return
        driver.handle(handler, body, signature)
        driver.close(handler)
    finally:
        if not handler.marker.closed:
            driver.close(handler)
        driver.finish()
    calls, allowed = expected
    assert [(name, classes) for name, classes, _ in seen] == calls
    for (_, _, model), raw in zip(seen, _handled_once(events), strict=True):
        assert model == build_event(raw)  # the SDK's own model, equal field by field
    sent = {record.raw_body for record in platform.mark_requests()}
    assert sent <= allowed
    assert bool(sent) == bool(allowed)


# -- where the model is built: before the decision, or after the request has left ----------


def test_a_body_with_one_event_the_sdk_rejects_sends_nothing(
    fake: FakeLinePlatform, driver: Driver
) -> None:
    handler = WebhookHandler(SECRET, configuration=fake.configuration())
    ran: list[str] = []
    handler.add(MessageEvent, TextMessageContent)(lambda event: ran.append(event.message.text))
    broken = {"type": "message", "timestamp": "yesterday"}  # not even an UnknownEvent
    body, signature = signed_body(text_event("first", user_id="U1"), broken, channel_secret=SECRET)
    with pytest.raises(WebhookBodyError):
        driver.handle(handler, body, signature)
    driver.close(handler)
    assert fake.requests() == []
    assert ran == []


def test_a_callable_policy_gets_the_sdk_model(fake: FakeLinePlatform, driver: Driver) -> None:
    handler = WebhookHandler(SECRET, configuration=fake.configuration())
    asked: list[Any] = []

    def policy(event: Any) -> bool:
        asked.append(event)
        return bool(event.message.text != "private")

    handler.add(MessageEvent, TextMessageContent, mark_as_read=policy)(lambda event: None)
    events = [text_event("hello", user_id="U1"), text_event("private", user_id="U2")]
    body, signature = signed_body(*events, channel_secret=SECRET)
    driver.handle(handler, body, signature)
    driver.close(handler)
    assert [type(e) for e in asked] == [MessageEvent, MessageEvent]
    assert [e.message.text for e in asked] == ["hello", "private"]
    assert fake.marked_tokens() == [events[0]["message"]["markAsReadToken"]]


def test_the_request_is_on_the_wire_before_the_models_are_built(
    fake: FakeLinePlatform, driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The point of issue 13: the model is built after the request has reached LINE."""
    handler = WebhookHandler(SECRET, configuration=fake.configuration())
    handler.add(MessageEvent, TextMessageContent)(lambda event: None)
    requests_at_build: list[int] = []
    real_build = build_event

    def build_after_arrival(raw: dict[str, Any]) -> Any:
        # Blocks this thread (on the async path, the event loop itself): if the request
        # had not been written yet, it never would be, and this times out.
        requests_at_build.append(len(fake.wait_for_requests(1, completed=False, timeout=5)))
        return real_build(raw)

    # A first body opens the keep-alive connection (connecting takes loop iterations).
    driver.handle(handler, *signed_body(text_event("warm", user_id="U0"), channel_secret=SECRET))
    fake.wait_for_requests(1)
    monkeypatch.setattr(dispatch, "build_event", build_after_arrival)
    event = text_event("hi", user_id="U1")
    body, signature = signed_body(event, channel_secret=SECRET)
    fake.reset()
    driver.handle(handler, body, signature)
    driver.close(handler)
    assert requests_at_build == [1]  # built once, after the request reached the platform
    assert fake.marked_tokens() == [event["message"]["markAsReadToken"]]


def test_an_event_the_prediction_cannot_vouch_for_is_built_before_anything_is_sent(
    fake: FakeLinePlatform, driver: Driver
) -> None:
    """A float timestamp: the SDK falls back to UnknownEvent... and then cannot build even that."""
    handler = WebhookHandler(SECRET, configuration=fake.configuration())
    seen: list[Any] = []
    handler.add(MessageEvent, TextMessageContent)(_keeper(seen))
    handler.default()(_keeper(seen))
    odd = text_event("odd", user_id="U1")
    odd["message"]["emojis"] = "not a list"  # the SDK rejects the message: UnknownEvent
    assert predict(odd) is None or predict(odd) == ("UnknownEvent", None)
    body, signature = signed_body(odd, channel_secret=SECRET)
    driver.handle(handler, body, signature)
    driver.close(handler)
    assert [type(e) for e in seen] == [UnknownEvent]
    assert fake.marked_tokens() == [odd["message"]["markAsReadToken"]]


def test_postback_and_follow_run_their_handlers_with_the_sdk_models(
    fake: FakeLinePlatform, driver: Driver
) -> None:
    handler = WebhookHandler(SECRET, configuration=fake.configuration())
    seen: list[Any] = []
    handler.add(PostbackEvent)(_keeper(seen))
    handler.add(FollowEvent)(_keeper(seen))
    events = [postback_event("a=1", user_id="U1"), follow_event(user_id="U2")]
    body, signature = signed_body(*events, channel_secret=SECRET)
    driver.handle(handler, body, signature)
    driver.close(handler)
    assert seen == [build_event(raw) for raw in events]
    assert fake.requests() == []


def test_a_message_whose_source_type_is_not_a_string_is_refused_cleanly(
    fake: FakeLinePlatform, driver: Driver
) -> None:
    """Targets are read from the JSON before any model exists: odd JSON must not crash there."""
    handler = WebhookHandler(SECRET, configuration=fake.configuration())
    odd = text_event("hi", user_id="U1")
    odd["source"]["type"] = ["user"]  # unhashable: looking it up must not raise TypeError
    body, signature = signed_body(text_event("ok", user_id="U2"), odd, channel_secret=SECRET)
    with pytest.raises(WebhookBodyError):
        driver.handle(handler, body, signature)
    driver.close(handler)
    assert fake.requests() == []


def test_handle_refuses_an_async_handler_of_a_body_with_nothing_to_mark(
    fake: FakeLinePlatform,
) -> None:
    """Routes are known before anything runs, even for events whose model is built later."""
    handler = WebhookHandler(SECRET, configuration=fake.configuration())
    ran: list[Any] = []

    async def on_follow(event: Any) -> None:
        ran.append(event)

    handler.add(FollowEvent)(on_follow)
    body, signature = signed_body(follow_event(user_id="U1"), channel_secret=SECRET)
    with pytest.raises(TypeError, match="is a coroutine function"):
        handler.handle(body, signature)
    handler.close()
    assert ran == []


def test_handle_refuses_an_async_handler_before_any_mark_is_sent(fake: FakeLinePlatform) -> None:
    handler = WebhookHandler(SECRET, configuration=fake.configuration())

    async def on_follow(event: Any) -> None:
        pass

    handler.add(MessageEvent, TextMessageContent)(_keeper([]))
    handler.add(FollowEvent)(on_follow)
    events = [text_event("hi", user_id="U1"), follow_event(user_id="U2")]
    body, signature = signed_body(*events, channel_secret=SECRET)
    with pytest.raises(TypeError, match="is a coroutine function"):
        handler.handle(body, signature)
    handler.close()
    assert fake.requests() == []
