"""Scale-out: a large group's signal is spread over its replicas as one work item per shard,
with one order per follower per signal, follower order kept, and a dead replica's items taken
over by the others."""

from __future__ import annotations

import asyncio
import signal as signals
from decimal import ROUND_DOWN, Decimal
from typing import Any

import yaml

from services.copier.followers import Follower
from services.copier.spread.replicas import owner_of
from services.paper.venue import PaperVenue
from shared.config import FollowerConfig
from shared.exchange.paper import PaperAccount, Snapshot
from shared.messages import CopyResult, TradeSignal, shard_of, signal_id_for
from tests.harness import System, config_data, eventually, make_config, paper_followers, trade

STEP = Decimal("0.00000001")


def _followers(count: int, prefix: str = "f") -> dict[str, int | str]:
    return {f"{prefix}{i:04d}": 1_000 for i in range(count)}


async def _orders_per_follower(system: System, followers: dict[str, int | str]) -> dict[str, int]:
    counts = await asyncio.gather(*(system.orders(f) for f in followers))
    return {f: len(c) for f, c in zip(followers, counts, strict=True)}


async def test_large_group_signals_spread_over_replicas_one_order_each(system: System) -> None:
    followers = _followers(500)
    await system.fund("master", 100_000)
    system.venue.seed_cash = Decimal(1_000)  # every follower account opens with $1,000
    config = make_config(paper_followers(followers))
    replicas = await system.start_replicas(config, 3)
    master = await system.start_master(config)

    replies = [await master.trade(trade(quote=q)) for q in ("5000", "3000")]
    results = [await system.wait_results(r.signal_id, len(followers), timeout=60) for r in replies]

    assert await _orders_per_follower(system, followers) == dict.fromkeys(followers, 2)
    assert all(r.outcome == "filled" for signal in results for r in signal.values())
    assert all(h.metric("copytrade_work_items_total", outcome="done") > 0 for h in replicas)
    assert all(h.metric("copytrade_copy_outcomes_total", outcome="filled") > 0 for h in replicas)
    assert sum(h.metric("copytrade_copy_outcomes_total", outcome="filled") for h in replicas) == 2 * len(
        followers
    )


async def test_replicas_connect_their_shards_followers_before_the_first_signal(
    system: System,
) -> None:
    followers = _followers(60)
    system.venue.seed_cash = Decimal(1_000)  # a paper client connects by reading its account

    replicas = await system.start_replicas(
        make_config(paper_followers(followers)), 2, spread_threshold=10, shards=8
    )

    await eventually(lambda: set(followers) <= set(system.venue.accounts()), timeout=20)
    assert all(h.metric("copytrade_work_items_total") == 0 for h in replicas)  # no signal yet


async def test_buy_then_sell_for_same_follower_execute_in_signal_order(system: System) -> None:
    followers = _followers(60)
    await system.fund("master", 10_000)
    await system.fund_all(followers)
    system.venue.latency_s = 0.02  # the sell is queued while the buy's orders are in flight
    config = make_config(paper_followers(followers))
    await system.start_replicas(config, 3, spread_threshold=10, shards=8, snapshot_ttl_s=3600)
    master = await system.start_master(config)

    buy = await master.trade(trade(base="0.02"))
    sell = await master.trade(trade(side="sell", base="0.01"))  # published before buy is done
    await system.wait_results(buy.signal_id, len(followers), timeout=30)
    sold = await system.wait_results(sell.signal_id, len(followers), timeout=30)

    orders = {f: await system.orders(f) for f in followers}
    assert {
        f: tuple(o.side for o in sorted(os, key=lambda o: o.at)) for f, os in orders.items()
    } == dict.fromkeys(followers, ("buy", "sell"))
    assert {f: r.size for f, r in sold.items()} == {  # sized on the position the buy left
        f: (next(o.amount for o in os if o.side == "buy") / 2).quantize(STEP, rounding=ROUND_DOWN)
        for f, os in orders.items()
    }
    assert all(r.outcome == "filled" for r in sold.values())


async def test_replica_killed_mid_item_its_work_is_taken_over_once(system: System) -> None:
    followers = _followers(240, prefix="k")
    await system.fund("master", 100_000)
    system.venue.seed_cash = Decimal(1_000)
    system.venue.latency_s = 0.05
    config_path = system.tmp_path / "copytrade.yaml"
    config_path.write_text(yaml.safe_dump(config_data(paper_followers(followers))))
    config = make_config(paper_followers(followers))
    fast: dict[str, Any] = {"ack_wait_s": 2.0, "order_timeout_s": 1.0, "replica_heartbeat_s": 0.2}
    doomed = system.spawn_copier(
        config_path, instance="doomed", COPYTRADE_CONCURRENCY="4", COPYTRADE_REPLICA_HEARTBEAT_S="0.2"
    )
    survivors = await system.start_replicas(config, 2, others=1, **fast)
    master = await system.start_master(config)
    live = survivors[0].copier.replicas.live()
    doomed_shards = {s for s in range(32) if owner_of(s, live) == "doomed"}
    in_doomed_shards = {f: c for f, c in followers.items() if shard_of(f, 32) in doomed_shards}

    reply = await master.trade(trade(quote="5000"))

    async def some_placed() -> bool:
        return sum((await _orders_per_follower(system, in_doomed_shards)).values()) >= 10

    await eventually(some_placed, timeout=30)
    doomed.send_signal(signals.SIGKILL)
    doomed.wait()
    placed_before_kill = sum((await _orders_per_follower(system, in_doomed_shards)).values())
    results = await system.wait_results(reply.signal_id, len(followers), timeout=60)

    assert 10 <= placed_before_kill < len(in_doomed_shards)
    assert await _orders_per_follower(system, followers) == dict.fromkeys(followers, 1)
    assert all(isinstance(r, CopyResult) and r.outcome == "filled" for r in results.values())
    assert sum(h.metric("copytrade_work_items_total", outcome="done") for h in survivors) > 32 - len(
        doomed_shards
    )  # took over the doomed's items


async def test_cached_figures_are_read_again_unless_previous_copy_ran_here() -> None:
    venue = PaperVenue(seed_cash=Decimal(1_000))
    reads = 0

    async def counting(call: object) -> object:
        nonlocal reads
        reads += isinstance(call, Snapshot)
        return await venue.handle(call)  # type: ignore[arg-type]

    follower = Follower(FollowerConfig(id="solo", exchange="paper"), PaperAccount("solo", counting), None)  # type: ignore[arg-type]
    signal = _signal()

    for lineage in [("work-paper-3", 7), ("work-paper-3", 8), ("work-paper-3", 10), ("work-paper-5", 11)]:
        follower.resume(lineage)
        await follower.snapshot(signal, None, 3600, state="active", max_signal_age_s=60)

    assert reads == 3  # the first, after a gap in deliveries (9 went elsewhere), another shard


def _signal() -> TradeSignal:
    return TradeSignal(
        signal_id=signal_id_for("paper", "o1"),
        master_id="master",
        exchange="paper",
        symbol="BTC/USD",
        side="buy",
        price=Decimal(45_000),
        size=Decimal(100),
        size_type="quote",
        filled_base=Decimal("0.002"),
        order_id="o1",
        master_equity=Decimal(10_000),
        master_position_before=Decimal(0),
        executed_at=1.0,
    )
