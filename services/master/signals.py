"""The master's signals: built from a master fill, signed, published once, and applied once to
the master's copied position in the ledger.

Used by the master service (its own orders, one signal each) and the fill watcher (fills made
outside copytrade, one signal per fill); the master's order events (OrderSignal: a resting order
placed, amended or cancelled, services.master.order_events) go out the same way, one at a time
with the fills, carrying the copied position now. Each signal carries `copied_position_before`, the
master's copied position (shared.ledger, `master_key`) before its fill, which followers' sells
scale by. One fill at a time, in this order: the position before (the amount recorded for this
fill if it was applied already) -> build and sign -> publish (Nats-Msg-Id = signal id: a
republish is a no-op) -> apply the fill to the ledger (once per signal id) -> record the signal
as published in the fills bucket. A crash anywhere delays a fill's effect, never doubles it: a
republish carries the same position before, and the ledger applies a fill id once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal
from typing import Protocol

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.master.metrics import MasterMetrics
from shared import bus
from shared.bus.retry import TRANSIENT
from shared.config import MasterConfig
from shared.exchange.port import OrderAck
from shared.ledger import Ledger, master_key
from shared.messages import AnySignal, OrderSignal, TradeSignal, signal_id_for
from shared.signing import SignalSigner

log = logging.getLogger("copytrade.master")


def published_key(signal_id: str) -> str:
    """The fills-bucket key recording that a signal was published."""
    return f"signal.{signal_id}"


async def mark_published(kv: KeyValue, signal_id: str) -> bool:
    """Record that a signal was published; False if it already was."""
    try:
        await kv.create(published_key(signal_id), b"1")
    except KeyWrongLastSequenceError:
        return False
    return True


class SignalPublisher(Protocol):
    """What the fill watcher needs: a signal for a fill, and publishing it."""

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
    ) -> TradeSignal: ...

    async def publish(self, signal: TradeSignal) -> TradeSignal: ...


class MasterSignals:
    """Builds, signs and publishes the master's signals, and keeps its copied position."""

    def __init__(
        self,
        *,
        js: JetStreamContext,
        config: MasterConfig,
        metrics: MasterMetrics,
        signer: SignalSigner | None,
        published: KeyValue | None,
        ledger: Ledger | None = None,
    ) -> None:
        self._js, self._config, self._metrics = js, config, metrics
        self._signer, self._published, self._ledger = signer, published, ledger
        self._encoder = msgspec.json.Encoder(decimal_format="string")
        # one fill at a time (the service's and the watcher's): each position before is exact
        self._lock = asyncio.Lock()

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
        """The signal of a master fill (`fill_id` "": the whole order), before its copied
        position is known: `publish` sets it."""
        return msgspec.convert(
            {
                "signal_id": signal_id_for(self._config.exchange, ack.exchange_order_id, fill_id),
                "master_id": self._config.id,
                "exchange": self._config.exchange,
                "symbol": symbol,
                "side": side,
                "price": ack.avg_price,
                "size": size,
                "size_type": size_type,
                "filled_base": ack.filled_base,
                "order_id": ack.exchange_order_id,
                "master_equity": equity,
                "master_position_before": position_before,
                "executed_at": time.time(),
                "fill_id": fill_id,
            },
            TradeSignal,
            from_attributes=True,
        )

    async def publish(self, signal: TradeSignal) -> TradeSignal:
        """Publish the fill's signal (with its copied position before, signed) and apply the fill
        to the ledger, each once; return the signal as published. NATS outages on the publish
        are retried with the same message id until it is stored; a ledger read that fails
        raises (nothing is published: the caller tries again later)."""
        async with self._lock:
            ledger = await self._ledger_now()
            known = await self._before(ledger, signal)
            if known is None:  # published and applied long ago (beyond the ledger's memory)
                return signal
            signal = msgspec.structs.replace(signal, copied_position_before=known)
            if self._signer is not None:
                signal = self._signer.sign(signal)
            await self._send(signal)
            await self._apply(ledger, signal)
            await self._record_published(signal.signal_id)
            return signal

    async def _ledger_now(self) -> Ledger:
        if self._ledger is None:  # built without one (tests): the topology's bucket
            self._ledger = Ledger(await bus.bucket(self._js, bus.LEDGER_BUCKET))
        return self._ledger

    async def _before(self, ledger: Ledger, signal: TradeSignal) -> Decimal | None:
        """The copied position before this fill: what the ledger recorded for it if applied,
        else the amount now; None when the signal was published and applied so long ago that
        the ledger has forgotten it (its published record says so)."""
        entry = await ledger.read(master_key(self._config.id, signal.symbol))
        if signal.signal_id in entry.applied:
            return entry.applied[signal.signal_id]
        if await self._was_published(signal.signal_id):
            log.info("event=signal_already_published signal_id=%s", signal.signal_id)
            return None
        return entry.amount

    async def _apply(self, ledger: Ledger, signal: TradeSignal) -> None:
        """The fill's effect on the copied position, once (the signal is out: never given up)."""
        key = master_key(self._config.id, signal.symbol)
        delta = signal.filled_base if signal.side == "buy" else -signal.filled_base
        before, after = await bus.retry_forever(
            "master_ledger_apply", lambda: ledger.apply(key, signal.signal_id, delta)
        )
        if before != signal.copied_position_before:  # another writer of the master's entry?
            log.warning(
                "event=master_ledger_moved signal_id=%s sent_before=%s recorded_before=%s",
                signal.signal_id,
                signal.copied_position_before,
                before,
            )
        log.info(
            "event=master_ledger_applied signal_id=%s key=%s before=%s after=%s",
            signal.signal_id,
            key,
            before,
            after,
        )

    async def _was_published(self, signal_id: str) -> bool:
        if self._published is None:
            return False
        kv = self._published
        try:
            await bus.retry("published_get", lambda: kv.get(published_key(signal_id)))
        except KeyNotFoundError:
            return False
        return True

    async def publish_event(self, signal: OrderSignal) -> OrderSignal | None:
        """Publish a master order event once (Nats-Msg-Id = its id), with the master's copied
        position now (after the fills published so far: one signal at a time) and signed;
        return it as published, or None if it was published before."""
        async with self._lock:
            if await self._was_published(signal.signal_id):
                return None
            ledger = await self._ledger_now()
            entry = await ledger.read(master_key(self._config.id, signal.symbol))
            signal = msgspec.structs.replace(signal, copied_position=entry.amount)
            if self._signer is not None:
                signal = self._signer.sign(signal)
            duplicate = await self._deliver(signal)
            log.info(
                "event=order_event_published signal_id=%s order_id=%s order_event=%s "
                "version=%d symbol=%s copied_position=%s duplicate=%s",
                signal.signal_id,
                signal.order_id,
                signal.event,
                signal.version,
                signal.symbol,
                signal.copied_position,
                duplicate,
            )
            await self._record_published(signal.signal_id)
            return signal

    async def _send(self, signal: TradeSignal) -> None:
        duplicate = await self._deliver(signal)
        log.info(
            "event=signal_published signal_id=%s symbol=%s side=%s fill_id=%s "
            "copied_position_before=%s duplicate=%s",
            signal.signal_id,
            signal.symbol,
            signal.side,
            signal.fill_id,
            signal.copied_position_before,
            duplicate,
        )

    async def _deliver(self, signal: AnySignal) -> bool:
        """Publish until stored (NATS outages retried with the same message id); whether the
        stream had it already."""
        data = self._encoder.encode(signal)
        subject = bus.signal_subject(self._config.id)

        async def attempt() -> object:
            try:
                return await self._js.publish(subject, data, headers={"Nats-Msg-Id": signal.signal_id})
            except TRANSIENT as exc:
                if bus.transient(exc):  # an outage: retried below
                    self._metrics.retries.inc()
                raise

        ack = await bus.retry_forever("publish_signal", attempt)
        self._metrics.published.inc()
        return bool(getattr(ack, "duplicate", False))

    async def _record_published(self, signal_id: str) -> None:
        if self._published is None:
            return
        kv = self._published
        try:
            await bus.retry("mark_published", lambda: mark_published(kv, signal_id))
        except TRANSIENT as exc:  # the signal is out: a lost record costs a deduped republish
            self._metrics.bookkeeping_failures.labels("published").inc()
            log.warning("event=signal_record_failed signal_id=%s error=%s", signal_id, type(exc).__name__)
