"""The HTTP layer: one keep-alive ``aiohttp`` session per event loop.

A bare ``aiohttp`` POST costs a fraction of the CPU of the SDK's generated
async client for these tiny calls, and gives us explicit per-attempt
timeouts (the SDK's clients default to none, or 300 s).  The access token
lives only in the session's default headers: it is never logged, never in a
repr and never in an exception we raise.

Whatever the server sends is bounded here: redirects are never followed (a
3xx is an answer, and a final one), at most ``RESPONSE_LIMIT`` bytes of any
body are read, ``Retry-After`` is parsed strictly, and error text is
sanitised (``_sanitize.server_text``) before anything else sees it.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import socket
import time
from collections.abc import Mapping

import aiohttp
import attrs

from ._sanitize import server_text
from ._targets import ReadTarget
from ._version import __version__

RESPONSE_LIMIT = 64 * 1024
"""Bytes of any API response read at most: a 300 MB answer costs no more than a small one."""

_RETRY_AFTER_DIGITS = 9
"""Longer delta-seconds (over 31 years) are read as "very long": the channel pause cap applies."""


@attrs.frozen
class ApiResponse:
    """What LINE answered to one attempt.  ``message`` is LINE's error text, if any."""

    status: int
    request_id: str | None = None
    retry_after: float | None = None
    message: str | None = None
    accepted_request_id: str | None = None
    """On a ``409`` for an ``X-Line-Retry-Key`` already accepted: that request's ID."""


_OK = ApiResponse(200)
"""Every success looks the same to the engine: no need to build one per request."""


class TransportError(Exception):
    """No HTTP answer: timeout, refused, reset or dropped connection."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


DEFAULT_HOST = "https://api.line.me"
HOST_VARIABLE = "LINE_API_HOST"
"""The environment variable the SDK's examples read the API base URL from."""


@attrs.frozen
class Credentials:
    """Where and as whom to call LINE.  The token is kept out of the repr."""

    host: str
    access_token: str = attrs.field(repr=False)

    @classmethod
    def from_arguments(
        cls, access_token: object, configuration: object, host: object = None
    ) -> Credentials:
        """Accept exactly one of an access token or a ``linebot.v3.messaging.Configuration``.

        The host, one rule for every entry point: the explicit argument (*host*,
        or the configuration's own ``host``), else ``LINE_API_HOST`` from the
        environment, else LINE's production host.  A configuration always has a
        host (the SDK fills in the default), so the environment applies to
        ``access_token=`` only: the bot's own API client, built from the same
        configuration, calls the same host.
        """
        if (access_token is None) == (configuration is None):
            raise TypeError("pass exactly one of access_token= or configuration=")
        if configuration is not None:
            if host is not None:
                raise TypeError(
                    "host= goes with access_token=; a configuration carries its own host"
                )
            access_token = getattr(configuration, "access_token", None)
            host = _checked_host(getattr(configuration, "host", None) or DEFAULT_HOST, "host")
            if not isinstance(access_token, str) or not access_token:
                raise ValueError("configuration has no access_token")
        elif not isinstance(access_token, str) or not access_token:
            raise ValueError("access_token must be a non-empty string")
        elif host is not None:
            host = _checked_host(host, "host")
        else:
            from_environment = os.environ.get(HOST_VARIABLE, "").strip()
            host = _checked_host(from_environment, HOST_VARIABLE) if from_environment else None
        return cls(host=(host or DEFAULT_HOST).rstrip("/"), access_token=_clean_token(access_token))


def _checked_host(host: object, where: str) -> str:
    """An ``http(s)://`` base URL, or a clear error naming where it came from."""
    if not isinstance(host, str):
        raise TypeError(f"{where} must be a string URL, got {type(host).__name__}")
    if not host.startswith(("https://", "http://")):
        raise ValueError(f"{where} must be an http(s):// URL like {DEFAULT_HOST}, got {host!r}")
    return host


def _clean_token(token: str) -> str:
    """The token without surrounding whitespace (a file or secret mount often ends in a newline).

    What is left must be printable ASCII without spaces, as an HTTP header
    value demands; anything else is refused here, at construction, instead
    of failing on every message.  The message never quotes the token.
    """
    stripped = token.strip()
    if not stripped:
        raise ValueError("access_token is empty once surrounding whitespace is removed")
    if not (stripped.isascii() and stripped.isprintable()) or any(c.isspace() for c in stripped):
        raise ValueError(
            "access_token contains spaces, control or non-ASCII characters inside it; "
            "a LINE channel access token has none (was it pasted with quotes or line breaks?)"
        )
    return stripped


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or None.

    Garbage (``"²"``, ``"soon"``, ``"-1"``, a date that is not a date) reads as
    absent; an absurdly long number reads as infinity, which the channel's
    pause cap (``max_rate_limit_pause``) then bounds.
    """
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() is true, float("²") fails
        return float(value) if len(value) <= _RETRY_AFTER_DIGITS else float("inf")
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if when is None:  # pragma: no cover - older Pythons returned None for garbage
        return None
    try:
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    except (OverflowError, OSError, ValueError):  # naive or out-of-range dates
        return None


class Transport:
    """Sends mark-as-read requests for one event loop."""

    def __init__(self, credentials: Credentials, *, connect_timeout: float, max_connections: int):
        self._credentials = credentials
        self._connect_timeout = connect_timeout
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._limits: aiohttp.ClientTimeout | None = None

    def __repr__(self) -> str:
        return f"<Transport host={self._credentials.host!r}>"

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily: aiohttp sessions belong to the loop running when they are made.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                headers={
                    "Authorization": f"Bearer {self._credentials.access_token}",
                    "Content-Type": "application/json",
                    "User-Agent": f"line-markread/{__version__}",
                },
            )
        return self._session

    async def post(self, target: ReadTarget, *, timeout: float) -> ApiResponse:
        """One mark-as-read attempt of at most *timeout* seconds (see ``post_json``)."""
        return await self.post_json(target.endpoint.value, target.payload(), timeout=timeout)

    async def post_json(
        self,
        path: str,
        payload: bytes,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> ApiResponse:
        """POST a JSON *payload* to *path* on LINE's host: one attempt of at most *timeout* s.

        The one place a request is made, so every endpoint (mark-as-read, the
        loading animation, which answers ``202``) gets the same hardening.
        Connecting may take at most the connect timeout of the whole
        transport (a host that does not answer SYNs is not going to), the rest
        of *timeout* is for LINE's answer.  Raises ``TransportError`` when
        there is no HTTP answer; a redirect is returned as the answer it is.
        *headers* are added to the session's (push sends ``X-Line-Retry-Key``).
        """
        url = self._credentials.host + path
        limits = self._limits
        if limits is None or limits.total != timeout:  # first attempts share one object
            limits = self._limits = aiohttp.ClientTimeout(
                total=timeout, sock_connect=min(timeout, self._connect_timeout)
            )
        try:
            async with self._get_session().post(
                url, data=payload, timeout=limits, allow_redirects=False, headers=headers
            ) as response:
                if response.status == 200 and response.content.is_eof():
                    # The whole (ignored) body is in: the connection goes back to the pool as is.
                    return _OK
                body, complete = await _read_capped(response.content)
                if not complete:
                    response.close()  # the rest is never read: the connection cannot be reused
                if response.status == 200:
                    return _OK
                return ApiResponse(
                    status=response.status,
                    request_id=_header(response, "x-line-request-id"),
                    retry_after=parse_retry_after(response.headers.get("Retry-After")),
                    message=_error_message(body, self._credentials.access_token),
                    accepted_request_id=_header(response, "x-line-accepted-request-id"),
                )
        except asyncio.TimeoutError:
            raise TransportError("timed out", timeout=True) from None
        except (aiohttp.ClientError, OSError, socket.gaierror) as e:
            # Sanitised: an exception's text may quote what the server sent.
            reason = server_text(f"{type(e).__name__}: {e}", self._credentials.access_token)
            raise TransportError(reason) from None

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


async def _read_capped(stream: aiohttp.StreamReader) -> tuple[bytes, bool]:
    """At most ``RESPONSE_LIMIT`` bytes of a body, and whether that was all of it."""
    chunks: list[bytes] = []
    size = 0
    while size < RESPONSE_LIMIT:
        chunk = await stream.read(RESPONSE_LIMIT - size)
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), stream.at_eof()


def _header(response: aiohttp.ClientResponse, name: str) -> str | None:
    value = response.headers.get(name)
    return None if value is None else server_text(value, limit=64)


def _error_message(body: bytes, secret: str | None = None) -> str | None:
    """LINE's ``message`` field from an error body, tolerating anything else, sanitised.

    Any body: not JSON, JSON nested 2,000 deep (``RecursionError``), a JSON
    string that is not a mapping.  The result never holds control
    characters, the access token or more than ``TEXT_LIMIT`` characters.
    """
    text = body.decode("utf-8", "replace")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        document = None
        message = text.strip()
    else:
        if not isinstance(document, dict) or not isinstance(document.get("message"), str):
            return None
        message = document["message"]
    return server_text(message, secret) or None
