"""Binance spot REST emulator, answering in Binance's own format (developers.binance.com, spot).

Orders: MARKET, LIMIT (IOC, or GTC: it rests), STOP_LOSS[_LIMIT] and TAKE_PROFIT[_LIMIT] with a
stopPrice (they rest until `VenueState.set_price` reaches it); DELETE /api/v3/order cancels,
POST /api/v3/order/cancelReplace cancels and places anew (STOP_ON_FAILURE), GET openOrders
lists what rests.

Public `GET /api/v3/...`; SIGNED endpoints need the `X-MBX-APIKEY` header, a `timestamp` inside
`recvWindow` (default 5000 ms) and `signature` = hex HMAC-SHA256(secret, totalParams), totalParams
being the query string concatenated with the form body, `signature` itself left out. Errors are
`{"code": -NNNN, "msg": "..."}` with Binance's HTTP status (400, 401, 429, 5xx).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from functools import partial
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from tests.emulators.server import EmulatorServer
from tests.emulators.state import (
    USER_CANCELED,
    Account,
    Fault,
    Market,
    Order,
    VenueState,
    parse_decimal,
)

Params = dict[str, str]
Reply = web.StreamResponse
Error = tuple[int, int, str]  # (HTTP status, Binance code, msg)

E_INTERNAL = (503, -1001, "Internal error; unable to process your request. Please try again.")
E_RATE = (
    429,
    -1003,
    "Too much request weight used; current limit is 6000 request weight per "
    "1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API.",
)
E_FUNDS = (400, -2010, "Account has insufficient balance for requested action.")
E_KEY = (401, -2015, "Invalid API-key, IP, or permissions for action.")
E_NOTIONAL = (400, -1013, "Filter failure: NOTIONAL")
E_LOT_SIZE = (400, -1013, "Filter failure: LOT_SIZE")
E_SYMBOL = (400, -1121, "Invalid symbol.")
E_SIGNATURE = (400, -1022, "Signature for this request is not valid.")
E_TIMESTAMP = (400, -1021, "Timestamp for this request is outside of the recvWindow.")
E_NO_ORDER = (400, -2013, "Order does not exist.")
FAULT_ERRORS = {
    Fault.HTTP_500: E_INTERNAL,
    Fault.RATE_LIMIT: E_RATE,
    Fault.INSUFFICIENT_FUNDS: E_FUNDS,
    Fault.INVALID_KEY: E_KEY,
    Fault.MIN_NOT_MET: E_NOTIONAL,
}
E_PRICE_FILTER = (400, -1013, "Filter failure: PRICE_FILTER")
E_ORDER_TYPE = (400, -1116, "Invalid orderType.")
E_TIF = (400, -1115, "Invalid timeInForce.")
E_CLIENT_ID = (
    400,
    -1100,
    "Illegal characters found in parameter 'newClientOrderId'; "
    r"legal range is '^[\.A-Z\:/a-z0-9_-]{1,36}$'.",
)
REFUSALS = {"insufficient_funds": E_FUNDS, "unknown_symbol": E_SYMBOL, "invalid_price": E_PRICE_FILTER}
# an IOC that found no liquidity expires; a resting order is NEW or PARTIALLY_FILLED
STATUSES = {"filled": "FILLED", "canceled": "EXPIRED", USER_CANCELED: "CANCELED"}
E_UNKNOWN_ORDER = (400, -2011, "Unknown order sent.")
# order type -> (trigger, has a limit price)
TRIGGERS = {
    "STOP_LOSS": ("stop_loss", False),
    "STOP_LOSS_LIMIT": ("stop_loss", True),
    "TAKE_PROFIT": ("take_profit", False),
    "TAKE_PROFIT_LIMIT": ("take_profit", True),
}
TYPES = {
    "market": "MARKET",
    "limit_ioc": "LIMIT",
    "limit": "LIMIT",
    "stop_loss": "STOP_LOSS",
    "stop_loss_limit": "STOP_LOSS_LIMIT",
    "take_profit": "TAKE_PROFIT",
    "take_profit_limit": "TAKE_PROFIT_LIMIT",
}
CLIENT_ID = re.compile(r"[.A-Z:/a-z0-9_-]{1,36}")


def _fmt(value: Decimal) -> str:
    return f"{value:.8f}"


def _num(venue_id: str) -> int:
    """Binance ids are integers; ids of orders filled outside the emulator get a stable one."""
    return (
        int(venue_id) if venue_id.isdigit() else int(hashlib.sha256(venue_id.encode()).hexdigest()[:12], 16)
    )


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _error(err: Error) -> Reply:
    status, code, msg = err
    headers = {"Retry-After": "1"} if status == 429 else None
    return web.json_response({"code": code, "msg": msg}, status=status, headers=headers)


def _missing(name: str) -> Error:
    return (400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")


def _invalid(p: Params) -> Error | None:
    """Binance's error for a malformed new order, if any."""
    kind = p.get("type", "")
    limit = kind == "LIMIT" or TRIGGERS.get(kind, ("", False))[1]
    sizes = [p[k] for k in ("quantity", "quoteOrderQty") if k in p]
    checks = (
        (p.get("side", "").lower() not in ("buy", "sell"), _missing("side")),
        (kind not in ("MARKET", "LIMIT", *TRIGGERS), E_ORDER_TYPE),
        (limit and "timeInForce" not in p, _missing("timeInForce")),
        (limit and p.get("timeInForce") not in ("GTC", "IOC"), E_TIF),
        (kind in TRIGGERS and p.get("timeInForce") == "IOC", E_TIF),
        (limit and parse_decimal(p.get("price")) is None, _missing("price")),
        (kind in TRIGGERS and parse_decimal(p.get("stopPrice")) is None, _missing("stopPrice")),
        (kind in TRIGGERS and "quantity" not in p, _missing("quantity")),
        (not CLIENT_ID.fullmatch(p.get("newClientOrderId", "-")), E_CLIENT_ID),
        (len(sizes) != 1 or (limit and "quantity" not in p), _missing("quantity")),
        (any(parse_decimal(v) is None for v in sizes), _missing("quantity")),
    )
    return next((error for bad, error in checks if bad), None)


def _without_signature(raw: str) -> tuple[str, str | None]:
    parts = raw.split("&") if raw else []
    sig = next((p[len("signature=") :] for p in parts if p.startswith("signature=")), None)
    return "&".join(p for p in parts if not p.startswith("signature=")), sig


class BinanceEmulator(EmulatorServer):
    """Binance spot emulator. Accounts: `state.add_account(key, secret, balances)` (plain text)."""

    def __init__(self, state: VenueState | None = None) -> None:
        self._quote_qty: dict[str, Decimal] = {}  # order id -> quoteOrderQty asked for
        super().__init__(state)

    def routes(self, router: web.UrlDispatcher) -> None:
        public: dict[tuple[str, str], Callable[[Params], Awaitable[Any]]] = {
            ("GET", "ping"): self._ping,
            ("GET", "time"): self._time,
            ("GET", "exchangeInfo"): self._exchange_info,
            ("GET", "ticker/24hr"): self._ticker,
            ("GET", "ticker/price"): self._ticker_price,
        }
        signed: dict[tuple[str, str], Callable[[Account, Params], Awaitable[Any]]] = {
            ("GET", "account"): self._account,
            ("POST", "order"): self._new_order,
            ("GET", "order"): self._query_order,
            ("GET", "openOrders"): self._open_orders,
            ("GET", "allOrders"): self._all_orders,
            ("GET", "myTrades"): self._my_trades,
            ("DELETE", "order"): self._cancel_order,
            ("POST", "order/cancelReplace"): self._cancel_replace,
        }
        for (method, path), fn in public.items():
            router.add_route(method, f"/api/v3/{path}", partial(self._handle, fn, False))
        for (method, path), signed_fn in signed.items():
            router.add_route(method, f"/api/v3/{path}", partial(self._handle, signed_fn, True))

    # --- plumbing -------------------------------------------------------------------------

    async def _handle(self, fn: Callable[..., Awaitable[Any]], signed: bool, request: web.Request) -> Reply:
        self.state.requests += 1
        query, body = request.rel_url.raw_query_string, await request.text()
        params = dict(parse_qsl(query)) | dict(parse_qsl(body))
        if not signed:
            result = await fn(params)
        else:
            account = self.state.accounts.get(request.headers.get("X-MBX-APIKEY", ""))
            error = E_KEY if account is None else self._check_auth(account, params, query, body)
            result = error if error else await fn(account, params)
        await self.state.delay()
        if isinstance(result, tuple):
            return _error(result)
        return result if isinstance(result, web.StreamResponse) else web.json_response(result)

    @staticmethod
    def _check_auth(account: Account, params: Params, query: str, body: str) -> Error | None:
        if not params.get("timestamp", "").isdigit():
            return _missing("timestamp")
        window = int(params.get("recvWindow") or 5000)
        now = _ms(time.time())
        if not now - window <= int(params["timestamp"]) <= now + 1000:
            return E_TIMESTAMP
        (q, q_sig), (b, b_sig) = _without_signature(query), _without_signature(body)
        signature = q_sig or b_sig or ""
        expected = hmac.new(account.secret.encode(), (q + b).encode(), hashlib.sha256).hexdigest()
        return None if hmac.compare_digest(expected, signature.lower()) else E_SIGNATURE

    def _market(self, symbol_id: str | None) -> Market | None:
        return next((m for m in self.state.markets.values() if m.base + m.quote == symbol_id), None)

    # --- public ---------------------------------------------------------------------------

    async def _ping(self, _p: Params) -> dict[str, Any]:
        return {}

    async def _time(self, _p: Params) -> dict[str, Any]:
        return {"serverTime": _ms(time.time())}

    async def _exchange_info(self, _p: Params) -> dict[str, Any]:
        return {
            "timezone": "UTC",
            "serverTime": _ms(time.time()),
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            ],
            "exchangeFilters": [],
            "symbols": [self._symbol_info(m) for m in self.state.markets.values()],
        }

    @staticmethod
    def _symbol_info(m: Market) -> dict[str, Any]:
        return {
            "symbol": m.base + m.quote,
            "status": "TRADING",
            "baseAsset": m.base,
            "baseAssetPrecision": 8,
            "quoteAsset": m.quote,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": [
                "LIMIT",
                "LIMIT_MAKER",
                "MARKET",
                "STOP_LOSS",
                "STOP_LOSS_LIMIT",
                "TAKE_PROFIT",
                "TAKE_PROFIT_LIMIT",
            ],
            "icebergAllowed": True,
            "ocoAllowed": True,
            "otoAllowed": True,
            "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": True,
            "cancelReplaceAllowed": True,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": _fmt(m.price_step),
                    "maxPrice": "1000000.00000000",
                    "tickSize": _fmt(m.price_step),
                },
                {
                    "filterType": "LOT_SIZE",
                    "minQty": _fmt(m.min_amount),
                    "maxQty": "9000.00000000",
                    "stepSize": _fmt(m.amount_step),
                },
                {
                    "filterType": "MARKET_LOT_SIZE",
                    "minQty": _fmt(m.min_amount),
                    "maxQty": "100.00000000",
                    "stepSize": _fmt(m.amount_step),
                },
                {
                    "filterType": "NOTIONAL",
                    "minNotional": _fmt(m.min_cost),
                    "applyMinToMarket": True,
                    "maxNotional": "9000000.00000000",
                    "applyMaxToMarket": False,
                    "avgPriceMins": 5,
                },
            ],
            "permissions": [],
            "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
        }

    def _tickers(self, p: Params) -> list[Market] | Error:
        ids = [p["symbol"]] if "symbol" in p else json.loads(p.get("symbols") or "null")
        markets = [self._market(i) for i in ids] if ids else list(self.state.markets.values())
        return E_SYMBOL if None in markets else markets  # type: ignore[return-value]

    async def _ticker(self, p: Params) -> Any:
        markets = self._tickers(p)
        if isinstance(markets, tuple):
            return markets
        now = _ms(time.time())
        tickers = []
        for m in markets:
            last = _fmt(self.state.prices[m.symbol])
            tickers.append(
                {
                    "symbol": m.base + m.quote,
                    "priceChange": "0.00000000",
                    "priceChangePercent": "0.000",
                    "weightedAvgPrice": last,
                    "prevClosePrice": last,
                    "lastPrice": last,
                    "lastQty": "0.00100000",
                    "bidPrice": last,
                    "bidQty": "1.00000000",
                    "askPrice": last,
                    "askQty": "1.00000000",
                    "openPrice": last,
                    "highPrice": last,
                    "lowPrice": last,
                    "volume": "0.00000000",
                    "quoteVolume": "0.00000000",
                    "openTime": now - 86_400_000,
                    "closeTime": now,
                    "firstId": -1,
                    "lastId": -1,
                    "count": 0,
                }
            )
        return tickers[0] if "symbol" in p else tickers

    async def _ticker_price(self, p: Params) -> Any:
        markets = self._tickers(p)
        if isinstance(markets, tuple):
            return markets
        prices = [{"symbol": m.base + m.quote, "price": _fmt(self.state.prices[m.symbol])} for m in markets]
        return prices[0] if "symbol" in p else prices

    # --- signed ---------------------------------------------------------------------------

    async def _account(self, account: Account, _p: Params) -> dict[str, Any]:
        codes = dict.fromkeys(c for m in self.state.markets.values() for c in (m.base, m.quote))
        balances = {c: Decimal(0) for c in codes} | account.balances
        return {
            "makerCommission": 10,
            "takerCommission": 10,
            "buyerCommission": 0,
            "sellerCommission": 0,
            "commissionRates": {
                "maker": "0.00100000",
                "taker": "0.00100000",
                "buyer": "0.00000000",
                "seller": "0.00000000",
            },
            "canTrade": True,
            "canWithdraw": True,
            "canDeposit": True,
            "brokered": False,
            "requireSelfTradePrevention": False,
            "preventSor": False,
            "updateTime": _ms(time.time()),
            "accountType": "SPOT",
            "balances": [{"asset": c, "free": _fmt(v), "locked": "0.00000000"} for c, v in balances.items()],
            "permissions": ["SPOT"],
            "uid": _num(account.api_key) % 10**9,
        }

    async def _new_order(self, account: Account, p: Params) -> Any:
        fault = self.state.take_fault(account, *Fault)
        if fault in FAULT_ERRORS:
            return FAULT_ERRORS[fault]
        market = self._market(p.get("symbol"))
        if market is None:
            return E_SYMBOL
        if (invalid := _invalid(p)) is not None:
            return invalid
        try:
            order = self._fill(account, market, p)
        except ValueError as refusal:
            return self._refusal(str(refusal), market, p)
        order.rename(str(self.state.next_id()))
        order.trade_id = str(self.state.next_id())
        if "quoteOrderQty" in p:
            self._quote_qty[order.order_id] = Decimal(p["quoteOrderQty"])
        if fault is Fault.TIMEOUT_AFTER_ACCEPT:
            await self._hold()
        return self._order_json(order, p.get("newOrderRespType", "FULL"))

    def _fill(self, account: Account, market: Market, p: Params) -> Order:
        side = p["side"].lower()
        client_id = p.get("newClientOrderId") or uuid.uuid4().hex[:22]
        if p["type"] in TRIGGERS:
            trigger, limited = TRIGGERS[p["type"]]
            return self.state.place_resting(
                account,
                market.symbol,
                side,
                Decimal(p["quantity"]),
                limit_price=Decimal(p["price"]) if limited else None,
                trigger=trigger,
                trigger_price=Decimal(p["stopPrice"]),
                client_order_id=client_id,
            )
        if p["type"] == "LIMIT" and p["timeInForce"] == "GTC":
            return self.state.place_resting(
                account,
                market.symbol,
                side,
                Decimal(p["quantity"]),
                limit_price=Decimal(p["price"]),
                client_order_id=client_id,
            )
        if p["type"] == "LIMIT":
            return self.state.fill_limit_ioc(
                account,
                market.symbol,
                side,
                Decimal(p["quantity"]),
                Decimal(p["price"]),
                client_order_id=client_id,
            )
        amount, cost = parse_decimal(p.get("quantity")), parse_decimal(p.get("quoteOrderQty"))
        return self.state.fill(
            account, market.symbol, side, amount=amount, cost=cost, client_order_id=client_id
        )

    def _refusal(self, kind: str, m: Market, p: Params) -> Error:
        if kind != "min_not_met":
            return REFUSALS[kind]
        amount, cost = parse_decimal(p.get("quantity")), parse_decimal(p.get("quoteOrderQty"))
        base = amount if amount is not None else cost / self.state.prices[m.symbol]  # type: ignore[operator]
        return E_LOT_SIZE if base < m.min_amount else E_NOTIONAL

    def _order_json(self, o: Order, kind: str = "QUERY") -> dict[str, Any]:
        m = self.state.markets[o.symbol]
        ack = {
            "symbol": m.base + m.quote,
            "orderId": _num(o.order_id),
            "orderListId": -1,
            "clientOrderId": o.client_order_id,
            "transactTime": _ms(o.created),
        }
        if kind == "ACK":
            return ack
        status = ("PARTIALLY_FILLED" if o.amount else "NEW") if o.is_open else STATUSES[o.status]
        result = ack | {
            "price": _fmt(o.limit_price or Decimal(0)),
            "origQty": _fmt(o.size),
            "executedQty": _fmt(o.amount),
            "origQuoteOrderQty": _fmt(self._quote_qty.get(o.order_id, Decimal(0))),
            "cummulativeQuoteQty": _fmt(o.cost),
            "status": status,
            "timeInForce": "IOC" if o.kind == "limit_ioc" else "GTC",
            "type": TYPES[o.kind],
            "side": o.side.upper(),
            "workingTime": _ms(o.created),
            "selfTradePreventionMode": "EXPIRE_MAKER",
        }
        if o.trigger_price is not None:
            result["stopPrice"] = _fmt(o.trigger_price)
        if kind == "FULL":
            trades = o.parts if o.parts is not None else [o] if o.amount else []
            result["fills"] = [
                {
                    "price": _fmt(t.price),
                    "qty": _fmt(t.amount),
                    "commission": "0.00000000",
                    "commissionAsset": m.quote,
                    "tradeId": _num(t.trade_id),
                }
                for t in trades
            ]
        elif kind == "QUERY":
            del result["transactTime"]
            result = (
                {"stopPrice": "0.00000000"}
                | result
                | {
                    "icebergQty": "0.00000000",
                    "time": _ms(o.created),
                    "updateTime": _ms(o.updated or o.created),
                    "isWorking": not o.waiting,
                }
            )
        return result

    def _orders_of(self, account: Account, p: Params) -> list[Order]:
        market = self._market(p.get("symbol"))
        return [o for o in account.orders if market is not None and o.symbol == market.symbol]

    async def _query_order(self, account: Account, p: Params) -> Any:
        if self._market(p.get("symbol")) is None:
            return E_SYMBOL
        if "orderId" not in p and "origClientOrderId" not in p:
            return (
                400,
                -1102,
                "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!",
            )
        order = next(
            (
                o
                for o in self._orders_of(account, p)
                if str(_num(o.order_id)) == p.get("orderId", str(_num(o.order_id)))
                and o.client_order_id == p.get("origClientOrderId", o.client_order_id)
            ),
            None,
        )
        return E_NO_ORDER if order is None else self._order_json(order)

    async def _open_orders(self, account: Account, p: Params) -> Any:
        if "symbol" in p and self._market(p["symbol"]) is None:
            return E_SYMBOL
        orders = self._orders_of(account, p) if "symbol" in p else account.orders
        return [self._order_json(o) for o in orders if o.is_open]

    def _named(self, account: Account, p: Params, id_key: str, client_key: str) -> Order | None:
        """The order named by its id or its client id (the open one, where ids repeat)."""
        orders = [
            o
            for o in self._orders_of(account, p)
            if str(_num(o.order_id)) == p.get(id_key, str(_num(o.order_id)))
            and o.client_order_id == p.get(client_key, o.client_order_id)
        ]
        return next((o for o in orders if o.is_open), orders[-1] if orders else None)

    async def _cancel_order(self, account: Account, p: Params) -> Any:
        if self._market(p.get("symbol")) is None:
            return E_SYMBOL
        order = self._named(account, p, "orderId", "origClientOrderId")
        if order is None or not self.state.cancel(order):  # unknown, or ended already
            return E_UNKNOWN_ORDER
        return self._order_json(order, "RESULT") | {"origClientOrderId": order.client_order_id}

    async def _cancel_replace(self, account: Account, p: Params) -> Any:
        """STOP_ON_FAILURE: cancel, then (only if that worked) place the new order; a failed
        placement leaves the old order canceled (-2021), as Binance does."""
        market = self._market(p.get("symbol"))
        if market is None:
            return E_SYMBOL
        if p.get("cancelReplaceMode") != "STOP_ON_FAILURE" or (invalid := _invalid(p)):
            return invalid or _missing("cancelReplaceMode")
        old = self._named(account, p, "cancelOrderId", "cancelOrigClientOrderId")
        if old is None or not self.state.cancel(old):
            return web.json_response(
                {
                    "code": -2022,
                    "msg": "Order cancel-replace failed.",
                    "data": {
                        "cancelResult": "FAILURE",
                        "newOrderResult": "NOT_ATTEMPTED",
                        "cancelResponse": {"code": E_UNKNOWN_ORDER[1], "msg": E_UNKNOWN_ORDER[2]},
                        "newOrderResponse": None,
                    },
                },
                status=400,
            )
        cancel = self._order_json(old, "RESULT") | {"origClientOrderId": old.client_order_id}
        try:
            new = self._fill(account, market, p)
        except ValueError as refusal:
            _, code, msg = self._refusal(str(refusal), market, p)
            return web.json_response(
                {
                    "code": -2021,
                    "msg": "Order cancel-replace partially failed.",
                    "data": {
                        "cancelResult": "SUCCESS",
                        "newOrderResult": "FAILURE",
                        "cancelResponse": cancel,
                        "newOrderResponse": {"code": code, "msg": msg},
                    },
                },
                status=400,
            )
        new.rename(str(self.state.next_id()))
        old.replaced_by = new.order_id
        return {
            "cancelResult": "SUCCESS",
            "newOrderResult": "SUCCESS",
            "cancelResponse": cancel,
            "newOrderResponse": self._order_json(new, p.get("newOrderRespType", "FULL")),
        }

    async def _all_orders(self, account: Account, p: Params) -> Any:
        if self._market(p.get("symbol")) is None:
            return E_SYMBOL
        return [self._order_json(o) for o in self._in_window(self._orders_of(account, p), p)]

    async def _my_trades(self, account: Account, p: Params) -> Any:
        market = self._market(p.get("symbol"))
        if market is None:
            return E_SYMBOL
        trades = [t for t in account.trades() if t.symbol == market.symbol]
        orders = [
            o
            for o in self._in_window(trades, p)
            if o.amount
            and p.get("orderId", str(_num(o.order_id))) == str(_num(o.order_id))
            and _num(o.trade_id) >= int(p.get("fromId") or 0)
        ]
        return [
            {
                "symbol": market.base + market.quote,
                "id": _num(o.trade_id),
                "orderId": _num(o.order_id),
                "orderListId": -1,
                "price": _fmt(o.price),
                "qty": _fmt(o.amount),
                "quoteQty": _fmt(o.cost),
                "commission": "0.00000000",
                "commissionAsset": market.quote,
                "time": _ms(o.created),
                "isBuyer": o.side == "buy",
                "isMaker": False,
                "isBestMatch": True,
            }
            for o in orders
        ]

    @staticmethod
    def _in_window(orders: list[Order], p: Params) -> list[Order]:
        """startTime/endTime (ms, inclusive) and limit (default 500, oldest first)."""
        start, end = int(p.get("startTime") or 0), int(p.get("endTime") or 2**62)
        return [o for o in orders if start <= _ms(o.created) <= end][: int(p.get("limit") or 500)]
