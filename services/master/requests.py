"""The master's resting-order requests and their reply: what `copytrade master order`, `amend`
and `cancel` send to the master service's endpoints next to `trade` (bus.MASTER_ORDER_ENDPOINTS).

Each request carries a request id, its idempotency key: sent again, it is answered with its
first outcome and changes nothing at the venue (services.master.order_desk).
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from shared import bus
from shared.exchange.port import Trigger
from shared.messages import AccountId, Id, OrderSignal, Side, Symbol, check_money

RequestId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{8,64}$")]  # as TradeRequest's
Endpoint = Literal["order", "amend", "cancel"]


def _new_id() -> str:
    return uuid.uuid4().hex


class OrderRequest(Struct, frozen=True, kw_only=True, tag="order", forbid_unknown_fields=True):
    """Place a resting order on the master account: a good-till-canceled limit (`limit_price`),
    or a stop-loss / take-profit at `trigger_price` (a limit order at `limit_price` once
    triggered, else a market order). Base-sized."""

    symbol: Symbol
    side: Side
    size: Decimal  # base
    limit_price: Decimal | None = None
    trigger: Trigger | None = None
    trigger_price: Decimal | None = None
    request_id: RequestId = msgspec.field(default_factory=_new_id)
    master_id: AccountId | None = None

    def __post_init__(self) -> None:
        check_money("size", self.size)
        for name in ("limit_price", "trigger_price"):
            value = getattr(self, name)
            if value is not None:
                check_money(name, value)


class AmendRequest(Struct, frozen=True, kw_only=True, tag="amend", forbid_unknown_fields=True):
    """Change a resting limit order's price and/or size (base, its new total, filled included).
    `order_id`: the venue's order id (or copytrade's client order id)."""

    order_id: Id
    price: Decimal | None = None
    size: Decimal | None = None
    request_id: RequestId = msgspec.field(default_factory=_new_id)
    master_id: AccountId | None = None

    def __post_init__(self) -> None:
        if self.price is None and self.size is None:
            raise ValueError("an amendment changes the price, the size or both")
        for name in ("price", "size"):
            value = getattr(self, name)
            if value is not None:
                check_money(name, value)


class CancelRequest(Struct, frozen=True, kw_only=True, tag="cancel", forbid_unknown_fields=True):
    """Cancel a resting order (`order_id` as in AmendRequest)."""

    order_id: Id
    request_id: RequestId = msgspec.field(default_factory=_new_id)
    master_id: AccountId | None = None


OrderCall = OrderRequest | AmendRequest | CancelRequest
OrderStatus = Literal["open", "filled", "canceled", ""]


class OrderReply(Struct, frozen=True, kw_only=True, tag="order_reply"):
    """The master's answer. `outcome`: done (the venue did it; `status` is the order's now),
    refused (nothing changed at the venue), unknown (it may have: send the same request id
    again, which finds what the first attempt did and never does it twice)."""

    ok: bool  # outcome == "done"
    outcome: Literal["done", "refused", "unknown"] = "unknown"
    request_id: str = ""
    replayed: bool = False  # the first outcome of this request id, answered again
    order_id: str = ""
    client_order_id: str = ""
    status: OrderStatus = ""
    signal: OrderSignal | None = None  # the order event it caused, as published
    error: str = ""


def endpoint_of(call: OrderCall) -> Endpoint:
    """The endpoint a request is sent to."""
    match call:
        case OrderRequest():
            return "order"
        case AmendRequest():
            return "amend"
        case CancelRequest():
            return "cancel"


def order_subject(master_id: str | None, endpoint: Endpoint) -> str:
    """The subject of a master's order endpoint (None: the only master), beside its trade."""
    assert endpoint in bus.MASTER_ORDER_ENDPOINTS
    return f"{bus.master_group(master_id)}.{endpoint}"
