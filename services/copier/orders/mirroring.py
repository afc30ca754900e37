"""Mirroring, as the copier sees it: an order event in, a master fill offered, and the sweep in
the background."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter

import nats
from prometheus_client import CollectorRegistry

from services.copier.context import CopierContext
from services.copier.copy.holdings import Holdings
from services.copier.copy.results import ResultLog
from services.copier.followers import Follower
from services.copier.orders.events import OrderEvents
from services.copier.orders.links import KeyLocks, LinkStore
from services.copier.orders.metrics import MirrorMetrics
from services.copier.orders.outcomes import Outcomes
from services.copier.orders.room import Room
from services.copier.orders.sides import Sides
from services.copier.orders.sizing import LinkSizer
from services.copier.orders.sweep import Sweep
from shared import bus
from shared.control import KILL_KEY
from shared.errors import CopytradeError
from shared.messages import OrderSignal, TradeSignal

log = logging.getLogger("copytrade.mirroring")
SWEEP_S = 30.0  # how often the sweep runs (and on start, and when a master fill's wait is due)


class Mirroring:
    def __init__(
        self, ctx: CopierContext, *, holdings: Holdings, registry: CollectorRegistry | None = None
    ) -> None:
        book, group = ctx.book, ctx.book.group
        room = Room(
            group=group,
            instance=ctx.instance,
            book=book,
            policy=ctx.policy,
            holdings=holdings,
            links=LinkStore(ctx.ledger.kv, group, ctx.js),
            outcomes=Outcomes(ResultLog(ctx.js, ctx.metrics, group), group),
            settings=ctx.settings,
            locks=KeyLocks(),
            metrics=MirrorMetrics(registry or CollectorRegistry(), group),
        )
        sizer = LinkSizer(
            nc=ctx.nc,
            book=book,
            policy=ctx.policy,
            holdings=holdings,
            settings=ctx.settings,
            metrics=ctx.metrics,
        )
        self._room, self._control = room, ctx.control
        self._wake = asyncio.Event()
        self._sides = Sides(room, self._wake_at)
        self._events = OrderEvents(room, sizer, self._sides)
        self._sweep = Sweep(room, self._sides)

    async def handle(self, event: OrderSignal, received_at: float) -> None:
        """Mirror a master order event for the followers that mirror orders; return once every
        outcome is stored (raise to have it retried)."""
        await self._events.handle(event, received_at)

    async def take_fills(
        self, signal: TradeSignal, followers: list[Follower], received_at: float
    ) -> list[Follower]:
        """Of `followers`, those to copy this master fill for (not those whose linked order
        carries it)."""
        return await self._sides.take_fills(signal, followers, received_at)

    async def sweep(self) -> Counter[str]:
        return await self._sweep.sweep()

    async def run(self, interval_s: float = SWEEP_S) -> None:
        """Sweep now, then every interval and whenever a master fill's wait is due."""
        while True:
            self._wake.clear()
            try:
                found = await self.sweep()
                if found:
                    log.info("event=mirror_sweep %s", " ".join(f"{k}={v}" for k, v in sorted(found.items())))
            except (CopytradeError, TimeoutError, nats.errors.Error) as exc:  # next round again
                self._room.metrics.failed("sweep")
                log.warning("event=mirror_sweep_failed error=%s", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval_s)

    async def watch_kill(self) -> None:
        """Sweep at once when the kill switch turns on: every open linked order is cancelled
        then (confirmed, its fill applied), not at the next round. The switch is applied to the
        policy here first, so that sweep sees it whichever watcher of the bucket is first."""
        kv = self._control.kv
        if kv is None:
            return
        watcher = await kv.watch(KILL_KEY)
        try:
            async for entry in watcher:
                if entry is None:  # the end of the current values
                    continue
                deleted = entry.operation in ("DEL", "PURGE")
                self._control.apply(entry.key, None if deleted else entry.value)
                if self._control.killed:
                    self._wake.set()
        finally:
            with contextlib.suppress(*bus.TRANSIENT):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def _wake_at(self, at: float) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(max(0.0, at - time.time()), self._wake.set)
