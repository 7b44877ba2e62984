"""Shutdown and fork with background handlers, in real processes with real signals (issue 16).

A sync bot (Flask, Django, gunicorn's workers) is stopped by SIGTERM or Ctrl-C
and often never calls ``close()``: the drain at interpreter exit must run
every background handler it accepted, and a stuck one must not keep the
process alive.  A forked child (gunicorn's pre-fork workers) must close
without waiting for, or counting, its parent's handlers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from linebot.v3.webhooks import MessageEvent, TextMessageContent

from line_markread import WebhookHandler
from line_markread.testing import (
    TOKEN_MARK_AS_READ_PATH,
    FakeLinePlatform,
    signed_body,
    text_event,
)

EXIT_BOUND = 120.0
"""Seconds a bot process may live in all, start-up included: a hang guard, not a timing claim
(a loaded 2-core machine has taken over 60 s to start, serve and stop one)."""

SYNC_BOT = textwrap.dedent(
    """
    import faulthandler, logging, os, signal, sys, threading, time
    faulthandler.register(signal.SIGUSR2)  # the watchdog's last look before it kills
    from linebot.v3.messaging import Configuration
    from linebot.v3.webhooks import MessageEvent, TextMessageContent
    from line_markread import WebhookHandler
    from line_markread.testing import signed_body, text_event

    how, grace, stuck = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "stuck"
    level = logging.INFO if how == "sigint-twice" else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s %(message)s")
    config = Configuration(host=os.environ["LINE_API_HOST"], access_token=os.environ["TOKEN"])
    handler = WebhookHandler("secret", configuration=config, background_grace=grace)
    never = threading.Event()

    def say(line):  # one write per line: print() writes its parts apart, and threads interleave
        sys.stdout.write(line + "\\n")
        sys.stdout.flush()

    @handler.add(MessageEvent, message=TextMessageContent, background=True)
    def on_text(event):
        say(f"start {event.message.text}")
        if stuck and event.message.text == "m0":
            never.wait()
        time.sleep(0.05)
        say(f"end {event.message.text}")

    if how == "sigterm":
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # as gunicorn's workers
    # Ctrl-C as under a terminal: a child of a shell's background job starts with SIGINT
    # ignored, and Python then leaves it ignored (seen: a make test run under nohup hung here).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    events = [text_event(f"m{i}", user_id="U1") for i in range(4)]
    handler.handle(*signed_body(*events, channel_secret="secret"))
    say("handled")
    if how == "close":
        handler.close()
    elif how in ("sigterm", "sigint", "sigint-twice"):
        never.wait()  # serving, until the signal
    # Otherwise the script just ends, as a dev server stopped by Ctrl-C does.
    """
)


def run_bot(
    fake: FakeLinePlatform, tmp_path: Path, how: str, grace: float, stuck: bool
) -> tuple[int, list[str], str]:
    """Run the sync bot; send *how*'s signal once it is serving (and m0 started, if stuck)."""
    script = tmp_path / "bot.py"
    script.write_text(SYNC_BOT)
    process = subprocess.Popen(
        [sys.executable, str(script), how, str(grace), "stuck" if stuck else "ok"],
        env={**os.environ, "LINE_API_HOST": fake.url, "TOKEN": fake.access_token},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def hung() -> None:  # a hang fails, it does not hang; its stacks go to stderr first
        process.send_signal(signal.SIGUSR2)
        threading.Event().wait(2.0)
        process.kill()

    watchdog = threading.Timer(EXIT_BOUND, hung)
    watchdog.start()
    try:
        assert process.stdout is not None
        lines: list[str] = []
        waiting_for = {"handled", "start m0"} if stuck else {"handled"}
        while waiting_for and (line := process.stdout.readline()):
            lines.append(line.strip())
            waiting_for.discard(line.strip())
        if how == "sigterm":
            process.send_signal(signal.SIGTERM)
        elif how.startswith("sigint"):
            process.send_signal(signal.SIGINT)
        stderr = ""
        if how == "sigint-twice":  # once the drain at exit says it waits: Ctrl-C again
            assert process.stderr is not None
            while (line := process.stderr.readline()) and "Ctrl-C again" not in line:
                stderr += line
            stderr += line
            process.send_signal(signal.SIGINT)
        rest, more = process.communicate()
        stderr += more
    finally:
        watchdog.cancel()
    lines += [line.strip() for line in rest.splitlines()]
    return process.returncode, lines, stderr


@pytest.mark.parametrize("how", ["sigterm", "exit"])
def test_a_graceful_restart_of_a_sync_bot_runs_every_queued_background_handler(
    fake: FakeLinePlatform, tmp_path: Path, how: str
) -> None:
    """gunicorn's SIGTERM, or a script that ends: the drain at exit runs all 4, in order."""
    code, lines, stderr = run_bot(fake, tmp_path, how, grace=20.0, stuck=False)

    assert code == 0, stderr
    handled = [line for line in lines if line != "handled"]
    assert handled == [f"{what} m{i}" for i in range(4) for what in ("start", "end")], lines
    assert "WARNING" not in stderr
    assert stderr == ""
    # "Read" means picked up: each queued message is marked when its job starts, in order
    # (one request each, where the webhook-time marks of the old pool made one for all 4).
    marks = fake.wait_for_requests(4, path=TOKEN_MARK_AS_READ_PATH)
    assert [r.status for r in marks] == [200] * 4
    assert len({r.json["markAsReadToken"] for r in marks}) == 4  # type: ignore[index]  # JSON object


@pytest.mark.parametrize("how", ["close", "exit", "sigint"])
def test_a_stuck_background_handler_does_not_keep_the_process_alive(
    fake: FakeLinePlatform, tmp_path: Path, how: str
) -> None:
    """close(), a script that ends, or Ctrl-C: the process exits after background_grace.

    What was not run is counted and reported in one WARNING naming the chat
    (never the token).
    """
    code, lines, stderr = run_bot(fake, tmp_path, how, grace=0.5, stuck=True)

    assert code == (-signal.SIGINT if how == "sigint" else 0), stderr
    assert "start m0" in lines
    assert not any(line.startswith(("start m1", "end")) for line in lines), lines
    (warning,) = [line for line in stderr.splitlines() if line.startswith("WARNING")]
    assert "abandoned 4 background handler(s): 3 never started, 1 still running" in warning
    assert "chats: user:U1" in warning
    assert fake.access_token not in stderr


FORKED = textwrap.dedent(
    """
    import faulthandler, os, sys, threading, time, warnings
    from linebot.v3.messaging import Configuration
    from linebot.v3.webhooks import MessageEvent, TextMessageContent
    from line_markread import WebhookHandler
    from line_markread.testing import signed_body, text_event

    warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads: the point here
    background = sys.argv[1] == "background"
    config = Configuration(host=os.environ["LINE_API_HOST"], access_token="fake-access-token")
    handler = WebhookHandler("secret", configuration=config, background_grace=60.0)
    started, release = threading.Event(), threading.Event()

    @handler.add(MessageEvent, message=TextMessageContent, background=background)
    def on_text(event):
        started.set()
        if background:
            release.wait(60)

    handler.handle(*signed_body(text_event("parent", user_id="U1"), channel_secret="secret"))
    assert started.wait(30)  # the parent used the marker (and its pool)
    for how in ("close", "with", "marker.close"):
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            faulthandler.dump_traceback_later(20, exit=True)  # blocked: traceback, exit 1
            if how == "close":
                handler.close()
            elif how == "with":
                with handler:
                    pass
            else:
                handler.marker.close()
            s = handler.stats()
            print(how, s.background_started, s.background_abandoned, s.background_pending)
            sys.stdout.flush()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print(how, "exit", os.waitstatus_to_exitcode(status), flush=True)
    release.set()
    handler.close()
    s = handler.stats()
    print("parent", s.background_started, s.background_finished, s.background_abandoned)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX-only")
@pytest.mark.parametrize("handlers", ["plain", "background"])
def test_a_forked_child_closes_at_once_and_counts_none_of_its_parents_handlers(
    fake: FakeLinePlatform, tmp_path: Path, handlers: str
) -> None:
    """gunicorn's workers fork after the app (and maybe its marker) was used.

    ``plain``: a child closing before any use blocked forever on the parent's
    loop.  ``background``: it waited ``background_grace`` (60 s) for the
    parent's running handler and reported it as its own abandoned.
    """
    script = tmp_path / "forked.py"
    script.write_text(FORKED)
    done = subprocess.run(
        [sys.executable, str(script), handlers],
        env={**os.environ, "LINE_API_HOST": fake.url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "close 0 0 0",
        "close exit 0",
        "with 0 0 0",
        "with exit 0",
        "marker.close 0 0 0",
        "marker.close exit 0",
        "parent 1 1 0" if handlers == "background" else "parent 0 0 0",
    ], done.stderr
    assert done.stderr == ""


def test_a_second_ctrl_c_stops_the_drain_at_exit_waiting(
    fake: FakeLinePlatform, tmp_path: Path
) -> None:
    """``background_grace`` is 300 s here: the first Ctrl-C starts the drain, which says so;
    the second ends the wait, and what was left is still counted and reported."""
    code, _, stderr = run_bot(fake, tmp_path, "sigint-twice", grace=300.0, stuck=True)

    assert code == -signal.SIGINT, stderr
    assert "waiting up to 300.0s for 4 background handler(s)" in stderr
    (warning,) = [line for line in stderr.splitlines() if line.startswith("WARNING")]
    assert "abandoned 4 background handler(s): 3 never started, 1 still running" in warning
    assert fake.access_token not in stderr


def _blocked_signals(thread: threading.Thread) -> set[int]:
    """The signals *thread* blocks, from the kernel's own record (``SigBlk``)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    (mask,) = [line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:")]
    bits = int(mask, 16)
    return {number for number in range(1, 65) if bits >> (number - 1) & 1}


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_every_thread_the_plugin_starts_leaves_the_stop_signals_to_the_main_thread(
    fake: FakeLinePlatform,
) -> None:
    """Linux gives a process's SIGTERM or SIGINT to any thread not blocking it; Python runs the
    handler in the main thread only once that thread wakes. A sync bot's main thread waiting on
    a lock is not woken when the kernel chose a plugin thread, and the bot does not stop."""
    before = set(threading.enumerate())
    handler = WebhookHandler(
        "secret", configuration=fake.configuration(), on_failure=lambda failure: None
    )
    ran = threading.Event()

    @handler.add(MessageEvent, message=TextMessageContent, background=True)
    def on_text(event: object) -> None:
        ran.set()

    fake.reject_token("rejected")  # a failure, so the on_failure thread starts too
    rejected = text_event("no", user_id="U2", token="rejected")
    handler.handle(*signed_body(text_event("hi", user_id="U1"), rejected, channel_secret="secret"))
    assert ran.wait(30)
    handler.marker.flush()
    started = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    try:
        assert len(started) >= 3, started  # the loop, a background thread, on_failure's
        for thread in started:
            blocked = _blocked_signals(thread)
            assert {signal.SIGINT, signal.SIGTERM, signal.SIGHUP} <= blocked, thread.name
        assert signal.SIGINT not in _blocked_signals(threading.main_thread())
    finally:
        handler.close()
