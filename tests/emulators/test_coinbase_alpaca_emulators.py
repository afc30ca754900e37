"""The real ccxt coinbase client and the real alpaca-py TradingClient against the emulators."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any, TypeVar

import ccxt.async_support as ccxt
import pytest
import pytest_asyncio
import requests
from alpaca.common.exceptions import APIError
from alpaca.common.types import RawData
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, OrderStatus, OrderType, TimeInForce
from alpaca.trading.models import Asset, Position, TradeAccount, TradeActivity
from alpaca.trading.models import Order as AlpacaOrder
from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest, StopOrderRequest

from tests.emulators.alpaca import AlpacaEmulator
from tests.emulators.coinbase import CoinbaseEmulator
from tests.emulators.state import Fault

pytestmark = pytest.mark.asyncio

# A legacy Coinbase key: not "organizations/...", not PEM, not 88 chars, no trailing "=",
# so ccxt signs with HMAC (CB-ACCESS-*) rather than a CDP JWT.
CB_KEY, CB_SECRET = "cb-test-key", "cb-test-secret"
AP_KEY, AP_SECRET = "PKTESTKEY", "test-secret-key"
M = TypeVar("M")


def coinbase_client(url: str, secret: str = CB_SECRET, **config: Any) -> ccxt.coinbase:
    lean = {
        "has": {"fetchCurrencies": False},  # skips 3 throttled v2 calls in load_markets
        "options": {"fetchBalance": "v3PrivateGetBrokerageAccounts"},  # Advanced Trade, not v2
    }
    exchange = ccxt.coinbase(
        {
            "apiKey": CB_KEY,
            "secret": secret,
            "timeout_on_exit": 0,  # no TLS
            **lean,
            **config,
        }
    )
    exchange.urls["api"] = {"rest": url}
    return exchange


def trading_client(url: str, secret: str = AP_SECRET, timeout_s: float = 5.0) -> TradingClient:
    client = TradingClient(AP_KEY, secret, paper=True, url_override=url)
    client._retry = 0  # alpaca-py retries 429/504 itself, 3 times 3 s apart
    # alpaca-py sets no HTTP timeout: bind one onto its requests session
    client._session.request = functools.partial(  # type: ignore[method-assign]
        client._session.request, timeout=timeout_s
    )
    return client


@pytest_asyncio.fixture
async def coinbase() -> AsyncIterator[CoinbaseEmulator]:
    emulator = CoinbaseEmulator()
    emulator.state.add_account(CB_KEY, CB_SECRET, {"USD": Decimal("10000"), "BTC": Decimal("1")})
    async with emulator:
        yield emulator


@pytest_asyncio.fixture
async def cb(coinbase: CoinbaseEmulator) -> AsyncIterator[ccxt.coinbase]:
    exchange = coinbase_client(coinbase.url)
    try:
        await exchange.load_markets()
        yield exchange
    finally:
        await exchange.close()


@pytest_asyncio.fixture
async def alpaca() -> AsyncIterator[AlpacaEmulator]:
    emulator = AlpacaEmulator()
    emulator.state.add_account(AP_KEY, AP_SECRET, {"USD": Decimal("10000"), "BTC": Decimal("0.5")})
    async with emulator:
        yield emulator


@pytest.fixture
def client(alpaca: AlpacaEmulator) -> Iterator[TradingClient]:
    trading = trading_client(alpaca.url)
    yield trading
    trading._session.close()


def market_order(symbol: str, side: OrderSide, **size: Any) -> MarketOrderRequest:
    tif = TimeInForce.GTC if "/" in symbol else TimeInForce.DAY
    return MarketOrderRequest(symbol=symbol, side=side, time_in_force=tif, **size)


def limit_ioc(
    symbol: str, side: OrderSide, qty: float, price: float, client_order_id: str | None = None
) -> LimitOrderRequest:
    return LimitOrderRequest(
        symbol=symbol,
        side=side,
        qty=qty,
        limit_price=price,
        time_in_force=TimeInForce.IOC,
        client_order_id=client_order_id,
    )


def cb_limit_ioc(cb: ccxt.coinbase, side: str, amount: float, price: float, cid: str) -> Any:
    # ccxt drops the unified clientOrderId for coinbase: the raw client_order_id param is kept
    return cb.create_order(
        "BTC/USD", "limit", side, amount, price, {"timeInForce": "IOC", "client_order_id": cid}
    )


async def submit(
    client: TradingClient,
    order: MarketOrderRequest | LimitOrderRequest,
) -> AlpacaOrder:
    return await model(AlpacaOrder, client.submit_order, order)


async def model(kind: type[M], call: Callable[..., M | RawData], *args: Any) -> M:
    """`call(*args)` off the loop: alpaca-py's model (its type also allows the raw dict,
    returned only with raw_data=True)."""
    value = await asyncio.to_thread(call, *args)
    assert isinstance(value, kind)
    return value


async def api_error(call: Any, *args: Any) -> APIError:
    with pytest.raises(APIError) as raised:
        await asyncio.to_thread(call, *args)
    return raised.value


# -- Coinbase ----------------------------------------------------------------------------------


async def test_load_markets_maps_products_to_precision_and_minimums(cb: ccxt.coinbase) -> None:
    btc, eth = cb.market("BTC/USD"), cb.market("ETH/USD")

    assert (btc["id"], btc["spot"], eth["id"]) == ("BTC-USD", True, "ETH-USD")
    assert (btc["precision"]["amount"], btc["precision"]["price"]) == (1e-08, 0.1)
    assert (btc["limits"]["amount"]["min"], btc["limits"]["cost"]["min"]) == (1e-05, 0.5)
    assert (eth["precision"]["price"], eth["limits"]["amount"]["min"]) == (0.01, 0.0001)


async def test_default_client_loads_markets_and_balance_through_v2_calls(
    coinbase: CoinbaseEmulator,
) -> None:
    exchange = coinbase_client(coinbase.url, has={}, options={})  # ccxt's own defaults
    try:
        markets = await exchange.load_markets()
        balance = await exchange.fetch_balance()
    finally:
        await exchange.close()

    assert set(markets) == {"BTC/USD", "ETH/USD"}
    assert {"BTC", "ETH", "USD"} <= set(exchange.currencies)
    assert (balance["USD"]["total"], balance["BTC"]["total"]) == (10000.0, 1.0)


async def test_fetch_balance_reports_available_per_currency(cb: ccxt.coinbase) -> None:
    balance = await cb.fetch_balance()

    assert balance["USD"] == {"free": 10000.0, "used": 0.0, "total": 10000.0}
    assert (balance["BTC"]["free"], balance["ETH"]["total"]) == (1.0, 0.0)


async def test_fetch_ticker_returns_state_price(cb: ccxt.coinbase) -> None:
    ticker = await cb.fetch_ticker("ETH/USD")

    assert (ticker["symbol"], ticker["last"], ticker["bid"], ticker["ask"]) == (
        "ETH/USD",
        3000.0,
        3000.0,
        3000.0,
    )


async def test_market_buy_by_base_fills_exact_base_size(
    coinbase: CoinbaseEmulator,
    cb: ccxt.coinbase,
) -> None:
    # ccxt turns every spot market buy into quote_size; base_size needs the raw configuration
    config = {"market_market_ioc": {"base_size": cb.amount_to_precision("BTC/USD", 0.01)}}
    params = {"createMarketBuyOrderRequiresPrice": False, "order_configuration": config}

    placed = await cb.create_order("BTC/USD", "market", "buy", 0.01, None, params)
    order = await cb.fetch_order(placed["id"])

    assert (order["status"], order["amount"], order["filled"], order["average"]) == (
        "closed",
        0.01,
        0.01,
        45000.0,
    )
    assert coinbase.state.accounts[CB_KEY].balances["USD"] == Decimal("9550")


async def test_market_buy_by_cost_spends_quote_size(
    coinbase: CoinbaseEmulator,
    cb: ccxt.coinbase,
) -> None:
    placed = await cb.create_market_buy_order_with_cost("BTC/USD", 100)
    order = await cb.fetch_order(placed["id"])

    assert order["info"]["order_configuration"] == {"market_market_ioc": {"quote_size": "100"}}
    assert (order["filled"], order["info"]["size_in_quote"]) == (0.00222222, True)
    assert coinbase.state.accounts[CB_KEY].balances["BTC"] == Decimal("1.00222222")


async def test_market_sell_by_base_credits_quote(
    coinbase: CoinbaseEmulator,
    cb: ccxt.coinbase,
) -> None:
    placed = await cb.create_order("BTC/USD", "market", "sell", 0.5)
    order = await cb.fetch_order(placed["id"])

    assert (order["side"], order["filled"], order["cost"]) == ("sell", 0.5, 22500.0)
    assert coinbase.state.accounts[CB_KEY].balances == {"USD": Decimal("32500"), "BTC": Decimal("0.5")}


async def test_client_order_id_is_recorded_and_found_in_order_history(
    cb: ccxt.coinbase,
) -> None:
    placed = await cb.create_order("BTC/USD", "market", "sell", 0.1, params={"client_order_id": "cid-sell-1"})
    await cb.create_market_buy_order_with_cost("ETH/USD", 30, {"client_order_id": "cid-buy-2"})

    history = await cb.fetch_orders()
    found = next(o for o in history if o["clientOrderId"] == "cid-sell-1")

    assert placed["clientOrderId"] == "cid-sell-1"
    assert (found["id"], found["status"], found["filled"]) == (placed["id"], "closed", 0.1)
    assert {o["clientOrderId"] for o in history} == {"cid-sell-1", "cid-buy-2"}


async def test_reused_client_order_id_returns_first_order_without_second_fill(
    coinbase: CoinbaseEmulator,
    cb: ccxt.coinbase,
) -> None:
    first = await cb.create_order("BTC/USD", "market", "sell", 0.1, params={"client_order_id": "x"})
    again = await cb.create_order("BTC/USD", "market", "sell", 0.1, params={"client_order_id": "x"})

    assert again["id"] == first["id"]
    assert len(coinbase.state.accounts[CB_KEY].orders) == 1


async def test_fetch_my_trades_lists_fills_in_base_units(cb: ccxt.coinbase) -> None:
    sell = await cb.create_order("BTC/USD", "market", "sell", 0.1)
    buy = await cb.create_market_buy_order_with_cost("BTC/USD", 90)

    trades = {t["order"]: t for t in await cb.fetch_my_trades("BTC/USD")}

    assert (trades[sell["id"]]["side"], trades[sell["id"]]["amount"]) == ("sell", 0.1)
    assert (trades[buy["id"]]["amount"], trades[buy["id"]]["cost"]) == (0.002, 90.0)


async def test_wrong_secret_is_refused_with_authentication_error(
    coinbase: CoinbaseEmulator,
) -> None:
    exchange = coinbase_client(coinbase.url, secret="not-the-secret")
    try:
        with pytest.raises(ccxt.AuthenticationError):
            await exchange.fetch_balance()
    finally:
        await exchange.close()


CB_FAULTS = pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.HTTP_500, ccxt.ExchangeError),  # ccxt maps Coinbase's JSON 5xx to plain ExchangeError
        (Fault.RATE_LIMIT, ccxt.RateLimitExceeded),
        (Fault.INSUFFICIENT_FUNDS, ccxt.InsufficientFunds),
        (Fault.INVALID_KEY, ccxt.AuthenticationError),
        (Fault.MIN_NOT_MET, ccxt.ExchangeError),  # PREVIEW_INVALID_*_SIZE_TOO_SMALL is unmapped
    ],
)


@CB_FAULTS
async def test_order_fault_raises_ccxt_error_and_places_nothing(
    coinbase: CoinbaseEmulator,
    cb: ccxt.coinbase,
    fault: Fault,
    error: type[Exception],
) -> None:
    account = coinbase.state.accounts[CB_KEY]
    account.faults.append(fault)

    with pytest.raises(ccxt.BaseError) as raised:
        await cb.create_order("BTC/USD", "market", "sell", 0.1)

    assert raised.type is error
    assert (account.orders, account.faults, account.balances["BTC"]) == ([], [], Decimal(1))


@pytest.mark.parametrize(
    ("size", "error", "text"),
    [
        (50, ccxt.InsufficientFunds, "PREVIEW_INSUFFICIENT_FUND"),
        (0.000001, ccxt.ExchangeError, "PREVIEW_INVALID_BASE_SIZE_TOO_SMALL"),
    ],
)
async def test_sell_refused_by_state_raises_venue_error(
    cb: ccxt.coinbase,
    size: float,
    error: type[Exception],
    text: str,
) -> None:
    with pytest.raises(ccxt.BaseError) as raised:
        await cb.create_order("BTC/USD", "market", "sell", size)

    assert raised.type is error
    assert text in str(raised.value)


async def test_timeout_after_accept_raises_request_timeout_but_order_exists(
    coinbase: CoinbaseEmulator,
    cb: ccxt.coinbase,
) -> None:
    coinbase.state.accounts[CB_KEY].faults.append(Fault.TIMEOUT_AFTER_ACCEPT)
    cb.timeout = 300  # ms

    with pytest.raises(ccxt.RequestTimeout):
        await cb.create_order("BTC/USD", "market", "sell", 0.1, params={"client_order_id": "t-1"})
    cb.timeout = 10_000
    history = await cb.fetch_orders("BTC/USD")

    assert [(o["clientOrderId"], o["status"], o["filled"]) for o in history] == [("t-1", "closed", 0.1)]


# -- Coinbase limit IOC (sor_limit_ioc) --------------------------------------------------------


async def test_limit_ioc_buy_at_or_above_the_price_fills_at_the_venue_price(
    coinbase: CoinbaseEmulator,
    cb: ccxt.coinbase,
) -> None:
    placed = await cb_limit_ioc(cb, "buy", 0.001, 45450, "lim-buy")
    order = await cb.fetch_order(placed["id"])

    assert order["info"]["order_configuration"] == {
        "sor_limit_ioc": {"base_size": "0.001", "limit_price": "45450"}
    }
    assert (order["status"], order["type"], order["timeInForce"], order["price"]) == (
        "closed",
        "limit",
        "IOC",
        45450.0,
    )
    assert (order["amount"], order["filled"], order["average"]) == (0.001, 0.001, 45000.0)
    assert coinbase.state.accounts[CB_KEY].balances == {"USD": Decimal("9955"), "BTC": Decimal("1.001")}


async def test_limit_ioc_buy_below_the_price_is_cancelled_unfilled(
    coinbase: CoinbaseEmulator,
    cb: ccxt.coinbase,
) -> None:
    await cb_limit_ioc(cb, "buy", 0.001, 44000, "lim-unfilled")
    history = await cb.fetch_orders("BTC/USD")
    found = next(o for o in history if o["clientOrderId"] == "lim-unfilled")

    assert (found["info"]["status"], found["status"]) == ("CANCELLED", "canceled")
    assert (found["filled"], found["average"], found["price"]) == (0.0, None, 44000.0)
    assert await cb.fetch_my_trades("BTC/USD") == []
    assert coinbase.state.accounts[CB_KEY].balances == {"USD": Decimal(10000), "BTC": Decimal(1)}


async def test_limit_ioc_sell_fills_at_or_below_the_price_and_not_above_it(
    coinbase: CoinbaseEmulator,
    cb: ccxt.coinbase,
) -> None:
    await cb_limit_ioc(cb, "sell", 0.1, 44550, "sell-fills")
    await cb_limit_ioc(cb, "sell", 0.1, 46000, "sell-unfilled")
    found = {o["clientOrderId"]: o for o in await cb.fetch_orders("BTC/USD")}

    assert (found["sell-fills"]["status"], found["sell-fills"]["filled"]) == ("closed", 0.1)
    assert (found["sell-unfilled"]["status"], found["sell-unfilled"]["filled"]) == ("canceled", 0.0)
    assert coinbase.state.accounts[CB_KEY].balances == {"USD": Decimal("14500"), "BTC": Decimal("0.9")}


async def test_limit_price_off_the_product_increment_is_refused(
    coinbase: CoinbaseEmulator,
    cb: ccxt.coinbase,
) -> None:
    # the product's increment grew after ccxt cached markets: it still rounds to 0.1
    market = coinbase.state.markets["BTC/USD"]
    coinbase.state.markets["BTC/USD"] = dataclasses.replace(market, price_step=Decimal(1))

    with pytest.raises(ccxt.BaseError) as raised:
        await cb_limit_ioc(cb, "buy", 0.001, 45000.5, "off-tick")

    assert raised.type is ccxt.ExchangeError  # INVALID_PRICE_PRECISION is unmapped
    assert "PREVIEW_INVALID_PRICE_PRECISION" in str(raised.value)
    assert coinbase.state.accounts[CB_KEY].orders == []


async def test_limit_buy_needs_funds_at_its_limit_price(
    coinbase: CoinbaseEmulator,
    cb: ccxt.coinbase,
) -> None:
    with pytest.raises(ccxt.InsufficientFunds):  # $9,990 at the price, $10,089.90 at the limit
        await cb_limit_ioc(cb, "buy", 0.222, 45450, "lim-funds")

    assert coinbase.state.accounts[CB_KEY].orders == []


@CB_FAULTS
async def test_limit_order_fault_raises_the_market_order_error(
    coinbase: CoinbaseEmulator,
    cb: ccxt.coinbase,
    fault: Fault,
    error: type[Exception],
) -> None:
    account = coinbase.state.accounts[CB_KEY]
    account.faults.append(fault)

    with pytest.raises(ccxt.BaseError) as raised:
        await cb_limit_ioc(cb, "sell", 0.1, 44550, "lim-fault")

    assert raised.type is error
    assert (account.orders, account.faults) == ([], [])


async def test_timeout_after_accept_on_a_limit_order_leaves_it_findable(
    coinbase: CoinbaseEmulator,
    cb: ccxt.coinbase,
) -> None:
    coinbase.state.accounts[CB_KEY].faults.append(Fault.TIMEOUT_AFTER_ACCEPT)
    cb.timeout = 300  # ms

    with pytest.raises(ccxt.RequestTimeout):
        await cb_limit_ioc(cb, "buy", 0.001, 44000, "lim-timeout")
    cb.timeout = 10_000
    history = await cb.fetch_orders("BTC/USD")

    assert [(o["clientOrderId"], o["status"], o["filled"]) for o in history] == [
        ("lim-timeout", "canceled", 0.0)
    ]


# -- Alpaca ------------------------------------------------------------------------------------


async def test_get_asset_reports_crypto_order_rules(client: TradingClient) -> None:
    raw: Any = await asyncio.to_thread(client.get, "/assets/BTC/USD")
    stock = await model(Asset, client.get_asset, "AAPL")

    assert (raw["symbol"], raw["class"], raw["tradable"], raw["fractionable"]) == (
        "BTC/USD",
        "crypto",
        True,
        True,
    )
    assert (raw["min_order_size"], raw["min_trade_increment"], raw["price_increment"]) == (
        "0.00001",
        "0.00000001",
        "0.1",
    )
    assert (stock.symbol, stock.asset_class, stock.fractionable) == ("AAPL", "us_equity", True)


async def test_get_account_values_holdings_at_state_price(client: TradingClient) -> None:
    account = await model(TradeAccount, client.get_account)

    assert (account.cash, account.buying_power) == ("10000", "10000")
    assert (account.equity, account.portfolio_value, account.long_market_value) == ("32500", "32500", "22500")


async def test_market_buy_by_qty_fills_and_opens_stock_position(client: TradingClient) -> None:
    order = await submit(client, market_order("AAPL", OrderSide.BUY, qty=1.5))
    position = await model(Position, client.get_open_position, "AAPL")

    assert (order.status, order.qty, order.filled_qty, order.filled_avg_price) == (
        OrderStatus.FILLED,
        "1.5",
        "1.5",
        "190",
    )
    assert (position.qty, position.market_value, position.current_price) == ("1.5", "285", "190")


async def test_market_buy_by_notional_fills_crypto(
    alpaca: AlpacaEmulator,
    client: TradingClient,
) -> None:
    order = await submit(client, market_order("BTC/USD", OrderSide.BUY, notional=100))

    assert (order.symbol, order.notional, order.qty, order.filled_qty) == (
        "BTC/USD",
        "100",
        None,
        "0.00222222",
    )
    assert alpaca.state.accounts[AP_KEY].balances["USD"] == Decimal("9900.0001")


async def test_market_sell_closes_crypto_position(client: TradingClient) -> None:
    before = await model(Position, client.get_open_position, "BTC/USD")
    order = await submit(client, market_order("BTC/USD", OrderSide.SELL, qty=0.5))
    missing = await api_error(client.get_open_position, "BTCUSD")

    assert (before.symbol, before.qty, before.market_value) == ("BTCUSD", "0.5", "22500")
    assert (order.side, order.filled_qty) == (OrderSide.SELL, "0.5")
    assert (missing.status_code, missing.code) == (404, 40410000)


async def test_client_order_id_finds_order_and_refuses_reuse(client: TradingClient) -> None:
    placed = await submit(
        client, market_order("ETH/USD", OrderSide.BUY, notional=50, client_order_id="cid-1")
    )
    found = await model(AlpacaOrder, client.get_order_by_client_id, "cid-1")
    reused = await api_error(
        client.submit_order, market_order("ETH/USD", OrderSide.BUY, notional=50, client_order_id="cid-1")
    )

    assert (found.id, found.client_order_id, found.status) == (placed.id, "cid-1", OrderStatus.FILLED)
    assert (reused.status_code, reused.code, reused.message) == (
        422,
        40010001,
        "client_order_id must be unique",
    )


async def test_pending_submit_reply_shows_fill_only_on_later_get(
    alpaca: AlpacaEmulator,
    client: TradingClient,
) -> None:
    alpaca.fill_on_submit_reply = False

    reply = await submit(client, market_order("BTC/USD", OrderSide.BUY, qty=0.01))
    later = await model(AlpacaOrder, client.get_order_by_id, reply.id)

    assert (reply.status, reply.filled_qty, reply.filled_avg_price) == (OrderStatus.PENDING_NEW, "0", None)
    assert (later.status, later.filled_qty, later.filled_avg_price) == (OrderStatus.FILLED, "0.01", "45000")


async def test_fill_activities_list_fills_newest_first_with_paging(
    client: TradingClient,
) -> None:
    first = await submit(client, market_order("BTC/USD", OrderSide.SELL, qty=0.1))
    second = await submit(client, market_order("AAPL", OrderSide.BUY, notional=190))

    page: Any = await asyncio.to_thread(client.get, "/account/activities/FILL", {"page_size": 1})
    rest: Any = await asyncio.to_thread(
        client.get, "/account/activities/FILL", {"page_size": 1, "page_token": page[0]["id"]}
    )
    fills = [TradeActivity(**item) for item in page + rest]

    assert [(str(f.order_id), f.symbol, f.side, f.qty) for f in fills] == [
        (str(second.id), "AAPL", OrderSide.BUY, 1.0),
        (str(first.id), "BTC/USD", OrderSide.SELL, 0.1),
    ]


async def test_wrong_secret_is_refused_with_401(alpaca: AlpacaEmulator) -> None:
    stranger = trading_client(alpaca.url, secret="wrong")

    refused = await api_error(stranger.get_account)

    assert (refused.status_code, refused.code, refused.message) == (
        401,
        40110000,
        "request is not authorized",
    )


AP_FAULTS = pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        (Fault.HTTP_500, 500, 50010000),
        (Fault.RATE_LIMIT, 429, 42910000),
        (Fault.INSUFFICIENT_FUNDS, 403, 40310000),
        (Fault.INVALID_KEY, 401, 40110000),
        (Fault.MIN_NOT_MET, 403, 40310000),
    ],
)


@AP_FAULTS
async def test_order_fault_raises_api_error_and_places_nothing(
    alpaca: AlpacaEmulator,
    client: TradingClient,
    fault: Fault,
    status: int,
    code: int,
) -> None:
    account = alpaca.state.accounts[AP_KEY]
    account.faults.append(fault)

    refused = await api_error(client.submit_order, market_order("BTC/USD", OrderSide.SELL, qty=0.1))

    assert (refused.status_code, refused.code) == (status, code)
    assert (account.orders, account.faults, account.balances["BTC"]) == ([], [], Decimal("0.5"))


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ({"notional": 20000}, "insufficient balance for USD (requested: 20000, available: 10000)"),
        ({"notional": 0.25}, "cost basis must be >= minimal amount of order 0.5"),
    ],
)
async def test_buy_refused_by_state_raises_403(
    client: TradingClient,
    size: dict[str, float],
    message: str,
) -> None:
    refused = await api_error(client.submit_order, market_order("BTC/USD", OrderSide.BUY, **size))

    assert (refused.status_code, refused.code, refused.message) == (403, 40310000, message)


async def test_timeout_after_accept_times_out_client_but_order_exists(
    alpaca: AlpacaEmulator,
) -> None:
    alpaca.state.accounts[AP_KEY].faults.append(Fault.TIMEOUT_AFTER_ACCEPT)
    impatient, patient = trading_client(alpaca.url, timeout_s=0.3), trading_client(alpaca.url)
    order = market_order("BTC/USD", OrderSide.SELL, qty=0.1, client_order_id="t-1")

    with pytest.raises(requests.exceptions.ReadTimeout):
        await asyncio.to_thread(impatient.submit_order, order)
    found = await model(AlpacaOrder, patient.get_order_by_client_id, "t-1")

    assert (found.status, found.filled_qty) == (OrderStatus.FILLED, "0.1")


# -- Alpaca limit IOC --------------------------------------------------------------------------


async def test_limit_ioc_crypto_buy_within_its_price_fills_at_the_venue_price(
    alpaca: AlpacaEmulator,
    client: TradingClient,
) -> None:
    order = await submit(client, limit_ioc("BTC/USD", OrderSide.BUY, 0.001, 45450, "lim-1"))
    found = await model(AlpacaOrder, client.get_order_by_client_id, "lim-1")

    assert (order.status, order.filled_qty, order.filled_avg_price) == (OrderStatus.FILLED, "0.001", "45000")
    assert (found.id, found.type, found.time_in_force, found.limit_price) == (
        order.id,
        OrderType.LIMIT,
        TimeInForce.IOC,
        "45450",
    )
    assert alpaca.state.accounts[AP_KEY].balances["USD"] == Decimal("9955")


async def test_limit_ioc_stock_buy_beyond_its_price_is_canceled_unfilled(
    alpaca: AlpacaEmulator,
    client: TradingClient,
) -> None:
    order = await submit(client, limit_ioc("AAPL", OrderSide.BUY, 2, 189.5, "lim-2"))
    found = await model(AlpacaOrder, client.get_order_by_client_id, "lim-2")
    fills = await asyncio.to_thread(client.get, "/account/activities/FILL")

    assert (order.status, order.filled_qty, order.filled_avg_price) == (OrderStatus.CANCELED, "0", None)
    assert (found.status, found.qty, found.limit_price, found.canceled_at is not None) == (
        OrderStatus.CANCELED,
        "2",
        "189.5",
        True,
    )
    assert fills == []
    assert alpaca.state.accounts[AP_KEY].balances == {"USD": Decimal(10000), "BTC": Decimal("0.5")}


async def test_limit_ioc_sell_credits_cash_only_when_it_crosses(
    alpaca: AlpacaEmulator,
    client: TradingClient,
) -> None:
    filled = await submit(client, limit_ioc("BTC/USD", OrderSide.SELL, 0.1, 44550))
    unfilled = await submit(client, limit_ioc("BTC/USD", OrderSide.SELL, 0.1, 46000))

    assert (filled.status, filled.filled_qty, filled.filled_avg_price) == (OrderStatus.FILLED, "0.1", "45000")
    assert (unfilled.status, unfilled.filled_qty) == (OrderStatus.CANCELED, "0")
    assert alpaca.state.accounts[AP_KEY].balances == {"USD": Decimal("14500"), "BTC": Decimal("0.4")}


@pytest.mark.parametrize(("symbol", "price"), [("AAPL", 190.005), ("BTC/USD", 45000.05)])
async def test_limit_price_off_the_tick_is_refused_with_422(
    alpaca: AlpacaEmulator,
    client: TradingClient,
    symbol: str,
    price: float,
) -> None:
    refused = await api_error(client.submit_order, limit_ioc(symbol, OrderSide.BUY, 1, price))

    assert (refused.status_code, refused.code, refused.message) == (
        422,
        42210000,
        f"invalid limit_price {price}. sub-penny increment does not fulfill minimum pricing criteria",
    )
    assert alpaca.state.accounts[AP_KEY].orders == []


@pytest.mark.parametrize(
    ("order", "status", "message"),
    [
        (
            limit_ioc("BTC/USD", OrderSide.BUY, 0.222, 45450),
            403,
            "insufficient balance for USD (requested: 10089.9, available: 10000)",
        ),  # at the limit
        (
            StopOrderRequest(
                symbol="BTC/USD",
                side=OrderSide.SELL,
                qty=0.001,
                stop_price=44000,
                time_in_force=TimeInForce.GTC,
            ),
            422,
            "invalid order type for this asset class",
        ),  # crypto takes no stop-market order
    ],
)
async def test_limit_order_refused_by_the_venue_places_nothing(
    alpaca: AlpacaEmulator,
    client: TradingClient,
    order: LimitOrderRequest | StopOrderRequest,
    status: int,
    message: str,
) -> None:
    refused = await api_error(client.submit_order, order)

    assert (refused.status_code, refused.message) == (status, message)
    assert alpaca.state.accounts[AP_KEY].orders == []


async def test_gtc_limit_order_rests_open_with_nothing_filled(
    alpaca: AlpacaEmulator,
    client: TradingClient,
) -> None:
    placed = await asyncio.to_thread(
        client.submit_order,
        LimitOrderRequest(
            symbol="BTC/USD", side=OrderSide.BUY, qty=0.001, limit_price=44000, time_in_force=TimeInForce.GTC
        ),
    )
    listed = await asyncio.to_thread(client.get_orders)

    assert isinstance(placed, AlpacaOrder)
    assert (placed.status, placed.filled_qty, placed.type) == (OrderStatus.NEW, "0", OrderType.LIMIT)
    assert [o.id for o in listed] == [placed.id]  # type: ignore[union-attr]
    assert alpaca.state.accounts[AP_KEY].balances == {"USD": Decimal(10000), "BTC": Decimal("0.5")}


@AP_FAULTS
async def test_limit_order_fault_raises_the_same_api_error(
    alpaca: AlpacaEmulator,
    client: TradingClient,
    fault: Fault,
    status: int,
    code: int,
) -> None:
    account = alpaca.state.accounts[AP_KEY]
    account.faults.append(fault)

    refused = await api_error(client.submit_order, limit_ioc("BTC/USD", OrderSide.SELL, 0.1, 44550))

    assert (refused.status_code, refused.code) == (status, code)
    assert (account.orders, account.faults) == ([], [])


async def test_timeout_after_accept_on_a_limit_order_finds_it_canceled(
    alpaca: AlpacaEmulator,
) -> None:
    alpaca.state.accounts[AP_KEY].faults.append(Fault.TIMEOUT_AFTER_ACCEPT)
    impatient, patient = trading_client(alpaca.url, timeout_s=0.3), trading_client(alpaca.url)
    order = limit_ioc("BTC/USD", OrderSide.BUY, 0.001, 44000, "lim-timeout")

    with pytest.raises(requests.exceptions.ReadTimeout):
        await asyncio.to_thread(impatient.submit_order, order)
    found = await model(AlpacaOrder, patient.get_order_by_client_id, "lim-timeout")

    assert (found.status, found.filled_qty) == (OrderStatus.CANCELED, "0")
