"""Raw webhook JSON -> the SDK classes it becomes, decided without building the models.

``handle()`` sends the mark-as-read requests before the SDK's pydantic models
are built (they cost more than anything else per event), so the handler key
(``MessageEvent_TextMessageContent``, ``FollowEvent``, ``UnknownEvent``...)
must be known from the JSON.  ``predict`` answers with the class names the
SDK's own parse would pick, using the SDK's own tables (the public
``get_discriminator_value`` of ``Event``, ``Source``, ``MessageContent``...)
and the models' pydantic field declarations, or answers ``None`` when it
cannot be sure.  It is deliberately one-sided: a prediction is only made when
every field the SDK would validate is checked to pass (or, for
``UnknownEvent``, when the SDK's lookup certainly fails), so a ``None`` costs
only speed (the caller builds that model before sending anything), never a
wrong route.  tests/test_planning.py compares it with the SDK over generated
event shapes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import linebot.v3.webhooks.models as sdk_models
from linebot.v3.models.events import UnknownEvent
from linebot.v3.utils import to_snake_case
from linebot.v3.webhooks import Event, MessageContent
from pydantic.v1 import BaseModel, ConstrainedStr, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic.v1.fields import SHAPE_LIST, SHAPE_SINGLETON

Check = Callable[[Any], bool]
Prediction = tuple[str, str | None]
"""The event class name and, for a ``MessageEvent``, the message content class name."""

_MISSING = object()
_FROM_DICT, _INIT = "from_dict", "init"
"""How the SDK builds a model: its generated ``from_dict`` (known events, which
dispatch on ``type`` at each polymorphic level), or pydantic's constructor on
plain dicts (``UnknownEvent.new_from_json_dict``)."""

_specs: dict[tuple[type, str], tuple[tuple[str, str, bool, bool, Check], ...] | None] = {}


def predict(raw: Mapping[str, Any]) -> Prediction | None:
    """The classes the SDK's ``WebhookParser`` makes of the event *raw*, or ``None`` if unsure."""
    try:
        name = Event.get_discriminator_value(raw)
    except Exception:  # no or an unhashable 'type': the SDK fails too; unsure
        return None
    if name is not None:
        cls = getattr(sdk_models, name, None)
        if cls is None:
            return None
        if _valid(cls, raw, _FROM_DICT):
            if name != "MessageEvent":
                return name, None
            return name, MessageContent.get_discriminator_value(raw["message"])
        if not (name == "MessageEvent" and _unknown_message_type(raw.get("message"))):
            return None
    # Event.from_dict raises ValueError for certain: the SDK falls back to UnknownEvent.
    return ("UnknownEvent", None) if _unknown_event_valid(raw) else None


def _unknown_message_type(message: object) -> bool:
    """A message whose ``type`` the SDK has no class for: ``MessageContent.from_dict`` raises."""
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return False
    return MessageContent.get_discriminator_value(message) is None


def _unknown_event_valid(raw: Mapping[str, Any]) -> bool:
    """Whether ``UnknownEvent.new_from_json_dict(raw)`` certainly succeeds."""
    data = {to_snake_case(key): value for key, value in raw.items()}
    if "__pydantic_self__" in data:  # would clash with BaseModel.__init__'s own parameter
        return False
    return _valid(UnknownEvent, data, _INIT)


def _valid(cls: type, obj: object, mode: str) -> bool:
    """Whether building *cls* from *obj* the SDK's way certainly succeeds."""
    if not isinstance(obj, dict):
        return False
    key = (cls, mode)
    spec = _specs[key] if key in _specs else _specs.setdefault(key, _spec(cls, mode))
    if spec is None:
        return False
    if mode == _INIT:
        return _valid_init(spec, obj)
    # The hot path: from_dict passes obj.get(alias) to pydantic, None when missing.
    for alias, _, _, allow_none, check in spec:
        value = obj.get(alias)
        if value is None:
            if not allow_none:
                return False
        elif not check(value):
            return False
    return True


def _valid_init(spec: tuple[tuple[str, str, bool, bool, Check], ...], obj: dict[str, Any]) -> bool:
    """``_valid`` for pydantic's constructor: by alias, then by field name, else the default."""
    for alias, name, required, allow_none, check in spec:
        value = obj.get(alias, _MISSING)
        if value is _MISSING:
            value = obj.get(name, _MISSING)  # allow_population_by_field_name
        if value is _MISSING:
            if required:  # "field required"
                return False
        elif value is None:
            if not allow_none:
                return False
        elif not check(value):
            return False
    return True


def _spec(cls: type, mode: str) -> tuple[tuple[str, str, bool, bool, Check], ...] | None:
    """Per field: its alias, name, whether required, whether None passes, and a value check."""
    if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
        return None
    if cls.__pre_root_validators__ or cls.__post_root_validators__:
        return None
    if not cls.__config__.allow_population_by_field_name:
        return None  # the generated from_dict passes field names
    fields = []
    for field in cls.__fields__.values():
        check = _field_check(cls, field, mode)
        fields.append((field.alias, field.name, bool(field.required), field.allow_none, check))
    return tuple(fields)


def _never(value: object) -> bool:
    return False


def _field_check(cls: type, field: Any, mode: str) -> Check:
    validators: list[Callable[[Any, Any], Any]] = []
    list_validator = False
    for validator in field.class_validators.values():
        if getattr(validator.func, "__name__", "") == "list_length_validator":
            list_validator = True  # conlist's own; its bounds are checked below
            continue
        if validator.pre or validator.each_item or not _takes_value_only(validator.func):
            return _never
        validators.append(validator.func)
    base: Check
    if field.shape == SHAPE_SINGLETON and field.sub_fields and not list_validator:
        # Union[StrictFloat, StrictInt] and the like: pydantic takes the first that passes.
        options = [_field_check(cls, sub, mode) for sub in field.sub_fields]

        def base(value: object) -> bool:
            return any(option(value) for option in options)

    elif field.shape == SHAPE_SINGLETON and not list_validator:
        base = _type_check(field.type_, mode)
    elif field.shape == SHAPE_LIST:
        base = _list_check(field.outer_type_, _type_check(field.type_, mode))
    else:
        return _never
    if not validators:
        return base

    def check(value: object) -> bool:
        if not base(value):
            return False
        for func in validators:
            try:
                func(cls, value)
            except Exception:  # any failure of a validator is "not sure"
                return False
        return True

    return check


def _takes_value_only(func: Callable[..., Any]) -> bool:
    try:
        return len(inspect.signature(func).parameters) == 2  # (cls, value)
    except (TypeError, ValueError):
        return False


def _list_check(outer: Any, item: Check) -> Check:
    min_items = getattr(outer, "min_items", None)
    max_items = getattr(outer, "max_items", None)
    if getattr(outer, "unique_items", None):
        return _never

    def check(value: object) -> bool:
        if not isinstance(value, list):
            return False
        if min_items is not None and len(value) < min_items:
            return False
        if max_items is not None and len(value) > max_items:
            return False
        return all(item(v) for v in value)

    return check


def _type_check(kind: Any, mode: str) -> Check:  # noqa: PLR0911 - one answer per kind of type
    if kind is StrictStr or kind is str:
        return lambda v: isinstance(v, str)
    if kind is StrictInt:
        return lambda v: isinstance(v, int) and v is not True and v is not False
    if kind is StrictBool:
        return lambda v: v is True or v is False
    if kind is StrictFloat:
        return lambda v: isinstance(v, float)
    if isinstance(kind, type) and issubclass(kind, ConstrainedStr):
        return _constrained_str_check(kind)
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return _model_check(kind, mode)
    if isinstance(kind, type) and hasattr(kind, "__members__"):  # enum.Enum or aenum

        def enum_check(value: object) -> bool:
            try:
                kind(value)
            except Exception:  # exactly pydantic's test: the enum accepts it
                return False
            return True

        return enum_check
    return _never


def _constrained_str_check(kind: Any) -> Check:
    if not kind.strict or kind.regex is not None:
        return _never
    low = kind.min_length or 0
    high = kind.max_length

    def check(value: object) -> bool:
        return isinstance(value, str) and low <= len(value) and (high is None or len(value) <= high)

    return check


def _model_check(kind: type, mode: str) -> Check:
    if mode == _INIT:
        return lambda v: _valid(kind, v, _INIT)
    if "get_discriminator_value" not in vars(kind):
        return lambda v: _valid(kind, v, _FROM_DICT)

    def polymorphic(value: object) -> bool:
        # A base class's from_dict dispatches on 'type' like Event's does.
        if not isinstance(value, dict):
            return False
        try:
            name = kind.get_discriminator_value(value)  # type: ignore[attr-defined]  # checked above
        except Exception:  # the SDK would raise too: not sure of anything
            return False
        sub = getattr(sdk_models, name, None) if isinstance(name, str) else None
        return sub is not None and _valid(sub, value, _FROM_DICT)

    return polymorphic
