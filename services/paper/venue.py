"""The paper venue: an in-memory simulated exchange (balances, positions, market rules, fills
at a price feed, resting and trigger orders) and its test controls. It answers the protocol of
`shared/exchange/paper/protocol.py`, as the `copytrade paper-exchange` service or embedded in a
copier (`COPYTRADE_PAPER_VENUE=embedded`: benchmarks and dry runs)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal

import msgspec

from shared.errors import (
    InvalidOrder,
)
from shared.exchange.paper.protocol import (
    Amend,
    Call,
    Cancel,
    Failure,
    FillPart,
    Fills,
    Find,
    Fund,
    InjectFault,
    Ok,
    OpenOrders,
    Orders,
    PaperOrder,
    Place,
    PlaceResting,
    Position,
    Price,
    Reply,
    Rules,
    SetPrice,
    Snapshot,
    Submit,
)
from shared.exchange.port import (
    AccountSnapshot,
    Fill,
    OrderCommand,
    resting_kind,
)
from shared.messages import MarketRules, Side


class PaperRefusal(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# ---- the venue engine --------------------------------------------------------------------------

DEFAULT_RULES = {
    "BTC/USD": MarketRules(
        symbol="BTC/USD",
        amount_step=Decimal("0.00000001"),
        min_amount=Decimal("0.00001"),
        min_cost=Decimal("0.5"),
        price_step=Decimal("0.1"),
    ),
    "ETH/USD": MarketRules(
        symbol="ETH/USD",
        amount_step=Decimal("0.00000001"),
        min_amount=Decimal("0.0001"),
        min_cost=Decimal("0.5"),
        price_step=Decimal("0.01"),
    ),
}
DEFAULT_PRICES = {"BTC/USD": Decimal("45000"), "ETH/USD": Decimal("3000")}


@dataclass
class _Account:
    cash: Decimal
    holdings: dict[str, Decimal]
    orders: dict[str, PaperOrder] = field(default_factory=dict)  # by client order id
    faults: list[str] = field(default_factory=list)
    fills: list[Fill] = field(default_factory=list)  # oldest first


class PaperVenue:
    """In-memory simulated exchange. Orders are unique per (account, client order id)."""

    def __init__(
        self, latency_s: float = 0.0, timeout_hold_s: float = 30.0, seed_cash: Decimal | None = None
    ) -> None:
        self.seed_cash = seed_cash
        self.rules = dict(DEFAULT_RULES)
        self.prices = dict(DEFAULT_PRICES)
        self.latency_s = latency_s
        self.timeout_hold_s = timeout_hold_s
        self._accounts: dict[str, _Account] = {}
        self._handlers: dict[type[Call], Callable[..., Awaitable[Ok]]] = {
            Snapshot: self._snapshot,
            Position: self._position,
            Rules: self._rules,
            Price: self._price,
            Place: self._place,
            Find: self._find,
            Fills: self._fills,
            Fund: self._fund,
            SetPrice: self._set_price,
            InjectFault: self._fault,
            Orders: self._orders,
            PlaceResting: self._rest,
            FillPart: self._fill_part,
            Submit: self._submit,
            Cancel: self._cancel,
            Amend: self._amend,
            OpenOrders: self._open_orders,
        }

    async def handle(self, call: Call) -> Reply:
        try:
            return await self._handlers[type(call)](call)
        except PaperRefusal as exc:
            return Failure(exc.kind, str(exc))

    def accounts(self) -> list[str]:
        """The accounts the venue holds (funded, or seeded on their first call)."""
        return list(self._accounts)

    def _account(self, name: str) -> _Account:
        account = self._accounts.get(name)
        if account is None and self.seed_cash is not None:
            account = self._accounts[name] = _Account(cash=self.seed_cash, holdings={})
        if account is None:
            raise PaperRefusal("auth_error", f"unknown paper account {name!r}")
        return account

    async def _snapshot(self, call: Snapshot) -> Ok:
        acc = self._account(call.account)
        value = sum(
            (q * self.prices.get(f"{a}/USD", Decimal(0)) for a, q in acc.holdings.items()), Decimal(0)
        )
        return Ok(snapshot=AccountSnapshot(equity=acc.cash + value, cash=acc.cash))

    async def _position(self, call: Position) -> Ok:
        base = call.symbol.split("/")[0]
        return Ok(amount=self._account(call.account).holdings.get(base, Decimal(0)))

    async def _rules(self, call: Rules) -> Ok:
        return Ok(rules=self.rules.get(call.symbol))

    async def _price(self, call: Price) -> Ok:
        return Ok(amount=self.prices.get(call.symbol))

    async def _place(self, call: Place | Submit) -> Ok:
        acc = self._account(call.account)
        fault = acc.faults.pop(0) if acc.faults else None
        if fault not in (None, "timeout_after_accept"):
            raise PaperRefusal(fault or "", f"injected fault: {fault}")
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        existing = acc.orders.get(call.order.client_order_id)
        if existing is not None:  # venue-side dedupe by client order id
            raise PaperRefusal("exchange_error", "duplicate client order id")
        order = self._fill(acc, call.order) if isinstance(call, Place) else self._open(acc, call.order)
        if fault == "timeout_after_accept":
            await asyncio.sleep(self.timeout_hold_s)
        return Ok(order=order)

    async def _submit(self, call: Submit) -> Ok:
        return await self._place(call)

    def _open(self, acc: _Account, cmd: OrderCommand) -> PaperOrder:
        """A resting order, checked as a venue does at entry, then worked at the feed price."""
        rules = self.rules.get(cmd.symbol)
        if rules is None:
            raise PaperRefusal("unsupported_symbol", f"unknown symbol {cmd.symbol}")
        try:
            resting = resting_kind(cmd)
        except InvalidOrder as exc:
            raise PaperRefusal("invalid_order", str(exc)) from None
        if resting is None:
            raise PaperRefusal("invalid_order", "not a resting order")
        _check_limit(cmd, rules)
        _check_tick(cmd.trigger_price, rules)
        amount = cmd.size.quantize(rules.amount_step, rounding=ROUND_DOWN)
        at = cmd.limit_price or cmd.trigger_price or Decimal(0)
        if amount < rules.min_amount or amount * at < rules.min_cost:
            raise PaperRefusal("below_minimum", f"order minimum not met: {amount} {cmd.symbol}")
        self._afford(acc, cmd.symbol, cmd.side, amount, at)
        order = PaperOrder(
            order_id=uuid.uuid4().hex,
            client_order_id=cmd.client_order_id,
            symbol=cmd.symbol,
            side=cmd.side,
            amount=Decimal(0),
            cost=Decimal(0),
            price=Decimal(0),
            at=time.time(),
            status="open",
            limit_price=cmd.limit_price,
            ordered=amount,
            trigger=cmd.trigger,
            trigger_price=cmd.trigger_price,
        )
        return self._work(acc, order)

    def _afford(
        self,
        acc: _Account,
        symbol: str,
        side: Side,
        amount: Decimal,
        price: Decimal,
        *,
        excluding: str | None = None,
    ) -> None:
        """Refuse what the account's cash (a buy) or holding (a sell) cannot cover, net of what
        its open orders (but `excluding`, a client order id) hold."""
        held = _held(acc, symbol, side, excluding)
        base = symbol.split("/")[0]
        have = acc.cash if side == "buy" else acc.holdings.get(base, Decimal(0))
        if (amount * price if side == "buy" else amount) > have - held:
            raise PaperRefusal("insufficient_funds", "insufficient funds")

    def _work(self, acc: _Account, order: PaperOrder) -> PaperOrder:
        """Execute what the feed price allows: trigger a reached trigger, fill the rest whole
        where the price is within the limit (a market order that cannot be paid is canceled)."""
        price = self.prices[order.symbol]
        if order.waiting and _reached(order, price):
            order = msgspec.structs.replace(order, triggered=True)
        if not order.waiting and _within_limit(order.side, order.limit_price, price):
            left = (order.ordered or Decimal(0)) - order.amount
            try:
                order = _book_part(acc, order, left, price)
            except PaperRefusal:
                if order.limit_price is None:
                    order = msgspec.structs.replace(order, status="canceled")
        acc.orders[order.client_order_id] = order
        return order

    def _fill(self, acc: _Account, cmd: OrderCommand) -> PaperOrder:
        """A market order fills at the feed price; a limit order (immediate-or-cancel) fills
        there only when that is within its limit, else it expires having filled nothing."""
        rules = self.rules.get(cmd.symbol)
        if rules is None:
            raise PaperRefusal("unsupported_symbol", f"unknown symbol {cmd.symbol}")
        price = self.prices[cmd.symbol]
        amount = cmd.size if cmd.size_type == "base" else cmd.size / price
        amount = amount.quantize(rules.amount_step, rounding=ROUND_DOWN)
        cost = (amount * price).quantize(Decimal("0.00000001"), rounding=ROUND_DOWN)
        if amount < rules.min_amount or cost < rules.min_cost:
            raise PaperRefusal("below_minimum", f"order minimum not met: {amount} {cmd.symbol}")
        _check_limit(cmd, rules)
        base = cmd.symbol.split("/")[0]
        held = acc.holdings.get(base, Decimal(0)) - _held(acc, cmd.symbol, "sell", None)
        cash = acc.cash - _held(acc, cmd.symbol, "buy", None)  # open orders hold theirs
        reserved = cost if cmd.limit_price is None or cmd.side == "sell" else amount * cmd.limit_price
        if (cmd.side == "buy" and reserved > cash) or (cmd.side == "sell" and amount > held):
            raise PaperRefusal("insufficient_funds", "insufficient funds")
        order = PaperOrder(
            order_id=uuid.uuid4().hex,
            client_order_id=cmd.client_order_id,
            symbol=cmd.symbol,
            side=cmd.side,
            amount=amount,
            cost=cost,
            price=price,
            at=time.time(),
            limit_price=cmd.limit_price,
        )
        if _within_limit(cmd.side, cmd.limit_price, price):
            _book(acc, order, amount, cost, price)
        else:
            order = msgspec.structs.replace(order, amount=Decimal(0), cost=Decimal(0), status="expired")
        acc.orders[cmd.client_order_id] = order
        return order

    async def _rest(self, call: PlaceResting) -> Ok:
        """A resting limit order: nothing fills, nothing is reserved, until `FillPart`."""
        acc, cmd = self._account(call.account), call.order
        rules = self.rules.get(cmd.symbol)
        if rules is None:
            raise PaperRefusal("unsupported_symbol", f"unknown symbol {cmd.symbol}")
        if cmd.limit_price is None:
            raise PaperRefusal("invalid_order", "a resting order needs a limit price")
        _check_limit(cmd, rules)
        amount = cmd.size.quantize(rules.amount_step, rounding=ROUND_DOWN)
        if amount < rules.min_amount or cmd.client_order_id in acc.orders:
            raise PaperRefusal("invalid_order", "order minimum not met or duplicate client id")
        order = PaperOrder(
            order_id=uuid.uuid4().hex,
            client_order_id=cmd.client_order_id,
            symbol=cmd.symbol,
            side=cmd.side,
            amount=Decimal(0),
            cost=Decimal(0),
            price=Decimal(0),
            at=time.time(),
            status="open",
            limit_price=cmd.limit_price,
            ordered=amount,
        )
        acc.orders[cmd.client_order_id] = order
        return Ok(order=order)

    async def _fill_part(self, call: FillPart) -> Ok:
        """One fill of a resting order: at most what is left, at a price within its limit."""
        acc = self._account(call.account)
        order = next((o for o in acc.orders.values() if o.order_id == call.order_id), None)
        if order is None or order.status != "open" or order.ordered is None or order.waiting:
            raise PaperRefusal("invalid_order", f"no open resting order {call.order_id}")
        if not 0 < call.amount <= order.ordered - order.amount:
            raise PaperRefusal("invalid_order", f"{call.amount} is not within what is left")
        if not _within_limit(order.side, order.limit_price, call.price):
            raise PaperRefusal("invalid_order", f"{call.price} is beyond the order's limit")
        order = _book_part(acc, order, call.amount, call.price)
        acc.orders[order.client_order_id] = order
        return Ok(order=order)

    async def _cancel(self, call: Cancel) -> Ok:
        acc = self._account(call.account)
        order = acc.orders.get(call.client_order_id)
        if order is not None and order.status == "open":
            order = acc.orders[order.client_order_id] = msgspec.structs.replace(order, status="canceled")
        return Ok(order=order)

    async def _amend(self, call: Amend) -> Ok:
        """In place: ids and fills kept; a new price that crosses fills the rest at once."""
        acc = self._account(call.account)
        order = acc.orders.get(call.client_order_id)
        if order is None or order.status != "open":
            raise PaperRefusal("invalid_order", f"no open resting order {call.client_order_id}")
        if order.trigger is not None:
            raise PaperRefusal("not_native", "only resting limit orders are amended")
        rules = self.rules[order.symbol]
        price = order.limit_price if call.price is None else call.price
        size = (
            order.ordered if call.size is None else call.size.quantize(rules.amount_step, rounding=ROUND_DOWN)
        )
        assert price is not None
        assert size is not None
        _check_tick(price, rules)
        if size <= order.amount:
            raise PaperRefusal("invalid_order", f"size {size} is not above what filled")
        self._afford(
            acc, order.symbol, order.side, size - order.amount, price, excluding=order.client_order_id
        )
        order = msgspec.structs.replace(order, limit_price=price, ordered=size)
        return Ok(order=self._work(acc, order))

    async def _open_orders(self, call: OpenOrders) -> Ok:
        acc = self._account(call.account)
        return Ok(
            orders=[o for o in acc.orders.values() if o.status == "open" and call.symbol in (None, o.symbol)]
        )

    async def _find(self, call: Find) -> Ok:
        return Ok(order=self._account(call.account).orders.get(call.client_order_id))

    async def _fills(self, call: Fills) -> Ok:
        acc = self._account(call.account)
        # orders: what an adapter from before fill-by-fill reads (one fill per filled order)
        return Ok(
            orders=[o for o in acc.orders.values() if o.at > call.since and o.status == "filled"],
            fills=[f for f in acc.fills if f.at > call.since],
        )

    async def _orders(self, call: Orders) -> Ok:
        return Ok(orders=list(self._account(call.account).orders.values()))

    async def _fund(self, call: Fund) -> Ok:
        self._accounts[call.account] = _Account(cash=call.cash, holdings=dict(call.holdings))
        return Ok()

    async def _set_price(self, call: SetPrice) -> Ok:
        """The feed price moves; the trigger orders it reaches trigger (and execute)."""
        self.prices[call.symbol] = call.price
        for acc in self._accounts.values():
            for order in list(acc.orders.values()):
                if order.symbol == call.symbol and order.waiting and _reached(order, call.price):
                    self._work(acc, order)
        return Ok()

    async def _fault(self, call: InjectFault) -> Ok:
        self._account(call.account).faults.append(call.kind)
        return Ok()


def _check_limit(cmd: OrderCommand, rules: MarketRules) -> None:
    if cmd.limit_price is None:
        return
    if cmd.size_type != "base":
        raise PaperRefusal("invalid_order", "a limit order is sized in base")
    _check_tick(cmd.limit_price, rules)


def _check_tick(price: Decimal | None, rules: MarketRules) -> None:
    step = rules.price_step
    if price is not None and (price <= 0 or (step is not None and price % step)):
        raise PaperRefusal("invalid_order", f"price {price} is off the {step} tick")


def _reached(order: PaperOrder, price: Decimal) -> bool:
    """A stop-loss sell (take-profit buy) triggers when the price falls to its trigger, a
    stop-loss buy (take-profit sell) when it rises to it."""
    trigger = order.trigger_price or Decimal(0)
    falling = (order.trigger == "stop_loss") == (order.side == "sell")
    return price <= trigger if falling else price >= trigger


def _held(acc: _Account, symbol: str, side: Side, excluding: str | None) -> Decimal:
    """What open orders on `side` hold: a buy's rest at its limit (or trigger) price in cash, a
    sell's rest in `symbol`'s base."""
    base = symbol.split("/")[0]
    held = Decimal(0)
    for o in acc.orders.values():
        if o.status != "open" or o.side != side or o.client_order_id == excluding:
            continue
        left = (o.ordered or Decimal(0)) - o.amount
        if side == "buy":
            held += left * (o.limit_price or o.trigger_price or Decimal(0))
        elif o.symbol.split("/")[0] == base:
            held += left
    return held


def _book_part(acc: _Account, order: PaperOrder, amount: Decimal, price: Decimal) -> PaperOrder:
    """One fill of a resting order: the balances moved, the order's totals updated."""
    cost = (amount * price).quantize(Decimal("0.00000001"), rounding=ROUND_DOWN)
    held = acc.holdings.get(order.symbol.split("/")[0], Decimal(0))
    if (order.side == "buy" and cost > acc.cash) or (order.side == "sell" and amount > held):
        raise PaperRefusal("insufficient_funds", "insufficient funds")
    _book(acc, order, amount, cost, price)
    filled, total = order.amount + amount, order.cost + cost
    return msgspec.structs.replace(
        order,
        amount=filled,
        cost=total,
        status="filled" if filled == order.ordered else "open",
        price=(total / filled).quantize(Decimal("0.00000001")),
    )


def _within_limit(side: Side, limit: Decimal | None, price: Decimal) -> bool:
    return limit is None or (price <= limit if side == "buy" else price >= limit)


def _book(acc: _Account, order: PaperOrder, amount: Decimal, cost: Decimal, price: Decimal) -> None:
    """Move the balances by one fill of `order` and keep the fill (with its own trade id)."""
    base = order.symbol.split("/")[0]
    sign = 1 if order.side == "buy" else -1
    acc.holdings[base] = acc.holdings.get(base, Decimal(0)) + sign * amount
    acc.cash -= sign * cost
    acc.fills.append(
        Fill(
            order_id=order.order_id,
            symbol=order.symbol,
            side=order.side,
            amount=amount,
            price=price,
            at=time.time(),
            client_order_id=order.client_order_id,
            trade_id=uuid.uuid4().hex,
        )
    )


# ---- transports ------------------------------------------------------------------------------
