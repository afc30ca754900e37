from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.harness import System
from tests.natsserver import NatsServer, running_nats


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    with running_nats() as server:
        yield server


@pytest.fixture
async def system(nats_server: NatsServer, tmp_path: object) -> AsyncIterator[System]:
    async with System(nats_server, tmp_path) as sys_:  # type: ignore[arg-type]
        yield sys_


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--chaos", action="store_true", help="run the long chaos suite (make chaos)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """tests/chaos runs only under `make chaos` (--chaos); `make test` keeps to the fast suite."""
    if config.getoption("--chaos"):
        return
    skip = pytest.mark.skip(reason="chaos suite: run with make chaos")
    for item in items:
        if "tests/chaos/" in str(item.fspath):
            item.add_marker(skip)
