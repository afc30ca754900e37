"""The exchange port's contract, run against every adapter: paper, Kraken, Coinbase, Binance,
OKX and Alpaca (the last five on their loopback emulators, through the real vendor clients).

Every venue starts with 10,000 USD and 1 BTC at 45,000 USD/BTC.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable
from decimal import Decimal

import msgspec
import pytest

from shared.errors import (
    AuthError,
    BelowMinimum,
    ExchangeError,
    InsufficientFunds,
    InvalidOrder,
    RateLimited,
    TemporaryError,
)
from shared.exchange.placing import place_idempotently
from shared.exchange.port import (
    RESTING_KINDS,
    ExchangeAccount,
    NotNative,
    OrderAck,
    OrderCommand,
    Trigger,
    amended_client_id,
    kind_of,
)
from shared.messages import Side, SizeType
from tests.contract.conftest import HTTP_TIMEOUT_S, VenueUnderTest

PRICE = Decimal("45000")
NS = uuid.UUID("0b7c6a52-1d7e-4c8e-9a51-2f1d3c0e9b44")


def client_id(label: str) -> str:
    """A 32-hex client order id, accepted by every venue (as copytrade derives them)."""
    return uuid.uuid5(NS, label).hex


def market(
    side: Side, size: str, size_type: SizeType = "base", label: str = "", symbol: str = "BTC/USD"
) -> OrderCommand:
    return OrderCommand(
        client_order_id=client_id(label or f"{side}-{size}-{size_type}-{symbol}"),
        symbol=symbol,
        side=side,
        size=Decimal(size),
        size_type=size_type,
        reference_price=PRICE,
    )


def limit(side: Side, size: str, price: str, label: str = "") -> OrderCommand:
    """An immediate-or-cancel limit order for BTC/USD (the venue's price is 45,000)."""
    return OrderCommand(
        client_order_id=client_id(label or f"limit-{side}-{size}-{price}"),
        symbol="BTC/USD",
        side=side,
        size=Decimal(size),
        size_type="base",
        reference_price=PRICE,
        limit_price=Decimal(price),
    )


async def raised(call: Awaitable[object]) -> ExchangeError:
    with pytest.raises(ExchangeError) as info:
        await call
    return info.value


# --- account state ----------------------------------------------------------------------------


async def test_snapshot_values_holdings_at_market_price(venue: VenueUnderTest) -> None:
    snapshot = await venue.account.snapshot()

    assert (snapshot.cash, snapshot.equity) == (Decimal("10000"), Decimal("55000"))


async def test_position_of_held_symbol_is_its_balance(venue: VenueUnderTest) -> None:
    assert await venue.account.position("BTC/USD") == Decimal(1)


async def test_position_of_unheld_symbol_is_zero(venue: VenueUnderTest) -> None:
    assert await venue.account.position("ETH/USD") == Decimal(0)


async def test_market_rules_give_step_and_minimums(venue: VenueUnderTest) -> None:
    rules = await venue.account.market_rules("BTC/USD")

    assert rules == venue.rules


async def test_market_rules_of_unlisted_symbol_are_none(venue: VenueUnderTest) -> None:
    assert await venue.account.market_rules("DOGE/USD") is None


# --- orders -----------------------------------------------------------------------------------


async def test_quote_sized_buy_spends_about_the_quote_amount(venue: VenueUnderTest) -> None:
    ack = await venue.account.place_order(market("buy", "90", "quote"))
    position = await venue.account.position("BTC/USD")

    assert ack.status == "filled"
    assert ack.filled_base is not None
    assert ack.avg_price is not None
    assert Decimal("89.99") <= ack.filled_base * ack.avg_price <= Decimal("90")
    assert ack.avg_price == PRICE
    assert position == Decimal(1) + ack.filled_base


async def test_quote_sized_buy_of_every_listed_symbol_fills(venue: VenueUnderTest) -> None:
    results = []
    for symbol in venue.listed:
        ack = await venue.account.place_order(market("buy", "30", "quote", symbol=symbol))
        results.append((ack.status, ack.avg_price, await venue.account.position(symbol) > 0))

    assert results == [("filled", price, True) for price in venue.listed.values()]


async def test_base_sized_buy_fills_the_amount(venue: VenueUnderTest) -> None:
    ack = await venue.account.place_order(market("buy", "0.001"))
    position = await venue.account.position("BTC/USD")

    assert (ack.status, ack.filled_base, ack.avg_price) == ("filled", Decimal("0.001"), PRICE)
    assert position == Decimal("1.001")


async def test_placed_order_carries_its_acceptance_time_and_a_found_one_none(
    venue: VenueUnderTest,
) -> None:
    before = time.time()
    placed = await venue.account.place_order(market("buy", "0.001", label="accepted"))
    found = await venue.account.find_order(placed.client_order_id, "BTC/USD")

    assert placed.accepted_at is not None
    assert before <= placed.accepted_at <= time.time()
    assert found is not None
    assert found.accepted_at is None


async def test_base_sized_sell_fills_and_credits_cash(venue: VenueUnderTest) -> None:
    ack = await venue.account.place_order(market("sell", "0.01"))
    snapshot = await venue.account.snapshot()
    position = await venue.account.position("BTC/USD")

    assert (ack.status, ack.filled_base, ack.avg_price) == ("filled", Decimal("0.01"), PRICE)
    assert (snapshot.cash, position) == (Decimal("10450"), Decimal("0.99"))


async def test_find_order_returns_the_placed_order(venue: VenueUnderTest) -> None:
    order = market("buy", "0.002", label="find-me")
    placed = await venue.account.place_order(order)

    found = await venue.account.find_order(order.client_order_id, "BTC/USD")

    assert found is not None
    assert (found.exchange_order_id, found.client_order_id) == (
        placed.exchange_order_id,
        order.client_order_id,
    )
    assert (found.status, found.filled_base, found.avg_price) == ("filled", Decimal("0.002"), PRICE)


async def test_find_order_of_unknown_client_id_is_none(venue: VenueUnderTest) -> None:
    await venue.account.place_order(market("buy", "0.001", label="someone-else"))

    assert await venue.account.find_order(client_id("never-placed"), "BTC/USD") is None


async def test_fills_since_lists_fills_after_the_cursor(venue: VenueUnderTest) -> None:
    before = time.time() - 5
    buy = await venue.account.place_order(market("buy", "0.002"))
    sell = await venue.account.place_order(market("sell", "0.001"))

    fills = await venue.account.fills_since(before)
    later = await venue.account.fills_since(max(f.at for f in fills))

    assert sorted((f.side, f.amount, f.symbol) for f in fills) == [
        ("buy", Decimal("0.002"), "BTC/USD"),
        ("sell", Decimal("0.001"), "BTC/USD"),
    ]
    assert {f.order_id for f in fills} == {buy.exchange_order_id, sell.exchange_order_id}
    assert later == []


# --- placing exactly once ---------------------------------------------------------------------


async def test_place_idempotently_after_timeout_places_exactly_one_order(
    venue: VenueUnderTest,
) -> None:
    venue.set_timeout_hold(10 * HTTP_TIMEOUT_S)  # released when the venue stops
    await venue.inject("timeout_after_accept")
    order = market("buy", "0.001", label="timeout")

    ack = await place_idempotently(venue.account, order, timeout_s=3 * HTTP_TIMEOUT_S, backoff_s=0.01)

    assert ack.client_order_id == order.client_order_id
    assert len(await venue.orders()) == 1
    assert ack.filled_base == Decimal("0.001")


async def test_server_error_is_temporary_and_retry_places_one_order(venue: VenueUnderTest) -> None:
    order = market("buy", "0.001", label="server-error")
    await venue.inject("http_500")
    error = await raised(venue.account.place_order(order))
    orders_after_error = len(await venue.orders())
    await venue.inject("http_500")

    ack = await place_idempotently(venue.account, order, timeout_s=1.0, backoff_s=0.01)

    assert type(error) is TemporaryError
    assert orders_after_error == 0
    assert ack.client_order_id == order.client_order_id
    assert len(await venue.orders()) == 1


async def test_rate_limit_raises_rate_limited(venue: VenueUnderTest) -> None:
    await venue.inject("rate_limit")

    error = await raised(venue.account.place_order(market("buy", "0.001")))

    assert type(error) is RateLimited
    assert await venue.orders() == []


async def test_buy_beyond_cash_raises_insufficient_funds(venue: VenueUnderTest) -> None:
    error = await raised(venue.account.place_order(market("buy", "1")))  # 45,000 USD

    assert type(error) is InsufficientFunds
    assert await venue.orders() == []


async def test_insufficient_funds_fault_raises_insufficient_funds(venue: VenueUnderTest) -> None:
    await venue.inject("insufficient_funds")

    error = await raised(venue.account.place_order(market("buy", "0.001")))

    assert type(error) is InsufficientFunds


@pytest.mark.parametrize(
    ("size", "size_type"),
    [
        ("0.000001", "base"),  # under the 0.00001 BTC minimum
        ("0.00001", "base"),  # 0.45 USD: under the 0.5 USD minimum cost
        ("0.25", "quote"),
    ],
)
async def test_order_below_venue_minimum_raises_below_minimum(
    venue: VenueUnderTest,
    size: str,
    size_type: SizeType,
) -> None:
    error = await raised(venue.account.place_order(market("buy", size, size_type)))

    assert type(error) is BelowMinimum
    assert await venue.orders() == []


async def test_minimum_fault_raises_below_minimum(venue: VenueUnderTest) -> None:
    await venue.inject("min_not_met")

    error = await raised(venue.account.place_order(market("buy", "0.001")))

    assert type(error) is BelowMinimum


@pytest.mark.parametrize(("size", "size_type"), [("0.000000001", "base"), ("0.004", "quote")])
async def test_size_rounding_to_nothing_is_refused_unsent(
    venue: VenueUnderTest,
    size: str,
    size_type: SizeType,
) -> None:
    await venue.account.market_rules("BTC/USD")  # markets or assets loaded
    before = venue.requests()

    error = await raised(venue.account.place_order(market("buy", size, size_type)))

    assert isinstance(error, BelowMinimum)
    assert venue.requests() - before == venue.zero_size_requests
    assert await venue.orders() == []


# --- authentication and secrets ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["unknown_key", "wrong_secret"])
async def test_bad_credentials_raise_auth_error(venue: VenueUnderTest, kind: str) -> None:
    error = await raised(venue.impostor(kind).snapshot())

    assert type(error) is AuthError


async def test_key_refused_after_a_successful_call_raises_auth_error(venue: VenueUnderTest) -> None:
    await venue.account.snapshot()  # Binance: ccxt reads a later -2015 as an IP ban otherwise
    await venue.inject("invalid_key")

    error = await raised(venue.account.place_order(market("buy", "0.001")))

    assert type(error) is AuthError


async def test_translated_errors_carry_no_credentials(venue: VenueUnderTest) -> None:
    errors = [await raised(venue.impostor(kind).snapshot()) for kind in ("unknown_key", "wrong_secret")]
    for fault in ("http_500", "rate_limit", "insufficient_funds", "invalid_key", "min_not_met"):
        await venue.inject(fault)
        errors.append(await raised(venue.account.place_order(market("buy", "0.001"))))

    texts = [f"{error!s} {error!r}" for error in errors]
    secrets = [*venue.credentials.values(), SIGNATURE_WORD]
    assert [t for t in texts if any(s.lower() in t.lower() for s in secrets)] == []
    # nor would a traceback show the vendor exception they were translated from
    assert all(e.__cause__ is None and (e.__context__ is None or e.__suppress_context__) for e in errors)


SIGNATURE_WORD = "signature="  # a signed query string, as ccxt's messages quote URLs


# --- what followers of one venue share --------------------------------------------------------


async def test_second_follower_shares_markets_and_http_session(venue: VenueUnderTest) -> None:
    await venue.account.connect()
    first_rules = await venue.account.market_rules("BTC/USD")
    loads = venue.market_loads()
    second = await venue.add_follower("second")

    await second.connect()
    second_rules = await second.market_rules("BTC/USD")

    assert venue.market_loads() == loads
    assert second_rules == first_rules
    assert venue.session_of(second) is venue.session_of(venue.account) is not None
    assert await second.snapshot() == await venue.account.snapshot()


# --- limit orders (the slippage guard's limit mode): immediate-or-cancel, never resting ----------


async def test_limit_buy_within_its_price_fills_at_the_venue_price(venue: VenueUnderTest) -> None:
    ack = await venue.account.place_order(limit("buy", "0.001", "45450"))
    position = await venue.account.position("BTC/USD")

    assert (ack.status, ack.filled_base, ack.avg_price) == ("filled", Decimal("0.001"), PRICE)
    assert position == Decimal("1.001")


async def test_limit_sell_within_its_price_fills_at_the_venue_price(venue: VenueUnderTest) -> None:
    ack = await venue.account.place_order(limit("sell", "0.01", "44550"))
    position = await venue.account.position("BTC/USD")

    assert (ack.status, ack.filled_base, ack.avg_price) == ("filled", Decimal("0.01"), PRICE)
    assert position == Decimal("0.99")


async def test_limit_buy_beyond_its_price_expires_without_trading(venue: VenueUnderTest) -> None:
    ack = await venue.account.place_order(limit("buy", "0.001", "44000"))
    snapshot = await venue.account.snapshot()

    assert (ack.status, ack.filled_base, ack.avg_price) == ("expired", None, None)
    assert (snapshot.cash, await venue.account.position("BTC/USD")) == (Decimal(10000), Decimal(1))


async def test_limit_sell_beyond_its_price_expires_without_trading(venue: VenueUnderTest) -> None:
    ack = await venue.account.place_order(limit("sell", "0.01", "46000"))

    assert ack.status == "expired"
    assert await venue.account.position("BTC/USD") == Decimal(1)


async def test_expired_limit_order_after_timeout_is_found_not_placed_again(
    venue: VenueUnderTest,
) -> None:
    venue.set_timeout_hold(10 * HTTP_TIMEOUT_S)  # released when the venue stops
    await venue.inject("timeout_after_accept")
    order = limit("buy", "0.001", "44000", label="expired-timeout")

    ack = await place_idempotently(venue.account, order, timeout_s=3 * HTTP_TIMEOUT_S, backoff_s=0.01)
    found = await venue.account.find_order(order.client_order_id, "BTC/USD")

    assert ack.status == "expired"
    assert found is not None
    assert found.status == "expired"
    assert len(await venue.orders()) == 1


async def test_limit_buy_needs_funds_at_its_limit_price(venue: VenueUnderTest) -> None:
    # 0.222 BTC: $9,990 at the venue's price, $10,089.90 at the limit, with $10,000 of cash
    error = await raised(venue.account.place_order(limit("buy", "0.222", "45450")))

    assert isinstance(error, InsufficientFunds)


# --- resting orders: good-till-canceled limits, stop-losses, take-profits -----------------------
# The venue's price is 45,000: a buy limit at 44,000 rests. `venue.fill_resting` fills part of a
# resting order, `venue.move_price` moves the price (what it reaches triggers).

REST_PRICE = Decimal("44000")


def resting(
    side: Side,
    size: str,
    price: str | None,
    label: str,
    *,
    trigger: Trigger | None = None,
    trigger_price: str | None = None,
) -> OrderCommand:
    return OrderCommand(
        client_order_id=client_id(label),
        symbol="BTC/USD",
        side=side,
        size=Decimal(size),
        size_type="base",
        reference_price=PRICE,
        limit_price=None if price is None else Decimal(price),
        time_in_force="gtc",
        trigger=trigger,
        trigger_price=None if trigger_price is None else Decimal(trigger_price),
    )


async def amend_or_replace(
    account: ExchangeAccount, order: OrderCommand, *, price: Decimal, size: Decimal | None = None
) -> OrderAck:
    """What a caller does: amend where the venue can, else cancel, then place what is left."""
    if (await account.order_capabilities(order.symbol)).amend != "none":
        return await account.amend_order(order.client_order_id, order.symbol, price=price, size=size)
    ended = await account.cancel_order(order.client_order_id, order.symbol)
    filled = (ended.filled_base if ended else None) or Decimal(0)
    new_id = amended_client_id(order.client_order_id, price, size)
    return await account.place_order(
        msgspec.structs.replace(
            order, client_order_id=new_id, limit_price=price, size=(size or order.size) - filled
        )
    )


async def test_resting_limit_rests_and_is_listed_in_open_orders(venue: VenueUnderTest) -> None:
    order = resting("buy", "0.01", "44000", "rest-listed")

    ack = await venue.account.place_order(order)
    listed = await venue.account.open_orders("BTC/USD")
    everything = await venue.account.open_orders()

    assert (ack.status, ack.filled_base, ack.ordered_base) == ("submitted", None, Decimal("0.01"))
    assert [
        (o.client_order_id, o.exchange_order_id, o.kind, o.side, o.size, o.filled, o.price, o.trigger_price)
        for o in listed
    ] == [
        (
            order.client_order_id,
            ack.exchange_order_id,
            "limit",
            "buy",
            Decimal("0.01"),
            Decimal(0),
            REST_PRICE,
            None,
        )
    ]
    assert everything == listed


async def test_resting_limit_that_crosses_the_price_fills_at_once(venue: VenueUnderTest) -> None:
    ack = await venue.account.place_order(resting("buy", "0.001", "45450", "rest-crossing"))

    assert (ack.status, ack.filled_base, ack.avg_price) == ("filled", Decimal("0.001"), PRICE)
    assert await venue.account.open_orders("BTC/USD") == []


async def test_resting_limit_filled_in_part_reports_the_part(venue: VenueUnderTest) -> None:
    order = resting("buy", "0.01", "44000", "rest-part")
    await venue.account.place_order(order)

    await venue.fill_resting(order.client_order_id, Decimal("0.004"))
    found = await venue.account.find_order(order.client_order_id, "BTC/USD")
    listed = await venue.account.open_orders("BTC/USD")
    position = await venue.account.position("BTC/USD")

    assert found is not None
    assert (found.status, found.filled_base, found.avg_price) == ("submitted", Decimal("0.004"), REST_PRICE)
    assert [(o.filled, o.size) for o in listed] == [(Decimal("0.004"), Decimal("0.01"))]
    assert position == Decimal("1.004")


async def test_amend_moves_the_price_leaving_one_live_order(venue: VenueUnderTest) -> None:
    order = resting("buy", "0.01", "44000", "rest-amend")
    placed = await venue.account.place_order(order)
    capabilities = await venue.account.order_capabilities("BTC/USD")

    ack = await amend_or_replace(venue.account, order, price=Decimal("44100"))
    listed = await venue.account.open_orders("BTC/USD")

    assert [(o.client_order_id, o.exchange_order_id, o.price, o.size - o.filled) for o in listed] == [
        (ack.client_order_id, ack.exchange_order_id, Decimal("44100"), Decimal("0.01"))
    ]
    assert (ack.client_order_id == order.client_order_id) is capabilities.amend_keeps_client_id
    assert (ack.exchange_order_id == placed.exchange_order_id) is (capabilities.amend == "in_place")


async def test_amend_of_a_part_filled_order_keeps_what_filled(venue: VenueUnderTest) -> None:
    order = resting("buy", "0.01", "44000", "rest-amend-part")
    await venue.account.place_order(order)
    await venue.fill_resting(order.client_order_id, Decimal("0.004"))

    # the new total 0.012, of which 0.004 filled: 0.008 left to buy, at 44,100
    ack = await amend_or_replace(venue.account, order, price=Decimal("44100"), size=Decimal("0.012"))
    listed = await venue.account.open_orders("BTC/USD")
    position = await venue.account.position("BTC/USD")

    assert [(o.client_order_id, o.price, o.size - o.filled) for o in listed] == [
        (ack.client_order_id, Decimal("44100"), Decimal("0.008"))
    ]
    assert position == Decimal("1.004")


async def test_amend_of_an_unknown_order_is_refused(venue: VenueUnderTest) -> None:
    error = await raised(
        venue.account.amend_order(client_id("never-placed"), "BTC/USD", price=Decimal("44100"))
    )

    assert isinstance(error, InvalidOrder)


async def test_cancel_ends_a_resting_order_with_what_filled(venue: VenueUnderTest) -> None:
    order = resting("buy", "0.01", "44000", "rest-cancel-part")
    await venue.account.place_order(order)
    await venue.fill_resting(order.client_order_id, Decimal("0.004"))

    ack = await venue.account.cancel_order(order.client_order_id, "BTC/USD")
    found = await venue.account.find_order(order.client_order_id, "BTC/USD")

    assert ack is not None
    assert found is not None
    assert (ack.status, ack.filled_base, ack.avg_price) == ("filled", Decimal("0.004"), REST_PRICE)
    assert (found.status, found.filled_base) == ("filled", Decimal("0.004"))
    assert await venue.account.open_orders("BTC/USD") == []


async def test_cancel_of_an_unfilled_resting_order_reports_it_expired(
    venue: VenueUnderTest,
) -> None:
    order = resting("buy", "0.01", "44000", "rest-cancel")
    await venue.account.place_order(order)

    first = await venue.account.cancel_order(order.client_order_id, "BTC/USD")
    again = await venue.account.cancel_order(order.client_order_id, "BTC/USD")
    snapshot = await venue.account.snapshot()

    assert first is not None
    assert again is not None
    assert [(a.status, a.filled_base) for a in (first, again)] == [("expired", None)] * 2
    assert await venue.account.open_orders() == []
    assert snapshot.cash == Decimal("10000")


async def test_cancel_of_an_unknown_client_id_is_none(venue: VenueUnderTest) -> None:
    await venue.account.place_order(market("buy", "0.001", label="someone-else-cancel"))

    assert await venue.account.cancel_order(client_id("never-placed"), "BTC/USD") is None


async def test_cancel_of_a_filled_order_reports_it_filled(venue: VenueUnderTest) -> None:
    placed = await venue.account.place_order(market("buy", "0.001", label="filled-cancel"))

    ack = await venue.account.cancel_order(placed.client_order_id, "BTC/USD")

    assert ack is not None
    assert (ack.exchange_order_id, ack.status, ack.filled_base, ack.avg_price) == (
        placed.exchange_order_id,
        "filled",
        Decimal("0.001"),
        PRICE,
    )


# (trigger, trigger price, limit price, a price short of the trigger, a price past it)
TRIGGERED = [
    ("stop_loss", "44000", None, "44500", "43900"),
    ("stop_loss", "44000", "43800", "44500", "43900"),
    ("take_profit", "46000", None, "45500", "46100"),
    ("take_profit", "46000", "45900", "45500", "46100"),
]


@pytest.mark.parametrize(("trigger", "at", "limit", "short", "past"), TRIGGERED)
async def test_trigger_order_executes_when_the_price_reaches_it(
    venue: VenueUnderTest,
    *,
    trigger: Trigger,
    at: str,
    limit: str | None,
    short: str,
    past: str,
) -> None:
    order = resting("sell", "0.01", limit, f"{trigger}-{limit}", trigger=trigger, trigger_price=at)
    if kind_of(order) not in (await venue.account.order_capabilities("BTC/USD")).native:
        pytest.skip(f"{venue.name} has no native {kind_of(order)} order")
    ack = await venue.account.place_order(order)
    waiting = await venue.account.open_orders("BTC/USD")

    await venue.move_price("BTC/USD", Decimal(short))
    still = await venue.account.open_orders("BTC/USD")
    await venue.move_price("BTC/USD", Decimal(past))
    found = await venue.account.find_order(order.client_order_id, "BTC/USD")
    position = await venue.account.position("BTC/USD")

    assert (ack.status, ack.filled_base) == ("submitted", None)
    assert [(o.client_order_id, o.kind, o.side, o.size, o.trigger_price, o.price) for o in waiting] == [
        (order.client_order_id, kind_of(order), "sell", Decimal("0.01"), Decimal(at), order.limit_price)
    ]
    assert still == waiting
    assert found is not None
    assert (found.status, found.filled_base, found.avg_price) == ("filled", Decimal("0.01"), Decimal(past))
    assert await venue.account.open_orders("BTC/USD") == []
    assert position == Decimal("0.99")


@pytest.mark.parametrize(("trigger", "at", "limit", "short", "past"), TRIGGERED)
async def test_trigger_order_the_venue_lacks_is_refused_unsent(
    venue: VenueUnderTest,
    *,
    trigger: Trigger,
    at: str,
    limit: str | None,
    short: str,
    past: str,
) -> None:
    order = resting("sell", "0.01", limit, f"lacking-{trigger}-{limit}", trigger=trigger, trigger_price=at)
    if kind_of(order) in (await venue.account.order_capabilities("BTC/USD")).native:
        pytest.skip(f"{venue.name} places {kind_of(order)} orders natively")
    before = venue.requests()

    error = await raised(venue.account.place_order(order))

    assert type(error) is NotNative
    assert str(error)
    assert venue.requests() == before
    assert await venue.orders() == []


async def test_cancel_of_a_stop_before_its_trigger_reports_it_expired(
    venue: VenueUnderTest,
) -> None:
    order = resting("sell", "0.01", "43800", "stop-cancel", trigger="stop_loss", trigger_price="44000")
    if "stop_loss_limit" not in (await venue.account.order_capabilities("BTC/USD")).native:
        pytest.skip(f"{venue.name} has no native stop_loss_limit order")
    await venue.account.place_order(order)

    ack = await venue.account.cancel_order(order.client_order_id, "BTC/USD")
    await venue.move_price("BTC/USD", Decimal("43900"))

    assert ack is not None
    assert (ack.status, ack.filled_base) == ("expired", None)
    assert await venue.account.position("BTC/USD") == Decimal(1)


async def test_triggered_stop_whose_limit_rests_is_listed_with_its_trigger(
    venue: VenueUnderTest,
) -> None:
    order = resting("sell", "0.01", "43800", "stop-rests", trigger="stop_loss", trigger_price="44000")
    if "stop_loss_limit" not in (await venue.account.order_capabilities("BTC/USD")).native:
        pytest.skip(f"{venue.name} has no native stop_loss_limit order")
    placed = await venue.account.place_order(order)

    await venue.move_price("BTC/USD", Decimal("43700"))  # past the trigger, short of the limit
    listed = await venue.account.open_orders("BTC/USD")
    ack = await venue.account.cancel_order(order.client_order_id, "BTC/USD")

    assert [
        (o.client_order_id, o.exchange_order_id, o.kind, o.size, o.trigger_price, o.price) for o in listed
    ] == [
        (
            order.client_order_id,
            placed.exchange_order_id,
            "stop_loss_limit",
            Decimal("0.01"),
            Decimal("44000"),
            Decimal("43800"),
        )
    ]
    assert ack is not None
    assert (ack.exchange_order_id, ack.status, ack.filled_base) == (placed.exchange_order_id, "expired", None)
    assert await venue.account.open_orders("BTC/USD") == []


async def test_place_idempotently_after_timeout_places_one_trigger_order(
    venue: VenueUnderTest,
) -> None:
    order = resting("sell", "0.01", None, "stop-timeout", trigger="stop_loss", trigger_price="44000")
    if "stop_loss" not in (await venue.account.order_capabilities("BTC/USD")).native:
        pytest.skip(f"{venue.name} has no native stop_loss order")
    venue.set_timeout_hold(10 * HTTP_TIMEOUT_S)  # released when the venue stops
    await venue.inject("timeout_after_accept")

    ack = await place_idempotently(venue.account, order, timeout_s=3 * HTTP_TIMEOUT_S, backoff_s=0.01)
    listed = await venue.account.open_orders("BTC/USD")

    assert (ack.client_order_id, ack.status) == (order.client_order_id, "submitted")
    assert [(o.client_order_id, o.kind) for o in listed] == [(order.client_order_id, "stop_loss")]
    assert len(await venue.orders()) == 1


async def test_place_idempotently_after_timeout_places_one_resting_order(
    venue: VenueUnderTest,
) -> None:
    venue.set_timeout_hold(10 * HTTP_TIMEOUT_S)  # released when the venue stops
    await venue.inject("timeout_after_accept")
    order = resting("buy", "0.01", "44000", "rest-timeout")

    ack = await place_idempotently(venue.account, order, timeout_s=3 * HTTP_TIMEOUT_S, backoff_s=0.01)
    listed = await venue.account.open_orders("BTC/USD")

    assert (ack.client_order_id, ack.status) == (order.client_order_id, "submitted")
    assert [o.client_order_id for o in listed] == [order.client_order_id]
    assert len(await venue.orders()) == 1


async def test_amend_of_a_trigger_order_is_refused_as_not_native(venue: VenueUnderTest) -> None:
    order = resting("sell", "0.01", "43800", "stop-amend", trigger="stop_loss", trigger_price="44000")
    if "stop_loss_limit" not in (await venue.account.order_capabilities("BTC/USD")).native:
        pytest.skip(f"{venue.name} has no native stop_loss_limit order")
    await venue.account.place_order(order)

    error = await raised(venue.account.amend_order(order.client_order_id, "BTC/USD", price=Decimal("43700")))
    listed = await venue.account.open_orders("BTC/USD")

    assert type(error) is NotNative
    assert [(o.client_order_id, o.price) for o in listed] == [(order.client_order_id, Decimal("43800"))]


async def test_order_capabilities_name_resting_kinds_and_an_amend_mode(
    venue: VenueUnderTest,
) -> None:
    capabilities = await venue.account.order_capabilities("BTC/USD")

    assert "limit" in capabilities.native
    assert capabilities.native <= RESTING_KINDS
    assert capabilities.amend in ("in_place", "replace", "none")
    assert capabilities.amend_keeps_client_id is (capabilities.amend == "in_place")
