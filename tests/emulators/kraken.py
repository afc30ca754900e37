"""Kraken spot REST emulator, answering in Kraken's own format (docs.kraken.com/api-reference).

Public `GET|POST /0/public/<Method>` and signed `POST /0/private/<Method>` (form body with a
nonce; `API-Key` header; `API-Sign` = base64 HMAC-SHA512, keyed with the base64-decoded secret,
over `path + SHA256(nonce + body)`). Every reply is `{"error": [...], "result": ...}` with HTTP
200, as Kraken does, except an injected HTTP_500. Kraken names BTC "XBT" (asset XXBT, pair
XXBTZUSD, altname XBTUSD); ccxt maps it back to BTC/USD.

Orders: market and IOC limit end at once; a GTC limit and the trigger ordertypes stop-loss,
stop-loss-limit, take-profit and take-profit-limit (price: the trigger, price2: the limit) rest
(`VenueState`'s controls fill and trigger them). CancelOrder cancels an open order (any other:
EOrder:Unknown order); AmendOrder changes order_qty (the new total) and limit_price in place,
txid and cl_ord_id kept.

GetWebSocketsToken issues the tokens of the private WebSocket served at `/v2` (`kraken_ws`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from tests.emulators.kraken_ws import KrakenStreams
from tests.emulators.server import EmulatorServer
from tests.emulators.state import (
    OPEN,
    USER_CANCELED,
    Account,
    Fault,
    Market,
    Order,
    VenueState,
    parse_decimal,
)

ASSET_IDS = {"BTC": "XXBT", "ETH": "XETH", "USD": "ZUSD", "EUR": "ZEUR"}  # Kraken's asset ids
ALTNAMES = {"BTC": "XBT"}
FAULT_ERRORS = {
    Fault.RATE_LIMIT: "EAPI:Rate limit exceeded",
    Fault.INSUFFICIENT_FUNDS: "EOrder:Insufficient funds",
    Fault.INVALID_KEY: "EAPI:Invalid key",
    Fault.MIN_NOT_MET: "EOrder:Order minimum not met",
}
# an unfilled IOC ends canceled; untriggered stops are open too
STATUSES = {"filled": "closed", "canceled": "canceled", OPEN: "open", USER_CANCELED: "canceled"}
# AddOrder ordertype -> (trigger, has a limit price after the trigger); "price" is the trigger
# price of a trigger order and "price2" its limit price
TRIGGERS = {
    "stop-loss": ("stop_loss", False),
    "stop-loss-limit": ("stop_loss", True),
    "take-profit": ("take_profit", False),
    "take-profit-limit": ("take_profit", True),
}
ORDERTYPES = {
    "stop_loss": "stop-loss",
    "stop_loss_limit": "stop-loss-limit",
    "take_profit": "take-profit",
    "take_profit_limit": "take-profit-limit",
}
UNKNOWN_ORDER = "EOrder:Unknown order"
REFUSALS = {"insufficient_funds": "EOrder:Insufficient funds", "unknown_symbol": "EQuery:Unknown asset pair"}
# cl_ord_id: long UUID, short (32 hex) UUID, or free text of up to 18 characters
CL_ORD_ID = re.compile(r"[0-9a-fA-F]{8}(-?[0-9a-fA-F]{4}){3}-?[0-9a-fA-F]{12}|[!-~]{1,18}")

Params = dict[str, str]
Reply = web.StreamResponse


def _asset(code: str) -> str:
    return ASSET_IDS.get(code, code)


def _decimals(step: Decimal) -> int:
    return max(0, -step.normalize().as_tuple().exponent)  # type: ignore[operator]


def _fmt(value: Decimal, places: int = 8) -> str:
    return f"{value:.{places}f}"


def _kraken_id(prefix: str) -> str:
    h = uuid.uuid4().hex.upper()
    return f"{prefix}{h[:5]}-{h[5:10]}-{h[10:16]}"


def _viqc(p: Params) -> bool:
    """Volume in quote currency (a market buy by cost)."""
    return "viqc" in p.get("oflags", "").split(",")


def _invalid_argument(p: Params) -> str | None:
    """The AddOrder argument Kraken would call invalid, if any."""
    ordertype = p.get("ordertype", "")
    priced = ordertype != "market"
    checks = (
        ("type", p.get("type") in ("buy", "sell")),
        ("ordertype", ordertype in ("market", "limit", *TRIGGERS)),  # trailing: not emulated
        ("timeinforce", p.get("timeinforce") in (None, "GTC", "IOC")),
        ("timeinforce", ordertype == "limit" or p.get("timeinforce") != "IOC"),
        ("cl_ord_id", "cl_ord_id" not in p or CL_ORD_ID.fullmatch(p["cl_ord_id"])),
        ("volume", parse_decimal(p.get("volume")) is not None),
        ("price", not priced or parse_decimal(p.get("price")) is not None),
        ("price2", not TRIGGERS.get(ordertype, ("", False))[1] or parse_decimal(p.get("price2")) is not None),
    )
    return next((name for name, valid in checks if not valid), None)


def _ok(result: Any) -> Reply:
    return web.json_response({"error": [], "result": result})


def _err(message: str, status: int = 200) -> Reply:
    return web.json_response({"error": [message]}, status=status)


class KrakenEmulator(EmulatorServer):
    """Kraken REST emulator. Accounts: `state.add_account(key, base64_secret, balances)`."""

    def __init__(self, state: VenueState | None = None) -> None:
        self._viqc: dict[str, str] = {}  # order id -> quote volume asked for by a viqc order
        state = state or VenueState()
        self.streams = KrakenStreams(state)  # the private WebSocket's tokens and sockets
        super().__init__(state)
        self.app.on_shutdown.append(self.streams.close)

    def routes(self, router: web.UrlDispatcher) -> None:
        self._public: dict[str, Callable[[Params], Awaitable[Reply]]] = {
            "Time": self._time,
            "Assets": self._assets,
            "AssetPairs": self._asset_pairs,
            "Ticker": self._ticker,
        }
        self._private: dict[str, Callable[[Account, Params], Awaitable[Reply]]] = {
            "Balance": self._balance,
            "BalanceEx": self._balance_ex,
            "AddOrder": self._add_order,
            "QueryOrders": self._query_orders,
            "OpenOrders": self._open_orders,
            "ClosedOrders": self._closed_orders,
            "TradesHistory": self._trades_history,
            "CancelOrder": self._cancel_order,
            "AmendOrder": self._amend_order,
            "GetWebSocketsToken": self._websockets_token,
        }
        router.add_route("*", "/0/public/{method}", self._handle_public)
        router.add_post("/0/private/{method}", self._handle_private)
        router.add_get("/v2", self.streams.handle)

    # --- plumbing -------------------------------------------------------------------------

    async def _handle_public(self, request: web.Request) -> Reply:
        self.state.requests += 1
        handler = self._public.get(request.match_info["method"])
        params = dict(request.query) | dict(parse_qsl(await request.text()))
        reply = await handler(params) if handler else _err("EGeneral:Unknown method", 404)
        await self.state.delay()
        return reply

    async def _handle_private(self, request: web.Request) -> Reply:
        self.state.requests += 1
        body = await request.text()
        params = dict(parse_qsl(body, keep_blank_values=True))
        handler = self._private.get(request.match_info["method"])
        account = self.state.accounts.get(request.headers.get("API-Key", ""))
        if handler is None:
            reply = _err("EGeneral:Unknown method", 404)
        elif account is None:
            reply = _err("EAPI:Invalid key")
        elif (error := self._check_auth(account, request, body, params)) is not None:
            reply = _err(error)
        else:
            reply = await handler(account, params)
        await self.state.delay()
        return reply

    @staticmethod
    def _check_auth(account: Account, request: web.Request, body: str, params: Params) -> str | None:
        nonce = params.get("nonce", "")
        try:
            key = base64.b64decode(account.secret, validate=True)
        except binascii.Error:
            return "EAPI:Invalid key"
        digest = hashlib.sha256((nonce + body).encode()).digest()
        expected = hmac.new(key, request.path.encode() + digest, hashlib.sha512).digest()
        if not hmac.compare_digest(base64.b64encode(expected).decode(), request.headers.get("API-Sign", "")):
            return "EAPI:Invalid signature"
        if not nonce.isdigit() or int(nonce) <= account.last_nonce:
            return "EAPI:Invalid nonce"
        account.last_nonce = int(nonce)
        return None

    def _pair_id(self, m: Market) -> str:
        return _asset(m.base) + _asset(m.quote)

    def _altname(self, m: Market) -> str:
        return ALTNAMES.get(m.base, m.base) + ALTNAMES.get(m.quote, m.quote)

    def _market(self, pair: str | None) -> Market | None:
        return next(
            (m for m in self.state.markets.values() if pair in (self._pair_id(m), self._altname(m))), None
        )

    # --- public ---------------------------------------------------------------------------

    async def _time(self, _p: Params) -> Reply:
        now = time.time()
        return _ok(
            {"unixtime": int(now), "rfc1123": time.strftime("%a, %d %b %y %H:%M:%S +0000", time.gmtime(now))}
        )

    async def _assets(self, _p: Params) -> Reply:
        codes = {c for m in self.state.markets.values() for c in (m.base, m.quote)}
        return _ok(
            {
                _asset(c): {
                    "aclass": "currency",
                    "altname": ALTNAMES.get(c, c),
                    "decimals": 4 if _asset(c).startswith("Z") else 10,
                    "display_decimals": 2 if _asset(c).startswith("Z") else 5,
                    "status": "enabled",
                }
                for c in sorted(codes)
            }
        )

    async def _asset_pairs(self, p: Params) -> Reply:
        wanted = p.get("pair", "").split(",") if p.get("pair") else None
        markets = [
            m
            for m in self.state.markets.values()
            if wanted is None or self._pair_id(m) in wanted or self._altname(m) in wanted
        ]
        return _ok(
            {
                self._pair_id(m): {
                    "altname": self._altname(m),
                    "wsname": f"{ALTNAMES.get(m.base, m.base)}/{m.quote}",
                    "aclass_base": "currency",
                    "base": _asset(m.base),
                    "aclass_quote": "currency",
                    "quote": _asset(m.quote),
                    "lot": "unit",
                    "cost_decimals": 5,
                    "pair_decimals": _decimals(m.price_step),
                    "lot_decimals": _decimals(m.amount_step),
                    "lot_multiplier": 1,
                    "leverage_buy": [],
                    "leverage_sell": [],
                    "fees": [[0, 0.4]],
                    "fees_maker": [[0, 0.25]],
                    "fee_volume_currency": "ZUSD",
                    "margin_call": 80,
                    "margin_stop": 40,
                    "ordermin": format(m.min_amount, "f"),
                    "costmin": format(m.min_cost, "f"),
                    "tick_size": format(m.price_step, "f"),
                    "status": "online",
                }
                for m in markets
            }
        )

    async def _ticker(self, p: Params) -> Reply:
        pairs = p.get("pair", "").split(",") if p.get("pair") else None
        markets = [self._market(x) for x in pairs] if pairs else list(self.state.markets.values())
        if any(m is None for m in markets):
            return _err("EQuery:Unknown asset pair")
        result = {}
        for m in markets:
            assert m is not None
            last = _fmt(self.state.prices[m.symbol], _decimals(m.price_step))
            result[self._pair_id(m)] = {
                "a": [last, "1", "1.000"],
                "b": [last, "1", "1.000"],
                "c": [last, "0.00100000"],
                "v": ["0.00000000", "0.00000000"],
                "p": [last, last],
                "t": [0, 0],
                "l": [last, last],
                "h": [last, last],
                "o": last,
            }
        return _ok(result)

    # --- private --------------------------------------------------------------------------

    async def _balance(self, account: Account, _p: Params) -> Reply:
        return _ok({_asset(c): _fmt(v, 10) for c, v in account.balances.items()})

    async def _balance_ex(self, account: Account, _p: Params) -> Reply:
        return _ok(
            {
                _asset(c): {"balance": _fmt(v, 10), "hold_trade": "0.0000000000"}
                for c, v in account.balances.items()
            }
        )

    async def _add_order(self, account: Account, p: Params) -> Reply:
        fault = self.state.take_fault(account, *Fault)
        if fault in FAULT_ERRORS:
            return _err(FAULT_ERRORS[fault])
        if fault is Fault.HTTP_500:
            return _err("EService:Unavailable", 503)
        market = self._market(p.get("pair"))
        if market is None:
            return _err("EQuery:Unknown asset pair")
        if (invalid := _invalid_argument(p)) is not None:
            return _err(f"EGeneral:Invalid arguments:{invalid}")
        try:
            order = self._fill(account, market, p)
        except ValueError as refusal:
            return _err(self._refusal(str(refusal), market, p))
        order.rename(_kraken_id("O"))
        order.trade_id = _kraken_id("T")
        if _viqc(p):
            self._viqc[order.order_id] = _fmt(Decimal(p["volume"]))
        if fault is Fault.TIMEOUT_AFTER_ACCEPT:
            await self._hold()
        vol = _fmt(Decimal(p["volume"]), 8 if _viqc(p) else _decimals(market.amount_step))
        return _ok({"descr": {"order": self._describe(order, vol)}, "txid": [order.order_id]})

    def fill_by_hand(self, api_key: str, symbol: str, side: str, amount: Decimal) -> Order:
        """A market order the account's owner placed on Kraken's site, not through this API:
        filled now, and seen by TradesHistory and ClosedOrders like any other."""
        order = self.state.fill(self.state.accounts[api_key], symbol, side, amount=amount)
        order.order_id, order.trade_id = _kraken_id("O"), _kraken_id("T")
        return order

    def _fill(self, account: Account, market: Market, p: Params) -> Order:
        side, volume, client_id = p["type"], Decimal(p["volume"]), p.get("cl_ord_id")
        if p["ordertype"] in TRIGGERS:
            trigger, limited = TRIGGERS[p["ordertype"]]
            return self.state.place_resting(
                account,
                market.symbol,
                side,
                volume,
                limit_price=Decimal(p["price2"]) if limited else None,
                trigger=trigger,
                trigger_price=Decimal(p["price"]),
                client_order_id=client_id,
            )
        if p["ordertype"] == "limit" and p.get("timeinforce") != "IOC":  # GTC: it rests
            return self.state.place_resting(
                account,
                market.symbol,
                side,
                volume,
                limit_price=Decimal(p["price"]),
                client_order_id=client_id,
            )
        if p["ordertype"] == "limit":
            return self.state.fill_limit_ioc(
                account, market.symbol, side, volume, Decimal(p["price"]), client_order_id=client_id
            )
        viqc = _viqc(p)
        return self.state.fill(
            account,
            market.symbol,
            side,
            amount=None if viqc else volume,
            cost=volume if viqc else None,
            client_order_id=client_id,
        )

    def _refusal(self, kind: str, market: Market, p: Params) -> str:
        if kind == "invalid_price" and p.get("ordertype") in TRIGGERS:
            return "EOrder:Invalid price"
        if kind == "invalid_price":
            return (
                f"EOrder:Invalid price:{self._pair_id(market)} price can only be specified up "
                f"to {_decimals(market.price_step)} decimals."
            )
        if kind != "min_not_met":
            return REFUSALS[kind]
        volume = Decimal(p["volume"])
        base = volume / self.state.prices[market.symbol] if _viqc(p) else volume
        return "EOrder:Order minimum not met" if base < market.min_amount else "EOrder:Cost minimum not met"

    def _describe(self, o: Order, vol: str) -> str:
        """Kraken's one-line order description, e.g. "buy 0.00100000 XBTUSD @ limit 45000.0" or
        "sell 0.01000000 XBTUSD @ stop loss 44000.0 -> limit 43900.0"."""
        m = self.state.markets[o.symbol]
        places = _decimals(m.price_step)
        limit = o.limit_price
        at = "market" if limit is None else f"limit {_fmt(limit, places)}"
        if o.trigger is not None and o.trigger_price is not None:
            trigger = f"{o.trigger.replace('_', ' ')} {_fmt(o.trigger_price, places)}"
            at = trigger if limit is None else f"{trigger} -> {at}"
        return f"{o.side} {vol} {self._altname(m)} @ {at}"

    def _order_info(self, o: Order, with_trades: bool = False) -> dict[str, Any]:
        m = self.state.markets[o.symbol]
        places = _decimals(m.price_step)
        vol = self._viqc.get(o.order_id) or _fmt(o.size)
        limit = "0" if o.limit_price is None else _fmt(o.limit_price, places)
        price, price2, ordertype = limit, "0", o.order_type
        if o.trigger is not None and o.trigger_price is not None:  # price: trigger, price2: limit
            price, price2, ordertype = _fmt(o.trigger_price, places), limit, ORDERTYPES[o.kind]
        info: dict[str, Any] = {
            "refid": None,
            "userref": None,
            "status": STATUSES[o.status],
            "reason": None,
            "opentm": o.created,
            "closetm": 0 if o.is_open else o.updated,
            "starttm": 0,
            "expiretm": 0,
            "descr": {
                "pair": self._altname(m),
                "type": o.side,
                "ordertype": ordertype,
                "price": price,
                "price2": price2,
                "leverage": "none",
                "order": self._describe(o, vol),
                "close": "",
            },
            "vol": vol,
            "vol_exec": _fmt(o.amount),
            "cost": _fmt(o.cost, 5),
            "fee": "0.00000",
            "price": _fmt(o.price, 5),
            "stopprice": "0.00000",
            "limitprice": "0.00000",
            "misc": "",
            "oflags": "fciq,viqc" if o.order_id in self._viqc else "fciq",
        }
        if o.client_order_id is not None:
            info["cl_ord_id"] = o.client_order_id
        if with_trades and o.amount:
            info["trades"] = [t.trade_id for t in o.parts] if o.parts else [o.trade_id]
        return info

    async def _query_orders(self, account: Account, p: Params) -> Reply:
        by_id = {o.order_id: o for o in account.orders}
        txids = p.get("txid", "").split(",")
        if not all(t in by_id for t in txids):
            return _err("EOrder:Invalid order")
        trades = p.get("trades", "").lower() == "true"
        return _ok({t: self._order_info(by_id[t], trades) for t in txids})

    async def _open_orders(self, account: Account, p: Params) -> Reply:
        trades = p.get("trades", "").lower() == "true"
        return _ok(
            {
                "open": {
                    o.order_id: self._order_info(o, trades)
                    for o in account.orders
                    if o.is_open and p.get("cl_ord_id") in (None, o.client_order_id)
                }
            }
        )

    async def _closed_orders(self, account: Account, p: Params) -> Reply:
        orders = [
            o
            for o in reversed(account.orders)
            if self._in_window(o, p) and not o.is_open and p.get("cl_ord_id") in (None, o.client_order_id)
        ]
        trades = p.get("trades", "").lower() == "true"
        return _ok(
            {"closed": {o.order_id: self._order_info(o, trades) for o in orders}, "count": len(orders)}
        )

    def _open_order(self, account: Account, p: Params) -> Order | None:
        """The open order named by txid (or cl_ord_id), as CancelOrder and AmendOrder take it."""
        return next(
            (
                o
                for o in account.orders
                if o.is_open
                and (
                    o.order_id == p.get("txid")
                    or (p.get("cl_ord_id") is not None and o.client_order_id == p.get("cl_ord_id"))
                )
            ),
            None,
        )

    async def _cancel_order(self, account: Account, p: Params) -> Reply:
        order = self._open_order(account, p)
        if order is None:  # unknown, or closed already
            return _err(UNKNOWN_ORDER)
        self.state.cancel(order)
        return _ok({"count": 1})

    async def _amend_order(self, account: Account, p: Params) -> Reply:
        """Atomic amend in place: order_qty (the new total) and/or limit_price; ids kept."""
        order = self._open_order(account, p)
        if order is None:
            return _err(UNKNOWN_ORDER)
        qty, price = parse_decimal(p.get("order_qty")), parse_decimal(p.get("limit_price"))
        if ("order_qty" in p and qty is None) or ("limit_price" in p and price is None):
            return _err("EGeneral:Invalid arguments")
        if order.trigger is not None and price is not None and order.limit_price is None:
            return _err("EGeneral:Invalid arguments:limit_price")
        try:
            self.state.amend(account, order, price=price, size=qty)
        except ValueError as refusal:
            market = self.state.markets[order.symbol]
            return _err(
                {"invalid_size": "EGeneral:Invalid arguments:order_qty", "not_open": UNKNOWN_ORDER}.get(
                    str(refusal)
                )
                or self._refusal(str(refusal), market, {"volume": str(qty)})
            )
        return _ok({"amend_id": _kraken_id("T")})

    async def _websockets_token(self, account: Account, _p: Params) -> Reply:
        return _ok(self.streams.issue(account))

    async def _trades_history(self, account: Account, p: Params) -> Reply:
        trades = {}
        for o in reversed(account.trades()):
            if o.amount and self._in_window(o, p):
                m = self.state.markets[o.symbol]
                trades[o.trade_id] = {
                    "ordertxid": o.order_id,
                    "postxid": "TKH2SE-M7IF5-CFI7LT",
                    "pair": self._pair_id(m),
                    "time": o.created,
                    "type": o.side,
                    "ordertype": o.order_type,
                    "price": _fmt(o.price, 5),
                    "cost": _fmt(o.cost, 5),
                    "fee": "0.00000",
                    "vol": _fmt(o.amount),
                    "margin": "0.00000",
                    "leverage": "0",
                    "misc": "",
                    "trade_id": int(hashlib.sha256(o.trade_id.encode()).hexdigest()[:8], 16),
                    "maker": False,
                }
        return _ok({"trades": trades, "count": len(trades)})

    @staticmethod
    def _in_window(o: Order, p: Params) -> bool:
        """Kraken's `start` (exclusive) and `end` (inclusive) in unix seconds."""
        return o.created > float(p.get("start") or 0) and o.created <= float(p.get("end") or "inf")
