"""Every master fill is copied: a resting limit order that fills in parts gives one signal per
part, and a master restart between parts neither misses nor repeats one (issue 13)."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import msgspec
import pytest

from shared import bus
from shared.config import AccountConfig, Credentials
from shared.exchange.context import AdapterContext
from shared.exchange.factory import build_account
from shared.exchange.paper import FillPart, Ok, PlaceResting
from shared.exchange.port import OrderCommand
from shared.ledger import Ledger, master_key
from shared.messages import CopyResult, TradeSignal
from tests.emulators.alpaca import AlpacaEmulator
from tests.emulators.binance import BinanceEmulator
from tests.emulators.coinbase import CoinbaseEmulator
from tests.emulators.kraken import KrakenEmulator
from tests.emulators.okx import OkxEmulator
from tests.emulators.server import EmulatorServer
from tests.harness import System, make_config, paper_followers
from tests.secrets_scan import register

BTC = "BTC/USD"
PRICE = Decimal(45_000)  # the paper and emulator feed price: equities stay put as parts fill
PARTS = (Decimal("0.3"), Decimal("0.4"), Decimal("0.3"))
# a tenth and a fortieth of the master's $100,000
FOLLOWERS: dict[str, int | str] = {"alice": 10_000, "bob": 2_500}
MASTER_KEY = "fake-key-master-4Tz8"
MASTER_SECRET = base64.b64encode(b"fake-secret-master-Hy6m" * 2).decode()


async def _signals(system: System) -> list[TradeSignal]:
    info = await system.js.stream_info(bus.SIGNALS_STREAM)
    if info.state.messages == 0:
        return []
    return [
        msgspec.json.decode((await system.js.get_msg(bus.SIGNALS_STREAM, seq)).data or b"", type=TradeSignal)
        for seq in range(info.state.first_seq, info.state.last_seq + 1)
    ]


def _totals(results: list[dict[str, CopyResult]]) -> dict[str, Decimal]:
    return {f: sum((r[f].filled_base or Decimal(0) for r in results), Decimal(0)) for f in FOLLOWERS}


async def _start(
    system: System, master: dict[str, str] | None = None, secrets: dict[str, str] | None = None
) -> None:
    for follower, cash in FOLLOWERS.items():
        await system.fund(follower, cash)
    config = make_config(paper_followers(FOLLOWERS), master)
    await system.start_copier(config)
    await system.start_master(config, secrets=secrets)
    await system.watcher.poll()  # first start: the cursor begins now


async def test_paper_limit_order_filled_in_three_parts_is_copied_part_by_part(
    system: System,
) -> None:
    await system.fund("master", 100_000)
    await _start(system)
    placed = await system.paper(
        PlaceResting(
            "master",
            OrderCommand(
                client_order_id="web-limit-1",
                symbol=BTC,
                side="buy",
                size=Decimal(1),
                size_type="base",
                reference_price=Decimal(0),
                limit_price=PRICE,
            ),
        )
    )
    assert isinstance(placed, Ok)
    assert placed.order is not None
    order_id = placed.order.order_id

    polls = []
    for part, restart in zip(PARTS, (False, True, False), strict=True):
        await system.paper(FillPart("master", order_id, part, PRICE))
        if restart:  # a new master service and fill watcher over the same buckets
            await system.start_master(make_config(paper_followers(FOLLOWERS)))
        polls.append(await system.watcher.poll())
    polls.append(await system.watcher.poll())
    signals = await _signals(system)
    results = [await system.wait_results(s.signal_id, len(FOLLOWERS)) for s in signals]
    ledger = Ledger(await system.js.key_value(bus.LEDGER_BUCKET))

    assert polls == [1, 1, 1, 0]
    assert [(s.order_id, s.filled_base, s.copied_position_before) for s in signals] == [
        (order_id, PARTS[0], 0),
        (order_id, PARTS[1], PARTS[0]),
        (order_id, PARTS[2], PARTS[0] + PARTS[1]),
    ]
    assert len({s.fill_id for s in signals} - {""}) == 3
    assert [results[i]["alice"].filled_base for i in range(3)] == [p / 10 for p in PARTS]
    assert _totals(results) == {"alice": Decimal("0.1"), "bob": Decimal("0.025")}
    assert (await ledger.read(master_key("master", BTC))).amount == 1


# ---- a master on Kraken, through the real ccxt client ----------------------------------------


@pytest.fixture
async def kraken() -> AsyncIterator[KrakenEmulator]:
    emulator = KrakenEmulator()
    await emulator.start()
    register(MASTER_KEY, MASTER_SECRET)
    yield emulator
    await emulator.stop()


async def test_kraken_master_limit_order_filled_in_three_parts_is_copied_part_by_part(
    system: System,
    kraken: KrakenEmulator,
) -> None:
    account = kraken.state.add_account(MASTER_KEY, MASTER_SECRET, {"USD": Decimal(100_000)})
    master = {"id": "master", "exchange": "kraken", "base_url": kraken.url}
    secrets = {"KRAKEN_MASTER_API_KEY": MASTER_KEY, "KRAKEN_MASTER_API_SECRET": MASTER_SECRET}
    await _start(system, master, secrets)
    order_id = "OWEBLM-PARTS-000001"  # a limit order resting on Kraken, placed on its site

    polls = []
    for part, restart in zip(PARTS, (False, True, False), strict=True):
        kraken.state.fill_part(account, order_id, BTC, "buy", part, price=PRICE)
        if restart:
            await system.start_master(make_config(paper_followers(FOLLOWERS), master), secrets)
        polls.append(await system.watcher.poll())
    polls.append(await system.watcher.poll())
    signals = await _signals(system)
    results = [await system.wait_results(s.signal_id, len(FOLLOWERS)) for s in signals]

    assert polls == [1, 1, 1, 0]
    assert [(s.order_id, s.filled_base, s.copied_position_before) for s in signals] == [
        (order_id, PARTS[0], 0),
        (order_id, PARTS[1], PARTS[0]),
        (order_id, PARTS[2], PARTS[0] + PARTS[1]),
    ]
    assert _totals(results) == {"alice": Decimal("0.1"), "bob": Decimal("0.025")}


# ---- every venue's fills endpoint, through its real client ------------------------------------

EMULATORS: dict[str, type[EmulatorServer]] = {
    "kraken": KrakenEmulator,
    "coinbase": CoinbaseEmulator,
    "binance": BinanceEmulator,
    "okx": OkxEmulator,
    "alpaca": AlpacaEmulator,
}


@pytest.mark.parametrize("venue", list(EMULATORS))
async def test_order_filled_in_three_parts_reads_as_three_fills_on_every_venue(venue: str) -> None:
    secret = MASTER_SECRET if venue == "kraken" else "fake-secret-master-Hy6m"
    passphrase = "fake-pass-master-2Kd9" if venue == "okx" else None
    register(secret, *filter(None, [passphrase]))
    ctx = AdapterContext(http_timeout_s=5.0, rate_limit=False)
    async with EMULATORS[venue]() as emulator:
        holder = emulator.state.add_account(
            MASTER_KEY, secret, {"USD": Decimal(100_000)}, passphrase=passphrase
        )
        account = build_account(
            AccountConfig(
                id="master",
                exchange=venue,  # type: ignore[arg-type]
                base_url=emulator.url,
            ),
            Credentials(MASTER_KEY, secret, passphrase),
            ctx,
        )
        before = time.time() - 1
        for part in PARTS:
            emulator.state.fill_part(holder, "7001", BTC, "buy", part, price=PRICE)
        try:
            fills = await account.fills_since(before)
        finally:
            await account.close()
            await ctx.close()

    # parts booked within one millisecond may come back in any order
    assert sorted((f.amount, f.price, f.side, f.symbol) for f in fills) == sorted(
        (part, PRICE, "buy", BTC) for part in PARTS
    )
    assert len({f.order_id for f in fills}) == 1
