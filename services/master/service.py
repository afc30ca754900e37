"""The master service: trades on the master account and publishes a signal only after the
master order is confirmed filled, with Nats-Msg-Id = signal_id (a republish is a no-op).

Every trade request carries a request id. The master order's client order id is derived from
it and the request's record (services.master.trades) is created before the order is placed, so
a request sent again never places a second order: it gets the first outcome, or resumes the
first attempt by looking its order up. The kill switch refuses new master trades.

Once the venue acknowledges the order, the service claims it (services.master.orders): the fill
watcher then leaves it alone, and the service publishes one signal for the whole order. Each
signal carries the master's copied position before it and is applied to the ledger once
(services.master.signals).

Next to `trade`, the endpoints `order`, `amend` and `cancel` place and change resting orders
(services.master.order_desk), each once per request id; every change of a resting order, made
here or by hand on the venue, is published as an order event (services.master.order_events).
A resting order is not claimed: its fills are signalled one by one by the fill watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal

import msgspec
import nats
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from services.master.metrics import MasterMetrics as MasterMetrics
from services.master.order_desk import OrderDesk
from services.master.order_events import OrderTracker
from services.master.orders import ClaimConflict, OrderClaims
from services.master.requests import OrderCall, OrderReply, endpoint_of
from services.master.signals import MasterSignals
from services.master.trades import TradeLedger, TradeRecord, master_client_order_id
from shared import bus
from shared.bus.retry import TRANSIENT
from shared.config import MasterConfig
from shared.control import KILL_KEY, Control, control_bucket
from shared.errors import CopytradeError, ExchangeError, TemporaryError
from shared.exchange.placing import place_idempotently
from shared.exchange.port import ExchangeAccount, OrderAck, OrderCommand
from shared.ledger import Ledger
from shared.messages import TradeReply, TradeRequest, TradeSignal
from shared.signing import SignalSigner

log = logging.getLogger("copytrade.master")
RETRY_HINT = "send it again with the same request id: it looks the order up, never places a second"


class NotFilledYet(TemporaryError):
    """The master order was accepted but has not filled within the wait: it may still fill."""


@dataclass(frozen=True, kw_only=True)
class MasterContext:
    """What the master service of one master account is built from: its venue account and
    config, the bus, and the buckets it keeps its state in."""

    js: JetStreamContext
    account: ExchangeAccount
    config: MasterConfig
    metrics: MasterMetrics
    signer: SignalSigner | None
    # the fills bucket, shared with the fill watcher; it holds the trade records and the
    # order claims too
    published: KeyValue | None = None
    ledger: Ledger | None = None  # the copied positions (None: the topology's bucket)
    control: Control | None = None  # the kill switch (None: the topology's bucket, at start)


class MasterService:
    def __init__(
        self,
        ctx: MasterContext,
        *,
        order_timeout_s: float = 10.0,
        fill_wait_s: float = 30.0,
        named: bool = False,
    ) -> None:
        # named: one of several masters, answering on its own subject (bus.master_trade_subject)
        account, config, metrics, published = ctx.account, ctx.config, ctx.metrics, ctx.published
        self._group = bus.master_group(config.id if named else None)
        self._js, self._account, self._config, self._metrics = ctx.js, account, config, metrics
        self._order_timeout_s, self._fill_wait_s = order_timeout_s, fill_wait_s
        self.signals = MasterSignals(
            js=ctx.js,
            config=config,
            metrics=metrics,
            signer=ctx.signer,
            published=published,
            ledger=ctx.ledger,
        )
        self.orders = OrderClaims(published, config.exchange)
        self._ledger = TradeLedger(published)
        self._control = ctx.control
        self._instance = uuid.uuid4().hex  # owner of the records this process opens
        # resting orders: their events (also the open-orders watcher's), and the requests
        self.tracker = OrderTracker(
            account=account, config=config, kv=published, signals=self.signals, metrics=metrics
        )
        self.desk = OrderDesk(
            account=account,
            config=config,
            kv=published,
            tracker=self.tracker,
            metrics=metrics,
            killed=lambda: self.killed,
            instance=self._instance,
            order_timeout_s=order_timeout_s,
        )
        self._calls = msgspec.json.Decoder(OrderCall)
        self._replies = msgspec.json.Encoder(decimal_format="string")
        # an open record of another instance younger than this may still be placing: a
        # generous bound on place_idempotently's attempts plus the fill wait
        self._lease_s = 12 * order_timeout_s + 2 * fill_wait_s
        self._encoder = msgspec.json.Encoder(decimal_format="string")
        self._decoder = msgspec.json.Decoder(TradeRequest)
        self._lock = asyncio.Lock()  # one master order at a time: equity/position stay exact
        self._service: Service | None = None
        self._watching: asyncio.Task[None] | None = None

    # ---- the NATS endpoint and the kill switch -------------------------------------------------

    async def start(self, nc: Client) -> Service:
        """Load the kill switch, keep watching it, then answer trade requests."""
        if self._control is None:
            self._control = Control(await control_bucket(self._js))
        await self._load_kill(self._control)
        self._watching = asyncio.create_task(self._watch_control(self._control))
        service = await add_service(
            nc,
            name=bus.MASTER_SERVICE,
            version="1.0.0",
            description="Places master trades and publishes signals",
        )
        group = service.add_group(name=self._group)
        await group.add_endpoint(name=bus.MASTER_TRADE_ENDPOINT, handler=self._handle)
        for endpoint in bus.MASTER_ORDER_ENDPOINTS:
            await group.add_endpoint(name=endpoint, handler=self._order_handler(endpoint))
        # subscribed at the server (nats-server may still tell a requester "no responders" for
        # a few milliseconds after: tests/test_master_trade_retry.py; the CLI says so, nothing
        # placed, and the operator asks again with the same request id)
        await nc.flush()
        self._service = service
        return service

    async def stop(self) -> None:
        if self._service is not None:
            await self._service.stop()
        if self._watching is not None:
            self._watching.cancel()
            await asyncio.wait({self._watching})

    @property
    def killed(self) -> bool:
        return self._control is not None and self._control.killed

    async def _load_kill(self, control: Control) -> None:
        """The switch as it is now, before the first request (the watch catches up a moment later)."""
        assert control.kv is not None
        with contextlib.suppress(KeyNotFoundError):
            entry = await control.kv.get(KILL_KEY)
            control.apply(KILL_KEY, entry.value)

    async def _watch_control(self, control: Control) -> None:
        """Follow the kill switch (only its key: follower states are the copiers' business)."""
        assert control.kv is not None
        while True:
            try:
                async for entry in await control.kv.watch(KILL_KEY):
                    if entry is not None:  # None: the current value has been delivered
                        deleted = entry.operation in ("DEL", "PURGE")
                        control.apply(KILL_KEY, None if deleted else entry.value)
            except TRANSIENT as exc:  # NATS trouble: watch again (the last state holds meanwhile)
                self._metrics.control_errors.inc()
                log.warning("event=control_watch_failed error=%s", type(exc).__name__)
            await asyncio.sleep(1.0)

    async def _handle(self, request: Request) -> None:
        try:
            trade = self._decoder.decode(request.data)
        except msgspec.DecodeError as exc:  # not JSON, or not a trade request
            self._metrics.orders.labels("refused").inc()
            reply = TradeReply(ok=False, outcome="refused", error=f"invalid trade request: {exc}")
        else:
            reply = await self.trade(trade)
        await request.respond(self._encoder.encode(reply))

    def _order_handler(self, endpoint: str) -> Callable[[Request], Awaitable[None]]:
        async def handle(request: Request) -> None:
            try:
                call = self._calls.decode(request.data)
            except msgspec.DecodeError as exc:  # not JSON, or no order request
                reply = OrderReply(ok=False, outcome="refused", error=f"invalid {endpoint} request: {exc}")
            else:
                reply = await self._order_call(endpoint, call)
            await request.respond(self._replies.encode(reply))

        return handle

    async def _order_call(self, endpoint: str, call: OrderCall) -> OrderReply:
        if endpoint_of(call) != endpoint:
            return OrderReply(
                ok=False,
                outcome="refused",
                request_id=call.request_id,
                error=f"a {endpoint_of(call)} request sent to the {endpoint} endpoint: nothing changed",
            )
        return await self.desk.handle(call)

    # ---- a trade request -----------------------------------------------------------------------

    async def trade(self, request: TradeRequest) -> TradeReply:
        """Place the master order once per request id; on a confirmed fill publish its signal.
        Never raises: every path ends in a reply."""
        async with self._lock:
            try:
                return await self._trade(request)
            except Exception as exc:  # a bug or an unexpected library error: the order may exist
                log.exception("event=master_trade_error request_id=%s", request.request_id)
                return self._unknown(request, f"unexpected {type(exc).__name__}")

    async def _trade(self, request: TradeRequest) -> TradeReply:
        if request.master_id not in (None, self._config.id):
            return self._refused(
                request, f"this is master {self._config.id}, not {request.master_id}: nothing placed"
            )
        try:
            found = await self._ledger.get(request.request_id)
        except TRANSIENT as exc:
            return self._unknown(request, f"its record could not be read ({type(exc).__name__})")
        if found is None:
            return await self._first_attempt(request)
        return await self._again(request, *found)

    async def _first_attempt(self, request: TradeRequest) -> TradeReply:
        if self.killed:
            return self._refused(request, "the kill switch is ON: master trades are refused, nothing placed")
        try:
            snapshot = await self._account.snapshot()
            position = await self._account.position(request.symbol)
        except (CopytradeError, TimeoutError, nats.errors.Error) as exc:
            return self._refused(request, f"nothing placed: {_describe(exc)}")
        record = TradeRecord(
            request=request,
            client_order_id=master_client_order_id(self._config.id, request.request_id),
            master_equity=snapshot.equity,
            position_before=position,
            owner=self._instance,
            at=time.time(),
        )
        try:
            created = await self._ledger.create(record)
        except TRANSIENT as exc:
            return self._refused(
                request, f"nothing placed: its record could not be written ({type(exc).__name__})"
            )
        if not created:  # another instance took the same request id a moment ago
            found = await self._ledger.get(request.request_id)
            if found is None:
                return self._unknown(request, "its record vanished")
            return await self._again(request, *found)
        return await self._execute(record, fresh=True)

    async def _again(self, request: TradeRequest, record: TradeRecord, revision: int) -> TradeReply:
        """A request id seen before: its first outcome, or the first attempt resumed."""
        if not record.request.same_trade(request):
            return self._refused(
                request, f"request id {request.request_id} was used for another trade: nothing placed"
            )
        if record.reply is not None:
            self._metrics.orders.labels("replayed").inc()
            log.info(
                "event=master_trade_replayed request_id=%s outcome=%s",
                request.request_id,
                record.reply.outcome,
            )
            return msgspec.structs.replace(record.reply, replayed=True)
        if record.owner != self._instance:
            if time.time() - record.at < self._lease_s:
                return self._unknown(request, "another master instance is placing it")
            taken = await self._ledger.take_over(record, revision, self._instance)
            if taken is None:
                return self._unknown(request, "another master instance is placing it")
            record = taken
        return await self._execute(record, fresh=False)

    async def _execute(self, record: TradeRecord, *, fresh: bool) -> TradeReply:
        request = record.request
        try:
            ack = await self._find_or_place(record, fresh=fresh)
            if ack is None:
                return self._refused(
                    request, "the kill switch is ON: master trades are refused, nothing placed"
                )
            if not await self._claim(ack):
                return await self._copied_by_watcher(record, ack)
            ack = await self._wait_filled(ack, request.symbol)
        except (TemporaryError, TimeoutError, ClaimConflict) as exc:  # the order may exist:
            return self._unknown(request, _describe(exc))  # the record stays open
        except TRANSIENT as exc:  # NATS trouble on the claim: the record stays open
            return self._unknown(request, f"its claim could not be written ({type(exc).__name__})")
        except CopytradeError as exc:  # the venue refused the order: nothing was placed
            reply = self._refused(request, f"the venue refused the order: {_describe(exc)}", metric="failed")
            await self._close(record, reply)
            return reply
        return await self._publish(record, ack)

    async def _find_or_place(self, record: TradeRecord, *, fresh: bool) -> OrderAck | None:
        """The request's order: placed now (first attempt), or found placed before; a resumed
        request places only if the venue does not know the order, and not while killed."""
        request = record.request
        if not fresh:
            found = await asyncio.wait_for(
                self._account.find_order(record.client_order_id, request.symbol), self._order_timeout_s
            )
            if found is not None:
                return found
            if self.killed:
                return None
        command = OrderCommand(
            client_order_id=record.client_order_id,
            symbol=request.symbol,
            side=request.side,
            size=request.size,
            size_type=request.size_type,
            reference_price=Decimal(0),
        )
        return await place_idempotently(self._account, command, timeout_s=self._order_timeout_s)

    async def _claim(self, ack: OrderAck) -> bool:
        """Claim the order as copytrade's own (one signal); False when the fill watcher saw a
        fill of it first (an acknowledgement lost, a request resumed late) and copies it."""
        claim = await self.orders.claim(ack.exchange_order_id, "own")
        return claim.by == "own"

    async def _copied_by_watcher(self, record: TradeRecord, ack: OrderAck) -> TradeReply:
        """The order is copied fill by fill by the fill watcher: filled, no signal of its own."""
        request = record.request
        self._metrics.orders.labels("filled").inc()
        log.info(
            "event=master_trade_copied_by_watcher request_id=%s order_id=%s",
            request.request_id,
            ack.exchange_order_id,
        )
        reply = TradeReply(
            ok=True, outcome="filled", request_id=request.request_id, order_id=ack.exchange_order_id
        )
        await self._close(record, reply)
        return reply

    async def _wait_filled(self, ack: OrderAck, symbol: str) -> OrderAck:
        """A signal is published only for a filled master order: poll until it is."""
        deadline = time.monotonic() + self._fill_wait_s
        delay = 0.05
        while ack.status != "filled" or ack.filled_base is None:
            if ack.status == "expired":
                raise ExchangeError(f"master order {ack.exchange_order_id} expired unfilled")
            if time.monotonic() > deadline:
                raise NotFilledYet(f"master order {ack.exchange_order_id} not filled in time")
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)
            found = await self._account.find_order(ack.client_order_id, symbol)
            ack = found or ack
        return ack

    async def _publish(self, record: TradeRecord, ack: OrderAck) -> TradeReply:
        """The order filled: publish its signal. What is written after the publish is
        bookkeeping: its failure is logged and counted, never reported as a failed trade."""
        request = record.request
        signal = self.signals.signal_for(
            ack,
            request.symbol,
            request.side,
            request.size,
            request.size_type,
            equity=record.master_equity,
            position_before=record.position_before,
        )
        try:
            signal = await self.signals.publish(signal)
        except TRANSIENT as exc:  # refused by NATS (not an outage): filled, not yet published
            return self._unknown(
                request,
                f"order {ack.exchange_order_id} filled, its signal "
                f"is not published yet ({type(exc).__name__})",
            )
        self._metrics.orders.labels("filled").inc()
        log.info(
            "event=master_trade_filled request_id=%s client_order_id=%s signal_id=%s",
            request.request_id,
            record.client_order_id,
            signal.signal_id,
        )
        reply = TradeReply(
            ok=True,
            outcome="filled",
            request_id=request.request_id,
            signal_id=signal.signal_id,
            order_id=signal.order_id,
            signal=signal,
        )
        await self._close(record, reply)
        return reply

    async def _close(self, record: TradeRecord, reply: TradeReply) -> None:
        try:
            await self._ledger.close(record, reply)
        except TRANSIENT as exc:  # the record stays open: a retry finds the order, same outcome
            self._metrics.bookkeeping_failures.labels("outcome").inc()
            log.warning(
                "event=trade_record_failed request_id=%s error=%s",
                record.request.request_id,
                type(exc).__name__,
            )

    def _refused(self, request: TradeRequest, why: str, metric: str = "refused") -> TradeReply:
        self._metrics.orders.labels(metric).inc()
        log.warning(
            "event=master_trade_refused request_id=%s symbol=%s why=%s",
            request.request_id,
            request.symbol,
            why,
        )
        return TradeReply(ok=False, outcome="refused", request_id=request.request_id, error=why)

    def _unknown(self, request: TradeRequest, why: str) -> TradeReply:
        self._metrics.orders.labels("unknown").inc()
        log.warning(
            "event=master_trade_unknown request_id=%s symbol=%s why=%s",
            request.request_id,
            request.symbol,
            why,
        )
        return TradeReply(
            ok=False,
            outcome="unknown",
            request_id=request.request_id,
            error=f"outcome unknown: {why}; {RETRY_HINT}",
        )

    # ---- the fill watcher's view (services.master.signals.SignalPublisher) ----------------------

    def signal_for(
        self,
        ack: OrderAck,
        symbol: str,
        side: str,
        size: Decimal,
        size_type: str,
        *,
        equity: Decimal,
        position_before: Decimal,
        fill_id: str = "",
    ) -> TradeSignal:
        return self.signals.signal_for(
            ack,
            symbol,
            side,
            size,
            size_type,
            equity=equity,
            position_before=position_before,
            fill_id=fill_id,
        )

    async def publish(self, signal: TradeSignal) -> TradeSignal:
        return await self.signals.publish(signal)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
