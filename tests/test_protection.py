"""Protecting followers' money: only signals the master signed, once, fresh, within each
follower's state and risk limits, and a kill switch that stops new orders at once."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal

import msgspec

from shared import bus
from shared.control import set_kill, set_state
from shared.messages import SignalRejected, TradeSignal, signal_id_for
from shared.signing import SignalSigner, new_signing_key
from tests.harness import TEST_SIGNING_SEED, System, eventually, make_config, paper_followers, trade

ENCODER = msgspec.json.Encoder(decimal_format="string")


async def _system(system: System, followers: dict[str, int], **follower_settings: object):  # type: ignore[no-untyped-def]
    await system.fund("master", 10_000)
    await system.fund_all(followers)
    config = make_config(paper_followers(followers, **follower_settings))
    copier = await system.start_copier(config)
    master = await system.start_master(config)
    return copier, master


async def _publish(system: System, signal: TradeSignal) -> None:
    await system.js.publish(
        bus.signal_subject("master"), ENCODER.encode(signal), headers={"Nats-Msg-Id": uuid.uuid4().hex}
    )  # past JetStream's dedupe


def _signal(order_id: str = "outside-1", quote: str = "500") -> TradeSignal:
    """A master buy as the fill watcher publishes it for a trade made outside copytrade."""
    return TradeSignal(
        signal_id=signal_id_for("paper", order_id),
        master_id="master",
        exchange="paper",
        symbol="BTC/USD",
        side="buy",
        price=Decimal(45000),
        size=Decimal(quote),
        size_type="quote",
        filled_base=Decimal(quote) / 45000,
        order_id=order_id,
        master_equity=Decimal(10_000),
        master_position_before=Decimal(0),
        executed_at=time.time(),
    )


async def _rejections(system: System, count: int) -> list[str]:
    async def enough() -> bool:
        return len([r for r in await system.audit() if isinstance(r, SignalRejected)]) >= count

    await eventually(enough)
    return [r.reason_code for r in await system.audit() if isinstance(r, SignalRejected)]


async def test_forged_unsigned_tampered_and_replayed_signals_place_no_orders(system: System) -> None:
    _, master = await _system(system, {"solo": 1_000})
    genuine = await master.trade(trade(quote="500"))
    assert genuine.signal is not None
    await system.wait_results(genuine.signal_id, 1)
    original = genuine.signal
    forger = SignalSigner(new_signing_key()[0])
    fresh = msgspec.structs.replace(
        original, order_id="forged-1", signature="", signal_id=signal_id_for(original.exchange, "forged-1")
    )

    await _publish(system, forger.sign(fresh))  # forged: another key
    await _publish(system, fresh)  # unsigned
    await _publish(
        system,
        msgspec.structs.replace(  # tampered: signed, then resized
            SignalSigner(TEST_SIGNING_SEED).sign(fresh), size=Decimal("5000")
        ),
    )
    await _publish(system, original)  # replayed: already executed
    reasons = await _rejections(system, 4)

    assert sorted(reasons) == ["bad_signature", "bad_signature", "replayed", "unsigned"]
    assert len(await system.orders("solo")) == 1


async def test_stale_signal_after_outage_is_skipped_not_executed_late(system: System) -> None:
    copier, master = await _system(system, {"solo": 1_000})
    await copier.stop()  # the outage
    reply = await master.trade(trade(quote="500"))
    assert reply.signal is not None
    late = msgspec.structs.replace(reply.signal, executed_at=time.time() - 600, signature="")
    await system.js.purge_stream(bus.SIGNALS_STREAM)
    await _publish(system, SignalSigner(TEST_SIGNING_SEED).sign(late))
    await system.start_copier(make_config(paper_followers({"solo": 1_000})))

    results = await system.wait_results(reply.signal_id, 1)

    assert results["solo"].reason_code == "stale_signal"
    assert await system.orders("solo") == []


async def test_follower_states_pause_close_only_and_dry_run(system: System) -> None:
    followers = {"paused": 1_000, "closer": 1_000, "dry": 1_000, "active": 1_000}
    _, master = await _system(system, followers)
    await set_state(system.control, "paused", "paused", "test")
    await set_state(system.control, "closer", "close_only", "test")
    await set_state(system.control, "dry", "dry_run", "test")

    buy = await master.trade(trade(quote="500"))
    results = await system.wait_results(buy.signal_id, 4)

    assert {f: (r.outcome, r.reason_code) for f, r in results.items()} == {
        "paused": ("skipped", "paused"),
        "closer": ("skipped", "close_only"),
        "dry": ("dry_run", "dry_run"),
        "active": ("filled", "none"),
    }
    assert results["dry"].size == Decimal("50.00")
    assert [len(await system.orders(f)) for f in followers] == [0, 0, 0, 1]


async def test_close_only_follower_still_copies_exits(system: System) -> None:
    _, master = await _system(system, {"closer": 1_000})
    buy = await master.trade(trade(base="0.02"))
    await system.wait_results(buy.signal_id, 1)
    await set_state(system.control, "closer", "close_only", "test")

    sell = await master.trade(trade(side="sell", base="0.02"))
    results = await system.wait_results(sell.signal_id, 1)

    assert (results["closer"].outcome, results["closer"].side) == ("filled", "sell")


async def test_kill_switch_stops_new_orders_on_every_replica(system: System) -> None:
    copier, master = await _system(system, {"solo": 1_000})
    await set_kill(system.control, True)
    await eventually(lambda: copier.copier._control.killed)
    await eventually(lambda: master.killed)  # each service learns it from its own watch

    refused = await master.trade(trade(quote="500"))  # the master refuses to trade at all
    signal = SignalSigner(TEST_SIGNING_SEED).sign(_signal())  # a fill made outside copytrade
    await _publish(system, signal)
    results = await system.wait_results(signal.signal_id, 1)
    await set_kill(system.control, False)
    await eventually(lambda: not copier.copier._control.killed)
    after = await master.trade(trade(quote="100"))
    await system.wait_results(after.signal_id, 1)

    assert not refused.ok
    assert results["solo"].reason_code == "kill_switch"
    assert len(await system.orders("solo")) == 1


async def test_position_cap_limits_buys_but_never_sells(system: System) -> None:
    _, master = await _system(system, {"capped": 50_000}, risk={"max_position_notional": "3000"})
    first = await master.trade(trade(quote="500"))  # wants $2,500: fits
    second = await master.trade(trade(quote="500"))  # wants $2,500: only $500 of room left
    third = await master.trade(trade(quote="500"))  # no room
    await system.wait_results(third.signal_id, 1)
    sell = await master.trade(trade(side="sell", base="0.03333333"))
    sold = await system.wait_results(sell.signal_id, 1)

    notionals = [(await system.results(r.signal_id))["capped"] for r in (first, second, third)]
    assert [r.notional for r in notionals[:2]] == [Decimal("2500.00"), Decimal("500.00")]
    assert notionals[2].reason_code == "max_position"
    assert sold["capped"].outcome == "filled"


async def test_denied_symbol_is_skipped_for_that_follower_only(system: System) -> None:
    await system.fund("master", 10_000)
    await system.fund_all({"picky": 1_000, "open": 1_000})
    config = make_config(
        [
            {"id": "picky", "exchange": "paper", "risk": {"deny_symbols": ["BTC/USD"]}},
            {"id": "open", "exchange": "paper"},
        ]
    )
    await system.start_copier(config)
    master = await system.start_master(config)

    reply = await master.trade(trade(quote="500"))
    results = await system.wait_results(reply.signal_id, 2)

    assert {f: r.reason_code for f, r in results.items()} == {"picky": "symbol_not_allowed", "open": "none"}


async def test_slippage_beyond_tolerance_skips_the_guarded_follower(system: System) -> None:
    await system.fund("master", 10_000)
    await system.fund_all({"guarded": 1_000, "unguarded": 1_000})
    config = make_config(
        [
            {"id": "guarded", "exchange": "paper", "risk": {"max_price_deviation_pct": "2"}},
            {"id": "unguarded", "exchange": "paper"},
        ]
    )
    await system.start_copier(config)
    master = await system.start_master(config)
    reply = await master.trade(trade(quote="500"))  # filled at $45,000
    await system.wait_results(reply.signal_id, 2)
    assert reply.signal is not None
    moved = msgspec.structs.replace(
        reply.signal,
        order_id="moved-1",
        signature="",
        signal_id=signal_id_for(reply.signal.exchange, "moved-1"),
    )

    await system.set_price("BTC/USD", "50000")  # the market ran 11% while the signal travelled
    await _publish(system, SignalSigner(TEST_SIGNING_SEED).sign(moved))
    results = await system.wait_results(moved.signal_id, 2)

    assert results["guarded"].reason_code == "slippage"
    assert results["unguarded"].outcome == "filled"


async def test_slippage_limit_mode_fills_within_tolerance_and_expires_beyond_it(
    system: System,
) -> None:
    await system.fund("master", 10_000)
    await system.fund_all({"limited": 1_000})
    config = make_config(
        [
            {
                "id": "limited",
                "exchange": "paper",
                "risk": {"max_price_deviation_pct": "2", "slippage_action": "limit"},
            }
        ]
    )
    await system.start_copier(config)
    master = await system.start_master(config)
    first = await master.trade(trade(quote="500"))  # filled at $45,000: the limit is $45,900
    await system.wait_results(first.signal_id, 1)
    assert first.signal is not None
    moved = msgspec.structs.replace(
        first.signal,
        order_id="moved-1",
        signature="",
        signal_id=signal_id_for(first.signal.exchange, "moved-1"),
    )

    await system.set_price("BTC/USD", "46000")  # 2.2% above the master's fill
    await _publish(system, SignalSigner(TEST_SIGNING_SEED).sign(moved))
    second = (await system.wait_results(moved.signal_id, 1))["limited"]
    orders = await system.orders("limited")

    assert [(o.status, o.limit_price) for o in orders] == [
        ("filled", Decimal("45900.0")),
        ("expired", Decimal("45900.0")),
    ]
    assert orders[0].amount == Decimal("0.00111111")
    assert orders[1].amount == 0
    assert (second.outcome, second.reason_code) == ("skipped", "limit_not_filled")
    assert second.exchange_order_id == orders[1].order_id
