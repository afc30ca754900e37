"""The master's resting orders as order events: new, amend, cancel (OrderSignal).

The venue's open orders are compared with the state last kept in the fills bucket (`open.<master>`:
per order its fields, its event version and when its fill was last read). What differs is an
event, published before the order's new state is written:

  new     an open order the state does not hold: version 0
  amend   an order whose price, trigger price or size changed: its version + 1 (a fill alone is
          no amendment: fills are TradeSignals, from the fill watcher)
  cancel  an order the state holds that is no longer open and did not fill whole; it keeps its
          version and carries what filled before it ended. An order gone because it filled is
          dropped without an event: with a client order id the venue's `find_order` says how it
          ended, else its fills (the fills path) complete it or not (`_by_fills`).

A venue whose amendment replaces the order (Binance) shows it as the old order's cancel and the
replacement's new. Events are published whatever the kill switch: they are what the master did.

An event's id is `order_event_id_for(exchange, order, event, version)` and its publish is
deduplicated by it, so a restart between a publish and its state write repeats nothing, and a
restart after any number of changes misses none: it compares with the state kept. The state is
written compare-and-set: another writer's change makes the comparison start again.
Used by the open-orders watcher (services.master.order_watch) and by the master service after
each order, amend or cancel it makes (services.master.order_desk).
"""

from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal
from typing import Literal, Protocol

import msgspec
from msgspec import Struct
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.master.metrics import MasterMetrics
from services.master.orders import ClaimConflict
from shared import bus
from shared.config import MasterConfig
from shared.exchange.port import ExchangeAccount, Fill, OpenOrder, RestingKind
from shared.messages import OrderEventKind, OrderSignal, Side, order_event_id_for

log = logging.getLogger("copytrade.master.orders")
ZERO = Decimal(0)
REWRITE_S = 86_400.0  # an unchanged state is written again daily: the bucket's TTL is 30 days
ATTEMPTS = 5  # comparisons started again after another writer's change
RECENT_EVENTS = 1_000  # the last event per order kept in memory, for the service's replies
FILLS_OVERLAP_S = 5.0  # fills read from a little before an order was first seen


class Tracked(Struct, frozen=True, kw_only=True):
    """A resting order as last seen open, and the version of its last event."""

    order_id: str
    client_order_id: str | None
    symbol: str
    kind: RestingKind
    side: Side
    size: Decimal  # base, filled part included
    filled: Decimal
    price: Decimal | None
    trigger_price: Decimal | None
    version: int = 0
    first_seen: float  # when the read that first saw it began (it was placed before)
    seen_at: float  # when the read that saw `filled` ended: fills after it are not in it

    def amended(self, order: OpenOrder) -> bool:
        """Whether `order` (the same order, as open now) is an amendment of this one."""
        return (self.price, self.trigger_price, self.size) != (order.price, order.trigger_price, order.size)


class OpenState(Struct, frozen=True, kw_only=True):
    orders: dict[str, Tracked] = {}  # by the venue's order id
    written_at: float = 0.0


class OrderEventPublisher(Protocol):
    """What publishes an event (services.master.signals.MasterSignals)."""

    async def publish_event(self, signal: OrderSignal) -> OrderSignal | None: ...


Ending = Literal["open", "filled", "canceled"]


def open_key(master_id: str) -> str:
    """The fills-bucket key holding a master's open orders as last seen."""
    return f"open.{master_id}"


def tracked(order: OpenOrder, version: int, read: Read, before: Tracked | None) -> Tracked:
    """The order as this read saw it (`before`: as the state held it)."""
    return Tracked(
        order_id=order.exchange_order_id,
        client_order_id=order.client_order_id,
        symbol=order.symbol,
        kind=order.kind,
        side=order.side,
        size=order.size,
        filled=order.filled,
        price=order.price,
        trigger_price=order.trigger_price,
        version=version,
        first_seen=read.began if before is None else before.first_seen,
        seen_at=read.ended,
    )


class Read(Struct, frozen=True):
    """When a read of the open orders began and ended."""

    began: float
    ended: float


class OpenStore:
    """`open.<master>` in the fills bucket (in memory without one: tests, one process)."""

    def __init__(self, kv: KeyValue | None, master_id: str) -> None:
        self._kv, self._key = kv, open_key(master_id)
        self._memory: tuple[bytes, int] | None = None
        self._encoder = msgspec.json.Encoder(decimal_format="string")
        self._decoder = msgspec.json.Decoder(OpenState)

    async def read(self) -> tuple[OpenState, int | None]:
        """The state and its revision (None: never written)."""
        stored = self._memory
        if self._kv is not None:
            kv, key = self._kv, self._key
            try:
                entry = await bus.retry("open_orders_get", lambda: kv.get(key))
            except KeyNotFoundError:
                return OpenState(), None
            stored = None if entry.value is None else (entry.value, entry.revision or 0)
        return (OpenState(), None) if stored is None else (self._decoder.decode(stored[0]), stored[1])

    async def write(self, state: OpenState, revision: int | None) -> int | None:
        """Create (revision None) or compare-and-set; the new revision, None when another
        write came first."""
        data = self._encoder.encode(msgspec.structs.replace(state, written_at=time.time()))
        if self._kv is None:
            if (self._memory[1] if self._memory else None) != revision:
                return None
            self._memory = (data, (revision or 0) + 1)
            return self._memory[1]
        kv, key = self._kv, self._key

        async def write() -> int:
            if revision is None:
                return await kv.create(key, data)
            return await kv.update(key, data, last=revision)

        try:
            return await bus.retry("open_orders_write", write)
        except KeyWrongLastSequenceError:
            return None


class _Conflict(Exception):
    """The state changed under this comparison: start it again."""


class OrderTracker:
    """Turns the master's open orders into order events, each published once."""

    def __init__(
        self,
        *,
        account: ExchangeAccount,
        config: MasterConfig,
        kv: KeyValue | None,
        signals: OrderEventPublisher,
        metrics: MasterMetrics | None = None,
    ) -> None:
        self._account, self._config, self._signals = account, config, signals
        self._metrics = metrics
        self._store = OpenStore(kv, config.id)
        self._lock = asyncio.Lock()  # one comparison at a time: the watcher's, the service's
        self.last_events: dict[str, OrderSignal] = {}  # order id -> its last event published
        self.open_orders = 0  # how many the last full read found
        self.active_at = 0.0  # monotonic: the last event, or an order request of the service

    def touch(self) -> None:
        """Something happened on the master account: the watcher polls at its fast pace."""
        self.active_at = time.monotonic()

    async def tracked(self, order_id: str) -> Tracked | None:
        """The open order by the venue's id or copytrade's client order id, as last seen."""
        state, _ = await self._store.read()
        found = state.orders.get(order_id)
        return found or next((t for t in state.orders.values() if t.client_order_id == order_id), None)

    async def sync(self, symbol: str | None = None) -> list[OrderSignal]:
        """Read the open orders (of `symbol`, or all), publish an event for each change since
        the state kept, and keep the new state; return the events published now."""
        async with self._lock:
            published: list[OrderSignal] = []
            for _ in range(ATTEMPTS):
                began = time.time()
                orders = await self._account.open_orders(symbol)
                read = Read(began, time.time())
                if symbol is None:
                    self.open_orders = len(orders)
                try:
                    await self._compare(orders, symbol, read, published)
                except _Conflict:
                    continue
                return published
            raise ClaimConflict(f"the open orders of {self._config.id} kept changing")

    async def _compare(
        self, orders: list[OpenOrder], symbol: str | None, read: Read, published: list[OrderSignal]
    ) -> None:
        state, revision = await self._store.read()
        events = _Events(self, self._account, self._config, read)
        now = {o.exchange_order_id: o for o in orders}
        for order in orders:
            state, revision = await self._seen(order, state, revision, events, published)
        gone = [t for t in state.orders.values() if t.order_id not in now and symbol in (None, t.symbol)]
        for before in gone:
            state, revision = await self._gone(before, state, revision, events, published)
        if time.time() - state.written_at > REWRITE_S:
            await self._write(state, revision)

    async def _seen(
        self,
        order: OpenOrder,
        state: OpenState,
        revision: int | None,
        events: _Events,
        published: list[OrderSignal],
    ) -> tuple[OpenState, int | None]:
        before = state.orders.get(order.exchange_order_id)
        if before is None:
            event: OrderEventKind | None = "new"
            after = tracked(order, 0, events.read, None)
        elif before.amended(order):
            event, after = "amend", tracked(order, before.version + 1, events.read, before)
        elif before.filled != order.filled:  # a fill: no event, the fill's read is kept
            event, after = None, tracked(order, before.version, events.read, before)
        else:
            return state, revision
        if event is not None:
            await events.publish(event, after, published)
        orders = {**state.orders, after.order_id: after}
        new_state = msgspec.structs.replace(state, orders=orders)
        return new_state, await self._write(new_state, revision)

    async def _gone(
        self,
        before: Tracked,
        state: OpenState,
        revision: int | None,
        events: _Events,
        published: list[OrderSignal],
    ) -> tuple[OpenState, int | None]:
        ending, filled = await self._ending(before)
        if ending == "open":  # the venue still knows it open (its list lagged): next time
            return state, revision
        if ending == "canceled":
            ended = msgspec.structs.replace(before, filled=filled)
            await events.publish("cancel", ended, published)
        else:
            log.info("event=order_filled_not_cancelled order_id=%s filled=%s", before.order_id, filled)
        orders = {k: v for k, v in state.orders.items() if k != before.order_id}
        new_state = msgspec.structs.replace(state, orders=orders)
        return new_state, await self._write(new_state, revision)

    async def _ending(self, before: Tracked) -> tuple[Ending, Decimal]:
        """How an order no longer listed open ended, and what it filled: the venue's own word
        where it has our client order id, else its fills."""
        if before.client_order_id:
            ack = await self._account.find_order(before.client_order_id, before.symbol)
            if ack is not None:
                filled = ack.filled_base or ZERO
                if ack.status == "submitted":
                    return "open", filled
                whole = filled >= (ack.ordered_base or before.size)
                return ("filled" if whole else "canceled"), filled
        return _by_fills(before, await self._account.fills_since(before.first_seen - FILLS_OVERLAP_S))

    async def _write(self, state: OpenState, revision: int | None) -> int | None:
        written = await self._store.write(state, revision)
        if written is None:
            raise _Conflict
        return written

    async def publish(self, signal: OrderSignal) -> OrderSignal | None:
        """Publish one event (once: None if it was before) and remember it."""
        sent = await self._signals.publish_event(signal)
        if sent is not None:
            self._remember(sent)
        return sent

    def _remember(self, signal: OrderSignal) -> None:
        self.last_events.pop(signal.order_id, None)
        self.last_events[signal.order_id] = signal
        while len(self.last_events) > RECENT_EVENTS:
            del self.last_events[next(iter(self.last_events))]
        self.touch()
        if self._metrics is not None:
            self._metrics.order_events.labels(signal.event).inc()


def _by_fills(before: Tracked, fills: list[Fill]) -> tuple[Ending, Decimal]:
    """How an order without a client order id ended, from its fills: what filled is the larger
    of two amounts that can only fall short, never overstate (a cancel is never taken for a
    fill): its fills since just before it was first seen (all of them when it was seen soon
    after it was placed), and what filled when last seen plus its fills since."""
    mine = [f for f in fills if f.order_id == before.order_id]
    since_seen = before.filled + sum((f.amount for f in mine if f.at > before.seen_at), ZERO)
    filled = max(sum((f.amount for f in mine), ZERO), since_seen)
    return ("filled" if filled >= before.size else "canceled"), filled


class _Events:
    """One comparison's events: built with the master's equity (read once, when first needed),
    published one by one."""

    def __init__(
        self, tracker: OrderTracker, account: ExchangeAccount, config: MasterConfig, read: Read
    ) -> None:
        self._tracker, self._account, self._config = tracker, account, config
        self.read = read
        self._equity: Decimal | None = None

    async def publish(self, event: OrderEventKind, order: Tracked, published: list[OrderSignal]) -> None:
        config = self._config
        signal = OrderSignal(
            signal_id=order_event_id_for(config.exchange, order.order_id, event, order.version),
            master_id=config.id,
            exchange=config.exchange,
            event=event,
            version=order.version,
            order_id=order.order_id,
            kind=order.kind,
            symbol=order.symbol,
            side=order.side,
            size=order.size,
            filled=order.filled,
            price=order.price,
            trigger_price=order.trigger_price,
            master_equity=await self._master_equity(),
            copied_position=ZERO,
            executed_at=time.time(),
        )
        sent = await self._tracker.publish(signal)
        if sent is not None:
            published.append(sent)

    async def _master_equity(self) -> Decimal:
        if self._equity is None:
            self._equity = (await self._account.snapshot()).equity
        return self._equity
