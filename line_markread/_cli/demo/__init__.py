"""``line-markread demo``: a real bot, a fake LINE, and a conversation that tests every guarantee.

Nothing is mocked.  The bot is an aiohttp web app whose ``WebhookHandler``
(``handle_async``, async handlers) replies through the reply endpoint; the
conversation is played as signed webhooks over loopback HTTP; the plugin talks
to ``line_markread.testing.FakeLinePlatform`` exactly as it would to LINE.

The timeline is merged from three witnesses sharing one clock
(``time.monotonic``, one process): the fake platform's request records, the
plugin's DEBUG trace (see ``_engine._trace``) and the bot's own handlers.  The
guarantees are then checked against that timeline, so the exit status is
evidence, not decoration.

The parts, in the order of a run: ``timeline`` (the witnesses and their
records), ``stage`` (the bot), ``scenes`` (the conversation), ``verdict``
(the guarantees, pure functions of the evidence), ``output`` (text or
JSON lines) and ``page`` (the same run as one self-contained HTML page).
`play` puts them together.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import TextIO

from ...testing import FakeLinePlatform
from .output import Style, render, summary_line, write_json
from .page import render_page
from .scenes import Conversation, converse
from .stage import DEMO_ACCESS_TOKEN, DemoBot
from .timeline import Cast, Timeline, TraceHandler, line_entries, tracing
from .verdict import Result, judge

__all__ = ["Result", "play", "run"]


async def play(seed: int) -> Result:
    """Run the whole demo on the running loop and check what happened."""
    cast = Cast()
    timeline = Timeline(cast)
    fake = FakeLinePlatform(access_token=DEMO_ACCESS_TOKEN, bot_name="Demo Bot")
    await asyncio.to_thread(fake.start)
    try:
        with tracing(TraceHandler(timeline)):
            bot = DemoBot(fake, timeline, seed)
            try:
                await converse(Conversation(fake, timeline, await bot.start()))
            finally:
                await bot.stop()
        line_entries(cast, fake.requests(), timeline)
    finally:
        await asyncio.to_thread(fake.stop)
    elapsed_ms = (time.monotonic() - timeline.started) * 1000
    return judge(tuple(cast.messages), timeline.sorted(), bot.handler.stats(), seed, elapsed_ms)


def run(
    *,
    seed: int,
    as_json: bool = False,
    out: TextIO | None = None,
    html_path: str | None = None,
    err: TextIO | None = None,
) -> int:
    """Play the demo; 0 if every guarantee held, 1 otherwise.

    *html_path* also writes the run as one HTML page there and says where
    (on *err* with ``--json``, whose stdout is JSON only).
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    result = asyncio.run(play(seed))
    if as_json:
        write_json(result, out)
    else:
        render(result, out, Style.for_stream(out))
    if html_path is not None:
        page = render_page(result, summary_line(result.summary))
        where = os.path.abspath(html_path)
        try:
            with open(html_path, "w", encoding="utf-8") as file:
                file.write(page)
        except OSError as e:
            print(f"could not write the page to {where}: {e.strerror or e}", file=err)
            return 1
        print(f"The run as a page: {where}", file=err if as_json else out)
    return 0 if result.summary.ok else 1
