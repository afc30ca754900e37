"""Real exchange clients end to end through NATS: a master on Coinbase, followers on Kraken and
on Alpaca (paper), every venue a loopback emulator speaking its own REST format."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from shared import bus
from shared.exchange.context import AdapterContext
from shared.messages import CopyResult
from tests.emulators.alpaca import AlpacaEmulator
from tests.emulators.coinbase import CoinbaseEmulator
from tests.emulators.kraken import KrakenEmulator
from tests.emulators.state import Fault
from tests.harness import System, make_config, trade
from tests.secrets_scan import register

KRAKEN_FOLLOWERS = {"alice": 1_000, "bob": 5_000, "carol": 50_000, "dave": 100}


def _key(name: str) -> str:
    return f"fake-key-{name}-7Hq2"


def _secret(name: str, venue: str) -> str:
    raw = f"fake-secret-{name}-Zp4w"
    return base64.b64encode(raw.encode() * 2).decode() if venue == "kraken" else raw


@dataclass
class Venues:
    coinbase: CoinbaseEmulator
    kraken: KrakenEmulator
    alpaca: AlpacaEmulator
    secrets: dict[str, str]

    def config(self, kraken: dict[str, int] | None = None, **follower: Any) -> Any:
        followers = [
            {"id": f, "exchange": "kraken", "base_url": self.kraken.url, **follower}
            for f in (kraken or KRAKEN_FOLLOWERS)
        ]
        followers.append({"id": "erin", "exchange": "alpaca", "base_url": self.alpaca.url})
        master = {"id": "master", "exchange": "coinbase", "base_url": self.coinbase.url}
        return make_config(followers, master)

    def orders(self, venue: str, follower: str) -> list[Any]:
        emulator = {"kraken": self.kraken, "alpaca": self.alpaca, "coinbase": self.coinbase}[venue]
        return list(emulator.state.accounts[_key(follower)].orders)


@pytest.fixture
async def venues(system: System) -> AsyncIterator[Venues]:
    coinbase, kraken, alpaca = CoinbaseEmulator(), KrakenEmulator(), AlpacaEmulator()
    alpaca.fill_on_submit_reply = False  # as real Alpaca: pending_new, the fill read back
    secrets: dict[str, str] = {}
    for emulator, venue, role, accounts in (
        (coinbase, "coinbase", "MASTER", {"master": 10_000}),
        (kraken, "kraken", "USER", KRAKEN_FOLLOWERS),
        (alpaca, "alpaca", "USER", {"erin": 1_000}),
    ):
        await emulator.start()
        for name, cash in accounts.items():
            emulator.state.add_account(_key(name), _secret(name, venue), {"USD": Decimal(cash)})
            stem = f"{venue.upper()}_MASTER" if role == "MASTER" else f"{venue.upper()}_USER_{name.upper()}"
            secrets |= {f"{stem}_API_KEY": _key(name), f"{stem}_API_SECRET": _secret(name, venue)}
    register(*secrets.values())
    yield Venues(coinbase, kraken, alpaca, secrets)
    for emulator in (coinbase, kraken, alpaca):
        await emulator.stop()


def loopback(http_timeout_s: float = 5.0) -> AdapterContext:
    """Clients as in production, each follower with its own rate limiter."""
    return AdapterContext(http_timeout_s=http_timeout_s)


async def _start(system: System, venues: Venues, config: Any, **copier: Any) -> Any:
    for group in ("kraken", "alpaca"):
        await system.start_copier(
            config,
            exchange=group,
            secrets=venues.secrets,
            instance=f"copier-{group}",
            ctx=copier.pop("ctx", loopback()),
            **copier,
        )
    return await system.start_master(config, secrets=venues.secrets)


def _notionals(results: dict[str, CopyResult]) -> dict[str, Decimal | None]:
    return {f: r.notional for f, r in results.items() if r.outcome == "filled"}


async def test_guide_sizes_reach_kraken_and_alpaca_exactly_once(system: System, venues: Venues) -> None:
    master = await _start(system, venues, venues.config())

    first = await master.trade(trade(quote="500"))
    first_results = await system.wait_results(first.signal_id, 5)
    second = await master.trade(trade(quote="20"))
    second_results = await system.wait_results(second.signal_id, 5)

    assert first.ok
    assert len(venues.coinbase.state.accounts[_key("master")].orders) == 2
    assert _notionals(first_results) == {
        "alice": Decimal("50.00"),
        "bob": Decimal("250.00"),
        "carol": Decimal("2500.00"),
        "dave": Decimal("5.00"),
        "erin": Decimal("50.00"),
    }
    assert _notionals(second_results) == {
        "alice": Decimal("2.00"),
        "bob": Decimal("10.00"),
        "carol": Decimal("100.00"),
        "erin": Decimal("2.00"),
    }
    assert second_results["dave"].reason == "Position too small: $0.20 < $1.00 minimum"
    assert {f: len(venues.orders("kraken", f)) for f in KRAKEN_FOLLOWERS} == {
        "alice": 2,
        "bob": 2,
        "carol": 2,
        "dave": 1,
    }
    assert len(venues.orders("alpaca", "erin")) == 2


async def test_timeout_after_accept_leaves_exactly_one_order(system: System, venues: Venues) -> None:
    venues.kraken.state.timeout_hold_s = 1.5
    venues.kraken.state.accounts[_key("alice")].faults.append(Fault.TIMEOUT_AFTER_ACCEPT)
    master = await _start(
        system, venues, venues.config(), order_timeout_s=0.6, ctx=loopback(http_timeout_s=0.5)
    )

    reply = await master.trade(trade(quote="500"))
    results = await system.wait_results(reply.signal_id, 5)

    assert results["alice"].outcome == "filled"
    assert len(venues.orders("kraken", "alice")) == 1


async def test_bad_key_and_rate_limit_do_not_hold_up_the_others(system: System, venues: Venues) -> None:
    venues.secrets["KRAKEN_USER_BOB_API_SECRET"] = base64.b64encode(b"revoked-secret!!").decode()
    venues.kraken.state.accounts[_key("carol")].faults.extend([Fault.RATE_LIMIT] * 8)
    master = await _start(system, venues, venues.config())

    reply = await master.trade(trade(quote="500"))
    results = await system.wait_results(reply.signal_id, 5)

    assert {f: r.outcome for f, r in results.items()} == {
        "alice": "filled",
        "bob": "failed",
        "carol": "failed",
        "dave": "filled",
        "erin": "filled",
    }
    assert (results["bob"].reason_code, results["carol"].reason_code) == ("auth_error", "rate_limited")


async def test_fill_made_on_the_coinbase_website_is_copied_once(system: System, venues: Venues) -> None:
    await _start(system, venues, venues.config())
    await system.watcher.poll()  # the cursor starts now
    account = venues.coinbase.state.accounts[_key("master")]

    venues.coinbase.state.fill(account, "BTC/USD", "buy", cost=Decimal(500), client_order_id="web")
    published = await system.watcher.poll()
    await system.start_master(venues.config(), secrets=venues.secrets)  # a restarted master
    after_restart = await system.watcher.poll()

    signals = (await system.js.stream_info(bus.SIGNALS_STREAM)).state.messages
    assert (published, after_restart, signals) == (1, 0, 1)


async def test_kraken_limit_mode_fills_within_tolerance_and_expires_when_kraken_ran(
    system: System,
    venues: Venues,
) -> None:
    followers = {"alice": 1_000, "bob": 5_000}
    guard = {"max_price_deviation_pct": "1", "slippage_action": "limit"}
    master = await _start(system, venues, venues.config(followers, risk=guard))

    first = await master.trade(trade(quote="500"))  # $45,000 on Coinbase: limit $45,450
    first_results = await system.wait_results(first.signal_id, 3)
    venues.kraken.state.prices["BTC/USD"] = Decimal("46000")  # Kraken ran 2.2% ahead
    second = await master.trade(trade(quote="500"))
    second_results = await system.wait_results(second.signal_id, 3)

    kraken = [(o.order_type, o.limit_price, o.status) for f in followers for o in venues.orders("kraken", f)]
    assert kraken == [("limit", Decimal("45450.0"), "filled"), ("limit", Decimal("45450.0"), "canceled")] * 2
    assert {f: first_results[f].outcome for f in followers} == {"alice": "filled", "bob": "filled"}
    assert {f: second_results[f].reason_code for f in followers} == {
        "alice": "limit_not_filled",
        "bob": "limit_not_filled",
    }
    assert second_results["erin"].outcome == "filled"  # no guard: a market order
