"""`ExchangeAccount` for Kraken, Coinbase, Binance and OKX: one class on ccxt.async_support,
driven by the venue records in `venues.py`.

Per follower: its own ccxt instance, so its own nonce and its own rate limiter (a leaky bucket
holding the venue's burst, `throttle.BurstThrottle`).
Per venue and endpoint per process (`CcxtShare`, kept in `AdapterContext.shared`): one market
table loaded once by a credential-less instance and handed to every follower's instance, one
aiohttp session and one TLS context. A follower's `close()` never closes what is shared.
A follower's instance is a copy of one prototype per share, not a new ccxt construction: ccxt
builds every instance from its venue description (deep copies of `has`, `api`, `options`, a
scan of ~1,500 attributes), about 0.8 ms of CPU and a thousand objects the garbage collector
walks on every full collection; a copy shares the read-only description and owns what a
request writes (`_PER_CLIENT`), its credentials and its rate limiter.
Prices are public and the same for every account: the share reads them through that instance,
one request for all the accounts that ask within PRICE_REUSE_S. Venues limit public calls per
IP (Kraken about one a second), so a ticker read per follower would have 1,000 followers of a
pod refused when their snapshots expire together.

Nonces, Kraken: a signed Kraken call carries a nonce that must exceed the last nonce Kraken saw
for that API key. ccxt keeps the counter per instance (strictly increasing within it), not per
key, so one API key must be used by exactly one client in one process. copytrade serves each
follower from one copier group, and within a group one replica claims each signal for a
follower — but replicas of a group still interleave calls on the same key (snapshots, orders of
different signals), and two time-based nonces signed in one order can arrive in the other, which
Kraken refuses with EAPI:Invalid nonce (a TemporaryError here, so the order is looked up and
retried). Use one API key per follower per copier group and run such a group as one replica,
or give the key a nonce window in Kraken's key settings. The Kraken nonce is wall-clock
microseconds (`venues.microsecond_nonce`): it only ever grows past ccxt's default
milliseconds, but a key once used with it cannot go back to a millisecond client.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from decimal import ROUND_DOWN, Decimal
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import aiohttp
import ccxt.async_support as ccxt
import certifi
import msgspec

from shared.config import AccountConfig, Credentials
from shared.errors import (
    AuthError,
    BelowMinimum,
    ConfigError,
    CopytradeError,
    ExchangeError,
    InsufficientFunds,
    InvalidOrder,
    RateLimited,
    TemporaryError,
    UnsupportedSymbol,
)
from shared.exchange import ccxt_orders
from shared.exchange.ccxt_stream import CcxtStream
from shared.exchange.port import (
    AccountSnapshot,
    Activity,
    Fill,
    OpenOrder,
    OrderAck,
    OrderCapabilities,
    OrderCommand,
    order_status,
    resting_kind,
)
from shared.exchange.throttle import BurstThrottle
from shared.exchange.venues import VENUES, CcxtVenue, Lookup
from shared.messages import MarketRules

if TYPE_CHECKING:
    from shared.exchange.context import AdapterContext

log = logging.getLogger("copytrade.exchange.ccxt")
# ccxt logs signed request headers at DEBUG: its instances log here, never below INFO.
_VENDOR_LOG = logging.getLogger("copytrade.exchange.ccxt.vendor")
_VENDOR_LOG.setLevel(logging.INFO)
# Per shared session: no cap of its own. The copier's concurrency bounds the requests in flight;
# a lower cap here only queued a fan-out's orders behind each other's round trips.
HTTP_CONNECTIONS = 0
DNS_CACHE_S = 300  # a venue's address, resolved once for the connections a fan-out opens
# ccxt instance attributes a request may write into; the rest of an instance is the venue's
# description, read only after construction, and shared by the copies of one prototype
_PER_CLIENT = (
    "options",
    "headers",
    "balance",
    "orderbooks",
    "tickers",
    "bidsasks",
    "trades",
    "transactions",
    "ohlcvs",
    "fundingRates",
    "tokenBucket",
)
FILL_READ_DEFER_S = 1.0  # most a fill read waits for the venue's placements in flight
BALANCE_REUSE_S = 1.0  # a position read reuses the snapshot's balance read this recently
PRICE_REUSE_S = 1.0  # a venue's price read serves every account of the process this long

# ccxt class -> ours, most specific first; venue codes (CcxtVenue.reclassify) are checked before.
_BY_CLASS: tuple[tuple[type[Exception], type[ExchangeError]], ...] = (
    (ccxt.RateLimitExceeded, RateLimited),
    (ccxt.DDoSProtection, RateLimited),
    (ccxt.InsufficientFunds, InsufficientFunds),
    (ccxt.AuthenticationError, AuthError),  # and PermissionDenied, AccountSuspended
    (ccxt.BadSymbol, UnsupportedSymbol),
    (ccxt.InvalidOrder, InvalidOrder),
    (ccxt.OperationFailed, TemporaryError),  # NetworkError family, and Binance's 5xx
)


def translate(venue: CcxtVenue, exc: Exception) -> ExchangeError:
    """Our error for a vendor exception. The message names the ccxt class and venue codes only:
    ccxt's own text carries URLs (with signatures in query strings) and reply bodies."""
    codes = venue.error_codes(str(exc))
    kind = next((venue.reclassify[c] for c in codes if c in venue.reclassify), None)
    if kind is None:
        kind = next((ours for theirs, ours in _BY_CLASS if isinstance(exc, theirs)), ExchangeError)
    detail = f" [{', '.join(codes)}]" if codes else ""
    return kind(f"{venue.name}: {type(exc).__name__}{detail}")


@contextmanager
def vendor_calls(venue: CcxtVenue) -> Iterator[None]:
    """Translate whatever ccxt raises inside the block; ours pass through."""
    try:
        yield
    except CopytradeError:
        raise
    except Exception as exc:  # noqa: BLE001 - the vendor edge: whatever ccxt raises becomes ours
        raise translate(venue, exc) from None


class CcxtShare:
    """What all accounts of one venue and endpoint share in a process: HTTP session, TLS
    context, and the market table (loaded once, by an instance without credentials)."""

    def __init__(self, venue: CcxtVenue, base_url: str | None, ctx: AdapterContext) -> None:
        self.venue = venue
        self.base_url = base_url
        self._timeout_ms = int(ctx.http_timeout_s * 1000)
        self._rate_limit = ctx.rate_limit
        self._ssl = ssl.create_default_context(cafile=certifi.where())
        self._session: aiohttp.ClientSession | None = None
        self._markets: Any = None  # the instance whose market table everybody uses
        self._prototype: Any = None  # what followers' instances are copies of (markets set)
        self._loading = asyncio.Lock()
        self._placing = 0  # create_order calls in flight, all accounts of the venue
        self._placed = asyncio.Event()  # set while none are
        self._placed.set()
        self._quotes: dict[str, tuple[float, Decimal | None]] = {}  # symbol -> (read at, last)
        self._reading: dict[str, asyncio.Future[None]] = {}  # symbol -> its read in flight
        budget = venue.per_ip  # one bucket for every account of the venue in the process
        self.ip_throttle = (
            BurstThrottle(budget.rate_limit_ms, budget.burst)
            if budget is not None and self._rate_limit
            else None
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                ssl=self._ssl,
                limit=HTTP_CONNECTIONS,
                ttl_dns_cache=DNS_CACHE_S,
                keepalive_timeout=self.venue.keepalive_s,
            )
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def _construct(self) -> Any:
        """A ccxt instance built from the venue's description, on the shared session."""
        config: dict[str, Any] = copy.deepcopy(dict(self.venue.config)) | {
            "session": self.session,
            "ssl_context": self._ssl,
            "timeout": self._timeout_ms,
            "enableRateLimit": self._rate_limit,
            "timeout_on_exit": 0,
            "logger": _VENDOR_LOG,
        }
        if self.venue.nonce is not None:
            config["nonce"] = self.venue.nonce
        ex = getattr(ccxt, self.venue.name)(config)
        if self.base_url:
            ex.urls["api"] = _redirected(ex.urls["api"], self.base_url, self.venue.url_keys)
        self._limit(ex)
        return ex

    def _limit(self, ex: Any) -> None:
        if self._rate_limit:  # ccxt's own holds no burst and forgets idle time
            ex.throttler = BurstThrottle(ex.rateLimit, self.venue.burst, then=self.ip_throttle)
        else:
            ex.init_throttler()  # never waits with enableRateLimit off; not shared all the same

    async def prototype(self) -> Any:
        """What followers' instances are copies of: built once markets are loaded."""
        if self._prototype is None:
            source = await self.markets()
            if self._prototype is None:
                prototype = self._construct()
                prototype.set_markets_from_exchange(source)  # and Kraken's altname index
                self._prototype = prototype
        return self._prototype

    def client(self, prototype: Any, credentials: Credentials) -> Any:
        """A follower's ccxt instance: a copy of the prototype with its own credentials, rate
        limiter and writable state."""
        ex = copy.copy(prototype)
        for name in _PER_CLIENT:
            setattr(ex, name, dict(getattr(prototype, name) or {}))
        ex.apiKey, ex.secret = credentials.api_key, credentials.secret
        if credentials.passphrase:
            ex.password = credentials.passphrase
        self._limit(ex)
        return ex

    async def markets(self) -> Any:
        """The instance holding the venue's markets, loading them on first use."""
        if self._markets is not None:
            return self._markets
        async with self._loading:
            if self._markets is None:
                loader = self._construct()
                try:
                    with vendor_calls(self.venue):
                        await loader.load_markets()
                except BaseException:
                    await loader.close()
                    raise
                self._markets = loader
                log.info("event=markets_loaded venue=%s markets=%d", self.venue.name, len(loader.markets))
        return self._markets

    async def prices(self, symbols: list[str]) -> dict[str, Decimal | None]:
        """The last price of each symbol, read once for all accounts asking within
        PRICE_REUSE_S (a read in flight is joined, not repeated)."""
        now = time.monotonic()
        stale = [
            s
            for s in dict.fromkeys(symbols)
            if s not in self._reading and (s not in self._quotes or now - self._quotes[s][0] > PRICE_REUSE_S)
        ]
        if stale:
            read = asyncio.ensure_future(self._read_prices(stale, now))
            self._reading.update(dict.fromkeys(stale, read))
        for pending in {self._reading[s] for s in symbols if s in self._reading}:
            await asyncio.shield(pending)  # one caller cancelled does not cancel the others' read
        return {s: self._quotes[s][1] for s in symbols}

    async def _read_prices(self, symbols: list[str], started: float) -> None:
        try:
            ex = await self.markets()
            with vendor_calls(self.venue):
                tickers = await (
                    ex.fetch_tickers(symbols) if len(symbols) > 1 else _one_ticker(ex, symbols[0])
                )
            for symbol in symbols:
                ticker = tickers.get(symbol) or {}
                last = ticker.get("last") or ticker.get("close")
                self._quotes[symbol] = (started, None if last is None else _dec(last))
        finally:
            for symbol in symbols:
                self._reading.pop(symbol, None)

    @contextmanager
    def placing(self) -> Iterator[None]:
        """Count an order placement in flight (see `placements_done`)."""
        self._placing += 1
        self._placed.clear()
        try:
            yield
        finally:
            self._placing -= 1
            if not self._placing:
                self._placed.set()

    async def placements_done(self) -> None:
        """Wait (a bounded time) until no order of this venue is being placed in the process.

        Reading an order's fill is bookkeeping; placing is what the copy latency is: in a fan-out
        to many followers, every order goes out before the first fill is read back.
        """
        if self._placed.is_set():  # a lone order: no task and timer to wait for nothing
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._placed.wait(), FILL_READ_DEFER_S)

    async def close(self) -> None:
        loader, self._markets = self._markets, None
        prototype, self._prototype = self._prototype, None
        for ex in (loader, prototype):
            if ex is not None:
                await ex.close()  # not the shared session: ccxt closes only sessions it made
        session, self._session = self._session, None
        if session is not None:
            await session.close()


async def _one_ticker(ex: Any, symbol: str) -> dict[str, Any]:
    return {symbol: await ex.fetch_ticker(symbol)}


def _redirected(api: dict[str, Any], base_url: str, keys: tuple[str, ...] | None) -> dict[str, Any]:
    base = base_url.rstrip("/")
    if keys is not None:
        return dict.fromkeys(keys, base)
    return {k: base + urlparse(u).path for k, u in api.items() if isinstance(u, str)}


def _share(ctx: AdapterContext, venue: CcxtVenue, base_url: str | None) -> CcxtShare:
    key = f"ccxt:{venue.name}:{base_url or ''}"
    share = ctx.shared.get(key)
    if not isinstance(share, CcxtShare):
        share = ctx.shared[key] = CcxtShare(venue, base_url, ctx)
    return share


def _dec(value: object) -> Decimal:
    return Decimal(0) if value is None else Decimal(str(value))


_STEP_FROM_PRECISION: dict[int, Callable[[object], Decimal]] = {
    ccxt.TICK_SIZE: _dec,
    ccxt.DECIMAL_PLACES: lambda places: Decimal(1).scaleb(-int(str(places))),
}


_ENDED = ("canceled", "expired", "rejected")  # ccxt's unified statuses of an order that ended


def _ack(order: dict[str, Any], client_order_id: str) -> OrderAck:
    filled = _dec(order.get("filled"))
    average = order.get("average")
    if average is None and filled > 0 and order.get("cost") is not None:
        average = _dec(order["cost"]) / filled
    return OrderAck(
        exchange_order_id=str(order["id"]),
        client_order_id=client_order_id,
        status=order_status(
            done=order.get("status") == "closed", ended=order.get("status") in _ENDED, filled=filled
        ),
        filled_base=filled if filled > 0 else None,
        avg_price=_dec(average) if average is not None and filled > 0 else None,
    )


def _precision_step(ex: Any, market: dict[str, Any], of: str) -> Decimal | None:
    """The market's amount or price step, from ccxt's precision in the venue's precision mode."""
    precision = (market.get("precision") or {}).get(of)
    parse = _STEP_FROM_PRECISION.get(ex.precisionMode)
    return None if precision is None or parse is None else parse(precision)


def _fill(trade: dict[str, Any]) -> Fill:
    return Fill(
        order_id=str(trade["order"]),
        symbol=str(trade["symbol"]),
        side=trade["side"],
        amount=_dec(trade["amount"]),
        price=_dec(trade["price"]),
        at=int(trade["timestamp"]) / 1000,
        trade_id=None if trade.get("id") is None else str(trade["id"]),
    )


async def _open_then_closed(ex: Any, client_order_id: str, symbol: str) -> dict[str, Any] | None:
    for fetch in (ex.fetch_open_orders, ex.fetch_closed_orders):
        orders = await fetch(symbol, params={"clientOrderId": client_order_id})
        if orders:
            return dict(orders[0])
    return None


async def _by_client_id(ex: Any, client_order_id: str, symbol: str) -> dict[str, Any] | None:
    try:
        return dict(await ex.fetch_order(None, symbol, {"clientOrderId": client_order_id}))
    except ccxt.OrderNotFound:
        return None


async def _recent_orders(ex: Any, client_order_id: str, symbol: str) -> dict[str, Any] | None:
    orders = await ex.fetch_orders(symbol)
    return next((dict(o) for o in orders if o.get("clientOrderId") == client_order_id), None)


_LOOKUPS: dict[Lookup, Callable[[Any, str, str], Awaitable[dict[str, Any] | None]]] = {
    "open_then_closed": _open_then_closed,
    "by_client_id": _by_client_id,
    "recent_orders": _recent_orders,
}


class CcxtAccount:
    """One account on a ccxt venue. Connects on first use; `connect()` does it up front."""

    def __init__(self, account: AccountConfig, credentials: Credentials, ctx: AdapterContext) -> None:
        venue = VENUES.get(account.exchange)
        if venue is None:
            raise ConfigError(f"account {account.id}: {account.exchange} is not a ccxt venue")
        self.account_id = account.id
        self._venue = venue
        self._credentials = credentials
        self._share = _share(ctx, venue, account.base_url)
        self._ex: Any = None
        self._orders = 0  # orders placed (begun): a balance read before one is stale
        self._balance: tuple[float, int, dict[str, Any]] | None = None  # (monotonic, _orders, reply)

    @property
    def http_session(self) -> aiohttp.ClientSession:
        """The HTTP session this account's requests go through (shared by the venue's accounts)."""
        return self._share.session

    @property
    def rate_limit_waits(self) -> int:
        """Calls that found this account's rate limiter full and waited (0 with it off)."""
        throttle = getattr(self._ex, "throttler", None)
        return throttle.waits if isinstance(throttle, BurstThrottle) else 0

    def spare_budget(self, keep: float = 0.5) -> bool:
        """Whether a background call may go now and leave `keep` of the burst for the account's
        own orders (the master's trades never wait behind its own fill watching)."""
        throttle = getattr(self._ex, "throttler", None)
        if not isinstance(throttle, BurstThrottle):
            return True
        return throttle.has_room(1.0, keep=self._share.venue.burst * keep)

    @property
    def ip_limit_waits(self) -> int:
        """Calls of any account of the venue in this process that waited on its per-IP budget."""
        throttle = self._share.ip_throttle
        return 0 if throttle is None else throttle.waits

    async def connect(self) -> None:
        await self._client()

    async def _client(self) -> Any:
        if self._ex is not None:
            return self._ex
        prototype = await self._share.prototype()
        if self._ex is None:  # another call may have connected while this one waited
            self._ex = self._share.client(prototype, self._credentials)
        return self._ex

    async def close(self) -> None:
        ex, self._ex = self._ex, None
        if ex is not None:
            await ex.close()

    async def snapshot(self) -> AccountSnapshot:
        ex = await self._client()
        quote = self._venue.quote_currency
        balance = await self._fetch_balance(ex)
        total, free = balance.get("total") or {}, balance.get("free") or {}
        held = {
            f"{c}/{quote}": _dec(n)
            for c, n in total.items()
            if c != quote and n and f"{c}/{quote}" in ex.markets
        }
        prices = await self._share.prices(list(held)) if held else {}
        value = sum((amount * (prices.get(s) or Decimal(0)) for s, amount in held.items()), Decimal(0))
        return AccountSnapshot(equity=_dec(total.get(quote)) + value, cash=_dec(free.get(quote)))

    async def price(self, symbol: str) -> Decimal | None:
        ex = await self._client()
        if symbol not in ex.markets:
            return None
        return (await self._share.prices([symbol]))[symbol]

    async def position(self, symbol: str) -> Decimal:
        ex = await self._client()
        market = ex.markets.get(symbol)
        base = market["base"] if market else symbol.split("/")[0]
        balance = await self._fetch_balance(ex, reuse_s=BALANCE_REUSE_S)
        return _dec((balance.get("total") or {}).get(base))

    async def _fetch_balance(self, ex: Any, reuse_s: float = 0.0) -> dict[str, Any]:
        """The account's balances; a read younger than `reuse_s` with no order placed since is
        reused (sizing reads the snapshot, then the position: one rate-limited call, not two)."""
        kept, orders = self._balance, self._orders
        if kept is not None and kept[1] == orders and time.monotonic() - kept[0] <= reuse_s:
            return kept[2]
        started = time.monotonic()
        with vendor_calls(self._venue):
            balance = dict(await ex.fetch_balance())
        self._balance = (started, orders, balance)
        return balance

    async def market_rules(self, symbol: str) -> MarketRules | None:
        ex = await self._client()
        market = ex.markets.get(symbol)
        if market is None:
            return None
        limits = market.get("limits") or {}
        return MarketRules(
            symbol=symbol,
            amount_step=self._step(ex, market),
            min_amount=_dec((limits.get("amount") or {}).get("min")),
            min_cost=_dec((limits.get("cost") or {}).get("min")),  # OKX publishes none: 0
            cost_step=self._venue.cost_step,
            quote_orders=self._venue.quote_orders,
            price_step=_precision_step(ex, market, "price"),
        )

    def _step(self, ex: Any, market: dict[str, Any]) -> Decimal:
        step = _precision_step(ex, market, "amount")
        if step is None:
            raise ExchangeError(f"{self._venue.name}: no amount step for {market.get('symbol')}")
        return step

    async def place_order(self, order: OrderCommand) -> OrderAck:
        sent = await self.send_order(order)
        if resting_kind(order) is not None or sent.status != "submitted":  # resting, or told (Binance)
            return sent
        await self._share.placements_done()
        return await self.read_fill(order, sent)

    async def send_order(self, order: OrderCommand) -> OrderAck:
        if resting_kind(order) is not None:  # good-till-canceled or a trigger: ccxt_orders
            return await self._place_resting(order)
        ex = await self._client()
        amount, params = self._order_args(ex, order)
        self._orders += 1  # the order changes the balance
        kind, price = "market", None
        if order.limit_price is not None:  # immediate-or-cancel: it never rests on the book
            kind, price, params = "limit", float(order.limit_price), params | {"timeInForce": "IOC"}
        with vendor_calls(self._venue):
            try:
                with self._share.placing():
                    placed = await ex.create_order(order.symbol, kind, order.side, amount, price, params)
                accepted_at = time.time()
            except ccxt.DuplicateOrderId:  # placed before: report that order
                found = await self.find_order(order.client_order_id, order.symbol)
                if found is None:
                    raise
                return found
        sent = _ack(placed, order.client_order_id)
        if (
            placed.get("status") is None or placed.get("filled") is None
        ):  # Kraken, OKX, Coinbase: no fill told
            sent = msgspec.structs.replace(sent, status="submitted")
        return msgspec.structs.replace(sent, accepted_at=accepted_at)

    async def read_fill(self, order: OrderCommand, sent: OrderAck) -> OrderAck:
        """The order as the venue reports it now; `sent` if that cannot be read (the order is
        placed either way: it is reported as submitted, not as a failure)."""
        ex = await self._client()
        try:
            found = await ex.fetch_order(sent.exchange_order_id, order.symbol)
        except ccxt.BaseError as exc:
            log.warning(
                "event=order_fill_unread venue=%s account=%s client_order_id=%s error=%s",
                self._venue.name,
                self.account_id,
                order.client_order_id,
                type(exc).__name__,
            )
            return sent
        return msgspec.structs.replace(_ack(found, order.client_order_id), accepted_at=sent.accepted_at)

    def _order_args(self, ex: Any, order: OrderCommand) -> tuple[float, dict[str, Any]]:
        """create_order's amount and params; refuses sizes that round to nothing."""
        venue = self._venue
        if order.symbol not in ex.markets:
            raise UnsupportedSymbol(f"{venue.name}: {order.symbol} is not listed")
        params: dict[str, Any] = {venue.client_id_param: order.client_order_id}
        market_buy = order.side == "buy" and order.limit_price is None
        if order.size_type == "quote" and market_buy and venue.quote_orders:
            cost = order.size.quantize(venue.cost_step, rounding=ROUND_DOWN)
            _refuse_zero(venue, cost, order)
            return float(cost), params | dict(venue.quote_buy_params) | {venue.quote_cost_param: float(cost)}
        base = order.size if order.size_type == "base" else order.size / order.reference_price
        step = self._step(ex, ex.markets[order.symbol])
        base = (base / step).to_integral_value(rounding=ROUND_DOWN) * step
        _refuse_zero(venue, base, order)
        with vendor_calls(venue):
            amount = ex.amount_to_precision(order.symbol, float(base))
        if market_buy and venue.base_buy_params is not None:
            params |= venue.base_buy_params(amount)
        return float(amount), params

    async def find_order(self, client_order_id: str, symbol: str) -> OrderAck | None:
        ex = await self._client()
        find = ccxt_orders.with_triggers(self._venue, _LOOKUPS[self._venue.lookup])  # OKX: algo orders too
        with vendor_calls(self._venue):
            found = await find(ex, client_order_id, symbol)
        return None if found is None else _ack(found, client_order_id)

    async def fills_since(self, cursor: float) -> list[Fill]:
        """Fills after `cursor` (unix seconds), oldest first; one page per symbol asked."""
        ex = await self._client()
        quote = self._venue.quote_currency
        symbols: list[str | None] = [None]
        if self._venue.fills_need_symbol:
            symbols = [s for s, m in ex.markets.items() if m.get("spot") and m.get("quote") == quote]
        trades: list[dict[str, Any]] = []
        with vendor_calls(self._venue):
            for symbol in symbols:
                trades += await ex.fetch_my_trades(symbol, int(cursor * 1000))
        fills = [_fill(t) for t in trades if int(t["timestamp"]) / 1000 > cursor]
        return sorted(fills, key=lambda f: f.at)

    # --- resting orders: shared.exchange.ccxt_orders ------------------------------------------

    async def order_capabilities(self, symbol: str) -> OrderCapabilities:
        return ccxt_orders.resting(self._venue).capabilities

    async def _place_resting(self, order: OrderCommand) -> OrderAck:
        ccxt_orders.refuse_unless_native(self._venue, order)  # before anything is sent
        ex = await self._client()
        amount, params = self._order_args(ex, order)
        self._orders += 1  # the order changes the balance
        with vendor_calls(self._venue):
            ack = await ccxt_orders.place(ex, self._venue, order, amount, params, find=self._lookup)
        return msgspec.structs.replace(ack, accepted_at=time.time())

    async def cancel_order(self, client_order_id: str, symbol: str) -> OrderAck | None:
        ex = await self._client()
        with vendor_calls(self._venue):
            return await ccxt_orders.cancel(ex, self._venue, client_order_id, symbol, self._lookup)

    async def amend_order(
        self, client_order_id: str, symbol: str, *, price: Decimal | None = None, size: Decimal | None = None
    ) -> OrderAck:
        ex = await self._client()
        with vendor_calls(self._venue):
            return await ccxt_orders.amend(
                ex, self._venue, client_order_id, symbol, price=price, size=size, find=self._lookup
            )

    async def open_orders(self, symbol: str | None = None) -> list[OpenOrder]:
        ex = await self._client()
        with vendor_calls(self._venue):
            return await ccxt_orders.open_orders(ex, self._venue, symbol)

    async def _lookup(self, ex: Any, client_order_id: str, symbol: str) -> dict[str, Any] | None:
        return await _LOOKUPS[self._venue.lookup](ex, client_order_id, symbol)


def _refuse_zero(venue: CcxtVenue, size: Decimal, order: OrderCommand) -> None:
    if size <= 0:
        raise BelowMinimum(
            f"{venue.name}: {order.size} {order.size_type} of {order.symbol} rounds to nothing"
        )


class StreamingCcxtAccount(CcxtAccount):
    """A `CcxtAccount` whose venue streams the account's orders and fills (`port.Streaming`:
    the venue record's `stream`); the stream itself is `ccxt_stream`."""

    def __init__(self, account: AccountConfig, credentials: Credentials, ctx: AdapterContext) -> None:
        super().__init__(account, credentials, ctx)
        spec = self._venue.stream
        if spec is None:
            raise ConfigError(f"account {account.id}: {account.exchange} has no private stream")
        self._stream = CcxtStream(
            venue=self._venue,
            spec=spec,
            account_id=account.id,
            base_url=account.base_url,
            token=self._stream_token,
            session=lambda: self._share.session,
            translate=partial(translate, self._venue),
        )

    @property
    def subscribed(self) -> bool:
        return self._stream.subscribed

    def activity(self) -> AsyncIterator[Activity]:
        return self._stream.activity()

    async def _stream_token(self) -> str:
        """A token for the stream, asked through this account's REST client (its nonce)."""
        ex = await self._client()
        with vendor_calls(self._venue):
            reply = await ex.private_post_getwebsocketstoken()
        token = (reply.get("result") or {}).get("token")
        if not token:
            raise AuthError(f"{self._venue.name}: no stream token in the reply")
        return str(token)

    async def close(self) -> None:
        await self._stream.close()
        await super().close()


def ccxt_account(account: AccountConfig, credentials: Credentials, ctx: AdapterContext) -> CcxtAccount:
    """The account's adapter: streaming where its venue has a private stream."""
    venue = VENUES.get(account.exchange)
    streams = venue is not None and venue.stream is not None
    return (StreamingCcxtAccount if streams else CcxtAccount)(account, credentials, ctx)
