"""The paper adapter: an `ExchangeAccount` on the paper venue, speaking its protocol."""

from __future__ import annotations

import time
from decimal import Decimal

import msgspec

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
from shared.exchange.paper.protocol import (
    Amend,
    Call,
    Cancel,
    Failure,
    Fills,
    Find,
    Ok,
    OpenOrders,
    PaperOrder,
    Place,
    Position,
    Price,
    Rules,
    Snapshot,
    Submit,
    Transport,
)
from shared.exchange.port import (
    RESTING_KINDS,
    AccountSnapshot,
    Fill,
    NotNative,
    OpenOrder,
    OrderAck,
    OrderCapabilities,
    OrderCommand,
    kind_of,
)
from shared.messages import MarketRules

_ERRORS: dict[str, type[ExchangeError]] = {
    "exchange_error": ExchangeError,
    "auth_error": AuthError,
    "rate_limited": RateLimited,
    "temporary": TemporaryError,
    "insufficient_funds": InsufficientFunds,
    "below_minimum": BelowMinimum,
    "unsupported_symbol": UnsupportedSymbol,
    "invalid_order": InvalidOrder,
    "not_native": NotNative,
}


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
        call = Submit if kind_of(order) in RESTING_KINDS else Place
        placed = (await self._ok(call(self.account_id, order))).order
        assert placed is not None
        return msgspec.structs.replace(_ack(placed), accepted_at=time.time())

    async def order_capabilities(self, symbol: str) -> OrderCapabilities:
        return CAPABILITIES

    async def cancel_order(self, client_order_id: str, symbol: str) -> OrderAck | None:
        order = (await self._ok(Cancel(self.account_id, client_order_id))).order
        return None if order is None else _ack(order)

    async def amend_order(
        self, client_order_id: str, symbol: str, *, price: Decimal | None = None, size: Decimal | None = None
    ) -> OrderAck:
        order = (await self._ok(Amend(self.account_id, client_order_id, price, size))).order
        assert order is not None
        return _ack(order)

    async def open_orders(self, symbol: str | None = None) -> list[OpenOrder]:
        reply = await self._ok(OpenOrders(self.account_id, symbol))
        return [_open_order(o) for o in reply.orders]

    async def find_order(self, client_order_id: str, symbol: str) -> OrderAck | None:
        found = (await self._ok(Find(self.account_id, client_order_id))).order
        return None if found is None else _ack(found)

    async def fills_since(self, cursor: float) -> list[Fill]:
        reply = await self._ok(Fills(self.account_id, cursor))
        # a venue from before fill-by-fill sends no fills: one per filled order, as it was
        return reply.fills or [
            Fill(
                order_id=o.order_id,
                symbol=o.symbol,
                side=o.side,
                amount=o.amount,
                price=o.price,
                at=o.at,
                client_order_id=o.client_order_id,
            )
            for o in reply.orders
        ]


# The paper venue places every resting kind itself and amends in place.
CAPABILITIES = OrderCapabilities(native=RESTING_KINDS, amend="in_place", amend_keeps_client_id=True)


def _ack(order: PaperOrder) -> OrderAck:
    ack = OrderAck(
        exchange_order_id=order.order_id,
        client_order_id=order.client_order_id,
        status="expired",
        ordered_base=order.ordered,
    )
    if order.status == "expired" or (order.status == "canceled" and not order.amount):
        return ack
    if order.status == "open":  # a resting order, filled in part or not at all
        return msgspec.structs.replace(
            ack, status="submitted", filled_base=order.amount or None, avg_price=order.price or None
        )
    return msgspec.structs.replace(ack, status="filled", filled_base=order.amount, avg_price=order.price)


def _open_order(order: PaperOrder) -> OpenOrder:
    kind = (
        "limit" if order.trigger is None else order.trigger + ("" if order.limit_price is None else "_limit")
    )
    return OpenOrder(
        client_order_id=order.client_order_id,
        exchange_order_id=order.order_id,
        symbol=order.symbol,
        kind=kind,  # type: ignore[arg-type]
        side=order.side,
        size=order.ordered or order.amount,
        filled=order.amount,
        price=order.limit_price,
        trigger_price=order.trigger_price,
    )
