"""The master's copied position: sells are copied as a share of what was copied, never of coins
the master or a follower held before (issue 13, "Copy what was copied")."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from decimal import ROUND_DOWN, Decimal

import msgspec
import nats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.master.signals import published_key
from shared import bus
from shared.exchange.context import AdapterContext
from shared.exchange.paper import Ok, Place, Position
from shared.exchange.port import OrderCommand
from shared.ledger import Ledger, holding_key, master_key
from shared.messages import TradeSignal
from support.natsserver import NatsServer
from tests.emulators.kraken import KrakenEmulator
from tests.harness import System, make_config, paper_followers, trade
from tests.secrets_scan import register

BTC = "BTC/USD"


async def _held(system: System, account: str) -> Decimal:
    reply = await system.paper(Position(account, BTC))
    assert isinstance(reply, Ok)
    return reply.amount or Decimal(0)


async def _ledger(system: System) -> Ledger:
    return Ledger(await system.js.key_value(bus.LEDGER_BUCKET))


async def test_master_exit_sells_what_followers_copied_and_keeps_coins_held_before(
    system: System,
) -> None:
    await system.fund("master", 100_000, {"BTC": Decimal(10)})  # its own, before it is followed
    await system.fund("alice", 10_000, {"BTC": Decimal("0.5")})
    await system.fund("bob", 1_000, {"BTC": Decimal("0.2")})
    config = make_config(paper_followers({"alice": 0, "bob": 0}))
    await system.start_copier(config)
    master = await system.start_master(config)

    buy = await master.trade(trade(base="0.1"))
    bought = await system.wait_results(buy.signal_id, 2)
    sell = await master.trade(trade(side="sell", base="0.1"))
    sold = await system.wait_results(sell.signal_id, 2)
    ledger = await _ledger(system)

    assert buy.signal is not None
    assert sell.signal is not None
    assert (buy.signal.copied_position_before, sell.signal.copied_position_before) == (
        Decimal(0),
        Decimal("0.1"),
    )
    assert {f: sold[f].filled_base for f in sold} == {f: bought[f].filled_base for f in bought}
    assert (await _held(system, "alice"), await _held(system, "bob")) == (Decimal("0.5"), Decimal("0.2"))
    assert (await ledger.read(master_key("master", BTC))).amount == 0
    assert (await ledger.read(holding_key("alice", "master", BTC))).amount == 0


async def test_master_sale_of_coins_held_before_is_not_copied(system: System) -> None:
    await system.fund("master", 100_000, {"BTC": Decimal(10)})
    await system.fund("alice", 10_000, {"BTC": Decimal("0.5")})
    config = make_config(paper_followers({"alice": 0}))
    await system.start_copier(config)
    master = await system.start_master(config)

    sell = await master.trade(trade(side="sell", base="1"))
    results = await system.wait_results(sell.signal_id, 1)

    assert sell.signal is not None
    assert sell.signal.copied_position_before == 0
    assert (results["alice"].outcome, results["alice"].reason_code) == ("skipped", "master_own_holdings")
    assert await _held(system, "alice") == Decimal("0.5")


async def test_follower_sale_by_hand_is_clipped_and_master_exit_sells_the_rest(
    system: System,
) -> None:
    await system.fund("master", 100_000)
    await system.fund("alice", 10_000)
    config = make_config(paper_followers({"alice": 0}))
    copier = await system.start_copier(config)
    master = await system.start_master(config)
    buy = await master.trade(trade(base="0.1"))
    copied = (await system.wait_results(buy.signal_id, 1))["alice"].filled_base
    assert copied is not None
    by_hand = (copied / 2).quantize(Decimal("0.00000001"), rounding=ROUND_DOWN)
    await system.paper(
        Place(
            "alice",
            OrderCommand(
                client_order_id="alice-by-hand",
                symbol=BTC,
                side="sell",
                size=by_hand,
                size_type="base",
                reference_price=Decimal(0),
            ),
        )
    )
    for _ in range(2):  # reconciliation clips a discrepancy it saw twice
        await copier.reconciler.reconcile()

    sell = await master.trade(trade(side="sell", base="0.1"))
    exit_result = (await system.wait_results(sell.signal_id, 1))["alice"]
    holding = await (await _ledger(system)).read(holding_key("alice", "master", BTC))

    assert exit_result.filled_base == copied - by_hand
    assert await _held(system, "alice") == 0
    assert (holding.amount, holding.clipped) == (Decimal(0), by_hand)


async def test_fill_published_again_after_a_crash_counts_once(system: System) -> None:
    await system.fund("master", 100_000)
    await system.fund("alice", 10_000)
    config = make_config(paper_followers({"alice": 0}))
    await system.start_copier(config)
    await system.start_master(config)
    await system.watcher.poll()
    await system.paper(
        Place(
            "master",
            OrderCommand(
                client_order_id="master-by-hand",
                symbol=BTC,
                side="buy",
                size=Decimal("0.1"),
                size_type="base",
                reference_price=Decimal(0),
            ),
        )
    )
    first = await system.watcher.poll()
    last = await system.js.get_last_msg(bus.SIGNALS_STREAM, bus.signal_subject("master"))
    signal = msgspec.json.decode(last.data or b"", type=TradeSignal)
    fills = await system.js.key_value(bus.FILLS_BUCKET)
    await fills.delete(published_key(signal.signal_id))  # crashed after the ledger, before this

    again = await system.watcher.poll()
    results = await system.wait_results(signal.signal_id, 1)
    signals = (await system.js.stream_info(bus.SIGNALS_STREAM)).state.messages
    position = await (await _ledger(system)).read(master_key("master", BTC))

    assert (first, again, signals) == (1, 1, 1)
    assert (position.amount, signal.copied_position_before) == (Decimal("0.1"), Decimal(0))
    assert len(results) == 1
    assert len(await system.orders("alice")) == 1


# ---- a follower on Kraken, through the real ccxt client --------------------------------------

KIM_KEY, KIM_SECRET = "fake-key-kim-9Rw3", base64.b64encode(b"fake-secret-kim-Lq8v" * 2).decode()


@pytest.fixture
async def kraken() -> AsyncIterator[KrakenEmulator]:
    emulator = KrakenEmulator()
    await emulator.start()
    register(KIM_KEY, KIM_SECRET)
    yield emulator
    await emulator.stop()


async def test_kraken_follower_sells_exactly_what_it_copied_and_keeps_its_own_bitcoin(
    system: System,
    kraken: KrakenEmulator,
) -> None:
    kim = kraken.state.add_account(KIM_KEY, KIM_SECRET, {"USD": Decimal(10_000), "BTC": Decimal(1)})
    await system.fund("master", 10_000)
    config = make_config([{"id": "kim", "exchange": "kraken", "base_url": kraken.url}])
    await system.start_copier(
        config,
        exchange="kraken",
        instance="copier-kraken",
        secrets={"KRAKEN_USER_KIM_API_KEY": KIM_KEY, "KRAKEN_USER_KIM_API_SECRET": KIM_SECRET},
        ctx=AdapterContext(http_timeout_s=5.0),
    )
    master = await system.start_master(config)

    buy = await master.trade(trade(quote="500"))
    bought = (await system.wait_results(buy.signal_id, 1, timeout=30))["kim"]
    sell = await master.trade(trade(side="sell", base=str(await _held(system, "master"))))
    sold = (await system.wait_results(sell.signal_id, 1, timeout=30))["kim"]

    assert (bought.outcome, sold.outcome) == ("filled", "filled")
    assert bought.filled_base is not None
    assert bought.filled_base > 0
    assert sold.filled_base == bought.filled_base
    assert kim.balances["BTC"] == Decimal(1)


# ---- the ledger itself: random fills against a real nats-server -------------------------------

AMOUNTS = st.integers(min_value=1, max_value=10**9).map(lambda n: Decimal(n).scaleb(-8))
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("buy"), AMOUNTS),
        st.tuples(st.just("sell"), AMOUNTS),
        st.tuples(st.just("again"), st.integers(min_value=0, max_value=50)),  # a redelivery
        st.tuples(st.just("race"), AMOUNTS),  # two writers applying one new fill at once
        st.tuples(st.just("clip"), st.integers(min_value=0, max_value=99)),  # % kept after a sale by hand
    ),
    max_size=14,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_ledger_counts_each_fill_once_and_never_goes_negative(
    nats_server: NatsServer,
    ops: list[tuple[str, object]],
) -> None:
    expected, seen = asyncio.run(_ledger_run(nats_server.url, ops))

    assert seen == expected
    assert all(amount >= 0 for amount, _ in seen)


async def _ledger_run(
    url: str, ops: list[tuple[str, object]]
) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
    """Apply `ops` to a fresh entry and to a model of it; return (model, ledger) after each
    op as (amount, clipped)."""
    nc = await nats.connect(bus.servers(url))
    try:
        ledger = Ledger(await bus.bucket(nc.jetstream(), bus.LEDGER_BUCKET))
        key = master_key(f"m{uuid.uuid4().hex[:12]}", BTC)
        amount = clipped = Decimal(0)
        fills: list[tuple[str, Decimal, Decimal]] = []  # id, delta, amount before it
        expected, seen = [], []
        for kind, value in ops:
            if kind in ("buy", "sell", "race"):
                assert isinstance(value, Decimal)
                delta = -value if kind == "sell" else value
                fill_id = uuid.uuid4().hex
                fills.append((fill_id, delta, amount))
                writes = 2 if kind == "race" else 1
                got = await asyncio.gather(*(ledger.apply(key, fill_id, delta) for _ in range(writes)))
                amount = max(Decimal(0), amount + delta)
                assert set(got) == {(fills[-1][2], amount)}
            elif kind == "again" and fills:
                assert isinstance(value, int)
                fill_id, delta, before = fills[value % len(fills)]
                assert (await ledger.apply(key, fill_id, delta))[0] == before
            elif kind == "clip":
                assert isinstance(value, int)
                real = (amount * value / 100).quantize(Decimal("0.00000001"), rounding=ROUND_DOWN)
                await ledger.clip(key, real)
                clipped, amount = clipped + (amount - real), real
            entry = await ledger.read(key)
            expected.append((amount, clipped))
            seen.append((entry.amount, entry.clipped))
        return expected, seen
    finally:
        await nc.close()
