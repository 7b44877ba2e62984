from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from line_markread import WebhookHandler, set_testing
from line_markread.testing import FakeLinePlatform

from .support import SECRET, AsyncDriver, Driver, HandlerFactory, SyncDriver


@pytest.fixture
def fake() -> Iterator[FakeLinePlatform]:
    with FakeLinePlatform() as platform:
        yield platform


@pytest.fixture
def no_backoff() -> Iterator[None]:
    """Backoff waits off for one test (``set_testing``), the previous state restored after."""
    with set_testing(True):
        yield


@pytest.fixture(params=["sync", "async"])
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    d: Driver = SyncDriver() if request.param == "sync" else AsyncDriver()
    yield d
    d.finish()


@pytest.fixture
def new_handler(fake: FakeLinePlatform, driver: Driver) -> Iterator[HandlerFactory]:
    """Build handlers against the fake platform; each is closed through the driver afterwards."""
    made: list[WebhookHandler] = []

    def make(**options: Any) -> WebhookHandler:
        handler = WebhookHandler(SECRET, configuration=fake.configuration(), **options)
        made.append(handler)
        return handler

    yield make
    for handler in made:
        if not handler.marker.closed:
            driver.close(handler)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="run the soak tests at full size (20,000 messages) instead of the CI size",
    )


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> bool:
    """Whether the soak tests run at full size (``--soak``)."""
    return bool(request.config.getoption("--soak"))
