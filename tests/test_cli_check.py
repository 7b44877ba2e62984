"""``line-markread check`` against the fake LINE platform: one test per outcome and exit status.

Every outcome is also run looking for the token in everything printed: it is
a credential and must never show, whatever went wrong.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from line_markread._cli import main
from line_markread._cli.check import Exit
from line_markread.testing import FakeLinePlatform, Fault

TOKEN = "tok-Distinctive-7c1e0b9f4a-do-not-print"
BOT_INFO = "/v2/bot/info"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No token from the developer's shell, and no proxy between us and loopback."""
    monkeypatch.delenv("LINE_CHANNEL_ACCESS_TOKEN", raising=False)
    for name in (
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake() -> Iterator[FakeLinePlatform]:
    with FakeLinePlatform(access_token=TOKEN, bot_name="Shop Bot") as platform:
        yield platform


def closed_port_url() -> str:
    """A loopback URL nobody listens on: bind a free port, then let it go."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["check", *args])
    out, err = capsys.readouterr()
    return code, out, err


def check_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out, err = check(capsys, *args, "--json")
    assert err == ""
    (line,) = out.splitlines()
    report: dict[str, Any] = json.loads(line)
    assert report["exit_code"] == code
    return code, report


def test_ready_when_mark_as_read_mode_is_manual(
    fake: FakeLinePlatform, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = check(capsys, "--host", fake.url, "--access-token", TOKEN)

    assert code == 0
    assert err == ""
    assert "Shop Bot" in out
    assert "chatMode:       chat" in out
    assert "markAsReadMode: manual" in out
    assert "line_markread is needed" in out
    (request,) = fake.requests()
    assert (request.method, request.path, request.authorized) == ("GET", BOT_INFO, True)


def test_token_comes_from_the_environment_when_the_flag_is_absent(
    fake: FakeLinePlatform, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LINE_CHANNEL_ACCESS_TOKEN", TOKEN)

    code, report = check_json(capsys, "--host", fake.url)

    assert code == 0
    assert report["outcome"] == "ready"
    assert report["bot"]["displayName"] == "Shop Bot"
    assert report["bot"]["markAsReadMode"] == "manual"
    assert fake.requests()[0].authorized


def test_flag_wins_over_the_environment(
    fake: FakeLinePlatform, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LINE_CHANNEL_ACCESS_TOKEN", "stale-token")

    code, _ = check_json(capsys, "--host", fake.url, "--access-token", TOKEN)

    assert code == 0


def test_not_needed_when_mark_as_read_mode_is_auto(
    fake: FakeLinePlatform, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.set_bot_info(chat_mode="bot", mark_as_read_mode="auto")

    code, out, _ = check(capsys, "--host", fake.url, "--access-token", TOKEN)

    assert code == 3
    assert "markAsReadMode: auto" in out
    assert "Chat is Off" in out


def test_missing_token_exits_2_without_a_request(
    fake: FakeLinePlatform, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = check(capsys, "--host", fake.url)

    assert code == 2
    assert out == ""
    assert "LINE_CHANNEL_ACCESS_TOKEN" in err
    assert fake.requests() == []


def test_wrong_token_exits_4(fake: FakeLinePlatform, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = check_json(capsys, "--host", fake.url, "--access-token", "not-" + TOKEN)

    assert code == 4
    assert report["outcome"] == "unauthorized"
    assert report["http_status"] == 401
    assert report["request_id"] == fake.requests()[0].request_id


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(500, id="server error"),
        pytest.param(Fault.status(200, body=b"nope"), id="not JSON"),
        pytest.param(Fault.status(200, body=b'["a list"]'), id="not an object"),
        pytest.param(Fault.status(200, body=b'{"displayName": "x"}'), id="no markAsReadMode"),
        pytest.param(302, id="redirect"),
    ],
)
def test_unexpected_response_exits_6(
    fake: FakeLinePlatform, capsys: pytest.CaptureFixture[str], answer: int | Fault
) -> None:
    fake.script(BOT_INFO, answer)

    code, report = check_json(capsys, "--host", fake.url, "--access-token", TOKEN)

    assert code == 6
    assert report["outcome"] == "unexpected-response"


def test_network_failure_exits_5(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = check(capsys, "--host", closed_port_url(), "--access-token", TOKEN)

    assert code == 5
    assert out == ""
    assert "could not reach" in err


@pytest.mark.parametrize("host", ["ftp://example.com", "api.line.me", "http://bad host"])
def test_unusable_host_is_a_usage_error(capsys: pytest.CaptureFixture[str], host: str) -> None:
    code, _ = check_json(capsys, "--host", host, "--access-token", TOKEN)

    assert code == 2


def test_a_token_with_a_trailing_newline_is_stripped_as_the_plugin_does(
    fake: FakeLinePlatform, capsys: pytest.CaptureFixture[str]
) -> None:
    # A secret file's trailing newline: the plugin strips it (issue 9, item 1), so check does too.
    code, out, err = check(capsys, "--host", fake.url, "--access-token", TOKEN + "\n")

    assert code == 0
    assert TOKEN not in out + err


def test_token_with_inner_whitespace_is_refused_before_any_request(
    fake: FakeLinePlatform, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = check(capsys, "--host", fake.url, "--access-token", TOKEN[:5] + "\n" + TOKEN)

    assert code == 2
    assert fake.requests() == []
    assert TOKEN not in out + err


Setup = Callable[[FakeLinePlatform], str]
"""Arrange one outcome on the fake; return the host to check."""


def ready(fake: FakeLinePlatform) -> str:
    return fake.url


def not_needed(fake: FakeLinePlatform) -> str:
    fake.set_bot_info(mark_as_read_mode="auto")
    return fake.url


def unauthorized(fake: FakeLinePlatform) -> str:
    fake.access_token = "another-channel's-token"
    return fake.url


def server_error(fake: FakeLinePlatform) -> str:
    fake.script(BOT_INFO, 500)
    return fake.url


def not_json(fake: FakeLinePlatform) -> str:
    fake.script(BOT_INFO, Fault.status(200, body=b"nope"))
    return fake.url


def error_echoing_the_token(fake: FakeLinePlatform) -> str:
    fake.script(BOT_INFO, Fault.status(400, body=json.dumps({"message": f"bad: {TOKEN}"})))
    return fake.url


def network_failure(fake: FakeLinePlatform) -> str:
    return closed_port_url()


OUTCOMES = (
    ready,
    not_needed,
    unauthorized,
    server_error,
    not_json,
    error_echoing_the_token,
    network_failure,
)


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("setup", OUTCOMES, ids=lambda setup: setup.__name__)
def test_token_is_never_printed(
    fake: FakeLinePlatform, capsys: pytest.CaptureFixture[str], setup: Setup, as_json: bool
) -> None:
    host = setup(fake)

    code, out, err = check(capsys, "--host", host, "--access-token", TOKEN, *["--json"] * as_json)

    assert out + err
    assert TOKEN not in out + err
    assert code in {0, 3, 4, 5, 6}


def test_check_help_documents_every_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--help"]) == 0

    out = capsys.readouterr().out
    for option in ("--access-token", "--host", "--json", "LINE_CHANNEL_ACCESS_TOKEN"):
        assert option in out
    for status in Exit:
        assert f"  {int(status)}  " in out
    assert [int(status) for status in Exit] == [0, 2, 3, 4, 5, 6]


def test_check_as_a_subprocess(fake: FakeLinePlatform) -> None:
    env = {**os.environ, "LINE_CHANNEL_ACCESS_TOKEN": TOKEN}

    done = subprocess.run(
        [sys.executable, "-m", "line_markread", "check", "--host", fake.url, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outcome"] == "ready"
    assert TOKEN not in done.stdout + done.stderr
