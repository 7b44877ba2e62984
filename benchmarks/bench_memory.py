"""S6, run in a fresh child process: memory of the plugin over many messages and chats.

``python benchmarks/bench_memory.py '<json options>'`` builds one
``line_markread.WebhookHandler`` (async path, default options except
``max_tracked_chats`` when given), warms it up, then feeds it ``messages`` text
messages spread round-robin over ``chats`` 1:1 chats (each body carries
``per_body`` messages of different chats, ``in_flight`` bodies at once), against
the fake platform at ``url``.  It prints one JSON line: the RSS at the start and
at checkpoints, the peak RSS (``getrusage``), how many chats' state the engine
holds, and the plugin's counters.

A child process keeps the measurement clean: nothing the harness allocated for
other scenarios is in it.  Bodies are built as they are sent, never all at once.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import sys
import time
from collections.abc import Iterator
from typing import Any

from linebot.v3.messaging import Configuration

import line_markread
from line_markread.testing import signed_body, text_event

CHANNEL_SECRET = "bench-channel-secret"


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def current_rss_bytes() -> int:
    """Resident set size now (Linux ``/proc``); the peak where that is not available."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def _bodies(
    messages: int, chats: int, per_body: int, start_ms: int, prefix: str
) -> Iterator[tuple[str, str]]:
    index = 0
    while index < messages:
        events = []
        for i in range(index, min(index + per_body, messages)):
            events.append(
                text_event(
                    f"message {i}",
                    user_id=f"U{prefix}{i % chats:031x}",
                    timestamp=start_ms + i,
                )
            )
        index += per_body
        yield signed_body(*events, channel_secret=CHANNEL_SECRET)


async def measure(options: dict[str, Any]) -> dict[str, Any]:
    messages = int(options["messages"])
    chats = int(options["chats"])
    per_body = int(options.get("per_body", 10))
    in_flight = int(options.get("in_flight", 8))
    checkpoints = int(options.get("checkpoints", 10))
    settings: dict[str, Any] = {}
    if options.get("max_tracked_chats") is not None:
        settings["max_tracked_chats"] = int(options["max_tracked_chats"])
    configuration = Configuration(host=options["url"], access_token=options["access_token"])
    handler = line_markread.WebhookHandler(CHANNEL_SECRET, configuration=configuration, **settings)
    handled = 0

    @handler.default()
    def on_event(event: Any) -> None:
        nonlocal handled
        handled += 1

    start_ms = int(time.time() * 1000)
    # Warm-up: the HTTP session, its connections, the engine, the SDK's lazy imports.
    for body, signature in _bodies(per_body * in_flight, per_body * in_flight, per_body,
                                   start_ms, "f"):  # fmt: skip
        await handler.handle_async(body, signature)
    gc.collect()
    baseline_rss = current_rss_bytes()
    baseline_peak = peak_rss_bytes()
    began = time.perf_counter()

    bodies = _bodies(messages, chats, per_body, start_ms + 1000, "0")
    total_bodies = -(-messages // per_body)
    every = max(1, total_bodies // max(1, checkpoints))
    done_bodies = 0
    trace: list[dict[str, float]] = []

    async def worker() -> None:
        nonlocal done_bodies
        for body, signature in bodies:
            await handler.handle_async(body, signature)
            done_bodies += 1
            if done_bodies % every == 0:
                trace.append(
                    {
                        "messages": min(messages, done_bodies * per_body),
                        "rss_mb": current_rss_bytes() / 2**20,
                        "tracked_chats": handler.marker.tracked_chats(),
                    }
                )

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - began
    tracked = handler.marker.tracked_chats()
    stats = handler.stats()
    await handler.aclose()
    final_rss = current_rss_bytes()
    peak = peak_rss_bytes()
    return {
        "messages": messages,
        "chats": chats,
        "handled": handled,
        "max_tracked_chats": handler.settings.max_tracked_chats,
        "tracked_chats": tracked,
        "baseline_rss_mb": baseline_rss / 2**20,
        "baseline_peak_rss_mb": baseline_peak / 2**20,
        "final_rss_mb": final_rss / 2**20,
        "peak_rss_mb": peak / 2**20,
        "peak_rss_growth_mb": max(0, peak - baseline_rss) / 2**20,
        "elapsed_s": elapsed,
        "messages_per_s": messages / elapsed if elapsed > 0 else 0.0,
        "requests": stats.requests,
        "marked": stats.marked,
        "failed": stats.failed,
        "superseded": stats.superseded,
        "timed_out": stats.timed_out,
        "trace": trace,
    }


def main() -> None:
    options = json.loads(sys.argv[1])
    print(json.dumps(asyncio.run(measure(options))))


if __name__ == "__main__":
    main()
