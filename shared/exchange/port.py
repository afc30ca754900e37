"""The one port every exchange adapter implements, with its typed commands and reports."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal, Protocol

from msgspec import Struct

from shared.messages import MarketRules, Side, SizeType

# expired: an immediate-or-cancel limit order that found no price within its limit, filled nothing
OrderStatus = Literal["filled", "submitted", "expired"]


def order_status(*, done: bool, ended: bool, filled: Decimal) -> OrderStatus:
    """Our status from the venue's: `done` (fully filled) or `ended` (canceled, expired, rejected:
    an immediate-or-cancel remainder) with something filled is filled, ended with nothing is
    expired; anything else is still working: submitted."""
    if done or (ended and filled > 0):
        return "filled"
    return "expired" if ended else "submitted"


class OrderCommand(Struct, frozen=True, kw_only=True):
    """An order to place, identified by our deterministic client order id: a market order, or
    with `limit_price` an immediate-or-cancel limit order (base-sized) that never rests."""

    client_order_id: str
    symbol: str  # the venue's unified symbol
    side: Side
    size: Decimal
    size_type: SizeType
    reference_price: Decimal  # the master's fill price: for venues that need a price
    limit_price: Decimal | None = None  # on the venue's price tick (the sizer rounds it)


class OrderAck(Struct, frozen=True, kw_only=True):
    """What the venue said about an order: ours, parsed from the vendor reply."""

    exchange_order_id: str
    client_order_id: str
    status: OrderStatus
    filled_base: Decimal | None = None
    avg_price: Decimal | None = None
    # unix time of the venue's reply accepting the order; None for an order found, not placed now
    accepted_at: float | None = None


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

    async def place_order(self, order: OrderCommand) -> OrderAck: ...

    async def find_order(self, client_order_id: str, symbol: str) -> OrderAck | None: ...

    async def fills_since(self, cursor: float) -> list[Fill]: ...
