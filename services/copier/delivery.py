"""What becomes of a JetStream message the copier works on (a signal, or a shard's work item):
kept alive while it runs, acked once its outcomes are stored, handed back on shutdown, retried
with backoff after a failure and dead-lettered when its deliveries run out; bytes that are not
a valid message are rejected into the audit trail."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from services.copier.metrics import CopierMetrics
from shared import bus
from shared.config import Settings
from shared.messages import DeadLetter, SignalRejected

log = logging.getLogger("copytrade.copier")


class Delivery:
    def __init__(
        self, *, js: JetStreamContext, metrics: CopierMetrics, settings: Settings, group: str
    ) -> None:
        self._js, self._metrics, self._settings, self._group = js, metrics, settings, group
        self._encoder = msgspec.json.Encoder(decimal_format="string")

    async def settle(
        self, msg: Msg, signal_id: str, work: Coroutine[Any, Any, None], *,
        shard: int | None = None,
    ) -> bool:
        """Run `work` under `msg`: ack when it returns; True if it did (else retried/handed back)."""
        heartbeat = asyncio.create_task(self._keep_alive(msg))
        try:
            await work
            await msg.ack_sync()
            return True
        except asyncio.CancelledError:  # shutdown: hand the message back; claims make it safe
            with contextlib.suppress(*bus.TRANSIENT):  # else it comes back after the ack wait
                await msg.nak()
            log.warning("event=signal_handed_back signal_id=%s%s", signal_id, _shard(shard))
            raise
        except Exception as exc:
            self._metrics.signal_retries.inc()
            await self.retry_or_dead_letter(msg, signal_id, exc, shard=shard)
            return False
        finally:
            heartbeat.cancel()

    async def retry_or_dead_letter(
        self, msg: Msg, signal_id: str, exc: Exception, *, shard: int | None = None
    ) -> None:
        deliveries = msg.metadata.num_delivered
        error = f"{type(exc).__name__}: {exc}"[:500]
        if deliveries < self._settings.max_deliver:
            delay = min(30.0, 0.5 * 2 ** deliveries)
            log.warning("event=signal_retry signal_id=%s%s deliveries=%d error=%s",
                        signal_id, _shard(shard), deliveries, error)
            await msg.nak(delay=delay)
            return
        self._metrics.dead_lettered.inc()
        record = DeadLetter(exchange=self._group, signal_id=signal_id, deliveries=deliveries,
                            error=error, at=time.time(), shard=shard)
        await self._js.publish(bus.deadletter_subject(self._group), self._encoder.encode(record))
        log.error("event=signal_dead_lettered signal_id=%s%s error=%s", signal_id, _shard(shard),
                  error)
        await msg.term()

    async def reject(self, data: bytes, reason_code: str, reason: str) -> None:
        """Record bytes that will never be executed, and why (they are then terminated)."""
        self._metrics.signals_rejected.labels(self._group, reason_code).inc()
        record = SignalRejected(exchange=self._group, reason_code=reason_code,
                                reason=reason[:500], size=len(data),
                                excerpt=repr(data[:120])[:500], at=time.time())
        await self._js.publish(bus.reject_subject(self._group), self._encoder.encode(record))
        log.warning("event=signal_rejected reason=%s detail=%r", reason_code, reason[:200])

    async def _keep_alive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self._settings.ack_wait_s / 3)
            try:
                await msg.in_progress()
            except bus.TRANSIENT as exc:  # the next beat tries again within the ack wait
                log.warning("event=keep_alive_failed error=%s", type(exc).__name__)


def _shard(shard: int | None) -> str:
    return "" if shard is None else f" shard={shard}"
