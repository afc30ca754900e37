"""Each ccxt follower's own rate limiter holds the venue's burst (`shared.exchange.throttle`).

ccxt's limiter holds one call's worth and forgets idle time: a Kraken copy waited seven seconds
on it. With the venue's burst, a copy's reads and its order go out at once, and calls beyond the
burst still wait. Prices are public and limited per IP: the followers of a venue in one process
read them once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from decimal import Decimal

import pytest

from shared.config import AccountConfig, Credentials
from shared.exchange.ccxt_adapter import CcxtAccount
from shared.exchange.context import AdapterContext
from shared.exchange.factory import build_account
from shared.exchange.port import OrderCommand
from shared.exchange.throttle import BurstThrottle
from shared.exchange.venues import VENUES, CcxtVenue, IpBudget
from tests.contract.conftest import EMULATED, HTTP_TIMEOUT_S, KEY, recorded_paths
from tests.harness import eventually

MANY_TIMEOUT_S = 10  # tens of accounts at once share the loop with their emulator: no timeouts
ACCOUNT_READ_UNITS = 4  # Binance /api/v3/account: weight 20, ccxt cost 4
# the venue call that reads an account's balances
BALANCE_PATH = {
    "kraken": "/0/private/BalanceEx",
    "coinbase": "/api/v3/brokerage/accounts",
    "binance": "/api/v3/account",
    "okx": "/api/v5/account/balance",
}


@dataclass
class Limited:
    """A follower with rate limiting on, as in production, and the paths its venue answered."""

    venue: str
    account: CcxtAccount
    paths: list[str] = field(default_factory=list)


@pytest.fixture(params=list(BALANCE_PATH))
async def limited(request: pytest.FixtureRequest) -> AsyncIterator[Limited]:
    spec = EMULATED[request.param]
    emulator = spec.emulator()
    emulator.state.add_account(
        KEY, spec.secret, {"USD": Decimal(10000), "BTC": Decimal(1)}, passphrase=spec.passphrase
    )
    paths = recorded_paths(emulator)
    ctx = AdapterContext(http_timeout_s=HTTP_TIMEOUT_S, rate_limit=True)
    async with emulator:
        account = build_account(
            AccountConfig(id="limited", exchange=request.param, base_url=emulator.url),
            Credentials(KEY, spec.secret, spec.passphrase),
            ctx,
        )
        assert isinstance(account, CcxtAccount)
        try:
            yield Limited(request.param, account, paths)
        finally:
            await account.close()
            await ctx.close()


def buy() -> OrderCommand:
    return OrderCommand(
        client_order_id=uuid.uuid4().hex,
        symbol="BTC/USD",
        side="buy",
        size=Decimal("0.001"),
        size_type="base",
        reference_price=Decimal(45000),
    )


async def test_copies_go_out_within_the_followers_burst(limited: Limited) -> None:
    account = limited.account
    await account.connect()

    # a copy as the copier makes it: sizing reads, the order and its fill read; the next copy
    # sizes on the figures kept from the first
    await account.snapshot()
    await account.position("BTC/USD")
    acks = [await account.place_order(buy()), await account.place_order(buy())]

    assert [ack.status for ack in acks] == ["filled", "filled"]
    assert account.rate_limit_waits == 0


async def test_sizing_reads_the_balance_once_and_again_after_an_order(limited: Limited) -> None:
    account = limited.account

    await account.snapshot()
    before_order = await account.position("BTC/USD")
    await account.place_order(buy())
    after_order = await account.position("BTC/USD")

    assert limited.paths.count(BALANCE_PATH[limited.venue]) == 2
    assert after_order == before_order + Decimal("0.001")


async def test_calls_beyond_the_burst_wait_and_a_free_call_never_does() -> None:
    throttle = BurstThrottle(rate_limit_ms=1000, burst=3)  # one unit a second, three held

    await throttle(3)  # the burst: at once
    await throttle(0)  # Kraken's AddOrder costs nothing on the REST counter
    waits_within_burst = throttle.waits
    beyond = asyncio.ensure_future(throttle(1))  # the bucket is full: about a second
    await beyond

    assert (waits_within_burst, throttle.waits) == (0, 1)


async def test_a_cost_above_the_burst_is_capped_to_it() -> None:
    throttle = BurstThrottle(rate_limit_ms=1, burst=2)

    await throttle(5)

    assert throttle.waits == 0


@pytest.mark.parametrize("venue", list(BALANCE_PATH))
async def test_followers_of_a_venue_share_one_price_read(venue: str) -> None:
    spec = EMULATED[venue]
    emulator = spec.emulator()
    paths = recorded_paths(emulator)
    ctx = AdapterContext(http_timeout_s=MANY_TIMEOUT_S, rate_limit=True)
    followers = []
    async with emulator:
        for i in range(20):
            emulator.state.add_account(
                f"{KEY}-{i}",
                spec.secret,
                {"USD": Decimal(1000), "BTC": Decimal(i + 1)},
                passphrase=spec.passphrase,
            )
            followers.append(
                build_account(
                    AccountConfig(id=f"f{i}", exchange=venue, base_url=emulator.url),  # type: ignore[arg-type]
                    Credentials(f"{KEY}-{i}", spec.secret, spec.passphrase),
                    ctx,
                )
            )
        try:
            # every follower's snapshot expires at once: each values its BTC at the venue's price
            snapshots = await asyncio.gather(*(f.snapshot() for f in followers))
            guard_price = await followers[0].price("BTC/USD")  # the slippage guard's read
        finally:
            for f in followers:
                await f.close()
            await ctx.close()

    price = emulator.state.prices["BTC/USD"]
    price_reads = [p for p in paths if p != BALANCE_PATH[venue] and not spec.market_loading(p)]
    assert [s.equity for s in snapshots] == [1000 + (i + 1) * price for i in range(20)]
    assert guard_price == price
    assert len(price_reads) == 1


async def test_binance_followers_of_a_process_wait_on_one_ip_weight_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = EMULATED["binance"]
    # the market load (exchangeInfo, weight 20) and two account reads fill the IP's burst, and it
    # refills a unit an hour: no timing in the test
    burst = 3 * ACCOUNT_READ_UNITS
    budget = IpBudget(units=burst + 1, window_s=3600, burst=burst)
    monkeypatch.setitem(VENUES, "binance", replace(VENUES["binance"], per_ip=budget))
    emulator = spec.emulator()
    ctx = AdapterContext(http_timeout_s=MANY_TIMEOUT_S, rate_limit=True)
    followers = []
    async with emulator:
        for i in range(3):
            emulator.state.add_account(f"{KEY}-{i}", spec.secret, {"USD": Decimal(1000)})
            account = build_account(
                AccountConfig(id=f"b{i}", exchange="binance", base_url=emulator.url),
                Credentials(f"{KEY}-{i}", spec.secret),
                ctx,
            )
            assert isinstance(account, CcxtAccount)
            followers.append(account)
        try:
            await asyncio.gather(*(f.connect() for f in followers))
            snapshots = [await f.snapshot() for f in followers[:2]]
            third = asyncio.ensure_future(followers[2].snapshot())
            await eventually(lambda: followers[2].ip_limit_waits == 1, timeout=5)
            third.cancel()
        finally:
            for f in followers:
                await f.close()
            await ctx.close()

    assert all(s.cash == 1000 for s in snapshots)
    assert [f.rate_limit_waits for f in followers] == [0, 0, 0]  # each within its own burst
    assert followers[0].ip_limit_waits == 1  # the third waits on the IP's, the others used


@pytest.mark.parametrize("venue", [v for v in VENUES.values() if v.per_ip is not None], ids=lambda v: v.name)
def test_a_per_ip_budget_never_exceeds_the_venue_limit_in_any_window(venue: CcxtVenue) -> None:
    budget = venue.per_ip
    assert budget is not None

    refilled = budget.window_s * 1000 / budget.rate_limit_ms

    assert budget.burst + refilled <= budget.units
