"""Every message that crosses the bus: frozen, tagged msgspec Structs, strictly decoded.

Money is `Decimal` (JSON strings on the wire); each money field is checked finite and in range
in `__post_init__`, so a NaN, a negative size or a 1e999 never reaches sizing or an exchange.
"""

from __future__ import annotations

import uuid
import zlib
from decimal import Decimal
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

SCHEMA_VERSION: Literal[1] = 1
MAX_MONEY = Decimal("1e13")  # far above any real account; bounds hostile numbers

Side = Literal["buy", "sell"]
SizeType = Literal["quote", "base"]
Outcome = Literal["filled", "submitted", "skipped", "failed", "dry_run"]
FollowerState = Literal["active", "paused", "close_only", "dry_run"]
SizingMode = Literal["equity_ratio", "multiplier", "fixed_notional"]
SlippageAction = Literal["skip", "limit"]

Id = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
AccountId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]  # safe in subjects and KV keys
Symbol = Annotated[str, Meta(min_length=3, max_length=32, pattern=r"^[A-Z0-9.]+/[A-Z0-9.]+$")]
Text = Annotated[str, Meta(max_length=500)]
FillId = Annotated[str, Meta(max_length=64, pattern=r"^[A-Za-z0-9_.:\-]*$")]
Timestamp = Annotated[float, Meta(ge=0, le=4_102_444_800)]  # before 2100

_ID_NAMESPACE = uuid.UUID("6f1c2d0e-8a43-5b6e-9a59-5cbe1f0d7a11")


def signal_id_for(exchange: str, order_id: str, fill_id: str = "") -> str:
    """Deterministic signal id: the same master fill always yields the same id. `fill_id` tells
    the fills of one order apart (a trade id, or the cumulative amount filled); "" is the
    whole order, as before partial fills were copied one by one."""
    name = f"{exchange}:{order_id}" if not fill_id else f"{exchange}:{order_id}:{fill_id}"
    return uuid.uuid5(_ID_NAMESPACE, name).hex


def client_order_id_for(signal_id: str, follower_id: str) -> str:
    """Deterministic client order id (32 hex chars: accepted by every supported venue)."""
    return uuid.uuid5(_ID_NAMESPACE, f"{signal_id}:{follower_id}").hex


def check_money(name: str, value: Decimal, *, positive: bool = True) -> None:
    """Raise ValueError unless value is finite, in range and (> 0 | >= 0)."""
    if not value.is_finite() or abs(value) > MAX_MONEY:
        raise ValueError(f"{name} must be a finite number below {MAX_MONEY}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}")


class TradeSignal(Struct, frozen=True, kw_only=True, tag="signal", forbid_unknown_fields=True):
    """A confirmed master fill, published once per master order."""

    schema_version: Literal[1] = SCHEMA_VERSION
    signal_id: Annotated[str, Meta(pattern=r"^[0-9a-f]{32}$")]
    master_id: Id
    exchange: Id  # the master's broker
    symbol: Symbol  # canonical BASE/QUOTE
    side: Side
    price: Decimal  # average fill price
    size: Decimal  # in size_type units, as the master ordered
    size_type: SizeType
    filled_base: Decimal  # base amount the master order filled
    order_id: Id
    master_equity: Decimal  # the guide's "master balance", before the trade
    master_position_before: Decimal  # base held before the trade (the whole balance)
    executed_at: Timestamp
    signature: Annotated[str, Meta(max_length=200)] = ""
    fill_id: FillId = ""  # which fill of the order ("": the whole order)
    # the master's copied position (ledger) before this fill: sells scale by it; None from a
    # master service that predates the ledger (sells then scale by master_position_before)
    copied_position_before: Decimal | None = None

    def __post_init__(self) -> None:
        for name in ("price", "size", "filled_base", "master_equity"):
            check_money(name, getattr(self, name))
        check_money("master_position_before", self.master_position_before, positive=False)
        if self.copied_position_before is not None:
            check_money("copied_position_before", self.copied_position_before, positive=False)
        if self.signal_id != signal_id_for(self.exchange, self.order_id, self.fill_id):
            raise ValueError("signal_id does not match exchange, order_id and fill_id")

    @property
    def sell_base(self) -> Decimal:
        """What a sell scales by: the copied position when known, else the whole balance."""
        if self.copied_position_before is not None:
            return self.copied_position_before
        return self.master_position_before


OrderEventKind = Literal["new", "amend", "cancel"]
MirroredKind = Literal["limit", "stop_loss", "stop_loss_limit", "take_profit", "take_profit_limit"]


def order_event_id_for(exchange: str, order_id: str, event: str, version: int) -> str:
    """Deterministic id of a master order event: the same event always yields the same id."""
    return uuid.uuid5(_ID_NAMESPACE, f"order:{exchange}:{order_id}:{event}:{version}").hex


def linked_client_order_id(master_order_id: str, follower_id: str, version: int = 0) -> str:
    """The follower order linked to a master resting order (version > 0: after a replace)."""
    return uuid.uuid5(_ID_NAMESPACE, f"link:{master_order_id}:{follower_id}:{version}").hex


class OrderSignal(Struct, frozen=True, kw_only=True, tag="order_event", forbid_unknown_fields=True):
    """A master's resting order changed: placed (new), amended (price or size), or cancelled.
    Its fills are TradeSignals as always; this carries the order's life between them. Signed
    like a TradeSignal, on the same subject, with a deterministic id."""

    schema_version: Literal[1] = SCHEMA_VERSION
    signal_id: Annotated[str, Meta(pattern=r"^[0-9a-f]{32}$")]
    master_id: Id
    exchange: Id  # the master's broker
    event: OrderEventKind
    version: Annotated[int, Meta(ge=0)]  # 0 when placed, +1 per amendment; a cancel keeps it
    order_id: Id  # the master's order at its venue
    kind: MirroredKind
    symbol: Symbol
    side: Side
    size: Decimal  # base, the order's total size now (filled part included)
    filled: Decimal  # base filled so far
    price: Decimal | None = None  # limit price (limit kinds)
    trigger_price: Decimal | None = None  # stop / take-profit trigger
    master_equity: Decimal
    copied_position: Decimal  # the master's copied position now (ledger): stops scale by it
    executed_at: Timestamp  # when the master's venue showed the change
    signature: Annotated[str, Meta(max_length=200)] = ""

    def __post_init__(self) -> None:
        for name in ("size", "master_equity"):
            check_money(name, getattr(self, name))
        check_money("filled", self.filled, positive=False)
        check_money("copied_position", self.copied_position, positive=False)
        for name in ("price", "trigger_price"):
            value = getattr(self, name)
            if value is not None:
                check_money(name, value)
        if self.signal_id != order_event_id_for(self.exchange, self.order_id, self.event, self.version):
            raise ValueError("signal_id does not match exchange, order_id, event and version")


AnySignal = TradeSignal | OrderSignal  # what the signals subject carries


class CopyResult(Struct, frozen=True, kw_only=True, tag="result", forbid_unknown_fields=True):
    """One follower's outcome for one signal: the audit record."""

    signal_id: str
    follower_id: str
    exchange: str  # the copier group
    outcome: Outcome
    reason_code: str = "none"
    reason: Text = ""
    symbol: str = ""
    side: Side | None = None
    size: Decimal | None = None
    size_type: SizeType | None = None
    notional: Decimal | None = None
    client_order_id: str | None = None
    exchange_order_id: str | None = None
    filled_base: Decimal | None = None
    avg_price: Decimal | None = None
    recovered: bool = False  # found at the exchange on redelivery, not placed again
    signal_executed_at: float = 0.0
    received_at: float = 0.0
    order_sent_at: float | None = None
    acked_at: float | None = None  # the venue accepted the order (its fill may be read after)
    master_id: str = ""  # the master whose signal this copies


class SignalRejected(Struct, frozen=True, kw_only=True, tag="rejected"):
    """Bytes on the signal subject that were not executed, and why."""

    exchange: str
    reason_code: str
    reason: Text
    size: int
    excerpt: Text
    at: float


class DeadLetter(Struct, frozen=True, kw_only=True, tag="deadletter"):
    """A signal given up on after its delivery attempts ran out."""

    exchange: str
    signal_id: str
    deliveries: int
    error: Text
    at: float
    shard: int | None = None  # set when one shard's work item of the signal was given up


# ---- sizer request/reply -------------------------------------------------------------------


class MarketRules(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a venue accepts for one symbol; parsed from vendor data at the adapter edge."""

    symbol: str  # the venue's unified symbol
    amount_step: Decimal  # base precision: sizes are truncated to a multiple of it
    min_amount: Decimal = Decimal(0)
    min_cost: Decimal = Decimal(0)
    cost_step: Decimal = Decimal("0.01")
    quote_orders: bool = True  # venue takes quote-sized market buys
    price_step: Decimal | None = None  # limit prices are a multiple of it; None: not published

    def __post_init__(self) -> None:
        check_money("amount_step", self.amount_step)
        check_money("cost_step", self.cost_step)
        if self.price_step is not None:
            check_money("price_step", self.price_step)
        check_money("min_amount", self.min_amount, positive=False)
        check_money("min_cost", self.min_cost, positive=False)


class SizingSpec(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    mode: SizingMode = "equity_ratio"
    multiplier: Decimal | None = None
    fixed_notional: Decimal | None = None
    max_order_notional: Decimal | None = None

    def __post_init__(self) -> None:
        needs = {"multiplier": self.multiplier, "fixed_notional": self.fixed_notional}
        if self.mode in needs and needs[self.mode] is None:
            raise ValueError(f"sizing mode {self.mode} needs `{self.mode}`")
        for name, value in needs.items():
            if name != self.mode and value is not None:  # ignored by the sizer: surely a mistake
                raise ValueError(f"`{name}` does not apply to sizing mode {self.mode}")
        for name in ("multiplier", "fixed_notional", "max_order_notional"):
            value = getattr(self, name)
            if value is not None:
                check_money(name, value)


class RiskSpec(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Per-follower risk controls. Caps limit buying only: exits are never blocked."""

    max_position_notional: Decimal | None = None  # per symbol, at the master's price
    allow_symbols: list[Symbol] | None = None  # None: every symbol
    deny_symbols: list[Symbol] = []
    max_price_deviation_pct: Decimal | None = None  # follower venue price vs master fill
    # skip: a buy is skipped when the venue's price is beyond the deviation; limit: every buy is
    # an immediate-or-cancel limit order at the master's price + the deviation (the venue enforces it)
    slippage_action: SlippageAction = "skip"
    max_signal_age_s: float | None = None  # overrides signals.max_age_s
    daily_loss_pct: Decimal | None = None  # equity down this much today -> close_only
    max_drawdown_pct: Decimal | None = None  # equity down this much from its peak -> paused

    def __post_init__(self) -> None:
        if self.max_position_notional is not None:
            check_money("max_position_notional", self.max_position_notional)
        for name in ("max_price_deviation_pct", "daily_loss_pct", "max_drawdown_pct"):
            value = getattr(self, name)
            if value is not None:
                check_money(name, value)
                if value > 100:
                    raise ValueError(f"{name} must be > 0 and <= 100")
        both = sorted(set(self.allow_symbols or ()) & set(self.deny_symbols))
        if both:
            raise ValueError(f"{', '.join(both)} in both allow_symbols and deny_symbols")
        if self.max_signal_age_s is not None and not 0 < self.max_signal_age_s <= 86_400:
            raise ValueError("max_signal_age_s must be in (0, 86400]")
        if self.slippage_action == "limit" and self.max_price_deviation_pct is None:
            raise ValueError("slippage_action: limit needs max_price_deviation_pct")


class FollowerSnapshot(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A follower as the sizer needs it: account figures, venue rules, its sizing settings."""

    follower_id: str
    equity: Decimal
    cash: Decimal  # spendable quote currency (buying power)
    position: Decimal  # base held in the signal's symbol (the whole real balance)
    holding: Decimal | None = None  # copied holding for the signal's master (ledger): sells act on it
    rules: MarketRules | None  # None: the follower's venue does not list the symbol
    sizing: SizingSpec = SizingSpec()
    risk: RiskSpec = RiskSpec()
    state: FollowerState = "active"
    price: Decimal | None = None  # the follower venue's current price, for the slippage guard
    max_signal_age_s: float | None = None  # effective limit (follower's, else the global one)

    def __post_init__(self) -> None:
        for name in ("equity", "cash", "position"):
            check_money(name, getattr(self, name), positive=False)


class SizeRequest(Struct, frozen=True, kw_only=True, tag="size_request", forbid_unknown_fields=True):
    signal: TradeSignal
    min_notional: Decimal
    now: float  # the copier's clock, for the signal-age limit
    followers: list[FollowerSnapshot]


class SizedOrder(Struct, frozen=True, kw_only=True, tag="order", forbid_unknown_fields=True):
    follower_id: str
    side: Side
    size: Decimal
    size_type: SizeType
    notional: Decimal  # estimated quote value at the master's price
    scale: Decimal  # follower size / master size (informational)
    limit_price: Decimal | None = None  # immediate-or-cancel at this price or better; None: market


class Skip(Struct, frozen=True, kw_only=True, tag="skip", forbid_unknown_fields=True):
    follower_id: str
    reason_code: str
    reason: str


Decision = SizedOrder | Skip


class SizeReply(Struct, frozen=True, kw_only=True, tag="size_reply", forbid_unknown_fields=True):
    decisions: list[Decision]


# ---- master trade request/reply ------------------------------------------------------------


class TradeRequest(Struct, frozen=True, kw_only=True, tag="trade", forbid_unknown_fields=True):
    """Ask the master service to trade on the master account.

    `request_id` is the idempotency key: a request sent again with the same id never places a
    second master order, it is answered with the first request's outcome."""

    symbol: Symbol
    side: Side
    size: Decimal
    size_type: SizeType
    # safe in a KV key; a request sent without one gets its own (and no retry safety)
    request_id: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{8,64}$")] = msgspec.field(
        default_factory=lambda: uuid.uuid4().hex
    )
    master_id: AccountId | None = None  # the master meant; None: whichever serves the subject

    def __post_init__(self) -> None:
        check_money("size", self.size)

    def same_trade(self, other: TradeRequest) -> bool:
        """Whether `other` asks for the same order (a retry), whatever its master id spelling."""
        return (self.symbol, self.side, self.size, self.size_type) == (
            other.symbol,
            other.side,
            other.size,
            other.size_type,
        )


class TradeReply(Struct, frozen=True, kw_only=True, tag="trade_reply"):
    """The master's answer. `outcome`: filled (the order filled, its signal is published),
    refused (no order was placed for this request), unknown (an order may exist: send the same
    request id again, which looks it up and never places a second one)."""

    ok: bool  # outcome == "filled"
    outcome: Literal["filled", "refused", "unknown"] = "unknown"
    request_id: str = ""
    replayed: bool = False  # the first outcome of this request id, answered again
    signal_id: str = ""
    order_id: str = ""
    error: str = ""
    signal: TradeSignal | None = None


class Claim(Struct, frozen=True, kw_only=True):
    """KV record that a (signal, follower) order is being or has been placed."""

    owner: str
    at: float
    order: SizedOrder
    client_order_id: str
    # its attempt ended without an order (refused at the venue, or skipped at the gate): never
    # taken over, and the outcome stands (services.copier.copy.execute)
    ended: bool = False


# ---- spreading a signal over a copier group's replicas ----------------------------------------


Instance = Annotated[str, Meta(min_length=1, max_length=253)]  # a replica's name (host name)


def shard_of(follower_id: str, shards: int) -> int:
    """The follower's shard: stable across processes and restarts (CRC-32, not `hash`)."""
    return zlib.crc32(follower_id.encode()) % shards


class WorkItem(Struct, frozen=True, kw_only=True, tag="work", forbid_unknown_fields=True):
    """One shard's share of a signal: copy it for the group's followers in `shard` of `shards`.

    Published by the replica that took the signal, pulled by whichever replica owns the shard;
    the executor sizes and places at run time, so a shard's items run in signal order, each on
    the positions its predecessor left."""

    signal: TradeSignal
    group: AccountId
    shard: Annotated[int, Meta(ge=0)]
    shards: Annotated[int, Meta(ge=1, le=4096)]  # the planner's count: membership is shard_of
    received_at: Timestamp  # when the planning replica took the signal
    planner: Instance

    def __post_init__(self) -> None:
        if self.shard >= self.shards:
            raise ValueError("shard must be below shards")


class ReplicaHeartbeat(Struct, frozen=True, kw_only=True, tag="replica", forbid_unknown_fields=True):
    """A copier replica saying it is alive (or leaving): shard ownership follows the live set."""

    group: AccountId
    instance: Instance
    leaving: bool = False


AuditRecord = CopyResult | SignalRejected | DeadLetter


# What strict decoding raises for bytes that are not a valid message. msgspec reports invalid
# UTF-8 inside a JSON string as UnicodeDecodeError, not as msgspec.DecodeError (found by the
# chaos suite): every decoder of untrusted bytes catches this whole tuple.
MALFORMED = (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError)
