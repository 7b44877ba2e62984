"""Durable background handlers as users run them: web and worker processes, real signals.

``examples/durable_bot.py`` web processes and ``line-markread worker
examples.durable_bot:handler`` processes, a real PostgreSQL (tests/pg.py) and
the fake LINE platform in this process.  What LINE saw is the evidence: per
chat, the mark of a message, then (its handler's) reply, then the next mark.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest

from line_markread import PostgresQueue
from line_markread._queue import Job
from line_markread._queue._postgres import init_schema
from line_markread.testing import (
    PUSH_PATH,
    REPLY_PATH,
    TOKEN_MARK_AS_READ_PATH,
    FakeLinePlatform,
    assert_answered_once,
    sticker_event,
    text_event,
)

from .pg import PostgresServer
from .support import SECRET, body_of

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "durable_bot.py"
WAIT = 120.0
"""Generous upper bounds: a loaded 2-core machine."""


class Bots:
    """The processes of one test: web processes and workers, stopped (and checked) at the end."""

    def __init__(self, fake: FakeLinePlatform, url: str, tmp: Path, delay: float) -> None:
        self.env = dict(
            os.environ,
            DATABASE_URL=url,
            LINE_CHANNEL_SECRET=SECRET,
            LINE_CHANNEL_ACCESS_TOKEN=fake.access_token,
            LINE_API_HOST=fake.url,
            DURABLE_BOT_DELAY=str(delay),
            PYTHONUNBUFFERED="1",
        )
        self.tmp = tmp
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}

    def _start(
        self, argv: list[str], name: str, stdout: int | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}-{len(self.processes)}.log"
        with log.open("wb") as err:
            process = subprocess.Popen(
                argv, cwd=REPO, env=self.env, stdout=stdout or err, stderr=err
            )
        self.processes.append(process)
        self.logs[process.pid] = log
        return process

    def web(self) -> str:
        """Start a web process; its webhook URL once it listens."""
        process = self._start(
            [sys.executable, str(EXAMPLE), "--port", "0", "--host", "127.0.0.1"],
            "web",
            stdout=subprocess.PIPE,
        )
        line = _read_line(process, WAIT)
        assert "Listening on http://" in line, (line, self.log_of(process))
        return line.split()[2]

    def worker(
        self,
        *,
        concurrency: int = 4,
        stalled_after: float = 30,
        grace: float = 30,
        target: str = "examples.durable_bot:handler",
    ) -> subprocess.Popen[bytes]:
        return self._start(
            [sys.executable, "-m", "line_markread", "worker", target,
             "--concurrency", str(concurrency), "--stalled-after", str(stalled_after),
             "--grace", str(grace)],
            "worker",
        )  # fmt: skip

    def log_of(self, process: subprocess.Popen[bytes]) -> str:
        return self.logs[process.pid].read_text(errors="replace")[-3000:]

    def stop(self, process: subprocess.Popen[bytes]) -> int:
        """SIGTERM, and the exit status (bounded wait)."""
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"did not stop on SIGTERM: {self.log_of(process)}") from None

    def stop_all(self) -> list[int]:
        return [self.stop(p) for p in self.processes if p.poll() is None]

    def kill_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


def _read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    stream: IO[bytes] | None = process.stdout
    assert stream is not None
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline().decode() if ready else f"(nothing after {timeout}s)"


@pytest.fixture
def bots_factory(fake: FakeLinePlatform, database_url: str, tmp_path: Path) -> Iterator[Any]:
    init_schema(database_url)
    made: list[Bots] = []

    def make(delay: float = 0.0) -> Bots:
        made.append(Bots(fake, database_url, tmp_path, delay))
        return made[-1]

    yield make
    for bots in made:
        bots.kill_all()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as s:
        yield s


async def post(session: aiohttp.ClientSession, url: str, body: tuple[str, str]) -> int:
    payload, signature = body
    headers = {"X-Line-Signature": signature, "Content-Type": "application/json"}
    async with session.post(url, data=payload.encode(), headers=headers) as response:
        await response.read()
        return response.status


async def post_like_line(
    session: aiohttp.ClientSession, url: str, body: tuple[str, str], refused: list[int]
) -> None:
    """Deliver until 200, as LINE's redelivery does; count the refusals."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            status = await post(session, url, body)
        except aiohttp.ClientError:
            status = 0
        if status == 200:
            return
        refused.append(status)
        assert time.monotonic() < deadline, f"never accepted (last status {status})"
        await asyncio.sleep(0.2)


def history(fake: FakeLinePlatform) -> list[tuple[str, str]]:
    """What LINE saw, in arrival order: ``("mark", token)`` and ``("reply", text)``.

    An answer is a reply or a push LINE accepted (``reply()`` pushes when the token is
    past its life); a refused one (a used token's 400, a repeated key's 409) is not.
    """
    seen: list[tuple[str, str]] = []
    for record in fake.requests():
        data: Any = record.json
        if record.path == TOKEN_MARK_AS_READ_PATH:
            seen.append(("mark", data["markAsReadToken"]))
        elif record.path in (REPLY_PATH, PUSH_PATH) and record.status == 200:
            seen.append(("reply", data["messages"][0]["text"]))
    return seen


async def until_replied(fake: FakeLinePlatform, echoes: Sequence[str]) -> None:
    """Until every echo in *echoes* was replied at least once (duplicates allowed)."""
    wanted = set(echoes)
    count = 1
    while True:
        await fake.await_requests(count, timeout=WAIT)  # any request: replies and pushes
        replied = {text for kind, text in history(fake) if kind == "reply"}
        if wanted <= replied:
            return
        count = len(fake.requests()) + 1


def conversation(n_chat: int, count: int) -> tuple[str, list[dict[str, Any]], list[str]]:
    """A chat's messages (texts and stickers, async and sync handlers) and the echoes expected."""
    user = f"U{n_chat:032x}"
    events: list[dict[str, Any]] = []
    echoes: list[str] = []
    for i in range(count):
        if i % 4 == 3:
            events.append(sticker_event(user_id=user, sticker_id=f"{n_chat}-{i}"))
            echoes.append(f"sticker {n_chat}-{i}")
        else:
            events.append(text_event(f"{n_chat}:{i}", user_id=user))
            echoes.append(f"{n_chat}:{i}")
    return user, events, echoes


def check_chat(
    seen: Sequence[tuple[str, str]], events: list[dict[str, Any]], echoes: list[str]
) -> None:
    """One chat: mark i, reply i, mark i+1...: each marked before its handler, none overlapping."""
    tokens = {e["message"]["markAsReadToken"]: i for i, e in enumerate(events)}
    texts = {text: i for i, text in enumerate(echoes)}
    steps = [
        (kind, tokens[value] if kind == "mark" else texts[value])
        for kind, value in seen
        if (kind == "mark" and value in tokens) or (kind == "reply" and value in texts)
    ]
    expected = [(kind, i) for i in range(len(events)) for kind in ("mark", "reply")]
    assert steps == expected


def queue_status(url: str) -> dict[str, int]:
    result = subprocess.run(
        [sys.executable, "-m", "line_markread", "queue", "status", "--json",
         "--database-url", url],
        capture_output=True, text=True, timeout=WAIT, check=True,
    )  # fmt: skip
    numbers: dict[str, int] = json.loads(result.stdout)
    return numbers


CHATS = int(os.environ.get("LINE_MARKREAD_DURABLE_CHATS", "50"))
PER_CHAT = 10


async def test_two_web_processes_two_workers_every_chat_in_order_each_message_once(
    bots_factory: Any, fake: FakeLinePlatform, session: aiohttp.ClientSession, database_url: str
) -> None:
    # Slow enough handlers that each chat's messages queue up behind one another.
    bots: Bots = bots_factory(delay=0.1)
    webs = [bots.web(), bots.web()]
    workers = [bots.worker(), bots.worker()]
    chats = [conversation(n, PER_CHAT) for n in range(CHATS)]

    async def chat(n: int, events: list[dict[str, Any]]) -> None:
        for i, event in enumerate(events):
            body = body_of(event)
            assert await post(session, webs[(n + i) % 2], body) == 200
            if n < 10 and i == 3:  # LINE delivers it again, to the other process
                assert await post(session, webs[(n + i + 1) % 2], body) == 200

    await asyncio.gather(*(chat(n, events) for n, (_, events, _) in enumerate(chats)))
    await fake.await_requests(CHATS * PER_CHAT, path=REPLY_PATH, timeout=WAIT)
    seen = history(fake)
    for _, events, echoes in chats:
        check_chat(seen, events, echoes)
    assert len([kind for kind, _ in seen if kind == "reply"]) == CHATS * PER_CHAT
    assert queue_status(database_url) == {
        "depth": 0, "running": 0, "failed": 0, "retried": 0, "stalled_recovered": 0,
    }  # fmt: skip
    assert bots.stop_all() == [0, 0, 0, 0]  # SIGTERM: webs and workers exit 0
    for worker in workers:
        assert fake.access_token not in bots.log_of(worker)


async def test_a_worker_killed_mid_handler_its_jobs_run_on_another_in_chat_order(
    bots_factory: Any, fake: FakeLinePlatform, session: aiohttp.ClientSession, database_url: str
) -> None:
    bots: Bots = bots_factory(delay=1.0)
    web = bots.web()
    doomed = bots.worker(concurrency=2, stalled_after=8)
    chats = [conversation(n, 3) for n in range(4)]

    async def chat(events: list[dict[str, Any]]) -> None:
        for event in events:
            assert await post(session, web, body_of(event)) == 200

    await asyncio.gather(*(chat(events) for _, events, _ in chats))
    await fake.await_requests(2, path=TOKEN_MARK_AS_READ_PATH, timeout=WAIT)  # 2 handlers run
    doomed.kill()  # kill -9, mid-handler (each takes 1 s)
    doomed.wait()
    killed_at = time.monotonic()
    bots.worker(concurrency=2, stalled_after=8)
    await until_replied(fake, [echo for _, _, echoes in chats for echo in echoes])
    recovered_within = time.monotonic() - killed_at
    seen = history(fake)
    replies = [text for kind, text in seen if kind == "reply"]
    for _, _, echoes in chats:
        mine = [text for text in replies if text in echoes]
        # In order; a handler may run twice (at least once), its answer goes out once.
        assert list(dict.fromkeys(mine)) == echoes
    assert len(replies) == 12  # a re-run finds an answer it delivered (the once store)
    assert recovered_within < 60  # the documented bound (stalled_after + a maintenance tick)
    assert queue_status(database_url)["stalled_recovered"] >= 1
    assert bots.stop_all() == [0, 0]


CRASH_BOT = """
import asyncio, os, threading
from linebot.v3.messaging import TextMessage
from linebot.v3.webhooks import MessageEvent, StickerMessageContent, TextMessageContent
from line_markread import PostgresQueue, WebhookHandler

HANG = os.environ.get("CRASH_BOT_HANG") == "1"
handler = WebhookHandler(
    os.environ["LINE_CHANNEL_SECRET"],
    access_token=os.environ["LINE_CHANNEL_ACCESS_TOKEN"],
    queue=PostgresQueue(os.environ["DATABASE_URL"]),
    reply_window=0,  # the token counts as past its life: every answer is a push
)


def note(kind, result):
    with open(os.environ["CRASH_BOT_LOG"], "a") as log:
        log.write(f"{os.getpid()} {kind} {result.delivery.name}\\n")


@handler.add(MessageEvent, message=TextMessageContent, background=True, push_fallback=True)
async def on_text(event):
    note("text", await handler.areply(event, TextMessage(text="text answer")))
    if HANG:  # the answer went out; the job is not finished when the worker is killed
        await asyncio.Event().wait()


@handler.add(MessageEvent, message=StickerMessageContent, background=True, push_fallback=True)
def on_sticker(event):
    note("sticker", handler.reply(event, TextMessage(text="sticker answer")))
    if HANG:
        threading.Event().wait()
"""


async def test_a_job_re_run_after_its_answer_went_out_does_not_answer_again(
    bots_factory: Any, fake: FakeLinePlatform, database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "crash_bot.py").write_text(CRASH_BOT)
    notes = tmp_path / "answers.log"
    bots: Bots = bots_factory()
    bots.env.update(PYTHONPATH=str(tmp_path), CRASH_BOT_LOG=str(notes), CRASH_BOT_HANG="1")
    doomed = bots.worker(stalled_after=3, target="crash_bot:handler")
    text, sticker = text_event("hi", user_id="U" + "5" * 32), sticker_event(user_id="U" + "6" * 32)
    queue = PostgresQueue(database_url)
    jobs = [
        Job(raw, None, name, route, f"user:{raw['source']['userId']}", raw["webhookEventId"])
        for raw, name, route in (
            (text, "on_text", "MessageEvent_TextMessageContent"),
            (sticker, "on_sticker", "MessageEvent_StickerMessageContent"),
        )
    ]
    assert await queue.adefer(jobs) == 2  # what the web process stores
    await queue.aclose()

    def answers() -> list[str]:
        return notes.read_text().splitlines() if notes.exists() else []

    deadline = time.monotonic() + WAIT
    while len(answers()) < 2:  # both handlers answered, then hang
        assert time.monotonic() < deadline, bots.log_of(doomed)
        await asyncio.sleep(0.05)
    doomed.kill()  # kill -9: the answers are out, the jobs never finish
    doomed.wait()
    bots.env["CRASH_BOT_HANG"] = "0"
    bots.worker(stalled_after=3, target="crash_bot:handler")
    while len(answers()) < 4:  # the re-runs, on the other worker
        assert time.monotonic() < deadline, bots.log_of(bots.processes[-1])
        await asyncio.sleep(0.05)
    first, again = answers()[:2], answers()[2:]
    assert sorted(line.split(" ", 1)[1] for line in first) == ["sticker PUSHED", "text PUSHED"]
    assert sorted(line.split(" ", 1)[1] for line in again) == [
        "sticker ALREADY_DELIVERED",
        "text ALREADY_DELIVERED",
    ]
    assert_answered_once(fake, text, sticker)  # the user got each answer once
    assert len(fake.push_requests()) == 2  # the re-runs found the record: nothing sent
    assert queue_status(database_url)["stalled_recovered"] >= 1
    assert bots.stop_all() == [0]


async def test_postgres_restarted_under_load_web_answers_500_worker_reconnects_nothing_lost(
    bots_factory: Any,
    fake: FakeLinePlatform,
    session: aiohttp.ClientSession,
    postgres: PostgresServer,
) -> None:
    bots: Bots = bots_factory(delay=0.0)
    web = bots.web()
    worker = bots.worker(stalled_after=8)
    chats = [conversation(n, 8) for n in range(6)]
    refused: list[int] = []
    outage = asyncio.Event()

    async def chat(events: list[dict[str, Any]]) -> None:
        for i, event in enumerate(events):
            if i == 4:
                await outage.wait()  # half before the outage, half during and after it
            await post_like_line(session, web, body_of(event), refused)

    senders = asyncio.gather(*(chat(events) for _, events, _ in chats))
    await fake.await_requests(6 * 4, path=REPLY_PATH, timeout=WAIT)
    await asyncio.to_thread(postgres.stop)
    marks_before = len(fake.mark_requests())
    outage.set()
    deadline = time.monotonic() + WAIT
    while not refused:  # the web process answers 500 while the database is away
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert len(fake.mark_requests()) == marks_before  # and marks nothing meanwhile
    await asyncio.to_thread(postgres.start)
    await senders
    await until_replied(fake, [echo for _, _, echoes in chats for echo in echoes])
    seen = history(fake)
    replies = [text for kind, text in seen if kind == "reply"]
    for _, _, echoes in chats:
        assert list(dict.fromkeys(t for t in replies if t in echoes)) == echoes
    assert set(refused) <= {500, 0}
    assert worker.poll() is None  # the same worker, reconnected (procrastinate's pool, or ours)
    assert bots.stop_all() == [0, 0]


async def test_sigterm_lets_the_running_job_finish_within_the_grace_and_exits_0(
    bots_factory: Any, fake: FakeLinePlatform, session: aiohttp.ClientSession
) -> None:
    bots: Bots = bots_factory(delay=1.5)
    web = bots.web()
    worker = bots.worker(grace=60)
    _, events, echoes = conversation(99, 2)
    for event in events:
        assert await post(session, web, body_of(event)) == 200
    await fake.await_requests(1, path=TOKEN_MARK_AS_READ_PATH, timeout=WAIT)
    worker.send_signal(signal.SIGTERM)  # mid-handler
    assert await asyncio.to_thread(worker.wait, WAIT) == 0
    # The running job finished; the next one was not started (stays unread, queued).
    assert [text for kind, text in history(fake) if kind == "reply"] == echoes[:1]
    assert len(fake.mark_requests()) == 1
    bots.worker(grace=60)  # another worker takes the rest
    await fake.await_requests(2, path=REPLY_PATH, timeout=WAIT)
    assert [text for kind, text in history(fake) if kind == "reply"] == echoes
    assert bots.stop_all() == [0, 0]


async def test_sigterm_past_the_grace_hands_the_job_back_and_another_worker_runs_it(
    bots_factory: Any, fake: FakeLinePlatform, session: aiohttp.ClientSession, database_url: str
) -> None:
    bots: Bots = bots_factory(delay=4.0)
    web = bots.web()
    worker = bots.worker(grace=0.5)
    _, events, echoes = conversation(98, 1)
    assert await post(session, web, body_of(events[0])) == 200
    await fake.await_requests(1, path=TOKEN_MARK_AS_READ_PATH, timeout=WAIT)
    worker.send_signal(signal.SIGTERM)  # the handler needs 4 s, the grace is 0.5 s
    assert await asyncio.to_thread(worker.wait, WAIT) == 0
    assert [text for kind, text in history(fake) if kind == "reply"] == []
    assert queue_status(database_url)["depth"] == 1  # handed back, waiting
    bots.worker(grace=60, concurrency=1)
    await until_replied(fake, echoes)  # put back, not lost: run again elsewhere
    assert bots.stop_all() == [0, 0]


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=WAIT, check=False
    )


def test_the_durable_bot_without_database_url_says_so_and_exits_1() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(LINE_CHANNEL_SECRET=SECRET, LINE_CHANNEL_ACCESS_TOKEN="t")
    result = _run([sys.executable, str(EXAMPLE)], env)
    assert result.returncode == 1
    assert "DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_and_queue_commands_refuse_clearly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    cli = [sys.executable, "-m", "line_markread"]
    missing = _run([*cli, "worker", "no_such_module:handler"], env)
    assert missing.returncode == 1
    assert "cannot start" in missing.stderr
    assert "Traceback" not in missing.stderr
    (tmp_path / "plainbot.py").write_text(
        "from line_markread import WebhookHandler\n"
        "handler = WebhookHandler('s', access_token='t')\n"
    )
    plain = subprocess.run(
        [*cli, "worker", "plainbot:handler"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=WAIT, check=False,
    )  # fmt: skip
    assert plain.returncode == 1
    assert "no queue=PostgresQueue" in plain.stderr
    no_url = _run([*cli, "queue", "init"], env)
    assert no_url.returncode == 2
    assert "DATABASE_URL" in no_url.stderr
    unreachable = _run(
        [*cli, "queue", "status", "--database-url",
         f"postgresql://u:hunter2@/x?host={tmp_path}&port=1"],
        env,
    )  # fmt: skip
    assert unreachable.returncode == 1
    assert "hunter2" not in unreachable.stderr + unreachable.stdout
