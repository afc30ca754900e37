from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shared.bus import nats_fixes
from support.natsserver import NatsServer, running_nats
from tests.harness import System
from tests.secrets_scan import leaks, log_files


@pytest.fixture(autouse=True)
def no_secret_leaks(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> Iterator[None]:
    """Every test: no registered secret in any log line, in-process or from a subprocess."""
    caplog.set_level(logging.DEBUG)
    yield
    found = leaks([caplog.text, *log_files(tmp_path)])
    assert not found, f"secret values leaked into logs: {found}"


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    with running_nats() as server:
        yield server


@pytest.fixture
async def system(nats_server: NatsServer, tmp_path: object) -> AsyncIterator[System]:
    async with System(nats_server, tmp_path) as sys_:  # type: ignore[arg-type]
        yield sys_


def pytest_configure(config: pytest.Config) -> None:
    nats_fixes.install()  # as every service does at start-up
