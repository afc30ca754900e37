"""Alpaca Trading API v2 emulator, answering alpaca-py's `TradingClient(url_override=...)`.

Every call is checked against APCA-API-KEY-ID / APCA-API-SECRET-KEY. Numbers go out as JSON
strings, as Alpaca sends them. Crypto is "BTC/USD" in orders, assets and activities but
"BTCUSD" in positions; stocks are their base ("AAPL"). Market and ioc limit orders end at once
(an ioc limit that does not cross ends "canceled"); gtc limit, stop (stocks only) and stop_limit
orders rest (`VenueState`'s controls fill and trigger them), DELETE /v2/orders/{id} cancels one,
PATCH /v2/orders/{id} replaces one with a new order; GET /stream is the trading stream
(`tests.emulators.alpaca_stream`: trade_updates for each order change); with
`fill_on_submit_reply = False` the submit reply says "pending_new" with filled_qty "0" and only
a later GET shows the outcome, as real Alpaca usually answers; `working_reads` more GETs of each
order show it still "new" first (a stock order waiting for the open never ends).
`state.latency_s` delays every reply; `max_in_flight` is the most requests it was answering at
once.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aiohttp import web

from tests.emulators.alpaca_stream import TradeUpdates
from tests.emulators.server import EmulatorServer
from tests.emulators.state import (
    DEFAULT_MARKETS,
    USER_CANCELED,
    Account,
    Fault,
    Market,
    Order,
    VenueState,
    parse_decimal,
)

Json = dict[str, Any]
Private = Callable[[web.Request, Account], Awaitable[web.StreamResponse]]
NS = uuid.UUID("6f1c1f0e-2b1a-4c59-9d0e-0c0ba5e00002")
AAPL = Market("AAPL", "USD", Decimal("0.000000001"), Decimal("0.01"), Decimal("0.000000001"), Decimal("1"))
CRYPTO_TIME_IN_FORCE = {"gtc", "ioc"}
ORDER_TYPES = {"market", "limit", "stop", "stop_limit"}
CRYPTO_ORDER_TYPES = {"market", "limit", "stop_limit"}  # no stop-market for crypto
ORDER_TYPE_OF = {
    "market": "market",
    "limit_ioc": "limit",
    "limit": "limit",
    "stop_loss": "stop",
    "stop_loss_limit": "stop_limit",
}

# kind -> (HTTP status, Alpaca code, message template over the order's context).
# Keyed by Fault.value and by VenueState.fill's ValueError kinds.
ERRORS: dict[str, tuple[int, int, str]] = {
    "http_500": (500, 50010000, "internal server error occurred"),
    "rate_limit": (429, 42910000, "rate limit exceeded"),
    "invalid_key": (401, 40110000, "request is not authorized"),
    "insufficient_funds": (
        403,
        40310000,
        "insufficient balance for {currency} (requested: {requested}, available: {available})",
    ),
    "min_not_met": (403, 40310000, "cost basis must be >= minimal amount of order {min_cost}"),
    "unknown_symbol": (422, 40010001, "invalid symbol: {symbol}"),
    "unsupported_type": (422, 40010001, "invalid order type for this asset class"),
    "limit_fields": (422, 40010001, "limit orders need qty and limit_price"),
    "stop_fields": (422, 40010001, "stop orders need qty and stop_price"),
    "not_cancelable": (422, 42210000, "order is not cancelable"),
    "not_replaceable": (422, 42210000, "order is not replaceable"),
    "invalid_price": (
        422,
        42210000,
        "invalid limit_price {limit_price}. sub-penny increment does not fulfill minimum pricing criteria",
    ),
    "invalid_side": (422, 40010001, "invalid side"),
    "qty_xor_notional": (422, 40010001, "exactly one of qty or notional is required"),
    "invalid_time_in_force": (422, 40010001, "invalid crypto time_in_force"),
    "duplicate_client_order_id": (422, 40010001, "client_order_id must be unique"),
}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def num(value: Decimal) -> str:
    return format(value.normalize(), "f")


def error(kind: str, context: dict[str, str] | None = None) -> web.Response:
    status, code, template = ERRORS[kind]
    message = template.format_map(context or {})
    return web.json_response({"code": code, "message": message}, status=status)


def not_found(message: str) -> web.Response:
    return web.json_response({"code": 40410000, "message": message}, status=404)


def _status(order: Order) -> str:
    """Alpaca's status: new / partially_filled while resting, replaced, canceled, filled."""
    if order.is_open:
        return "partially_filled" if order.amount else "new"
    if order.replaced_by:
        return "replaced"
    return "canceled" if order.status == USER_CANCELED else order.status


def default_state() -> VenueState:
    state = VenueState((*DEFAULT_MARKETS, AAPL))
    state.prices[AAPL.symbol] = Decimal("190")
    return state


class AlpacaEmulator(EmulatorServer):
    """Alpaca on loopback. Add accounts with `state.add_account(key_id, secret_key, balances)`;
    cash is the "USD" balance, every other balance a long position."""

    def __init__(
        self,
        state: VenueState | None = None,
        stocks: frozenset[str] = frozenset({"AAPL"}),
    ) -> None:
        super().__init__(state or default_state())
        self.app.middlewares.append(self._latency)
        self.stream = TradeUpdates(self.state, self._order_json)  # GET /stream: trade_updates
        self.stocks = stocks  # bases traded as us_equity; the rest is crypto
        self.fill_on_submit_reply = True
        self.working_reads = 0  # GETs of an order that still show it working ("new")
        self._reads: dict[str, int] = {}  # order_id -> GETs answered
        self._submitted: dict[str, Json] = {}  # order_id -> qty / notional / time_in_force sent
        self.in_flight = 0  # requests being answered now
        self.max_in_flight = 0  # the most ever answered at once

    def routes(self, router: web.UrlDispatcher) -> None:
        gets: dict[str, Private] = {
            "/v2/account": self._account,
            "/v2/positions": self._positions,
            "/v2/positions/{symbol:.+}": self._position,
            "/v2/assets/{symbol:.+}": self._asset,
            "/v2/orders": self._list_orders,
            "/v2/orders:by_client_order_id": self._order_by_client_id,
            "/v2/orders/{order_id}": self._get_order,
            "/v2/account/activities/{activity_type}": self._activities,
        }
        for path, handler in gets.items():
            router.add_get(path, self._private(handler))
        router.add_post("/v2/orders", self._private(self._submit))
        router.add_delete("/v2/orders/{order_id}", self._private(self._cancel))
        router.add_patch("/v2/orders/{order_id}", self._private(self._replace))
        router.add_get("/stream", self._trade_updates)

    async def _trade_updates(self, request: web.Request) -> web.StreamResponse:
        return await self.stream.handle(request)

    # -- plumbing ------------------------------------------------------------------------------

    @web.middleware
    async def _latency(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/stream":  # a socket is no request in flight
            stream: web.StreamResponse = await handler(request)
            return stream
        self.state.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            response: web.StreamResponse = await handler(request)
            await self.state.delay()
            return response
        finally:
            self.in_flight -= 1

    def _private(self, handler: Private) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def checked(request: web.Request) -> web.StreamResponse:
            headers = request.headers
            account = self.state.accounts.get(headers.get("APCA-API-KEY-ID", ""))
            if account is None or account.secret != headers.get("APCA-API-SECRET-KEY"):
                return error("invalid_key")
            return await handler(request, account)

        return checked

    def _uuid(self, *parts: str) -> str:
        return str(uuid.uuid5(NS, ":".join(parts)))

    def _is_stock(self, market: Market) -> bool:
        return market.base in self.stocks

    def _symbol(self, market: Market) -> str:
        """The symbol in orders, assets and activities."""
        return market.base if self._is_stock(market) else market.symbol

    def _position_symbol(self, market: Market) -> str:
        return market.base if self._is_stock(market) else market.base + market.quote

    def _market(self, symbol: str) -> Market | None:
        """Accept "BTC/USD", "BTCUSD", "AAPL" or an asset id."""
        for market in self.state.markets.values():
            names = {self._symbol(market), self._position_symbol(market), self._uuid("asset", market.symbol)}
            if symbol.upper() in names or symbol in names:
                return market
        return None

    def _asset_class(self, market: Market) -> str:
        return "us_equity" if self._is_stock(market) else "crypto"

    # -- account and positions -----------------------------------------------------------------

    def _holdings(self, account: Account) -> list[tuple[Market, Decimal]]:
        return [
            (m, qty)
            for m in self.state.markets.values()
            if (qty := account.balances.get(m.base, Decimal(0))) > 0
        ]

    async def _account(self, _: web.Request, account: Account) -> web.Response:
        cash = account.balances.get("USD", Decimal(0))
        long_value = sum((q * self.state.prices[m.symbol] for m, q in self._holdings(account)), Decimal(0))
        equity = num(cash + long_value)
        zero = "0"
        return web.json_response(
            {
                "id": self._uuid("account", account.api_key),
                "account_number": f"PA{uuid.uuid5(NS, account.api_key).int % 10**10:010d}",
                "status": "ACTIVE",
                "crypto_status": "ACTIVE",
                "currency": "USD",
                "buying_power": num(cash),
                "regt_buying_power": num(cash),
                "daytrading_buying_power": zero,
                "effective_buying_power": num(cash),
                "non_marginable_buying_power": num(cash),
                "options_buying_power": num(cash),
                "bod_dtbp": zero,
                "cash": num(cash),
                "accrued_fees": zero,
                "pending_transfer_in": zero,
                "pending_transfer_out": zero,
                "portfolio_value": equity,
                "pattern_day_trader": False,
                "trading_blocked": False,
                "transfers_blocked": False,
                "account_blocked": False,
                "created_at": iso(0),
                "trade_suspended_by_user": False,
                "multiplier": "1",
                "shorting_enabled": False,
                "equity": equity,
                "last_equity": equity,
                "long_market_value": num(long_value),
                "short_market_value": zero,
                "position_market_value": num(long_value),
                "initial_margin": zero,
                "maintenance_margin": zero,
                "last_maintenance_margin": zero,
                "sma": zero,
                "daytrade_count": 0,
                "crypto_tier": 1,
                "options_approved_level": 0,
                "options_trading_level": 0,
            }
        )

    def _avg_entry(self, account: Account, market: Market, qty: Decimal) -> Decimal:
        """Average cost of the holding; what was held before any order counts at today's price."""
        price = self.state.prices[market.symbol]
        orders = [o for o in account.orders if o.symbol == market.symbol]
        held = qty - sum((o.amount if o.side == "buy" else -o.amount for o in orders), Decimal(0))
        basis = held * price
        for order in orders:
            if order.side == "buy":
                held, basis = held + order.amount, basis + order.cost
            elif held > 0:
                held, basis = held - order.amount, basis * (held - order.amount) / held
        return basis / qty if qty else price

    def _position_json(self, account: Account, market: Market, qty: Decimal) -> Json:
        price = self.state.prices[market.symbol]
        entry = self._avg_entry(account, market, qty)
        value, basis = qty * price, qty * entry
        pl = value - basis
        plpc = pl / basis if basis else Decimal(0)
        return {
            "asset_id": self._uuid("asset", market.symbol),
            "symbol": self._position_symbol(market),
            "exchange": "NASDAQ" if self._is_stock(market) else "CRYPTO",
            "asset_class": self._asset_class(market),
            "asset_marginable": False,
            "qty": num(qty),
            "qty_available": num(qty),
            "avg_entry_price": num(entry),
            "side": "long",
            "market_value": num(value),
            "cost_basis": num(basis),
            "unrealized_pl": num(pl),
            "unrealized_plpc": num(plpc),
            "unrealized_intraday_pl": num(pl),
            "unrealized_intraday_plpc": num(plpc),
            "current_price": num(price),
            "lastday_price": num(price),
            "change_today": "0",
        }

    async def _positions(self, _: web.Request, account: Account) -> web.Response:
        return web.json_response([self._position_json(account, m, q) for m, q in self._holdings(account)])

    async def _position(self, request: web.Request, account: Account) -> web.Response:
        market = self._market(request.match_info["symbol"])
        qty = account.balances.get(market.base, Decimal(0)) if market else Decimal(0)
        if market is None or qty <= 0:
            return not_found("position does not exist")
        return web.json_response(self._position_json(account, market, qty))

    async def _asset(self, request: web.Request, _: Account) -> web.Response:
        market = self._market(request.match_info["symbol"])
        if market is None:
            return not_found("asset not found")
        stock = self._is_stock(market)
        asset: Json = {
            "id": self._uuid("asset", market.symbol),
            "class": self._asset_class(market),
            "exchange": "NASDAQ" if stock else "CRYPTO",
            "symbol": self._symbol(market),
            "name": market.base if stock else f"{market.base} / {market.quote}",
            "status": "active",
            "tradable": True,
            "marginable": stock,
            "shortable": stock,
            "easy_to_borrow": stock,
            "fractionable": True,
            "maintenance_margin_requirement": 30 if stock else 100,
            "attributes": [],
        }
        if not stock:  # Alpaca gives order size rules for crypto only
            asset |= {
                "min_order_size": num(market.min_amount),
                "min_trade_increment": num(market.amount_step),
                "price_increment": num(market.price_step),
            }
        return web.json_response(asset)

    # -- orders --------------------------------------------------------------------------------

    def _context(self, account: Account, body: Json) -> dict[str, str]:
        """What the error messages name: symbol, currency, requested, available, min_cost,
        limit_price. A limit buy requests qty at its limit price."""
        market = self._market(str(body.get("symbol", "")))
        if market is None:
            return {"symbol": str(body.get("symbol"))}
        limit = parse_decimal(body.get("limit_price"))
        price = self.state.prices[market.symbol] if limit is None else limit
        qty, notional = parse_decimal(body.get("qty")), parse_decimal(body.get("notional"))
        buy = body.get("side") == "buy"
        base_qty = qty if qty is not None else (notional or Decimal(0)) / price
        requested = (notional if notional is not None else base_qty * price) if buy else base_qty
        currency = market.quote if buy else market.base
        return {
            "symbol": self._symbol(market),
            "currency": currency,
            "requested": num(requested.quantize(market.amount_step)),
            "available": num(account.balances.get(currency, Decimal(0))),
            "min_cost": num(market.min_cost),
            "limit_price": str(body.get("limit_price")),
        }

    def _refusal(self, account: Account, body: Json, client_order_id: str) -> str | None:
        market = self._market(str(body.get("symbol", "")))
        sizes = [parse_decimal(body[k]) for k in ("qty", "notional") if body.get(k) is not None]
        kind = body.get("type")
        limit, stop = kind in ("limit", "stop_limit"), kind in ("stop", "stop_limit")
        types = CRYPTO_ORDER_TYPES if market and not self._is_stock(market) else ORDER_TYPES
        checks = (
            (market is None, "unknown_symbol"),
            (kind not in types, "unsupported_type"),
            (body.get("side") not in ("buy", "sell"), "invalid_side"),
            (len(sizes) != 1 or None in sizes, "qty_xor_notional"),
            (
                limit and (body.get("qty") is None or parse_decimal(body.get("limit_price")) is None),
                "limit_fields",
            ),
            (
                stop and (body.get("qty") is None or parse_decimal(body.get("stop_price")) is None),
                "stop_fields",
            ),
            (
                market is not None
                and not self._is_stock(market)
                and body.get("time_in_force") not in CRYPTO_TIME_IN_FORCE,
                "invalid_time_in_force",
            ),
            (account.order_by_client_id(client_order_id) is not None, "duplicate_client_order_id"),
        )
        return next((kind for refused, kind in checks if refused), None)

    async def _submit(self, request: web.Request, account: Account) -> web.Response:
        body: Json = await request.json()
        context = self._context(account, body)
        fault = self.state.take_fault(account, *Fault)
        if fault is not None and fault is not Fault.TIMEOUT_AFTER_ACCEPT:
            return error(fault.value, context)
        client_order_id = str(body.get("client_order_id") or uuid.uuid4())
        refusal = self._refusal(account, body, client_order_id)
        market = self._market(str(body.get("symbol", "")))
        if refusal is not None or market is None:
            return error(refusal or "unknown_symbol", context)
        try:
            order = self._fill(account, market, body, client_order_id)
        except ValueError as exc:
            return error(str(exc), context)
        self._submitted[order.order_id] = {
            k: None if (v := parse_decimal(body.get(k))) is None else num(v) for k in ("qty", "notional")
        } | {"time_in_force": body.get("time_in_force")}
        if fault is Fault.TIMEOUT_AFTER_ACCEPT:
            await self._hold()
        return web.json_response(self._order_json(order, final=self.fill_on_submit_reply))

    def _fill(self, account: Account, market: Market, body: Json, client_order_id: str) -> Order:
        qty, side = parse_decimal(body.get("qty")), str(body["side"])
        limit, stop = parse_decimal(body.get("limit_price")), parse_decimal(body.get("stop_price"))
        if body["type"] in ("stop", "stop_limit") or (
            body["type"] == "limit" and body.get("time_in_force") != "ioc"
        ):  # these rest
            assert qty is not None  # _refusal checked their fields
            return self.state.place_resting(
                account,
                market.symbol,
                side,
                qty,
                limit_price=limit,
                trigger="stop_loss" if stop is not None else None,
                trigger_price=stop,
                client_order_id=client_order_id,
            )
        if body["type"] == "limit":
            assert qty is not None  # _refusal checked limit orders' fields
            return self.state.fill_limit_ioc(
                account,
                market.symbol,
                side,
                qty,
                Decimal(str(body["limit_price"])),
                client_order_id=client_order_id,
            )
        return self.state.fill(
            account,
            market.symbol,
            side,
            amount=qty,
            cost=parse_decimal(body.get("notional")),
            client_order_id=client_order_id,
        )

    def _order_json(self, order: Order, final: bool = True) -> Json:
        """The order as Alpaca shows it; not `final`: as just accepted (pending_new)."""
        market = self.state.markets[order.symbol]
        sent = self._submitted.get(
            order.order_id, {"qty": num(order.size), "notional": None, "time_in_force": "gtc"}
        )
        at, filled = iso(order.created), final and bool(order.amount)
        # an ioc limit that did not cross; a resting order canceled or replaced
        canceled = final and order.status in ("canceled", USER_CANCELED)
        limit = None if order.limit_price is None else num(order.limit_price)
        # only a resting order (parts kept) can be a replacement: a market order looks at no
        # other (the scan is over every account's orders: 2,000 reads a signal made it quadratic)
        replaces = None
        if order.parts is not None:
            replaces = next(
                (
                    o.order_id
                    for a in self.state.accounts.values()
                    for o in a.orders
                    if o.replaced_by == order.order_id
                ),
                None,
            )
        return {
            "id": order.order_id,
            # Alpaca gives an order placed without one (on its site) a uuid of its own
            "client_order_id": order.client_order_id or self._uuid("client-order", order.order_id),
            "created_at": at,
            "updated_at": iso(order.updated or order.created),
            "submitted_at": at,
            "filled_at": at if final and order.status == "filled" else None,
            "expired_at": None,
            "expires_at": None,
            "canceled_at": at if canceled and not order.replaced_by else None,
            "failed_at": None,
            "replaced_at": at if order.replaced_by else None,
            "replaced_by": order.replaced_by,
            "replaces": replaces,
            "asset_id": self._uuid("asset", market.symbol),
            "symbol": self._symbol(market),
            "asset_class": self._asset_class(market),
            "notional": sent["notional"],
            "qty": sent["qty"],
            "filled_qty": num(order.amount) if filled else "0",
            "filled_avg_price": num(order.price) if filled else None,
            "order_class": "simple" if self._is_stock(market) else "",
            "order_type": ORDER_TYPE_OF[order.kind],
            "type": ORDER_TYPE_OF[order.kind],
            "side": order.side,
            "position_intent": None,
            "time_in_force": sent["time_in_force"],
            "limit_price": limit,
            "stop_price": None if order.trigger_price is None else num(order.trigger_price),
            "status": _status(order) if final else "pending_new",
            "extended_hours": False,
            "legs": None,
            "trail_percent": None,
            "trail_price": None,
            "hwm": None,
            "subtag": None,
            "source": "access_key",
        }

    async def _get_order(self, request: web.Request, account: Account) -> web.Response:
        wanted = request.match_info["order_id"]
        order = next((o for o in account.orders if o.order_id == wanted), None)
        if order is None:
            return not_found("order not found")
        return web.json_response(self._read(order))

    async def _order_by_client_id(self, request: web.Request, account: Account) -> web.Response:
        order = account.order_by_client_id(request.query.get("client_order_id", ""))
        if order is None:
            return not_found("order not found")
        return web.json_response(self._read(order))

    def _read(self, order: Order) -> Json:
        """The order as a GET shows it: still working for its first `working_reads` reads."""
        reads = self._reads[order.order_id] = self._reads.get(order.order_id, 0) + 1
        if reads <= self.working_reads:
            return self._order_json(order, final=False) | {"status": "new"}
        return self._order_json(order)

    async def _cancel(self, request: web.Request, account: Account) -> web.Response:
        order = account.order_by_id(request.match_info["order_id"])
        if order is None:
            return not_found("order not found")
        if not self.state.cancel(order):
            return error("not_cancelable")
        return web.Response(status=204)

    async def _replace(self, request: web.Request, account: Account) -> web.Response:
        """A new order for the body's qty / limit_price (the old one's where not given), under
        the body's client_order_id (a new one where not given); the old order ends replaced."""
        order = account.order_by_id(request.match_info["order_id"])
        if order is None:
            return not_found("order not found")
        body: Json = await request.json()
        qty, limit = parse_decimal(body.get("qty")), parse_decimal(body.get("limit_price"))
        client_order_id = str(body.get("client_order_id") or uuid.uuid4())
        if not order.is_open:
            return error("not_replaceable")
        if account.order_by_client_id(client_order_id) is not None:
            return error("duplicate_client_order_id")
        try:
            new = self.state.replace(
                account, order, price=limit, size=qty or order.remaining, client_order_id=client_order_id
            )
        except ValueError as exc:
            kind = {"not_open": "not_replaceable"}.get(str(exc), str(exc))
            return error(
                kind,
                self._context(
                    account,
                    body | {"symbol": self._symbol(self.state.markets[order.symbol]), "side": order.side},
                ),
            )
        self._submitted[new.order_id] = {"qty": num(new.size), "notional": None, "time_in_force": "gtc"}
        return web.json_response(self._order_json(new))

    async def _list_orders(self, request: web.Request, account: Account) -> web.Response:
        query = request.query
        symbols = set(filter(None, query.get("symbols", "").split(",")))
        status = query.get("status", "open")
        orders = [
            o
            for o in account.orders
            if (status == "all" or (status == "open") == o.is_open)
            and (not symbols or self._symbol(self.state.markets[o.symbol]) in symbols)
        ]
        newest_first = query.get("direction", "desc") == "desc"
        orders = (orders[::-1] if newest_first else orders)[: int(query.get("limit", 50))]
        return web.json_response([self._order_json(o) for o in orders])

    # -- activities ----------------------------------------------------------------------------

    def _activity_json(self, account: Account, order: Order) -> Json:
        at = datetime.fromtimestamp(order.created, UTC)
        stamp = at.strftime("%Y%m%d%H%M%S") + f"{at.microsecond // 1000:03d}"
        return {
            "id": f"{stamp}::{self._uuid('fill', order.trade_id)}",
            "account_id": self._uuid("account", account.api_key),
            "activity_type": "FILL",
            "transaction_time": iso(order.created),
            "type": "fill",
            "price": num(order.price),
            "qty": num(order.amount),
            "side": order.side,
            "symbol": self._symbol(self.state.markets[order.symbol]),
            "leaves_qty": "0",
            "order_id": order.order_id,
            "cum_qty": num(order.amount),
            "order_status": order.status,
        }

    async def _activities(self, request: web.Request, account: Account) -> web.Response:
        """FILL activities, newest first unless direction=asc; page_token is the last id seen."""
        query = request.query
        if request.match_info["activity_type"] != "FILL":
            return web.json_response([])
        after, until = (
            datetime.fromisoformat(query[k]).timestamp() if k in query else None for k in ("after", "until")
        )
        orders = [
            o
            for o in account.trades()
            if (after is None or o.created > after) and (until is None or o.created < until)
        ]
        items = [self._activity_json(account, o) for o in orders]
        items = items if query.get("direction") == "asc" else items[::-1]
        ids = [item["id"] for item in items]
        token = query.get("page_token")
        start = ids.index(token) + 1 if token in ids else 0
        return web.json_response(items[start : start + int(query.get("page_size", 100))])
