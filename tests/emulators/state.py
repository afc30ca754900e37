"""Venue-neutral state for the loopback exchange emulators: accounts, orders, fills, faults.

Every venue emulator (kraken.py, coinbase.py, ...) keeps its accounts in a `VenueState` and
translates its own REST format to and from these types. Fault injection lives here so the
contract suite can drive every venue the same way.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from enum import Enum


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
    price: Decimal
    created: float
    status: str = "filled"  # market orders fill at once
    trade_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])


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
        market = self.markets.get(symbol)
        if market is None:
            raise ValueError("unknown_symbol")
        price = self.prices[symbol]
        if amount is None:
            assert cost is not None
            amount = (cost / price).quantize(market.amount_step, rounding=ROUND_DOWN)
        cost = (amount * price).quantize(Decimal("0.00000001"), rounding=ROUND_DOWN)
        if amount < market.min_amount or cost < market.min_cost:
            raise ValueError("min_not_met")
        base_bal = account.balances.get(market.base, Decimal(0))
        quote_bal = account.balances.get(market.quote, Decimal(0))
        if (side == "buy" and cost > quote_bal) or (side == "sell" and amount > base_bal):
            raise ValueError("insufficient_funds")
        sign = 1 if side == "buy" else -1
        account.balances[market.base] = base_bal + sign * amount
        account.balances[market.quote] = quote_bal - sign * cost
        order = Order(
            order_id=str(uuid.uuid4()), client_order_id=client_order_id, symbol=symbol, side=side,
            amount=amount, cost=cost, price=price, created=time.time(),
        )
        account.orders.append(order)
        return order
