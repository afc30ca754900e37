"""Alpaca calls of a process go out as many at once as the copier allows (once through the
loop's default executor: 6 threads on two cores), and followers share asset lookups.

The adapter, against the loopback Alpaca emulator.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import pytest_asyncio

from shared.config import AccountConfig, Credentials
from shared.errors import AuthError
from shared.exchange.context import AdapterContext
from shared.exchange.factory import build_account
from shared.exchange.port import ExchangeAccount, OrderAck, OrderCommand
from tests.contract.conftest import recorded_paths
from tests.emulators.alpaca import AlpacaEmulator
from tests.secrets_scan import register

SECRET = "ctalpsecret9Wq4"
ACCOUNTS = 40
LATENCY_S = 0.05  # every reply waits: requests overlap as they would at the real venue
register(SECRET)


class Recorded(AlpacaEmulator):
    """The emulator, with the paths it answered."""

    def __init__(self) -> None:
        super().__init__()
        self.paths = recorded_paths(self)


@pytest_asyncio.fixture
async def emulator() -> AsyncIterator[Recorded]:
    emulator = Recorded()
    emulator.state.latency_s = LATENCY_S
    for i in range(ACCOUNTS):
        emulator.state.add_account(f"key-{i}", SECRET, {"USD": Decimal(10_000)})
    async with emulator:
        yield emulator


@pytest_asyncio.fixture
async def ctx() -> AsyncIterator[AdapterContext]:
    ctx = AdapterContext(http_timeout_s=5, alpaca_connections=ACCOUNTS)  # a copier of concurrency 40
    yield ctx
    await ctx.close()


def accounts(emulator: AlpacaEmulator, ctx: AdapterContext, count: int) -> list[ExchangeAccount]:
    return [
        build_account(
            AccountConfig(id=f"f{i}", exchange="alpaca", base_url=emulator.url),
            Credentials(f"key-{i}", SECRET),
            ctx,
        )
        for i in range(count)
    ]


def buy(symbol: str, quote: str = "10") -> OrderCommand:
    return OrderCommand(
        client_order_id=uuid.uuid4().hex,
        symbol=symbol,
        side="buy",
        size=Decimal(quote),
        size_type="quote",
        reference_price=Decimal(45_000),
    )


async def test_forty_accounts_placing_at_once_have_more_than_six_requests_in_flight(
    emulator: AlpacaEmulator,
    ctx: AdapterContext,
) -> None:
    followers = accounts(emulator, ctx, ACCOUNTS)

    acks = await asyncio.gather(*(f.place_order(buy("BTC/USD")) for f in followers))

    assert {ack.status for ack in acks} == {"filled"}
    assert emulator.max_in_flight > 6


@pytest.mark.parametrize(
    ("symbol", "lookups"),
    [
        ("AAPL/USD", {"/v2/assets/AAPL/USD": 1, "/v2/assets/AAPL": 1}),  # a stock: pair, then base
        ("BTC/USD", {"/v2/assets/BTC/USD": 1}),
    ],
)
async def test_first_orders_of_many_followers_look_the_asset_up_once_per_kind(
    emulator: Recorded,
    ctx: AdapterContext,
    symbol: str,
    lookups: dict[str, int],
) -> None:
    followers = accounts(emulator, ctx, 20)

    acks = await asyncio.gather(*(f.place_order(buy(symbol, "200")) for f in followers))

    asset_paths = [p for p in emulator.paths if p.startswith("/v2/assets/")]
    assert {ack.status for ack in acks} == {"filled"}
    assert {p: asset_paths.count(p) for p in asset_paths} == lookups


async def test_bad_keys_starting_the_shared_asset_lookup_fail_only_their_own_order(
    emulator: AlpacaEmulator,
    ctx: AdapterContext,
) -> None:
    revoked = build_account(
        AccountConfig(id="revoked", exchange="alpaca", base_url=emulator.url),
        Credentials("revoked-key", SECRET),
        ctx,
    )
    followers = accounts(emulator, ctx, 10)

    results = await asyncio.gather(
        *(f.place_order(buy("BTC/USD")) for f in [revoked, *followers]), return_exceptions=True
    )

    assert isinstance(results[0], AuthError)
    assert all(isinstance(r, OrderAck) and r.status == "filled" for r in results[1:])
