"""The paper venue's protocol: the typed calls and replies a `PaperAccount` sends to the paper
venue (the `copytrade paper-exchange` service, or the same engine embedded in a process), and
the NATS transport that carries them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Literal

import msgspec
from msgspec import Struct

from shared import bus
from shared.errors import (
    TemporaryError,
)
from shared.exchange.port import (
    AccountSnapshot,
    Fill,
    OrderCommand,
    Trigger,
)
from shared.messages import MarketRules, Side

PaperFaultKind = Literal[
    "exchange_error",
    "auth_error",
    "rate_limited",
    "timeout_after_accept",
    "insufficient_funds",
    "temporary",
    "below_minimum",
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


class Submit(Struct, frozen=True, tag="submit"):
    """Place a resting order through the port (`PaperAccount.place_order`): a good-till-canceled
    limit order or a stop-loss / take-profit trigger order. Funds are checked net of what open
    orders hold. A limit order crossing the price fills whole at once, a trigger the price has
    reached triggers at once; later `SetPrice` triggers, `FillPart` fills parts."""

    account: str
    order: OrderCommand


class Cancel(Struct, frozen=True, tag="cancel"):
    account: str
    client_order_id: str


class Amend(Struct, frozen=True, tag="amend"):
    """A resting limit order's new price and/or size (base, its new total), in place."""

    account: str
    client_order_id: str
    price: Decimal | None = None
    size: Decimal | None = None


class OpenOrders(Struct, frozen=True, tag="open_orders"):
    account: str
    symbol: str | None = None


Call = (
    Snapshot
    | Position
    | Rules
    | Price
    | Place
    | Find
    | Fills
    | Fund
    | SetPrice
    | InjectFault
    | Orders
    | PlaceResting
    | FillPart
    | Submit
    | Cancel
    | Amend
    | OpenOrders
)


class PaperOrder(Struct, frozen=True, kw_only=True):
    order_id: str
    client_order_id: str
    symbol: str
    side: Side
    amount: Decimal
    cost: Decimal
    price: Decimal
    at: float
    # expired: a limit order out of the money; open: a resting order not yet wholly filled;
    # canceled: a resting order canceled, with what filled before
    status: Literal["filled", "expired", "open", "canceled"] = "filled"
    limit_price: Decimal | None = None
    ordered: Decimal | None = None  # a resting order's base size (`amount` is what filled)
    trigger: Trigger | None = None  # a stop-loss or take-profit order
    trigger_price: Decimal | None = None
    triggered: bool = False

    @property
    def waiting(self) -> bool:
        """Open, with a trigger the price has not reached."""
        return self.status == "open" and self.trigger is not None and not self.triggered


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

Transport = Callable[[Call], Awaitable[Reply]]

_call_encoder = msgspec.json.Encoder(decimal_format="string")
_reply_decoder = msgspec.json.Decoder(Reply)


def nats_transport(nc: object, timeout_s: float = 3.0) -> Transport:
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
