"""Trades made on the master account outside copytrade are copied exactly once."""

from __future__ import annotations

from decimal import Decimal

import msgspec

from shared import bus
from shared.exchange.paper import Place
from shared.exchange.port import OrderCommand
from shared.messages import TradeSignal
from tests.harness import System, make_config, paper_followers, trade


def _by_hand(size: str) -> Place:
    return Place(
        "master",
        OrderCommand(
            client_order_id=f"by-hand-{size}",
            symbol="BTC/USD",
            side="buy",
            size=Decimal(size),
            size_type="quote",
            reference_price=Decimal(0),
        ),
    )


async def _signals(system: System) -> int:
    return (await system.js.stream_info(bus.SIGNALS_STREAM)).state.messages


async def test_fill_made_by_hand_on_master_is_copied_once(system: System) -> None:
    await system.fund("master", 10_000)
    await system.fund("alice", 1_000)
    config = make_config(paper_followers({"alice": 1_000}))
    await system.start_copier(config)
    await system.start_master(config)
    await system.watcher.poll()  # first start: the cursor begins now

    await system.paper(_by_hand("500"))
    published = await system.watcher.poll()
    again = await system.watcher.poll()
    last = await system.js.get_last_msg(bus.SIGNALS_STREAM, "copytrade.signals.master")
    signal = msgspec.json.decode(last.data or b"", type=TradeSignal)
    results = await system.wait_results(signal.signal_id, 1)

    assert (published, again) == (1, 0)
    assert (signal.size, signal.size_type) == (Decimal("0.01111111"), "base")
    assert results["alice"].size == Decimal("0.00111111")


async def test_restarted_master_neither_repeats_nor_misses_fills(system: System) -> None:
    await system.fund("master", 10_000)
    config = make_config(paper_followers({"alice": 1_000}))
    master = await system.start_master(config)
    await system.watcher.poll()
    await master.trade(trade(quote="100"))  # copytrade's own order: already a signal
    await system.paper(_by_hand("200"))
    first = await system.watcher.poll()

    await system.start_master(config)  # a restarted master service and watcher
    await system.paper(_by_hand("300"))  # made while it was down
    after_restart = await system.watcher.poll()

    assert (first, after_restart) == (1, 1)
    assert await _signals(system) == 3
