"""The real ccxt async clients (4.5.90) against the Kraken, Binance and OKX loopback emulators.

Each test runs once per venue. Exception classes are asserted exactly (`type(e) is X`), since the
adapter classifies by them; where ccxt's mapping is coarse or surprising, the venue table says so.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlparse

import ccxt.async_support as ccxt
import pytest
import pytest_asyncio

from tests.emulators.binance import BinanceEmulator
from tests.emulators.kraken import KrakenEmulator
from tests.emulators.okx import OkxEmulator
from tests.emulators.server import EmulatorServer
from tests.emulators.state import Account, Fault

pytestmark = pytest.mark.asyncio

KEY = "follower-key"
BALANCES = {"USD": Decimal("10000"), "BTC": Decimal("1")}
NS = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")

# No client-side throttling (the emulators are local), and no 250 ms sleep in close(), which ccxt
# keeps for TLS transports to drain.
LOOPBACK = {"enableRateLimit": False, "timeout_on_exit": 0}

Finder = Callable[[Any, str], Awaitable[dict[str, Any] | None]]


def client_id(label: str) -> str:
    """32-hex client order id, accepted by all three venues (Kraken short UUID, OKX ≤32 alnum)."""
    return uuid.uuid5(NS, label).hex


def kraken_client(url: str, key: str, secret: str, passphrase: str | None) -> Any:
    ex = ccxt.kraken({"apiKey": key, "secret": secret, **LOOPBACK})
    ex.urls["api"] = {"public": url, "private": url}
    return ex


def binance_client(url: str, key: str, secret: str, passphrase: str | None) -> Any:
    ex = ccxt.binance({"apiKey": key, "secret": secret, **LOOPBACK, "options": {
        "fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False, "fetchMargins": False}})
    ex.urls["api"] = {name: url + urlparse(u).path for name, u in ex.urls["api"].items()}
    return ex


def okx_client(url: str, key: str, secret: str, passphrase: str | None) -> Any:
    ex = ccxt.okx({"apiKey": key, "secret": secret, "password": passphrase,
                   **LOOPBACK, "options": {"fetchMarkets": {"types": ["spot"]}}})
    ex.urls["api"] = {"rest": url}
    return ex


async def kraken_find(ex: Any, cid: str) -> dict[str, Any] | None:
    # fetch_order(id, {"clientOrderId"}) would send it as an integer userref and still need the
    # txid; Kraken filters ClosedOrders/OpenOrders by cl_ord_id instead.
    for fetch in (ex.fetch_open_orders, ex.fetch_closed_orders):
        if orders := await fetch(params={"clientOrderId": cid}):
            return orders[0]
    return None


async def by_client_order_id(ex: Any, cid: str) -> dict[str, Any] | None:
    # binance: sent as origClientOrderId (symbol required); okx: sent as clOrdId (symbol required)
    try:
        return await ex.fetch_order(None, "BTC/USD", {"clientOrderId": cid})
    except ccxt.OrderNotFound:
        return None


@dataclass(frozen=True)
class Venue:
    name: str
    emulator: type[EmulatorServer]
    connect: Callable[[str, str, str, str | None], Any]
    secret: str
    find: Finder
    buy_with_cost: Callable[[Any, float, str], Awaitable[dict[str, Any]]]  # venue-native way
    fault_errors: dict[Fault, type[Exception]]
    wrong_secret_error: type[Exception]
    below_min_amount_error: type[Exception]
    below_min_cost_error: type[Exception]
    min_cost: float | None  # limits.cost.min as ccxt reports it
    passphrase: str | None = None


VENUES = [
    Venue(
        "kraken", KrakenEmulator, kraken_client, base64.b64encode(b"kraken-secret" * 5).decode(),
        kraken_find,
        # Kraken: {"cost": x} -> volume=x, oflags=viqc
        lambda ex, cost, cid: ex.create_order("BTC/USD", "market", "buy", cost, None,
                                              {"cost": cost, "clientOrderId": cid}),
        {Fault.HTTP_500: ccxt.ExchangeNotAvailable,  # 503 EService:Unavailable
         Fault.RATE_LIMIT: ccxt.DDoSProtection,  # EAPI:Rate limit exceeded (not RateLimitExceeded)
         Fault.INSUFFICIENT_FUNDS: ccxt.InsufficientFunds,
         Fault.INVALID_KEY: ccxt.AuthenticationError,  # EAPI:Invalid key
         Fault.MIN_NOT_MET: ccxt.InvalidOrder},  # EOrder:Order minimum not met
        wrong_secret_error=ccxt.ExchangeError,  # coarse: EAPI:Invalid signature is unmapped
        below_min_amount_error=ccxt.InvalidOrder,  # EOrder:Order minimum not met
        below_min_cost_error=ccxt.ExchangeError,  # coarse: EOrder:Cost minimum not met unmapped
        min_cost=0.5,
    ),
    Venue(
        "binance", BinanceEmulator, binance_client, "binance-secret", by_client_order_id,
        lambda ex, cost, cid: ex.create_order("BTC/USD", "market", "buy", cost, None,
                                              {"quoteOrderQty": cost, "clientOrderId": cid}),
        {Fault.HTTP_500: ccxt.OperationFailed,  # 503 -1001: ccxt maps it to the base of
         # NetworkError, not to a NetworkError itself
         Fault.RATE_LIMIT: ccxt.DDoSProtection,  # any 429 is DDoSProtection before -1003 is read
         Fault.INSUFFICIENT_FUNDS: ccxt.InsufficientFunds,  # -2010, matched on its message
         Fault.INVALID_KEY: ccxt.AuthenticationError,  # -2015, on a client's first private call
         Fault.MIN_NOT_MET: ccxt.BadRequest},  # -1013 Filter failure: NOTIONAL
        wrong_secret_error=ccxt.AuthenticationError,  # -1022
        below_min_amount_error=ccxt.InvalidOrder,  # -1013 Filter failure: LOT_SIZE (by text)
        below_min_cost_error=ccxt.BadRequest,  # -1013 Filter failure: NOTIONAL
        min_cost=0.5,
    ),
    Venue(
        "okx", OkxEmulator, okx_client, "okx-secret", by_client_order_id,
        lambda ex, cost, cid: ex.create_order("BTC/USD", "market", "buy", cost, None,
                                              {"tgtCcy": "quote_ccy", "clientOrderId": cid}),
        {Fault.HTTP_500: ccxt.ExchangeNotAvailable,  # 500 code 50026
         Fault.RATE_LIMIT: ccxt.RateLimitExceeded,  # 429 code 50011
         Fault.INSUFFICIENT_FUNDS: ccxt.InsufficientFunds,  # sCode 51008
         Fault.INVALID_KEY: ccxt.AuthenticationError,  # 401 code 50111
         Fault.MIN_NOT_MET: ccxt.InvalidOrder},  # sCode 51020
        wrong_secret_error=ccxt.AuthenticationError,  # 50113 Invalid Sign
        below_min_amount_error=ccxt.InvalidOrder,
        below_min_cost_error=ccxt.InvalidOrder,
        min_cost=None,  # OKX instruments publish no minimum notional; ccxt reports None
        passphrase="okx-passphrase",
    ),
]
BY_NAME = {v.name: v for v in VENUES}


def only(name: str) -> pytest.MarkDecorator:
    """Run a test for one venue only (overrides the `venue` fixture's params)."""
    return pytest.mark.parametrize("venue", [BY_NAME[name]], ids=[name], indirect=True)


@pytest.fixture(params=VENUES, ids=lambda v: v.name)
def venue(request: pytest.FixtureRequest) -> Venue:
    return request.param


@pytest_asyncio.fixture
async def emulator(venue: Venue) -> AsyncIterator[EmulatorServer]:
    async with venue.emulator() as emu:
        yield emu


@pytest.fixture
def account(venue: Venue, emulator: EmulatorServer) -> Account:
    return emulator.state.add_account(KEY, venue.secret, BALANCES, passphrase=venue.passphrase)


@pytest_asyncio.fixture
async def ex(venue: Venue, emulator: EmulatorServer, account: Account) -> AsyncIterator[Any]:
    client = venue.connect(emulator.url, KEY, venue.secret, venue.passphrase)
    try:
        await client.load_markets()
        yield client
    finally:
        await client.close()


async def _raises(expected: type[Exception], call: Awaitable[Any]) -> Exception:
    with pytest.raises(ccxt.BaseError) as info:
        await call
    assert type(info.value) is expected, f"{type(info.value).__name__}: {info.value}"
    return info.value


# --- market data and balance -----------------------------------------------------------------


async def test_load_markets_gives_btc_usd_with_precision_and_limits(venue: Venue, ex: Any) -> None:
    market = ex.market("BTC/USD")
    assert (market["base"], market["quote"], market["spot"]) == ("BTC", "USD", True)
    assert market["precision"]["amount"] == 1e-8
    assert market["precision"]["price"] == 0.1
    assert market["limits"]["amount"]["min"] == 1e-5
    assert market["limits"]["cost"]["min"] == venue.min_cost
    assert ex.market("ETH/USD")["precision"]["price"] == 0.01


async def test_fetch_balance_returns_account_balances(ex: Any) -> None:
    balance = await ex.fetch_balance()
    assert balance["total"]["USD"] == 10000
    assert balance["free"]["BTC"] == 1


async def test_fetch_ticker_returns_state_price(ex: Any, emulator: EmulatorServer) -> None:
    emulator.state.prices["BTC/USD"] = Decimal("50000")
    assert (await ex.fetch_ticker("BTC/USD"))["last"] == 50000
    tickers = await ex.fetch_tickers()
    assert {s: t["last"] for s, t in tickers.items()} == {"BTC/USD": 50000, "ETH/USD": 3000}


async def test_latency_delays_every_reply(ex: Any, emulator: EmulatorServer) -> None:
    emulator.state.latency_s = 0.2
    started = time.monotonic()
    await ex.fetch_ticker("BTC/USD")
    assert time.monotonic() - started >= 0.2


# --- orders ----------------------------------------------------------------------------------


async def test_market_buy_by_amount_fills_with_client_order_id(
    venue: Venue, ex: Any, account: Account,
) -> None:
    cid = client_id("buy-by-amount")
    placed = await ex.create_order("BTC/USD", "market", "buy", 0.001, None, {"clientOrderId": cid})
    order = account.order_by_client_id(cid)
    assert order is not None and placed["id"] == order.order_id
    assert (order.amount, order.cost) == (Decimal("0.001"), Decimal("45"))
    assert account.balances == {"USD": Decimal("9955"), "BTC": Decimal("1.001")}
    found = await venue.find(ex, cid)
    assert found is not None
    assert (found["id"], found["clientOrderId"], found["status"]) == (order.order_id, cid,
                                                                       "closed")
    assert (found["filled"], found["average"], found["side"]) == (0.001, 45000, "buy")


async def test_market_buy_with_cost_spends_the_quote_amount(ex: Any, account: Account) -> None:
    await ex.create_market_buy_order_with_cost("BTC/USD", 90)  # ccxt's unified way
    order = account.orders[-1]
    assert (order.side, order.amount, order.cost) == ("buy", Decimal("0.002"), Decimal("90"))
    assert account.balances["USD"] == Decimal("9910")


async def test_market_buy_with_venue_native_cost_param_spends_the_quote_amount(
    venue: Venue, ex: Any, account: Account,
) -> None:
    cid = client_id("buy-by-cost")
    await venue.buy_with_cost(ex, 90, cid)
    order = account.order_by_client_id(cid)
    assert order is not None and (order.amount, order.cost) == (Decimal("0.002"), Decimal("90"))
    found = await venue.find(ex, cid)
    assert found is not None and found["filled"] == 0.002  # filled is base even for quote orders


async def test_market_sell_by_amount_credits_quote(venue: Venue, ex: Any, account: Account) -> None:
    cid = client_id("sell")
    await ex.create_order("BTC/USD", "market", "sell", 0.01, None, {"clientOrderId": cid})
    assert account.balances == {"USD": Decimal("10450"), "BTC": Decimal("0.99")}
    found = await venue.find(ex, cid)
    assert found is not None and (found["side"], found["filled"]) == ("sell", 0.01)


async def test_fetch_order_by_venue_order_id_returns_the_fill(ex: Any) -> None:
    # kraken: QueryOrders by txid; binance: GET /api/v3/order?orderId; okx: GET trade/order?ordId
    placed = await ex.create_order("BTC/USD", "market", "buy", 0.001, None,
                                   {"clientOrderId": client_id("by-id")})
    fetched = await ex.fetch_order(placed["id"], "BTC/USD")
    assert (fetched["id"], fetched["clientOrderId"]) == (placed["id"], client_id("by-id"))
    assert (fetched["status"], fetched["filled"], fetched["cost"]) == ("closed", 0.001, 45)


async def test_find_order_by_unknown_client_order_id_finds_nothing(venue: Venue, ex: Any) -> None:
    await ex.create_order("BTC/USD", "market", "buy", 0.001, None,
                          {"clientOrderId": client_id("other")})
    assert await venue.find(ex, client_id("never-placed")) is None


async def test_fetch_my_trades_lists_fills_since_a_time(ex: Any, account: Account) -> None:
    await ex.create_order("BTC/USD", "market", "buy", 0.002, None)
    await ex.create_order("BTC/USD", "market", "sell", 0.001, None)
    account.orders[0].created -= 10  # two distinct fill times, whatever the clock resolution
    trades = await ex.fetch_my_trades("BTC/USD")
    assert [(t["side"], t["amount"], t["price"]) for t in trades] == [
        ("buy", 0.002, 45000), ("sell", 0.001, 45000)]
    assert [t["order"] for t in trades] == [o.order_id for o in account.orders]
    since = trades[-1]["timestamp"]
    later = await ex.fetch_my_trades("BTC/USD", since)
    assert [t["id"] for t in later] == [trades[-1]["id"]]


@pytest.mark.parametrize(("amount", "kind"), [(0.000001, "amount"), (0.00001, "cost")])
async def test_order_below_venue_minimum_raises_venue_error(
    venue: Venue, ex: Any, account: Account, amount: float, kind: str,
) -> None:
    # 0.000001 BTC is under the 0.00001 minimum; 0.00001 BTC = 0.45 USD is under the 0.5 minimum
    expected = venue.below_min_amount_error if kind == "amount" else venue.below_min_cost_error
    await _raises(expected, ex.create_order("BTC/USD", "market", "buy", amount, None))
    assert account.orders == []


async def test_buy_beyond_balance_raises_insufficient_funds(ex: Any, account: Account) -> None:
    await _raises(ccxt.InsufficientFunds, ex.create_order("BTC/USD", "market", "buy", 1, None))
    assert account.orders == [] and account.balances == BALANCES


# --- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", [f for f in Fault if f is not Fault.TIMEOUT_AFTER_ACCEPT],
                         ids=lambda f: f.value)
async def test_order_fault_raises_venue_error_class_and_places_nothing(
    venue: Venue, ex: Any, account: Account, fault: Fault,
) -> None:
    account.faults.append(fault)
    cid = client_id(f"fault-{fault.value}")
    error = await _raises(venue.fault_errors[fault], ex.create_order(
        "BTC/USD", "market", "buy", 0.001, None, {"clientOrderId": cid}))
    if fault in (Fault.HTTP_500, Fault.RATE_LIMIT):
        assert isinstance(error, ccxt.OperationFailed)  # the retryable family
    assert account.orders == [] and account.faults == []
    assert await venue.find(ex, cid) is None
    await ex.create_order("BTC/USD", "market", "buy", 0.001, None, {"clientOrderId": cid})
    assert account.order_by_client_id(cid) is not None  # the fault hit one request only


async def test_timeout_after_accept_raises_request_timeout_and_order_exists(
    venue: Venue, ex: Any, emulator: EmulatorServer, account: Account,
) -> None:
    emulator.state.timeout_hold_s = 2.0
    ex.timeout = 500  # ms
    account.faults.append(Fault.TIMEOUT_AFTER_ACCEPT)
    cid = client_id("timeout")
    await _raises(ccxt.RequestTimeout, ex.create_order("BTC/USD", "market", "buy", 0.001, None,
                                                       {"clientOrderId": cid}))
    found = await venue.find(ex, cid)  # what an adapter must do before any retry
    assert found is not None and found["filled"] == 0.001
    assert account.order_by_client_id(cid) is not None


# --- authentication --------------------------------------------------------------------------


async def test_unknown_api_key_raises_authentication_error(
    venue: Venue, emulator: EmulatorServer, account: Account,
) -> None:
    stranger = venue.connect(emulator.url, "unknown-key", venue.secret, venue.passphrase)
    try:
        await _raises(ccxt.AuthenticationError, stranger.fetch_balance())
    finally:
        await stranger.close()


async def test_wrong_secret_raises_venue_auth_error(
    venue: Venue, emulator: EmulatorServer, account: Account,
) -> None:
    wrong = base64.b64encode(b"not-the-secret" * 4).decode()
    impostor = venue.connect(emulator.url, KEY, wrong, venue.passphrase)
    try:
        await _raises(venue.wrong_secret_error, impostor.fetch_balance())
    finally:
        await impostor.close()


@only("okx")
async def test_okx_wrong_passphrase_raises_authentication_error(
    emulator: EmulatorServer, venue: Venue, account: Account,
) -> None:
    client = okx_client(emulator.url, KEY, venue.secret, "wrong-passphrase")
    try:
        await _raises(ccxt.AuthenticationError, client.fetch_balance())
    finally:
        await client.close()


@only("binance")
async def test_binance_invalid_key_after_a_successful_call_raises_ddos_protection(
    ex: Any, account: Account,
) -> None:
    # ccxt reads -2015 on a client that already authenticated once as a temporary ban
    await ex.fetch_balance()
    account.faults.append(Fault.INVALID_KEY)
    await _raises(ccxt.DDoSProtection, ex.create_order("BTC/USD", "market", "buy", 0.001, None))


@only("kraken")
async def test_kraken_stale_nonce_raises_invalid_nonce(ex: Any, account: Account) -> None:
    account.last_nonce = 10**15  # as if another process had used the key with a later nonce
    await _raises(ccxt.InvalidNonce, ex.fetch_balance())
