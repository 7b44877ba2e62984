"""``line-markread demo --html``: the page, loaded in a real browser (Debian's headless Chromium).

The browser is driven over the DevTools protocol (a websocket, with aiohttp):
the test navigates to the file, counts the chat views and the diagrams in the
live DOM, collects every console message, uncaught exception and log entry
(a resource that failed to load is one), and saves a screenshot.  Chromium
missing is a failure, not a skip: ``make test`` installs it first (see the
Makefile's ``chromium`` target).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest

from line_markread._cli import DEFAULT_SEED, main
from line_markread._cli.demo import Result, play
from line_markread._cli.demo.output import summary_line
from line_markread._cli.demo.page import render_page
from line_markread._cli.demo.scenes import SCENES
from line_markread._cli.demo.timeline import GROUP, USERS

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1100,1400",
)
TIMEOUT = 120.0
"""Seconds for the browser to start and load: generous, the machine is shared."""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "chromium is not installed: run `make chromium` (as root it installs Debian's "
            "package) or `apt-get install chromium`; the page must be tested in a browser"
        )
    return found


class DevTools:
    """The DevTools protocol over one websocket: calls by id, events kept in order."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse[Any]) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._new_event = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            future = self._waiting.pop(data.get("id", -1), None)
            if future is not None:
                future.set_result(data)
            elif "method" in data:
                self.events.append(data)
                self._new_event.set()

    async def call(self, method: str, session: str | None = None, **params: Any) -> Any:
        ident = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        request: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session is not None:
            request["sessionId"] = session
        await self._ws.send_str(json.dumps(request))
        answer = await asyncio.wait_for(future, TIMEOUT)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    async def event(self, method: str) -> dict[str, Any]:
        while True:
            found = next((e for e in self.events if e["method"] == method), None)
            if found is not None:
                return found
            self._new_event.clear()
            await asyncio.wait_for(self._new_event.wait(), TIMEOUT)

    def problems(self) -> list[str]:
        """Console messages, uncaught exceptions and error log entries, as text."""
        found = []
        for event in self.events:
            params: Mapping[str, Any] = event.get("params", {})
            if event["method"] == "Runtime.consoleAPICalled":
                args = [a.get("value", a.get("description")) for a in params.get("args", [])]
                found.append(f"console.{params.get('type')}: {args}")
            elif event["method"] == "Runtime.exceptionThrown":
                found.append(f"exception: {params.get('exceptionDetails', {}).get('text')}")
            elif event["method"] == "Log.entryAdded":
                entry = params.get("entry", {})
                if entry.get("level") in ("error", "warning"):
                    found.append(
                        f"log {entry.get('level')}: {entry.get('text')} {entry.get('url')}"
                    )
        return found

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def browser(profile: Path) -> AsyncIterator[DevTools]:
    """Headless Chromium with a throw-away profile, and its DevTools websocket."""
    process = await asyncio.create_subprocess_exec(
        chromium(),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        url = await asyncio.wait_for(_devtools_url(process.stderr), TIMEOUT)
        drain = asyncio.ensure_future(process.stderr.read())  # keep the pipe from filling
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(url, max_msg_size=0) as ws,
        ):
            tools = DevTools(ws)
            try:
                yield tools
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(tools.call("Browser.close"), 10)
            finally:
                await tools.close()
        await asyncio.wait_for(process.wait(), TIMEOUT)
        drain.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _devtools_url(stderr: asyncio.StreamReader) -> str:
    while line := await stderr.readline():
        found = re.search(rb"DevTools listening on (ws://\S+)", line)
        if found is not None:
            return found.group(1).decode()
    raise RuntimeError("chromium exited before its DevTools endpoint was listening")


_MEASURE = """JSON.stringify({
  chats: [...document.querySelectorAll('#chats .phone')].map(p => p.dataset.chat),
  readLabels: document.querySelectorAll('#chats .read').length,
  loadingDots: document.querySelectorAll('#chats .loading').length,
  diagrams: document.querySelectorAll('#diagram svg.sequence').length,
  lanes: [...document.querySelectorAll('#diagram svg.sequence')].map(
    s => s.querySelectorAll('text.lane').length),
  arcs: document.querySelectorAll('#diagram path.guarantee').length,
  checks: [...document.querySelectorAll('table.guarantees tbody tr td:first-child')].map(
    td => td.textContent),
  width: document.documentElement.scrollWidth,
  height: document.documentElement.scrollHeight,
})"""


async def open_page(page: Path, profile: Path) -> tuple[dict[str, Any], list[str], bytes]:
    """Open *page* in Chromium: what the live DOM holds, every problem, a full-page PNG."""
    async with browser(profile) as tools:
        target = await tools.call("Target.createTarget", url="about:blank")
        attached = await tools.call(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            await tools.call(f"{domain}.enable", session)
        await tools.call("Page.navigate", session, url=page.as_uri())
        await tools.event("Page.loadEventFired")
        measured = await tools.call(
            "Runtime.evaluate", session, expression=_MEASURE, returnByValue=True
        )
        shot = await tools.call(
            "Page.captureScreenshot", session, format="png", captureBeyondViewport=True
        )
    return json.loads(measured["result"]["value"]), tools.problems(), base64.b64decode(shot["data"])


def load(page: Path, profile: Path, screenshot: Path) -> tuple[dict[str, Any], list[str]]:
    """`open_page`, saving the screenshot to *screenshot*."""
    dom, problems, png = asyncio.run(open_page(page, profile))
    screenshot.write_bytes(png)
    return dom, problems


@pytest.fixture(scope="module")
def demo_result() -> Result:
    """One demo run (a few seconds: shared by the tests here)."""
    result = asyncio.run(play(DEFAULT_SEED))
    assert result.summary.ok
    return result


@pytest.fixture(scope="module")
def demo_page(demo_result: Result, tmp_path_factory: pytest.TempPathFactory) -> Path:
    page = tmp_path_factory.mktemp("page") / "demo.html"
    page.write_text(render_page(demo_result, summary_line(demo_result.summary)), encoding="utf-8")
    return page


def test_the_page_renders_in_chromium(demo_page: Path, tmp_path: Path) -> None:
    screenshot = tmp_path / "demo.png"

    dom, problems = load(demo_page, tmp_path / "profile", screenshot)

    assert problems == []
    assert sorted(dom["chats"]) == sorted([*USERS, GROUP])  # one chat view per demo chat
    assert dom["readLabels"] >= len(USERS) - 1  # every 1:1 chat but gina's shows "Read"
    assert dom["loadingDots"] >= 1
    assert dom["diagrams"] == len(SCENES)
    assert set(dom["lanes"]) == {5}
    assert dom["arcs"] >= len(SCENES) - 1  # the sticker scene has no mark to draw
    assert dom["checks"]
    assert set(dom["checks"]) == {"PASS"}
    assert dom["height"] > 2000
    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert screenshot.stat().st_size > 20_000


def test_the_browser_check_sees_console_errors_and_failed_loads(tmp_path: Path) -> None:
    # The check above can fail: the same loader reports a broken page.
    broken = tmp_path / "broken.html"
    broken.write_text(
        '<!DOCTYPE html><html><body><img src="missing.png">'
        '<script>console.error("boom"); notDefined();</script></body></html>'
    )

    _, problems = load(broken, tmp_path / "profile", tmp_path / "broken.png")

    text = "\n".join(problems)
    assert "console.error: ['boom']" in text
    assert "notDefined" in text or "Uncaught" in text
    assert "missing.png" in text


def test_the_page_is_self_contained(demo_page: Path) -> None:
    page = demo_page.read_text(encoding="utf-8")

    assert not re.search(r"""(src|href)\s*=|url\(\s*['"]?(?!#)|@import|<script""", page)
    assert "http://" not in page
    assert "https://" not in page
    assert "demo-access-token" not in page  # the fake's credentials stay out of it too
    assert "demo-channel-secret" not in page


def test_a_failed_guarantee_shows_as_failed(demo_result: Result) -> None:
    first = demo_result.checks[0]
    broken = attrs.evolve(
        demo_result,
        checks=(attrs.evolve(first, ok=False), *demo_result.checks[1:]),
        summary=attrs.evolve(demo_result.summary, ok=False),
    )

    page = render_page(broken, summary_line(broken.summary))

    assert page.count('<td class="no">FAIL</td>') == 1
    assert page.count('<td class="ok">PASS</td>') == len(demo_result.checks) - 1
    assert "some guarantees did NOT hold" in page
    assert "every guarantee held" not in page


def test_message_text_is_escaped(demo_result: Result) -> None:
    evil = "<script>alert(1)</script>"
    messages = tuple(attrs.evolve(m, text=evil) for m in demo_result.messages)
    entries = tuple(
        attrs.evolve(e, detail=evil) if e.what == "reply" else e for e in demo_result.entries
    )

    page = render_page(attrs.evolve(demo_result, messages=messages, entries=entries), "")

    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_json_output_is_unchanged_by_html(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--json", "--html", str(tmp_path / "p.html")]) == 0
    out, err = capsys.readouterr()

    records = [json.loads(line) for line in out.splitlines()]
    assert records[-1]["type"] == "summary"
    assert str(tmp_path / "p.html") in err  # where the page is: on stderr, stdout stays JSON


def test_unwritable_html_path_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "no-such-folder" / "demo.html"

    assert main(["demo", "--html", str(target)]) == 1
    assert "could not write the page" in capsys.readouterr().err
