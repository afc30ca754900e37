"""The copy pipeline end to end on a real nats-server: master → JetStream → copier → paper."""

from __future__ import annotations

from decimal import Decimal

from tests.harness import System, make_config, paper_followers, trade

GUIDE_FOLLOWERS = {"alice": 1_000, "bob": 5_000, "carol": 50_000, "dave": 100}


async def _guide_system(system: System) -> None:
    await system.fund("master", 10_000)
    await system.fund_all(GUIDE_FOLLOWERS)


async def test_master_buy_copies_guide_sizes_to_each_follower(system: System) -> None:
    await _guide_system(system)
    config = make_config(paper_followers(GUIDE_FOLLOWERS))
    await system.start_copier(config)
    master = await system.start_master(config)

    first = await master.trade(trade(quote="500"))
    first_results = await system.wait_results(first.signal_id, 4)
    second = await master.trade(trade(quote="20"))
    second_results = await system.wait_results(second.signal_id, 4)

    assert {f: r.notional for f, r in first_results.items()} == {
        "alice": Decimal("50.00"),
        "bob": Decimal("250.00"),
        "carol": Decimal("2500.00"),
        "dave": Decimal("5.00"),
    }
    assert {f: r.outcome for f, r in first_results.items()} == dict.fromkeys(GUIDE_FOLLOWERS, "filled")
    assert {f: r.notional for f, r in second_results.items() if r.outcome == "filled"} == {
        "alice": Decimal("2.00"),
        "bob": Decimal("10.00"),
        "carol": Decimal("100.00"),
    }
    assert second_results["dave"].outcome == "skipped"
    assert second_results["dave"].reason == "Position too small: $0.20 < $1.00 minimum"
    assert [len(await system.orders(f)) for f in GUIDE_FOLLOWERS] == [2, 2, 2, 1]


async def test_master_partial_sell_sells_same_fraction_of_each_follower_holding(
    system: System,
) -> None:
    await _guide_system(system)
    config = make_config(paper_followers(GUIDE_FOLLOWERS))
    await system.start_copier(config)
    master = await system.start_master(config)
    buy = await master.trade(trade(base="0.02"))
    await system.wait_results(buy.signal_id, 4)
    held = {f: (await system.orders(f))[0].amount for f in GUIDE_FOLLOWERS}

    sell = await master.trade(trade(side="sell", base="0.01"))
    results = await system.wait_results(sell.signal_id, 4)

    assert {f: r.size for f, r in results.items()} == {
        f: (h / 2).quantize(Decimal("0.00000001"), rounding="ROUND_DOWN") for f, h in held.items()
    }
    assert all(r.side == "sell" and r.outcome == "filled" for r in results.values())
