"""A master whose venue is not read for master_silence_s is silent: an alert, and each
follower's on_master_silence (hold, close_only, flatten); it clears when the master is back."""

from __future__ import annotations

import time
from decimal import Decimal

from services.copier.followers import Follower
from shared import bus
from shared.ledger import Ledger, alive_key, holding_key
from tests.harness import CopierHandle, System, eventually, make_config, trade


async def test_silent_master_triggers_each_followers_choice_and_clears_when_back(
    system: System,
) -> None:
    accounts = {"master": 10_000, "holder": 1_000, "closer": 1_000, "flat": 1_000}
    for account, cash in accounts.items():
        await system.fund(account, cash)
    config = make_config(
        [
            {"id": f, "exchange": "paper", "on_master_silence": action}
            for f, action in (("holder", "hold"), ("closer", "close_only"), ("flat", "flatten"))
        ],
        master_silence_s=1.0,
    )
    copier = await system.start_copier(config)
    master = await system.start_master(config)
    fills = await system.js.key_value(bus.FILLS_BUCKET)
    await fills.put(alive_key("master"), repr(time.time()).encode())
    heard = await copier.copier.silence.check()
    buy = await master.trade(trade(base="0.02"))
    await system.wait_results(buy.signal_id, 3)

    async def silent() -> bool:
        return (await copier.copier.silence.check())["master"]

    await eventually(silent, timeout=10)
    await eventually(lambda: _orders(system, "flat", 2), timeout=10)
    state_while_silent = copier.copier.executor.policy.state(_follower(copier, "closer"))
    await fills.put(alive_key("master"), repr(time.time()).encode())
    back = await copier.copier.silence.check()
    await eventually(lambda: copier.copier.executor.policy.state(_follower(copier, "closer")) == "active")
    ledger = Ledger(await system.js.key_value(bus.LEDGER_BUCKET))

    assert heard == {"master": False}
    assert back == {"master": False}
    assert state_while_silent == "close_only"
    assert (await ledger.read(holding_key("flat", "master", "BTC/USD"))).amount == Decimal(0)
    assert len(await system.orders("holder")) == 1
    assert copier.metric("copytrade_master_silent", master="master") == 0


def _follower(copier: CopierHandle, follower_id: str) -> Follower:
    return next(f for f in copier.book.all() if f.id == follower_id)


async def _orders(system: System, account: str, count: int) -> bool:
    return len(await system.orders(account)) >= count
