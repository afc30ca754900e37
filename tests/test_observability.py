"""What operators see: every metric the dashboard and alerts query is exported by the running
services, and each service's health endpoints tell the truth."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import msgspec
import nats
import pytest
import yaml

from scripts.localstack import LocalStack, local_stack
from shared import bus
from shared.exchange.paper import Fund, nats_transport
from shared.messages import TradeReply, TradeRequest
from tests.deploy.promql import HISTOGRAM_SUFFIXES, dashboard_metric_names
from tests.harness import TEST_SIGNING_SEED, config_data


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    config = tmp_path / "copytrade.yaml"
    config.write_text(yaml.safe_dump(config_data([{"id": "alice", "exchange": "paper"}])))
    with local_stack(tmp_path, config) as running:
        running.write_secret("MASTER_SIGNING_KEY", TEST_SIGNING_SEED)
        running.start_nats()
        for name in ("paper", "sizer", "copier", "master"):
            running.start(name, name)
        running.wait_ready()
        yield running


def exported_names(text: str) -> set[str]:
    """Metric names a scrape offers: every sample, and families declared before their first
    series exists (e.g. risk trips, which appear only when a limit is crossed)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            for suffix in HISTOGRAM_SUFFIXES:
                name = name.removesuffix(suffix)
            names.add(name)
    return names


async def _one_copy(stack: LocalStack) -> None:
    assert stack.nats is not None
    nc = await nats.connect(stack.nats.url)
    call = nats_transport(nc)
    await call(Fund("master", Decimal(10_000)))
    await call(Fund("alice", Decimal(1_000)))
    request = TradeRequest(symbol="BTC/USD", side="buy", size=Decimal(500), size_type="quote")
    reply = await nc.request(bus.MASTER_TRADE_SUBJECT,
                             msgspec.json.Encoder(decimal_format="string").encode(request), timeout=30)
    assert msgspec.json.decode(reply.data, type=TradeReply).ok
    await nc.close()


def test_dashboard_and_alerts_query_only_exported_metrics(stack: LocalStack) -> None:
    asyncio.run(_one_copy(stack))
    deadline = time.monotonic() + 15
    while "copytrade_copy_outcomes_total{" not in stack.metrics("copier"):
        assert time.monotonic() < deadline, "the copier never counted the copy"
        time.sleep(0.05)

    exported = set().union(*(exported_names(stack.metrics(name)) for name in stack.ports))

    assert dashboard_metric_names() - exported == set()


def test_every_service_answers_health_and_readiness(stack: LocalStack) -> None:
    statuses = {}
    for name, port in stack.ports.items():
        for path in ("/healthz", "/readyz"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                statuses[(name, path)] = response.status

    assert set(statuses.values()) == {200}
