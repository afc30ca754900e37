"""The sweep: on start, every interval, and when a master fill's wait is due, each link of the
group is looked at once (under its lock, read fresh):

- an intent left by an attempt gone (placing, replacing; a chase or an unwind) is carried out;
- a linked order still open whose master order is no longer live (its cancel failed, or was
  never carried out), or whose subscription no longer mirrors orders, is an orphan: cancelled
  (confirmed), its fill applied, reported;
- a linked order that filled (a stop triggered, a limit reached) is read here: its fill
  applied to the ledger once, with no further signal, and recorded;
- a master order filled `wait_s` ago settles the follower's side (`sides.py`);
- a placement reported failed is looked up once: an order the venue took after all is
  cancelled;
- a link finished a week ago is purged."""

from __future__ import annotations

import logging
import time
from collections import Counter

import msgspec

from services.copier.followers import Follower
from services.copier.orders.intents import settle
from services.copier.orders.links import Link, LinkConflict, event_id
from services.copier.orders.outcomes import Origin
from services.copier.orders.room import LinkBusy, Room
from services.copier.orders.sides import Sides
from shared.errors import ExchangeError
from shared.exchange.port import OrderAck

log = logging.getLogger("copytrade.mirroring")
PURGE_AFTER_S = 7 * 86_400.0


class Sweep:
    def __init__(self, room: Room, sides: Sides) -> None:
        self._room, self._sides = room, sides

    async def sweep(self) -> Counter[str]:
        """Look at every link of the group once; what was found, by outcome."""
        room, tally = self._room, Counter[str]()
        followers = {f.id: f for f in room.book.all()}
        for key, link, _ in await room.links.scan():
            follower = followers.get(link.follower_id)
            outcome = "no_follower" if follower is None else await self._guarded(follower, key)
            tally[outcome] += 1
            room.metrics.swept(outcome)
        return tally

    async def _guarded(self, follower: Follower, key: str) -> str:
        room = self._room
        try:
            async with room.locks.hold(key):
                got = await room.links.get(key)
                return "purged" if got is None else await self._one(follower, key, *got)
        except LinkBusy:
            return "busy"
        except (ExchangeError, LinkConflict) as exc:  # left for the next sweep
            room.metrics.failed("sweep")
            log.warning(
                "event=sweep_link_failed key=%s follower=%s error=%s",
                key,
                follower.id,
                f"{type(exc).__name__}: {exc}"[:300],
            )
            return "failed"

    async def _one(self, follower: Follower, key: str, link: Link, revision: int) -> str:
        room, sides = self._room, self._sides
        if link.finished:
            if time.time() - link.at > PURGE_AFTER_S:
                await room.links.purge(key)
                return "purged"
            return "finished"
        if link.resolved in ("chasing", "unwinding"):
            resume = sides.resume_chase if link.resolved == "chasing" else sides.resume_unwind
            await resume(follower, key, link, revision)
            return "resumed"
        mirrored = room.orders_config(follower, link.master_id) is not None
        if link.state in ("placing", "replacing"):
            may_place = mirrored and link.master_open and room.policy.halted(follower) is None
            link, revision = await settle(room, follower, key, link, revision, may_place=may_place)
        handlers = {"unlinked": self._unlinked, "live": self._live, "ended": self._ended}
        return await handlers[link.state](follower, key, link, revision, mirrored)

    async def _live(self, follower: Follower, key: str, link: Link, revision: int, mirrored: bool) -> str:
        room = self._room
        assert link.client_order_id is not None
        cancel = self._unbacked(follower, link, mirrored)
        if cancel is not None:
            why, code, resolved = cancel
            return await self._orphan(follower, key, link, revision, why, code=code, resolved=resolved)
        if link.due is not None and link.due <= time.time():
            await self._sides.resolve_due(follower, key, link, revision)
            return "resolved"
        ack = await room.find(follower, link, link.client_order_id)
        if ack is not None and ack.status == "submitted":
            return await self._open(follower, key, link, revision, ack)
        ended = msgspec.structs.replace(await room.apply(follower, link, ack), state="ended")
        cid = link.client_order_id
        if ack is not None and ack.filled_base:
            await room.links.update(key, ended, revision)
            await room.outcomes.record(
                ended,
                Origin(event_id(key, f"filled:{cid}")),
                "filled",
                "linked_order_filled",
                f"Linked {link.kind} order {cid} filled {ack.filled_base} at {ack.avg_price}",
                ack=ack,
            )
            return "filled"
        await room.links.update(key, msgspec.structs.replace(ended, resolved="gone"), revision)
        await room.outcomes.record(
            ended,
            Origin(event_id(key, f"gone:{cid}")),
            "skipped",
            "linked_order_gone",
            f"Linked order {cid} ended at the venue without a fill, outside copytrade",
            ack=ack,
        )
        return "filled"

    async def _ended(self, follower: Follower, key: str, link: Link, revision: int, mirrored: bool) -> str:
        if link.due is not None:
            if link.due > time.time():
                return "unchanged"
            await self._sides.resolve_due(follower, key, link, revision)
            return "resolved"
        if not link.master_open:  # a master cancel whose handling stopped half way
            await self._sides.after_master_cancel(
                follower, key, link, revision, event_id(key, "master_cancelled")
            )
            return "resolved"
        if not mirrored:
            done = msgspec.structs.replace(link, resolved="unsubscribed")
            await self._room.links.update(key, done, revision)
            return "resolved"
        return "unchanged"  # filled first: the master's cancel or fills decide

    async def _unlinked(
        self, follower: Follower, key: str, link: Link, revision: int, _mirrored: bool
    ) -> str:
        room = self._room
        if link.client_order_id is not None:  # its placement failed: did the venue take it?
            ack = await room.find(follower, link, link.client_order_id)
            if ack is not None and ack.status == "submitted":
                return await self._orphan(
                    follower,
                    key,
                    msgspec.structs.replace(link, state="live"),
                    revision,
                    "its placement was reported failed",
                )
            if ack is not None and ack.filled_base:
                return await self._orphan(
                    follower, key, link, revision, "it filled though its placement was reported failed"
                )
            link = msgspec.structs.replace(link, client_order_id=None)
            revision = await room.links.update(key, link, revision)
        if not link.master_open:
            await room.links.update(key, msgspec.structs.replace(link, resolved="unlinked"), revision)
            return "finished"
        return "unchanged"

    def _unbacked(self, follower: Follower, link: Link, mirrored: bool) -> tuple[str, str, str] | None:
        """Why a live linked order is to be cancelled now (reason, code, resolved), if it is:
        the kill switch is on, or no mirrored master order stands behind it."""
        halt = self._room.policy.halted(follower)
        if halt is not None:
            return halt.reason, halt.reason_code, "killed"
        if not mirrored:
            return "the subscription no longer mirrors this master's orders", "orphan_cancelled", "orphan"
        if not link.master_open and link.due is None:
            return "its master order is no longer live", "orphan_cancelled", "orphan"
        return None

    async def _open(self, follower: Follower, key: str, link: Link, revision: int, ack: OrderAck) -> str:
        """A linked order still open: what it filled since it was last seen enters the ledger."""
        _, _, credited = await self._room.credit(follower, key, link, revision, ack)
        return "partially_filled" if credited > 0 else "open"

    async def _orphan(
        self,
        follower: Follower,
        key: str,
        link: Link,
        revision: int,
        why: str,
        *,
        code: str = "orphan_cancelled",
        resolved: str = "orphan",
    ) -> str:
        """Cancel (confirmed) a linked order no master order stands behind (or that the kill
        switch stops); apply its fill."""
        room, cid = self._room, link.client_order_id
        assert cid is not None
        ack = await room.cancel(follower, link, cid)
        ended = msgspec.structs.replace(
            await room.apply(follower, link, ack), state="ended", resolved=resolved, due=None
        )
        await room.links.update(key, ended, revision)
        filled = ack is not None and bool(ack.filled_base)
        log.warning(
            "event=linked_order_cancelled follower=%s client_order_id=%s reason_code=%s why=%r",
            follower.id,
            cid,
            code,
            why,
        )
        await room.outcomes.record(
            ended,
            Origin(event_id(key, f"{resolved}:{cid}")),
            "filled" if filled else "skipped",
            code,
            f"Linked order {cid} cancelled: {why}"
            + (" (its fill stays in the copied holding)" if filled else ""),
            ack=ack,
        )
        return resolved
