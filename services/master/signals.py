"""The master's signals: built from a filled master order, signed, published once.

Used by the master service (its own orders) and the fill watcher (orders made outside
copytrade). Every published signal id is recorded in the fills bucket, so neither publishes a
fill the other already has; the signal id (from the order id) makes a republish a no-op too.
"""

from __future__ import annotations

import logging
import time
from decimal import Decimal
from typing import Protocol

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.master.metrics import MasterMetrics
from shared import bus
from shared.bus.retry import TRANSIENT
from shared.config import MasterConfig
from shared.exchange.port import OrderAck
from shared.messages import TradeSignal, signal_id_for
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
        self, ack: OrderAck, symbol: str, side: str, size: Decimal, size_type: str,
        equity: Decimal, position_before: Decimal,
    ) -> TradeSignal: ...

    async def publish(self, signal: TradeSignal) -> TradeSignal: ...


class MasterSignals:
    """Builds, signs and publishes the master's signals."""

    def __init__(self, *, js: JetStreamContext, config: MasterConfig, metrics: MasterMetrics,
                 signer: SignalSigner | None, published: KeyValue | None) -> None:
        self._js, self._config, self._metrics = js, config, metrics
        self._signer, self._published = signer, published
        self._encoder = msgspec.json.Encoder(decimal_format="string")

    def signal_for(
        self, ack: OrderAck, symbol: str, side: str, size: Decimal, size_type: str,
        equity: Decimal, position_before: Decimal,
    ) -> TradeSignal:
        return msgspec.convert({
            "signal_id": signal_id_for(self._config.exchange, ack.exchange_order_id),
            "master_id": self._config.id, "exchange": self._config.exchange,
            "symbol": symbol, "side": side, "price": ack.avg_price, "size": size,
            "size_type": size_type, "filled_base": ack.filled_base,
            "order_id": ack.exchange_order_id, "master_equity": equity,
            "master_position_before": position_before, "executed_at": time.time(),
        }, TradeSignal, from_attributes=True)

    async def publish(self, signal: TradeSignal) -> TradeSignal:
        """Publish (signed) with the signal id as message id; NATS outages are retried with the
        same id until it is stored. Recording it afterwards never fails the publish."""
        if self._signer is not None and not signal.signature:
            signal = self._signer.sign(signal)
        data = self._encoder.encode(signal)
        subject = bus.signal_subject(self._config.id)

        async def attempt() -> object:
            try:
                return await self._js.publish(subject, data,
                                              headers={"Nats-Msg-Id": signal.signal_id})
            except TRANSIENT as exc:
                if bus.transient(exc):  # an outage: retried below
                    self._metrics.retries.inc()
                raise

        ack = await bus.retry_forever("publish_signal", attempt)
        self._metrics.published.inc()
        log.info("event=signal_published signal_id=%s symbol=%s side=%s duplicate=%s",
                 signal.signal_id, signal.symbol, signal.side, getattr(ack, "duplicate", False))
        await self._record_published(signal.signal_id)
        return signal

    async def _record_published(self, signal_id: str) -> None:
        if self._published is None:
            return
        kv = self._published
        try:
            await bus.retry("mark_published", lambda: mark_published(kv, signal_id))
        except TRANSIENT as exc:  # the signal is out: a lost record costs a deduped republish
            self._metrics.bookkeeping_failures.labels("published").inc()
            log.warning("event=signal_record_failed signal_id=%s error=%s", signal_id,
                        type(exc).__name__)
