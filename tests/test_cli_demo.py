"""``line-markread demo``: exit status, and the guarantees re-derived from its ``--json`` timeline.

The demo checks itself, but a self-check can be wrong in the same way as the
thing it checks, so these tests recompute every guarantee from the raw
records: times, chats, statuses and counts.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import re
import subprocess
import sys
from typing import Any

import pytest

from line_markread import __version__
from line_markread._cli import demo, main
from line_markread._cli.demo import output, stage, verdict
from line_markread._cli.demo.timeline import Entry, Message
from line_markread._stats import Stats
from line_markread.testing import FakeLinePlatform

Record = dict[str, Any]


class Run:
    """One demo run's ``--json`` output, split by record type."""

    def __init__(self, stdout: str) -> None:
        self.records: list[Record] = [json.loads(line) for line in stdout.splitlines()]
        self.messages = [r for r in self.records if r["type"] == "message"]
        self.events = [r for r in self.records if r["type"] == "event"]
        self.checks = [r for r in self.records if r["type"] == "check"]
        self.summary = self.records[-1]

    def of(self, what: str, *, message: str | None = None, chat: str | None = None) -> list[Record]:
        return [
            e
            for e in self.events
            if e["what"] == what
            and (message is None or e["message"] == message)
            and (chat is None or e["chat"] == chat)
        ]

    def expecting(self, expect: str) -> list[Record]:
        return [m for m in self.messages if m["expect"] == expect]

    def index(self, label: str) -> int:
        return int(next(m["index"] for m in self.messages if m["label"] == label))

    def statuses(self, label: str) -> list[int]:
        return [e["status"] for e in self.of("line-answered", message=label)]


@pytest.fixture(scope="module")
def subprocess_run() -> tuple[subprocess.CompletedProcess[str], Run]:
    """The demo as users run it: a separate process, ``--json``, default seed."""
    done = subprocess.run(
        [sys.executable, "-m", "line_markread", "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done, Run(done.stdout)


@pytest.fixture(scope="module")
def run(subprocess_run: tuple[subprocess.CompletedProcess[str], Run]) -> Run:
    return subprocess_run[1]


def test_subprocess_exits_0_with_json_only_on_stdout(
    subprocess_run: tuple[subprocess.CompletedProcess[str], Run],
) -> None:
    done, run = subprocess_run

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert all(isinstance(r, dict) for r in run.records)
    kinds = [r["type"] for r in run.records]
    # messages, then the timeline, then the checks, then one summary
    assert kinds == sorted(kinds, key=["message", "event", "check", "summary"].index)
    assert kinds.count("summary") == 1
    assert run.summary["ok"] is True
    assert all(c["ok"] for c in run.checks)
    assert run.summary["version"] == __version__


def test_witnesses_agree_on_cause_and_effect(run: Run) -> None:
    """Three witnesses (the bot, the engine's trace, the fake's records) on one clock.

    If their clocks were not one, a cause would show after its effect: a mark
    sent before the webhook of its chat came in, or a reply reaching LINE
    before the handler that sent it ran.
    """
    handlers = run.of("handler")
    assert len(handlers) >= 10
    for sent in run.of("mark-sent"):
        webhooks = run.of("webhook", chat=sent["chat"])
        assert webhooks
        assert min(w["t_ms"] for w in webhooks) <= sent["t_ms"]
    for reply in run.of("reply"):
        (handler,) = run.of("handler", message=reply["message"])
        assert handler["t_ms"] <= reply["t_ms"]


def test_every_marked_reply_follows_a_200_for_its_message_or_a_newer_one(run: Run) -> None:
    """The product's promise: LINE shows "Read" before the bot's reply."""
    due = run.expecting("marked")
    assert len(due) >= 10

    for message in due:
        (reply,) = run.of("reply", message=message["label"])
        covering = [
            answer
            for answer in run.of("line-answered", chat=message["chat"])
            if answer["status"] == 200
            and run.index(answer["message"]) >= message["index"]
            and answer["t_ms"] <= reply["t_ms"]
        ]
        assert covering, message["label"]
    assert run.summary["read_before_reply"] == run.summary["read_before_reply_due"] == len(due)


def test_every_handler_ran_once_and_its_reply_was_accepted(run: Run) -> None:
    for message in run.messages:
        (handler,) = run.of("handler", message=message["label"])
        (reply,) = run.of("reply", message=message["label"])
        assert handler["t_ms"] <= reply["t_ms"]
        assert reply["status"] == 200
    assert run.summary["replies"] == len(run.messages)


def test_marked_handlers_start_after_the_plugin_saw_their_chat_marked(run: Run) -> None:
    for message in run.expecting("marked"):
        (handler,) = run.of("handler", message=message["label"])
        marked = run.of("mark-marked", chat=message["chat"])
        assert any(m["t_ms"] <= handler["t_ms"] for m in marked), message["label"]


def test_fewer_requests_than_messages(run: Run) -> None:
    requests = len(run.of("line-answered"))

    assert requests < len(run.messages)
    assert requests == run.summary["mark_requests"]
    assert len(run.messages) == run.summary["messages"]


def test_a_burst_and_a_group_each_take_one_request(run: Run) -> None:
    for chat in ("dave", "friends"):
        labels = [m["label"] for m in run.messages if m["chat"] == chat]
        (answer,) = run.of("line-answered", chat=chat)
        assert len(labels) > 1
        assert answer["message"] == labels[-1]  # the newest token marks the others
        assert answer["status"] == 200


def test_opted_out_sticker_is_never_marked_but_handled(run: Run) -> None:
    (sticker,) = run.expecting("opted-out")

    assert sticker["kind"] == "sticker"
    assert run.statuses(sticker["label"]) == []
    assert run.of("handler", message=sticker["label"])


def test_rejected_token_gets_one_400_and_the_handler_still_runs(run: Run) -> None:
    (message,) = run.expecting("rejected")
    (answer,) = run.of("line-answered", message=message["label"])
    (reply,) = run.of("reply", message=message["label"])

    assert answer["status"] == 400
    assert run.of("mark-failed", chat=message["chat"])
    assert answer["t_ms"] <= reply["t_ms"]


def test_outage_is_retried_until_it_recovers(run: Run) -> None:
    recovered = [m for m in run.messages if run.statuses(m["label"]) == [503, 503, 200]]

    (message,) = recovered
    retries = run.of("mark-retry", chat=message["chat"])
    sent = run.of("mark-sent", chat=message["chat"])
    assert [r["status"] for r in retries] == [503, 503]
    assert [s["attempt"] for s in sent] == [1, 2, 3]


def test_newer_message_supersedes_a_retrying_mark(run: Run) -> None:
    (superseded,) = run.of("mark-superseded")
    chat = superseded["chat"]
    older, newer = (m["label"] for m in run.messages if m["chat"] == chat)
    (retry,) = run.of("mark-retry", chat=chat)
    second_webhook = run.of("webhook", chat=chat)[1]

    # The newer message arrived while the older mark was waiting to retry ...
    assert retry["t_ms"] <= second_webhook["t_ms"] <= superseded["t_ms"]
    # ... and one 200 for it marked both: the older token was never retried.
    assert run.statuses(older) == [503]
    assert run.statuses(newer) == [200]


def test_every_webhook_is_answered_200(run: Run) -> None:
    answers = run.of("webhook-answered")

    assert len(answers) == len(run.of("webhook"))
    assert {a["status"] for a in answers} == {200}


def test_plugin_stats_agree_with_line_records(run: Run) -> None:
    (stats,) = [c for c in run.checks if "stats" in c["name"]]

    assert stats["ok"] is True


def test_no_credentials_or_tokens_in_the_output(
    subprocess_run: tuple[subprocess.CompletedProcess[str], Run],
) -> None:
    done, _ = subprocess_run

    for secret in (stage.DEMO_ACCESS_TOKEN, stage.DEMO_CHANNEL_SECRET, "markAsReadToken"):
        assert secret not in done.stdout + done.stderr


def test_in_process_json_run_holds_with_another_seed(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--json", "--seed", "3"])

    out, err = capsys.readouterr()
    run = Run(out)
    assert code == 0, out
    assert err == ""
    assert run.summary["seed"] == 3
    assert run.summary["ok"] is True


def test_seed_makes_the_jitter_reproducible(capsys: pytest.CaptureFixture[str]) -> None:
    def retry_delays(seed: str) -> list[float]:
        assert main(["demo", "--json", "--seed", seed]) == 0
        run = Run(capsys.readouterr().out)
        return [e["delay_ms"] for e in run.of("mark-retry") if e["status"] == 503]

    assert retry_delays("11") == retry_delays("11")


def test_human_output_is_plain_when_piped(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo"])

    out, err = capsys.readouterr()
    assert code == 0
    assert err == ""
    assert "\x1b[" not in out
    assert re.search(r"read before reply for (\d+) of \1 replies", out)
    assert "Every guarantee held." in out
    assert stage.DEMO_ACCESS_TOKEN not in out


def test_demo_exits_1_when_handlers_do_not_wait(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The self-check has teeth: a plugin that let handlers run early fails the demo.

    ``wait_timeout=0`` releases each handler at once, and a
    slow LINE (50 ms per answer) makes every reply overtake its mark.
    """
    monkeypatch.setattr(stage, "DEMO_SETTINGS", {**stage.DEMO_SETTINGS, "wait_timeout": 0.0})
    monkeypatch.setattr(demo, "FakeLinePlatform", functools.partial(FakeLinePlatform, latency=0.05))

    code = main(["demo", "--json"])

    run = Run(capsys.readouterr().out)
    assert code == 1
    assert run.summary["ok"] is False
    (read_first,) = [c for c in run.checks if c["name"] == "read before reply"]
    assert read_first["ok"] is False


def test_logging_is_restored_after_the_demo(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("line_markread")
    before = (logger.level, logger.propagate, list(logger.handlers))

    assert main(["demo", "--json"]) == 0

    capsys.readouterr()
    assert (logger.level, logger.propagate, list(logger.handlers)) == before


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_and_alignment_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")

    assert output.Style.for_stream(_Terminal()) == output.Style(colour=True, aligned=True)
    assert output.Style.for_stream(io.StringIO()) == output.Style(colour=False, aligned=False)
    monkeypatch.setenv("NO_COLOR", "1")
    assert output.Style.for_stream(_Terminal()) == output.Style(colour=False, aligned=True)


def test_demo_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--help"]) == 0

    out = capsys.readouterr().out
    assert "--json" in out
    assert "--seed" in out
    assert "--html" in out
    assert "exit status" in out


def test_version_and_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"line-markread {__version__}"

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out
    assert "check" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["demo", "--seed", "seven"]) == 2
    assert main(["no-such-command"]) == 2

    assert "usage:" in capsys.readouterr().err


def test_demo_that_cannot_run_exits_1_with_a_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def broken(seed: int) -> demo.Result:
        raise OSError("no loopback today")

    monkeypatch.setattr(demo, "play", broken)

    assert main(["demo", "--json"]) == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert "could not run: OSError: no loopback today" in err


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    """``line-markread demo --json | head -1`` must not end in a BrokenPipeError."""
    process = subprocess.Popen(
        [sys.executable, "-m", "line_markread", "demo", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    process.stdout.close()  # long before the demo writes anything

    _, err = process.communicate(timeout=60)

    assert err == b""
    assert process.returncode == 141


# -- the slow question: loading=, background=True ---------------------------------


def test_the_slow_question_is_answered_in_the_background_read_loading_reply(run: Run) -> None:
    slow = [m for m in run.messages if m["thinking"] > 0]
    assert [m["label"] for m in slow] == ["hana#1", "hana#2"]
    assert all(e["delay_ms"] < 500 for e in run.of("webhook-answered", chat="hana"))
    starts = run.of("loading", chat="hana")
    assert len(starts) >= 3  # hana#1, its refresh, hana#2
    assert all(s["status"] == 202 for s in starts)
    first_done = run.of("handler-done", message="hana#1")[0]
    second = run.of("handler", message="hana#2")[0]
    assert first_done["t_ms"] <= second["t_ms"]
    assert run.of("loading", chat="alice") == []  # only handlers with loading= show it


def _message(label: str, index: int, thinking: float) -> Message:
    return Message(
        label=label,
        chat="hana",
        index=index,
        sender="hana",
        kind="image",
        text="?",
        expect="marked",
        token=f"t{index}",
        reply_token=f"r{index}",
        message_id=f"m{index}",
        thinking=thinking,
    )


def _entry(t_ms: float, what: str, message: str | None = None, **fields: Any) -> Entry:
    return Entry(t_ms, "hana", what, "test", message=message, **fields)


def _evidence(*entries: Entry) -> verdict.Evidence:
    messages = (_message("hana#1", 1, 3.0), _message("hana#2", 2, 0.3))
    return verdict.Evidence(messages, tuple(sorted(entries, key=lambda e: e.t_ms)), Stats())


GOOD = (
    _entry(1, "webhook-answered", delay_ms=2.0, status=200),
    _entry(2, "line-answered", "hana#1", status=200),
    _entry(3, "loading", status=202, delay_ms=0.5),
    _entry(4, "handler", "hana#1"),
    _entry(2000, "loading", status=202, delay_ms=0.5),
    _entry(3000, "handler-done", "hana#1"),
    _entry(3001, "reply", "hana#1", status=200),
    _entry(3002, "line-answered", "hana#2", status=200),
    _entry(3003, "loading", status=202, delay_ms=0.5),
    _entry(3004, "handler", "hana#2"),
    _entry(3300, "handler-done", "hana#2"),
    _entry(3301, "reply", "hana#2", status=200),
)


def test_the_slow_checks_pass_on_the_story_they_tell() -> None:
    evidence = _evidence(*GOOD)
    for check in (
        verdict.check_slow_question,
        verdict.check_loading_refreshed,
        verdict.check_chat_order,
    ):
        assert check(evidence).ok, check(evidence)


def test_the_slow_checks_have_teeth() -> None:
    """Each fails when its part of the story is missing or out of order."""
    no_refresh = [e for e in GOOD if e.t_ms != 2000]
    assert not verdict.check_loading_refreshed(_evidence(*no_refresh)).ok
    after_return = [*GOOD, _entry(3000.5, "loading", status=202, delay_ms=0.5)]
    assert not verdict.check_loading_refreshed(_evidence(*after_return)).ok
    overlapping = [e for e in GOOD if e.what != "handler-done" or e.message != "hana#1"]
    overlapping.append(_entry(3500, "handler-done", "hana#1"))
    assert not verdict.check_chat_order(_evidence(*overlapping)).ok
    loading_late = [e for e in GOOD if e.t_ms != 3] + [_entry(5, "loading", status=202)]
    assert not verdict.check_slow_question(_evidence(*loading_late)).ok
    slow_webhook = [e for e in GOOD if e.what != "webhook-answered"]
    slow_webhook.append(_entry(1, "webhook-answered", delay_ms=900.0, status=200))
    assert not verdict.check_slow_question(_evidence(*slow_webhook)).ok
