"""Spreading a signal over a copier group's replicas.

The replica that takes a signal (`WorkPlanner`) publishes one `WorkItem` per shard of the group's
followers to the WORK stream (`copytrade.work.<group>.<shard>`, Nats-Msg-Id "<signal>:<shard>")
and acks the signal once every item is stored. Each shard has its own durable consumer with one
item in hand at a time, so a shard's items run in signal order on whichever replica pulls them.
Every replica (`WorkRunner`) pulls the shards it owns (`replicas.py`) and runs each item through
the same executor as the direct path: claim -> place -> record, ack when the results are stored.
A replica that dies leaves its item unacked: after ack_wait it is redelivered to the shard's new
owner, whose claims recover what was already placed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.client import JetStreamContext
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.copier.copy.execute import CopyExecutor
from services.copier.delivery import Delivery
from services.copier.followers import Follower, FollowerBook
from services.copier.replicas import Replicas
from shared import bus
from shared.config import Settings
from shared.messages import MALFORMED, TradeSignal, WorkItem

log = logging.getLogger("copytrade.copier")
WORK_OUTCOMES = ("published", "done", "retried", "rejected", "pull_failed")
FETCH_WAIT_S = 1.0  # a pull loop notices a lost shard or a shutdown within this


class WorkMetrics:
    """Per replica: the work items it published and ran, the shards it owns, the live replicas."""

    def __init__(self, registry: CollectorRegistry, exchange: str) -> None:
        self.items = Counter(
            "copytrade_work_items_total", "Work items (one shard of a signal) by outcome",
            ["exchange", "outcome"], registry=registry)
        self.shards_owned = Gauge(
            "copytrade_work_shards_owned", "Work shards this replica pulls", ["exchange"],
            registry=registry).labels(exchange)
        self.replicas = Gauge(
            "copytrade_copier_replicas", "Live replicas of the group, as this replica sees them",
            ["exchange"], registry=registry).labels(exchange)
        self._outcomes = {o: self.items.labels(exchange, o) for o in WORK_OUTCOMES}

    def count(self, outcome: str, n: int = 1) -> None:
        self._outcomes[outcome].inc(n)


class WorkPlanner:
    """Turns a signal into one stored work item per non-empty shard of the group."""

    def __init__(
        self, *, js: JetStreamContext, book: FollowerBook, settings: Settings, instance: str,
        metrics: WorkMetrics,
    ) -> None:
        self._js, self._book, self._settings = js, book, settings
        self._group, self._instance, self._metrics = book.group, instance, metrics
        self._encoder = msgspec.json.Encoder(decimal_format="string")
        self._spread_before = False

    async def prepare(self) -> None:
        """A replica started while the group's items are queued keeps spreading until they ran."""
        self._spread_before = await self._queued()

    async def should_spread(self) -> bool:
        """Spread when the group is large, or while items of an earlier spread signal are still
        queued (a direct copy now would overtake them)."""
        if len(self._book.all()) > self._settings.spread_threshold:
            self._spread_before = True
            return True
        return self._spread_before and await self._queued()

    async def _queued(self) -> bool:
        info = await self._js.stream_info(bus.WORK_STREAM,
                                          subjects_filter=bus.work_of(self._group))
        return bool(info.state.subjects)

    async def plan(self, signal: TradeSignal, received_at: float) -> None:
        """Publish the signal's work items; return once JetStream has stored every one."""
        shards = self._settings.shards
        occupied = [s for s in range(shards) if self._book.in_shard(s, shards)]
        acks = []
        for shard in occupied:
            item = WorkItem(signal=signal, group=self._group, shard=shard, shards=shards,
                            received_at=received_at, planner=self._instance)
            acks.append(await self._js.publish_async(
                bus.work_subject(self._group, shard), self._encoder.encode(item),
                headers={"Nats-Msg-Id": f"{signal.signal_id}:{shard}"}))
        await asyncio.wait_for(asyncio.gather(*acks), self._settings.order_timeout_s)
        self._metrics.count("published", len(acks))
        log.info("event=signal_spread signal_id=%s followers=%d items=%d", signal.signal_id,
                 len(self._book.all()), len(acks))


class WorkRunner:
    """Pulls the items of the shards this replica owns and runs each through the executor."""

    def __init__(
        self, *, nc: Client, js: JetStreamContext, book: FollowerBook, executor: CopyExecutor,
        delivery: Delivery, replicas: Replicas, settings: Settings, metrics: WorkMetrics,
    ) -> None:
        self._nc, self._js, self._book, self._executor = nc, js, book, executor
        self._delivery, self._replicas, self._settings = delivery, replicas, settings
        self._metrics, self._group = metrics, book.group
        self._decoder = msgspec.json.Decoder(WorkItem)
        self._loops: dict[int, asyncio.Task[None]] = {}
        self._items: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._warmed: set[int] = set()  # shards whose followers' clients were connected
        self._warming: set[asyncio.Task[None]] = set()

    @property
    def busy(self) -> bool:
        return bool(self._items)

    @property
    def settled(self) -> bool:
        """Pulling exactly the owned shards (a lost shard's loop ends after its current fetch)."""
        pulling = {s for s, loop in self._loops.items() if not loop.done()}
        return pulling == {s for s in range(self._settings.shards) if self._replicas.owns(s)}

    async def prepare(self) -> None:
        await bus.ensure_work_consumers(self._js, self._group, self._settings.shards,
                                        ack_wait_s=self._settings.ack_wait_s,
                                        max_deliver=self._settings.max_deliver)

    async def run(self) -> None:
        """Keep one pull loop per owned shard, following ownership changes, until stopped."""
        try:
            while not (self._stopping.is_set() or self._nc.is_closed):
                self._replicas.changed.clear()
                owned = [s for s in range(self._settings.shards) if self._replicas.owns(s)]
                self._warm([s for s in owned if s not in self._warmed])
                for shard in owned:
                    loop = self._loops.get(shard)
                    if loop is None or loop.done():
                        self._loops[shard] = asyncio.create_task(self._pull(shard))
                self._metrics.shards_owned.set(len(owned))
                self._metrics.replicas.set(len(self._replicas.live()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._replicas.changed.wait(),
                                           self._settings.replica_heartbeat_s)
        finally:
            loops = [t for t in self._loops.values() if not t.done()]
            if loops:
                await asyncio.wait(loops)

    def _warm(self, shards: list[int]) -> None:
        """Connect the clients of newly owned shards' followers now, in the background, not on
        their first signal: a client costs milliseconds of CPU to build, and hundreds built in
        one copy made it seconds late for the last of them."""
        followers = [f for s in shards for f in self._book.in_shard(s, self._settings.shards)]
        self._warmed.update(shards)
        if followers:
            task = asyncio.create_task(self._connect(followers))
            self._warming.add(task)
            task.add_done_callback(self._warming.discard)

    async def _connect(self, followers: list[Follower]) -> None:
        failed = await self._book.connect(followers)
        if failed:  # retried on first use; their copies fail alone
            log.warning("event=clients_connect_failed followers=%s", ",".join(failed))

    async def stop(self, grace_s: float) -> None:
        """Pull no more; finish items in hand within grace_s, else hand them back (nak)."""
        self._stopping.set()
        for task in self._warming:
            task.cancel()
        if self._items:
            _, pending = await asyncio.wait(set(self._items), timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    async def _pull(self, shard: int) -> None:
        sub = None
        try:
            sub = await self._js.pull_subscribe_bind(
                durable=bus.work_durable(self._group, shard), stream=bus.WORK_STREAM)
            while not self._stopping.is_set() and self._replicas.owns(shard):
                try:
                    msgs = await sub.fetch(batch=1, timeout=FETCH_WAIT_S)
                except (NatsTimeout, TimeoutError):
                    continue
                for msg in msgs:
                    task = asyncio.create_task(self._run_item(msg))
                    self._items.add(task)
                    await asyncio.wait({task})
                    self._items.discard(task)
        except Exception as exc:
            if not (self._stopping.is_set() or self._nc.is_closed):
                self._metrics.count("pull_failed")
                log.warning("event=work_pull_failed shard=%d error=%s", shard, type(exc).__name__)
                await asyncio.sleep(self._settings.replica_heartbeat_s)
        finally:
            if sub is not None:
                with contextlib.suppress(*bus.TRANSIENT):  # closing anyway
                    await sub.unsubscribe()

    async def _run_item(self, msg: Msg) -> None:
        try:
            item = self._decoder.decode(msg.data)
        except MALFORMED as exc:
            await self._refuse(msg, "malformed", str(exc))
            return
        problem = self._book.signature_problem(item.signal)
        if problem is not None or item.group != self._group:
            await self._refuse(msg, *(problem or ("wrong_group", f"work item for {item.group}")))
            return
        followers = self._book.in_shard(item.shard, item.shards)
        done = await self._delivery.settle(msg, item.signal.signal_id, self._executor.execute(
            item.signal, followers, item.received_at, redelivered=msg.metadata.num_delivered > 1,
            lineage=(msg.metadata.consumer or "", msg.metadata.sequence.consumer),
            shard=item.shard), shard=item.shard)
        self._metrics.count("done" if done else "retried")

    async def _refuse(self, msg: Msg, reason_code: str, reason: str) -> None:
        self._metrics.count("rejected")
        await self._delivery.reject(msg.data, reason_code, f"work item: {reason}")
        await msg.term()
