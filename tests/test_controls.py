"""Operator and automatic controls: equity limits, reconciliation, and the copytrade CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import yaml

from shared import bus
from shared.exchange.paper import Place
from shared.exchange.port import OrderCommand
from shared.ledger import Ledger, holding_key
from tests.harness import ROOT, System, config_data, eventually, make_config, paper_followers, trade


async def test_daily_loss_moves_follower_to_close_only(system: System) -> None:
    await system.fund("master", 10_000)
    await system.fund("risky", 1_000)
    config = make_config(paper_followers({"risky": 1_000}, risk={"daily_loss_pct": "5"}))
    copier = await system.start_copier(config)
    master = await system.start_master(config)
    first = await master.trade(trade(quote="500"))  # risky holds ~$50 of BTC
    await system.wait_results(first.signal_id, 1)
    await system.fund("risky", 900)  # the follower's account loses $100 today

    buy = await master.trade(trade(quote="500"))
    results = await system.wait_results(buy.signal_id, 1)

    assert results["risky"].reason_code == "close_only"
    assert 'rule="daily_loss"' in copier.metrics_text()


async def test_reconciliation_clips_a_holding_sold_by_hand_and_reports_it(system: System) -> None:
    await system.fund("master", 10_000)
    await system.fund_all({"steady": 1_000, "meddled": 1_000})
    config = make_config(paper_followers({"steady": 1_000, "meddled": 1_000}))
    copier = await system.start_copier(config)
    master = await system.start_master(config)
    reply = await master.trade(trade(base="0.02"))
    await system.wait_results(reply.signal_id, 2)
    hand = OrderCommand(
        client_order_id="by-hand",
        symbol="BTC/USD",
        side="sell",
        size=Decimal("0.0005"),
        size_type="base",
        reference_price=Decimal(45000),
    )
    await system.paper(Place("meddled", hand))

    first = await copier.reconciler.reconcile()  # seen once: reported, not yet acted on
    drifts = await copier.reconciler.reconcile()  # seen twice: clipped
    again = await copier.reconciler.reconcile()
    holding = await Ledger(await system.js.key_value(bus.LEDGER_BUCKET)).read(
        holding_key("meddled", "master", "BTC/USD")
    )

    assert [(d.follower_id, d.clipped) for d in first] == [("meddled", Decimal(0))]
    assert [(d.follower_id, d.symbol, d.clipped) for d in drifts] == [
        ("meddled", "BTC/USD", Decimal("0.0005"))
    ]
    assert drifts[0].actual == Decimal("0.0015") == holding.amount
    assert [d.clipped for d in again] == [Decimal(0)]  # still drifting, clipped once
    assert 'copytrade_position_drift_ratio{follower="meddled",group="paper"' in copier.metrics_text()


def _cli(system: System, *args: str, config: Path | None = None) -> str:
    env = {**os.environ, "COPYTRADE_NATS_URL": system.server.url, "COPYTRADE_CONFIG": str(config or "")}
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


async def test_cli_pauses_a_follower_shows_status_and_history(system: System) -> None:
    followers = {"alice": 1_000, "bob": 1_000}
    await system.fund("master", 10_000)
    await system.fund_all(followers)
    config_path = system.tmp_path / "copytrade.yaml"
    config_path.write_text(yaml.safe_dump(config_data(paper_followers(followers))))
    copier = await system.start_copier(make_config(paper_followers(followers)))
    master = await system.start_master(make_config(paper_followers(followers)))

    await asyncio.to_thread(_cli, system, "pause", "bob", config=config_path)
    await eventually(lambda: copier.copier._control.state_of("bob", "active") == "paused")
    reply = await master.trade(trade(quote="500"))
    await system.wait_results(reply.signal_id, 2)
    status = await asyncio.to_thread(_cli, system, "status", config=config_path)
    history = await asyncio.to_thread(_cli, system, "history", "--follower", "alice", config=config_path)
    killed = await asyncio.to_thread(_cli, system, "kill", "on")
    await eventually(lambda: copier.copier._control.killed)

    rows = {line.split()[0]: line.split() for line in status.splitlines()[2:]}
    assert rows["alice"][2:4] == ["active", "filled"]
    assert rows["bob"][2:4] == ["paused", "skipped"]
    assert reply.signal_id[:12] in history
    assert "filled" in history
    assert "kill switch ON" in killed


async def test_drawdown_from_peak_pauses_the_follower(system: System) -> None:
    await system.fund("master", 10_000)
    await system.fund("falling", 1_000)
    config = make_config(paper_followers({"falling": 1_000}, risk={"max_drawdown_pct": "10"}))
    copier = await system.start_copier(config)
    master = await system.start_master(config)
    first = await master.trade(trade(quote="500"))  # equity seen at its peak: $1,000
    await system.wait_results(first.signal_id, 1)
    await system.fund("falling", 850)  # 15% below the peak

    sell = await master.trade(trade(side="sell", base="0.005"))
    results = await system.wait_results(sell.signal_id, 1)

    assert results["falling"].reason_code == "paused"
    assert 'rule="max_drawdown"' in copier.metrics_text()


async def test_allow_list_copies_only_the_listed_symbols(system: System) -> None:
    await system.fund("master", 10_000)
    await system.fund("btc_only", 1_000)
    config = make_config(paper_followers({"btc_only": 1_000}, risk={"allow_symbols": ["BTC/USD"]}))
    await system.start_copier(config)
    master = await system.start_master(config)

    btc = await master.trade(trade(quote="500"))
    eth = await master.trade(trade(symbol="ETH/USD", quote="500"))
    btc_results = await system.wait_results(btc.signal_id, 1)
    eth_results = await system.wait_results(eth.signal_id, 1)

    assert btc_results["btc_only"].outcome == "filled"
    assert eth_results["btc_only"].reason_code == "symbol_not_allowed"


async def test_heal_never_buys_back_what_the_follower_sold_by_hand(system: System) -> None:
    await system.fund("master", 10_000)
    await system.fund("seller", 1_000)
    config = make_config(paper_followers({"seller": 1_000}))
    copier = await system.start_copier(config, reconcile_heal=True)
    master = await system.start_master(config)
    reply = await master.trade(trade(base="0.02"))
    await system.wait_results(reply.signal_id, 1)
    hand = OrderCommand(
        client_order_id="by-hand",
        symbol="BTC/USD",
        side="sell",
        size=Decimal("0.001"),
        size_type="base",
        reference_price=Decimal(45000),
    )
    await system.paper(Place("seller", hand))
    orders_before = len(await system.orders("seller"))

    for _ in range(4):  # seen, clipped, then seen twice after the clip: a heal would go now
        await copier.reconciler.reconcile()

    assert len(await system.orders("seller")) == orders_before
    assert copier.metric("copytrade_heals_total", outcome="sold_by_hand") == 1


async def test_heal_never_sells_coins_an_operator_adopted(system: System) -> None:
    await system.fund("master", 10_000)
    await system.fund("veteran", 1_000, {"BTC": Decimal("0.01")})  # held before the upgrade
    config = make_config(paper_followers({"veteran": 1_000}))
    copier = await system.start_copier(config, reconcile_heal=True)
    master = await system.start_master(config)
    reply = await master.trade(trade(base="0.02"))
    await system.wait_results(reply.signal_id, 1)
    ledger = Ledger(await system.js.key_value(bus.LEDGER_BUCKET))
    key = holding_key("veteran", "master", "BTC/USD")
    await ledger.apply(key, "adopt:req-1", Decimal("0.01"), adopt=True)
    await ledger.apply(key, "adopt:req-1", Decimal("0.01"), adopt=True)  # a retry: once
    orders_before = len(await system.orders("veteran"))

    drifts = [d for _ in range(3) for d in await copier.reconciler.reconcile()]

    assert drifts == []
    assert len(await system.orders("veteran")) == orders_before
    assert (await ledger.read(key)).adopted == Decimal("0.01")
