"""``line-markread check``: does this LINE account need line_markread, and can the token use it?

One read-only call answers both: ``GET {host}/v2/bot/info``.  Its
``markAsReadMode`` is ``manual`` when Chat is On (LINE leaves messages unread
until the bot marks them: the plugin is needed) and ``auto`` when Chat is Off
(LINE marks them itself: the plugin's requests would be pointless); a 200 at
all proves the token is accepted.

The access token is a credential: it goes into the ``Authorization`` header
and nowhere else, and every line we print is scrubbed of it besides.
"""

from __future__ import annotations

import enum
import http.client
import json
import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, TextIO

import attrs

from .._sanitize import server_text
from .._version import __version__

DEFAULT_HOST = "https://api.line.me"
BOT_INFO_PATH = "/v2/bot/info"
TOKEN_ENV = "LINE_CHANNEL_ACCESS_TOKEN"
TIMEOUT = 10.0
"""Seconds for the whole call: generous for a person waiting, finite for a script."""

_BODY_LIMIT = 64 * 1024
_BOT_FIELDS = ("displayName", "basicId", "chatMode", "markAsReadMode")


class Exit(enum.IntEnum):
    """Exit statuses of ``check``; scripts branch on them, so they never change meaning."""

    READY = 0
    USAGE = 2
    NOT_NEEDED = 3
    UNAUTHORIZED = 4
    NETWORK = 5
    UNEXPECTED = 6


EXIT_STATUS_HELP = """\
exit status:
  0  ready: markAsReadMode is manual (Chat On); the plugin is needed and the token works
  2  usage error, or no access token (--access-token or LINE_CHANNEL_ACCESS_TOKEN)
  3  plugin not needed: markAsReadMode is auto (Chat Off); LINE marks messages read itself
  4  the access token was rejected (401 or 403)
  5  network failure: LINE could not be reached (DNS, refused connection, timeout)
  6  unexpected response: another status, a body that is not bot info, a redirect
  141  stdout was closed early (e.g. piped into head)

The access token is never printed."""


@attrs.frozen
class Report:
    """What ``check`` found out, for a person (``render``) or a script (``to_json``)."""

    outcome: str
    exit_code: Exit
    host: str
    message: str
    advice: str = ""
    http_status: int | None = None
    request_id: str | None = None
    """LINE's ``x-line-request-id``: what LINE's support asks for."""
    bot: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        record = attrs.asdict(self)
        record["exit_code"] = int(self.exit_code)
        record["bot"] = dict(self.bot) if self.bot is not None else None
        return {"type": "check", **record}


# -- asking LINE --------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would repeat the Authorization header to wherever a redirect
    # points; LINE never redirects, so a redirect is an unexpected answer.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def fetch_bot_info(host: str, token: str, timeout: float) -> tuple[int, str | None, bytes]:
    """``GET {host}/v2/bot/info``: (status, x-line-request-id, body).  Raises ``OSError``."""
    request = urllib.request.Request(
        host + BOT_INFO_PATH,
        headers={
            "Authorization": f"Bearer {token}",
            "User-Agent": f"line-markread/{__version__} (check)",
        },
    )
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=timeout) as response:
            body: bytes = response.read(_BODY_LIMIT)
            return response.status, response.headers.get("x-line-request-id"), body
    except urllib.error.HTTPError as error:
        try:
            return error.code, error.headers.get("x-line-request-id"), error.read(_BODY_LIMIT)
        finally:
            error.close()


def fetch_within(host: str, token: str, timeout: float) -> tuple[int, str | None, bytes]:
    """``fetch_bot_info`` with *timeout* for the whole exchange, not per socket read.

    urllib's timeout applies to each blocking call: a server trickling its
    answer a byte at a time could hold the command for ever.  The request
    runs on a daemon thread; past the deadline the command reports a network
    error and exits, and the thread dies with the process.
    """
    outcome: list[Any] = []

    def fetch() -> None:
        try:
            outcome.append(fetch_bot_info(host, token, timeout))
        except BaseException as e:  # handed to the caller, raised there
            outcome.append(e)

    worker = threading.Thread(target=fetch, name="line-markread-check", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        raise TimeoutError(f"no complete answer within {timeout:.0f} s")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    result: tuple[int, str | None, bytes] = outcome[0]
    return result


def inspect_account(token: str | None, host: str, timeout: float = TIMEOUT) -> Report:
    """Ask LINE about the account behind *token* and say what it means for the plugin.

    *timeout* bounds the whole command (connecting, TLS, the answer's last
    byte), whatever the server does.
    """
    host = host.rstrip("/")
    if token is not None:
        token = token.strip()  # as the plugin does: a secret file's trailing newline
    problem = _usage_problem(token, host)
    if problem is not None:
        return Report(problem[0], Exit.USAGE, host, problem[1], problem[2])
    assert token is not None
    try:
        status, request_id, body = fetch_within(host, token, timeout)
    except (ValueError, http.client.InvalidURL) as e:
        return Report("bad-host", Exit.USAGE, host, f"--host is not a usable URL: {e}")
    except http.client.HTTPException as e:  # an answer, but not HTTP as we know it
        return Report(
            "unexpected-response",
            Exit.UNEXPECTED,
            host,
            f"garbled answer from {host}: {type(e).__name__}",
            "Check --host: it must be the Messaging API's base URL.",
        )
    except OSError as e:
        return Report(
            "network-error",
            Exit.NETWORK,
            host,
            f"could not reach {host}: {_reason(e)}",
            "Check the host, your network and any proxy settings (HTTPS_PROXY), then retry.",
        )
    return interpret(host, status, request_id, body, token)


def _usage_problem(token: str | None, host: str) -> tuple[str, str, str] | None:
    if not token:
        return (
            "missing-token",
            f"no channel access token: pass --access-token or set {TOKEN_ENV}",
            "Issue one in the LINE Developers Console: your channel > Messaging API tab.",
        )
    if any(ch.isspace() or not ch.isprintable() for ch in token):
        return ("bad-token", "the access token contains spaces or control characters", "")
    if not host.startswith(("https://", "http://")):
        return ("bad-host", f"--host must start with https:// or http://, got {host!r}", "")
    return None


def _reason(error: OSError) -> str:
    reason = getattr(error, "reason", None)  # URLError wraps the socket error
    return str(reason if reason is not None else error) or type(error).__name__


def interpret(
    host: str, status: int, request_id: str | None, body: bytes, token: str | None = None
) -> Report:
    """Turn LINE's answer into an outcome, an exit status and advice.

    Every piece of server text in it is sanitised (``server_text``): control
    characters escaped, length capped, *token* redacted even where an echo
    of it straddles the cut.
    """
    if request_id is not None:
        request_id = server_text(request_id, token, limit=64)
    answer = Report("", Exit.UNEXPECTED, host, "", http_status=status, request_id=request_id)
    if status in (401, 403):
        return attrs.evolve(
            answer,
            outcome="unauthorized",
            exit_code=Exit.UNAUTHORIZED,
            message=f"LINE rejected the access token ({status}: {_line_message(body, token)})",
            advice="Use the channel access token of this bot's Messaging API channel; "
            "reissue it in the LINE Developers Console if it expired or was revoked.",
        )
    info = _json_object(body) if status == 200 else None
    if info is None:
        what = "a body that is not JSON bot info" if status == 200 else _line_message(body, token)
        return attrs.evolve(
            answer,
            outcome="unexpected-response",
            message=f"unexpected answer from {host}{BOT_INFO_PATH}: {status}, {what}",
            advice="Check --host (it must be the Messaging API's base URL); "
            "if it is LINE's own, retry later and quote the request ID to LINE's support.",
        )
    bot = {
        name: server_text(info[name], token)
        for name in _BOT_FIELDS
        if isinstance(info.get(name), str)
    }
    return attrs.evolve(answer, bot=bot, **_VERDICTS.get(info.get("markAsReadMode"), _UNKNOWN))


_VERDICTS: Mapping[object, Mapping[str, Any]] = {
    "manual": {
        "outcome": "ready",
        "exit_code": Exit.READY,
        "message": "ready: markAsReadMode is manual (Chat is On)",
        "advice": "LINE leaves user messages unread until the bot marks them, so line_markread "
        "is needed: it marks each message read before your handler replies.",
    },
    "auto": {
        "outcome": "not-needed",
        "exit_code": Exit.NOT_NEEDED,
        "message": "not needed: markAsReadMode is auto (Chat is Off)",
        "advice": "LINE marks every message read by itself, so mark-as-read requests are "
        "pointless. Turn Chat On in LINE Official Account Manager's response settings if "
        "people should chat with users; markAsReadMode then becomes manual and line_markread "
        "is needed.",
    },
}
_UNKNOWN: Mapping[str, Any] = {
    "outcome": "unexpected-response",
    "exit_code": Exit.UNEXPECTED,
    "message": "bot info has no known markAsReadMode",
    "advice": "LINE may have changed the API; see the Messaging API reference for bot info.",
}


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def _line_message(body: bytes, token: str | None = None) -> str:
    """LINE's error ``message``, or the start of whatever else came back, sanitised."""
    document = _json_object(body)
    if document is not None and isinstance(document.get("message"), str):
        return server_text(document["message"], token)
    return server_text(body.decode("utf-8", "replace").strip(), token) or "empty body"


# -- output ---------------------------------------------------------------------


def render(report: Report) -> list[str]:
    lines = []
    if report.bot is not None:
        bot = report.bot
        name = bot.get("displayName", "?")
        basic_id = f" ({bot['basicId']})" if "basicId" in bot else ""
        lines.append(f"LINE bot: {name}{basic_id} at {report.host}")
        lines.append(f"  chatMode:       {bot.get('chatMode', '(missing)')}")
        lines.append(f"  markAsReadMode: {bot.get('markAsReadMode', '(missing)')}")
    lines.append(report.message)
    if report.advice:
        lines.append(report.advice)
    if report.request_id and report.exit_code not in (Exit.READY, Exit.NOT_NEEDED):
        lines.append(f"x-line-request-id: {report.request_id}")
    lines.append(f"exit status {int(report.exit_code)} ({report.outcome})")
    return lines


def _scrub(text: str, token: str | None) -> str:
    """Belt and braces: no path above prints the token, and this makes sure of it."""
    return text.replace(token, "[REDACTED]") if token else text


def run(
    *,
    access_token: str | None,
    host: str = DEFAULT_HOST,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The ``check`` command: report on stdout (problems on stderr), return the exit status."""
    token = access_token if access_token is not None else os.environ.get(TOKEN_ENV)
    if token is not None:
        token = token.strip()
    report = inspect_account(token, host)
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    if as_json:
        out.write(_scrub(json.dumps(report.to_json(), ensure_ascii=False), token) + "\n")
    else:
        good = report.exit_code in (Exit.READY, Exit.NOT_NEEDED)
        for line in render(report):
            print(_scrub(line, token), file=out if good else err)
    return int(report.exit_code)
