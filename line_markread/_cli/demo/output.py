"""The demo's output: the timeline and the verdict as text for people, or JSON lines."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import TextIO

import attrs

from .timeline import Entry
from .verdict import Result, Summary


@attrs.frozen
class Style:
    """Colour and aligned columns for a person at a terminal; plain lines for pipes and files."""

    colour: bool
    aligned: bool

    @classmethod
    def for_stream(cls, stream: TextIO) -> Style:
        tty = _isatty(stream)
        plain = bool(os.environ.get("NO_COLOR")) or os.environ.get("TERM") == "dumb"
        return cls(colour=tty and not plain, aligned=tty)

    def paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and code else text


def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed stream
        return False


_BOLD, _DIM, _RED, _GREEN, _YELLOW, _BLUE, _MAGENTA, _CYAN = (
    "1", "2", "31", "32", "33", "34", "35", "36",
)  # fmt: skip


def _answered(entry: Entry) -> tuple[str, str]:
    label, status = entry.message or "?", entry.status
    if status == 200:
        return f"LINE: 200, chat read up to {label}", _GREEN
    colour = _YELLOW if status is None or status >= 500 else _RED
    return f"LINE: {status or entry.detail} for {label}'s mark", colour


def _retry(entry: Entry) -> tuple[str, str]:
    why = entry.status if entry.status is not None else "no answer"
    return f"retry in {entry.delay_ms or 0:.0f} ms after {why}", _YELLOW


_DESCRIPTIONS: Mapping[str, Callable[[Entry], tuple[str, str]]] = {
    "mark-sent": lambda e: (f"mark-as-read sent (attempt {e.attempt})", _CYAN),
    "line-answered": _answered,
    "mark-retry": _retry,
    "mark-superseded": lambda e: (
        "older mark superseded: a newer message of this chat takes over",
        _MAGENTA,
    ),
    "mark-marked": lambda e: ("marked read", _GREEN),
    "mark-failed": lambda e: ("mark-as-read failed for good; the handler runs anyway", _RED),
    "handler": lambda e: (f"{e.detail} for {e.message}", _BOLD),
    "handler-done": lambda e: (f"{e.detail} for {e.message}", _DIM),
    "loading": lambda e: (f"LINE: {e.status}, loading animation shown ({e.detail})", _CYAN),
    "reply": lambda e: (f'reply for {e.message} reached LINE ({e.status}): "{e.detail}"', _BLUE),
    "webhook-answered": lambda e: (e.detail, _DIM),
}


def describe(entry: Entry) -> tuple[str, str]:
    """What a person reads for *entry*, and its colour."""
    how = _DESCRIPTIONS.get(entry.what)
    return how(entry) if how is not None else (entry.detail, _BLUE)


def render_entry(entry: Entry, style: Style, width: int) -> str:
    if entry.what == "scene":
        return "\n" + style.paint(f"== {entry.detail} ==", _BOLD)
    text, colour = describe(entry)
    if not style.aligned:
        return f"{entry.t_ms:.1f}ms {entry.chat} {text}"
    when = style.paint(f"{entry.t_ms:8.1f} ms", _DIM)
    return f"{when}  {entry.chat:<{width}}  {style.paint(text, colour)}"


def render(result: Result, out: TextIO, style: Style) -> None:
    print(
        "line-markread demo: a bot using line_markread and a fake LINE platform, "
        f"on loopback (seed {result.summary.seed})",
        file=out,
    )
    width = max((len(e.chat) for e in result.entries), default=0)
    for entry in result.entries:
        print(render_entry(entry, style, width), file=out)
    print("\n" + style.paint("Guarantees", _BOLD), file=out)
    for check in result.checks:
        verdict = style.paint("PASS", _GREEN) if check.ok else style.paint("FAIL", _RED + ";1")
        print(f"  {verdict}  {check.name}: {check.detail}", file=out)
    print("\n" + summary_line(result.summary), file=out)
    closing = "Every guarantee held." if result.summary.ok else "Some guarantees did NOT hold."
    print(style.paint(closing, _GREEN if result.summary.ok else _RED + ";1"), file=out)


def summary_line(s: Summary) -> str:
    return (
        f"{s.messages} messages, {s.mark_requests} mark-as-read requests "
        f"(one per message would be {s.messages}); read before reply for "
        f"{s.read_before_reply} of {s.read_before_reply_due} replies "
        f"({s.replies - s.read_before_reply_due} exempt: opted out or token rejected); "
        f"{s.checks_passed} of {s.checks} guarantees held; "
        f"the conversation took {s.elapsed_ms:.0f} ms."
    )


def write_json(result: Result, out: TextIO) -> None:
    """One JSON object per line: messages, timeline events, checks, then the summary."""
    records = [
        *(m.to_json() for m in result.messages),
        *(e.to_json() for e in result.entries),
        *(c.to_json() for c in result.checks),
        result.summary.to_json(),
    ]
    for record in records:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    out.flush()
