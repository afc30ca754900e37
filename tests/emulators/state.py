"""Venue-neutral state for the loopback exchange emulators: accounts, orders, fills, faults.

Every venue emulator (kraken.py, coinbase.py, ...) keeps its accounts in a `VenueState` and
translates its own REST format to and from these types. Fault injection lives here so the
contract suite can drive every venue the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from enum import Enum


def parse_decimal(value: object) -> Decimal | None:
    """A finite Decimal from a venue's number (a string or a JSON number), else None."""
    with contextlib.suppress(InvalidOperation, TypeError):
        parsed = Decimal(str(value))
        return parsed if parsed.is_finite() else None
    return None


class Fault(Enum):
    """A fault the next matching request of an account suffers."""

    HTTP_500 = "http_500"  # venue answers 5xx, order NOT accepted
    RATE_LIMIT = "rate_limit"  # venue's own rate-limit error (429 or venue code), not accepted
    TIMEOUT_AFTER_ACCEPT = "timeout_after_accept"  # order IS accepted, reply never comes in time
    INSUFFICIENT_FUNDS = "insufficient_funds"  # venue's insufficient-funds error
    INVALID_KEY = "invalid_key"  # venue's authentication error
    MIN_NOT_MET = "min_not_met"  # venue's minimum order size/cost error


@dataclass(frozen=True)
class Market:
    base: str  # "BTC"
    quote: str  # "USD"
    amount_step: Decimal  # base precision, e.g. 0.00000001
    price_step: Decimal  # e.g. 0.1
    min_amount: Decimal  # base
    min_cost: Decimal  # quote

    @property
    def symbol(self) -> str:
        return f"{self.base}/{self.quote}"


@dataclass
class Order:
    order_id: str
    client_order_id: str | None
    symbol: str
    side: str  # "buy" | "sell"
    amount: Decimal  # base filled
    cost: Decimal  # quote spent/received
    price: Decimal  # average fill price, 0 when nothing filled
    created: float
    status: str = "filled"  # "filled" | "canceled" (an IOC limit that did not cross)
    trade_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    limit_price: Decimal | None = None  # None: a market order
    ordered: Decimal | None = None  # base size a limit order asked for

    @property
    def order_type(self) -> str:
        return "market" if self.limit_price is None else "limit"

    @property
    def size(self) -> Decimal:
        """Base size asked for: a market order's is what it filled."""
        return self.amount if self.ordered is None else self.ordered


@dataclass
class Account:
    api_key: str
    secret: str
    passphrase: str | None = None
    balances: dict[str, Decimal] = field(default_factory=dict)
    orders: list[Order] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)  # consumed by order placement, FIFO
    last_nonce: int = 0

    def order_by_client_id(self, client_order_id: str) -> Order | None:
        return next((o for o in self.orders if o.client_order_id == client_order_id), None)


DEFAULT_MARKETS = (
    Market("BTC", "USD", Decimal("0.00000001"), Decimal("0.1"), Decimal("0.00001"), Decimal("0.5")),
    Market("ETH", "USD", Decimal("0.00000001"), Decimal("0.01"), Decimal("0.0001"), Decimal("0.5")),
)


class VenueState:
    """Accounts, markets and prices of one emulated venue."""

    def __init__(self, markets: tuple[Market, ...] = DEFAULT_MARKETS) -> None:
        self.markets = {m.symbol: m for m in markets}
        self.prices: dict[str, Decimal] = {"BTC/USD": Decimal("45000"), "ETH/USD": Decimal("3000")}
        self.accounts: dict[str, Account] = {}
        self.latency_s = 0.0  # added before every reply
        self.timeout_hold_s = 30.0  # how long a TIMEOUT_AFTER_ACCEPT reply is held back
        self._ids = itertools.count(1)
        self.requests = 0

    def add_account(
        self, api_key: str, secret: str, balances: dict[str, Decimal] | None = None,
        passphrase: str | None = None,
    ) -> Account:
        account = Account(api_key, secret, passphrase, dict(balances or {}))
        self.accounts[api_key] = account
        return account

    def next_id(self) -> int:
        return next(self._ids)

    async def delay(self) -> None:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)

    def take_fault(self, account: Account, *kinds: Fault) -> Fault | None:
        """Pop the account's next fault if it is one of `kinds`."""
        if account.faults and account.faults[0] in kinds:
            return account.faults.pop(0)
        return None

    def fill(
        self, account: Account, symbol: str, side: str, *, amount: Decimal | None = None,
        cost: Decimal | None = None, client_order_id: str | None = None,
    ) -> Order:
        """Fill a market order at the current price; raise ValueError(kind) on a venue refusal.

        kind is one of "unknown_symbol", "min_not_met", "insufficient_funds".
        Exactly one of amount (base) and cost (quote) is given.
        """
        market = self._market(symbol)
        price = self.prices[symbol]
        if amount is None:
            assert cost is not None
            amount = (cost / price).quantize(market.amount_step, rounding=ROUND_DOWN)
        self._check(account, market, side, amount, price)
        return self._book(account, market, side, amount, price, client_order_id)

    def fill_limit_ioc(
        self, account: Account, symbol: str, side: str, amount: Decimal, limit_price: Decimal,
        client_order_id: str | None = None,
    ) -> Order:
        """Fill an immediate-or-cancel limit order whole at the current price if that is at or
        better than `limit_price`, else keep it "canceled" with nothing filled.

        Raises ValueError(kind) as `fill` does, or "invalid_price" for a price off the tick.
        Funds and minimums are checked at the limit price, as venues reserve at the limit.
        """
        market = self._market(symbol)
        if limit_price <= 0 or limit_price % market.price_step:
            raise ValueError("invalid_price")
        self._check(account, market, side, amount, limit_price)
        price = self.prices[symbol]
        crosses = price <= limit_price if side == "buy" else price >= limit_price
        if crosses:
            return self._book(account, market, side, amount, price, client_order_id,
                              limit_price=limit_price, ordered=amount)
        return self._book(account, market, side, Decimal(0), Decimal(0), client_order_id,
                          limit_price=limit_price, ordered=amount, status="canceled")

    def fill_part(
        self, account: Account, order_id: str, symbol: str, side: str, amount: Decimal,
        price: Decimal | None = None, client_order_id: str | None = None,
    ) -> Order:
        """Record one fill (trade) of order `order_id`, at `price` (default: the current one):
        e.g. a resting limit order placed on the venue's site that fills in parts. Each call is
        one more fill of that order id with its own trade id and time, rendered as one trade by
        every venue's fills endpoint (an order view shows each part as its own entry).

        Raises ValueError(kind) as `fill` does."""
        market = self._market(symbol)
        price = self.prices[symbol] if price is None else price
        self._check(account, market, side, amount, price)
        part = self._book(account, market, side, amount, price, client_order_id)
        part.order_id = order_id
        return part

    def _market(self, symbol: str) -> Market:
        market = self.markets.get(symbol)
        if market is None:
            raise ValueError("unknown_symbol")
        return market

    @staticmethod
    def _check(account: Account, market: Market, side: str, amount: Decimal,
               price: Decimal) -> None:
        """Refuse an order of `amount` base at `price` below the minimums or beyond the funds."""
        cost = (amount * price).quantize(Decimal("0.00000001"), rounding=ROUND_DOWN)
        if amount < market.min_amount or cost < market.min_cost:
            raise ValueError("min_not_met")
        held = account.balances.get(market.base if side == "sell" else market.quote, Decimal(0))
        if (cost if side == "buy" else amount) > held:
            raise ValueError("insufficient_funds")

    @staticmethod
    def _book(
        account: Account, market: Market, side: str, amount: Decimal, price: Decimal,
        client_order_id: str | None, *, limit_price: Decimal | None = None,
        ordered: Decimal | None = None, status: str = "filled",
    ) -> Order:
        """Keep the order and move the balances by what it filled."""
        cost = (amount * price).quantize(Decimal("0.00000001"), rounding=ROUND_DOWN)
        if amount:
            sign, balances = (1 if side == "buy" else -1), account.balances
            balances[market.base] = balances.get(market.base, Decimal(0)) + sign * amount
            balances[market.quote] = balances.get(market.quote, Decimal(0)) - sign * cost
        order = Order(
            order_id=str(uuid.uuid4()), client_order_id=client_order_id, symbol=market.symbol,
            side=side, amount=amount, cost=cost, price=price, created=time.time(),
            status=status, limit_price=limit_price, ordered=ordered,
        )
        account.orders.append(order)
        return order
