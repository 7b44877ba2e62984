"""aiohttp glue: a ready-made ``POST /callback`` route, and closing with the app.

Imported only by aiohttp users (``import line_markread`` never imports it)::

    from aiohttp import web
    import line_markread.aiohttp
    from line_markread import WebhookHandler

    handler = WebhookHandler(CHANNEL_SECRET, access_token=CHANNEL_ACCESS_TOKEN)
    app = web.Application()
    line_markread.aiohttp.init_app(app, handler)  # POST /callback, closed on app cleanup

The same names exist in ``line_markread.starlette`` (FastAPI, Starlette):
``webhook_view``, ``webhook_route``, ``lifespan``, ``init_app``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from ._glue import SIGNATURE_HEADER, AsyncClosable, arespond
from ._handler import WebhookHandler

__all__ = ["SIGNATURE_HEADER", "init_app", "lifespan", "webhook_route", "webhook_view"]

View = Callable[[web.Request], Awaitable[web.StreamResponse]]


def webhook_view(handler: WebhookHandler) -> View:
    """The webhook endpoint: ``await handler.handle_async(body, signature)``.

    ``400`` for a missing or bad ``X-Line-Signature`` and for a body that is
    not a LINE webhook (no API request is made for either), ``200 OK``
    otherwise.  An exception from one of the bot's handlers propagates, so
    aiohttp answers ``500`` and logs it.
    """

    async def line_webhook(request: web.Request) -> web.StreamResponse:
        signature = request.headers.get(SIGNATURE_HEADER)
        answer = await arespond(handler, await request.read(), signature)
        return web.Response(status=answer.status, text=answer.text)

    return line_webhook


def webhook_route(handler: WebhookHandler, path: str = "/callback") -> web.RouteDef:
    """``POST path`` served by ``webhook_view(handler)``, for ``app.add_routes([...])``."""
    return web.post(path, webhook_view(handler))


def lifespan(
    closable: AsyncClosable,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that closes *closable* when the app shuts down.

    ``app.cleanup_ctx.append(lifespan(handler))``: on cleanup, pending marks
    are drained (up to ``close_grace``) and the HTTP session is closed.
    Works with a ``Marker`` too.
    """

    async def line_markread_lifespan(app: web.Application) -> AsyncIterator[None]:
        yield
        await closable.aclose()

    return line_markread_lifespan


def init_app(
    app: web.Application, handler: WebhookHandler, *, path: str = "/callback"
) -> web.Application:
    """Add ``webhook_route(handler, path)`` and ``lifespan(handler)`` to *app*; return *app*."""
    app.add_routes([webhook_route(handler, path)])
    app.cleanup_ctx.append(lifespan(handler))
    return app
