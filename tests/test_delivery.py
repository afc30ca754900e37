"""Exactly-once effect and isolation: replicas, groups, failures, duplicates, bad bytes, crashes."""

from __future__ import annotations

import asyncio
import signal as signals
from decimal import Decimal

import yaml
from prometheus_client import CollectorRegistry

from services.master.service import MasterContext, MasterMetrics, MasterService
from services.paper.venue import PaperVenue
from shared import bus
from shared.exchange.context import AdapterContext
from shared.exchange.factory import build_account
from shared.exchange.paper import Fund
from shared.messages import CopyResult, SignalRejected
from shared.signing import SignalSigner
from tests.harness import (
    TEST_SIGNING_SEED,
    System,
    config_data,
    eventually,
    make_config,
    paper_followers,
    trade,
)


async def test_failing_followers_do_not_stop_the_others(system: System) -> None:
    equities = {"ok1": 1_000, "broke": 1_000, "broken_venue": 1_000, "bad_key": 1_000, "ok2": 1_000}
    await system.fund("master", 10_000)
    await system.fund_all(equities)
    await system.fault("broke", "insufficient_funds")
    await system.fault("broken_venue", "exchange_error")
    await system.fault("bad_key", "auth_error")
    config = make_config(paper_followers(equities))
    copier = await system.start_copier(config)
    master = await system.start_master(config)

    reply = await master.trade(trade(quote="500"))
    results = await system.wait_results(reply.signal_id, 5)

    assert {f: r.outcome for f, r in results.items()} == {
        "ok1": "filled",
        "ok2": "filled",
        "broke": "failed",
        "broken_venue": "failed",
        "bad_key": "failed",
    }
    assert {f: r.reason_code for f, r in results.items() if r.outcome == "failed"} == {
        "broke": "insufficient_balance",
        "broken_venue": "exchange_error",
        "bad_key": "auth_error",
    }
    assert 'outcome="failed",reason="auth_error"' in copier.metrics_text()


async def test_two_replicas_of_one_group_place_one_order_per_follower(system: System) -> None:
    equities = {f"f{i}": 1_000 for i in range(20)}
    await system.fund("master", 10_000)
    await system.fund_all(equities)
    config = make_config(paper_followers(equities))
    await system.start_copier(config, instance="replica-a")
    await system.start_copier(config, instance="replica-b")
    master = await system.start_master(config)

    replies = [await master.trade(trade(quote=str(q))) for q in (100, 200, 300)]
    for reply in replies:
        await system.wait_results(reply.signal_id, 20)

    assert {f: len(await system.orders(f)) for f in equities} == dict.fromkeys(equities, 3)


async def test_two_groups_each_receive_every_signal(system: System) -> None:
    await system.fund("master", 10_000)
    await system.fund_all({"a1": 1_000, "b1": 2_000})
    config = make_config(
        [
            {"id": "a1", "exchange": "paper", "group": "paper-a"},
            {"id": "b1", "exchange": "paper", "group": "paper-b"},
        ]
    )
    await system.start_copier(config, exchange="paper-a")
    await system.start_copier(config, exchange="paper-b")
    master = await system.start_master(config)

    reply = await master.trade(trade(quote="500"))
    results = await system.wait_results(reply.signal_id, 2)

    assert {f: r.outcome for f, r in results.items()} == {"a1": "filled", "b1": "filled"}


async def test_same_master_fill_published_twice_is_copied_once(system: System) -> None:
    await system.fund("master", 10_000)
    await system.fund_all({"solo": 1_000})
    config = make_config(paper_followers({"solo": 1_000}))
    await system.start_copier(config)
    master = await system.start_master(config)
    reply = await master.trade(trade(quote="500"))
    assert reply.signal is not None

    await master.publish(reply.signal)
    later = await master.trade(trade(quote="100"))
    await system.wait_results(later.signal_id, 1)

    signals_info = await system.js.stream_info(bus.SIGNALS_STREAM)
    assert signals_info.state.messages == 2
    assert len(await system.orders("solo")) == 2


async def test_failed_master_order_publishes_no_signal(system: System) -> None:
    await system.fund("master", 100)
    config = make_config(paper_followers({"solo": 1_000}))
    master = await system.start_master(config)

    too_big = await master.trade(trade(quote="500"))
    await system.fault("master", "exchange_error")
    refused = await master.trade(trade(quote="50"))

    signals_info = await system.js.stream_info(bus.SIGNALS_STREAM)
    assert (too_big.ok, refused.ok) == (False, False)
    assert signals_info.state.messages == 0


async def test_malformed_signal_is_rejected_and_copier_keeps_running(system: System) -> None:
    await system.fund("master", 10_000)
    await system.fund_all({"solo": 1_000})
    config = make_config(paper_followers({"solo": 1_000}))
    copier = await system.start_copier(config)
    master = await system.start_master(config)

    await system.js.publish("copytrade.signals.master", b'{"type":"signal","size":"NaN"}')
    await system.js.publish("copytrade.signals.master", b"\x00\xffnot json")
    reply = await master.trade(trade(quote="500"))
    await system.wait_results(reply.signal_id, 1)

    rejected = [r for r in await system.audit() if isinstance(r, SignalRejected)]
    assert [r.reason_code for r in rejected] == ["malformed", "malformed"]
    assert len(await system.orders("solo")) == 1
    assert 'copytrade_signals_rejected_total{group="paper",reason="malformed"} 2.0' in (copier.metrics_text())


async def test_copier_killed_mid_fan_out_ends_with_one_order_per_follower(system: System) -> None:
    equities = {f"k{i:02d}": 1_000 for i in range(60)}
    await system.fund("master", 10_000)
    await system.fund_all(equities)
    config_path = system.tmp_path / "copytrade.yaml"
    config_path.write_text(yaml.safe_dump(config_data(paper_followers(equities))))
    config = make_config(paper_followers(equities))
    system.venue.latency_s = 0.05
    first = system.spawn_copier(config_path, instance="doomed", COPYTRADE_CONCURRENCY="4")
    await eventually(system.consumer_exists, timeout=20)
    master = await system.start_master(config)

    reply = await master.trade(trade(quote="500"))

    async def some_placed() -> bool:
        return await _orders_placed(system, equities) >= 10

    await eventually(some_placed, timeout=20)
    first.send_signal(signals.SIGKILL)
    first.wait()
    placed_before_restart = await _orders_placed(system, equities)
    system.spawn_copier(config_path, instance="survivor")
    results = await system.wait_results(reply.signal_id, len(equities), timeout=60)

    assert 10 <= placed_before_restart < len(equities)
    assert {f: len(await system.orders(f)) for f in equities} == dict.fromkeys(equities, 1)
    assert all(isinstance(r, CopyResult) and r.outcome == "filled" for r in results.values())


async def _orders_placed(system: System, followers: dict[str, int]) -> int:
    counts = await asyncio.gather(*(system.orders(f) for f in followers))
    return sum(len(c) for c in counts)


async def test_master_publish_survives_a_nats_outage_without_doubling(system: System) -> None:
    venue = PaperVenue()  # embedded: the master order itself needs no NATS
    await venue.handle(Fund("master", Decimal(10_000), {}))
    nc = await system.connect()
    config = make_config([])
    me = config.master_named(None)
    account = build_account(me, None, AdapterContext(paper_transport=venue.handle))
    master = MasterService(
        MasterContext(
            js=nc.jetstream(timeout=1),
            account=account,
            config=me,
            metrics=MasterMetrics(CollectorRegistry(), "master"),
            signer=SignalSigner(TEST_SIGNING_SEED),
        )
    )

    system.server.stop()  # the hiccup: the fill happens, publishing cannot
    trading = asyncio.create_task(master.trade(trade(quote="500")))
    await eventually(lambda: len(venue._accounts["master"].orders) == 1)
    await asyncio.to_thread(system.server.start)
    reply = await asyncio.wait_for(trading, 60)

    signals_info = await system.js.stream_info(bus.SIGNALS_STREAM)
    assert reply.ok
    assert signals_info.state.messages == 1
