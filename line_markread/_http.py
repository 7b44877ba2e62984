"""The HTTP layer: one keep-alive ``aiohttp`` session per event loop.

A bare ``aiohttp`` POST costs a fraction of the CPU of the SDK's generated
async client for these tiny calls, and gives us explicit per-attempt
timeouts (the SDK's clients default to none, or 300 s).  The access token
lives only in the session's default headers: it is never logged, never in a
repr and never in an exception we raise.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from typing import Optional

import aiohttp
import attrs

from ._targets import ReadTarget
from ._version import __version__

_ERROR_BODY_LIMIT = 2048


@attrs.frozen
class ApiResponse:
    """What LINE answered to one attempt.  ``message`` is LINE's error text, if any."""

    status: int
    request_id: Optional[str] = None
    retry_after: Optional[float] = None
    message: Optional[str] = None


_OK = ApiResponse(200)
"""Every success looks the same to the engine: no need to build one per request."""


class TransportError(Exception):
    """No HTTP answer: timeout, refused, reset or dropped connection."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


@attrs.frozen
class Credentials:
    """Where and as whom to call LINE.  The token is kept out of the repr."""

    host: str
    access_token: str = attrs.field(repr=False)

    @classmethod
    def from_arguments(cls, access_token: object, configuration: object) -> Credentials:
        """Accept exactly one of an access token or a ``linebot.v3.messaging.Configuration``."""
        if (access_token is None) == (configuration is None):
            raise TypeError("pass exactly one of access_token= or configuration=")
        host = "https://api.line.me"
        if configuration is not None:
            access_token = getattr(configuration, "access_token", None)
            host = getattr(configuration, "host", None) or host
            if not isinstance(host, str):
                raise TypeError("configuration.host must be a string URL")
            if not isinstance(access_token, str) or not access_token:
                raise ValueError("configuration has no access_token")
        elif not isinstance(access_token, str) or not access_token:
            raise ValueError("access_token must be a non-empty string")
        return cls(host=host.rstrip("/"), access_token=access_token)


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Transport:
    """Sends mark-as-read requests for one event loop."""

    def __init__(self, credentials: Credentials, *, request_timeout: float, max_connections: int):
        self._credentials = credentials
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._max_connections = max_connections
        self._session: Optional[aiohttp.ClientSession] = None

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
                timeout=self._timeout,
            )
        return self._session

    async def post(self, target: ReadTarget) -> ApiResponse:
        """One mark-as-read attempt.  Raises ``TransportError`` when there is no HTTP answer."""
        return await self.post_json(target.endpoint.value, target.payload())

    async def post_json(self, path: str, payload: bytes) -> ApiResponse:
        """POST a JSON *payload* to *path* on LINE's host, once, with this session's auth.

        The one place a request is made, so every endpoint (mark-as-read, the
        loading animation) gets the same timeouts and hardening.  Any 2xx is
        a success (the loading animation answers ``202``).  Raises
        ``TransportError`` when there is no HTTP answer.
        """
        url = self._credentials.host + path
        try:
            async with self._get_session().post(url, data=payload) as response:
                if response.status == 200:
                    await response.read()  # so the connection goes back to the pool
                    return _OK
                if 200 <= response.status < 300:
                    await response.read()
                    return ApiResponse(
                        status=response.status,
                        request_id=response.headers.get("x-line-request-id"),
                    )
                body = await response.content.read(_ERROR_BODY_LIMIT)
                return ApiResponse(
                    status=response.status,
                    request_id=response.headers.get("x-line-request-id"),
                    retry_after=parse_retry_after(response.headers.get("Retry-After")),
                    message=_error_message(body),
                )
        except asyncio.TimeoutError:
            raise TransportError("timed out", timeout=True) from None
        except aiohttp.ClientError as e:
            # str(e) of aiohttp's errors names the host and the cause, never headers.
            raise TransportError(f"{type(e).__name__}: {e}") from None

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def _error_message(body: bytes) -> Optional[str]:
    """LINE's ``message`` field from an error body, tolerating anything else."""
    try:
        document = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return text[:200] or None
    if isinstance(document, dict) and isinstance(document.get("message"), str):
        return str(document["message"])[:200]
    return None
