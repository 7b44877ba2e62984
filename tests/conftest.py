from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest

from line_markread import WebhookHandler, set_testing
from line_markread.testing import FakeLinePlatform

from .pg import PostgresServer
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


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (tests/pg.py); fails, never skips, without one."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


_databases = itertools.count()


@pytest.fixture
def database_url(postgres: PostgresServer) -> str:
    """A fresh, empty database on the session's server, as a ``DATABASE_URL``."""
    return postgres.create_database(f"t{os.getpid()}_{next(_databases)}")
