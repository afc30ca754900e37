"""What becomes of a JetStream message the copier works on (a signal, or a shard's work item):
kept alive while it runs, acked once its outcomes are stored, handed back on shutdown, retried
with backoff after a failure and dead-lettered when its deliveries run out; bytes that are not
a valid message are rejected into the audit trail.

Every write here (ack, nak aside, records) is retried through a leader change (`bus.retry`), and
`guarded` is the one place an error escaping a message's handling ends: logged, counted, and the
message handed back after a short delay instead of waiting out the ack wait."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Coroutine
from typing import Any

import msgspec
import nats
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from services.copier.metrics import CopierMetrics
from shared import bus
from shared.config import CopierSettings
from shared.messages import DeadLetter, SignalRejected

log = logging.getLogger("copytrade.copier")
HAND_BACK_S = 0.5  # a message whose handling failed outright comes back this soon


class Delivery:
    def __init__(
        self, *, js: JetStreamContext, metrics: CopierMetrics, settings: CopierSettings, group: str
    ) -> None:
        self._js, self._metrics, self._settings, self._group = js, metrics, settings, group
        self._encoder = msgspec.json.Encoder(decimal_format="string")

    async def settle(
        self,
        msg: Msg,
        signal_id: str,
        work: Coroutine[Any, Any, None],
        *,
        shard: int | None = None,
    ) -> bool:
        """Run `work` under `msg`: ack when it returns; True if it did (else retried/handed back)."""
        heartbeat = asyncio.create_task(self._keep_alive(msg))
        try:
            await work
        except asyncio.CancelledError:  # shutdown: hand the message back; claims make it safe
            await self.hand_back(msg)
            log.warning("event=signal_handed_back signal_id=%s%s", signal_id, _shard(shard))
            raise
        except Exception as exc:  # noqa: BLE001 - any failure: counted, logged, retried or dead-lettered
            self._metrics.signal_retries.inc()
            await self.retry_or_dead_letter(msg, signal_id, exc, shard=shard)
            return False
        finally:
            heartbeat.cancel()
        return await self._ack(msg, signal_id, shard)

    async def _ack(self, msg: Msg, signal_id: str, shard: int | None) -> bool:
        """Ack, retried (an ack lost with the consumer's leader); if it cannot be, the message
        comes back soon and its copies are found already recorded."""
        try:
            await bus.retry(f"ack {signal_id}", msg.ack_sync)
            return True
        except bus.TRANSIENT as exc:
            self._metrics.signal_retries.inc()
            log.error(
                "event=ack_failed signal_id=%s%s error=%s", signal_id, _shard(shard), type(exc).__name__
            )
            await self.hand_back(msg, HAND_BACK_S)
            return False

    async def guarded(self, msg: Msg, handling: Awaitable[None]) -> None:
        """Run a message's handling; an error escaping it is logged and counted, and the message
        handed back after a short delay rather than left to the ack wait."""
        try:
            await handling
        except asyncio.CancelledError:
            await self.hand_back(msg)  # a no-op if the handling already did
            raise
        except Exception as exc:  # the last stop: whatever it is, it is seen and retried
            self._metrics.signal_retries.inc()
            log.error(
                "event=message_failed subject=%s deliveries=%d error=%s",
                msg.subject,
                msg.metadata.num_delivered,
                f"{type(exc).__name__}: {exc}"[:300],
                exc_info=not bus.transient(exc),
            )
            await self.hand_back(msg, HAND_BACK_S)

    async def hand_back(self, msg: Msg, delay_s: float | None = None) -> None:
        """Nak (best effort: if it is lost, the message comes back after the ack wait)."""
        try:
            await msg.nak(delay=delay_s)
        except nats.errors.MsgAlreadyAckdError:
            return  # acked, nak'ed or terminated already
        except bus.TRANSIENT as exc:
            log.warning("event=nak_failed subject=%s error=%s", msg.subject, type(exc).__name__)

    async def retry_or_dead_letter(
        self, msg: Msg, signal_id: str, exc: Exception, *, shard: int | None = None
    ) -> None:
        deliveries = msg.metadata.num_delivered
        error = f"{type(exc).__name__}: {exc}"[:500]
        if deliveries < self._settings.max_deliver:
            delay = min(30.0, 0.5 * 2**deliveries)
            log.warning(
                "event=signal_retry signal_id=%s%s deliveries=%d error=%s",
                signal_id,
                _shard(shard),
                deliveries,
                error,
            )
            await self.hand_back(msg, delay)
            return
        record = DeadLetter(
            exchange=self._group,
            signal_id=signal_id,
            deliveries=deliveries,
            error=error,
            at=time.time(),
            shard=shard,
        )
        try:
            await self._store(
                bus.deadletter_subject(self._group),
                self._encoder.encode(record),
                f"dead:{signal_id}:{deliveries}{_shard(shard)}",
            )
        except bus.TRANSIENT as exc:  # not recorded: keep the message rather than lose it
            log.error(
                "event=dead_letter_failed signal_id=%s%s error=%s",
                signal_id,
                _shard(shard),
                type(exc).__name__,
            )
            await self.hand_back(msg, delay_s=30.0)
            return
        self._metrics.dead_lettered.inc()
        log.error("event=signal_dead_lettered signal_id=%s%s error=%s", signal_id, _shard(shard), error)
        await bus.retry(f"terminate {signal_id}", msg.term)

    async def reject(self, data: bytes, reason_code: str, reason: str) -> None:
        """Record bytes that will never be executed, and why (they are then terminated)."""
        self._metrics.signals_rejected.labels(self._group, reason_code).inc()
        record = SignalRejected(
            exchange=self._group,
            reason_code=reason_code,
            reason=reason[:500],
            size=len(data),
            excerpt=repr(data[:120])[:500],
            at=time.time(),
        )
        await self._store(bus.reject_subject(self._group), self._encoder.encode(record), None)
        log.warning("event=signal_rejected reason=%s detail=%r", reason_code, reason[:200])

    async def _store(self, subject: str, data: bytes, msg_id: str | None) -> None:
        headers = None if msg_id is None else {"Nats-Msg-Id": msg_id}
        await bus.retry(
            f"store {subject}",
            lambda: self._js.publish(subject, data, timeout=bus.WRITE_TIMEOUT_S, headers=headers),
        )

    async def _keep_alive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self._settings.ack_wait_s / 3)
            try:
                await msg.in_progress()
            except bus.TRANSIENT as exc:  # the next beat tries again within the ack wait
                log.warning("event=keep_alive_failed error=%s", type(exc).__name__)


def watched(work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """A task whose failure is logged when it happens (never "exception was never retrieved")."""
    task = asyncio.create_task(work, name=name)
    task.add_done_callback(_report)
    return task


def _report(task: asyncio.Task[None]) -> None:
    if task.cancelled() or task.exception() is None:
        return
    log.error(
        "event=task_failed task=%s error=%r", task.get_name(), task.exception(), exc_info=task.exception()
    )


def _shard(shard: int | None) -> str:
    return "" if shard is None else f" shard={shard}"
