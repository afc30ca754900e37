"""What operators see: every metric the dashboard and alerts query is exported by the running
services, and each service's health endpoints tell the truth."""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
import yaml

from shared import bus
from shared.exchange.paper import Fund, InjectFault, nats_transport
from shared.messages import TradeReply, TradeRequest
from support.localstack import LocalStack, local_stack
from support.natsserver import free_port
from tests.deploy.promql import (
    HISTOGRAM_SUFFIXES,
    dashboard_metric_names,
    dashboard_queries,
    grafana_to_promql,
    variable_queries,
)
from tests.harness import TEST_SIGNING_SEED, config_data


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    config = tmp_path / "copytrade.yaml"
    config.write_text(
        yaml.safe_dump(
            config_data([{"id": "alice", "exchange": "paper"}, {"id": "dave", "exchange": "paper"}])
        )
    )
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


async def _one_copy(stack: LocalStack, quote: int = 500, alice_fault: str | None = None) -> None:
    """A master buy copied to alice ($1,000) and dave ($100): a $20 buy skips dave."""
    assert stack.nats is not None
    nc = await nats.connect(stack.nats.url)
    call = nats_transport(nc)
    await call(Fund("master", Decimal(10_000)))
    await call(Fund("alice", Decimal(1_000)))
    await call(Fund("dave", Decimal(100)))
    if alice_fault is not None:
        await call(InjectFault("alice", alice_fault))  # type: ignore[arg-type]
    request = TradeRequest(symbol="BTC/USD", side="buy", size=Decimal(quote), size_type="quote")
    reply = await nc.request(
        bus.MASTER_TRADE_SUBJECT, msgspec.json.Encoder(decimal_format="string").encode(request), timeout=30
    )
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


def _prometheus(tmp_path: Path, targets: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [{"job_name": "copytrade", "static_configs": [{"targets": targets}]}],
            }
        )
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"http://127.0.0.1:{port}"


def _query(base: str, promql: str) -> dict[str, Any]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return dict(json.loads(response.read()))
    except OSError as exc:
        return {"status": "unreachable", "error": str(exc)}


def _has_data(base: str, promql: str) -> bool:
    return bool(_query(base, promql).get("data", {}).get("result"))


def _poll(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_prometheus_answers_every_dashboard_query_from_a_live_scrape(
    stack: LocalStack, tmp_path: Path
) -> None:
    assert shutil.which("prometheus"), "prometheus missing: run scripts/install-deploy-tools.sh"
    proc, base = _prometheus(tmp_path, [f"127.0.0.1:{port}" for port in stack.ports.values()])
    try:
        _poll(lambda: _has_data(base, "count(up == 1) == 4"), 60, "every service scraped once")
        asyncio.run(_one_copy(stack))
        for promql in ("copytrade_copy_latency_seconds_count > 0", "copytrade_signals_published_total > 0"):
            _poll(functools.partial(_has_data, base, promql), 60, f"the first copy scraped: {promql}")
        # counters move between scrapes, so rates have data; dave is skipped, alice fails
        asyncio.run(_one_copy(stack, quote=20, alice_fault="exchange_error"))
        for promql in (
            "count_over_time(copytrade_copy_outcomes_total{outcome='failed'}[5m]) >= 2",
            "count_over_time(copytrade_copy_outcomes_total{outcome='skipped'}[5m]) >= 2",
            "rate(copytrade_signals_published_total[5m]) > 0",
        ):
            _poll(functools.partial(_has_data, base, promql), 60, promql)
        queries = {**dashboard_queries(), **variable_queries()}
        answers = {name: _query(base, grafana_to_promql(expr)) for name, expr in queries.items()}
    finally:
        proc.terminate()
        proc.wait(10)

    failed = {name: a.get("error") for name, a in answers.items() if a.get("status") != "success"}
    with_data = {name for name, a in answers.items() if a.get("data", {}).get("result")}
    # the NATS row reads prometheus-nats-exporter's series: no exporter runs here, so those
    # queries must parse and run, but cannot have data
    exporter = {name for name, expr in queries.items() if "nats_" in expr or 'job="nats"' in expr}
    assert failed == {}
    assert sorted(set(answers) - with_data - exporter) == []
