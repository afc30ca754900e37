"""Venue quirks as data: one frozen record per ccxt venue, read by the one `CcxtAccount`.

Everything that differs between Kraken, Coinbase, Binance and OKX lives here — how the client
order id and a quote-sized buy are sent, which calls load markets, where `base_url` points, how an
order is found again by client id, and which venue error codes refine ccxt's exception classes —
so adding a venue is adding a record, not an `if exchange == ...` in the adapter.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from shared.errors import AuthError, BelowMinimum, ExchangeError, TemporaryError, UnsupportedSymbol

# How an order is found again by our client order id (see CcxtAccount's lookup table):
#   open_then_closed: fetch_open_orders, then fetch_closed_orders, filtered by {"clientOrderId": x};
#                     the symbol only narrows the answer
#   by_client_id:     fetch_order(None, symbol, {"clientOrderId": x}), the symbol required;
#                     OrderNotFound means none
#   recent_orders:    fetch_orders(symbol), the latest page, matched on clientOrderId (the venue
#                     cannot filter by it)
Lookup = Literal["open_then_closed", "by_client_id", "recent_orders"]


def microsecond_nonce() -> int:
    """Kraken nonce: wall-clock microseconds (ccxt's default is milliseconds)."""
    return time.time_ns() // 1_000


def coinbase_base_size(amount: str) -> dict[str, Any]:
    """Coinbase turns every spot market buy into quote_size: base_size needs the raw config."""
    return {
        "createMarketBuyOrderRequiresPrice": False,
        "order_configuration": {"market_market_ioc": {"base_size": amount}},
    }


@dataclass(frozen=True)
class IpBudget:
    """A request budget the venue counts per IP address, not per account: every account of the
    venue in one process draws on one bucket (`CcxtShare`). `units` ccxt cost units per
    `window_s`; the bucket holds `burst` and refills the rest evenly, so no window of the venue
    (fixed or sliding) ever sees more than `units`."""

    units: float
    window_s: float
    burst: float

    @property
    def rate_limit_ms(self) -> float:
        """Milliseconds per unit refilled (ccxt's `rateLimit` convention)."""
        return self.window_s * 1000 / (self.units - self.burst)


@dataclass(frozen=True)
class PrivateStream:
    """A venue's private WebSocket stream of an account's orders and fills, through ccxt.pro
    (`shared.exchange.ccxt_stream`): how it is spoken, and where it is."""

    protocol: Literal["kraken_v2_executions"]  # ccxt_stream.PROTOCOLS
    url_key: str  # ccxt.pro's urls["api"]["ws"] key
    path: str  # its path under an account's base_url (an emulator's ws://host:port)


@dataclass(frozen=True)
class CcxtVenue:
    """One venue's quirks, as ccxt 4.5 exposes them."""

    name: str  # the ccxt exchange id
    client_id_param: str  # create_order param carrying our client order id
    quote_cost_param: str  # create_order param carrying a market buy's quote amount
    quote_buy_params: Mapping[str, str]  # more params a quote-sized market buy needs
    base_buy_params: Callable[[str], dict[str, Any]] | None  # params for a base-sized market buy
    config: Mapping[str, Any]  # ccxt constructor config: market loading and balance calls
    url_keys: tuple[str, ...] | None  # urls["api"] keys set to base_url; None: all, keeping paths
    lookup: Lookup
    fills_need_symbol: bool  # fetch_my_trades needs a symbol: ask per quote-currency market
    error_patterns: tuple[re.Pattern[str], ...]  # venue error codes in ccxt's message (group 1)
    reclassify: Mapping[str, type[ExchangeError]]  # venue code -> our class, over ccxt's class
    # the account's rate-limit burst in ccxt cost units (ccxt refills one per `rateLimit` ms):
    # what the venue documents an account may send at once (shared.exchange.throttle)
    burst: float
    nonce: Callable[[], int] | None = None  # replaces ccxt's nonce for signed calls
    # how long an idle HTTP connection is kept for the next call: below the venue's own idle
    # limit, so a signal minutes after the last one reuses connections instead of opening (and
    # TLS-handshaking) one per follower; aiohttp's default is 15 s
    keepalive_s: float = 60.0
    per_ip: IpBudget | None = None  # a limit the venue counts per IP, across accounts
    stream: PrivateStream | None = None  # None: no private stream, the watchers poll only
    quote_currency: str = "USD"
    cost_step: Decimal = Decimal("0.01")  # quote amounts are sent in cents
    quote_orders: bool = True  # market buys can be sized in quote currency
    notes: tuple[str, ...] = field(default=(), compare=False)

    def error_codes(self, message: str) -> list[str]:
        """The venue's error codes found in a ccxt message, in order, without repeats."""
        found = (m.group(1) for p in self.error_patterns for m in p.finditer(message))
        return list(dict.fromkeys(found))


KRAKEN = CcxtVenue(
    name="kraken",
    client_id_param="clientOrderId",  # sent as cl_ord_id; Kraken dedupes only among OPEN orders
    quote_cost_param="cost",  # ccxt sends volume=<cost> with oflags=viqc
    quote_buy_params={},
    base_buy_params=None,
    config={},  # load_markets: public Assets + AssetPairs
    url_keys=("public", "private"),
    lookup="open_then_closed",  # fetch_order's clientOrderId is sent as an integer userref
    fills_need_symbol=False,
    error_patterns=(re.compile(r"(E[A-Z][A-Za-z]*:[A-Za-z][A-Za-z ]*[a-z])"),),
    reclassify={
        "EAPI:Invalid key": AuthError,
        "EAPI:Invalid signature": AuthError,  # ccxt: plain ExchangeError
        "EOrder:Order minimum not met": BelowMinimum,  # ccxt: InvalidOrder
        "EOrder:Cost minimum not met": BelowMinimum,  # ccxt: plain ExchangeError
    },
    # REST counter: 15 calls (Starter tier; 20 above), decaying 0.33 a second; ccxt counts a
    # private call as 3 units at one a second. AddOrder (cost 0) is on the trading limiter.
    burst=45,
    nonce=microsecond_nonce,
    keepalive_s=300.0,  # api.kraken.com is behind Cloudflare: idle HTTP/1.1 closed after 400 s
    # wss://ws-auth.kraken.com/v2, channel executions; a token from REST GetWebSocketsToken
    stream=PrivateStream("kraken_v2_executions", url_key="privateV2", path="/v2"),
    notes=(
        "create_order's reply has the txid only: the fill is read with fetch_order",
        "a quote-sized (viqc) order's amount is in USD but its filled is in the base",
    ),
)

COINBASE = CcxtVenue(
    name="coinbase",
    client_id_param="client_order_id",  # raw: ccxt drops the unified clientOrderId
    quote_cost_param="cost",  # -> market_market_ioc.quote_size
    quote_buy_params={},
    base_buy_params=coinbase_base_size,
    config={
        "has": {"fetchCurrencies": False},  # skips three throttled v2 calls
        "options": {"fetchBalance": "v3PrivateGetBrokerageAccounts"},
    },  # Advanced Trade
    url_keys=("rest",),
    lookup="recent_orders",  # no filter by client order id: scan the latest page of orders
    fills_need_symbol=False,
    error_patterns=(re.compile(r'"(?:error|preview_failure_reason|id)"\s*:\s*"([A-Za-z_]+)"'),),
    reclassify={
        "PREVIEW_INVALID_BASE_SIZE_TOO_SMALL": BelowMinimum,  # ccxt: plain ExchangeError
        "PREVIEW_INVALID_QUOTE_SIZE_TOO_SMALL": BelowMinimum,
        "INTERNAL": TemporaryError,  # a JSON 5xx: ccxt says plain ExchangeError
        "INVALID_PRODUCT_ID": UnsupportedSymbol,
    },
    burst=30,  # Advanced Trade private REST: 30 requests a second per user; ccxt: 1 per 34 ms
    notes=("a reused client_order_id returns the first order: venue-side dedupe",),
)

BINANCE = CcxtVenue(
    name="binance",
    client_id_param="clientOrderId",  # -> newClientOrderId
    quote_cost_param="quoteOrderQty",
    quote_buy_params={},
    base_buy_params=None,
    config={
        "options": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False, "fetchMargins": False}
    },  # load_markets: /api/v3/exchangeInfo only
    url_keys=None,  # some 30 API roots: each keeps its path under base_url
    lookup="by_client_id",  # sent as origClientOrderId
    fills_need_symbol=True,
    error_patterns=(re.compile(r'"code"\s*:\s*(-\d+)'), re.compile(r"Filter failure: ([A-Z_]+)")),
    reclassify={
        "NOTIONAL": BelowMinimum,  # -1013, ccxt: BadRequest
        "MIN_NOTIONAL": BelowMinimum,
        "LOT_SIZE": BelowMinimum,  # sizes are truncated to the step first: this is the minimum
        "MARKET_LOT_SIZE": BelowMinimum,
        # -2015 on a client that authenticated before is DDoSProtection in ccxt (it guesses an IP
        # ban); the code means invalid key, IP or permission: an auth error, never retried.
        "-2015": AuthError,
    },
    # per account: ccxt's unit is 5 of weight, one every 50 ms; two seconds' worth (account
    # weight 20 is 4 units; an order 0.2)
    burst=40,
    # REQUEST_WEIGHT is counted per IP: 6,000 a minute is 1,200 ccxt units for all accounts of a
    # pod; a 429 past it, then an IP ban (418) for every follower. A fifth is held as burst.
    per_ip=IpBudget(units=1200, window_s=60, burst=240),
    notes=("a 5xx (-1001) is ccxt OperationFailed, not a NetworkError: retried all the same",),
)

OKX = CcxtVenue(
    name="okx",
    client_id_param="clientOrderId",  # -> clOrdId, alphanumeric up to 32
    quote_cost_param="cost",  # -> sz with tgtCcy=quote_ccy
    quote_buy_params={"tgtCcy": "quote_ccy"},
    base_buy_params=None,  # ccxt sends tgtCcy=base_ccy by default
    config={"options": {"fetchMarkets": {"types": ["spot"]}}},  # load_markets: instruments only
    url_keys=("rest",),
    lookup="by_client_id",
    fills_need_symbol=False,
    error_patterns=(re.compile(r'"s?[Cc]ode"\s*:\s*"(\d{5})"'),),  # 5xxxx; not "1" (all failed)
    reclassify={"51020": BelowMinimum},  # ccxt: InvalidOrder
    burst=10,  # balance: 10 requests per 2 s (ccxt cost 2 at 110 ms); orders 60 per 2 s
    notes=(
        "instruments publish no minimum notional: min_cost is 0",
        "create_order's reply has ordId only: the fill is read with fetch_order",
    ),
)

VENUES: Mapping[str, CcxtVenue] = {v.name: v for v in (KRAKEN, COINBASE, BINANCE, OKX)}
