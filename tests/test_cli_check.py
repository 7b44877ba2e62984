"""``line-markread check`` against the fake LINE platform: one test per outcome and exit status.

Every outcome is also run looking for the token in everything printed: it is
a credential and must never show, whatever went wrong.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from line_markread import WebhookHandler
from line_markread._cli import main
from line_markread._cli.check import Exit
from line_markread.aiohttp import webhook_view
from line_markread.testing import (
    WEBHOOK_ENDPOINT_PATH,
    WEBHOOK_TEST_PATH,
    FakeLinePlatform,
    Fault,
)

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
    assert [int(status) for status in Exit] == [0, 2, 3, 4, 5, 6, 7, 8]
    for option in ("--webhook", "--mode"):
        assert option in out


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


# -- check --webhook: LINE's webhook endpoints, the fake calling a real bot --

SECRET = "webhook-test-channel-secret"


class Bot:
    """A real bot server on loopback, on its own loop in a thread, as LINE would call it."""

    def __init__(self, fake: FakeLinePlatform, *, delay: float = 0.0, secret: str = SECRET):
        self._fake, self._delay, self._secret = fake, delay, secret
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.bodies: list[bytes] = []

    def __enter__(self) -> str:
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    async def _start(self) -> str:
        self.handler = WebhookHandler(self._secret, configuration=self._fake.configuration())
        view = webhook_view(self.handler)

        async def callback(request: web.Request) -> web.StreamResponse:
            self.bodies.append(await request.read())
            if self._delay:
                await asyncio.sleep(self._delay)  # the slow bot under test
            return await view(request)

        app = web.Application()
        app.router.add_post("/callback", callback)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self._runner.addresses[0][1]}/callback"

    async def _stop(self) -> None:
        await self._runner.cleanup()
        await self.handler.aclose()


def webhook_check(
    capsys: pytest.CaptureFixture[str], fake: FakeLinePlatform, *args: str
) -> tuple[int, dict[str, Any]]:
    return check_json(capsys, "--host", fake.url, "--access-token", TOKEN, "--webhook", *args)


def test_webhook_that_answers_in_time(
    fake: FakeLinePlatform, capsys: pytest.CaptureFixture[str]
) -> None:
    bot = Bot(fake)
    with bot as url:
        fake.set_webhook_endpoint(url, channel_secret=SECRET)
        code, report = webhook_check(capsys, fake)
        text_code, out, err = check(
            capsys, "--host", fake.url, "--access-token", TOKEN, "--webhook"
        )

    assert code == Exit.READY == text_code
    webhook = report["webhook"]
    assert webhook["outcome"] == "ok"
    assert webhook["endpoint"] == url
    assert webhook["active"] is True
    assert (webhook["success"], webhook["status_code"], webhook["reason"]) == (True, 200, "OK")
    # The bot really got LINE's check body, signed (the plugin's own view verified it: 200).
    assert json.loads(bot.bodies[0])["events"] == []
    assert err == ""
    assert f"endpoint:        {url} (Use webhook: on)" in out
    assert "LINE reached it: yes" in out
    assert "background=True" in out
    assert "redelivery" in out
    assert TOKEN not in out + json.dumps(report)


def test_webhook_slower_than_lines_two_seconds_is_a_request_timeout(
    fake: FakeLinePlatform, capsys: pytest.CaptureFixture[str]
) -> None:
    with Bot(fake, delay=2.5) as url:
        fake.set_webhook_endpoint(url, channel_secret=SECRET)
        code, report = webhook_check(capsys, fake)
        text_code, out, err = check(
            capsys, "--host", fake.url, "--access-token", TOKEN, "--webhook"
        )

    assert code == int(Exit.WEBHOOK_FAILED) == 7 == text_code
    assert report["outcome"] == "webhook-request_timeout"
    webhook = report["webhook"]
    assert webhook["success"] is False
    assert webhook["reason"] == "request_timeout"
    assert webhook["status_code"] == 0
    assert out == ""  # a failure goes to stderr, all of it
    assert "no answer within 2 s" in err
    for advice in ("background=True", "PostgresQueue", "redelivery"):
        assert advice in err
    assert TOKEN not in err


def test_unreachable_webhook_is_could_not_connect(
    fake: FakeLinePlatform, capsys: pytest.CaptureFixture[str]
) -> None:
    url = closed_port_url() + "/callback"
    fake.set_webhook_endpoint(url)

    code, report = webhook_check(capsys, fake)

    assert code == Exit.WEBHOOK_FAILED
    webhook = report["webhook"]
    assert (webhook["reason"], webhook["status_code"], webhook["success"]) == (
        "could_not_connect",
        0,
        False,
    )
    assert url in webhook["message"]


def test_webhook_answering_an_error_status(
    fake: FakeLinePlatform, capsys: pytest.CaptureFixture[str]
) -> None:
    with Bot(fake, secret="another-channel's-secret") as url:  # signature check fails: 400
        fake.set_webhook_endpoint(url, channel_secret=SECRET)
        code, report = webhook_check(capsys, fake)

    assert code == Exit.WEBHOOK_FAILED
    webhook = report["webhook"]
    assert (webhook["reason"], webhook["status_code"]) == ("error_status_code", 400)
    assert "channel secret" in webhook["advice"]


def test_no_webhook_url_exits_8_without_a_test_call(
    fake: FakeLinePlatform, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = webhook_check(capsys, fake)

    assert code == int(Exit.WEBHOOK_OFF) == 8
    assert report["webhook"]["outcome"] == "unset"
    assert [r.path for r in fake.wait_for_requests(2)] == [BOT_INFO, WEBHOOK_ENDPOINT_PATH]


def test_webhook_turned_off_exits_8(
    fake: FakeLinePlatform, capsys: pytest.CaptureFixture[str]
) -> None:
    with Bot(fake) as url:
        fake.set_webhook_endpoint(url, active=False, channel_secret=SECRET)
        code, report = webhook_check(capsys, fake)

    assert code == Exit.WEBHOOK_OFF
    assert report["webhook"]["outcome"] == "off"
    assert report["webhook"]["active"] is False


def test_webhook_is_not_asked_about_when_bot_info_fails(
    fake: FakeLinePlatform, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = check_json(
        capsys, "--host", fake.url, "--access-token", "wrong-token", "--webhook"
    )

    assert code == Exit.UNAUTHORIZED
    assert report["webhook"] is None
    assert [r.path for r in fake.wait_for_requests(1)] == [BOT_INFO]


def test_webhook_endpoints_are_checked_only_with_the_flag(
    fake: FakeLinePlatform, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = check_json(capsys, "--host", fake.url, "--access-token", TOKEN)

    assert code == Exit.READY
    assert report["webhook"] is None
    assert [r.path for r in fake.wait_for_requests(1)] == [BOT_INFO]


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_legacy_user_id_api_gets_a_warning(
    fake: FakeLinePlatform, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    args = ["--host", fake.url, "--access-token", TOKEN, "--mode", "user"]
    code, out, err = check(capsys, *args, *["--json"] * as_json)
    assert err == ""

    assert code == Exit.READY  # a warning, not a failure
    assert "end of October 2026" in out
    assert "deprecat" in out
    plain_code, plain_out, _ = check(capsys, "--host", fake.url, "--access-token", TOKEN)
    assert plain_code == code
    assert "October 2026" not in plain_out


def test_the_fakes_webhook_answers_have_the_shapes_the_sdk_parses(
    fake: FakeLinePlatform,
) -> None:
    from linebot.v3.messaging import (  # noqa: PLC0415  # the SDK's own models judge the shape
        GetWebhookEndpointResponse,
        TestWebhookEndpointResponse,
    )

    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    with Bot(fake) as url:
        fake.set_webhook_endpoint(url, channel_secret=SECRET)
        endpoint = _call(fake.url + WEBHOOK_ENDPOINT_PATH, headers)
        tested = _call(fake.url + WEBHOOK_TEST_PATH, headers, b"{}")
        elsewhere = _call(
            fake.url + WEBHOOK_TEST_PATH,
            headers,
            json.dumps({"endpoint": closed_port_url() + "/x"}).encode(),
        )
    unauthorized = _call(fake.url + WEBHOOK_TEST_PATH, {}, b"{}")

    assert GetWebhookEndpointResponse.from_json(endpoint[1]).endpoint == url
    test = TestWebhookEndpointResponse.from_json(tested[1])
    assert (test.success, test.status_code, test.reason, test.detail) == (True, 200, "OK", "200")
    assert test.timestamp.tzinfo is not None
    assert json.loads(elsewhere[1])["reason"] == "could_not_connect"  # the body's endpoint wins
    assert unauthorized[0] == 401


def _call(url: str, headers: dict[str, str], data: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()
