"""A harness for the "exactly one answer" tests: one bot per case, over real HTTP.

A case is (path, handler kind, inline or background): ``handle()`` with a
``def`` handler, ``handle_async()`` with an ``async def`` or a ``def``
handler, each inline and with ``background=True``.  The handler body is the
test's own ``work(bot, event)``; the harness calls ``reply``/``areply`` to
match the handler's kind and records what each run did, so a background run
can be waited for without sleeping.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
from linebot.v3.messaging import TextMessage
from linebot.v3.webhooks import MessageEvent, TextMessageContent

from line_markread import ReplyResult, WebhookHandler
from line_markread.testing import FakeLinePlatform, signed_body

from .support import SECRET, AsyncDriver, Driver, SyncDriver


@attrs.frozen
class Case:
    path: str  # "sync" (handle) or "async" (handle_async)
    kind: str  # "def" or "async def"
    background: bool

    @property
    def id(self) -> str:
        where = "background" if self.background else "inline"
        return f"{self.path}-{self.kind.replace(' ', '')}-{where}"


CASES = [
    Case("sync", "def", False),
    Case("sync", "def", True),
    Case("async", "async def", False),
    Case("async", "async def", True),
    Case("async", "def", False),
    Case("async", "def", True),
]


def redelivered(event: dict[str, Any]) -> dict[str, Any]:
    """The same event as LINE redelivers it: only ``deliveryContext.isRedelivery`` differs."""
    again = copy.deepcopy(event)
    again["deliveryContext"] = {"isRedelivery": True}
    return again


class Bot:
    """One handler on the fake, driven as the case says; what its runs did, by event."""

    def __init__(self, case: Case, fake: FakeLinePlatform, **options: Any) -> None:
        self.case = case
        self.fake = fake
        self.driver: Driver = SyncDriver() if case.path == "sync" else AsyncDriver()
        self.handler = WebhookHandler(SECRET, configuration=fake.configuration(), **options)
        self.lock = threading.Condition()
        self.runs: list[str] = []  # text of each run that started
        self.ends: list[str] = []  # text of each run that ended (returned or raised)
        self.results: list[ReplyResult] = []

    def register(
        self,
        work: Callable[[Bot, Any], list[Any] | None],
        after: Callable[[], None] = lambda: None,
        **add_options: Any,
    ) -> None:
        """*work(bot, event)* returns the messages to reply with, one ``reply()`` each (or None).

        It may raise, and so may *after()*, called once the replies are out:
        the run ends with that exception.
        """
        options = {"background": self.case.background, **add_options}

        if self.case.kind == "def":

            @self.handler.add(MessageEvent, message=TextMessageContent, **options)
            def on_text(event: Any) -> None:
                self._started(event)
                try:
                    for message in work(self, event) or []:
                        self._note(self.handler.reply(event, message))
                    after()
                finally:
                    self._ended(event)

        else:

            @self.handler.add(MessageEvent, message=TextMessageContent, **options)
            async def on_text_async(event: Any) -> None:
                self._started(event)
                try:
                    for message in work(self, event) or []:
                        self._note(await self.handler.areply(event, message))
                    after()
                finally:
                    self._ended(event)

    def _started(self, event: Any) -> None:
        with self.lock:
            self.runs.append(event.message.text)
            self.lock.notify_all()

    def _ended(self, event: Any) -> None:
        with self.lock:
            self.ends.append(event.message.text)
            self.lock.notify_all()

    def _note(self, result: ReplyResult) -> None:
        with self.lock:
            self.results.append(result)
            self.lock.notify_all()

    def send(self, *events: dict[str, Any]) -> None:
        """Deliver one body; a handler's exception (inline) propagates, as from the SDK."""
        body, signature = signed_body(*events, channel_secret=SECRET)
        self.driver.handle(self.handler, body, signature)

    def wait_ends(self, count: int, timeout: float = 10.0) -> None:
        """Until *count* runs ended (inline runs ended before ``send`` returned)."""
        with self.lock:
            ok = self.lock.wait_for(lambda: len(self.ends) >= count, timeout)
        assert ok, f"only {self.ends} ended after {timeout}s"

    def wait_stat(self, name: str, value: int, timeout: float = 10.0) -> None:
        """Until ``stats().<name>`` reaches *value* (a background step is over)."""
        deadline = time.monotonic() + timeout
        while getattr(self.handler.stats(), name) < value:
            assert time.monotonic() < deadline, (
                f"{name} stayed {getattr(self.handler.stats(), name)}"
            )
            time.sleep(0.005)

    def settle(self) -> None:
        """Every background step of the bodies sent so far is over (ran, skipped or failed)."""
        deadline = time.monotonic() + 10.0
        while self.handler.stats().background_pending:
            assert time.monotonic() < deadline, "background steps still pending after 10s"
            time.sleep(0.005)

    def close(self) -> None:
        self.driver.close(self.handler)
        self.driver.finish()


def text(value: str) -> TextMessage:
    return TextMessage(text=value)


def think(seconds: float) -> None:
    """Hold the handler at least *seconds* (a slow model call): a lower bound, not a hope.

    ``async def`` handlers block their loop for it too, which costs the test
    nothing: the mark was answered before the handler started.
    """
    time.sleep(seconds)


def make_bots(fake: FakeLinePlatform, case: Case) -> Iterator[Callable[..., Bot]]:
    """The body of the tests' ``bot`` fixture: build bots, close them after the test."""
    made: list[Bot] = []

    def make(**options: Any) -> Bot:
        bot = Bot(case, fake, **options)
        made.append(bot)
        return bot

    yield make
    for bot in made:
        bot.close()
