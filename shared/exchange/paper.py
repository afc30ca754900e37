"""The paper exchange: a simulated venue (balances, positions, market rules, fills at a price
feed) behind the same port as real exchanges.

One `PaperVenue` engine answers typed calls. It runs embedded (the adapter calls it directly) or
as the `copytrade paper-exchange` service, reached over NATS request/reply with the same calls.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Literal

import msgspec
from msgspec import Struct

from shared import bus
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
from shared.exchange.port import AccountSnapshot, Fill, OrderAck, OrderCommand
from shared.messages import MarketRules, Side

PaperFaultKind = Literal[
    "exchange_error", "auth_error", "rate_limited", "timeout_after_accept", "insufficient_funds",
    "temporary", "below_minimum",
]


# ---- calls and replies ---------------------------------------------------------------------


class Snapshot(Struct, frozen=True, tag="snapshot"):
    account: str


class Position(Struct, frozen=True, tag="position"):
    account: str
    symbol: str


class Rules(Struct, frozen=True, tag="rules"):
    symbol: str


class Price(Struct, frozen=True, tag="price"):
    symbol: str


class Place(Struct, frozen=True, tag="place"):
    account: str
    order: OrderCommand


class Find(Struct, frozen=True, tag="find"):
    account: str
    client_order_id: str


class Fills(Struct, frozen=True, tag="fills"):
    account: str
    since: float


class Fund(Struct, frozen=True, tag="fund"):
    """Create or reset an account with this much quote cash (tests, demo, bench)."""

    account: str
    cash: Decimal
    holdings: dict[str, Decimal] = {}


class SetPrice(Struct, frozen=True, tag="set_price"):
    symbol: str
    price: Decimal


class InjectFault(Struct, frozen=True, tag="fault"):
    account: str
    kind: PaperFaultKind


class Orders(Struct, frozen=True, tag="orders"):
    account: str


class PlaceResting(Struct, frozen=True, tag="rest"):
    """Place a limit order that rests on the book, as a trader does on the venue's site (tests,
    demo): it fills only when told to, in parts, by `FillPart`. `order` is base-sized with a
    `limit_price`."""

    account: str
    order: OrderCommand


class FillPart(Struct, frozen=True, tag="fill_part"):
    """Fill `amount` (base) of a resting order at `price`, within its limit (tests, demo)."""

    account: str
    order_id: str
    amount: Decimal
    price: Decimal


Call = (Snapshot | Position | Rules | Price | Place | Find | Fills | Fund | SetPrice | InjectFault
        | Orders | PlaceResting | FillPart)


class PaperOrder(Struct, frozen=True, kw_only=True):
    order_id: str
    client_order_id: str
    symbol: str
    side: Side
    amount: Decimal
    cost: Decimal
    price: Decimal
    at: float
    # expired: a limit order out of the money; open: a resting order not yet wholly filled
    status: Literal["filled", "expired", "open"] = "filled"
    limit_price: Decimal | None = None
    ordered: Decimal | None = None  # a resting order's base size (`amount` is what filled)


class Failure(Struct, frozen=True, tag="failure"):
    kind: str
    message: str


class Ok(Struct, frozen=True, tag="ok"):
    snapshot: AccountSnapshot | None = None
    amount: Decimal | None = None
    rules: MarketRules | None = None
    order: PaperOrder | None = None
    orders: list[PaperOrder] = []
    fills: list[Fill] = []  # one per fill (trade): a resting order fills in parts


Reply = Ok | Failure

_ERRORS: dict[str, type[ExchangeError]] = {
    "exchange_error": ExchangeError,
    "auth_error": AuthError,
    "rate_limited": RateLimited,
    "temporary": TemporaryError,
    "insufficient_funds": InsufficientFunds,
    "below_minimum": BelowMinimum,
    "unsupported_symbol": UnsupportedSymbol,
    "invalid_order": InvalidOrder,
}


class PaperRefusal(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# ---- the venue engine --------------------------------------------------------------------------

DEFAULT_RULES = {
    "BTC/USD": MarketRules(symbol="BTC/USD", amount_step=Decimal("0.00000001"),
                           min_amount=Decimal("0.00001"), min_cost=Decimal("0.5"),
                           price_step=Decimal("0.1")),
    "ETH/USD": MarketRules(symbol="ETH/USD", amount_step=Decimal("0.00000001"),
                           min_amount=Decimal("0.0001"), min_cost=Decimal("0.5"),
                           price_step=Decimal("0.01")),
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
            Snapshot: self._snapshot, Position: self._position, Rules: self._rules, Price: self._price,
            Place: self._place, Find: self._find, Fills: self._fills, Fund: self._fund,
            SetPrice: self._set_price, InjectFault: self._fault, Orders: self._orders,
            PlaceResting: self._rest, FillPart: self._fill_part,
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
        value = sum((q * self.prices.get(f"{a}/USD", Decimal(0)) for a, q in acc.holdings.items()),
                    Decimal(0))
        return Ok(snapshot=AccountSnapshot(equity=acc.cash + value, cash=acc.cash))

    async def _position(self, call: Position) -> Ok:
        base = call.symbol.split("/")[0]
        return Ok(amount=self._account(call.account).holdings.get(base, Decimal(0)))

    async def _rules(self, call: Rules) -> Ok:
        return Ok(rules=self.rules.get(call.symbol))

    async def _price(self, call: Price) -> Ok:
        return Ok(amount=self.prices.get(call.symbol))

    async def _place(self, call: Place) -> Ok:
        acc = self._account(call.account)
        fault = acc.faults.pop(0) if acc.faults else None
        if fault not in (None, "timeout_after_accept"):
            raise PaperRefusal(fault or "", f"injected fault: {fault}")
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        existing = acc.orders.get(call.order.client_order_id)
        if existing is not None:  # venue-side dedupe by client order id
            raise PaperRefusal("exchange_error", "duplicate client order id")
        order = self._fill(acc, call.order)
        if fault == "timeout_after_accept":
            await asyncio.sleep(self.timeout_hold_s)
        return Ok(order=order)

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
        held = acc.holdings.get(base, Decimal(0))
        reserved = cost if cmd.limit_price is None or cmd.side == "sell" else amount * cmd.limit_price
        if (cmd.side == "buy" and reserved > acc.cash) or (cmd.side == "sell" and amount > held):
            raise PaperRefusal("insufficient_funds", "insufficient funds")
        order = PaperOrder(order_id=uuid.uuid4().hex, client_order_id=cmd.client_order_id,
                           symbol=cmd.symbol, side=cmd.side, amount=amount, cost=cost,
                           price=price, at=time.time(), limit_price=cmd.limit_price)
        if _within_limit(cmd.side, cmd.limit_price, price):
            _book(acc, order, amount, cost, price)
        else:
            order = msgspec.structs.replace(order, amount=Decimal(0), cost=Decimal(0),
                                            status="expired")
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
        order = PaperOrder(order_id=uuid.uuid4().hex, client_order_id=cmd.client_order_id,
                           symbol=cmd.symbol, side=cmd.side, amount=Decimal(0), cost=Decimal(0),
                           price=Decimal(0), at=time.time(), status="open",
                           limit_price=cmd.limit_price, ordered=amount)
        acc.orders[cmd.client_order_id] = order
        return Ok(order=order)

    async def _fill_part(self, call: FillPart) -> Ok:
        """One fill of a resting order: at most what is left, at a price within its limit."""
        acc = self._account(call.account)
        order = next((o for o in acc.orders.values() if o.order_id == call.order_id), None)
        if order is None or order.status != "open" or order.ordered is None:
            raise PaperRefusal("invalid_order", f"no open resting order {call.order_id}")
        if not 0 < call.amount <= order.ordered - order.amount:
            raise PaperRefusal("invalid_order", f"{call.amount} is not within what is left")
        if not _within_limit(order.side, order.limit_price, call.price):
            raise PaperRefusal("invalid_order", f"{call.price} is beyond the order's limit")
        cost = (call.amount * call.price).quantize(Decimal("0.00000001"), rounding=ROUND_DOWN)
        held = acc.holdings.get(order.symbol.split("/")[0], Decimal(0))
        if (order.side == "buy" and cost > acc.cash) or (order.side == "sell" and call.amount > held):
            raise PaperRefusal("insufficient_funds", "insufficient funds")
        _book(acc, order, call.amount, cost, call.price)
        filled, total = order.amount + call.amount, order.cost + cost
        order = msgspec.structs.replace(
            order, amount=filled, cost=total, status="filled" if filled == order.ordered else "open",
            price=(total / filled).quantize(Decimal("0.00000001")))
        acc.orders[order.client_order_id] = order
        return Ok(order=order)

    async def _find(self, call: Find) -> Ok:
        return Ok(order=self._account(call.account).orders.get(call.client_order_id))

    async def _fills(self, call: Fills) -> Ok:
        acc = self._account(call.account)
        # orders: what an adapter from before fill-by-fill reads (one fill per filled order)
        return Ok(orders=[o for o in acc.orders.values() if o.at > call.since and o.status == "filled"],
                  fills=[f for f in acc.fills if f.at > call.since])

    async def _orders(self, call: Orders) -> Ok:
        return Ok(orders=list(self._account(call.account).orders.values()))

    async def _fund(self, call: Fund) -> Ok:
        self._accounts[call.account] = _Account(cash=call.cash, holdings=dict(call.holdings))
        return Ok()

    async def _set_price(self, call: SetPrice) -> Ok:
        self.prices[call.symbol] = call.price
        return Ok()

    async def _fault(self, call: InjectFault) -> Ok:
        self._account(call.account).faults.append(call.kind)
        return Ok()


def _check_limit(cmd: OrderCommand, rules: MarketRules) -> None:
    if cmd.limit_price is None:
        return
    if cmd.size_type != "base":
        raise PaperRefusal("invalid_order", "a limit order is sized in base")
    step = rules.price_step
    if step is not None and cmd.limit_price % step:
        raise PaperRefusal("invalid_order", f"limit price {cmd.limit_price} is off the {step} tick")


def _within_limit(side: Side, limit: Decimal | None, price: Decimal) -> bool:
    return limit is None or (price <= limit if side == "buy" else price >= limit)


def _book(acc: _Account, order: PaperOrder, amount: Decimal, cost: Decimal, price: Decimal) -> None:
    """Move the balances by one fill of `order` and keep the fill (with its own trade id)."""
    base = order.symbol.split("/")[0]
    sign = 1 if order.side == "buy" else -1
    acc.holdings[base] = acc.holdings.get(base, Decimal(0)) + sign * amount
    acc.cash -= sign * cost
    acc.fills.append(Fill(order_id=order.order_id, symbol=order.symbol, side=order.side,
                          amount=amount, price=price, at=time.time(),
                          client_order_id=order.client_order_id, trade_id=uuid.uuid4().hex))


# ---- transports ------------------------------------------------------------------------------

Transport = Callable[[Call], Awaitable[Reply]]

_call_encoder = msgspec.json.Encoder(decimal_format="string")
_reply_decoder = msgspec.json.Decoder(Reply)


def nats_transport(nc: object, timeout_s: float = 10.0) -> Transport:
    """Reach a `copytrade paper-exchange` service over NATS request/reply."""
    from nats.aio.client import Client
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout

    assert isinstance(nc, Client)

    async def call(request: Call) -> Reply:
        try:
            msg = await nc.request(bus.PAPER_SUBJECT, _call_encoder.encode(request), timeout=timeout_s)
        except (NatsTimeout, NoRespondersError) as exc:
            raise TemporaryError(f"paper exchange unreachable: {type(exc).__name__}") from None
        reply: Reply = _reply_decoder.decode(msg.data)
        return reply

    return call


# ---- the adapter -------------------------------------------------------------------------------


class PaperAccount:
    """An `ExchangeAccount` on the paper venue."""

    def __init__(self, account_id: str, transport: Transport) -> None:
        self.account_id = account_id
        self._call = transport

    async def _ok(self, request: Call) -> Ok:
        reply = await self._call(request)
        if isinstance(reply, Failure):
            raise _ERRORS.get(reply.kind, ExchangeError)(f"paper: {reply.message}")
        return reply

    async def connect(self) -> None:
        await self.snapshot()

    async def close(self) -> None:
        return None

    async def snapshot(self) -> AccountSnapshot:
        snap = (await self._ok(Snapshot(self.account_id))).snapshot
        assert snap is not None
        return snap

    async def position(self, symbol: str) -> Decimal:
        return (await self._ok(Position(self.account_id, symbol))).amount or Decimal(0)

    async def market_rules(self, symbol: str) -> MarketRules | None:
        return (await self._ok(Rules(symbol))).rules

    async def price(self, symbol: str) -> Decimal | None:
        return (await self._ok(Price(symbol))).amount

    async def place_order(self, order: OrderCommand) -> OrderAck:
        placed = (await self._ok(Place(self.account_id, order))).order
        assert placed is not None
        return msgspec.structs.replace(_ack(placed), accepted_at=time.time())

    async def find_order(self, client_order_id: str, symbol: str) -> OrderAck | None:
        found = (await self._ok(Find(self.account_id, client_order_id))).order
        return None if found is None else _ack(found)

    async def fills_since(self, cursor: float) -> list[Fill]:
        reply = await self._ok(Fills(self.account_id, cursor))
        # a venue from before fill-by-fill sends no fills: one per filled order, as it was
        return reply.fills or [
            Fill(order_id=o.order_id, symbol=o.symbol, side=o.side, amount=o.amount,
                 price=o.price, at=o.at, client_order_id=o.client_order_id) for o in reply.orders]


def _ack(order: PaperOrder) -> OrderAck:
    if order.status == "expired":
        return OrderAck(exchange_order_id=order.order_id, client_order_id=order.client_order_id,
                        status="expired")
    if order.status == "open":  # a resting order, filled in part or not at all
        return OrderAck(exchange_order_id=order.order_id, client_order_id=order.client_order_id,
                        status="submitted", filled_base=order.amount or None,
                        avg_price=order.price or None)
    return OrderAck(exchange_order_id=order.order_id, client_order_id=order.client_order_id,
                    status="filled", filled_base=order.amount, avg_price=order.price)
