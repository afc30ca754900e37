"""The one port every exchange adapter implements, with its typed commands and reports."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Literal, Protocol, runtime_checkable

from msgspec import Struct

from shared.errors import InvalidOrder
from shared.messages import MarketRules, Side, SizeType

# expired: an immediate-or-cancel limit order that found no price within its limit, or a resting
# order canceled, having filled nothing; filled: wholly, or in part before it was canceled (its
# filled_base says how much); submitted: still working (a resting order: filled_base so far)
OrderStatus = Literal["filled", "submitted", "expired"]


def order_status(*, done: bool, ended: bool, filled: Decimal) -> OrderStatus:
    """Our status from the venue's: `done` (fully filled) or `ended` (canceled, expired, rejected:
    an immediate-or-cancel remainder) with something filled is filled, ended with nothing is
    expired; anything else is still working: submitted."""
    if done or (ended and filled > 0):
        return "filled"
    return "expired" if ended else "submitted"


# What an order is, from its command's fields (`kind_of`):
#   market             no limit_price, no trigger
#   limit_ioc          limit_price, time_in_force "ioc" (the default): fills at once or never
#   limit              limit_price, time_in_force "gtc": rests on the book until filled or canceled
#   stop_loss          trigger "stop_loss" at trigger_price, then a market order: a sell when the
#                      price falls to it, a buy when the price rises to it
#   stop_loss_limit    the same, then a limit order at limit_price
#   take_profit        trigger "take_profit": a sell when the price rises to it, a buy when it falls
#   take_profit_limit  the same, then a limit order at limit_price
OrderKind = Literal[
    "market", "limit_ioc", "limit", "stop_loss", "stop_loss_limit", "take_profit", "take_profit_limit"
]
# the kinds that rest at the venue: what open_orders lists and cancel_order / amend_order act on
RestingKind = Literal["limit", "stop_loss", "stop_loss_limit", "take_profit", "take_profit_limit"]
RESTING_KINDS: frozenset[RestingKind] = frozenset(
    {"limit", "stop_loss", "stop_loss_limit", "take_profit", "take_profit_limit"}
)
Trigger = Literal["stop_loss", "take_profit"]
TimeInForce = Literal["ioc", "gtc"]


class NotNative(InvalidOrder):
    """The venue has no order of this kind (or cannot amend it): copytrade never emulates one
    (a stop watched by copytrade is no stop when copytrade is down). Record a skip, with this
    error's message as the reason."""

    reason_code = "order_kind_not_native"


class OrderCommand(Struct, frozen=True, kw_only=True):
    """An order to place, identified by our deterministic client order id: a market order, or
    with `limit_price` an immediate-or-cancel limit order (base-sized) that never rests, unless
    `time_in_force` is "gtc" or a `trigger` is set: then a resting order (`OrderKind`)."""

    client_order_id: str
    symbol: str  # the venue's unified symbol
    side: Side
    size: Decimal
    size_type: SizeType
    reference_price: Decimal  # the master's fill price: for venues that need a price
    limit_price: Decimal | None = None  # on the venue's price tick (the sizer rounds it)
    time_in_force: TimeInForce = "ioc"  # of a limit order without trigger
    trigger: Trigger | None = None
    trigger_price: Decimal | None = None  # on the venue's price tick; with `trigger` only


_TRIGGERED: dict[tuple[Trigger, bool], OrderKind] = {
    ("stop_loss", False): "stop_loss",
    ("stop_loss", True): "stop_loss_limit",
    ("take_profit", False): "take_profit",
    ("take_profit", True): "take_profit_limit",
}


def kind_of(order: OrderCommand) -> OrderKind:
    """The order's kind; `InvalidOrder` for a command whose fields contradict each other."""
    limit = order.limit_price is not None
    if order.trigger is not None:
        if order.trigger_price is None or order.trigger_price <= 0:
            raise InvalidOrder(f"{order.trigger} order needs a trigger price")
        kind = _TRIGGERED[(order.trigger, limit)]
    elif order.trigger_price is not None:
        raise InvalidOrder("a trigger price without a trigger")
    elif order.time_in_force == "gtc":
        if not limit:
            raise InvalidOrder("a good-till-canceled order needs a limit price")
        kind = "limit"
    else:
        kind = "limit_ioc" if limit else "market"
    if kind in RESTING_KINDS and order.size_type != "base":
        raise InvalidOrder(f"a {kind} order is sized in base")
    return kind


def resting_kind(order: OrderCommand) -> RestingKind | None:
    """The kind of a resting order; None for market and immediate-or-cancel orders."""
    kind = kind_of(order)
    return kind if kind in RESTING_KINDS else None


def amended_client_id(client_order_id: str, price: Decimal | None, size: Decimal | None) -> str:
    """The client order id of the order that replaces `client_order_id` on a venue whose amend
    places a new order: derived, so a retried amend finds the replacement it already made
    (32 hex, accepted by every venue)."""
    return uuid.uuid5(_AMEND_NS, f"{client_order_id}:{price}:{size}").hex


_AMEND_NS = uuid.UUID("4f6b7a1e-3c1d-4f57-8a43-9d3c2b1e0a77")

# How a venue changes a resting limit order's price or size:
#   in_place  the same order, ids kept (and queue priority where the venue keeps it)
#   replace   the venue cancels it and places a new order (a new venue id) in one request
#   none      it cannot: the caller cancels, then places anew (`amend_order` raises NotNative)
AmendMode = Literal["in_place", "replace", "none"]


class OrderCapabilities(Struct, frozen=True, kw_only=True):
    """What one venue (for one symbol's asset class) does natively with resting orders."""

    native: frozenset[RestingKind]  # placed as the venue's own orders; others raise NotNative
    amend: AmendMode  # for resting limit orders; trigger orders are always cancelled and placed
    # the client order id survives an amend; if not, the amended order answers to the id in
    # `amend_order`'s ack (derived from ours: `amended_client_id`)
    amend_keeps_client_id: bool
    notes: tuple[str, ...] = ()


class OrderAck(Struct, frozen=True, kw_only=True):
    """What the venue said about an order: ours, parsed from the vendor reply."""

    exchange_order_id: str
    client_order_id: str
    status: OrderStatus
    filled_base: Decimal | None = None
    avg_price: Decimal | None = None
    # unix time of the venue's reply accepting the order; None for an order found, not placed now
    accepted_at: float | None = None
    # base size the order asked for, where the venue says (a resting order: filled_base of it is
    # filled so far); None for quote-sized and unread orders
    ordered_base: Decimal | None = None


class OpenOrder(Struct, frozen=True, kw_only=True):
    """A resting order the venue holds open (not yet wholly filled, not canceled), parsed from
    the vendor reply. A triggered stop whose limit order now rests is listed with its trigger."""

    client_order_id: str | None  # None: placed without one (on the venue's site)
    exchange_order_id: str
    symbol: str
    kind: RestingKind
    side: Side
    size: Decimal  # base
    filled: Decimal  # base filled so far
    price: Decimal | None = None  # limit price; None for a stop that becomes a market order
    trigger_price: Decimal | None = None


class AccountSnapshot(Struct, frozen=True, kw_only=True):
    equity: Decimal  # cash plus holdings valued at market, in the quote currency
    cash: Decimal  # spendable quote currency


class Fill(Struct, frozen=True, kw_only=True):
    """A fill on an account, for watching a master's trades made outside copytrade."""

    order_id: str
    symbol: str
    side: Side
    amount: Decimal  # base
    price: Decimal
    at: float
    client_order_id: str | None = None
    # the venue's id of this fill (trade); None where the venue gives none: one order's fills
    # are then told apart by the cumulative amount filled (services.master.watcher)
    trade_id: str | None = None


class ExchangeAccount(Protocol):
    """One account on one venue, with its own client, nonce and rate limiter."""

    account_id: str

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def snapshot(self) -> AccountSnapshot: ...

    async def position(self, symbol: str) -> Decimal: ...

    async def price(self, symbol: str) -> Decimal | None:
        """The venue's last traded price, or None where the venue gives none (slippage guard)."""
        ...

    async def market_rules(self, symbol: str) -> MarketRules | None: ...

    async def place_order(self, order: OrderCommand) -> OrderAck:
        """Place a market, immediate-or-cancel or resting order (`kind_of`); a resting kind the
        venue has no native order for raises `NotNative` before anything is sent."""
        ...

    async def find_order(self, client_order_id: str, symbol: str) -> OrderAck | None: ...

    async def fills_since(self, cursor: float) -> list[Fill]: ...

    async def order_capabilities(self, symbol: str) -> OrderCapabilities:
        """Which resting kinds this venue places natively for `symbol`, and how it amends."""
        ...

    async def cancel_order(self, client_order_id: str, symbol: str) -> OrderAck | None:
        """Cancel a resting order: the order as it ended (what filled before the cancel is in
        its ack: status "filled" when anything filled, else "expired"); an order that had filled
        already is reported filled; None when the venue knows no such order."""
        ...

    async def amend_order(
        self, client_order_id: str, symbol: str, *, price: Decimal | None = None, size: Decimal | None = None
    ) -> OrderAck:
        """Change a resting limit order's price and/or size (base, the order's new total,
        filled part included), where `order_capabilities(symbol).amend` is not "none"; the ack
        names the order as it now is (`amend_keeps_client_id` False: under a new client id).
        `NotNative` where the venue cannot: the caller cancels, then places."""
        ...

    async def open_orders(self, symbol: str | None = None) -> list[OpenOrder]:
        """The account's resting orders (of `symbol`, or all)."""
        ...


@runtime_checkable
class ReadsFillLater(Protocol):
    """An account whose market order reply carries no fill yet (Kraken, OKX and Coinbase
    through ccxt; Alpaca's pending_new): its `place_order` places, then reads the order back.
    A fan-out sends every follower's order first (`send_order`) and reads the fills once all
    are out (`read_fill`), so no order waits behind another's read (services.copier.copy)."""

    async def send_order(self, order: OrderCommand) -> OrderAck:
        """Place a market or immediate-or-cancel order as `place_order` does, without reading
        its fill: the ack as the venue replied (`accepted_at` set; "submitted" when the reply
        tells no outcome)."""
        ...

    async def read_fill(self, order: OrderCommand, sent: OrderAck) -> OrderAck:
        """The sent order as the venue reports it now; `sent` itself if it cannot be read (the
        order is placed either way: submitted, not a failure)."""
        ...


# what a venue's private stream reported on the account: a fill (an execution), or a change to
# a resting order (new, amended, cancelled). A fill comes as a `Fill` where the stream gives
# all of it, its `trade_id` the id the venue's stream gives the execution (the master publishes
# from it only once its REST trade history showed the same id: services.master.streamed);
# else as "fill", a wake-up to read the fills by REST.
Activity = Literal["fill", "order"] | Fill


@runtime_checkable
class Streaming(Protocol):
    """An account whose venue has a private stream of its orders and fills (Kraken's WebSocket
    `executions` channel, Alpaca's `trade_updates`). The master's watchers wake on it and read at
    once instead of at their next poll. The stream only wakes them: the REST reads stay the
    source of truth (the fill cursor, exactly-once), and the polls stay as the fallback for
    whatever a reconnect misses."""

    @property
    def subscribed(self) -> bool:
        """Whether a subscription is confirmed and its connection open now (False before the
        first, and while a dropped one is being made again)."""
        ...

    def activity(self) -> AsyncIterator[Activity]:
        """Yield, for as long as it is iterated, one item per change the stream reports, after
        subscribing (and re-subscribing after a dropped connection, with a backoff; a reconnect
        yields "fill" and "order" once, as something may have been missed). It never ends on
        its own; `CopytradeError` only when the account cannot stream at all (its credentials
        refused). It draws on the account's REST budget only for the stream's token."""
        ...
