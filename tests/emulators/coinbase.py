"""Coinbase Advanced Trade emulator: `api/v3/brokerage/...` plus the `v2` calls ccxt makes.

Replies use Coinbase's own JSON, so `ccxt.async_support.coinbase` works unchanged with
`ex.urls["api"] = {"rest": emulator.url}`. Private calls are checked like a legacy API key:
CB-ACCESS-KEY, CB-ACCESS-TIMESTAMP (seconds, ±30 s) and CB-ACCESS-SIGN = hex HMAC-SHA256 of
timestamp + method + path + body with the secret (v2 GETs sign `?query` in place of a body).
CDP JWT keys (`Authorization: Bearer`) are refused with 401.

Orders: market_market_ioc and sor_limit_ioc end at once; limit_limit_gtc and
stop_limit_stop_limit_gtc rest (`VenueState`'s controls fill and trigger them; a stop's
stop_direction with its side tells stop-loss from take-profit). orders/batch_cancel cancels,
orders/edit changes a limit_limit_gtc order's price and size in place.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aiohttp import web
from multidict import MultiMapping

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

Json = dict[str, Any]
Private = Callable[[web.Request, Account], Awaitable[web.StreamResponse]]
NS = uuid.UUID("6f1c1f0e-2b1a-4c59-9d0e-0c0ba5e00001")
TIMESTAMP_WINDOW_S = 30
V3 = "/api/v3/brokerage"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def num(value: Decimal) -> str:
    return format(value.normalize(), "f")


def product_id(market: Market) -> str:
    return f"{market.base}-{market.quote}"


def unauthorized() -> web.Response:
    return web.Response(status=401, text="Unauthorized\n")


def failure(error: str, message: str, preview: str = "") -> Callable[[Json], web.Response]:
    """Coinbase's refused-order reply: HTTP 200 with success false and an error_response."""

    def reply(body: Json) -> web.Response:
        ioc = (body.get("order_configuration") or {}).get("market_market_ioc") or {}
        size = "QUOTE" if "quote_size" in ioc else "BASE"
        details = {
            "error": error,
            "message": message,
            "error_details": "",
            "preview_failure_reason": preview.format(size=size),
            "new_order_failure_reason": error,
        }
        return web.json_response(
            {
                "success": False,
                "failure_reason": "UNKNOWN_FAILURE_REASON",
                "order_id": "",
                "error_response": details,
                "order_configuration": body.get("order_configuration"),
            }
        )

    return reply


# Keyed by Fault.value and by VenueState.fill's ValueError kinds.
ORDER_ERRORS: dict[str, Callable[[Json], web.Response]] = {
    "http_500": lambda _: web.json_response(
        {"error": "INTERNAL", "error_details": "internal error", "message": "internal error"}, status=500
    ),
    "rate_limit": lambda _: web.json_response(
        {"errors": [{"id": "rate_limit_exceeded", "message": "Too many requests"}]}, status=429
    ),
    "invalid_key": lambda _: unauthorized(),
    "insufficient_funds": failure(
        "INSUFFICIENT_FUND", "Insufficient balance in source account", "PREVIEW_INSUFFICIENT_FUND"
    ),
    "min_not_met": failure(
        "UNKNOWN_FAILURE_REASON", "order size is too small", "PREVIEW_INVALID_{size}_SIZE_TOO_SMALL"
    ),
    "unknown_symbol": failure("INVALID_PRODUCT_ID", "invalid product_id"),
    "invalid_side": failure("INVALID_SIDE", "invalid side"),
    "unsupported": failure(
        "UNSUPPORTED_ORDER_CONFIGURATION",
        "only market_market_ioc, sor_limit_ioc, limit_limit_gtc and stop_limit_stop_limit_gtc "
        "orders are emulated",
    ),
    "invalid_price": failure(
        "INVALID_PRICE_PRECISION", "invalid price precision", "PREVIEW_INVALID_PRICE_PRECISION"
    ),
}
# an IOC that found no liquidity is CANCELLED, as is a resting order canceled
STATUSES = {"filled": "FILLED", "canceled": "CANCELLED", OPEN: "OPEN", USER_CANCELED: "CANCELLED"}
# order_configuration kinds the emulator takes -> the sets of fields each may be sized by
CONFIGS: dict[str, tuple[frozenset[str], ...]] = {
    "market_market_ioc": (frozenset({"base_size"}), frozenset({"quote_size"})),
    "sor_limit_ioc": (frozenset({"base_size", "limit_price"}),),
    "limit_limit_gtc": (frozenset({"base_size", "limit_price"}),),
    "stop_limit_stop_limit_gtc": (frozenset({"base_size", "limit_price", "stop_price"}),),
}
NUMBERS = ("base_size", "quote_size", "limit_price", "stop_price")
STOP_DIRECTIONS = ("STOP_DIRECTION_STOP_UP", "STOP_DIRECTION_STOP_DOWN")
ORDER_TYPES = {
    "market": "MARKET",
    "limit_ioc": "LIMIT",
    "limit": "LIMIT",
    "stop_loss_limit": "STOP_LIMIT",
    "take_profit_limit": "STOP_LIMIT",
}


def edit_failure(reason: str) -> web.Response:
    """Coinbase's refused edit: HTTP 200, success false, the reason in `errors`."""
    return web.json_response(
        {
            "success": False,
            "errors": [
                {"edit_failure_reason": reason, "preview_failure_reason": "UNKNOWN_PREVIEW_FAILURE_REASON"}
            ],
        }
    )


NOT_FOUND = {
    "error": "NOT_FOUND",
    "error_details": "order with this orderID was not found",
    "message": "order with this orderID was not found",
}


def product_of(order: Order) -> str:
    return order.symbol.replace("/", "-")


def trade_id(order: Order) -> str:
    return str(uuid.uuid5(NS, f"trade:{order.trade_id}"))


# List filters: query parameter -> the order attribute its values are matched against.
ORDER_FILTERS: dict[str, Callable[[Order], str]] = {
    "order_ids": lambda o: o.order_id,
    "product_ids": product_of,
    "product_id": product_of,
    "order_status": lambda o: STATUSES[o.status],
    "order_side": lambda o: o.side.upper(),
    "order_types": lambda o: ORDER_TYPES[o.kind],
}
FILL_FILTERS: dict[str, Callable[[Order], str]] = {
    "order_ids": lambda o: o.order_id,
    "order_id": lambda o: o.order_id,
    "trade_ids": trade_id,
    "product_ids": product_of,
    "product_id": product_of,
}


def parse_config(config: object) -> tuple[str, dict[str, Decimal]] | None:
    """The order_configuration kind the emulator fills and its numbers; None if unsupported."""
    if not isinstance(config, dict):
        return None
    kind = next((k for k in CONFIGS if isinstance(config.get(k), dict)), None)
    if kind is None:
        return None
    given = {k: v for k, v in config[kind].items() if k in NUMBERS}
    numbers = {k: d for k, v in given.items() if (d := parse_decimal(v)) is not None}
    if set(given) not in CONFIGS[kind] or len(numbers) != len(given):
        return None
    return kind, numbers


def select(
    orders: list[Order],
    query: MultiMapping[str],
    filters: dict[str, Callable[[Order], str]],
    window: tuple[str, str],
) -> list[Order]:
    """Newest first, keeping orders matching every given filter and the [start, end] window."""
    wanted = {key: set(query.getall(key)) for key in filters if key in query}
    start, end = (datetime.fromisoformat(query[k]).timestamp() if k in query else None for k in window)
    return [
        o
        for o in reversed(orders)
        if all(filters[k](o) in values for k, values in wanted.items())
        and (start is None or o.created >= start)
        and (end is None or o.created <= end)
    ]


def page(items: list[Json], query: MultiMapping[str], default: int) -> tuple[list[Json], str]:
    offset = int(query.get("cursor") or 0)
    end = offset + int(query.get("limit") or default)
    return items[offset:end], str(end) if end < len(items) else ""


class CoinbaseEmulator(EmulatorServer):
    """Coinbase Advanced Trade on loopback: `state.add_account(key, secret, balances)`.

    The secret is used as-is (no base64). For ccxt to sign with HMAC it must not be PEM, not
    88 characters long and not end in "=", and the key must not contain "organizations/".
    """

    def __init__(self, state: VenueState | None = None) -> None:
        super().__init__(state)
        self.app.middlewares.append(self._latency)
        self._configs: dict[str, Json] = {}  # order_id -> order_configuration as sent

    def routes(self, router: web.UrlDispatcher) -> None:
        public = {
            "/v2/currencies": self._fiat_currencies,
            "/v2/currencies/crypto": self._crypto_currencies,
            "/v2/exchange-rates": self._exchange_rates,
            "/v2/time": self._time_v2,
            f"{V3}/time": self._time,
            f"{V3}/market/products": self._products,
            f"{V3}/market/products/{{product_id}}": self._product,
            f"{V3}/market/products/{{product_id}}/ticker": self._ticker,
        }
        private: dict[str, Private] = {
            "/v2/accounts": self._accounts_v2,
            f"{V3}/accounts": self._accounts,
            f"{V3}/accounts/{{account_uuid}}": self._account,
            f"{V3}/transaction_summary": self._transaction_summary,
            f"{V3}/products": lambda request, _: self._products(request),
            f"{V3}/products/{{product_id}}": lambda request, _: self._product(request),
            f"{V3}/products/{{product_id}}/ticker": lambda request, _: self._ticker(request),
            f"{V3}/orders/historical/batch": self._list_orders,  # before {order_id}
            f"{V3}/orders/historical/fills": self._fills,
            f"{V3}/orders/historical/{{order_id}}": self._get_order,
        }
        for path, handler in public.items():
            router.add_get(path, handler)
        for path, private_handler in private.items():
            router.add_get(path, self._private(private_handler))
        router.add_post(f"{V3}/orders", self._private(self._create_order))
        router.add_post(f"{V3}/orders/batch_cancel", self._private(self._batch_cancel))
        router.add_post(f"{V3}/orders/edit", self._private(self._edit_order))

    # -- plumbing ------------------------------------------------------------------------------

    @web.middleware
    async def _latency(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.state.requests += 1
        response: web.StreamResponse = await handler(request)
        await self.state.delay()
        return response

    def _private(self, handler: Private) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def checked(request: web.Request) -> web.StreamResponse:
            account = await self._authenticate(request)
            if isinstance(account, web.Response):
                return account
            return await handler(request, account)

        return checked

    async def _authenticate(self, request: web.Request) -> Account | web.Response:
        headers = request.headers
        account = self.state.accounts.get(headers.get("CB-ACCESS-KEY", ""))
        timestamp = headers.get("CB-ACCESS-TIMESTAMP", "")
        if account is None or not timestamp.isdigit():
            return unauthorized()
        if abs(time.time() - int(timestamp)) > TIMESTAMP_WINDOW_S:
            return web.json_response(
                {"errors": [{"id": "authentication_error", "message": "request timestamp expired"}]},
                status=401,
            )
        query = request.rel_url.raw_query_string
        v2_query = f"?{query}" if query and request.path.startswith("/v2/") else ""
        payload = timestamp + request.method + request.rel_url.raw_path
        payload += await request.text() or v2_query
        expected = hmac.new(account.secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, headers.get("CB-ACCESS-SIGN", "")):
            return unauthorized()
        return account

    def _market(self, pid: str) -> Market | None:
        return next((m for m in self.state.markets.values() if product_id(m) == pid), None)

    def _currencies(self, account: Account) -> list[str]:
        markets = self.state.markets.values()
        return sorted({c for m in markets for c in (m.base, m.quote)} | set(account.balances))

    def _fiat(self) -> set[str]:
        return {m.quote for m in self.state.markets.values()}

    def _uuid(self, *parts: str) -> str:
        return str(uuid.uuid5(NS, ":".join(parts)))

    # -- public --------------------------------------------------------------------------------

    async def _fiat_currencies(self, _: web.Request) -> web.Response:
        data = [{"id": c, "name": c, "min_size": "0.01"} for c in sorted(self._fiat())]
        return web.json_response({"data": data})

    async def _crypto_currencies(self, _: web.Request) -> web.Response:
        bases = sorted({m.base for m in self.state.markets.values()} - self._fiat())
        data = [
            {
                "asset_id": self._uuid("asset", c),
                "code": c,
                "name": c,
                "color": "#000000",
                "sort_index": i,
                "exponent": 8,
                "type": "crypto",
                "address_regex": "",
            }
            for i, c in enumerate(bases)
        ]
        return web.json_response({"data": data})

    async def _exchange_rates(self, _: web.Request) -> web.Response:
        rates = {m.base: num(1 / self.state.prices[s]) for s, m in self.state.markets.items()}
        rates["USD"] = "1"
        return web.json_response({"data": {"currency": "USD", "rates": rates}})

    async def _time_v2(self, _: web.Request) -> web.Response:
        now = time.time()
        return web.json_response({"data": {"iso": iso(now), "epoch": int(now)}})

    async def _time(self, _: web.Request) -> web.Response:
        now = time.time()
        return web.json_response(
            {"iso": iso(now), "epochSeconds": str(int(now)), "epochMillis": str(int(now * 1000))}
        )

    def _product_json(self, market: Market) -> Json:
        pid = product_id(market)
        return {
            "product_id": pid,
            "price": num(self.state.prices[market.symbol]),
            "price_percentage_change_24h": "0",
            "volume_24h": "0",
            "volume_percentage_change_24h": "0",
            "base_increment": num(market.amount_step),
            "quote_increment": num(market.price_step),
            "quote_min_size": num(market.min_cost),
            "quote_max_size": "150000000",
            "base_min_size": num(market.min_amount),
            "base_max_size": "100000",
            "base_name": market.base,
            "quote_name": market.quote,
            "watched": False,
            "is_disabled": False,
            "new": False,
            "status": "online",
            "cancel_only": False,
            "limit_only": False,
            "post_only": False,
            "trading_disabled": False,
            "auction_mode": False,
            "product_type": "SPOT",
            "quote_currency_id": market.quote,
            "base_currency_id": market.base,
            "fcm_trading_session_details": None,
            "mid_market_price": "",
            "alias": "",
            "alias_to": [],
            "base_display_symbol": market.base,
            "quote_display_symbol": market.quote,
            "view_only": False,
            "price_increment": num(market.price_step),
            "display_name": pid,
            "product_venue": "CBE",
        }

    async def _products(self, request: web.Request) -> web.Response:
        spot = request.query.get("product_type", "SPOT") == "SPOT"
        products = [self._product_json(m) for m in self.state.markets.values()] if spot else []
        return web.json_response({"products": products, "num_products": len(products)})

    async def _product(self, request: web.Request) -> web.Response:
        market = self._market(request.match_info["product_id"])
        if market is None:
            return web.json_response(
                {"error": "NOT_FOUND", "error_details": "", "message": "product not found"}, status=404
            )
        return web.json_response(self._product_json(market))

    async def _ticker(self, request: web.Request) -> web.Response:
        market = self._market(request.match_info["product_id"])
        if market is None:
            return web.json_response({"trades": [], "best_bid": "", "best_ask": ""})
        price = num(self.state.prices[market.symbol])
        trade = {
            "trade_id": str(self.state.next_id()),
            "product_id": product_id(market),
            "price": price,
            "size": "0",
            "time": iso(time.time()),
            "side": "BUY",
            "bid": "",
            "ask": "",
        }
        return web.json_response({"trades": [trade], "best_bid": price, "best_ask": price})

    # -- accounts ------------------------------------------------------------------------------

    def _wallet(self, account: Account, currency: str) -> Json:
        balance = num(account.balances.get(currency, Decimal(0)))
        kind = "FIAT" if currency in self._fiat() else "CRYPTO"
        return {
            "uuid": self._uuid(account.api_key, currency),
            "name": f"{currency} Wallet",
            "currency": currency,
            "available_balance": {"value": balance, "currency": currency},
            "default": True,
            "active": True,
            "created_at": iso(0),
            "updated_at": iso(0),
            "deleted_at": None,
            "type": f"ACCOUNT_TYPE_{kind}",
            "ready": True,
            "hold": {"value": "0", "currency": currency},
            "retail_portfolio_id": self._uuid(account.api_key, "portfolio"),
            "platform": "ACCOUNT_PLATFORM_CONSUMER",
        }

    async def _accounts(self, _: web.Request, account: Account) -> web.Response:
        wallets = [self._wallet(account, c) for c in self._currencies(account)]
        return web.json_response({"accounts": wallets, "has_next": False, "cursor": "", "size": len(wallets)})

    async def _account(self, request: web.Request, account: Account) -> web.Response:
        wanted = request.match_info["account_uuid"]
        wallets = (self._wallet(account, c) for c in self._currencies(account))
        wallet = next((w for w in wallets if w["uuid"] == wanted), None)
        if wallet is None:
            return web.json_response(
                {"error": "NOT_FOUND", "error_details": "", "message": "account not found"}, status=404
            )
        return web.json_response({"account": wallet})

    async def _accounts_v2(self, _: web.Request, account: Account) -> web.Response:
        def wallet(currency: str) -> Json:
            wallet_id = self._uuid(account.api_key, currency)
            return {
                "id": wallet_id,
                "name": f"{currency} Wallet",
                "primary": currency == "BTC",
                "type": "fiat" if currency in self._fiat() else "wallet",
                "currency": {"code": currency, "name": currency},
                "balance": {"amount": num(account.balances.get(currency, Decimal(0))), "currency": currency},
                "created_at": iso(0),
                "updated_at": iso(0),
                "resource": "account",
                "resource_path": f"/v2/accounts/{wallet_id}",
                "allow_deposits": True,
                "allow_withdrawals": True,
            }

        return web.json_response(
            {
                "pagination": {
                    "ending_before": None,
                    "starting_after": None,
                    "limit": 250,
                    "order": "desc",
                    "previous_uri": None,
                    "next_uri": None,
                },
                "data": [wallet(c) for c in self._currencies(account)],
            }
        )

    async def _transaction_summary(self, _: web.Request, __: Account) -> web.Response:
        # The venue-neutral state charges no fees, so the fee tier says so.
        tier = {
            "pricing_tier": "Advanced 1",
            "usd_from": "0",
            "usd_to": "1000",
            "taker_fee_rate": "0",
            "maker_fee_rate": "0",
            "aop_from": "",
            "aop_to": "",
        }
        return web.json_response(
            {
                "total_volume": 0,
                "total_fees": 0,
                "fee_tier": tier,
                "margin_rate": None,
                "goods_and_services_tax": None,
                "advanced_trade_only_volume": 0,
                "advanced_trade_only_fees": 0,
                "coinbase_pro_volume": 0,
                "coinbase_pro_fees": 0,
                "total_balance": "",
                "has_promo_fee": False,
            }
        )

    # -- orders --------------------------------------------------------------------------------

    async def _create_order(self, request: web.Request, account: Account) -> web.Response:
        body: Json = await request.json()
        fault = self.state.take_fault(account, *Fault)
        if fault is not None and fault is not Fault.TIMEOUT_AFTER_ACCEPT:
            return ORDER_ERRORS[fault.value](body)
        client_order_id = body.get("client_order_id") or None
        existing = account.order_by_client_id(client_order_id) if client_order_id else None
        if existing is not None:  # Coinbase answers a reused client_order_id with that order
            return web.json_response(self._accepted(existing))
        order_or_error = self._fill(account, body, client_order_id)
        if isinstance(order_or_error, str):
            return ORDER_ERRORS[order_or_error](body)
        if fault is Fault.TIMEOUT_AFTER_ACCEPT:
            await self._hold()
        return web.json_response(self._accepted(order_or_error))

    def _fill(self, account: Account, body: Json, client_order_id: str | None) -> Order | str:
        """Fill (or rest) the order, or name the ORDER_ERRORS entry that refuses it."""
        side = {"BUY": "buy", "SELL": "sell"}.get(str(body.get("side")))
        if side is None:
            return "invalid_side"
        parsed = parse_config(body.get("order_configuration"))
        if parsed is None:
            return "unsupported"
        kind, sizes = parsed
        market = self._market(str(body.get("product_id")))
        symbol = market.symbol if market else ""  # VenueState refuses "" as "unknown_symbol"
        trigger = None
        if kind == "stop_limit_stop_limit_gtc":
            direction = body["order_configuration"][kind].get("stop_direction")
            if direction not in STOP_DIRECTIONS:
                return "unsupported"
            down = direction == "STOP_DIRECTION_STOP_DOWN"
            trigger = "stop_loss" if down == (side == "sell") else "take_profit"
        try:
            if kind in ("limit_limit_gtc", "stop_limit_stop_limit_gtc"):
                order = self.state.place_resting(
                    account,
                    symbol,
                    side,
                    sizes["base_size"],
                    limit_price=sizes["limit_price"],
                    trigger=trigger,
                    trigger_price=sizes.get("stop_price"),
                    client_order_id=client_order_id,
                )
            elif kind == "sor_limit_ioc":
                order = self.state.fill_limit_ioc(
                    account,
                    symbol,
                    side,
                    sizes["base_size"],
                    sizes["limit_price"],
                    client_order_id=client_order_id,
                )
            else:
                order = self.state.fill(
                    account,
                    symbol,
                    side,
                    amount=sizes.get("base_size"),
                    cost=sizes.get("quote_size"),
                    client_order_id=client_order_id,
                )
        except ValueError as exc:
            return str(exc)
        self._configs[order.order_id] = {kind: body["order_configuration"][kind]}
        return order

    def _accepted(self, order: Order) -> Json:
        return {
            "success": True,
            "failure_reason": "UNKNOWN_FAILURE_REASON",
            "order_id": order.order_id,
            "success_response": {
                "order_id": order.order_id,
                "product_id": product_of(order),
                "side": order.side.upper(),
                "client_order_id": order.client_order_id or "",
            },
            "order_configuration": self._config(order),
        }

    def _in_quote(self, order: Order) -> bool:
        return "quote_size" in self._config(order).get("market_market_ioc", {})

    def _config(self, order: Order) -> Json:
        """The order_configuration as sent, with a resting order's price and size as amended."""
        default = {"market_market_ioc": {"base_size": num(order.amount)}}
        config = self._configs.get(order.order_id, default)
        resting = config.get("limit_limit_gtc") or config.get("stop_limit_stop_limit_gtc")
        if resting is not None and order.limit_price is not None:
            resting |= {"base_size": num(order.size), "limit_price": num(order.limit_price)}
        return config

    def _order_json(self, account: Account, order: Order) -> Json:
        created, filled = iso(order.created), bool(order.amount)
        fills = len(order.parts) if order.parts is not None else int(filled)
        done = (order.amount / order.size * 100) if order.size else Decimal(0)
        trigger = (
            "INVALID_ORDER_TYPE"
            if order.trigger is None
            else "STOP_PENDING"
            if order.waiting
            else "STOP_TRIGGERED"
        )
        return {
            "order_id": order.order_id,
            "product_id": product_of(order),
            "user_id": self._uuid(account.api_key),
            "order_configuration": self._config(order),
            "side": order.side.upper(),
            "client_order_id": order.client_order_id or "",
            "status": STATUSES[order.status],
            "time_in_force": "IMMEDIATE_OR_CANCEL" if order.parts is None else "GOOD_UNTIL_CANCELLED",
            "created_time": created,
            "completion_percentage": num(done),
            "filled_size": num(order.amount),
            "average_filled_price": num(order.price),
            "fee": "",
            "number_of_fills": str(fills),
            "filled_value": num(order.cost),
            "pending_cancel": False,
            "size_in_quote": self._in_quote(order),
            "total_fees": "0",
            "size_inclusive_of_fees": self._in_quote(order),
            "total_value_after_fees": num(order.cost),
            "trigger_status": trigger,
            "order_type": ORDER_TYPES[order.kind],
            "reject_reason": "REJECT_REASON_UNSPECIFIED",
            "settled": not order.is_open,
            "product_type": "SPOT",
            "reject_message": "",
            "cancel_message": "User requested cancel" if order.status == USER_CANCELED else "",
            "order_placement_source": "RETAIL_ADVANCED",
            "outstanding_hold_amount": "0",
            "is_liquidation": False,
            "last_fill_time": created if filled else None,
        }

    def _fill_json(self, account: Account, order: Order) -> Json:
        # Quote-sized orders report their fills in quote units, as Coinbase does.
        size = order.cost if self._in_quote(order) else order.amount
        return {
            "entry_id": hashlib.sha256(order.trade_id.encode()).hexdigest(),
            "trade_id": trade_id(order),
            "order_id": order.order_id,
            "trade_time": iso(order.created),
            "trade_type": "FILL",
            "price": num(order.price),
            "size": num(size),
            "commission": "0",
            "product_id": product_of(order),
            "sequence_timestamp": iso(order.created),
            "liquidity_indicator": "TAKER",
            "size_in_quote": self._in_quote(order),
            "user_id": self._uuid(account.api_key),
            "side": order.side.upper(),
            "retail_portfolio_id": self._uuid(account.api_key, "portfolio"),
        }

    async def _get_order(self, request: web.Request, account: Account) -> web.Response:
        wanted = request.match_info["order_id"]
        order = next((o for o in account.orders if o.order_id == wanted), None)
        if order is None:
            return web.json_response(NOT_FOUND, status=404)
        return web.json_response({"order": self._order_json(account, order)})

    async def _list_orders(self, request: web.Request, account: Account) -> web.Response:
        orders = select(account.orders, request.query, ORDER_FILTERS, ("start_date", "end_date"))
        items, cursor = page([self._order_json(account, o) for o in orders], request.query, 100)
        return web.json_response(
            {"orders": items, "sequence": "0", "has_next": bool(cursor), "cursor": cursor}
        )

    async def _batch_cancel(self, request: web.Request, account: Account) -> web.Response:
        body: Json = await request.json()
        results = []
        for order_id in body.get("order_ids") or []:
            order = next((o for o in account.orders if o.order_id == order_id), None)
            reason = (
                "UNKNOWN_CANCEL_ORDER"
                if order is None
                else "UNKNOWN_CANCEL_FAILURE_REASON"
                if self.state.cancel(order)
                else "INVALID_CANCEL_REQUEST"
            )
            results.append(
                {
                    "success": reason == "UNKNOWN_CANCEL_FAILURE_REASON",
                    "failure_reason": reason,
                    "order_id": order_id,
                }
            )
        return web.json_response({"results": results})

    async def _edit_order(self, request: web.Request, account: Account) -> web.Response:
        """A limit_limit_gtc order's new price and size (its total), in place."""
        body: Json = await request.json()
        order = next((o for o in account.orders if o.order_id == body.get("order_id")), None)
        price, size = parse_decimal(body.get("price")), parse_decimal(body.get("size"))
        if order is None or not order.is_open:
            return edit_failure("ORDER_NOT_FOUND" if order is None else "ORDER_ALREADY_DONE")
        if order.kind != "limit" or price is None or size is None:
            return edit_failure("UNSUPPORTED_ORDER_CONFIGURATION")
        try:
            self.state.amend(account, order, price=price, size=size)
        except ValueError as exc:
            return edit_failure(
                {
                    "invalid_size": "CANNOT_EDIT_TO_BELOW_FILLED_SIZE",
                    "insufficient_funds": "INSUFFICIENT_FUNDS",
                    "invalid_price": "INVALID_PRICE_PRECISION",
                }.get(str(exc), "UNKNOWN")
            )
        return web.json_response({"success": True, "errors": []})

    async def _fills(self, request: web.Request, account: Account) -> web.Response:
        window = ("start_sequence_timestamp", "end_sequence_timestamp")
        fills = account.trades()
        orders = select(fills, request.query, FILL_FILTERS, window)
        items, cursor = page([self._fill_json(account, o) for o in orders], request.query, 100)
        return web.json_response({"fills": items, "cursor": cursor})
