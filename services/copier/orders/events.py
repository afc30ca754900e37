"""A master order event, for each follower that mirrors the master's orders:

new     sized like a copy (`sizing.py`), the stop/target switches and the policy asked, the
        venue's native kinds checked, then a linked resting order placed under
        `linked_client_order_id(order, follower, version)`
amend   in place where the venue can; else replaced: by the venue in one request, or cancelled
        (confirmed) and placed again under the next version's id
cancel  the linked order cancelled; what it filled stays, enters the ledger, and is kept or
        unwound (`sides.py`)

A follower's failure is its recorded outcome; a link another attempt is working on raises, and
the event is retried."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

import msgspec

from services.copier.copy.figures import ReadFailed
from services.copier.followers import Follower
from services.copier.orders.intents import settle
from services.copier.orders.links import Known, Link
from services.copier.orders.outcomes import Origin
from services.copier.orders.room import Room
from services.copier.orders.sides import Sides
from services.copier.orders.sizing import LinkSizer, on_step, on_tick
from shared.config import OrdersConfig
from shared.errors import ExchangeError, InvalidOrder
from shared.exchange.port import NotNative, amended_client_id
from shared.messages import (
    Decision,
    MarketRules,
    OrderSignal,
    Outcome,
    Skip,
    linked_client_order_id,
)

log = logging.getLogger("copytrade.mirroring")
_KIND_SWITCH = {
    "stop_loss": "stop_loss",
    "stop_loss_limit": "stop_loss",
    "take_profit": "take_profit",
    "take_profit_limit": "take_profit",
}


async def all_done(*work: Awaitable[Any]) -> None:
    """Run every follower's part; raise the first failure once all have ended."""
    outcomes = await asyncio.gather(*work, return_exceptions=True)
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if failures:
        raise failures[0]


def base_link(follower: Follower, event: OrderSignal) -> Link:
    return Link(
        follower_id=follower.id,
        master_id=event.master_id,
        exchange=event.exchange,
        order_id=event.order_id,
        kind=event.kind,
        symbol=event.symbol,
        side=event.side,
        state="unlinked",
        version=event.version,
        master_size=event.size,
        master_filled=event.filled,
        price=event.price,
        trigger_price=event.trigger_price,
    )


def kind_refusal(follower: Follower, event: OrderSignal, config: OrdersConfig) -> Skip | None:
    """A stop-loss or take-profit the subscription does not mirror."""
    switch = _KIND_SWITCH.get(event.kind)
    if switch is None or getattr(config, switch):
        return None
    return Skip(
        follower_id=follower.id,
        reason_code=f"{switch}_off",
        reason=f"{switch}: false for this subscription: {event.kind} orders not mirrored",
    )


def _target(link: Link, event: OrderSignal, rules: MarketRules | None) -> Link:
    """The link as this master amendment wants it: size scaled, prices on the follower's tick."""
    return msgspec.structs.replace(
        link,
        version=event.version,
        master_size=event.size,
        size=on_step(link.size * event.size / link.master_size, rules),
        price=on_tick(event.price, link.side, rules),
        trigger_price=on_tick(event.trigger_price, link.side, rules),
    )


def _amend_code(link: Link, follower: Follower) -> str:
    """How a link at this version came to be: amended in place (its first id kept), else
    replaced."""
    first = linked_client_order_id(link.order_id, follower.id, 0)
    return "amended" if link.client_order_id == first else "replaced"


class OrderEvents:
    def __init__(self, room: Room, sizer: LinkSizer, sides: Sides) -> None:
        self._room, self._sizer, self._sides = room, sizer, sides

    async def handle(self, event: OrderSignal, received_at: float) -> None:
        """Mirror one master order event for every follower whose subscription mirrors orders."""
        room = self._room
        followers = [
            f
            for f in room.book.subscribers(event.master_id)
            if room.orders_config(f, event.master_id) is not None
        ]
        log.info(
            "event=order_event_received signal_id=%s master=%s order_id=%s event=%s version=%d followers=%d",
            event.signal_id,
            event.master_id,
            event.order_id,
            event.event,
            event.version,
            len(followers),
        )
        handlers = {"new": self._new, "amend": self._amend, "cancel": self._cancel}
        if followers and not await self._halted(event, followers, received_at):
            known = await room.links.of_order(event.master_id, event.order_id)  # one read for all
            await handlers[event.event](event, followers, received_at, known)

    async def _halted(self, event: OrderSignal, followers: list[Follower], received_at: float) -> bool:
        """Under the kill switch a new or amended master order places nothing: each follower's
        skip is recorded, a live link is left to the sweep (which cancels it), and the master
        order is mirrored again from its next event after the switch is off. A cancel goes on:
        it places nothing."""
        halts = [(f, self._room.policy.halted(f)) for f in followers]
        skips = [(f, skip) for f, skip in halts if skip is not None]
        if event.event == "cancel" or not skips:
            return False
        origin = Origin.of(event, received_at)
        await all_done(*(self._room.outcomes.skipped(base_link(f, event), origin, s) for f, s in skips))
        return True

    def _key(self, follower: Follower, event: OrderSignal) -> str:
        return self._room.links.key(follower.id, event.master_id, event.order_id)

    async def _link(self, key: str, known: Known, waited: bool) -> tuple[Link, int] | None:
        """The link as the event's one read found it; read again when another holder of its
        lock came first (it may have moved the link since), or when that read found none (a
        link made since: an amend or a cancel never takes a missing link on one read alone)."""
        got = None if waited else known.get(key)
        return got if got is not None else await self._room.links.get(key)

    # ---- new ---------------------------------------------------------------------------------

    async def _new(
        self, event: OrderSignal, followers: list[Follower], received_at: float, known: Known
    ) -> None:
        fresh, linked = self._split(event, followers, known)
        await all_done(
            self._open_all(event, fresh, received_at),
            *(self._resume(f, event, received_at, known) for f in linked),
        )

    def _split(
        self, event: OrderSignal, followers: list[Follower], known: Known
    ) -> tuple[list[Follower], list[Follower]]:
        """Followers without a link for this master order, and those with one."""
        return (
            [f for f in followers if self._key(f, event) not in known],
            [f for f in followers if self._key(f, event) in known],
        )

    async def _open_all(self, event: OrderSignal, followers: list[Follower], received_at: float) -> None:
        if not followers:
            return
        refusals = await asyncio.gather(*(self._unmirrored(f, event) for f in followers))
        decisions: dict[str, Decision | ReadFailed] = {
            f.id: r for f, r in zip(followers, refusals, strict=True) if r is not None
        }
        to_size = [f for f in followers if f.id not in decisions]
        if to_size:
            decisions.update(await self._sizer.size(event, to_size))
        await all_done(*(self._open(f, event, decisions[f.id], received_at) for f in followers))

    async def _open(
        self, follower: Follower, event: OrderSignal, decision: Decision | ReadFailed, received_at: float
    ) -> None:
        room, key = self._room, self._key(follower, event)
        async with room.locks.hold(key) as waited:
            if waited and await room.links.get(key) is not None:
                return  # another attempt opened it (else creating its intent finds out)
            link = base_link(follower, event)
            if isinstance(decision, ReadFailed):
                await self._unlinked(
                    key,
                    link,
                    decision.error.reason_code,
                    f"{type(decision.error).__name__}: {decision.error}",
                    event,
                    received_at=received_at,
                    outcome="failed",
                )
                return
            if isinstance(decision, Skip):
                await self._unlinked(
                    key, link, decision.reason_code, decision.reason, event, received_at=received_at
                )
                return
            rules = await room.rules(follower, event.symbol)
            link = msgspec.structs.replace(
                link,
                size=decision.size,
                price=on_tick(event.price, event.side, rules),
                trigger_price=on_tick(event.trigger_price, event.side, rules),
                client_order_id=linked_client_order_id(event.order_id, follower.id, event.version),
            )
            refusal = self._refusal(follower, link)
            if refusal is not None:
                outcome: Outcome = "dry_run" if refusal.reason_code == "dry_run" else "skipped"
                await self._unlinked(
                    key,
                    link,
                    refusal.reason_code,
                    refusal.reason,
                    event,
                    received_at=received_at,
                    outcome=outcome,
                )
                return
            await self._place(follower, key, link, event, received_at)

    async def _unmirrored(self, follower: Follower, event: OrderSignal) -> Skip | None:
        """Before sizing: a kind the subscription leaves out, or one the follower's venue has
        no native order for (never emulated: a stop watched by copytrade is no stop)."""
        config = self._room.orders_config(follower, event.master_id)
        refusal = None if config is None else kind_refusal(follower, event, config)
        if refusal is not None:
            return refusal
        symbol = follower.venue_symbol(event.symbol)
        try:
            capabilities = await follower.account.order_capabilities(symbol)
        except NotNative as exc:  # the venue takes no resting orders at all
            return Skip(follower_id=follower.id, reason_code=exc.reason_code, reason=str(exc))
        if event.kind not in capabilities.native:
            return Skip(
                follower_id=follower.id,
                reason_code=NotNative.reason_code,
                reason=f"{follower.config.exchange}: no native {event.kind} order for "
                f"{symbol}; never emulated",
            )
        return None

    def _refusal(self, follower: Follower, link: Link) -> Skip | None:
        """The policy's refusal (dry run included: no linked order then)."""
        verdict = self._room.admit(follower, link.side, link.order_size, link.price or link.trigger_price)
        if isinstance(verdict, Skip):
            return verdict
        if verdict == "dry_run":
            return Skip(
                follower_id=follower.id,
                reason_code="dry_run",
                reason="Dry run: decision recorded, no linked order",
            )
        return None

    async def _place(
        self, follower: Follower, key: str, link: Link, event: OrderSignal, received_at: float
    ) -> None:
        room = self._room
        intent = msgspec.structs.replace(link, state="placing", owner=room.instance)
        revision = await room.links.create(key, intent)
        if revision is None:
            return
        link, revision = await settle(room, follower, key, intent, revision, may_place=True, fresh=True)
        await self._placed(link, event, received_at)

    async def _placed(
        self, link: Link, event: OrderSignal, received_at: float, code: str = "mirrored"
    ) -> None:
        """The outcome of a linked order placed (or replaced) for this event."""
        outcomes, price = self._room.outcomes, link.price or link.trigger_price
        if link.state == "live":
            await outcomes.record(
                link,
                Origin.of(event, received_at),
                "submitted",
                code,
                f"Linked {link.kind} {link.side} order for master order "
                f"{link.order_id} v{link.version}: {link.order_size} at {price}",
            )
        elif link.placed:
            await outcomes.record(
                link,
                Origin.of(event, received_at),
                "filled",
                "linked_order_filled",
                f"Linked order filled at once ({link.filled} at {price})",
                filled=link.filled,
            )
        else:
            await outcomes.record(
                link,
                Origin.of(event, received_at),
                "failed" if link.failed else "skipped",
                link.reason_code or "refused",
                link.reason or "No linked order placed",
            )

    async def _unlinked(
        self,
        key: str,
        link: Link,
        code: str,
        reason: str,
        event: OrderSignal,
        *,
        received_at: float,
        outcome: Outcome = "skipped",
    ) -> None:
        """No follower order for this master order: recorded, and its fills copied as fills."""
        unlinked = msgspec.structs.replace(
            link, state="unlinked", client_order_id=None, reason_code=code, reason=reason[:500]
        )
        if await self._room.links.create(key, unlinked) is None:
            return
        await self._room.outcomes.record(unlinked, Origin.of(event, received_at), outcome, code, reason)

    async def _resume(self, follower: Follower, event: OrderSignal, received_at: float, known: Known) -> None:
        """A `new` seen again: carry out its intent if it was left half done, record again
        (the results stream drops what it has already)."""
        room, key = self._room, self._key(follower, event)
        async with room.locks.hold(key) as waited:
            got = await self._link(key, known, waited)
            if got is None:
                return
            link, revision = got
            if link.state == "placing" and link.version == event.version:
                link, revision = await settle(room, follower, key, link, revision, may_place=link.master_open)
            if link.version == event.version:
                await self._placed(link, event, received_at)

    # ---- amend -------------------------------------------------------------------------------

    async def _amend(
        self, event: OrderSignal, followers: list[Follower], received_at: float, known: Known
    ) -> None:
        fresh, linked = self._split(event, followers, known)  # fresh: mirrored from this version on
        await all_done(
            self._open_all(event, fresh, received_at),
            *(self._amend_one(f, event, received_at, known) for f in linked),
        )

    async def _amend_one(
        self, follower: Follower, event: OrderSignal, received_at: float, known: Known
    ) -> None:
        room, key = self._room, self._key(follower, event)
        async with room.locks.hold(key) as waited:
            got = await self._link(key, known, waited)
            if got is None:
                return
            link, revision = got
            if link.state in ("placing", "replacing"):
                done = link.version >= event.version
                link, revision = await settle(room, follower, key, link, revision, may_place=link.master_open)
                if done:  # this very amend, left half done: carried out now
                    await self._placed(link, event, received_at, "replaced")
                    return
            if link.version > event.version:
                return  # a later version applied: this one's outcome was recorded before it
            if link.version == event.version:  # applied before: recorded again (dropped if kept)
                await self._placed(link, event, received_at, _amend_code(link, follower))
                return
            if link.resolved == "killed":
                await self._reopen(follower, key, link, revision, event, received_at=received_at)
                return
            if link.state != "live":
                await self._not_amended(key, link, revision, event, received_at)
                return
            await self._amend_live(follower, key, link, revision, event, received_at=received_at)

    async def _not_amended(
        self, key: str, link: Link, revision: int, event: OrderSignal, received_at: float
    ) -> None:
        moved = msgspec.structs.replace(link, version=event.version, master_size=event.size)
        await self._room.links.update(key, moved, revision)
        code, reason = (
            ("not_mirrored", link.reason)
            if link.state == "unlinked"
            else ("linked_order_ended", "The linked order had ended (filled or cancelled): nothing to amend")
        )
        await self._room.outcomes.record(moved, Origin.of(event, received_at), "skipped", code, reason)

    async def _amend_live(
        self,
        follower: Follower,
        key: str,
        link: Link,
        revision: int,
        event: OrderSignal,
        *,
        received_at: float,
    ) -> None:
        room = self._room
        target = _target(link, event, await room.rules(follower, link.symbol))
        verdict = room.admit(follower, link.side, target.order_size, target.price or target.trigger_price)
        if isinstance(verdict, Skip) or verdict == "dry_run":
            skip = (
                verdict
                if isinstance(verdict, Skip)
                else Skip(follower_id=follower.id, reason_code="dry_run", reason="Dry run")
            )
            await self._sides.withdraw(
                follower, key, link, revision, skip, signal_id=event.signal_id, received_at=received_at
            )
            return
        capabilities = await follower.account.order_capabilities(follower.venue_symbol(link.symbol))
        in_place = (
            link.kind == "limit" and capabilities.amend == "in_place" and capabilities.amend_keeps_client_id
        )
        if in_place and await self._amend_in_place(
            follower, key, link, revision, target, event=event, received_at=received_at
        ):
            return
        by_venue = link.kind == "limit" and capabilities.amend == "replace"
        await self._replace(
            follower, key, link, revision, target, event=event, received_at=received_at, by_venue=by_venue
        )

    async def _reopen(
        self,
        follower: Follower,
        key: str,
        link: Link,
        revision: int,
        event: OrderSignal,
        *,
        received_at: float,
    ) -> None:
        """The kill switch cancelled the linked order; the master order, amended since the
        switch went off, gets a new linked order at this version for what is left."""
        room = self._room
        intent = msgspec.structs.replace(
            _target(link, event, await room.rules(follower, link.symbol)),
            state="placing",
            resolved="",
            client_order_id=linked_client_order_id(link.order_id, follower.id, event.version),
            previous=None,
            owner=room.instance,
        )
        if intent.order_size <= 0:  # it filled whole before the switch
            await self._not_amended(key, link, revision, event, received_at)
            return
        refusal = self._refusal(follower, intent)
        if refusal is not None:
            await room.outcomes.skipped(link, Origin.of(event, received_at), refusal)
            return
        revision = await room.links.update(key, intent, revision)
        reopened, _ = await settle(room, follower, key, intent, revision, may_place=True, fresh=True)
        await self._placed(reopened, event, received_at)

    async def _amend_in_place(
        self,
        follower: Follower,
        key: str,
        link: Link,
        revision: int,
        target: Link,
        *,
        event: OrderSignal,
        received_at: float,
    ) -> bool:
        """True when handled here; False: the venue cannot (the caller replaces)."""
        assert link.client_order_id is not None
        room, symbol = self._room, follower.venue_symbol(link.symbol)
        price = target.price if target.price != link.price else None
        size = target.order_size if target.size != link.size else None
        if price is None and size is None:  # nothing the follower's order shows changed
            await room.links.update(key, target, revision)
            await self._placed(target, event, received_at, "amended")
            return True
        try:
            ack = await follower.account.amend_order(link.client_order_id, symbol, price=price, size=size)
        except NotNative:
            return False
        except InvalidOrder as exc:  # not open any more: it ended meanwhile (filled, cancelled)
            found = await room.find(follower, link, link.client_order_id)
            if found is not None and found.status == "submitted":  # open: the venue refused it
                await self._amend_refused(link, exc, event, received_at)
                return True
            ended = await room.apply(follower, link, found)
            await self._not_amended(
                key, msgspec.structs.replace(ended, state="ended"), revision, event, received_at
            )
            return True
        except ExchangeError as exc:  # refused (funds, limits): the order stays as it was
            await self._amend_refused(link, exc, event, received_at)
            return True
        amended = msgspec.structs.replace(
            await room.apply(follower, target, ack), state="live" if ack.status == "submitted" else "ended"
        )
        await room.links.update(key, amended, revision)
        await self._placed(amended, event, received_at, "amended")
        return True

    async def _replace(
        self,
        follower: Follower,
        key: str,
        link: Link,
        revision: int,
        target: Link,
        *,
        event: OrderSignal,
        received_at: float,
        by_venue: bool,
    ) -> None:
        """Replace: by the venue in one request where it does (its new id derived from ours),
        else cancel (confirmed), then place under the next version's linked id."""
        assert link.client_order_id is not None
        room, symbol = self._room, follower.venue_symbol(link.symbol)
        price = target.price if target.price is not None else link.price
        next_id = (
            amended_client_id(link.client_order_id, price, target.order_size)
            if by_venue
            else linked_client_order_id(link.order_id, follower.id, event.version)
        )
        intent = msgspec.structs.replace(
            target,
            state="replacing",
            previous=link.client_order_id,
            client_order_id=next_id,
            owner=room.instance,
        )
        revision = await room.links.update(key, intent, revision)
        if by_venue:
            try:
                await follower.account.amend_order(
                    link.client_order_id, symbol, price=price, size=target.order_size
                )
            except (NotNative, InvalidOrder) as exc:  # then cancelled and placed by us
                log.info(
                    "event=venue_replace_refused follower=%s client_order_id=%s error=%s",
                    follower.id,
                    link.client_order_id,
                    type(exc).__name__,
                )
            except ExchangeError as exc:  # refused as a whole (the venue stops on failure)
                if await room.find(follower, intent, next_id) is None:
                    await room.links.update(key, link, revision)  # nothing changed: as it was
                    await self._amend_refused(link, exc, event, received_at)
                    return
        replaced, _ = await settle(room, follower, key, intent, revision, may_place=True, fresh=True)
        await self._placed(replaced, event, received_at, "replaced")

    async def _amend_refused(
        self, link: Link, error: ExchangeError, event: OrderSignal, received_at: float
    ) -> None:
        await self._room.outcomes.record(
            link,
            Origin.of(event, received_at),
            "failed",
            error.reason_code,
            f"Amend refused ({type(error).__name__}: {error}): the linked order stays at "
            f"{link.price or link.trigger_price} for {link.order_size}",
        )

    # ---- cancel ------------------------------------------------------------------------------

    async def _cancel(
        self, event: OrderSignal, followers: list[Follower], received_at: float, known: Known
    ) -> None:
        await all_done(*(self._cancel_one(f, event, received_at, known) for f in followers))

    async def _cancel_one(
        self, follower: Follower, event: OrderSignal, received_at: float, known: Known
    ) -> None:
        room, key = self._room, self._key(follower, event)
        async with room.locks.hold(key) as waited:
            got = await self._link(key, known, waited)
            if got is None:
                await room.outcomes.record(
                    base_link(follower, event),
                    Origin.of(event, received_at),
                    "skipped",
                    "not_mirrored",
                    "No linked order for this master order",
                )
                return
            link, revision = got
            if link.finished:
                await self._sides.cancel_recorded(follower, link, event.signal_id, received_at)
                return
            link = msgspec.structs.replace(  # the master order is over: written with what follows
                link,
                master_open=False,
                master_size=event.size,
                master_filled=max(link.master_filled, event.filled),
            )
            await self._sides.master_cancelled(
                follower, key, link, revision, event.signal_id, received_at=received_at
            )
