"""Which replicas of a copier group are alive, and which shards each one owns.

Every replica announces itself on a core NATS subject each `interval_s` (nothing is stored) and
listens to the others; one silent for three intervals is gone, one shutting down says so. A
shard's owner is a pure function of the sorted live names, so replicas agree without a
coordinator. Ownership is only about locality (warm clients and cached figures stay on one
replica): if two replicas briefly both pull a shard, its consumer still hands out one item at a
time and claims keep each order single; a replica that sees no peers pulls every shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared import bus
from shared.messages import MALFORMED, ReplicaHeartbeat

log = logging.getLogger("copytrade.copier")
SILENT_INTERVALS = 3


def owner_of(shard: int, replicas: Sequence[str]) -> str:
    """The replica that pulls `shard`: round-robin over the sorted live names."""
    ordered = sorted(replicas)
    return ordered[shard % len(ordered)]


class Replicas:
    def __init__(self, nc: Client, group: str, instance: str, interval_s: float) -> None:
        self._nc, self._group, self.instance = nc, group, instance
        self._interval_s = interval_s
        self._heard: dict[str, float] = {}  # other replicas -> monotonic time last heard
        self._live: list[str] = [instance]
        self._sub: Subscription | None = None
        self._left = False
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(ReplicaHeartbeat)
        self.changed = asyncio.Event()

    def live(self) -> list[str]:
        """The live replicas, this one included, sorted."""
        return self._live

    def owns(self, shard: int) -> bool:
        return owner_of(shard, self._live) == self.instance

    async def join(self) -> None:
        self._sub = await self._nc.subscribe(bus.replicas_subject(self._group), cb=self._heard_from)
        await self._announce()

    async def run(self) -> None:
        """Announce this replica and forget silent ones, every interval, until cancelled."""
        while not self._left:
            await asyncio.sleep(self._interval_s)
            with contextlib.suppress(*bus.TRANSIENT):  # NATS away: peers forget us, fail safe
                await self._announce()
            deadline = time.monotonic() - SILENT_INTERVALS * self._interval_s
            silent = [name for name, at in self._heard.items() if at < deadline]
            for name in silent:
                del self._heard[name]
            if silent:
                self._update()

    async def leave(self) -> None:
        """Say this replica is going, so the others take its shards over at once."""
        if self._left:
            return
        self._left = True
        with contextlib.suppress(*bus.TRANSIENT):  # the others then forget us by silence
            await self._announce(leaving=True)
            await self._nc.flush(timeout=1)
        if self._sub is not None:
            with contextlib.suppress(*bus.TRANSIENT):
                await self._sub.unsubscribe()

    async def _announce(self, leaving: bool = False) -> None:
        if self._left and not leaving:
            return
        beat = ReplicaHeartbeat(group=self._group, instance=self.instance, leaving=leaving)
        await self._nc.publish(bus.replicas_subject(self._group), self._encoder.encode(beat))

    async def _heard_from(self, msg: Msg) -> None:
        try:
            beat = self._decoder.decode(msg.data)
        except MALFORMED:
            log.warning("event=replica_heartbeat_invalid size=%d", len(msg.data))
            return
        if beat.group != self._group or beat.instance == self.instance:
            return
        if beat.leaving:
            if self._heard.pop(beat.instance, None) is not None:
                self._update()
            return
        newcomer = beat.instance not in self._heard
        self._heard[beat.instance] = time.monotonic()
        if newcomer:
            self._update()
            with contextlib.suppress(*bus.TRANSIENT):
                await self._announce()  # let the newcomer see this replica without waiting

    def _update(self) -> None:
        live = sorted({self.instance, *self._heard})
        if live != self._live:
            self._live = live
            log.info("event=replicas_changed group=%s live=%s", self._group, ",".join(live))
            self.changed.set()
