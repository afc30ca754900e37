"""Venue-neutral state for the loopback exchange emulators: accounts, orders, fills, faults.

Every venue emulator (kraken.py, coinbase.py, ...) keeps its accounts in a `VenueState` and
translates its own REST format to and from these types. Fault injection lives here so the
contract suite can drive every venue the same way.

Resting orders (good-till-canceled limits, stop-loss and take-profit triggers) live here too,
with two test controls every venue shares: `fill_resting` fills part of a resting order (there
is no order book: a resting limit fills only when told, or at once if it crosses the price when
placed or amended), and `set_price` moves a market's price, triggering the stops and
take-profits it reaches (a triggered market order fills whole at the new price; a triggered
limit order fills whole if the new price is within its limit, else rests).

`Account.listeners` hear of every order placed or changed: a venue's private stream (Alpaca's
trade_updates) pushes from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import Callable
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


# An order's status: "filled"; "canceled": an IOC limit that did not cross (ended by the venue);
# "open": a resting order not wholly filled; "user_canceled": a resting order canceled (or
# replaced) at the account's request, with what filled before.
OPEN, USER_CANCELED = "open", "user_canceled"


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
    status: str = "filled"  # see OPEN above
    trade_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    limit_price: Decimal | None = None  # None: a market order
    ordered: Decimal | None = None  # base size a limit order asked for
    trigger: str | None = None  # "stop_loss" | "take_profit": a trigger order
    trigger_price: Decimal | None = None
    triggered: bool = False
    # a resting order (good-till-canceled, or a trigger order): its fills are `parts`, one trade
    # each; any other order is its own single trade
    parts: list[Order] | None = None
    replaced_by: str | None = None  # the order id that replaced it (a replace)
    updated: float = 0.0  # last change: placed, filled, triggered, amended, canceled

    @property
    def order_type(self) -> str:
        return "market" if self.limit_price is None else "limit"

    @property
    def kind(self) -> str:
        """market, limit_ioc, limit (resting), stop_loss[_limit], take_profit[_limit]."""
        if self.trigger is not None:
            return self.trigger + ("" if self.limit_price is None else "_limit")
        if self.limit_price is None:
            return "market"
        return "limit_ioc" if self.parts is None else "limit"

    @property
    def size(self) -> Decimal:
        """Base size asked for: a market order's is what it filled."""
        return self.amount if self.ordered is None else self.ordered

    @property
    def remaining(self) -> Decimal:
        return self.size - self.amount

    @property
    def is_open(self) -> bool:
        return self.status == OPEN

    @property
    def waiting(self) -> bool:
        """An open trigger order whose trigger the price has not reached."""
        return self.is_open and self.trigger is not None and not self.triggered

    def rename(self, order_id: str) -> None:
        """Give the order (and its fills) the venue's own order id format."""
        self.order_id = order_id
        for part in self.parts or []:
            part.order_id = order_id


@dataclass
class Account:
    api_key: str
    secret: str
    passphrase: str | None = None
    balances: dict[str, Decimal] = field(default_factory=dict)
    orders: list[Order] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)  # consumed by order placement, FIFO
    last_nonce: int = 0
    # called with each order placed or changed (filled, triggered, amended, canceled, replaced):
    # a venue's private stream listens here
    listeners: list[Callable[[Order], None]] = field(default_factory=list)

    def order_by_client_id(self, client_order_id: str) -> Order | None:
        """The order with this client id; the open one where an old order shares it."""
        matches = [o for o in self.orders if o.client_order_id == client_order_id]
        return next((o for o in matches if o.is_open), matches[-1] if matches else None)

    def order_by_id(self, order_id: str) -> Order | None:
        return next((o for o in self.orders if o.order_id == order_id), None)

    def trades(self) -> list[Order]:
        """Every fill as its own record (a resting order's parts, any other order itself),
        oldest first: what a venue's fills endpoint lists."""
        found: list[Order] = []
        for order in self.orders:
            found += order.parts if order.parts is not None else [order] if order.amount else []
        return sorted(found, key=lambda t: t.created)

    def held(
        self,
        currency: str,
        markets: dict[str, Market],
        excluding: Order | None = None,
    ) -> Decimal:
        """What the account's open orders (but `excluding`) hold of `currency`: a buy its rest
        at its limit (or trigger) price in the quote, a sell its rest in the base."""
        held = Decimal(0)
        for o in self.orders:
            if o is excluding:
                continue
            market = markets[o.symbol]
            if o.is_open and o.side == "buy" and market.quote == currency:
                held += o.remaining * (o.limit_price or o.trigger_price or Decimal(0))
            elif o.is_open and o.side == "sell" and market.base == currency:
                held += o.remaining
        return held


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
        self,
        api_key: str,
        secret: str,
        balances: dict[str, Decimal] | None = None,
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
        self,
        account: Account,
        symbol: str,
        side: str,
        *,
        amount: Decimal | None = None,
        cost: Decimal | None = None,
        client_order_id: str | None = None,
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
        order = self._book(account, market, side, amount, price, client_order_id=client_order_id)
        self._changed(account, order)
        return order

    def fill_limit_ioc(
        self,
        account: Account,
        symbol: str,
        side: str,
        amount: Decimal,
        limit_price: Decimal,
        *,
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
            filled = self._book(
                account,
                market,
                side,
                amount,
                price,
                client_order_id=client_order_id,
                limit_price=limit_price,
                ordered=amount,
            )
            self._changed(account, filled)
            return filled
        unfilled = self._book(
            account,
            market,
            side,
            Decimal(0),
            Decimal(0),
            client_order_id=client_order_id,
            limit_price=limit_price,
            ordered=amount,
        )
        unfilled.status = "canceled"  # ended by the venue with nothing filled
        self._changed(account, unfilled)
        return unfilled

    def fill_part(
        self,
        account: Account,
        order_id: str,
        symbol: str,
        side: str,
        amount: Decimal,
        *,
        price: Decimal | None = None,
        client_order_id: str | None = None,
    ) -> Order:
        """Record one fill (trade) of order `order_id`, at `price` (default: the current one):
        e.g. a resting limit order placed on the venue's site that fills in parts. Each call is
        one more fill of that order id with its own trade id and time, rendered as one trade by
        every venue's fills endpoint (an order view shows each part as its own entry).

        Raises ValueError(kind) as `fill` does."""
        market = self._market(symbol)
        price = self.prices[symbol] if price is None else price
        self._check(account, market, side, amount, price)
        part = self._book(account, market, side, amount, price, client_order_id=client_order_id)
        part.order_id = order_id
        self._changed(account, part)
        return part

    # --- resting orders ---------------------------------------------------------------------

    def place_resting(
        self,
        account: Account,
        symbol: str,
        side: str,
        amount: Decimal,
        *,
        limit_price: Decimal | None,
        trigger: str | None = None,
        trigger_price: Decimal | None = None,
        client_order_id: str | None = None,
    ) -> Order:
        """Place a good-till-canceled limit order (no trigger) or a trigger order: it rests
        (open) until filled, triggered or canceled. A limit order crossing the price fills whole
        at once; a trigger order whose trigger the price has reached triggers at once.

        Raises ValueError(kind) as `fill_limit_ioc` does; funds and minimums are checked at the
        limit price, else the trigger price."""
        market = self._market(symbol)
        for price in (limit_price, trigger_price):
            if price is not None and (price <= 0 or price % market.price_step):
                raise ValueError("invalid_price")
        at = limit_price or trigger_price
        assert at is not None, "a resting order has a limit or a trigger price"
        self._check(account, market, side, amount, at)
        now = time.time()
        order = Order(
            order_id=str(uuid.uuid4()),
            client_order_id=client_order_id,
            symbol=symbol,
            side=side,
            amount=Decimal(0),
            cost=Decimal(0),
            price=Decimal(0),
            created=now,
            status=OPEN,
            limit_price=limit_price,
            ordered=amount,
            trigger=trigger,
            trigger_price=trigger_price,
            parts=[],
            updated=now,
        )
        account.orders.append(order)
        self._work(account, order)
        self._changed(account, order)
        return order

    def fill_resting(
        self, account: Account, order: Order, amount: Decimal, price: Decimal | None = None
    ) -> Order:
        """Test control: fill `amount` of an open resting order at `price` (default: its limit
        price), one more trade of it. Raises ValueError if the order is not open, not yet
        triggered, `amount` is more than is left, or `price` is beyond its limit."""
        if not order.is_open or order.waiting:
            raise ValueError("not_open")
        price = order.limit_price if price is None else price
        if price is None or not 0 < amount <= order.remaining:
            raise ValueError("invalid_fill")
        if not _within(order.side, order.limit_price, price):
            raise ValueError("beyond_limit")
        part = self._fill_part(account, order, amount, price)
        self._changed(account, order)
        return part

    def set_price(self, symbol: str, price: Decimal) -> list[Order]:
        """Test control: the market's price moves to `price`; the trigger orders it reaches
        trigger (and execute). Returns them."""
        self._market(symbol)
        self.prices[symbol] = price
        reached = [
            (a, o)
            for a in self.accounts.values()
            for o in a.orders
            if o.symbol == symbol and o.waiting and _reached(o, price)
        ]
        for account, order in reached:
            self._work(account, order)
            self._changed(account, order)
        return [o for _, o in reached]

    def cancel(self, order: Order) -> bool:
        """Cancel an open order (what filled stays filled); False if it was not open."""
        if not order.is_open:
            return False
        order.status, order.updated = USER_CANCELED, time.time()
        owner = next(
            (a for a in self.accounts.values() if a.listeners and any(o is order for o in a.orders)),
            None,
        )
        if owner is not None:
            self._changed(owner, order)
        return True

    def amend(self, account: Account, order: Order, *, price: Decimal | None, size: Decimal | None) -> None:
        """Amend an open resting limit order in place (ids and fills kept): `size` is its new
        total, filled part included. A new price that crosses fills the rest at once.
        Raises ValueError: "not_open", "invalid_price", "invalid_size" (not above what
        filled), or as `_check` for what the change adds."""
        if not order.is_open:
            raise ValueError("not_open")
        market = self._market(order.symbol)
        if price is not None and (price <= 0 or price % market.price_step):
            raise ValueError("invalid_price")
        new_size = order.size if size is None else size
        if new_size <= order.amount:
            raise ValueError("invalid_size")
        new_price = order.limit_price if price is None else price
        assert new_price is not None
        self._afford(account, market, order.side, new_size - order.amount, new_price, excluding=order)
        order.ordered, order.limit_price, order.updated = new_size, new_price, time.time()
        self._work(account, order)
        self._changed(account, order)

    def replace(
        self,
        account: Account,
        order: Order,
        *,
        price: Decimal | None,
        size: Decimal,
        client_order_id: str | None,
    ) -> Order:
        """Cancel an open resting limit order and place a new one for `size` (base) in one step
        (Binance cancelReplace, Alpaca's PATCH): the new order, or ValueError with nothing
        changed."""
        if not order.is_open:
            raise ValueError("not_open")
        status, order.status = order.status, USER_CANCELED  # its hold is freed for the check
        try:
            new = self.place_resting(
                account,
                order.symbol,
                order.side,
                size,
                limit_price=order.limit_price if price is None else price,
                trigger=order.trigger,
                trigger_price=order.trigger_price,
                client_order_id=client_order_id,
            )
        except ValueError:
            order.status = status
            raise
        order.replaced_by, order.updated = new.order_id, time.time()
        self._changed(account, order)
        return new

    @staticmethod
    def _changed(account: Account, order: Order) -> None:
        """Tell the account's listeners that `order` was placed or changed."""
        for listener in list(account.listeners):
            listener(order)

    def _work(self, account: Account, order: Order) -> None:
        """Execute what the price allows: trigger a trigger order it reached, fill a limit it
        crosses (whole, at the price), fill a triggered market order (whole, at the price;
        without the funds, the venue cancels it)."""
        price = self.prices[order.symbol]
        if order.waiting and _reached(order, price):
            order.triggered, order.updated = True, time.time()
        if order.waiting or not _within(order.side, order.limit_price, price):
            return
        try:
            self._fill_part(account, order, order.remaining, price)
        except ValueError:
            order.status = USER_CANCELED if order.limit_price is None else order.status

    def _fill_part(self, account: Account, order: Order, amount: Decimal, price: Decimal) -> Order:
        market = self._market(order.symbol)
        cost = (amount * price).quantize(Decimal("0.00000001"), rounding=ROUND_DOWN)
        currency = market.quote if order.side == "buy" else market.base
        if (cost if order.side == "buy" else amount) > account.balances.get(currency, Decimal(0)):
            raise ValueError("insufficient_funds")
        sign = 1 if order.side == "buy" else -1
        balances = account.balances
        balances[market.base] = balances.get(market.base, Decimal(0)) + sign * amount
        balances[market.quote] = balances.get(market.quote, Decimal(0)) - sign * cost
        now = time.time()
        part = Order(
            order_id=order.order_id,
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            side=order.side,
            amount=amount,
            cost=cost,
            price=price,
            created=now,
            limit_price=order.limit_price,
            ordered=amount,
        )
        assert order.parts is not None
        order.parts.append(part)
        order.amount += amount
        order.cost += cost
        order.price = (order.cost / order.amount).quantize(Decimal("0.00000001"))
        order.status = "filled" if order.remaining <= 0 else OPEN
        order.updated = now
        return part

    def _market(self, symbol: str) -> Market:
        market = self.markets.get(symbol)
        if market is None:
            raise ValueError("unknown_symbol")
        return market

    def _check(self, account: Account, market: Market, side: str, amount: Decimal, price: Decimal) -> None:
        """Refuse an order of `amount` base at `price` below the minimums or beyond the funds
        (net of what open orders hold)."""
        cost = (amount * price).quantize(Decimal("0.00000001"), rounding=ROUND_DOWN)
        if amount < market.min_amount or cost < market.min_cost:
            raise ValueError("min_not_met")
        self._afford(account, market, side, amount, price)

    def _afford(
        self,
        account: Account,
        market: Market,
        side: str,
        amount: Decimal,
        price: Decimal,
        *,
        excluding: Order | None = None,
    ) -> None:
        currency = market.base if side == "sell" else market.quote
        available = account.balances.get(currency, Decimal(0))
        available -= account.held(currency, self.markets, excluding)
        if (amount * price if side == "buy" else amount) > available:
            raise ValueError("insufficient_funds")

    @staticmethod
    def _book(
        account: Account,
        market: Market,
        side: str,
        amount: Decimal,
        price: Decimal,
        *,
        client_order_id: str | None,
        limit_price: Decimal | None = None,
        ordered: Decimal | None = None,
    ) -> Order:
        """Keep the order and move the balances by what it filled."""
        cost = (amount * price).quantize(Decimal("0.00000001"), rounding=ROUND_DOWN)
        if amount:
            sign, balances = (1 if side == "buy" else -1), account.balances
            balances[market.base] = balances.get(market.base, Decimal(0)) + sign * amount
            balances[market.quote] = balances.get(market.quote, Decimal(0)) - sign * cost
        now = time.time()
        order = Order(
            order_id=str(uuid.uuid4()),
            client_order_id=client_order_id,
            symbol=market.symbol,
            side=side,
            amount=amount,
            cost=cost,
            price=price,
            created=now,
            limit_price=limit_price,
            ordered=ordered,
            updated=now,
        )
        account.orders.append(order)
        return order


def _within(side: str, limit: Decimal | None, price: Decimal) -> bool:
    """A buy at or under its limit, a sell at or over it; no limit: any price."""
    return limit is None or (price <= limit if side == "buy" else price >= limit)


def _reached(order: Order, price: Decimal) -> bool:
    """The price has reached the order's trigger: a stop-loss sell (take-profit buy) when it
    falls to it, a stop-loss buy (take-profit sell) when it rises to it."""
    trigger = order.trigger_price
    assert trigger is not None
    falling = (order.trigger == "stop_loss") == (order.side == "sell")
    return price <= trigger if falling else price >= trigger
