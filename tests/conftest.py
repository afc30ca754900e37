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
