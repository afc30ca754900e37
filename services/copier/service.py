"""The copier: one replica of a follower group. It takes each signal from the group's durable
(one signal in hand per group, across replicas), admits it (`intake`: decode, signature,
replay), then either

- copies it itself (the direct path: a group of up to COPYTRADE_SPREAD_THRESHOLD followers,
  lowest latency): every follower sized in one sizer call per 1,000, orders placed concurrently,
  or
- spreads it (larger groups): one work item per shard of followers, stored in the WORK stream
  and pulled by every replica of the group (`spread/`).

Both paths copy through the same `CopyExecutor` (`copy/`: figures -> sizing -> policy ->
claim -> place -> record); a message is acked
only once everything it stands for is stored.

A master order event (`OrderSignal`) goes to `orders/` (mirroring) for the followers whose
subscription mirrors orders, on the direct path; a master fill that a follower's linked order
carries is left out of its copy there (never copied twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import nats
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.client import JetStreamContext
from prometheus_client import CollectorRegistry

from services.copier.context import CopierContext
from services.copier.copy.execute import CopyExecutor
from services.copier.copy.silence import MasterSilence
from services.copier.copy.subscriptions import Subscriptions
from services.copier.delivery import Delivery, watched
from services.copier.followers import Lineage
from services.copier.intake import Intake
from services.copier.orders.mirroring import SWEEP_S, Mirroring
from services.copier.reconcile import Reconciler
from services.copier.spread.metrics import WorkMetrics
from services.copier.spread.planner import WorkPlanner
from services.copier.spread.replicas import Replicas
from services.copier.spread.runner import WorkRunner
from shared import bus
from shared.messages import OrderSignal, TradeSignal

log = logging.getLogger("copytrade.copier")
FETCH_WAIT_S = 1.0
SILENCE_CHECK_S = 5.0
SUBSCRIPTION_SYNC_S = 2.0  # subscriptions added or removed take effect within this
FETCH_BACKOFF_CAP_S = 0.5  # a failed fetch is retried at least this often: a group resumes fast


class Copier:
    def __init__(
        self,
        ctx: CopierContext,
        *,
        reconciler: Reconciler | None = None,
        work_metrics: WorkMetrics | None = None,
        mirror_registry: CollectorRegistry | None = None,
    ) -> None:
        nc, js, book, metrics, settings = ctx.nc, ctx.js, ctx.book, ctx.metrics, ctx.settings
        self._nc, self._js, self._book, self._control = nc, js, book, ctx.control
        self._metrics, self._settings = metrics, settings
        self._group = book.group
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()  # consumers and durables exist: this replica takes signals
        self._current: asyncio.Task[None] | None = None
        self.executor = CopyExecutor(ctx, reconciler=reconciler)
        self.mirroring = Mirroring(ctx, holdings=self.executor.holdings, registry=mirror_registry)
        self.executor.mirroring = self.mirroring
        self.subscriptions = Subscriptions(
            js=js,
            kv=ctx.ledger.kv,
            book=book,
            policy=ctx.policy,
            executor=self.executor,
            lease_s=settings.order_timeout_s * 4,
        )
        self.silence = MasterSilence(
            fills=ctx.fills,
            book=book,
            control=ctx.control,
            policy=ctx.policy,
            subscriptions=self.subscriptions,
            metrics=metrics,
        )
        self._delivery = Delivery(js=js, metrics=metrics, settings=settings, group=self._group)
        self._intake = Intake(book=book, claims=self.executor.claims, delivery=self._delivery)
        self.work_metrics = work_metrics or WorkMetrics(CollectorRegistry(), self._group)
        self.replicas = Replicas(nc, self._group, ctx.instance, settings.replica_heartbeat_s)
        self._planner = WorkPlanner(
            js=js, book=book, settings=settings, instance=ctx.instance, metrics=self.work_metrics
        )
        self._work = WorkRunner(
            nc=nc,
            js=js,
            book=book,
            executor=self.executor,
            delivery=self._delivery,
            replicas=self.replicas,
            settings=settings,
            metrics=self.work_metrics,
        )

    async def run(self) -> None:
        """Take signals one at a time (signal order is follower order) until shut down; pull
        the work items of the shards this replica owns meanwhile."""
        await self._work.prepare()
        await self._planner.prepare()
        await self.replicas.join()
        sub = await self._js.pull_subscribe_bind(
            durable=bus.durable_name(self._group), stream=bus.SIGNALS_STREAM
        )
        self.ready.set()
        background = [
            watched(self._watch_lag(), "lag_watch"),
            watched(self.replicas.run(), "replica_heartbeat"),
            watched(self.subscriptions.run(SUBSCRIPTION_SYNC_S), "subscriptions"),
            watched(self.silence.run(SILENCE_CHECK_S), "master_silence"),
            watched(self.mirroring.run(SWEEP_S), "mirror_sweep"),
            watched(self.mirroring.watch_kill(), "mirror_kill_watch"),
        ]
        work = watched(self._work.run(), "work_runner")
        try:
            await self._take_signals(sub)
        finally:
            for task in background:
                task.cancel()
            await self.replicas.leave()
            await self._work.stop(0 if work.done() else self._settings.shutdown_grace_s)
            await asyncio.wait({work})
            with contextlib.suppress(*bus.TRANSIENT):  # closing anyway
                await sub.unsubscribe()

    async def _take_signals(self, sub: JetStreamContext.PullSubscription) -> None:
        """Fetch and handle signals one at a time until shut down. A fetch fails while the
        consumer's leader is re-elected (a node lost) or NATS reconnects: back off briefly and
        fetch again; the subscription is only an inbox (re-subscribed on reconnect), and the
        fetch request reaches whichever node leads the consumer now."""
        failures = 0
        while not self._stopping.is_set():
            try:
                msgs = await sub.fetch(batch=1, timeout=FETCH_WAIT_S)
            except (NatsTimeout, TimeoutError):
                msgs = []
            except nats.errors.Error as exc:  # e.g. 503 while a consumer leader is elected
                if self._nc.is_closed:
                    return  # shut down under us: nothing more to take
                failures += 1
                log.warning("event=signal_fetch_failed failures=%d error=%s", failures, type(exc).__name__)
                await asyncio.sleep(min(FETCH_BACKOFF_CAP_S, 0.05 * 2**failures))
                continue
            failures = 0
            for msg in msgs:
                self._current = asyncio.create_task(self._delivery.guarded(msg, self.process(msg)))
                await asyncio.wait({self._current})
                self._current = None
            if not self._work.busy:  # no copy in flight may still use a retired client
                await self._book.close_retired()

    @property
    def settled(self) -> bool:
        """This replica pulls the work shards it owns, and only those."""
        return self._work.settled

    async def shutdown(self, grace_s: float) -> None:
        """Fetch no more; finish the signal and work items in hand within grace_s, else hand
        them back (nak)."""
        self._stopping.set()
        await self.replicas.leave()
        current = self._current
        work = asyncio.create_task(self._work.stop(grace_s))
        if current is not None:
            _, pending = await asyncio.wait({current}, timeout=grace_s)
            for task in pending:
                task.cancel()
                await asyncio.wait({task})
        await work

    async def _watch_lag(self, interval_s: float = 5.0) -> None:
        """Export the group's consumer lag: signals stored but not yet done by this group."""
        while True:
            try:
                info = await self._js.consumer_info(bus.SIGNALS_STREAM, bus.durable_name(self._group))
                self._metrics.pending.set((info.num_pending or 0) + (info.num_ack_pending or 0))
            except bus.TRANSIENT as exc:
                log.info("event=lag_read_failed error=%s", type(exc).__name__)
            self._metrics.set_followers(self._book.state_counts(self._control))
            await asyncio.sleep(interval_s)

    async def process(self, msg: Msg) -> None:
        """Handle one signal message; ack only once every follower's outcome (or, spread, every
        work item) is stored."""
        received_at = time.time()
        self._metrics.signals_received.inc()
        admitted = await self._intake.admit(msg)
        if admitted is None:
            return
        lineage = (msg.metadata.consumer or "", msg.metadata.sequence.consumer)
        signal = admitted.signal
        if isinstance(signal, OrderSignal):
            await self._delivery.settle(msg, signal.signal_id, self.mirroring.handle(signal, received_at))
            return
        await self._delivery.settle(
            msg,
            signal.signal_id,
            self.fan_out(signal, received_at, redelivered=admitted.redelivered, lineage=lineage),
        )

    async def fan_out(
        self,
        signal: TradeSignal,
        received_at: float,
        *,
        redelivered: bool,
        lineage: Lineage = ("", 0),
    ) -> None:
        followers = [
            f
            for f in self._book.subscribers(signal.master_id)
            if self.executor.policy.copies(f, signal.master_id)
        ]
        log.info(
            "event=signal_received signal_id=%s symbol=%s side=%s followers=%d redelivered=%s",
            signal.signal_id,
            signal.symbol,
            signal.side,
            len(followers),
            redelivered,
        )
        if await self._planner.should_spread():
            await self._planner.plan(signal, received_at)
            return
        await self.executor.execute(signal, followers, received_at, redelivered=redelivered, lineage=lineage)
