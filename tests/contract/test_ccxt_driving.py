"""How copytrade drives ccxt for many followers of one venue: what is shared, what each follower
owns, and which requests an order costs (real ccxt, the Kraken emulator on loopback).

A copier serves a thousand followers of a venue from one process: every request and every
object per follower is paid a thousand times a signal (scripts/bench_exchanges.py prints it).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from aiohttp import web

from shared.config import AccountConfig, Credentials
from shared.exchange.ccxt_adapter import CcxtAccount
from shared.exchange.context import AdapterContext
from shared.exchange.factory import build_account
from shared.exchange.port import OrderCommand
from tests.contract.conftest import EMULATED, HTTP_TIMEOUT_S
from tests.emulators.kraken import KrakenEmulator

SECRET = EMULATED["kraken"].secret
MARKET_PATHS = {"/0/public/Assets", "/0/public/AssetPairs"}


@dataclass
class Endpoint:
    """A Kraken emulator and what it answered: request paths, and the client port of each."""

    emulator: KrakenEmulator
    paths: list[str] = field(default_factory=list)
    ports: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return self.emulator.url

    def market_loads(self) -> int:
        return sum(p in MARKET_PATHS for p in self.paths)


@dataclass
class Venue:
    ctx: AdapterContext
    endpoints: list[Endpoint]
    built: list[CcxtAccount] = field(default_factory=list)

    def follower(self, n: int, endpoint: int = 0) -> CcxtAccount:
        key = f"key-{endpoint}-{n}"
        target = self.endpoints[endpoint]
        target.emulator.state.add_account(key, SECRET, {"USD": Decimal(10000)})
        account = build_account(
            AccountConfig(id=f"f{endpoint}-{n}", exchange="kraken", base_url=target.url),
            Credentials(key, SECRET),
            self.ctx,
        )
        assert isinstance(account, CcxtAccount)
        self.built.append(account)
        return account


def _recorder(endpoint: Endpoint) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def record(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        endpoint.paths.append(request.path)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            endpoint.ports.add(peer[1])
        return await handler(request)

    return record


@pytest.fixture
async def venue() -> AsyncIterator[Venue]:
    endpoints = [Endpoint(KrakenEmulator()), Endpoint(KrakenEmulator())]
    for endpoint in endpoints:
        endpoint.emulator.app.middlewares.append(_recorder(endpoint))
        await endpoint.emulator.start()
    handle = Venue(AdapterContext(http_timeout_s=HTTP_TIMEOUT_S * 10, rate_limit=True), endpoints)
    try:
        yield handle
    finally:
        for account in handle.built:
            await account.close()
        await handle.ctx.close()
        for endpoint in endpoints:
            await endpoint.emulator.stop()


def buy() -> OrderCommand:
    return OrderCommand(
        client_order_id=uuid.uuid4().hex,
        symbol="BTC/USD",
        side="buy",
        size=Decimal(10),
        size_type="quote",
        reference_price=Decimal(45000),
    )


async def test_placing_an_order_sends_the_order_and_one_fill_read(venue: Venue) -> None:
    account = venue.follower(1)
    await account.connect()
    before = len(venue.endpoints[0].paths)

    ack = await account.place_order(buy())

    assert ack.status == "filled"
    # no balance read, no market load, no lookup: the order, then its fill
    assert venue.endpoints[0].paths[before:] == ["/0/private/AddOrder", "/0/private/QueryOrders"]


async def test_many_followers_load_markets_once_per_endpoint(venue: Venue) -> None:
    accounts = [venue.follower(n, endpoint) for endpoint in (0, 1) for n in range(5)]

    acks = await asyncio.gather(*(a.place_order(buy()) for a in accounts))

    assert [ack.status for ack in acks] == ["filled"] * 10
    assert [e.market_loads() for e in venue.endpoints] == [2, 2]  # Assets + AssetPairs, once


async def test_followers_of_one_endpoint_share_one_session_and_its_connections(venue: Venue) -> None:
    first, second, elsewhere = venue.follower(1), venue.follower(2), venue.follower(3, 1)
    await first.place_order(buy())
    ports = set(venue.endpoints[0].ports)

    await second.place_order(buy())  # after the first's requests: its idle connection is reused
    await elsewhere.connect()

    assert first.http_session is second.http_session
    assert elsewhere.http_session is not first.http_session  # another endpoint, its own
    assert venue.endpoints[0].ports == ports


async def test_each_follower_trades_with_its_own_key(venue: Venue) -> None:
    accounts = [venue.follower(n) for n in range(4)]

    await asyncio.gather(*(a.place_order(buy()) for a in accounts))
    await asyncio.gather(*(a.place_order(buy()) for a in accounts[:2]))

    state = venue.endpoints[0].emulator.state
    assert [len(state.accounts[f"key-0-{n}"].orders) for n in range(4)] == [2, 2, 1, 1]
    assert [a.rate_limit_waits for a in accounts] == [0, 0, 0, 0]


async def test_follower_clients_share_the_venue_description_but_not_their_state(venue: Venue) -> None:
    first, second = venue.follower(1), venue.follower(2)
    await asyncio.gather(first.connect(), second.connect())
    a, b = first._ex, second._ex  # the ccxt instances: copies of the share's one prototype

    assert a.api is b.api
    assert a.has is b.has
    assert a.markets is b.markets
    assert a.options is not b.options
    assert a.headers is not b.headers
    assert a.throttler is not b.throttler
    assert (a.apiKey, b.apiKey) == ("key-0-1", "key-0-2")


async def test_closing_one_follower_leaves_the_others_trading(venue: Venue) -> None:
    first, second = venue.follower(1), venue.follower(2)
    await asyncio.gather(first.place_order(buy()), second.place_order(buy()))

    await first.close()
    ack = await second.place_order(buy())
    reopened = await first.place_order(buy())

    assert (ack.status, reopened.status) == ("filled", "filled")
    assert first.http_session is second.http_session
    assert not second.http_session.closed
