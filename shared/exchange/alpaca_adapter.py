"""`ExchangeAccount` on Alpaca's Trading API v2.

Calls go out on aiohttp (`shared.exchange.alpaca_http`) as alpaca-py's `RESTClient` sends them,
on one session per process and endpoint: as many calls in flight as the copier has orders, and
no thread each. Measured with `python -m scripts.bench_exchanges --quick alpaca` (1,000
followers, emulator at 50 ms, 2 cores), master fill → last order accepted, p50, and copier CPU
per follower per signal: alpaca-py's synchronous `TradingClient` in a pool of 256 threads
3.92 s / 2.94 ms and 5.63 s / 3.77 ms; this transport 2.54 s / 1.54 ms and 2.76 s / 1.16 ms
(one run 5.02 s / 1.84 ms; the floor, 1,000 plain aiohttp posts, 1.1-1.6 s in those runs).
No retries inside: `shared.exchange.placing` retries, after a lookup. Replies are read raw, as
the strings Alpaca sends, because alpaca-py's models turn amounts into floats; order bodies are
ours for the same reason (`MarketOrderRequest(...).to_request_fields()` sends qty "0.000000123"
as 1.23e-07 and notional "10.01" as 10.01).

Symbols: ours are always BASE/QUOTE. A crypto pair is traded as "BTC/USD" and held as "BTCUSD";
a stock is "AAPL/USD" to us and "AAPL" to Alpaca. The asset record tells which is which; assets
are looked up once per process and endpoint (`AlpacaShare`), with the HTTP session: followers
asking for a symbol while its lookup is in flight wait for that one lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec

from shared.config import AccountConfig, Credentials
from shared.errors import (
    AuthError,
    BelowMinimum,
    ExchangeError,
    InsufficientFunds,
    InvalidOrder,
    RateLimited,
    TemporaryError,
    UnsupportedSymbol,
)
from shared.exchange.alpaca_http import AlpacaHttp, ReplyError, auth_headers, endpoint
from shared.exchange.alpaca_stream import AlpacaStream, stream_url
from shared.exchange.port import (
    AccountSnapshot,
    Activity,
    Fill,
    NotNative,
    OpenOrder,
    OrderAck,
    OrderCapabilities,
    OrderCommand,
    RestingKind,
    amended_client_id,
    order_status,
    resting_kind,
)
from shared.exchange.throttle import BurstThrottle
from shared.messages import MarketRules

if TYPE_CHECKING:
    from shared.exchange.context import AdapterContext

log = logging.getLogger("copytrade.exchange.alpaca")
QUOTE = "USD"
NOTIONAL_STEP = Decimal("0.01")
# stock limit prices: cents from $1 (Alpaca takes 4 decimals below $1; cents are valid there too)
STOCK_PRICE_STEP = Decimal("0.01")
FILL_PAGE = 100
# pauses before each read-back of a just-placed order Alpaca still shows working (pending_new)
FILL_READS_S = (0.0, 0.2, 0.5)
CALLS_PER_MINUTE = 200  # Alpaca's Trading API limit per account


class _AlreadyPlaced(InvalidOrder):
    """422 "client_order_id must be unique": the order was placed before."""


# (HTTP statuses, text in Alpaca's message, our class): first match wins, then by status.
_BY_TEXT: tuple[tuple[frozenset[int], str, type[ExchangeError]], ...] = (
    (frozenset({422}), "client_order_id must be unique", _AlreadyPlaced),
    (frozenset({400, 403, 422}), "insufficient", InsufficientFunds),
    (frozenset({400, 403, 422}), "minimal", BelowMinimum),  # "cost basis must be >= minimal ..."
    (frozenset({400, 403, 422}), "must be >=", BelowMinimum),  # "notional value must be >= 1.00"
    (frozenset({400, 422}), "invalid symbol", UnsupportedSymbol),
)
_BY_STATUS: dict[int, type[ExchangeError]] = {
    400: InvalidOrder,
    401: AuthError,
    403: AuthError,
    422: InvalidOrder,
    429: RateLimited,
}


def translate(status: int, body: str) -> ExchangeError:
    """Our error for an Alpaca error reply (HTTP status and body); the message has the status
    and Alpaca's code, never the body."""
    text, code = _message_and_code(body)
    kind = next((k for statuses, part, k in _BY_TEXT if status in statuses and part in text), None)
    if kind is None:
        kind = TemporaryError if status >= 500 else _BY_STATUS.get(status, ExchangeError)
    return kind(f"alpaca: HTTP {status}" + (f" [{code}]" if code else ""))


def _message_and_code(body: str) -> tuple[str, str]:
    """Alpaca's message (lower case, to match on) and numeric code; empty for a non-JSON body."""
    try:
        parsed = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return "", ""
    if not isinstance(parsed, dict):
        return "", ""
    code = parsed.get("code")
    return str(parsed.get("message", "")).lower(), str(code) if isinstance(code, int) else ""


def _crypto_rules(symbol: str, raw: dict[str, Any]) -> MarketRules:
    tick = raw.get("price_increment")
    return MarketRules(
        symbol=symbol,
        cost_step=NOTIONAL_STEP,
        amount_step=Decimal(str(raw.get("min_trade_increment") or "0.000000001")),
        min_amount=Decimal(str(raw.get("min_order_size") or 0)),
        price_step=Decimal(str(tick)) if tick else None,
    )


def _stock_rules(symbol: str, raw: dict[str, Any]) -> MarketRules:
    """Stocks publish no size rules: fractional shares go to 9 decimals, from $1 of notional;
    other stocks trade whole shares only, and never by notional."""
    fractionable = bool(raw.get("fractionable"))
    step = Decimal("0.000000001") if fractionable else Decimal(1)
    return MarketRules(
        symbol=symbol,
        amount_step=step,
        min_amount=step,
        min_cost=Decimal(1) if fractionable else Decimal(0),
        cost_step=NOTIONAL_STEP,
        quote_orders=fractionable,
        price_step=STOCK_PRICE_STEP,
    )


# Alpaca's order type for each resting kind it has: no standalone take-profit order (only a
# bracket's leg), and crypto takes no stop-market order
_ORDER_TYPES: dict[RestingKind, str] = {
    "limit": "limit",
    "stop_loss": "stop",
    "stop_loss_limit": "stop_limit",
}
_KINDS = {v: k for k, v in _ORDER_TYPES.items()}
_REPLACE = (
    "PATCH /v2/orders/{id} replaces: a new order (new id) for what is left, under a derived client order id",
)
CRYPTO_CAPABILITIES = OrderCapabilities(
    native=frozenset({"limit", "stop_loss_limit"}),
    amend="replace",
    amend_keeps_client_id=False,
    notes=("crypto orders: market, limit, stop_limit; no take-profit order", *_REPLACE),
)
STOCK_CAPABILITIES = OrderCapabilities(
    native=frozenset({"limit", "stop_loss", "stop_loss_limit"}),
    amend="replace",
    amend_keeps_client_id=False,
    notes=("no standalone take-profit order", *_REPLACE),
)
# Alpaca's statuses of an order still working
_OPEN = frozenset(
    {
        "new",
        "partially_filled",
        "accepted",
        "pending_new",
        "accepted_for_bidding",
        "held",
        "pending_replace",
        "pending_cancel",
    }
)


@dataclass(frozen=True)
class _AssetClass:
    """How Alpaca trades one asset class."""

    time_in_force: str
    position_symbol: Callable[[str], str]  # order symbol -> the symbol positions use
    rules: Callable[[str, dict[str, Any]], MarketRules]  # from the raw asset record
    capabilities: OrderCapabilities  # its resting orders (always good-till-canceled)


_CLASSES: dict[str, _AssetClass] = {
    "crypto": _AssetClass("gtc", lambda s: s.replace("/", ""), _crypto_rules, CRYPTO_CAPABILITIES),
    "us_equity": _AssetClass("day", lambda s: s, _stock_rules, STOCK_CAPABILITIES),
}


@dataclass(frozen=True)
class _Asset:
    order_symbol: str  # "BTC/USD", "AAPL"
    kind: _AssetClass
    rules: MarketRules


def _parse_asset(symbol: str, raw: dict[str, Any]) -> _Asset | None:
    kind = _CLASSES.get(str(raw.get("class")))
    if kind is None or not raw.get("tradable", False):
        return None
    return _Asset(order_symbol=str(raw["symbol"]), kind=kind, rules=kind.rules(symbol, raw))


class AlpacaShare:
    """Per process and endpoint: one HTTP session (`AlpacaHttp`) and the assets, looked up
    once each."""

    def __init__(self, http: AlpacaHttp) -> None:
        self.http = http
        self.assets: dict[str, _Asset | None] = {}
        self.lookups: dict[str, asyncio.Task[_Asset | None]] = {}  # in flight, one per symbol

    def lookup(
        self,
        symbol: str,
        read: Callable[[], Coroutine[Any, Any, _Asset | None]],
    ) -> asyncio.Task[_Asset | None]:
        """The symbol's lookup in flight, or a new one with `read`."""
        task = self.lookups.get(symbol)
        if task is None:
            task = self.lookups[symbol] = asyncio.get_running_loop().create_task(read())
            task.add_done_callback(functools.partial(self._settled, symbol))
        return task

    def _settled(self, symbol: str, task: asyncio.Task[_Asset | None]) -> None:
        """Keep what a lookup found; a failed one is forgotten (the next call tries again), its
        error read here so none goes unobserved when every waiter gave up."""
        if self.lookups.get(symbol) is task:
            del self.lookups[symbol]
        if not task.cancelled() and task.exception() is None:
            self.assets[symbol] = task.result()

    async def close(self) -> None:
        for task in list(self.lookups.values()):
            task.cancel()
        await self.http.close()


def _share(ctx: AdapterContext, base_url: str | None, paper: bool) -> AlpacaShare:
    url = endpoint(base_url, paper)
    key = f"alpaca:{url}"
    share = ctx.shared.get(key)
    if not isinstance(share, AlpacaShare):
        share = ctx.shared[key] = AlpacaShare(AlpacaHttp(url, ctx.http_timeout_s, ctx.alpaca_connections))
    return share


def _dec(value: object) -> Decimal:
    return Decimal(0) if value is None else Decimal(str(value))


_ENDED = ("canceled", "expired", "rejected")  # Alpaca's statuses of an order that ended


def _ack(order: dict[str, Any]) -> OrderAck:
    filled = _dec(order.get("filled_qty"))
    price = order.get("filled_avg_price")
    ended = order.get("status") in _ENDED or order.get("status") == "replaced"
    return OrderAck(
        exchange_order_id=str(order["id"]),
        client_order_id=str(order["client_order_id"]),
        status=order_status(done=order.get("status") == "filled", ended=ended, filled=filled),
        filled_base=filled if filled > 0 else None,
        avg_price=_dec(price) if price is not None and filled > 0 else None,
        ordered_base=None if order.get("qty") is None else _dec(order["qty"]),
    )


def _open_order(order: dict[str, Any]) -> OpenOrder | None:
    kind = _KINDS.get(str(order.get("type")))
    if kind is None or order.get("status") not in _OPEN or order.get("time_in_force") == "ioc":
        return None
    limit, stop = order.get("limit_price"), order.get("stop_price")
    return OpenOrder(
        client_order_id=order.get("client_order_id") or None,
        exchange_order_id=str(order["id"]),
        symbol=_canonical(str(order["symbol"])),
        kind=kind,
        side=order["side"],
        size=_dec(order.get("qty")),
        filled=_dec(order.get("filled_qty")),
        price=None if limit is None else _dec(limit),
        trigger_price=None if stop is None else _dec(stop),
    )


def _canonical(symbol: str) -> str:
    return symbol if "/" in symbol else f"{symbol}/{QUOTE}"


def _fill(activity: dict[str, Any]) -> Fill:
    at = datetime.fromisoformat(str(activity["transaction_time"])).timestamp()
    return Fill(
        order_id=str(activity["order_id"]),
        symbol=_canonical(str(activity["symbol"])),
        side=activity["side"],
        amount=_dec(activity["qty"]),
        price=_dec(activity["price"]),
        at=at,
        trade_id=None if activity.get("id") is None else str(activity["id"]),
    )


class AlpacaAccount:
    """One Alpaca account (paper or live, per `AccountConfig.paper`)."""

    def __init__(self, account: AccountConfig, credentials: Credentials, ctx: AdapterContext) -> None:
        self.account_id = account.id
        self._share = _share(ctx, account.base_url, account.paper)
        self._headers = auth_headers(credentials.api_key, credentials.secret)
        self._stream = AlpacaStream(
            url=stream_url(account.base_url, paper=account.paper),
            key=credentials.api_key,
            secret=credentials.secret,
            account_id=account.id,
        )
        # its own rate limiter: a minute's calls at once, then Alpaca's rate
        self._throttle = (
            BurstThrottle(60_000 / CALLS_PER_MINUTE, CALLS_PER_MINUTE) if ctx.rate_limit else None
        )

    def spare_budget(self, keep: float = 0.5) -> bool:
        """Whether a background call may go now and leave `keep` of the minute's budget for the
        account's own orders."""
        return self._throttle is None or self._throttle.has_room(1.0, keep=CALLS_PER_MINUTE * keep)

    @property
    def rate_limit_waits(self) -> int:
        """Calls that found this account's rate limiter full and waited (0 with it off)."""
        return 0 if self._throttle is None else self._throttle.waits

    @property
    def http_session(self) -> aiohttp.ClientSession:
        """The HTTP session this account's requests go through (shared by Alpaca accounts)."""
        return self._share.http.session

    async def _call(
        self, method: str, path: str, data: dict[str, Any] | None = None, *, missing_ok: bool = False
    ) -> Any:
        """One API call; with `missing_ok`, 404 (no such position, order or asset) is None."""
        if self._throttle is not None:
            await self._throttle()
        try:
            return await self._share.http.request(method, path, data, self._headers)
        except ReplyError as exc:
            if missing_ok and exc.status == 404:
                return None
            raise translate(exc.status, exc.body) from None
        except (TimeoutError, aiohttp.ClientConnectionError) as exc:
            raise TemporaryError(f"alpaca: {type(exc).__name__}") from None
        except aiohttp.ClientError as exc:
            raise ExchangeError(f"alpaca: {type(exc).__name__}") from None

    async def connect(self) -> None:
        return None  # nothing to load up front: assets are read on first use, once per process

    async def close(self) -> None:
        await self._stream.close()  # the HTTP session is shared: AdapterContext.close() closes it

    @property
    def subscribed(self) -> bool:
        return self._stream.subscribed

    def activity(self) -> AsyncIterator[Activity]:
        """`port.Streaming`: Alpaca's trade_updates stream (`shared.exchange.alpaca_stream`);
        no REST call. It ends when the account is closed."""
        return self._stream.activity()

    async def _asset(self, symbol: str, *, retry: bool = True) -> _Asset | None:
        """The asset, from the process's table, else from the one lookup in flight for it."""
        share = self._share
        if symbol in share.assets:
            return share.assets[symbol]
        joined = symbol in share.lookups
        lookup = share.lookup(symbol, functools.partial(self._lookup_asset, symbol))
        try:
            return await asyncio.shield(lookup)  # a waiter timing out leaves it to the others
        except ExchangeError:
            if not (joined and retry):
                raise
            # perhaps another account's failure (its keys): once more, in a new lookup
            return await self._asset(symbol, retry=False)

    async def _lookup_asset(self, symbol: str) -> _Asset | None:
        """The pair itself ("BTC/USD"), else the base as a stock ("AAPL" for "AAPL/USD")."""
        base, _, quote = symbol.partition("/")
        candidates = [(symbol, "crypto")] + ([(base, "us_equity")] if quote in ("", QUOTE) else [])
        for name, wanted in candidates:
            raw = await self._call("get", f"/assets/{name}", missing_ok=True)
            if raw is not None and raw.get("class") == wanted:
                return _parse_asset(symbol, raw)
        return None

    async def snapshot(self) -> AccountSnapshot:
        account = await self._call("get", "/account")
        return AccountSnapshot(equity=_dec(account["equity"]), cash=_dec(account["cash"]))

    async def position(self, symbol: str) -> Decimal:
        asset = await self._asset(symbol)
        if asset is None:
            return Decimal(0)
        held = await self._call(
            "get", f"/positions/{asset.kind.position_symbol(asset.order_symbol)}", missing_ok=True
        )
        return Decimal(0) if held is None else _dec(held.get("qty"))

    async def market_rules(self, symbol: str) -> MarketRules | None:
        asset = await self._asset(symbol)
        return None if asset is None else asset.rules

    async def price(self, symbol: str) -> Decimal | None:
        """The trading API quotes no prices (that is the market-data API, another service);
        a held position carries its current price, otherwise there is none."""
        asset = await self._asset(symbol)
        if asset is None:
            return None
        held = await self._call(
            "get", f"/positions/{asset.kind.position_symbol(asset.order_symbol)}", missing_ok=True
        )
        return None if held is None or not held.get("current_price") else _dec(held["current_price"])

    async def place_order(self, order: OrderCommand) -> OrderAck:
        sent = await self.send_order(order)
        return sent if resting_kind(order) is not None else await self.read_fill(order, sent)

    async def send_order(self, order: OrderCommand) -> OrderAck:
        asset = await self._asset(order.symbol)
        if asset is None:
            raise UnsupportedSymbol(f"alpaca: {order.symbol} is not a tradable asset")
        if resting_kind(order) is not None:
            return await self._place_resting(order, asset)
        body = {
            "symbol": asset.order_symbol,
            "side": order.side,
            "type": "market",
            "time_in_force": asset.kind.time_in_force,
            "client_order_id": order.client_order_id,
        } | _size(order, asset.rules)
        if order.limit_price is not None:  # immediate-or-cancel: it never rests on the book
            body |= {
                "type": "limit",
                "time_in_force": "ioc",
                "limit_price": format(order.limit_price.normalize(), "f"),
            }
        try:
            placed = await self._call("post", "/orders", body)
        except _AlreadyPlaced:
            found = await self.find_order(order.client_order_id, order.symbol)
            if found is None:
                raise InvalidOrder("alpaca: client order id reused") from None
            return found
        return msgspec.structs.replace(_ack(placed), accepted_at=time.time())

    async def read_fill(self, order: OrderCommand, sent: OrderAck) -> OrderAck:
        """The order's outcome, read back while Alpaca still shows it working: its submit reply
        is usually pending_new with nothing filled. Still working after the last read (a stock
        order outside market hours waits for the open), or unreadable: submitted, as placed."""
        ack = sent
        for pause in FILL_READS_S:
            if ack.status != "submitted":
                break
            await asyncio.sleep(pause)
            try:
                found = await self.find_order(order.client_order_id, order.symbol)
            except ExchangeError as exc:
                log.warning(
                    "event=order_fill_unread venue=alpaca account=%s client_order_id=%s error=%s",
                    self.account_id,
                    order.client_order_id,
                    type(exc).__name__,
                )
                break
            ack = found or ack
        return msgspec.structs.replace(ack, accepted_at=sent.accepted_at)

    async def find_order(self, client_order_id: str, symbol: str) -> OrderAck | None:
        found = await self._call(
            "get", "/orders:by_client_order_id", {"client_order_id": client_order_id}, missing_ok=True
        )
        return None if found is None else _ack(found)

    # --- resting orders ---------------------------------------------------------------------

    async def order_capabilities(self, symbol: str) -> OrderCapabilities:
        asset = await self._asset(symbol)
        if asset is None:
            raise UnsupportedSymbol(f"alpaca: {symbol} is not a tradable asset")
        return asset.kind.capabilities

    async def _place_resting(self, order: OrderCommand, asset: _Asset) -> OrderAck:
        """A good-till-canceled limit, stop or stop-limit order; one read back (it rests)."""
        kind = resting_kind(order)
        if kind is None or kind not in asset.kind.capabilities.native:
            raise NotNative(f"alpaca: no native {kind} order for {order.symbol}")
        body = {
            "symbol": asset.order_symbol,
            "side": order.side,
            "type": _ORDER_TYPES[kind],
            "time_in_force": "gtc",
            "client_order_id": order.client_order_id,
        } | _size(order, asset.rules)
        if order.limit_price is not None:
            body["limit_price"] = format(order.limit_price.normalize(), "f")
        if order.trigger_price is not None:
            body["stop_price"] = format(order.trigger_price.normalize(), "f")
        try:
            placed = await self._call("post", "/orders", body)
        except _AlreadyPlaced:
            placed = None
        accepted_at = time.time()
        found = await self._raw_order(order.client_order_id) or placed
        if found is None:
            raise InvalidOrder("alpaca: client order id reused") from None
        return msgspec.structs.replace(_ack(found), accepted_at=accepted_at)

    async def _raw_order(self, client_order_id: str) -> dict[str, Any] | None:
        found = await self._call(
            "get", "/orders:by_client_order_id", {"client_order_id": client_order_id}, missing_ok=True
        )
        return None if found is None else dict(found)

    async def cancel_order(self, client_order_id: str, symbol: str) -> OrderAck | None:
        found = await self._raw_order(client_order_id)
        if found is None:
            return None
        if found.get("status") in _OPEN:
            with contextlib.suppress(InvalidOrder):  # 422, not cancelable: ended meanwhile
                await self._call("delete", f"/orders/{found['id']}", missing_ok=True)
            found = await self._raw_order(client_order_id) or found
        if found.get("status") in _OPEN - {"pending_cancel"}:
            raise ExchangeError(f"alpaca: order {found['id']} is still {found.get('status')}")
        return _ack(found)

    async def amend_order(
        self, client_order_id: str, symbol: str, *, price: Decimal | None = None, size: Decimal | None = None
    ) -> OrderAck:
        """Alpaca replaces: a new order for what is left (size less what filled) under
        `amended_client_id`, found again by it if an earlier call replaced already."""
        found = await self._raw_order(client_order_id)
        if found is None or found.get("status") not in _OPEN:
            raise InvalidOrder(f"alpaca: no open order {client_order_id} to amend")
        if found.get("type") != "limit":
            raise NotNative("alpaca: only resting limit orders are amended: cancel and place")
        new_id = amended_client_id(client_order_id, price, size)
        replacement = await self._raw_order(new_id)
        if replacement is None:
            left = (_dec(found["qty"]) if size is None else size) - _dec(found.get("filled_qty"))
            if left <= 0:
                raise InvalidOrder(f"alpaca: size {size} is not above what filled")
            body = {"qty": format(left.normalize(), "f"), "client_order_id": new_id}
            if price is not None:
                body["limit_price"] = format(price.normalize(), "f")
            replacement = await self._call("patch", f"/orders/{found['id']}", body)
        return _ack(replacement)

    async def open_orders(self, symbol: str | None = None) -> list[OpenOrder]:
        params: dict[str, Any] = {"status": "open", "limit": 500, "direction": "asc"}
        if symbol is not None:
            asset = await self._asset(symbol)
            if asset is None:
                return []
            params["symbols"] = asset.order_symbol
        orders = await self._call("get", "/orders", params)
        return [o for o in map(_open_order, orders) if o is not None]

    async def fills_since(self, cursor: float) -> list[Fill]:
        """FILL activities after `cursor` (unix seconds), oldest first, all pages."""
        after = datetime.fromtimestamp(cursor, UTC).isoformat()
        params: dict[str, Any] = {"after": after, "direction": "asc", "page_size": FILL_PAGE}
        fills: list[Fill] = []
        while True:
            page = await self._call("get", "/account/activities/FILL", params)
            fills += [_fill(activity) for activity in page]
            if len(page) < FILL_PAGE:
                return [f for f in fills if f.at > cursor]
            params["page_token"] = page[-1]["id"]


def _size(order: OrderCommand, rules: MarketRules) -> dict[str, str]:
    """notional for quote-sized market buys where the asset takes them, else qty on the asset's
    step (a limit order is always by qty)."""
    by_notional = order.side == "buy" and order.limit_price is None and rules.quote_orders
    if order.size_type == "quote" and by_notional:
        notional = order.size.quantize(NOTIONAL_STEP, rounding=ROUND_DOWN)
        _refuse_zero(notional, order)
        return {"notional": format(notional, "f")}
    base = order.size if order.size_type == "base" else order.size / order.reference_price
    qty = (base / rules.amount_step).to_integral_value(rounding=ROUND_DOWN) * rules.amount_step
    _refuse_zero(qty, order)
    return {"qty": format(qty.normalize(), "f")}


def _refuse_zero(size: Decimal, order: OrderCommand) -> None:
    if size <= 0:
        raise BelowMinimum(f"alpaca: {order.size} {order.size_type} of {order.symbol} rounds to nothing")
