"""The real ccxt async clients (4.5.90) against the Kraken, Binance and OKX loopback emulators.

Each test runs once per venue. Exception classes are asserted exactly (`type(e) is X`), since the
adapter classifies by them; where ccxt's mapping is coarse or surprising, the venue table says so.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, cast
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
    ex = ccxt.binance(
        {
            "apiKey": key,
            "secret": secret,
            **LOOPBACK,
            "options": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False, "fetchMargins": False},
        }
    )
    ex.urls["api"] = {name: url + urlparse(u).path for name, u in ex.urls["api"].items()}
    return ex


def okx_client(url: str, key: str, secret: str, passphrase: str | None) -> Any:
    ex = ccxt.okx(
        {
            "apiKey": key,
            "secret": secret,
            "password": passphrase,
            **LOOPBACK,
            "options": {"fetchMarkets": {"types": ["spot"]}},
        }
    )
    ex.urls["api"] = {"rest": url}
    return ex


async def kraken_find(ex: Any, cid: str) -> dict[str, Any] | None:
    # fetch_order(id, {"clientOrderId"}) would send it as an integer userref and still need the
    # txid; Kraken filters ClosedOrders/OpenOrders by cl_ord_id instead.
    for fetch in (ex.fetch_open_orders, ex.fetch_closed_orders):
        if orders := await fetch(params={"clientOrderId": cid}):
            order: dict[str, Any] = orders[0]
            return order
    return None


async def by_client_order_id(ex: Any, cid: str) -> dict[str, Any] | None:
    # binance: sent as origClientOrderId (symbol required); okx: sent as clOrdId (symbol required)
    try:
        order: dict[str, Any] = await ex.fetch_order(None, "BTC/USD", {"clientOrderId": cid})
        return order
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
    unfilled_ioc_status: str  # ccxt's status for a limit IOC that found no liquidity
    off_tick_error: type[Exception]  # a limit price off the venue's tick
    passphrase: str | None = None


VENUES = [
    Venue(
        "kraken",
        KrakenEmulator,
        kraken_client,
        base64.b64encode(b"kraken-secret" * 5).decode(),
        kraken_find,
        # Kraken: {"cost": x} -> volume=x, oflags=viqc
        lambda ex, cost, cid: ex.create_order(
            "BTC/USD", "market", "buy", cost, None, {"cost": cost, "clientOrderId": cid}
        ),
        {
            Fault.HTTP_500: ccxt.ExchangeNotAvailable,  # 503 EService:Unavailable
            Fault.RATE_LIMIT: ccxt.DDoSProtection,  # EAPI:Rate limit exceeded (not RateLimitExceeded)
            Fault.INSUFFICIENT_FUNDS: ccxt.InsufficientFunds,
            Fault.INVALID_KEY: ccxt.AuthenticationError,  # EAPI:Invalid key
            Fault.MIN_NOT_MET: ccxt.InvalidOrder,
        },  # EOrder:Order minimum not met
        wrong_secret_error=ccxt.ExchangeError,  # coarse: EAPI:Invalid signature is unmapped
        below_min_amount_error=ccxt.InvalidOrder,  # EOrder:Order minimum not met
        below_min_cost_error=ccxt.ExchangeError,  # coarse: EOrder:Cost minimum not met unmapped
        min_cost=0.5,
        unfilled_ioc_status="canceled",
        off_tick_error=ccxt.ExchangeError,  # coarse: EOrder:Invalid price:... unmapped
    ),
    Venue(
        "binance",
        BinanceEmulator,
        binance_client,
        "binance-secret",
        by_client_order_id,
        lambda ex, cost, cid: ex.create_order(
            "BTC/USD", "market", "buy", cost, None, {"quoteOrderQty": cost, "clientOrderId": cid}
        ),
        {
            Fault.HTTP_500: ccxt.OperationFailed,  # 503 -1001: ccxt maps it to the base of
            # NetworkError, not to a NetworkError itself
            Fault.RATE_LIMIT: ccxt.DDoSProtection,  # any 429 is DDoSProtection before -1003 is read
            Fault.INSUFFICIENT_FUNDS: ccxt.InsufficientFunds,  # -2010, matched on its message
            Fault.INVALID_KEY: ccxt.AuthenticationError,  # -2015, on a client's first private call
            Fault.MIN_NOT_MET: ccxt.BadRequest,
        },  # -1013 Filter failure: NOTIONAL
        wrong_secret_error=ccxt.AuthenticationError,  # -1022
        below_min_amount_error=ccxt.InvalidOrder,  # -1013 Filter failure: LOT_SIZE (by text)
        below_min_cost_error=ccxt.BadRequest,  # -1013 Filter failure: NOTIONAL
        min_cost=0.5,
        unfilled_ioc_status="expired",  # EXPIRED
        off_tick_error=ccxt.InvalidOrder,  # -1013 Filter failure: PRICE_FILTER (by text)
    ),
    Venue(
        "okx",
        OkxEmulator,
        okx_client,
        "okx-secret",
        by_client_order_id,
        lambda ex, cost, cid: ex.create_order(
            "BTC/USD", "market", "buy", cost, None, {"tgtCcy": "quote_ccy", "clientOrderId": cid}
        ),
        {
            Fault.HTTP_500: ccxt.ExchangeNotAvailable,  # 500 code 50026
            Fault.RATE_LIMIT: ccxt.RateLimitExceeded,  # 429 code 50011
            Fault.INSUFFICIENT_FUNDS: ccxt.InsufficientFunds,  # sCode 51008
            Fault.INVALID_KEY: ccxt.AuthenticationError,  # 401 code 50111
            Fault.MIN_NOT_MET: ccxt.InvalidOrder,
        },  # sCode 51020
        wrong_secret_error=ccxt.AuthenticationError,  # 50113 Invalid Sign
        below_min_amount_error=ccxt.InvalidOrder,
        below_min_cost_error=ccxt.InvalidOrder,
        min_cost=None,  # OKX instruments publish no minimum notional; ccxt reports None
        unfilled_ioc_status="canceled",
        off_tick_error=ccxt.BadRequest,  # sCode 51000 Parameter px error
        passphrase="okx-passphrase",
    ),
]
BY_NAME = {v.name: v for v in VENUES}


def only(name: str) -> pytest.MarkDecorator:
    """Run a test for one venue only (overrides the `venue` fixture's params)."""
    return pytest.mark.parametrize("venue", [BY_NAME[name]], ids=[name], indirect=True)


@pytest.fixture(params=VENUES, ids=lambda v: v.name)
def venue(request: pytest.FixtureRequest) -> Venue:
    return cast(Venue, request.param)


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


def limit_ioc(ex: Any, side: str, amount: float, price: float, cid: str) -> Awaitable[Any]:
    """A limit IOC order as the adapters send it through ccxt's unified API."""
    return cast(
        Awaitable[Any],
        ex.create_order(
            "BTC/USD", "limit", side, amount, price, {"timeInForce": "IOC", "clientOrderId": cid}
        ),
    )


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
    venue: Venue,
    ex: Any,
    account: Account,
) -> None:
    cid = client_id("buy-by-amount")
    placed = await ex.create_order("BTC/USD", "market", "buy", 0.001, None, {"clientOrderId": cid})
    order = account.order_by_client_id(cid)
    assert order is not None
    assert placed["id"] == order.order_id
    assert (order.amount, order.cost) == (Decimal("0.001"), Decimal("45"))
    assert account.balances == {"USD": Decimal("9955"), "BTC": Decimal("1.001")}
    found = await venue.find(ex, cid)
    assert found is not None
    assert (found["id"], found["clientOrderId"], found["status"]) == (order.order_id, cid, "closed")
    assert (found["filled"], found["average"], found["side"]) == (0.001, 45000, "buy")


async def test_market_buy_with_cost_spends_the_quote_amount(ex: Any, account: Account) -> None:
    await ex.create_market_buy_order_with_cost("BTC/USD", 90)  # ccxt's unified way
    order = account.orders[-1]
    assert (order.side, order.amount, order.cost) == ("buy", Decimal("0.002"), Decimal("90"))
    assert account.balances["USD"] == Decimal("9910")


async def test_market_buy_with_venue_native_cost_param_spends_the_quote_amount(
    venue: Venue,
    ex: Any,
    account: Account,
) -> None:
    cid = client_id("buy-by-cost")
    await venue.buy_with_cost(ex, 90, cid)
    order = account.order_by_client_id(cid)
    assert order is not None
    assert (order.amount, order.cost) == (Decimal("0.002"), Decimal("90"))
    found = await venue.find(ex, cid)
    assert found is not None
    assert found["filled"] == 0.002


async def test_market_sell_by_amount_credits_quote(venue: Venue, ex: Any, account: Account) -> None:
    cid = client_id("sell")
    await ex.create_order("BTC/USD", "market", "sell", 0.01, None, {"clientOrderId": cid})
    assert account.balances == {"USD": Decimal("10450"), "BTC": Decimal("0.99")}
    found = await venue.find(ex, cid)
    assert found is not None
    assert (found["side"], found["filled"]) == ("sell", 0.01)


async def test_fetch_order_by_venue_order_id_returns_the_fill(ex: Any) -> None:
    # kraken: QueryOrders by txid; binance: GET /api/v3/order?orderId; okx: GET trade/order?ordId
    placed = await ex.create_order(
        "BTC/USD", "market", "buy", 0.001, None, {"clientOrderId": client_id("by-id")}
    )
    fetched = await ex.fetch_order(placed["id"], "BTC/USD")
    assert (fetched["id"], fetched["clientOrderId"]) == (placed["id"], client_id("by-id"))
    assert (fetched["status"], fetched["filled"], fetched["cost"]) == ("closed", 0.001, 45)


async def test_find_order_by_unknown_client_order_id_finds_nothing(venue: Venue, ex: Any) -> None:
    await ex.create_order("BTC/USD", "market", "buy", 0.001, None, {"clientOrderId": client_id("other")})
    assert await venue.find(ex, client_id("never-placed")) is None


async def test_fetch_my_trades_lists_fills_since_a_time(ex: Any, account: Account) -> None:
    await ex.create_order("BTC/USD", "market", "buy", 0.002, None)
    await ex.create_order("BTC/USD", "market", "sell", 0.001, None)
    account.orders[0].created -= 10  # two distinct fill times, whatever the clock resolution
    trades = await ex.fetch_my_trades("BTC/USD")
    assert [(t["side"], t["amount"], t["price"]) for t in trades] == [
        ("buy", 0.002, 45000),
        ("sell", 0.001, 45000),
    ]
    assert [t["order"] for t in trades] == [o.order_id for o in account.orders]
    since = trades[-1]["timestamp"]
    later = await ex.fetch_my_trades("BTC/USD", since)
    assert [t["id"] for t in later] == [trades[-1]["id"]]


@pytest.mark.parametrize(("amount", "kind"), [(0.000001, "amount"), (0.00001, "cost")])
async def test_order_below_venue_minimum_raises_venue_error(
    venue: Venue,
    ex: Any,
    account: Account,
    amount: float,
    kind: str,
) -> None:
    # 0.000001 BTC is under the 0.00001 minimum; 0.00001 BTC = 0.45 USD is under the 0.5 minimum
    expected = venue.below_min_amount_error if kind == "amount" else venue.below_min_cost_error
    await _raises(expected, ex.create_order("BTC/USD", "market", "buy", amount, None))
    assert account.orders == []


async def test_buy_beyond_balance_raises_insufficient_funds(ex: Any, account: Account) -> None:
    await _raises(ccxt.InsufficientFunds, ex.create_order("BTC/USD", "market", "buy", 1, None))
    assert account.orders == []
    assert account.balances == BALANCES


# --- limit IOC orders ------------------------------------------------------------------------


async def test_limit_ioc_buy_at_or_above_the_price_fills_whole_at_the_venue_price(
    venue: Venue,
    ex: Any,
    account: Account,
) -> None:
    cid = client_id("limit-buy")
    placed = await limit_ioc(ex, "buy", 0.001, 45450, cid)
    found = await venue.find(ex, cid)
    order = account.order_by_client_id(cid)
    assert order is not None
    assert placed["id"] == order.order_id
    assert account.balances == {"USD": Decimal("9955"), "BTC": Decimal("1.001")}
    assert found is not None
    assert (found["id"], found["status"]) == (order.order_id, "closed")
    assert (found["type"], found["side"], found["price"]) == ("limit", "buy", 45450)
    assert (found["amount"], found["filled"], found["average"]) == (0.001, 0.001, 45000)


async def test_limit_ioc_buy_below_the_price_ends_unfilled_and_moves_no_funds(
    venue: Venue,
    ex: Any,
    account: Account,
) -> None:
    cid = client_id("limit-buy-unfilled")
    await limit_ioc(ex, "buy", 0.001, 44000, cid)
    found = await venue.find(ex, cid)
    assert account.balances == BALANCES
    assert account.orders[0].status == "canceled"
    assert found is not None
    assert found["status"] == venue.unfilled_ioc_status
    assert (found["type"], found["price"], found["amount"]) == ("limit", 44000, 0.001)
    assert (found["filled"], found["average"]) == (0, None)
    assert await ex.fetch_open_orders("BTC/USD") == []  # an IOC never rests


async def test_limit_ioc_sell_fills_at_or_below_the_price_and_not_above_it(
    venue: Venue,
    ex: Any,
    account: Account,
) -> None:
    await limit_ioc(ex, "sell", 0.01, 44550, client_id("sell-fills"))
    await limit_ioc(ex, "sell", 0.01, 46000, client_id("sell-unfilled"))
    fills = await venue.find(ex, client_id("sell-fills"))
    unfilled = await venue.find(ex, client_id("sell-unfilled"))
    assert account.balances == {"USD": Decimal("10450"), "BTC": Decimal("0.99")}
    assert fills is not None
    assert (fills["status"], fills["filled"], fills["average"]) == (
        "closed",
        0.01,
        45000,
    )
    assert unfilled is not None
    assert (unfilled["status"], unfilled["filled"]) == (venue.unfilled_ioc_status, 0)
    assert [t["order"] for t in await ex.fetch_my_trades("BTC/USD")] == [fills["id"]]


async def test_limit_ioc_order_is_fetched_by_venue_order_id(ex: Any) -> None:
    placed = await limit_ioc(ex, "buy", 0.001, 45000, client_id("limit-by-id"))
    fetched = await ex.fetch_order(placed["id"], "BTC/USD")
    assert (fetched["clientOrderId"], fetched["status"], fetched["type"]) == (
        client_id("limit-by-id"),
        "closed",
        "limit",
    )
    assert (fetched["price"], fetched["filled"], fetched["cost"]) == (45000, 0.001, 45)


async def test_limit_price_off_the_venue_tick_is_refused_and_places_nothing(
    venue: Venue,
    ex: Any,
    emulator: EmulatorServer,
    account: Account,
) -> None:
    # the venue coarsened its tick after the client cached markets: ccxt still rounds to 0.1
    market = emulator.state.markets["BTC/USD"]
    emulator.state.markets["BTC/USD"] = replace(market, price_step=Decimal(1))
    await _raises(venue.off_tick_error, limit_ioc(ex, "buy", 0.001, 45000.5, client_id("tick")))
    assert account.orders == []
    assert account.balances == BALANCES


async def test_limit_buy_needs_funds_at_its_limit_price(ex: Any, account: Account) -> None:
    # 0.222 BTC: $9,990 at the venue's price, $10,089.90 at the limit, with $10,000 of cash
    await _raises(ccxt.InsufficientFunds, limit_ioc(ex, "buy", 0.222, 45450, client_id("funds")))
    assert account.orders == []
    assert account.balances == BALANCES


async def test_limit_order_resting_on_the_book_is_listed_open(ex: Any, account: Account) -> None:
    cid = client_id("gtc")
    await ex.create_order("BTC/USD", "limit", "buy", 0.001, 44000, {"clientOrderId": cid})

    listed = await ex.fetch_open_orders("BTC/USD")

    assert [(o["clientOrderId"], o["status"], o["filled"], o["amount"], o["price"]) for o in listed] == [
        (cid, "open", 0.0, 0.001, 44000.0)
    ]
    assert [(o.status, o.amount) for o in account.orders] == [("open", Decimal(0))]
    assert account.balances == BALANCES


# --- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault", [f for f in Fault if f is not Fault.TIMEOUT_AFTER_ACCEPT], ids=lambda f: f.value
)
async def test_order_fault_raises_venue_error_class_and_places_nothing(
    venue: Venue,
    ex: Any,
    account: Account,
    fault: Fault,
) -> None:
    account.faults.append(fault)
    cid = client_id(f"fault-{fault.value}")
    error = await _raises(
        venue.fault_errors[fault],
        ex.create_order("BTC/USD", "market", "buy", 0.001, None, {"clientOrderId": cid}),
    )
    if fault in (Fault.HTTP_500, Fault.RATE_LIMIT):
        assert isinstance(error, ccxt.OperationFailed)  # the retryable family
    assert account.orders == []
    assert account.faults == []
    assert await venue.find(ex, cid) is None
    await ex.create_order("BTC/USD", "market", "buy", 0.001, None, {"clientOrderId": cid})
    assert account.order_by_client_id(cid) is not None  # the fault hit one request only


@pytest.mark.parametrize(
    "fault", [f for f in Fault if f is not Fault.TIMEOUT_AFTER_ACCEPT], ids=lambda f: f.value
)
async def test_limit_order_fault_raises_the_market_order_error_and_places_nothing(
    venue: Venue,
    ex: Any,
    account: Account,
    fault: Fault,
) -> None:
    account.faults.append(fault)
    await _raises(venue.fault_errors[fault], limit_ioc(ex, "buy", 0.001, 45450, client_id("f")))
    assert account.orders == []
    assert account.faults == []


async def test_timeout_after_accept_on_a_limit_order_leaves_it_findable(
    venue: Venue,
    ex: Any,
    emulator: EmulatorServer,
    account: Account,
) -> None:
    emulator.state.timeout_hold_s = 2.0
    ex.timeout = 500  # ms
    account.faults.append(Fault.TIMEOUT_AFTER_ACCEPT)
    cid = client_id("limit-timeout")
    await _raises(ccxt.RequestTimeout, limit_ioc(ex, "buy", 0.001, 44000, cid))
    found = await venue.find(ex, cid)
    assert found is not None
    assert (found["status"], found["filled"]) == (venue.unfilled_ioc_status, 0)


async def test_timeout_after_accept_raises_request_timeout_and_order_exists(
    venue: Venue,
    ex: Any,
    emulator: EmulatorServer,
    account: Account,
) -> None:
    emulator.state.timeout_hold_s = 2.0
    ex.timeout = 500  # ms
    account.faults.append(Fault.TIMEOUT_AFTER_ACCEPT)
    cid = client_id("timeout")
    await _raises(
        ccxt.RequestTimeout, ex.create_order("BTC/USD", "market", "buy", 0.001, None, {"clientOrderId": cid})
    )
    found = await venue.find(ex, cid)  # what an adapter must do before any retry
    assert found is not None
    assert found["filled"] == 0.001
    assert account.order_by_client_id(cid) is not None


# --- authentication --------------------------------------------------------------------------


async def test_unknown_api_key_raises_authentication_error(
    venue: Venue,
    emulator: EmulatorServer,
    account: Account,
) -> None:
    stranger = venue.connect(emulator.url, "unknown-key", venue.secret, venue.passphrase)
    try:
        await _raises(ccxt.AuthenticationError, stranger.fetch_balance())
    finally:
        await stranger.close()


async def test_wrong_secret_raises_venue_auth_error(
    venue: Venue,
    emulator: EmulatorServer,
    account: Account,
) -> None:
    wrong = base64.b64encode(b"not-the-secret" * 4).decode()
    impostor = venue.connect(emulator.url, KEY, wrong, venue.passphrase)
    try:
        await _raises(venue.wrong_secret_error, impostor.fetch_balance())
    finally:
        await impostor.close()


@only("okx")
async def test_okx_wrong_passphrase_raises_authentication_error(
    emulator: EmulatorServer,
    venue: Venue,
    account: Account,
) -> None:
    client = okx_client(emulator.url, KEY, venue.secret, "wrong-passphrase")
    try:
        await _raises(ccxt.AuthenticationError, client.fetch_balance())
    finally:
        await client.close()


@only("binance")
async def test_binance_invalid_key_after_a_successful_call_raises_ddos_protection(
    ex: Any,
    account: Account,
) -> None:
    # ccxt reads -2015 on a client that already authenticated once as a temporary ban
    await ex.fetch_balance()
    account.faults.append(Fault.INVALID_KEY)
    await _raises(ccxt.DDoSProtection, ex.create_order("BTC/USD", "market", "buy", 0.001, None))


@only("kraken")
async def test_kraken_stale_nonce_raises_invalid_nonce(ex: Any, account: Account) -> None:
    account.last_nonce = 10**15  # as if another process had used the key with a later nonce
    await _raises(ccxt.InvalidNonce, ex.fetch_balance())


# --- OKX algo orders (stop-loss, take-profit) --------------------------------------------------

# as the adapter sends an OKX stop (shared.exchange.ccxt_orders): ccxt makes a conditional algo order
OKX_STOP = {"stopLossPrice": 44000.0, "tdMode": "cash"}


def okx_stop(ex: Any, cid: str, limit: float | None = None, **params: Any) -> Awaitable[Any]:
    kind = "market" if limit is None else "limit"
    extra = OKX_STOP | {"algoClOrdId": cid} | params
    return cast(Awaitable[Any], ex.create_order("BTC/USD", kind, "sell", 0.01, limit, extra))


@only("okx")
async def test_okx_stop_loss_is_an_algo_order_found_by_its_algo_client_id(ex: Any) -> None:
    cid = client_id("okx-algo-found")

    placed = await okx_stop(ex, cid, limit=43800.0)
    found = await ex.fetch_order(None, "BTC/USD", {"trigger": True, "clientOrderId": cid})
    pending = await ex.fetch_open_orders("BTC/USD", params={"ordType": "conditional"})
    ordinary = await ex.fetch_open_orders("BTC/USD")

    assert found["id"] == placed["id"]
    assert (found["status"], found["amount"], found["side"]) == ("open", 0.01, "sell")
    assert (found["info"]["ordType"], found["info"]["algoClOrdId"]) == ("conditional", cid)
    assert (found["info"]["slTriggerPx"], found["info"]["slOrdPx"]) == ("44000", "43800")
    assert [o["id"] for o in pending] == [placed["id"]]
    assert ordinary == []


@only("okx")
async def test_okx_algo_order_is_no_ordinary_order_before_it_triggers(ex: Any) -> None:
    cid = client_id("okx-algo-not-ordinary")
    await okx_stop(ex, cid)

    await _raises(ccxt.OrderNotFound, ex.fetch_order(None, "BTC/USD", {"clientOrderId": cid}))


@only("okx")
async def test_okx_triggered_stop_places_an_order_naming_its_algo(ex: Any, emulator: EmulatorServer) -> None:
    cid = client_id("okx-algo-triggered")
    placed = await okx_stop(ex, cid)

    emulator.state.set_price("BTC/USD", Decimal("43900"))
    algo = await ex.fetch_order(placed["id"], "BTC/USD", {"trigger": True})
    child = await ex.fetch_order(algo["info"]["ordId"], "BTC/USD")
    pending = await ex.fetch_open_orders("BTC/USD", params={"ordType": "conditional"})
    effective = await ex.private_get_trade_orders_algo_history(
        {"ordType": "conditional", "state": "effective"}
    )

    assert algo["status"] == "closed"  # effective
    assert (child["status"], child["filled"], child["average"]) == ("closed", 0.01, 43900.0)
    assert (child["info"]["algoId"], child["info"]["algoClOrdId"]) == (placed["id"], cid)
    assert child["clientOrderId"] != cid  # the order's own clOrdId: ccxt's, sent with the algo
    assert pending == []
    assert [a["algoId"] for a in effective["data"]] == [placed["id"]]


@only("okx")
async def test_okx_cancel_algos_cancels_a_waiting_stop(ex: Any, emulator: EmulatorServer) -> None:
    cid = client_id("okx-algo-cancel")
    placed = await okx_stop(ex, cid)

    await ex.cancel_order(placed["id"], "BTC/USD", {"trigger": True})
    emulator.state.set_price("BTC/USD", Decimal("43900"))
    found = await ex.fetch_order(None, "BTC/USD", {"trigger": True, "clientOrderId": cid})
    again = ex.cancel_order(placed["id"], "BTC/USD", {"trigger": True})

    assert found["status"] == "canceled"
    assert found["info"]["ordId"] == ""
    await _raises(ccxt.OrderNotFound, again)  # 51400: not live any more


@only("okx")
async def test_okx_stop_whose_trigger_the_price_passed_is_refused(ex: Any, account: Account) -> None:
    # a sell stop-loss above the last price (45,000) would fire at once: OKX refuses it, 51280
    call = okx_stop(ex, client_id("okx-algo-passed"), stopLossPrice=45500.0)

    await _raises(ccxt.InvalidOrder, call)
    assert account.orders == []


@only("okx")
async def test_okx_take_profit_buy_sized_in_base_rests_until_the_price_falls(
    ex: Any, emulator: EmulatorServer
) -> None:
    cid = client_id("okx-algo-tp-buy")
    params = {"takeProfitPrice": 44000.0, "tdMode": "cash", "algoClOrdId": cid}

    placed = await ex.create_order("BTC/USD", "market", "buy", 0.01, None, params)
    emulator.state.set_price("BTC/USD", Decimal("44500"))
    waiting = await ex.fetch_order(placed["id"], "BTC/USD", {"trigger": True})
    emulator.state.set_price("BTC/USD", Decimal("43900"))
    fired = await ex.fetch_order(placed["id"], "BTC/USD", {"trigger": True})

    assert (waiting["status"], waiting["info"]["tgtCcy"], waiting["info"]["tpOrdPx"]) == (
        "open",
        "base_ccy",
        "-1",
    )
    assert fired["status"] == "closed"
