"""Every documented promise under hostile conditions (issue 9), against raw socket servers.

The servers (``tests/hostile.py``) are written independently of the fake
platform: they send garbage, trickle, hang, redirect, echo the request's
headers or stream 50 MB.  Each test names the fault-matrix row it proves
(docs/fault-matrix.md) and fails without the fix it guards.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from linebot.v3.messaging import Configuration
from linebot.v3.webhooks import MessageEvent

from line_markread import Marker, MarkFailure, Outcome, WebhookBodyError, WebhookHandler
from line_markread._callbacks import CALLBACK_QUEUE, CallbackThread
from line_markread._cli.check import inspect_account
from line_markread.testing import sign, text_event

from .hostile import (
    RawRequest,
    RawServer,
    after,
    answer_with,
    hang,
    http_response,
    send,
)
from .support import FAST_RETRIES, SECRET, Driver, body_of, with_text_handler

ACCESS_TOKEN = "HOSTILE-ACCESS-TOKEN-3c2b1a0f9e8d"

RawHandlerFactory = Callable[..., WebhookHandler]


@pytest.fixture
def raw_handler(driver: Driver) -> Iterator[RawHandlerFactory]:
    """Handlers on a raw server (``host=server.url``), closed through the driver afterwards."""
    made: list[WebhookHandler] = []

    def make(server: RawServer, **options: Any) -> WebhookHandler:
        token = options.pop("access_token", ACCESS_TOKEN)
        handler = WebhookHandler(
            SECRET, configuration=Configuration(host=server.url, access_token=token), **options
        )
        made.append(handler)
        return handler

    yield make
    for handler in made:
        if not handler.marker.closed:
            driver.close(handler, 0.0)


def timed(action: Callable[[], object]) -> float:
    start = time.monotonic()
    action()
    return time.monotonic() - start


def ok() -> bytes:
    return http_response(200, b"{}")


# -- 1. nothing escapes a mark's task -------------------------------------------


def test_a_token_with_a_trailing_newline_is_stripped_at_construction(driver: Driver) -> None:
    with RawServer(answer_with()) as server:
        handler = with_text_handler(
            WebhookHandler(
                SECRET,
                configuration=Configuration(host=server.url, access_token=ACCESS_TOKEN + "\n"),
            )
        )
        driver.handle(handler, *body_of(text_event(user_id="U1")))
        driver.close(handler, 1.0)

        assert handler.stats().marked == 1
        assert server.requests[0].headers["authorization"] == f"Bearer {ACCESS_TOKEN}"


@pytest.mark.parametrize("token", ["two words", "tab\tinside", "caf\u00e9", " \n"])
def test_a_token_that_cannot_be_a_header_is_refused_at_construction(token: str) -> None:
    with pytest.raises(ValueError, match="access_token") as raised:
        Marker(access_token=token)
    assert token.strip() not in str(raised.value) or not token.strip()


def test_a_retry_after_of_superscript_two_is_treated_as_absent(
    driver: Driver, raw_handler: RawHandlerFactory
) -> None:
    # "²".isdigit() is True and float("²") raises: the mark's task used to die silently.
    with RawServer(answer_with(http_response(429, headers={"Retry-After": "²"}))) as server:
        handler = with_text_handler(raw_handler(server, rate_limit_cooldown=0.05, **FAST_RETRIES))
        driver.handle(handler, *body_of(text_event(user_id="U1")))
        driver.close(handler, 5.0)

    assert handler.stats().marked == 1
    assert len(server.requests) == 2


def test_a_500_with_json_nested_2000_deep_fails_like_any_500(
    driver: Driver, raw_handler: RawHandlerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    failures: list[MarkFailure] = []
    deep = http_response(500, b"[" * 2000)
    with RawServer(answer_with(deep, deep)) as server:
        handler = with_text_handler(
            raw_handler(server, max_attempts=2, on_failure=failures.append, **FAST_RETRIES)
        )
        with caplog.at_level(logging.WARNING, logger="line_markread"):
            driver.handle(handler, *body_of(text_event(user_id="U1")))
            handler.marker.flush()

    assert handler.stats().failed == 1
    assert [(f.status, f.attempts) for f in failures] == [(500, 2)]
    assert handler.marker.tracked_chats() <= 1
    assert "Task exception was never retrieved" not in caplog.text


def _naive_retry_after(value: Any, now: Any = None) -> Any:
    """The parser before the fix: ``float("²")`` raises ``ValueError`` inside the mark."""
    return float(value) if value and value.isdigit() else None


def test_an_unexpected_exception_fails_the_mark_for_good_with_one_error(
    driver: Driver,
    raw_handler: RawHandlerFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The catch-all around a mark, proven with the bug it first met put back: any
    # exception (here ValueError from the old Retry-After parser) fails the mark for
    # good (counted, one ERROR naming it, on_failure, handler released at once),
    # instead of killing the task and holding the handler for wait_timeout.
    monkeypatch.setattr("line_markread._http.parse_retry_after", _naive_retry_after)
    failures: list[MarkFailure] = []
    ran: list[str] = []
    with RawServer(answer_with(http_response(429, headers={"Retry-After": "²"}))) as server:
        handler = with_text_handler(
            raw_handler(server, on_failure=failures.append, wait_timeout=5.0), ran=ran
        )
        with caplog.at_level(logging.WARNING, logger="line_markread"):
            elapsed = timed(lambda: driver.handle(handler, *body_of(text_event("x", user_id="U1"))))
            handler.marker.flush()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]

    assert ran == ["x"]
    assert elapsed < 2.5  # released by the failure, not by the 5 s wait_timeout
    assert handler.stats().failed == 1
    assert len(errors) == 1
    assert "ValueError" in errors[0].getMessage()
    assert [f.reason.split(":")[0] for f in failures] == ["unexpected ValueError"]
    assert handler.marker.tracked_chats() == 1  # and idle: no waiter or job left behind
    assert ACCESS_TOKEN not in caplog.text


# -- 2. wait_timeout bounds handle() whatever the queue ------------------------


def test_wait_timeout_bounds_a_body_of_many_chats_against_a_hanging_api(
    driver: Driver, raw_handler: RawHandlerFactory
) -> None:
    release = threading.Event()
    with RawServer(hang(release)) as server:
        handler = with_text_handler(
            raw_handler(server, wait_timeout=0.3, max_concurrency=2, request_timeout=5.0)
        )
        events = [text_event(str(i), user_id=f"U{i}") for i in range(40)]
        elapsed = timed(lambda: driver.handle(handler, *body_of(*events)))
        release.set()

    assert elapsed < 0.3 + 1.5  # was: held until each queued request got a slot
    assert handler.stats().timed_out == 40


def test_a_burst_of_new_chats_during_an_outage_stays_bounded_and_is_counted(
    driver: Driver, raw_handler: RawHandlerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    with RawServer(hang(release)) as server:
        handler = with_text_handler(
            raw_handler(
                server,
                wait_timeout=0.01,
                max_concurrency=2,
                max_tracked_chats=20,
                request_timeout=5.0,
            )
        )
        with caplog.at_level(logging.WARNING, logger="line_markread"):
            for burst in range(10):
                events = [text_event(str(i), user_id=f"U{burst}-{i}") for i in range(10)]
                driver.handle(handler, *body_of(*events))
        stats = handler.stats()
        tracked = handler.marker.tracked_chats()
        release.set()

    overflow_warnings = [r for r in caplog.records if "mark in progress" in r.getMessage()]
    assert stats.overflowed >= 100 - 20 - 2  # the chats beyond the cap fail at once...
    assert stats.failed >= stats.overflowed  # ...counted as failures
    assert tracked <= 20 + 2 + 10  # cap, plus in flight, plus one body of new chats
    assert len(overflow_warnings) == 1  # reported once per overflow, not per mark


# -- 3. a slow but healthy API ----------------------------------------------------


@pytest.mark.parametrize("latency", [1.2, 3.0])
def test_a_slow_but_healthy_api_gets_every_mark_through(latency: float) -> None:
    chats = 20 if latency < 2 else 8
    with RawServer(after(latency, answer_with())) as server:
        marker = Marker(
            configuration=Configuration(host=server.url, access_token=ACCESS_TOKEN),
            **FAST_RETRIES,
        )
        events = [text_event(str(i), user_id=f"U{i}") for i in range(chats)]
        assert marker.mark(events, wait=False) == [Outcome.PENDING] * chats
        marker.flush()
        stats = marker.stats()
        marker.close(0.0)

    assert stats.marked == chats
    assert stats.requests <= 2 * chats


# -- 4. close() keeps to its grace --------------------------------------------------


def test_close_with_no_grace_returns_at_once_and_starts_no_request(
    driver: Driver, raw_handler: RawHandlerFactory
) -> None:
    release = threading.Event()
    with RawServer(hang(release)) as server:
        # wait_timeout == request_timeout: the close's cancellation meets aiohttp's own
        # timeout, which used to turn it into a timeout and let the retries go on.
        handler = with_text_handler(
            raw_handler(server, wait_timeout=0.3, request_timeout=0.3, **FAST_RETRIES)
        )
        driver.handle(handler, *body_of(text_event(user_id="U1")))
        closing = time.monotonic()
        elapsed = timed(lambda: driver.close(handler, 0.0))
        release.set()
        time.sleep(0.5)  # a retry that wrongly went on would arrive in this span

    assert elapsed < 1.5
    assert [r for r in server.requests if r.received_at > closing] == []
    assert handler.stats().failed == 1


def test_close_with_a_grace_returns_within_it_during_retries(
    driver: Driver, raw_handler: RawHandlerFactory
) -> None:
    unavailable = http_response(503)
    with RawServer(answer_with(*[unavailable] * 1000)) as server:
        handler = with_text_handler(
            raw_handler(
                server,
                wait_timeout=0.05,
                max_attempts=1000,
                retry_budget=100_000,
                backoff_initial=0.05,
                backoff_max=0.1,
            )
        )
        driver.handle(handler, *body_of(text_event(user_id="U1")))
        closing = time.monotonic()
        elapsed = timed(lambda: driver.close(handler, 0.5))
        ended = time.monotonic()
        time.sleep(0.3)

    assert elapsed < 0.5 + 1.5
    assert [r for r in server.requests if r.received_at > ended] == []
    # None started after the grace (0.3 s of slack for the trip to the server).
    assert all(r.received_at <= closing + 0.5 + 0.3 for r in server.requests)


# -- 5. fork --------------------------------------------------------------------------


FORK_SCRIPT = """
import gc, os, sys, time
from line_markread import Marker, Outcome
from line_markread.testing import text_event

from linebot.v3.messaging import Configuration

marker = Marker(configuration=Configuration(host=sys.argv[1], access_token="t"), wait_timeout=5.0)
assert marker.mark([text_event(user_id="UP1")]) == [Outcome.MARKED]  # a keep-alive socket now

done_r, done_w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(done_r)
    # The child uses the marker (fresh resources) and collects what it inherited.
    assert marker.mark([text_event(user_id="UC1")]) == [Outcome.MARKED]
    gc.collect()
    os.write(done_w, b"x")
    marker.close()
    sys.exit(0)

os.close(done_w)
assert os.read(done_r, 1) == b"x"
os.waitpid(pid, 0)
gc.collect()
start = time.monotonic()
outcome = marker.mark([text_event(user_id="UP2")])
elapsed = time.monotonic() - start
stats = marker.stats()
marker.close()
print(outcome[0].name, round(elapsed, 3), stats.requests, stats.retried)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX-only")
def test_a_forked_child_leaves_the_parent_undisturbed_and_prints_nothing(
    tmp_path: Path,
) -> None:
    with RawServer(answer_with()) as server:
        script = tmp_path / "fork_bot.py"
        script.write_text(textwrap.dedent(FORK_SCRIPT))
        result = subprocess.run(
            [sys.executable, str(script), server.url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no "Unclosed connector", no warning, in parent or child
    name, elapsed, requests, retried = result.stdout.split()
    assert name == "MARKED"
    assert float(elapsed) < 0.9  # was: a 1 s stall, the answer lost to the child's epoll change
    assert (int(requests), int(retried)) == (2, 0)


# -- 6. redirects ------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_a_final_failure_and_the_token_goes_nowhere_else(
    driver: Driver, raw_handler: RawHandlerFactory, status: int
) -> None:
    failures: list[MarkFailure] = []
    with RawServer(answer_with()) as elsewhere:
        moved = http_response(status, headers={"Location": f"{elsewhere.url}/steal"})
        with RawServer(answer_with(moved)) as server:
            handler = with_text_handler(
                raw_handler(server, on_failure=failures.append, **FAST_RETRIES)
            )
            driver.handle(handler, *body_of(text_event(user_id="U1")))
            handler.marker.flush()

    assert elsewhere.requests == []
    assert handler.stats().marked == 0
    assert [(f.status, f.attempts) for f in failures] == [(status, 1)]


# -- 7. close() racing handle() -------------------------------------------------------------


def test_a_handle_that_began_before_close_runs_its_handlers(driver: Driver) -> None:
    ran: list[str] = []

    with RawServer(answer_with()) as server:
        handler = WebhookHandler(
            SECRET, configuration=Configuration(host=server.url, access_token=ACCESS_TOKEN)
        )

        def close_meanwhile(event: Any) -> bool:
            # Runs inside handle(), after its start and before its marks are submitted.
            if driver.name == "sync":
                handler.close(0.0)
            else:
                threading.Thread(target=handler.close, args=(0.0,), daemon=True).start()
                for _ in range(5000):
                    if handler.marker.closed:
                        break
                    time.sleep(0.001)
            return True

        handler.add(MessageEvent, mark_as_read=close_meanwhile)(
            lambda event: ran.append(event.message.text)
        )
        driver.handle(handler, *body_of(text_event("began before close", user_id="U1")))

        assert ran == ["began before close"]
        with pytest.raises(RuntimeError, match="closed"):
            driver.handle(handler, "not even a webhook", "bad signature")


# -- 8. Retry-After is capped ----------------------------------------------------------------


@pytest.mark.parametrize("retry_after", ["86400", "9" * 400])
def test_a_huge_retry_after_pauses_the_channel_no_longer_than_the_cap(
    driver: Driver, raw_handler: RawHandlerFactory, retry_after: str
) -> None:
    throttled = http_response(429, headers={"Retry-After": retry_after})
    with RawServer(answer_with(throttled)) as server:
        handler = with_text_handler(
            raw_handler(server, max_rate_limit_pause=0.3, wait_timeout=0.05, retry_deadline=10.0)
        )
        driver.handle(handler, *body_of(text_event(user_id="U1")))
        driver.handle(handler, *body_of(text_event(user_id="U2")))
        driver.close(handler, 5.0)

    assert handler.stats().marked == 2
    first, *later = server.requests
    assert all(0.2 <= r.received_at - first.received_at < 3.0 for r in later)


# -- 9. on_failure runs off the loop ------------------------------------------------------


def test_a_slow_on_failure_delays_no_other_chat(
    driver: Driver, raw_handler: RawHandlerFactory
) -> None:
    unblock = threading.Event()
    called = threading.Event()

    def slow(failure: MarkFailure) -> None:
        called.set()
        unblock.wait(10)  # a callback that blocks, as an alerting webhook might
        raise RuntimeError("and then it raises")

    with RawServer(answer_with(http_response(400))) as server:
        handler = with_text_handler(raw_handler(server, on_failure=slow, wait_timeout=5.0))
        failing = threading.Thread(
            target=driver.handle, args=(handler, *body_of(text_event(user_id="UFAIL")))
        )
        failing.start()
        assert called.wait(5)
        # While the callback blocks, another chat's body comes in.
        elapsed = timed(lambda: driver.handle(handler, *body_of(text_event(user_id="UOK"))))
        unblock.set()
        failing.join(10)

    assert elapsed < 1.0  # was: held for as long as the callback blocked the loop
    assert handler.stats().marked == 1


# -- 10. server text is sanitised and the token redacted ------------------------------------


def echo_with_injection(request: RawRequest, conn: socket.socket, server: RawServer) -> bool:
    message = (
        "bad\r\nWARNING forged line\x1b[31m red "
        + request.headers.get("authorization", "")
        + " \u202e"
    )
    body = ('{"message": ' + json.dumps(message) + "}").encode()
    send(conn, server, http_response(400, body, headers={"x-line-request-id": "id\r\nX: y"}))
    return True


def test_server_text_is_escaped_and_the_echoed_token_redacted(
    driver: Driver, raw_handler: RawHandlerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    failures: list[MarkFailure] = []
    with RawServer(echo_with_injection) as server:
        handler = with_text_handler(raw_handler(server, on_failure=failures.append))
        with caplog.at_level(logging.DEBUG, logger="line_markread"):
            driver.handle(handler, *body_of(text_event(user_id="U1")))
            handler.marker.flush()

    (failure,) = failures
    for text in (caplog.text, failure.reason, str(failure.request_id)):
        assert ACCESS_TOKEN not in text
        assert "\x1b" not in text
        assert "\u202e" not in text
    assert "\r" not in failure.reason
    assert "\n" not in failure.reason
    assert "forged line" in failure.reason  # kept, but on the one line
    assert "[REDACTED]" in failure.reason
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert all("\n" not in w and "\r" not in w for w in warnings)


def test_check_redacts_a_token_echo_straddling_its_cut() -> None:
    def echo(request: RawRequest, conn: socket.socket, server: RawServer) -> bool:
        # LINE-style JSON whose message echoes the header across the 200-character cut.
        message = "x" * 187 + request.headers.get("authorization", "") + "\x1b[2J"
        body = json.dumps({"message": message}).encode()
        send(conn, server, http_response(401, body))
        return False

    with RawServer(echo) as server:
        report = inspect_account(ACCESS_TOKEN, server.url, timeout=5.0)

    shown = report.message + " " + str(report.to_json())
    assert report.outcome == "unauthorized"
    assert ACCESS_TOKEN[:4] not in shown  # not even the prefix left before the cut
    assert "\x1b" not in shown


# -- 11. deeply nested signed body ----------------------------------------------------------


def test_a_deeply_nested_signed_body_is_a_webhook_body_error(
    driver: Driver, raw_handler: RawHandlerFactory
) -> None:
    with RawServer(answer_with()) as server:
        handler = with_text_handler(raw_handler(server))
        for body in ("[" * 100_000, '{"events": ' + "[" * 100_000):
            with pytest.raises(WebhookBodyError):
                driver.handle(handler, body, sign(body, SECRET))
        assert server.requests == []


# -- 12. response bodies are capped ----------------------------------------------------------


def test_a_huge_200_body_is_not_read_whole(driver: Driver, raw_handler: RawHandlerFactory) -> None:
    size = 50 * 1024 * 1024

    def huge(request: RawRequest, conn: socket.socket, server: RawServer) -> bool:
        send(conn, server, f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        chunk = b"{" * 65536
        for _ in range(size // len(chunk)):
            send(conn, server, chunk)
        return False

    with RawServer(huge) as server:
        handler = with_text_handler(raw_handler(server, wait_timeout=5.0))
        driver.handle(handler, *body_of(text_event(user_id="U1")))
        handler.marker.flush()
        written = server.bytes_written

    assert handler.stats().marked == 1
    assert written < 16 * 1024 * 1024  # the client stopped reading at 64 KiB and hung up


@pytest.mark.parametrize("split", [False, True], ids=["whole", "body-late"])
def test_a_200_leaves_its_connection_reusable(
    driver: Driver, raw_handler: RawHandlerFactory, split: bool
) -> None:
    """The 200 path returns without reading a body already in, and reads one still coming."""
    connections: set[int] = set()
    lock = threading.Lock()

    def respond(request: RawRequest, conn: socket.socket, server: RawServer) -> bool:
        with lock:
            connections.add(id(conn))
        if split:  # the body arrives after the head: the client must read it before reuse
            send(conn, server, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
            time.sleep(0.05)
            send(conn, server, b"{}")
        else:
            send(conn, server, ok())
        return True

    with RawServer(respond) as server:
        handler = with_text_handler(raw_handler(server))
        for user in ("U1", "U2", "U3"):
            driver.handle(handler, *body_of(text_event(user_id=user)))
        server.wait_for_requests(3)

    assert handler.stats().marked == 3
    assert len(connections) == 1  # one keep-alive connection served all three


# -- 13. check has one total deadline ---------------------------------------------------------


def test_check_gives_up_on_a_trickling_server_within_its_deadline() -> None:
    def trickle(request: RawRequest, conn: socket.socket, server: RawServer) -> bool:
        send(conn, server, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(200):
            send(conn, server, b"{")
            time.sleep(0.1)
        return False

    with RawServer(trickle) as server:
        reports: list[Any] = []
        worker = threading.Thread(
            target=lambda: reports.append(inspect_account(ACCESS_TOKEN, server.url, timeout=1.0)),
            daemon=True,
        )
        start = time.monotonic()
        worker.start()
        worker.join(10)
        elapsed = time.monotonic() - start

    assert reports, "check was still running after 10 s"
    assert elapsed < 1.0 + 2.0
    assert reports[0].outcome == "network-error"


# -- garbage on the wire ------------------------------------------------------------------------


def test_garbage_bytes_are_a_failed_attempt_never_a_crash(
    driver: Driver, raw_handler: RawHandlerFactory
) -> None:
    def garbage(request: RawRequest, conn: socket.socket, server: RawServer) -> bool:
        send(conn, server, b"\x00\xffNOT HTTP AT ALL\r\n\r\n")
        return False

    failures: list[MarkFailure] = []
    ran: list[str] = []
    with RawServer(garbage) as server:
        handler = with_text_handler(
            raw_handler(server, max_attempts=2, on_failure=failures.append, **FAST_RETRIES),
            ran=ran,
        )
        driver.handle(handler, *body_of(text_event("x", user_id="U1")))
        handler.marker.flush()

    assert ran == ["x"]
    assert [(f.status, f.attempts) for f in failures] == [(None, 2)]


# -- the fault matrix stays true -------------------------------------------------------------


def test_the_fault_matrix_names_only_tests_that_exist() -> None:
    root = Path(__file__).resolve().parent.parent
    matrix = (root / "docs" / "fault-matrix.md").read_text()
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", matrix))
    defined = set()
    for module in (root / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^(?:async )?def (test_[a-z0-9_]+)\(", module.read_text(), re.M))
    assert len(named) >= 30
    assert named - defined == set()


def test_failures_beyond_the_callback_queue_are_dropped_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The on_failure queue itself (no HTTP needed): a callback that blocks while
    # more than CALLBACK_QUEUE failures arrive loses the excess, never silently.
    unblock = threading.Event()
    seen: list[int] = []
    callbacks = CallbackThread()

    def blocked(n: int) -> None:
        unblock.wait(10)
        seen.append(n)

    with caplog.at_level(logging.WARNING, logger="line_markread"):
        accepted = [callbacks.call(blocked, n) for n in range(CALLBACK_QUEUE + 50)]
    unblock.set()
    assert callbacks.drain(10)
    callbacks.stop(1.0)

    dropped = accepted.count(False)
    assert 49 <= dropped <= 50  # the thread may have taken the first call off the queue
    assert len(seen) == accepted.count(True)
    assert len([r for r in caplog.records if "falling behind" in r.getMessage()]) == 1
