"""The planner: a signal of a large group becomes one stored work item per non-empty shard."""

from __future__ import annotations

import logging

import msgspec
from nats.js.client import JetStreamContext

from services.copier.followers import FollowerBook
from services.copier.spread.metrics import WorkMetrics
from shared import bus
from shared.config import CopierSettings
from shared.messages import TradeSignal, WorkItem

log = logging.getLogger("copytrade.copier")


class WorkPlanner:
    """Turns a signal into one stored work item per non-empty shard of the group."""

    def __init__(
        self,
        *,
        js: JetStreamContext,
        book: FollowerBook,
        settings: CopierSettings,
        instance: str,
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
        info = await bus.retry(
            "work queued",
            lambda: self._js.stream_info(bus.WORK_STREAM, subjects_filter=bus.work_of(self._group)),
        )
        return bool(info.state.subjects)

    async def plan(self, signal: TradeSignal, received_at: float) -> None:
        """Publish the signal's work items; return once JetStream has stored every one."""
        shards = self._settings.shards
        occupied = [s for s in range(shards) if self._book.in_shard(s, shards)]
        sent: list[bus.Sent] = []
        try:
            for shard in occupied:
                item = WorkItem(
                    signal=signal,
                    group=self._group,
                    shard=shard,
                    shards=shards,
                    received_at=received_at,
                    planner=self._instance,
                )
                sent.append(
                    await bus.send(
                        self._js,
                        bus.work_subject(self._group, shard),
                        self._encoder.encode(item),
                        f"{signal.signal_id}:{shard}",
                    )
                )
        except BaseException:
            for write in sent:  # nobody will await these now; the signal is retried whole
                write.ack.cancel()
            raise
        await bus.confirm(self._js, sent)  # items lost with a node are sent again, deduplicated
        self._metrics.count("published", len(sent))
        log.info(
            "event=signal_spread signal_id=%s followers=%d items=%d",
            signal.signal_id,
            len(self._book.all()),
            len(sent),
        )
