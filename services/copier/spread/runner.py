"""The runner: every replica pulls the work items of the shards it owns and runs each through
the same executor as the direct path, one item in hand per shard."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.client import JetStreamContext

from services.copier.copy.execute import CopyExecutor
from services.copier.delivery import Delivery, watched
from services.copier.followers import Follower, FollowerBook
from services.copier.spread.metrics import WorkMetrics
from services.copier.spread.replicas import Replicas
from shared import bus
from shared.config import CopierSettings
from shared.messages import MALFORMED, WorkItem

log = logging.getLogger("copytrade.copier")
FETCH_WAIT_S = 1.0  # a pull loop notices a lost shard or a shutdown within this
FETCH_BACKOFF_CAP_S = 0.5  # a failed fetch is retried at least this often


class WorkRunner:
    """Pulls the items of the shards this replica owns and runs each through the executor."""

    def __init__(
        self,
        *,
        nc: Client,
        js: JetStreamContext,
        book: FollowerBook,
        executor: CopyExecutor,
        delivery: Delivery,
        replicas: Replicas,
        settings: CopierSettings,
        metrics: WorkMetrics,
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
        await bus.ensure_work_consumers(
            self._js,
            self._group,
            self._settings.shards,
            ack_wait_s=self._settings.ack_wait_s,
            max_deliver=self._settings.max_deliver,
        )

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
                        self._loops[shard] = watched(self._pull(shard), f"work_pull_{shard}")
                self._metrics.shards_owned.set(len(owned))
                self._metrics.replicas.set(len(self._replicas.live()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._replicas.changed.wait(), self._settings.replica_heartbeat_s)
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
            task = watched(self._connect(followers), "warm_clients")
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
                durable=bus.work_durable(self._group, shard), stream=bus.WORK_STREAM
            )
            failures = 0
            while not (self._stopping.is_set() or self._nc.is_closed) and self._replicas.owns(shard):
                try:
                    msgs = await sub.fetch(batch=1, timeout=FETCH_WAIT_S)
                except (NatsTimeout, TimeoutError):
                    continue
                except nats.errors.Error as exc:  # a consumer leader elected, a reconnect
                    if self._nc.is_closed:
                        return
                    failures += 1
                    self._metrics.count("pull_failed")
                    log.warning(
                        "event=work_fetch_failed shard=%d failures=%d error=%s",
                        shard,
                        failures,
                        type(exc).__name__,
                    )
                    await asyncio.sleep(min(FETCH_BACKOFF_CAP_S, 0.05 * 2**failures))
                    continue
                failures = 0
                for msg in msgs:
                    task = asyncio.create_task(self._delivery.guarded(msg, self._run_item(msg)))
                    self._items.add(task)
                    await asyncio.wait({task})
                    self._items.discard(task)
        except Exception as exc:  # noqa: BLE001 - last resort: counted, logged; run() pulls the shard again
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
        followers = [
            f
            for f in self._book.in_shard(item.shard, item.shards)
            if self._executor.policy.copies(f, item.signal.master_id)
        ]
        done = await self._delivery.settle(
            msg,
            item.signal.signal_id,
            self._executor.execute(
                item.signal,
                followers,
                item.received_at,
                redelivered=msg.metadata.num_delivered > 1,
                lineage=(msg.metadata.consumer or "", msg.metadata.sequence.consumer),
                shard=item.shard,
            ),
            shard=item.shard,
        )
        self._metrics.count("done" if done else "retried")

    async def _refuse(self, msg: Msg, reason_code: str, reason: str) -> None:
        self._metrics.count("rejected")
        await self._delivery.reject(msg.data, reason_code, f"work item: {reason}")
        await msg.term()
