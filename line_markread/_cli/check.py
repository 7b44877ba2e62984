"""``line-markread check``: does this LINE account need line_markread, and can the token use it?

One read-only call answers both: ``GET {host}/v2/bot/info``.  Its
``markAsReadMode`` is ``manual`` when Chat is On (LINE leaves messages unread
until the bot marks them: the plugin is needed) and ``auto`` when Chat is Off
(LINE marks them itself: the plugin's requests would be pointless); a 200 at
all proves the token is accepted.

With ``--webhook`` it also asks LINE about the bot's webhook: ``GET
/v2/bot/channel/webhook/endpoint`` (the URL LINE calls, and whether webhooks
are on) and ``POST /v2/bot/channel/webhook/test`` (LINE calls the bot now and
reports what happened, ``request_timeout`` when no answer came within its 2
seconds).  ``--mode user`` says the bot's handler uses the legacy user-ID
mark-as-read API, which gets a warning.

The access token is a credential: it goes into the ``Authorization`` header
and nowhere else, and every line we print is scrubbed of it besides.
"""

from __future__ import annotations

import enum
import http.client
import json
import os
import sys
import textwrap
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
WEBHOOK_ENDPOINT_PATH = "/v2/bot/channel/webhook/endpoint"
WEBHOOK_TEST_PATH = "/v2/bot/channel/webhook/test"
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
    WEBHOOK_FAILED = 7
    WEBHOOK_OFF = 8


EXIT_STATUS_HELP = """\
exit status:
  0  ready: markAsReadMode is manual (Chat On); the plugin is needed and the token works
  2  usage error, or no access token (--access-token or LINE_CHANNEL_ACCESS_TOKEN)
  3  plugin not needed: markAsReadMode is auto (Chat Off); LINE marks messages read itself
  4  the access token was rejected (401 or 403)
  5  network failure: LINE could not be reached (DNS, refused connection, timeout)
  6  unexpected response: another status, a body that is not bot info, a redirect
  7  --webhook: LINE's test call to the webhook failed (could_not_connect,
     request_timeout: no answer within 2 s, error_status_code: not 2xx)
  8  --webhook: no webhook URL is set, or "Use webhook" is off
  141  stdout was closed early (e.g. piped into head)

Codes 2 and 4 to 6 come from the bot info call and win; otherwise a failed
webhook test (7) wins over webhooks being off (8), which wins over 0 and 3.
--mode user (the legacy user-ID mark-as-read API) adds a warning, not a code.
The access token is never printed."""

LEGACY_USER_API_WARNING = (
    'mode="user" uses the user-ID mark-as-read API (POST /v2/bot/message/markAsRead): LINE '
    "stopped taking new applications for it at the end of October 2026 and is considering "
    'deprecating it. Use mode="token" (the read-token API, every account and chat) or the '
    'default "auto".'
)


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
    webhook: WebhookReport | None = None
    """What ``--webhook`` found out (None without it, or when bot info failed)."""
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        record = attrs.asdict(self, recurse=False)
        record["exit_code"] = int(self.exit_code)
        record["bot"] = dict(self.bot) if self.bot is not None else None
        record["webhook"] = self.webhook.to_json() if self.webhook is not None else None
        record["warnings"] = list(self.warnings)
        return {"type": "check", **record}


@attrs.frozen
class WebhookReport:
    """LINE's view of the bot's webhook: the endpoint, and how LINE's test call went."""

    outcome: str
    """``ok``, ``unset``, ``off``, ``could_not_connect``, ``request_timeout``,
    ``error_status_code``, ``unclassified``, ``network-error`` or ``unexpected-response``."""
    exit_code: Exit | None
    """The status this finding imposes, or None when it changes nothing."""
    message: str
    advice: str = ""
    endpoint: str | None = None
    active: bool | None = None
    success: bool | None = None
    status_code: int | None = None
    """What the bot answered LINE's test call (0 or less: no answer)."""
    reason: str | None = None
    detail: str | None = None
    http_status: int | None = None
    request_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        record = attrs.asdict(self)
        record["exit_code"] = None if self.exit_code is None else int(self.exit_code)
        return record


# -- asking LINE --------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would repeat the Authorization header to wherever a redirect
    # points; LINE never redirects, so a redirect is an unexpected answer.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def fetch_bot_info(
    host: str, token: str, timeout: float, path: str = BOT_INFO_PATH, payload: bytes | None = None
) -> tuple[int, str | None, bytes]:
    """``GET {host}{path}`` (``POST`` of JSON *payload* if given): (status,
    x-line-request-id, body).  Raises ``OSError``."""
    headers = {
        "Authorization": f"Bearer {token}",
        "User-Agent": f"line-markread/{__version__} (check)",
    }
    if payload is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(host + path, data=payload, headers=headers)
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


def fetch_within(
    host: str, token: str, timeout: float, path: str = BOT_INFO_PATH, payload: bytes | None = None
) -> tuple[int, str | None, bytes]:
    """``fetch_bot_info`` with *timeout* for the whole exchange, not per socket read.

    urllib's timeout applies to each blocking call: a server trickling its
    answer a byte at a time could hold the command for ever.  The request
    runs on a daemon thread; past the deadline the command reports a network
    error and exits, and the thread dies with the process.
    """
    outcome: list[Any] = []

    def fetch() -> None:
        try:
            outcome.append(fetch_bot_info(host, token, timeout, path, payload))
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


# -- the webhook -----------------------------------------------------------------

_REDELIVERY = (
    "Turn on webhook redelivery (LINE Developers Console > Messaging API > Webhook settings) "
    "so LINE sends a webhook again when the bot did not answer it in time."
)
_ANSWER_FAST = (
    "Answer the webhook first and do slow work after: handler.add(..., background=True) runs "
    "a handler after the 200 (line_markread still marks the message read first); for work "
    "that must survive a restart, a durable queue (coming: queue=PostgresQueue(...))."
)


def inspect_webhook(host: str, token: str, timeout: float = TIMEOUT) -> WebhookReport:
    """Ask LINE where the webhook points, then have LINE call it and say how that went."""
    host = host.rstrip("/")
    status, request_id, body, failure = _ask(host, token, timeout, WEBHOOK_ENDPOINT_PATH)
    if failure is not None:
        return failure
    info = _json_object(body) if status == 200 else None
    if info is None or not isinstance(info.get("endpoint"), str):
        return _unexpected(host + WEBHOOK_ENDPOINT_PATH, status, request_id, body, token)
    endpoint = server_text(info["endpoint"], token, limit=500)
    active = info.get("active") is True
    if not endpoint:
        return WebhookReport(
            "unset",
            Exit.WEBHOOK_OFF,
            "no webhook URL is set: LINE sends the bot nothing",
            "Set the Webhook URL (your server's public HTTPS address of the webhook path, "
            "e.g. https://example.com/callback) and turn on Use webhook in the LINE Developers "
            "Console, Messaging API tab.",
            endpoint="",
            active=active,
        )
    return _test_webhook(host, token, timeout, endpoint, active=active)


def _test_webhook(
    host: str, token: str, timeout: float, endpoint: str, *, active: bool
) -> WebhookReport:
    status, request_id, body, failure = _ask(host, token, timeout, WEBHOOK_TEST_PATH, b"{}")
    if failure is not None:
        return attrs.evolve(failure, endpoint=endpoint, active=active)
    test = _json_object(body) if status == 200 else None
    if test is None or not isinstance(test.get("reason"), str):
        found = _unexpected(host + WEBHOOK_TEST_PATH, status, request_id, body, token)
        return attrs.evolve(found, endpoint=endpoint, active=active)
    report = _judge_test(endpoint, test, token)
    report = attrs.evolve(report, active=active, http_status=status, request_id=request_id)
    if not active and report.exit_code is None:
        return attrs.evolve(
            report,
            outcome="off",
            exit_code=Exit.WEBHOOK_OFF,
            message=report.message + '; but "Use webhook" is off: LINE sends the bot nothing',
            advice="Turn on Use webhook in the LINE Developers Console, Messaging API tab.",
        )
    return report


def _ask(
    host: str, token: str, timeout: float, path: str, payload: bytes | None = None
) -> tuple[int, str | None, bytes, WebhookReport | None]:
    """One call to LINE; a `WebhookReport` instead when the call itself failed."""
    try:
        status, request_id, body = fetch_within(host, token, timeout, path, payload)
    except (OSError, ValueError, http.client.HTTPException) as e:
        failure = WebhookReport(
            "network-error",
            Exit.NETWORK,
            f"could not ask {host}{path}: {_reason(e) if isinstance(e, OSError) else e}",
            "Check your network and any proxy settings (HTTPS_PROXY), then retry.",
        )
        return 0, None, b"", failure
    if request_id is not None:
        request_id = server_text(request_id, token, limit=64)
    return status, request_id, body, None


def _unexpected(
    url: str, status: int, request_id: str | None, body: bytes, token: str
) -> WebhookReport:
    rejected = status in (401, 403)
    what = "a body that is not what LINE sends" if status == 200 else _line_message(body, token)
    return WebhookReport(
        "unauthorized" if rejected else "unexpected-response",
        Exit.UNAUTHORIZED if rejected else Exit.UNEXPECTED,
        f"unexpected answer from {url}: {status}, {what}",
        "Check --host; if it is LINE's own, retry later and quote the request ID to LINE's "
        "support.",
        http_status=status,
        request_id=request_id,
    )


def _judge_test(endpoint: str, test: Mapping[str, Any], token: str) -> WebhookReport:
    """LINE's test result in plain words: did LINE reach the bot, what did it answer, what now."""
    reason = server_text(test["reason"], token, limit=64)
    detail = server_text(test["detail"], token) if isinstance(test.get("detail"), str) else ""
    code = test.get("statusCode")
    status_code = code if isinstance(code, int) and not isinstance(code, bool) else None
    success = test.get("success") is True
    found = WebhookReport(
        reason.lower(),
        Exit.WEBHOOK_FAILED,
        "",
        endpoint=endpoint,
        success=success,
        status_code=status_code,
        reason=reason,
        detail=detail,
    )
    kind = reason.lower()
    if success:
        return attrs.evolve(
            found,
            outcome="ok",
            exit_code=None,
            message=f"LINE reached {endpoint}: it answered {status_code} in time",
            advice="LINE's test body carries no events; real ones run your handlers before the "
            "answer. Keep that under 2 s: " + _ANSWER_FAST + " " + _REDELIVERY,
        )
    if kind == "request_timeout":
        return attrs.evolve(
            found,
            message=f"LINE reached {endpoint} but got no answer within 2 seconds "
            "(request_timeout): LINE counts such a webhook as failed",
            advice=_ANSWER_FAST + " " + _REDELIVERY,
        )
    if kind == "could_not_connect":
        return attrs.evolve(
            found,
            message=f"LINE could not connect to {endpoint} (could_not_connect)",
            advice="Check that the bot server is running and reachable from the internet at "
            "that URL (public DNS, HTTPS with a valid certificate, firewall). " + _REDELIVERY,
        )
    if kind == "error_status_code":
        return attrs.evolve(
            found,
            message=f"LINE reached {endpoint}; it answered {status_code}, not 2xx "
            "(error_status_code)",
            advice="The webhook must answer 200 to every signed body, one with no events "
            "included; a 400 often means the channel secret does not match this channel, a 404 "
            "a wrong path. " + _REDELIVERY,
        )
    return attrs.evolve(
        found,
        message=f"LINE's test call to {endpoint} failed: {reason} ({detail or 'no detail'})",
        advice="Check the bot server's logs at that time. " + _REDELIVERY,
    )


def with_webhook(report: Report, webhook: WebhookReport) -> Report:
    """*report* with the webhook's finding, and the exit status the precedence gives."""
    report = attrs.evolve(report, webhook=webhook)
    if webhook.exit_code is None or report.exit_code not in _GOOD:
        return report
    return attrs.evolve(report, exit_code=webhook.exit_code, outcome=f"webhook-{webhook.outcome}")


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
    if report.request_id and report.exit_code not in _GOOD and report.webhook is None:
        lines.append(f"x-line-request-id: {report.request_id}")
    if report.webhook is not None:
        lines.extend(render_webhook(report.webhook))
    for warning in report.warnings:
        lines.extend(_wrap(f"WARNING: {warning}"))
    lines.append(f"exit status {int(report.exit_code)} ({report.outcome})")
    return lines


_GOOD = (Exit.READY, Exit.NOT_NEEDED)
_COLUMNS = 96
_REACHED = {
    "could_not_connect": "no, it could not connect",
    "request_timeout": "yes, but no answer within 2 s",
    "unclassified": "unknown",
}


def _wrap(text: str) -> list[str]:
    """Lines for a terminal; URLs and names are never cut (copy-paste must work)."""
    return textwrap.wrap(
        text, _COLUMNS, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False
    )


def render_webhook(webhook: WebhookReport) -> list[str]:
    lines = ["", "Webhook"]
    if webhook.endpoint is not None:
        on = {True: "on", False: "off", None: "unknown"}[webhook.active]
        lines.append(f"  endpoint:        {webhook.endpoint or '(not set)'} (Use webhook: {on})")
    if webhook.reason is not None:
        lines.append(f"  LINE reached it: {_REACHED.get(webhook.reason.lower(), 'yes')}")
        answered = webhook.status_code if webhook.status_code else "nothing"
        lines.append(f"  it answered:     {answered} ({webhook.reason}: {webhook.detail})")
    lines.extend(_wrap(webhook.message))
    if webhook.advice:
        lines.extend(_wrap("What to do: " + webhook.advice))
    if webhook.request_id and webhook.exit_code in (Exit.UNEXPECTED, Exit.UNAUTHORIZED):
        lines.append(f"x-line-request-id: {webhook.request_id}")
    return lines


def _scrub(text: str, token: str | None) -> str:
    """Belt and braces: no path above prints the token, and this makes sure of it."""
    return text.replace(token, "[REDACTED]") if token else text


def run(
    *,
    access_token: str | None,
    host: str = DEFAULT_HOST,
    as_json: bool = False,
    webhook: bool = False,
    mode: str = "auto",
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The ``check`` command: report on stdout (problems on stderr), return the exit status.

    *webhook* adds LINE's webhook endpoint and test call; *mode* is the
    plugin's ``mode=`` setting the bot uses (``"user"`` gets a warning).
    """
    token = access_token if access_token is not None else os.environ.get(TOKEN_ENV)
    if token is not None:
        token = token.strip()
    report = inspect_account(token, host)
    if webhook and token and report.exit_code in (Exit.READY, Exit.NOT_NEEDED):
        report = with_webhook(report, inspect_webhook(host, token))
    if mode == "user":
        report = attrs.evolve(report, warnings=(*report.warnings, LEGACY_USER_API_WARNING))
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    if as_json:
        out.write(_scrub(json.dumps(report.to_json(), ensure_ascii=False), token) + "\n")
    else:
        good = report.exit_code in _GOOD  # else all of it to stderr
        for line in render(report):
            print(_scrub(line, token), file=out if good else err)
    return int(report.exit_code)
