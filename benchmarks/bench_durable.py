"""Durable queue benchmarks (issue 17): webhook answer time, worker throughput, crash recovery.

    .venv/bin/python benchmarks/bench_durable.py [--smoke] [--database-url URL]

Without ``--database-url`` it starts a throwaway PostgreSQL (``tests/pg.py``,
as the tests do).  The fake LINE platform runs in this process.  Three
measurements, printed as a table (ratios matter; absolute numbers depend on
the machine and its load):

1. ``handle_async`` answer time, p50/p99, at a paced 100 webhooks/s, one text
   message per body (a new chat each), no-op ``background=True`` handler:
   durable (``queue=PostgresQueue``) vs the in-process pool;
2. worker throughput with a no-op handler, 1 and 2 ``line-markread worker``
   processes (``--concurrency 8``): jobs deferred up front, time until the
   queue is empty;
3. ``kill -9`` of a worker mid-handler to the job finishing on another worker
   (``--stalled-after 6`` for the run; the bound scales with it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from linebot.v3.webhooks import MessageEvent, TextMessageContent  # noqa: E402

from line_markread import PostgresQueue, WebhookHandler  # noqa: E402
from line_markread._queue import Job  # noqa: E402
from line_markread._queue._postgres import init_schema  # noqa: E402
from line_markread.testing import FakeLinePlatform, signed_body, text_event  # noqa: E402

SECRET = "bench-secret"
TARGET = "benchmarks.durable_noop:handler"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def answer_times(fake: FakeLinePlatform, url: str | None, count: int) -> list[float]:
    queue = None if url is None else PostgresQueue(url)
    handler = WebhookHandler(SECRET, configuration=fake.configuration(), queue=queue)

    @handler.add(MessageEvent, message=TextMessageContent, background=True)
    async def noop(event: Any) -> None:
        return None

    bodies = [
        signed_body(text_event("hi", user_id=f"U{n:032x}"), channel_secret=SECRET)
        for n in range(count)
    ]
    times: list[float] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n, (body, signature) in enumerate(bodies):
        await asyncio.sleep(max(0.0, start + n / 100 - loop.time()))  # 100 webhooks/s
        began = time.perf_counter()
        await handler.handle_async(body, signature)
        times.append((time.perf_counter() - began) * 1000)
    await handler.aclose()
    return times


def worker(env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "line_markread", "worker", TARGET, "--concurrency", "8", *extra],
        cwd=ROOT,
        env=env,
        stderr=subprocess.DEVNULL,
    )


async def drained(queue: PostgresQueue, limit: float) -> float:
    """Seconds until nothing is waiting or running (polled every 0.2 s: each poll connects)."""
    began = time.perf_counter()
    while time.perf_counter() - began < limit:
        stats = await queue.astats()
        if stats.depth == 0 and stats.running == 0:
            return time.perf_counter() - began
        await asyncio.sleep(0.2)
    raise TimeoutError("the queue did not drain")


def jobs(count: int, chats: int, tag: str) -> list[Job]:
    made = []
    for n in range(count):
        raw = text_event("x", user_id=f"U{n % chats:032x}")
        made.append(
            Job(
                raw,
                None,
                "noop",
                "MessageEvent_TextMessageContent",
                f"user:U{n % chats:032x}",
                f"{tag}-{n}",
            )
        )
    return made


async def throughput(url: str, env: dict[str, str], workers: int, count: int) -> float:
    queue = PostgresQueue(url)
    processes = [worker(env) for _ in range(workers)]
    try:
        # Warm-up jobs, drained before the clock starts: startup is not what this measures.
        await queue.adefer(jobs(8 * workers, 8 * workers, f"warm{workers}"))
        await drained(queue, 120)
        await queue.adefer(jobs(count, 200, f"t{workers}"))
        return count / await drained(queue, 600)
    finally:
        for p in processes:
            p.send_signal(signal.SIGTERM)
            p.wait()
        await queue.aclose()


async def recovery(url: str, fake: FakeLinePlatform, env: dict[str, str]) -> float:
    queue = PostgresQueue(url)
    slow = dict(env, DURABLE_NOOP_DELAY="3")
    doomed = worker(slow, "--stalled-after", "6")
    try:
        await asyncio.sleep(3)
        await queue.adefer(jobs(1, 1, "kill"))
        await fake.await_requests(1, timeout=60)  # its mark: the handler is running
        doomed.kill()
        killed = time.perf_counter()
        survivor = worker(slow, "--stalled-after", "6")
        await drained(queue, 120)
        return time.perf_counter() - killed
    finally:
        doomed.wait()
        survivor.send_signal(signal.SIGTERM)
        survivor.wait()
        await queue.aclose()


async def main(url: str | None, smoke: bool) -> None:
    server = None
    if url is None:
        from tests.pg import PostgresServer  # noqa: PLC0415

        server = PostgresServer()
        server.start()
        url = server.create_database("bench")
    try:
        init_schema(url)
        with FakeLinePlatform() as fake:
            env = dict(
                os.environ,
                DATABASE_URL=url,
                LINE_CHANNEL_SECRET=SECRET,
                LINE_CHANNEL_ACCESS_TOKEN=fake.access_token,
                LINE_API_HOST=fake.url,
            )
            count = 50 if smoke else 500
            pool = await answer_times(fake, None, count)
            durable = await answer_times(fake, url, count)
            print(f"webhook answer, ms, {count} at 100/s      p50      p99")
            print(f"  in-process pool                    {statistics.median(pool):7.2f}"
                  f"  {percentile(pool, 0.99):7.2f}")  # fmt: skip
            print(f"  durable (PostgresQueue)            {statistics.median(durable):7.2f}"
                  f"  {percentile(durable, 0.99):7.2f}")  # fmt: skip
            jobs_count = 200 if smoke else 3000
            for workers in (1, 2):
                rate = await throughput(url, env, workers, jobs_count)
                print(f"worker throughput, no-op, {workers} worker(s): {rate:7.0f} jobs/s")
            fake.reset()
            print(f"kill -9 to finished elsewhere (stalled_after 6 s): "
                  f"{await recovery(url, fake, env):5.1f} s")  # fmt: skip
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts")
    parser.add_argument("--database-url", default=None)
    options = parser.parse_args()
    asyncio.run(main(options.database_url, options.smoke))
