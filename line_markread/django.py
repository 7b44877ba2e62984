"""Django glue: ready-made webhook views (sync and async) and a URL pattern.

Imported only by Django users (``import line_markread`` never imports it)::

    # urls.py
    import line_markread.django
    from line_markread import WebhookHandler

    handler = WebhookHandler(CHANNEL_SECRET, access_token=CHANNEL_ACCESS_TOKEN)
    urlpatterns = [line_markread.django.webhook_route(handler)]  # POST /callback

``webhook_view`` calls ``handler.handle()`` (WSGI: gunicorn, waitress,
uWSGI); ``async_webhook_view`` awaits ``handler.handle_async()`` and is for
ASGI servers (uvicorn, daphne), whose one event loop the marks then share.
Both are exempt from CSRF (LINE signs the body instead) and answer ``405``
to anything but POST.  Django has no shutdown hook: a handler nobody closed
still drains its pending marks at interpreter exit.  ``webhook_view`` and
``webhook_route`` have the same meaning as in ``line_markread.flask``,
``line_markread.aiohttp`` and ``line_markread.starlette``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.urls import path as url_path
from django.views.decorators.csrf import csrf_exempt

from ._glue import CONTENT_TYPE, SIGNATURE_HEADER, Answer, arespond, respond
from ._handler import WebhookHandler

__all__ = ["SIGNATURE_HEADER", "async_webhook_view", "webhook_route", "webhook_view"]

View = Callable[[HttpRequest], HttpResponse]
AsyncView = Callable[[HttpRequest], Awaitable[HttpResponse]]


def webhook_view(handler: WebhookHandler) -> View:
    """The webhook view for WSGI: ``handler.handle(body, signature)``.

    ``400`` for a missing or bad ``X-Line-Signature`` and for a body that is
    not a LINE webhook (no API request is made for either), ``200 OK``
    otherwise.  An exception from one of the bot's handlers propagates, so
    Django answers ``500`` and logs it.
    """

    def line_webhook(request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        return _response(respond(handler, request.body, request.headers.get(SIGNATURE_HEADER)))

    view: View = csrf_exempt(line_webhook)  # LINE signs the body: no CSRF token to check
    return view


def async_webhook_view(handler: WebhookHandler) -> AsyncView:
    """``webhook_view`` for ASGI: ``await handler.handle_async(body, signature)``.

    Under WSGI Django would run it on a new event loop per request; use
    ``webhook_view`` there.
    """

    async def line_webhook(request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        signature = request.headers.get(SIGNATURE_HEADER)
        return _response(await arespond(handler, request.body, signature))

    view: AsyncView = csrf_exempt(line_webhook)  # Django 5 keeps it a coroutine function
    return view


def webhook_route(
    handler: WebhookHandler,
    path: str = "/callback",
    *,
    asynchronous: bool = False,
    name: str = "line_webhook",
) -> Any:
    """A ``django.urls.path`` for *path* served by ``webhook_view`` (``async_webhook_view``
    with ``asynchronous=True``), for ``urlpatterns``.  A leading ``/`` is dropped, as
    Django's patterns have none.
    """
    view = async_webhook_view(handler) if asynchronous else webhook_view(handler)
    return url_path(path.lstrip("/"), view, name=name)


def _response(answer: Answer) -> HttpResponse:
    return HttpResponse(answer.text, status=answer.status, content_type=CONTENT_TYPE)
