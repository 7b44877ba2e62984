"""FastAPI and Starlette glue: a lifespan that closes the handler, and a ready-made route.

Imported only by FastAPI/Starlette users (``import line_markread`` never imports it)::

    from fastapi import FastAPI
    import line_markread.starlette
    from line_markread import WebhookHandler

    handler = WebhookHandler(CHANNEL_SECRET, access_token=CHANNEL_ACCESS_TOKEN)
    app = FastAPI(lifespan=line_markread.starlette.lifespan(handler))

or, for an app that already exists (its own lifespan keeps working)::

    line_markread.starlette.init_app(app, handler)  # POST /callback, closed on shutdown

The same names exist in ``line_markread.aiohttp``: ``webhook_view``,
``webhook_route``, ``lifespan``, ``init_app``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ._glue import SIGNATURE_HEADER, AsyncClosable, arespond
from ._handler import WebhookHandler

__all__ = ["SIGNATURE_HEADER", "init_app", "lifespan", "webhook_route", "webhook_view"]

AppT = TypeVar("AppT")
Lifespan = Callable[[AppT], contextlib.AbstractAsyncContextManager[Any]]
"""Starlette's lifespan shape: ``app -> async context manager`` (yielding state or None)."""


def webhook_view(handler: WebhookHandler) -> Callable[[Request], Awaitable[Response]]:
    """The webhook endpoint: ``await handler.handle_async(body, signature)``.

    ``400`` for a missing or bad ``X-Line-Signature`` and for a body that is
    not a LINE webhook (no API request is made for either), ``200 OK``
    otherwise.  An exception from one of the bot's handlers propagates to the
    framework, which answers ``500``.
    """

    async def line_webhook(request: Request) -> Response:
        signature = request.headers.get(SIGNATURE_HEADER)
        answer = await arespond(handler, await request.body(), signature)
        return PlainTextResponse(answer.text, status_code=answer.status)

    return line_webhook


def webhook_route(handler: WebhookHandler, path: str = "/callback") -> Route:
    """``POST path`` served by ``webhook_view(handler)``: for ``Starlette(routes=[...])``."""
    return Route(path, webhook_view(handler), methods=["POST"], name="line_webhook")


def lifespan(closable: AsyncClosable, inner: Lifespan[AppT] | None = None) -> Lifespan[AppT]:
    """A lifespan that closes *closable* on shutdown: ``FastAPI(lifespan=lifespan(handler))``.

    On shutdown pending marks are drained (up to ``close_grace``) and the
    HTTP session is closed.  *inner*, the app's own lifespan, runs inside it
    (its state is passed on), so the bot's resources are released first and
    the marks last.  Works with a ``Marker`` too.
    """

    @contextlib.asynccontextmanager
    async def line_markread_lifespan(app: AppT) -> AsyncIterator[Any]:
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(closable.aclose)
            state = None if inner is None else await stack.enter_async_context(inner(app))
            yield state

    return line_markread_lifespan


StarletteT = TypeVar("StarletteT", bound="_HasRouter")


class _Router(Protocol):
    routes: list[Any]
    lifespan_context: Lifespan[Any]


class _HasRouter(Protocol):
    @property
    def router(self) -> _Router: ...


def init_app(app: StarletteT, handler: WebhookHandler, *, path: str = "/callback") -> StarletteT:
    """Add ``webhook_route(handler, path)`` to an existing FastAPI/Starlette *app*, and close
    *handler* on shutdown (around the app's own lifespan, which keeps working).  Returns *app*.
    """
    app.router.routes.append(webhook_route(handler, path))
    app.router.lifespan_context = lifespan(handler, inner=app.router.lifespan_context)
    return app
