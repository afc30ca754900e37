"""Subscribing and unsubscribing: copy_open buys the master's copied position × the ratio once;
close sells the copied holding only; keep leaves it."""

from __future__ import annotations

from decimal import Decimal

from shared import bus
from shared.control import set_unsubscribed
from shared.exchange.paper import Position
from shared.ledger import Ledger, holding_key
from tests.harness import System, eventually, make_config, trade


async def _btc(system: System, account: str) -> Decimal:
    reply = await system.paper(Position(account, "BTC/USD"))
    return Decimal(getattr(reply, "amount", 0) or 0)


async def test_copy_open_buys_the_masters_copied_position_once(system: System) -> None:
    for account, cash in {"master": 10_000, "early": 1_000, "late": 2_000}.items():
        await system.fund(account, cash)
    before = make_config([{"id": "early", "exchange": "paper"}])
    copier = await system.start_copier(before)
    master = await system.start_master(before)
    buy = await master.trade(trade(base="0.02"))
    await system.wait_results(buy.signal_id, 1)
    after = make_config(
        [
            {"id": "early", "exchange": "paper"},
            {
                "id": "late",
                "exchange": "paper",
                "subscriptions": [{"master": "master", "on_subscribe": "copy_open"}],
            },
        ]
    )

    copier.book.apply(after)  # what a reload does
    await eventually(lambda: bool(copier.book.generation) and len(copier.book.all()) == 2)
    await copier.copier.subscriptions.sync()
    await eventually(lambda: _orders(system, "late", 1), timeout=10)
    await copier.copier.subscriptions.sync()  # again: nothing more to open
    holding = await Ledger(await system.js.key_value(bus.LEDGER_BUCKET)).read(
        holding_key("late", "master", "BTC/USD")
    )

    assert len(await system.orders("late")) == 1
    assert holding.amount == Decimal("0.00400000")  # 0.02 × 2,000 / 10,000
    assert await _btc(system, "late") == holding.amount


async def test_unsubscribe_close_sells_the_copied_holding_and_keeps_own_coins(
    system: System,
) -> None:
    await system.fund("master", 10_000)
    await system.fund("tania", 1_000, {"BTC": Decimal(1)})
    config = make_config(
        [
            {
                "id": "tania",
                "exchange": "paper",
                "subscriptions": [
                    {
                        "master": "master",
                        "on_unsubscribe": "close",
                        "sizing": {"mode": "multiplier", "multiplier": "0.1"},
                    }
                ],
            }
        ]
    )
    copier = await system.start_copier(config)
    master = await system.start_master(config)
    await copier.copier.subscriptions.sync()
    buy = await master.trade(trade(base="0.02"))
    copied = (await system.wait_results(buy.signal_id, 1))["tania"].filled_base

    await set_unsubscribed(system.control, "tania", "master", None, "test")
    await eventually(lambda: not copier.copier.executor.policy.copies(copier.book.all()[0], "master"))
    await copier.copier.subscriptions.sync()
    await eventually(lambda: _orders(system, "tania", 2), timeout=10)
    after = await master.trade(trade(base="0.02"))  # no longer copied
    await eventually(lambda: _signal_seen(system, after.signal_id))

    assert copied == Decimal("0.00200000")
    assert await _btc(system, "tania") == Decimal(1)  # its own coin stays
    assert len(await system.orders("tania")) == 2
    assert "tania" not in await system.results(after.signal_id)


async def _orders(system: System, account: str, count: int) -> bool:
    return len(await system.orders(account)) >= count


async def _signal_seen(system: System, signal_id: str) -> bool:
    info = await system.js.consumer_info(bus.SIGNALS_STREAM, bus.durable_name("paper"))
    return (info.num_pending or 0) == 0 and (info.num_ack_pending or 0) == 0
