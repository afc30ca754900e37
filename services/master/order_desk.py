"""The master service's resting-order requests: order, amend, cancel, each once per request id.

Like a trade (services.master.trades), a request's record is created, create-if-absent, before
the venue is asked, and its final reply is stored on it: a request sent again is answered with
that reply and changes nothing; one whose first attempt ended unknown resumes it, looking the
order up first (a new order by its client order id, derived from the request id, so it is never
placed twice; an amendment or a cancel already applied is not applied again).

After the venue acted, the order's symbol is compared with the state kept
(services.master.order_events): the order's event (new, amend, cancel) is published then, once;
the open-orders watcher would publish the same event (same id) a moment later if this failed.
The kill switch refuses new orders and amendments; a cancel only lowers risk and is allowed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from decimal import Decimal

import msgspec
import nats
from msgspec import Struct
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.master.metrics import MasterMetrics
from services.master.order_events import OrderTracker
from services.master.requests import (
    AmendRequest,
    CancelRequest,
    OrderCall,
    OrderReply,
    OrderRequest,
    OrderStatus,
    endpoint_of,
)
from services.master.trades import master_client_order_id
from shared import bus
from shared.bus.retry import TRANSIENT
from shared.config import MasterConfig
from shared.errors import CopytradeError, InvalidOrder, TemporaryError
from shared.exchange.placing import place_idempotently
from shared.exchange.port import ExchangeAccount, OrderAck, OrderCommand, kind_of
from shared.messages import OrderSignal

log = logging.getLogger("copytrade.master.orders")
RETRY_HINT = "send it again with the same request id: it finds what was done, never does it twice"


class Refused(CopytradeError):
    """Nothing was changed at the venue, and the request will not be."""

    reason_code = "refused"


class OrderRecord(Struct, frozen=True, kw_only=True):
    request: OrderCall
    client_order_id: str  # the order's at the venue: derived for a new order, found otherwise
    symbol: str
    owner: str  # the master instance working on it
    at: float  # when that instance took it
    reply: OrderReply | None = None  # the final outcome; None while open


class OrderRecords:
    """Order request records in the master's fills bucket (in memory without one)."""

    def __init__(self, kv: KeyValue | None) -> None:
        self._kv = kv
        self._memory: dict[str, tuple[bytes, int]] = {}
        self._encoder = msgspec.json.Encoder(decimal_format="string")
        self._decoder = msgspec.json.Decoder(OrderRecord)

    async def get(self, request_id: str) -> tuple[OrderRecord, int] | None:
        key = _key(request_id)
        stored = self._memory.get(key)
        if self._kv is not None:
            kv = self._kv
            try:
                entry = await bus.retry("order_record_get", lambda: kv.get(key))
            except KeyNotFoundError:
                return None
            stored = None if entry.value is None else (entry.value, entry.revision or 0)
        return None if stored is None else (self._decoder.decode(stored[0]), stored[1])

    async def write(self, record: OrderRecord, revision: int | None) -> bool:
        """Create (revision None) or compare-and-set; False when another write came first."""
        key, data = _key(record.request.request_id), self._encoder.encode(record)
        if self._kv is None:
            current = self._memory.get(key)
            if (current[1] if current else None) != revision:
                return False
            self._memory[key] = (data, (revision or 0) + 1)
            return True
        kv = self._kv

        async def write() -> int:
            if revision is None:
                return await kv.create(key, data)
            return await kv.update(key, data, last=revision)

        try:
            await bus.retry("order_record_write", write)
        except KeyWrongLastSequenceError:
            return False
        return True


def _key(request_id: str) -> str:
    return f"order_request.{request_id}"


class OrderDesk:
    """Answers the master's order, amend and cancel requests."""

    def __init__(
        self,
        *,
        account: ExchangeAccount,
        config: MasterConfig,
        kv: KeyValue | None,
        tracker: OrderTracker,
        metrics: MasterMetrics,
        killed: Callable[[], bool],
        instance: str,
        order_timeout_s: float,
    ) -> None:
        self._account, self._config, self._tracker = account, config, tracker
        self._metrics, self._killed, self._instance = metrics, killed, instance
        self._timeout_s = order_timeout_s
        self._lease_s = 12 * order_timeout_s  # an open record younger than this may be in work
        self._records = OrderRecords(kv)
        self._lock = asyncio.Lock()  # one order request at a time

    async def handle(self, call: OrderCall) -> OrderReply:
        """Never raises: every path ends in a reply."""
        async with self._lock:
            self._tracker.touch()
            try:
                reply = await self._handle(call)
            except Exception as exc:  # a bug or an unexpected library error: it may be done
                log.exception("event=master_order_error request_id=%s", call.request_id)
                reply = _unknown(call, f"unexpected {type(exc).__name__}")
        outcome = "replayed" if reply.replayed else reply.outcome
        self._metrics.order_requests.labels(endpoint_of(call), outcome).inc()
        log.info(
            "event=master_order_request action=%s request_id=%s outcome=%s order_id=%s error=%s",
            endpoint_of(call),
            call.request_id,
            outcome,
            reply.order_id,
            reply.error,
        )
        return reply

    async def _handle(self, call: OrderCall) -> OrderReply:
        if call.master_id not in (None, self._config.id):
            return _refused(call, f"this is master {self._config.id}, not {call.master_id}: nothing changed")
        try:
            found = await self._records.get(call.request_id)
        except TRANSIENT as exc:
            return _unknown(call, f"its record could not be read ({type(exc).__name__})")
        if found is not None:
            return await self._again(call, *found)
        return await self._first_attempt(call)

    async def _first_attempt(self, call: OrderCall) -> OrderReply:
        try:
            record = await self._record(call)
        except Refused as exc:
            return _refused(call, str(exc))
        except (CopytradeError, TimeoutError) as exc:  # the order could not be looked up
            return _refused(call, f"nothing changed: {_describe(exc)}")
        try:
            created = await self._records.write(record, None)
        except TRANSIENT as exc:
            return _refused(call, f"nothing changed: its record could not be written ({type(exc).__name__})")
        if not created:  # another instance took the same request id a moment ago
            again = await self._records.get(call.request_id)
            return (
                _unknown(call, "its record vanished") if again is None else (await self._again(call, *again))
            )
        return await self._execute(record, fresh=True)

    async def _record(self, call: OrderCall) -> OrderRecord:
        """The request's record before the venue is asked; Refused when it must not be."""
        if self._killed() and not isinstance(call, CancelRequest):
            raise Refused("the kill switch is ON: master orders and amendments are refused, nothing changed")
        if isinstance(call, OrderRequest):
            client_id = master_client_order_id(self._config.id, f"order:{call.request_id}")
            _command(call, client_id)  # refused before anything is written if contradictory
            return self._open_record(call, client_id, call.symbol)
        client_id, symbol = await self._target(call.order_id)
        return self._open_record(call, client_id, symbol)

    def _open_record(self, call: OrderCall, client_id: str, symbol: str) -> OrderRecord:
        return OrderRecord(
            request=call, client_order_id=client_id, symbol=symbol, owner=self._instance, at=time.time()
        )

    async def _target(self, order_id: str) -> tuple[str, str]:
        """The client order id and symbol of the open order named by the venue's id (or our
        client order id): as last seen, else as the venue lists it now."""
        found = await self._tracker.tracked(order_id)
        if found is not None:
            client_id, symbol = found.client_order_id, found.symbol
        else:
            listed = next(
                (
                    o
                    for o in await self._account.open_orders()
                    if order_id in (o.exchange_order_id, o.client_order_id)
                ),
                None,
            )
            if listed is None:
                raise Refused(f"no open master order {order_id}: nothing changed")
            client_id, symbol = listed.client_order_id, listed.symbol
        if not client_id:
            raise Refused(
                f"order {order_id} was placed without a client order id (by hand on "
                "the venue): change it there; nothing changed"
            )
        return client_id, symbol

    async def _again(self, call: OrderCall, record: OrderRecord, revision: int) -> OrderReply:
        """A request id seen before: its first outcome, or the first attempt resumed."""
        if record.request != msgspec.structs.replace(call, master_id=record.request.master_id):
            return _refused(
                call, f"request id {call.request_id} was used for another request: nothing changed"
            )
        if record.reply is not None:
            return msgspec.structs.replace(record.reply, replayed=True)
        if record.owner != self._instance:
            taken = msgspec.structs.replace(record, owner=self._instance, at=time.time())
            if time.time() - record.at < self._lease_s or not await self._records.write(taken, revision):
                return _unknown(call, "another master instance is working on it")
            record = taken
        return await self._execute(record, fresh=False)

    async def _execute(self, record: OrderRecord, *, fresh: bool) -> OrderReply:
        call, started = record.request, time.time()
        try:
            ack = await self._act(record, fresh=fresh)
        except (TemporaryError, TimeoutError) as exc:  # it may be done: the record stays open
            return _unknown(call, _describe(exc))
        except CopytradeError as exc:  # the venue (or the kill switch) refused: nothing changed
            reply = _refused(call, f"{_describe(exc)}")
            await self._close(record, reply)
            return reply
        signal = await self._event(record.symbol, ack.exchange_order_id, started)
        reply = OrderReply(
            ok=True,
            outcome="done",
            request_id=call.request_id,
            order_id=ack.exchange_order_id,
            client_order_id=ack.client_order_id,
            status=_status(ack),
            signal=signal,
        )
        await self._close(record, reply)
        return reply

    async def _act(self, record: OrderRecord, *, fresh: bool) -> OrderAck:
        """Ask the venue (a resumed request looks first at what its first attempt did)."""
        call, client_id, symbol = record.request, record.client_order_id, record.symbol
        found = (
            None
            if fresh
            else await asyncio.wait_for(self._account.find_order(client_id, symbol), self._timeout_s)
        )
        match call:
            case OrderRequest():
                if found is not None:
                    return found
                if self._killed():
                    raise Refused("the kill switch is ON: master orders are refused, nothing placed")
                return await place_idempotently(
                    self._account, _command(call, client_id), timeout_s=self._timeout_s
                )
            case AmendRequest():
                if found is not None and (found.status != "submitted" or _applied(found, call)):
                    return found  # ended meanwhile, or amended by the first attempt
                return await asyncio.wait_for(
                    self._account.amend_order(client_id, symbol, price=call.price, size=call.size),
                    self._timeout_s,
                )
            case CancelRequest():
                ended = await asyncio.wait_for(self._account.cancel_order(client_id, symbol), self._timeout_s)
                if ended is None:
                    raise Refused(f"the venue knows no order {call.order_id}: nothing changed")
                return ended

    async def _event(self, symbol: str, order_id: str, started: float) -> OrderSignal | None:
        """The order's event: published now (the symbol's orders compared with the state
        kept), or by the watcher since the request began; None if neither yet (the watcher
        publishes it at its next poll)."""
        try:
            published = await self._tracker.sync(symbol)
        except (CopytradeError, ValueError, TimeoutError, nats.errors.Error) as exc:
            log.warning("event=order_event_deferred order_id=%s error=%s", order_id, type(exc).__name__)
            published = []
        mine = [s for s in published if s.order_id == order_id]
        if mine:
            return mine[-1]
        last = self._tracker.last_events.get(order_id)
        return last if last is not None and last.executed_at >= started else None

    async def _close(self, record: OrderRecord, reply: OrderReply) -> None:
        closed = msgspec.structs.replace(record, reply=reply)
        try:
            found = await self._records.get(record.request.request_id)
            if found is not None:
                await self._records.write(closed, found[1])
        except TRANSIENT as exc:  # the record stays open: a retry finds what was done
            self._metrics.bookkeeping_failures.labels("outcome").inc()
            log.warning(
                "event=order_record_failed request_id=%s error=%s",
                record.request.request_id,
                type(exc).__name__,
            )


def _command(call: OrderRequest, client_id: str) -> OrderCommand:
    """The venue command of an order request; Refused when its prices contradict each other."""
    command = OrderCommand(
        client_order_id=client_id,
        symbol=call.symbol,
        side=call.side,
        size=call.size,
        size_type="base",
        reference_price=call.limit_price or call.trigger_price or Decimal(0),
        limit_price=call.limit_price,
        time_in_force="gtc",
        trigger=call.trigger,
        trigger_price=call.trigger_price,
    )
    try:
        kind_of(command)
    except InvalidOrder as exc:
        raise Refused(f"{exc}: nothing placed") from None
    return command


def _applied(ack: OrderAck, call: AmendRequest) -> bool:
    """Whether an open order already has the size an amendment asks (its price is not in an
    ack: an amendment of the price alone is sent again, to the same price)."""
    return call.price is None and call.size is not None and ack.ordered_base == call.size


def _status(ack: OrderAck) -> OrderStatus:
    if ack.status == "submitted":
        return "open"
    whole = ack.status == "filled" and (
        ack.ordered_base is None or (ack.filled_base or 0) >= ack.ordered_base
    )
    return "filled" if whole else "canceled"


def _refused(call: OrderCall, why: str) -> OrderReply:
    return OrderReply(ok=False, outcome="refused", request_id=call.request_id, error=why)


def _unknown(call: OrderCall, why: str) -> OrderReply:
    return OrderReply(
        ok=False, outcome="unknown", request_id=call.request_id, error=f"outcome unknown: {why}; {RETRY_HINT}"
    )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
