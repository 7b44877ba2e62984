"""The demo as one self-contained HTML page: what the users saw, and what happened on the wire.

`render_page` is a pure function of the demo's `Result` (the same evidence
the text timeline and ``--json`` come from) to one HTML string: inline CSS
and SVG, no script, no font, no image, nothing fetched, so the file opens
from disk anywhere.  Three parts:

- a phone-like chat view per chat, as LINE shows it to the user: their
  bubbles with "Read" once LINE accepted a mark covering them, the loading
  dots while the bot worked, the bot's answers (a group chat has no "Read"
  per member);
- per scene, a sequence diagram with a lane per party (user, LINE, the
  bot's webhook, the marking engine, the handler), time running left to
  right to scale, retries and error answers in colour, and the ordering
  guarantee drawn as a green arc from LINE's 200 to the reply;
- the guarantee table, pass or fail, as in the text output.

Every piece of text is escaped: message texts come from the demo's cast,
but nothing here trusts that.
"""

from __future__ import annotations

import html
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import attrs

from .timeline import GROUP, MARKED, OPTED_OUT, REJECTED, Entry, Message
from .verdict import Result

BOT_NAME = "Demo Bot"
LANES = ("User", "LINE", "Bot's webhook", "Marking engine", "Handler")
_USER, _LINE, _WEBHOOK, _ENGINE, _HANDLER = range(len(LANES))

# Colours, shared by the legend, the CSS and the diagrams.
OK, RETRY, ERROR, REPLY, LOADING, WEBHOOK, SUPERSEDED, INK = (
    "#06c755", "#f59e0b", "#ef4444", "#3b82f6", "#0891b2", "#64748b", "#a855f7", "#1e293b",
)  # fmt: skip
_COLOURS = (OK, RETRY, ERROR, REPLY, LOADING, WEBHOOK, SUPERSEDED, INK)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _ms(t_ms: float) -> str:
    return f"{t_ms:.0f} ms" if t_ms < 1000 else f"{t_ms / 1000:.2f} s"


def _status_colour(status: int | None) -> str:
    if status is not None and 200 <= status < 300:
        return OK
    if status is None or status >= 500 or status == 429:
        return RETRY
    return ERROR


# -- reading the evidence -------------------------------------------------------


@attrs.frozen
class Scene:
    title: str
    start: float
    end: float
    entries: tuple[Entry, ...]


def scenes(entries: Sequence[Entry]) -> list[Scene]:
    """The timeline cut at each ``scene`` entry (what comes before the first is dropped)."""
    found: list[Scene] = []
    starts = [i for i, e in enumerate(entries) if e.what == "scene"]
    for n, i in enumerate(starts):
        stop = starts[n + 1] if n + 1 < len(starts) else len(entries)
        own = tuple(entries[i + 1 : stop])
        end = max((e.t_ms + (e.delay_ms or 0.0) * (e.what == "loading") for e in own), default=0)
        found.append(Scene(entries[i].detail, entries[i].t_ms, max(end, entries[i].t_ms), own))
    return found


def delivered(entries: Iterable[Entry], messages: Sequence[Message]) -> dict[str, float]:
    """When each message reached the bot: the ``webhook`` entry whose detail names it."""
    labels = {m.label for m in messages}
    at: dict[str, float] = {}
    for entry in entries:
        if entry.what == "webhook":
            for label in re.findall(r"[\w-]+#\d+", entry.detail):
                if label in labels:
                    at.setdefault(label, entry.t_ms)
    return at


def read_at(
    entries: Sequence[Entry], message: Message, messages: Sequence[Message]
) -> float | None:
    """When LINE first answered 200 for *message* or a newer one of its chat: "Read" from then."""
    index = {m.label: m.index for m in messages}
    return next(
        (
            e.t_ms
            for e in entries
            if e.what == "line-answered"
            and e.chat == message.chat
            and e.status == 200
            and index.get(e.message or "", 0) >= message.index
        ),
        None,
    )


# -- the chat views --------------------------------------------------------------


@attrs.frozen
class Bubble:
    t_ms: float
    side: str
    """``me`` (the user, right), ``bot`` (left), ``member`` (group, left), ``dots``."""
    html: str


def _photo() -> str:
    return (
        '<svg class="photo" viewBox="0 0 120 80" width="110" height="72" role="img" '
        'aria-label="photo"><rect width="110" height="72" rx="8" fill="#cbd5e1"/>'
        '<circle cx="88" cy="24" r="10" fill="#fde68a"/>'
        '<path d="M0 80 L40 38 L66 62 L82 48 L120 80 Z" fill="#94a3b8"/></svg>'
    )


def chat_bubbles(result: Result, chat: str) -> list[Bubble]:
    entries, messages = result.entries, result.messages
    at = delivered(entries, messages)
    group = chat == GROUP
    bubbles: list[Bubble] = []
    for message in (m for m in messages if m.chat == chat):
        t = at.get(message.label)
        if t is None:
            continue
        body = _photo() if message.kind == "image" else ""
        text = "" if message.kind == "sticker" else _e(message.text)
        if message.kind == "sticker":
            body = '<span class="sticker" role="img" aria-label="sticker">(ᵔᴥᵔ)</span>'
        content = f"{body}{'<br>' if body and text else ''}{text}"
        when = read_at(entries, message, messages)
        if group:
            name = f'<div class="name">{_e(message.sender)}</div>'
            bubbles.append(
                Bubble(t, "member", f'{name}<div class="bubble">{content}</div>{_stamp(t)}')
            )
            continue
        side_note = _read_note(message, when, t)
        bubbles.append(
            Bubble(
                t,
                "me",
                f'{side_note}<div class="bubble" data-label="{_e(message.label)}">{content}</div>',
            )
        )
    bubbles.extend(_loading_bubbles(entries, chat))
    for reply in (e for e in entries if e.what == "reply" and e.chat == chat):
        name = f'<div class="name">{BOT_NAME}</div>' if group else ""
        bubbles.append(
            Bubble(
                reply.t_ms,
                "bot",
                f'<div class="avatar">B</div><div>{name}<div class="bubble">'
                f"{_e(reply.detail)}</div></div>{_stamp(reply.t_ms)}",
            )
        )
    return sorted(bubbles, key=lambda b: b.t_ms)


def _stamp(t_ms: float) -> str:
    return f'<div class="meta"><span class="time">+{_ms(t_ms)}</span></div>'


def _read_note(message: Message, when: float | None, sent: float) -> str:
    if when is not None:
        note = f'<span class="read">Read</span><span class="time">+{_ms(when)}</span>'
    elif message.expect == OPTED_OUT:
        note = '<span class="time">not marked<br>(opted out)</span>'
    elif message.expect == REJECTED:
        note = '<span class="time unread">token rejected<br>(400)</span>'
    else:
        note = f'<span class="time">+{_ms(sent)}</span>'
    return f'<div class="meta">{note}</div>'


def _loading_bubbles(entries: Sequence[Entry], chat: str) -> Iterator[Bubble]:
    """One dots bubble per stretch of loading starts (refreshes) before the next reply."""
    starts: list[Entry] = []
    for entry in (e for e in entries if e.chat == chat):
        if entry.what == "loading" and entry.status == 202:
            starts.append(entry)
        elif entry.what == "reply" and starts:
            yield _dots(starts, entry.t_ms)
            starts = []
    if starts:
        yield _dots(starts, None)


def _dots(starts: Sequence[Entry], until: float | None) -> Bubble:
    shown = f"{_ms(until - starts[0].t_ms)}" if until is not None else "until it timed out"
    refreshed = f", refreshed {len(starts) - 1} time(s)" if len(starts) > 1 else ""
    return Bubble(
        starts[0].t_ms,
        "dots",
        '<div class="avatar">B</div><div class="bubble loading" role="img" '
        'aria-label="loading animation"><i></i><i></i><i></i></div>'
        f'<div class="meta"><span class="time">loading, shown {shown}{refreshed}</span></div>',
    )


def chat_view(result: Result, chat: str) -> str:
    group = chat == GROUP
    title = f"{_e(chat)} (group)" if group else BOT_NAME
    whose = "a group of alice, bob and carol" if group else f"{_e(chat)}'s phone"
    rows = "".join(f'<div class="row {b.side}">{b.html}</div>' for b in chat_bubbles(result, chat))
    note = (
        '<p class="note">In a group LINE shows a read count to the sender, not a "Read" per '
        "member.</p>"
        if group
        else ""
    )
    return (
        f'<figure class="phone" data-chat="{_e(chat)}"><div class="notch"></div>'
        f'<header><span class="back">&lsaquo;</span>{title}</header>'
        f'<div class="screen">{rows}</div><figcaption>{whose}</figcaption>{note}</figure>'
    )


# -- the sequence diagrams -------------------------------------------------------

_W, _LEFT, _RIGHT, _TOP, _LANE_H = 1120, 124, 110, 34, 46
_NICE = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class _Plot:
    """Coordinates of one scene's diagram: time to x (to scale), lane to y."""

    def __init__(self, scene: Scene) -> None:
        self.t0 = scene.start
        span = max(scene.end - scene.start, 1.0)
        self.span = span * 1.04
        self.width = _W - _LEFT - _RIGHT
        self.height = _TOP + _LANE_H * len(LANES) + 14

    def x(self, t_ms: float) -> float:
        return round(_LEFT + (t_ms - self.t0) / self.span * self.width, 1)

    @staticmethod
    def y(lane: int) -> float:
        return _TOP + _LANE_H * lane + _LANE_H / 2

    def ticks(self) -> list[tuple[float, str]]:
        """Evenly spaced times from the scene's start, and their labels."""
        step = next((s for s in _NICE if self.span / s <= 8), _NICE[-1])
        digits = 1 if step < 1 else 0
        return [
            (i * step, f"{i * step:.{digits}f} ms" if i * step < 1000 else f"{i * step / 1000:g} s")
            for i in range(int(self.span / step) + 1)
        ]


@attrs.frozen
class _Hop:
    """One arrow: from (time, lane) to (time, lane)."""

    t1: float
    lane1: int
    t2: float
    lane2: int


def _arrow(plot: _Plot, hop: _Hop, colour: str, title: str, *, dashed: bool = False) -> str:
    dash = ' stroke-dasharray="4 3"' if dashed else ""
    head = -7 if hop.lane2 > hop.lane1 else 7
    return (
        f'<line class="arrow" x1="{plot.x(hop.t1)}" y1="{plot.y(hop.lane1)}" '
        f'x2="{plot.x(hop.t2)}" y2="{plot.y(hop.lane2) + head}" stroke="{colour}" '
        f'stroke-width="1.6"{dash} marker-end="url(#head-{colour[1:]})">'
        f"<title>{_e(title)}</title></line>"
    )


def _at(t: float, lane1: int, lane2: int) -> _Hop:
    return _Hop(t, lane1, t, lane2)


def _label(x: float, y: float, text: str, colour: str) -> str:
    return f'<text class="label" x="{x + 3}" y="{y}" fill="{colour}">{_e(text)}</text>'


def _dot(plot: _Plot, at: tuple[float, int], colour: str, title: str, shape: str = "") -> str:
    x, y = plot.x(at[0]), plot.y(at[1])
    tip = f"<title>{_e(title)}</title>"
    if shape == "diamond":
        return (
            f'<path d="M{x} {y - 6} L{x + 6} {y} L{x} {y + 6} L{x - 6} {y} Z" fill="{colour}">'
            f"{tip}</path>"
        )
    if shape == "cross":
        return (
            f'<path d="M{x - 5} {y - 5} L{x + 5} {y + 5} M{x + 5} {y - 5} L{x - 5} {y + 5}" '
            f'stroke="{colour}" stroke-width="2.5">{tip}</path>'
        )
    return f'<circle cx="{x}" cy="{y}" r="4.5" fill="{colour}">{tip}</circle>'


class _Draw:
    """Draws one scene's entries; one method per kind of entry, picked by `_KINDS`."""

    def __init__(self, plot: _Plot, scene: Scene) -> None:
        self.plot = plot
        self.entries = scene.entries
        self._offsets = itertools.cycle((-12, 14, -24))
        self._taken: dict[float, list[tuple[float, float]]] = {}

    def label(self, x: float, y: float, text: str, colour: str) -> str:
        """A label at (*x*, *y*), moved down a line while it would overlap one already drawn."""
        width = 6.5 * len(text) + 6
        while any(a < x + width and x < b for a, b in self._taken.get(y, ())):
            y += 11
        self._taken.setdefault(y, []).append((x, x + width))
        return _label(x, y, text, colour)

    def user_label(self, t: float, text: str, colour: str) -> str:
        return self.label(self.plot.x(t), self.plot.y(_USER) + next(self._offsets), text, colour)

    def following(self, after: int, what: str, chat: str) -> Entry | None:
        rest = self.entries[after + 1 :]
        return next((e for e in rest if e.what == what and e.chat == chat), None)

    def webhook(self, i: int, e: Entry) -> Iterator[str]:
        yield _arrow(self.plot, _at(e.t_ms, _USER, _LINE), INK, f"{e.chat} sends")
        yield _arrow(self.plot, _at(e.t_ms, _LINE, _WEBHOOK), WEBHOOK, e.detail)
        yield self.user_label(e.t_ms, ", ".join(re.findall(r"[\w-]+#\d+", e.detail)), INK)

    def mark_sent(self, i: int, e: Entry) -> Iterator[str]:
        answer = self.following(i, "line-answered", e.chat)
        end = answer.t_ms if answer is not None else e.t_ms
        status = answer.status if answer is not None else None
        colour = _status_colour(status)
        said = "no answer" if status is None else str(status)
        title = f"{e.chat}: mark-as-read, attempt {e.attempt}: LINE answered {said}"
        yield _arrow(self.plot, _Hop(e.t_ms, _ENGINE, end, _LINE), colour, title)
        yield self.label(self.plot.x(end), self.plot.y(_LINE) + 18, said, colour)

    def line_answered(self, i: int, e: Entry) -> Iterator[str]:
        if e.status == 200:
            word = "read" if e.chat == GROUP else "Read"
            yield _arrow(self.plot, _at(e.t_ms, _LINE, _USER), OK, f"{e.chat}: {word}")
            yield self.user_label(e.t_ms, word, OK)

    def mark_retry(self, i: int, e: Entry) -> Iterator[str]:
        wait = f"retry in {_ms(e.delay_ms or 0)}"
        yield _dot(self.plot, (e.t_ms, _ENGINE), RETRY, wait)
        yield self.label(self.plot.x(e.t_ms), self.plot.y(_ENGINE) + 16, wait, RETRY)

    def mark_superseded(self, i: int, e: Entry) -> Iterator[str]:
        yield _dot(self.plot, (e.t_ms, _ENGINE), SUPERSEDED, "superseded by a newer one", "diamond")
        yield self.label(self.plot.x(e.t_ms), self.plot.y(_ENGINE) - 10, "superseded", SUPERSEDED)

    def mark_failed(self, i: int, e: Entry) -> Iterator[str]:
        yield _dot(self.plot, (e.t_ms, _ENGINE), ERROR, "failed; the handler runs", "cross")
        yield self.label(self.plot.x(e.t_ms), self.plot.y(_ENGINE) - 10, "gave up", ERROR)

    def mark_marked(self, i: int, e: Entry) -> Iterator[str]:
        yield _dot(self.plot, (e.t_ms, _ENGINE), OK, "marked read: its handlers may run")
        start = self.following(i, "handler", e.chat)
        if start is not None:
            hop = _Hop(e.t_ms, _ENGINE, start.t_ms, _HANDLER)
            yield _arrow(self.plot, hop, OK, "the handler starts after the mark", dashed=True)

    def handler(self, i: int, e: Entry) -> Iterator[str]:
        done = self.following(i, "handler-done", e.chat) if "slow" in e.detail else None
        x = self.plot.x(e.t_ms)
        width = max(self.plot.x(done.t_ms) - x, 4) if done is not None else 4
        y = self.plot.y(_HANDLER)
        yield (
            f'<rect x="{x}" y="{y - 6}" width="{width}" height="12" rx="3" fill="{INK}" '
            f'opacity="0.75"><title>{_e(e.message)}: {_e(e.detail)}</title></rect>'
        )

    def loading(self, i: int, e: Entry) -> Iterator[str]:
        yield _arrow(self.plot, _at(e.t_ms, _ENGINE, _LINE), LOADING, f"loading: {e.status}")
        yield _arrow(self.plot, _at(e.t_ms, _LINE, _USER), LOADING, "loading dots shown")
        yield self.user_label(e.t_ms, "...", LOADING)

    def reply(self, i: int, e: Entry) -> Iterator[str]:
        yield _arrow(self.plot, _at(e.t_ms, _HANDLER, _LINE), REPLY, f"reply: {e.detail}")
        yield _arrow(self.plot, _at(e.t_ms, _LINE, _USER), REPLY, f"{e.chat} sees the answer")
        yield self.label(self.plot.x(e.t_ms), self.plot.y(_HANDLER) + 16, "reply", REPLY)

    def webhook_answered(self, i: int, e: Entry) -> Iterator[str]:
        title = f"webhook answered {e.status} after {_ms(e.delay_ms or 0)}"
        hop = _at(e.t_ms, _WEBHOOK, _LINE)
        yield _arrow(self.plot, hop, WEBHOOK, title, dashed=True)
        yield self.label(self.plot.x(e.t_ms), self.plot.y(_WEBHOOK) + 16, str(e.status), WEBHOOK)

    def all(self) -> Iterator[str]:
        for i, entry in enumerate(self.entries):
            draw = _KINDS.get(entry.what)
            if draw is not None:
                yield from draw(self, i, entry)


_KINDS: Mapping[str, Callable[[_Draw, int, Entry], Iterable[str]]] = {
    "webhook": _Draw.webhook,
    "mark-sent": _Draw.mark_sent,
    "line-answered": _Draw.line_answered,
    "mark-retry": _Draw.mark_retry,
    "mark-superseded": _Draw.mark_superseded,
    "mark-failed": _Draw.mark_failed,
    "mark-marked": _Draw.mark_marked,
    "handler": _Draw.handler,
    "loading": _Draw.loading,
    "reply": _Draw.reply,
    "webhook-answered": _Draw.webhook_answered,
}


def _guarantee_arcs(plot: _Plot, scene: Scene, result: Result) -> Iterator[str]:
    """LINE's 200 -> the reply, on LINE's lane: the arrow that proves "read before reply"."""
    drawn: set[str] = set()
    messages = {m.label: m for m in result.messages}
    for reply in (e for e in scene.entries if e.what == "reply"):
        message = messages.get(reply.message or "")
        if message is None or message.expect != MARKED or message.chat in drawn:
            continue
        drawn.add(message.chat)
        when = read_at(result.entries, message, result.messages)
        held = when is not None and when <= reply.t_ms
        start = when if when is not None else reply.t_ms
        x1, x2, y = plot.x(start), plot.x(reply.t_ms), plot.y(_LINE) - 9
        lift = 14 + 6 * (len(drawn) % 3)
        colour = OK if held else ERROR
        yield (
            f'<path class="guarantee" d="M{x1} {y} C{x1} {y - lift} {x2} {y - lift} {x2} {y}" '
            f'fill="none" stroke="{colour}" stroke-width="2.2" '
            f'marker-end="url(#head-{colour[1:]})"><title>{_e(message.label)}: '
            f"{'200 before the reply' if held else 'reply before any 200'}</title></path>"
        )
        if len(drawn) == 1 or not held:  # one caption per scene is enough
            yield _label(x2, y - lift, "✓ read, then reply" if held else "✗ reply first", colour)


def sequence_diagram(scene: Scene, result: Result, number: int) -> str:
    plot = _Plot(scene)
    parts = [
        f'<svg class="sequence" viewBox="0 0 {_W} {plot.height}" width="{_W}" '
        f'height="{plot.height}" role="img" aria-label="{_e(scene.title)}">',
        _markers(),
    ]
    for lane, name in enumerate(LANES):
        y = plot.y(lane)
        parts.append(
            f'<rect x="0" y="{y - _LANE_H / 2}" width="{_W}" height="{_LANE_H}" '
            f'fill="{"#f8fafc" if lane % 2 else "#ffffff"}"/>'
            f'<text class="lane" x="8" y="{y + 4}">{_e(name)}</text>'
            f'<line x1="{_LEFT}" y1="{y}" x2="{_W - _RIGHT}" y2="{y}" stroke="#cbd5e1"/>'
        )
    for tick, text in plot.ticks():
        x = plot.x(plot.t0 + tick)
        parts.append(
            f'<line x1="{x}" y1="{_TOP - 6}" x2="{x}" y2="{plot.height - 14}" stroke="#e2e8f0"/>'
            f'<text class="tick" x="{x}" y="{_TOP - 10}">{text}</text>'
        )
    parts.extend(_Draw(plot, scene).all())
    parts.extend(_guarantee_arcs(plot, scene, result))
    parts.append("</svg>")
    return (
        f'<section class="scene"><h3><span class="n">{number}</span>{_e(scene.title)}'
        f"<small>starts at +{_ms(scene.start)}, lasts {_ms(scene.end - scene.start)}</small>"
        f'</h3><div class="scroll">{"".join(parts)}</div></section>'
    )


def _markers() -> str:
    heads = "".join(
        f'<marker id="head-{c[1:]}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        f'markerHeight="7" orient="auto-start-reverse"><path d="M0 0 L10 5 L0 10 z" '
        f'fill="{c}"/></marker>'
        for c in _COLOURS
    )
    return f"<defs>{heads}</defs>"


# -- the page --------------------------------------------------------------------

_LEGEND: Mapping[str, str] = {
    OK: "200, read, released",
    RETRY: "503 / retry",
    ERROR: "400 / failed",
    SUPERSEDED: "superseded",
    LOADING: "loading animation (202)",
    REPLY: "reply",
    WEBHOOK: "webhook and its answer",
}

_CSS = """
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Hiragino Sans",
"Noto Sans",sans-serif;color:#1e293b;background:#eef2f7}
main{max-width:1200px;margin:0 auto;padding:28px 20px 60px}
h1{font-size:28px;margin:0 0 4px}h2{font-size:21px;margin:36px 0 10px}
h3{font-size:15px;margin:0 0 6px;display:flex;gap:8px;align-items:baseline}
h3 small{color:#64748b;font-weight:400;margin-left:auto}
.n{background:#1e293b;color:#fff;border-radius:99px;padding:0 8px;font-size:12px}
.lead{color:#475569;margin:0 0 12px}
.badge{display:inline-block;border-radius:99px;padding:3px 12px;font-weight:700;color:#fff}
.pass{background:#06c755}.fail{background:#ef4444}
.phones{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:18px}
.phone{margin:0;background:#111827;border-radius:30px;padding:10px;position:relative;
box-shadow:0 8px 24px rgba(15,23,42,.25);display:flex;flex-direction:column}
.notch{position:absolute;top:10px;left:50%;width:70px;height:14px;margin-left:-35px;
background:#111827;border-radius:0 0 10px 10px;z-index:2}
.phone header{background:#273246;color:#fff;font-weight:600;padding:16px 12px 8px;
border-radius:22px 22px 0 0;font-size:14px}
.back{margin-right:10px;opacity:.7}
.screen{background:#8cabd9;min-height:300px;padding:10px 8px;border-radius:0 0 22px 22px;
display:flex;flex-direction:column;gap:7px;flex:1}
.phone figcaption{color:#cbd5e1;text-align:center;font-size:12px;padding-top:7px}
.phone .note{color:#94a3b8;font-size:11px;margin:2px 8px 4px;text-align:center}
.row{display:flex;align-items:flex-end;gap:5px;font-size:12.5px}
.row.me{justify-content:flex-end}
.bubble{padding:6px 10px;border-radius:16px;max-width:140px;word-wrap:break-word;
background:#fff;color:#111827}
.me .bubble{background:#85e249;border-top-right-radius:4px}
.bot .bubble,.dots .bubble,.member .bubble{border-top-left-radius:4px}
.meta{display:flex;flex-direction:column;font-size:10px;color:#f8fafc;line-height:1.2;
text-align:right;white-space:nowrap}
.me .meta{align-items:flex-end}
.dots .meta{white-space:normal;text-align:left;color:#1e293b;opacity:.8}
.read{font-weight:700}.unread{color:#fee2e2}
.avatar{width:26px;height:26px;border-radius:50%;background:#06c755;color:#fff;
font-weight:700;display:flex;align-items:center;justify-content:center;font-size:12px;
align-self:flex-start;flex:none}
.name{font-size:10px;color:#f1f5f9;margin:0 0 2px 4px}
.member{padding-left:4px}
.loading{display:flex;gap:4px;padding:10px 12px}
.loading i{width:7px;height:7px;border-radius:50%;background:#94a3b8;
animation:blink 1.2s infinite ease-in-out}
.loading i:nth-child(2){animation-delay:.2s}.loading i:nth-child(3){animation-delay:.4s}
@keyframes blink{0%,80%,100%{opacity:.25;transform:translateY(0)}
40%{opacity:1;transform:translateY(-3px)}}
.sticker{font-size:24px}.photo{display:block;border-radius:8px}
.scene{background:#fff;border-radius:14px;padding:14px 14px 6px;margin:0 0 16px;
box-shadow:0 1px 3px rgba(15,23,42,.12)}
.scroll{overflow-x:auto}
svg.sequence{display:block;max-width:100%;height:auto}
.lane{font-size:12px;font-weight:600;fill:#334155}
.tick{font-size:10px;fill:#94a3b8;text-anchor:middle}
.label{font-size:10.5px;font-weight:600;paint-order:stroke;stroke:#fff;stroke-width:3px}
.legend{display:flex;flex-wrap:wrap;gap:6px 16px;margin:0 0 14px;font-size:13px}
.legend span::before{content:"";display:inline-block;width:18px;height:4px;margin-right:6px;
vertical-align:middle;border-radius:2px;background:var(--c)}
table{width:100%;border-collapse:collapse;background:#fff;border-radius:14px;overflow:hidden;
box-shadow:0 1px 3px rgba(15,23,42,.12)}
td,th{padding:8px 12px;text-align:left;border-top:1px solid #e2e8f0;vertical-align:top}
th{background:#f8fafc;font-size:13px;color:#475569}
td.ok{color:#06c755;font-weight:700}td.no{color:#ef4444;font-weight:700}
footer{color:#64748b;font-size:13px;margin-top:24px}
"""


def _guarantee_table(result: Result) -> str:
    rows = "".join(
        f'<tr><td class="{"ok" if c.ok else "no"}">{"PASS" if c.ok else "FAIL"}</td>'
        f"<td>{_e(c.name)}</td><td>{_e(c.detail)}</td></tr>"
        for c in result.checks
    )
    return (
        '<table class="guarantees"><thead><tr><th>Verdict</th><th>Guarantee</th>'
        f"<th>Evidence</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def chats(result: Result) -> list[str]:
    """Every chat of the run, in the order it first spoke."""
    return list(dict.fromkeys(m.chat for m in result.messages))


def render_page(result: Result, summary_line: str) -> str:
    """The whole page for *result*; *summary_line* is the text output's closing summary."""
    s = result.summary
    badge = (
        '<span class="badge pass">every guarantee held</span>'
        if s.ok
        else '<span class="badge fail">some guarantees did NOT hold</span>'
    )
    phones = "".join(chat_view(result, chat) for chat in chats(result))
    diagrams = "".join(
        sequence_diagram(scene, result, n) for n, scene in enumerate(scenes(result.entries), 1)
    )
    legend = "".join(f'<span style="--c:{c}">{_e(t)}</span>' for c, t in _LEGEND.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>line-markread demo: seed {s.seed}</title>
<style>{_CSS}</style></head>
<body><main>
<h1>line_markread demo</h1>
<p class="lead">A real bot using line_markread against a fake LINE platform, on loopback
(seed {s.seed}, line_markread {_e(s.version)}). {badge}</p>
<p class="lead">{_e(summary_line)}</p>
<h2>What the users see</h2>
<p class="lead">Each chat as LINE shows it to the user: "Read" appears when LINE accepted a
mark covering the message, before the bot's answer; the dots are the loading animation the bot
showed while it worked.</p>
<div class="phones" id="chats">{phones}</div>
<h2>What happened on the wire</h2>
<p class="lead">One diagram per scene; time runs left to right, to scale within each scene.
Hover a shape for details. The green arc on LINE's lane goes from LINE's 200 for the mark to
the reply: the ordering guarantee.</p>
<div class="legend">{legend}</div>
<div id="diagram">{diagrams}</div>
<h2>Guarantees</h2>
{_guarantee_table(result)}
<footer>Written by <code>line-markread demo --html</code>; everything on this page is in this
one file.</footer>
</main></body></html>
"""
