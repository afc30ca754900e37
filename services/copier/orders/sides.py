"""When one side fills first.

- The master's order filled (its fill signals, counted once each, reach its size) while the
  follower's linked order rests: that fill is not copied again as a market order (no double).
  `wait_s` later (the sweep), what the linked order has not filled is cancelled, then either
  chased (`chase`: an immediate-or-cancel order for the rest within the follower's slippage
  guard, through the policy) or left (`cancel`), recorded either way.
- The follower's linked order filled and the master cancelled: the part beyond what the
  master's own fills account for is kept (`keep`: in the ledger, the master's next exit closes
  it) or sold back (`unwind`: an order through the policy), recorded either way."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from decimal import Decimal

import msgspec

from services.copier.followers import Follower
from services.copier.orders.intents import settle
from services.copier.orders.links import REMEMBERED_FILLS, ZERO, Link, event_id
from services.copier.orders.outcomes import Origin
from services.copier.orders.room import Room
from services.copier.orders.sizing import INTERNAL, on_step, on_tick
from shared.errors import ExchangeError
from shared.exchange.port import OrderAck, OrderCommand
from shared.messages import Outcome, Side, Skip, TradeSignal

log = logging.getLogger("copytrade.mirroring")


def _other(side: Side) -> Side:
    return "sell" if side == "buy" else "buy"


def _after_cancel(link: Link, excess: Decimal, *, keep: bool) -> tuple[str, Outcome, str, str] | None:
    """(resolved, outcome, reason code, reason) after the master's cancel; None: unwind."""
    cid = link.client_order_id
    if link.filled <= 0:
        return (
            "cancelled",
            "skipped",
            "cancelled",
            f"The master cancelled order {link.order_id}: linked order {cid} cancelled, nothing had filled",
        )
    if excess <= 0:
        return (
            "cancelled",
            "filled",
            "cancelled_after_fill",
            f"Linked order {cid} cancelled "
            f"with the master's; its fill of {link.filled} matches the master's own and stays",
        )
    if keep:
        return (
            "kept",
            "filled",
            "follower_filled_first_kept",
            f"The linked order filled "
            f"{excess} beyond the master's fills before the master cancelled: kept in the "
            "copied holding (the master's next exit closes it)",
        )
    return None


class Sides:
    def __init__(self, room: Room, wake_at: Callable[[float], None]) -> None:
        self._room, self._wake_at = room, wake_at

    # ---- the master filled -------------------------------------------------------------------

    async def take_fills(
        self, signal: TradeSignal, followers: list[Follower], received_at: float
    ) -> list[Follower]:
        """The followers to copy this fill for: those that mirror its master order are left
        out, their linked order carries it (their outcome is recorded here)."""
        room = self._room
        if signal.exchange == INTERNAL:
            return followers
        candidates = [f for f in followers if room.orders_config(f, signal.master_id) is not None]
        if not candidates:
            return followers
        taken = await asyncio.gather(*(self._master_fill(f, signal, received_at) for f in candidates))
        mirrored = {f.id for f, took in zip(candidates, taken, strict=True) if took}
        return [f for f in followers if f.id not in mirrored]

    async def _master_fill(self, follower: Follower, signal: TradeSignal, received_at: float) -> bool:
        room = self._room
        key = room.links.key(follower.id, signal.master_id, signal.order_id)
        async with room.locks.hold(key):
            got = await room.links.get(key)
            if got is None or got[0].state == "unlinked":
                return False
            link, revision = got
            if signal.signal_id not in link.master_fills:
                link, revision = await self._count(follower, key, link, revision, signal)
            if link.state == "live":
                link = await self._credit_open(follower, key, link, revision)
            await room.outcomes.record(
                link,
                Origin.of(signal, received_at),
                "skipped",
                "mirrored_order",
                f"A fill of master order {link.order_id}, mirrored by linked order "
                f"{link.client_order_id}: not copied again",
                size=signal.filled_base,
            )
            return True

    async def _count(
        self, follower: Follower, key: str, link: Link, revision: int, signal: TradeSignal
    ) -> tuple[Link, int]:
        filled = link.master_filled + signal.filled_base
        whole = signal.fill_id == "" or filled >= link.master_size
        config = self._room.orders_config(follower, link.master_id)
        wait_s = 0.0 if config is None else config.master_filled_first.wait_s
        due = link.due
        if whole and due is None and not link.finished:
            due = time.time() + wait_s
        counted = msgspec.structs.replace(
            link,
            master_filled=filled,
            master_open=link.master_open and not whole,
            due=due,
            master_fills=[*link.master_fills, signal.signal_id][-REMEMBERED_FILLS:],
        )
        revision = await self._room.links.update(key, counted, revision)
        if due is not None:
            self._wake_at(due)
        return counted, revision

    async def _credit_open(self, follower: Follower, key: str, link: Link, revision: int) -> Link:
        """The master filled: what the follower's linked order, still open, filled so far
        enters the ledger now (a venue that fails to answer leaves it to the sweep)."""
        room = self._room
        assert link.client_order_id is not None
        try:
            ack = await room.find(follower, link, link.client_order_id)
        except ExchangeError as exc:
            log.info(
                "event=linked_order_read_failed follower=%s client_order_id=%s error=%s",
                follower.id,
                link.client_order_id,
                type(exc).__name__,
            )
            return link
        if ack is None or ack.status != "submitted":
            return link  # ended: the sweep applies it whole, with its outcome
        link, _, _ = await room.credit(follower, key, link, revision, ack)
        return link

    async def resolve_due(self, follower: Follower, key: str, link: Link, revision: int) -> None:
        """`wait_s` after the master filled: the linked order's rest cancelled, then chased or
        left."""
        room = self._room
        before = link.filled
        if link.state in ("placing", "replacing"):
            link, revision = await settle(room, follower, key, link, revision, may_place=False)
        if link.state == "live" and link.client_order_id is not None:
            ack = await room.cancel(follower, link, link.client_order_id)
            link = msgspec.structs.replace(await room.apply(follower, link, ack), state="ended")
            revision = await room.links.update(key, link, revision)
        rules = await room.rules(follower, link.symbol)
        unfilled = on_step(link.size - link.filled, rules)
        signal_id = event_id(key, "master_filled_first")
        config = room.orders_config(follower, link.master_id)
        if unfilled <= 0:
            await self._resolve(key, link, revision, "both_filled")
            if link.filled > before:
                await room.outcomes.record(
                    link,
                    Origin(signal_id),
                    "filled",
                    "linked_order_filled",
                    "The master's order and the linked order both filled",
                    filled=link.filled - before,
                )
        elif config is None or config.master_filled_first.then == "cancel":
            await self._resolve(key, link, revision, "cancelled")
            wait_s = 0.0 if config is None else config.master_filled_first.wait_s
            await room.outcomes.record(
                link,
                Origin(signal_id),
                "filled" if link.filled > 0 else "skipped",
                "master_filled_first_cancelled",
                f"The master's order filled; {wait_s:g}s later the linked order had filled "
                f"{link.filled} of {link.size}: the rest was cancelled",
                filled=link.filled or None,
            )
        else:
            await self._chase(follower, key, link, revision, unfilled, signal_id=signal_id)

    async def _chase(
        self, follower: Follower, key: str, link: Link, revision: int, unfilled: Decimal, *, signal_id: str
    ) -> None:
        room = self._room
        price = link.price or link.trigger_price or ZERO
        tolerance = (follower.config.risk.max_price_deviation_pct or ZERO) / 100
        bound = price * (1 + tolerance) if link.side == "buy" else price * (1 - tolerance)
        limit = on_tick(bound, link.side, await room.rules(follower, link.symbol))
        size = unfilled
        if link.side == "sell":
            size = min(size, await room.holdings.of(follower, link.master_id, link.symbol, fresh=True))
        verdict = room.admit(follower, link.side, size, price, limit)
        if isinstance(verdict, Skip) or verdict == "dry_run" or size <= 0:
            await self._resolve(key, link, revision, "cancelled")
            code, why = (
                (verdict.reason_code, verdict.reason)
                if isinstance(verdict, Skip)
                else ("dry_run" if verdict == "dry_run" else "no_position", "nothing to chase with")
            )
            await room.outcomes.record(
                link, Origin(signal_id), "skipped", code, f"Chase of {unfilled} not placed: {why}"
            )
            return
        intent = msgspec.structs.replace(link, resolved="chasing", owner=room.instance)
        revision = await room.links.update(key, intent, revision)
        command = OrderCommand(
            client_order_id=event_id(key, "chase"),
            symbol=follower.venue_symbol(link.symbol),
            side=link.side,
            size=size,
            size_type="base",
            reference_price=price,
            limit_price=limit,
        )
        await self._finish(follower, key, intent, revision, command, signal_id=signal_id, resolved="chased")

    async def resume_chase(self, follower: Follower, key: str, link: Link, revision: int) -> None:
        """A chase left half done: found and finished, else (past the lease) decided again."""
        await self._resume(follower, key, link, revision, "chase", resolved="chased")

    # ---- the follower filled -----------------------------------------------------------------

    async def master_cancelled(
        self, follower: Follower, key: str, link: Link, revision: int, signal_id: str, *, received_at: float
    ) -> None:
        """The master cancelled: the linked order cancelled (confirmed), its fill applied. The
        link (the master order over, the follower order ended) is written once, with how it was
        resolved: a crash before that write is carried out again from the redelivered event
        (a cancel repeated finds the order ended; its fill is applied once, by client id)."""
        room = self._room
        if link.state == "unlinked":
            await self._resolve(key, link, revision, "unlinked")
            await room.outcomes.record(
                link,
                Origin(signal_id, received_at=received_at),
                "skipped",
                "not_mirrored",
                link.reason or "No linked order",
            )
            return
        ack: OrderAck | None = None  # the follower cancel's confirmation, when this attempt makes it
        try:
            if link.state in ("placing", "replacing"):
                link, revision = await settle(room, follower, key, link, revision, may_place=False)
            if link.state == "live" and link.client_order_id is not None:
                ack = await room.cancel(follower, link, link.client_order_id)
                link = msgspec.structs.replace(await room.apply(follower, link, ack), state="ended")
        except ExchangeError as exc:
            room.metrics.failed("cancel")
            await room.links.update(key, link, revision)  # the master order is over: the sweep cancels
            await room.outcomes.record(
                link,
                Origin(signal_id, received_at=received_at),
                "failed",
                exc.reason_code,
                f"Cancel failed ({type(exc).__name__}: {exc}): the sweep cancels it",
            )
            return
        await self.after_master_cancel(follower, key, link, revision, signal_id, ack=ack)

    async def after_master_cancel(
        self,
        follower: Follower,
        key: str,
        link: Link,
        revision: int,
        signal_id: str,
        *,
        ack: OrderAck | None = None,
    ) -> None:
        """How the link ends after the master's cancel (kept, unwound, cancelled), recorded
        with the follower cancel's confirmation (`ack`) when this attempt made it."""
        config = self._room.orders_config(follower, link.master_id)
        excess = await self._excess(follower, link)
        keep = config is None or config.follower_filled_first == "keep"
        decided = _after_cancel(link, excess, keep=keep)
        if decided is None:
            await self._unwind(follower, key, link, revision, excess, signal_id=signal_id)
            return
        resolved, outcome, code, reason = decided
        await self._resolve(key, link, revision, resolved)
        await self._room.outcomes.record(
            link, Origin(signal_id), outcome, code, reason, ack=ack, filled=link.filled or None
        )

    async def cancel_recorded(
        self, follower: Follower, link: Link, signal_id: str, received_at: float
    ) -> None:
        """A master cancel met a link already finished (this cancel handled before a crash, or
        the sweep first): its outcome recorded (again: the results stream drops a repeat)."""
        decided = None
        if link.resolved in ("cancelled", "kept"):
            decided = _after_cancel(link, await self._excess(follower, link), keep=link.resolved == "kept")
        ended: dict[str, tuple[Outcome, str, str]] = {
            "unwound": (
                "filled",
                "follower_filled_first_unwound",
                "The linked order's fill beyond the master's was sold back",
            ),
            "unlinked": ("skipped", "not_mirrored", link.reason or "No linked order"),
        }
        outcome, code, reason = (
            decided[1:]
            if decided is not None
            else ended.get(
                link.resolved,
                (
                    "skipped",
                    "linked_order_ended",
                    f"The linked order had ended before the master's cancel ({link.resolved})",
                ),
            )
        )
        await self._room.outcomes.record(
            link,
            Origin(signal_id, received_at=received_at),
            outcome,
            code,
            reason,
            filled=link.filled or None,
        )

    async def _excess(self, follower: Follower, link: Link) -> Decimal:
        """What the follower's linked orders filled beyond the master's own fills' share."""
        matched = link.size * link.master_filled / link.master_size if link.master_size else ZERO
        return on_step(link.filled - matched, await self._room.rules(follower, link.symbol))

    async def _unwind(
        self, follower: Follower, key: str, link: Link, revision: int, excess: Decimal, *, signal_id: str
    ) -> None:
        room, side = self._room, _other(link.side)
        if side == "sell":
            excess = min(excess, await room.holdings.of(follower, link.master_id, link.symbol, fresh=True))
        price = link.price or link.trigger_price or ZERO
        verdict = room.admit(follower, side, excess, price)
        if isinstance(verdict, Skip) or verdict == "dry_run" or excess <= 0:
            await self._resolve(key, link, revision, "kept")
            why = verdict.reason if isinstance(verdict, Skip) else "nothing to unwind"
            await room.outcomes.record(
                link,
                Origin(signal_id),
                "skipped",
                "unwind_refused",
                f"Unwind of {excess} not placed ({why}): kept in the copied holding",
            )
            return
        intent = msgspec.structs.replace(link, resolved="unwinding", owner=room.instance)
        revision = await room.links.update(key, intent, revision)
        command = OrderCommand(
            client_order_id=event_id(key, "unwind"),
            symbol=follower.venue_symbol(link.symbol),
            side=side,
            size=excess,
            size_type="base",
            reference_price=price,
        )
        await self._finish(follower, key, intent, revision, command, signal_id=signal_id, resolved="unwound")

    async def resume_unwind(self, follower: Follower, key: str, link: Link, revision: int) -> None:
        await self._resume(follower, key, link, revision, "unwind", resolved="unwound")

    async def withdraw(
        self,
        follower: Follower,
        key: str,
        link: Link,
        revision: int,
        skip: Skip,
        *,
        signal_id: str,
        received_at: float,
    ) -> None:
        """The policy refuses the amended order: the linked order is cancelled, not left at a
        price the master no longer wants."""
        room = self._room
        assert link.client_order_id is not None
        try:
            ack = await room.cancel(follower, link, link.client_order_id)
        except ExchangeError as exc:
            room.metrics.failed("cancel")
            await room.outcomes.failed(link, Origin(signal_id, received_at=received_at), exc)
            return
        ended = msgspec.structs.replace(
            await room.apply(follower, link, ack),
            state="ended",
            reason_code=skip.reason_code,
            reason=skip.reason,
        )
        await self._resolve(key, ended, revision, "refused")
        await room.outcomes.record(
            ended,
            Origin(signal_id, received_at=received_at),
            "skipped",
            skip.reason_code,
            f"{skip.reason}: the linked order was cancelled",
        )

    # ---- shared --------------------------------------------------------------------------------

    async def _finish(
        self,
        follower: Follower,
        key: str,
        intent: Link,
        revision: int,
        command: OrderCommand,
        *,
        signal_id: str,
        resolved: str,
    ) -> None:
        """Place a chase or an unwind (its id derived from the link), apply its fill, record."""
        room = self._room
        try:
            ack = await room.place(follower, command)
        except ExchangeError as exc:
            await self._resolve(key, intent, revision, "cancelled" if resolved == "chased" else "kept")
            await room.outcomes.failed(intent, Origin(signal_id), exc)
            return
        await self._settled(
            follower,
            key,
            intent,
            revision,
            ack,
            signal_id=signal_id,
            resolved=resolved,
            limit=command.limit_price,
        )

    async def _settled(
        self,
        follower: Follower,
        key: str,
        intent: Link,
        revision: int,
        ack: OrderAck,
        *,
        signal_id: str,
        resolved: str,
        limit: Decimal | None = None,
    ) -> None:
        room = self._room
        side = intent.side if resolved == "chased" else _other(intent.side)  # an unwind: the other side
        await room.holdings.record(follower, intent.master_id, intent.symbol, side, ack)
        follower.forget_figures()
        done = msgspec.structs.replace(
            intent,
            resolved=resolved,
            applied={**intent.applied, ack.client_order_id: ack.filled_base or ZERO}
            if resolved == "chased"
            else intent.applied,
        )
        await room.links.update(key, done, revision)
        filled = ack.status != "expired" and bool(ack.filled_base)
        code = f"follower_filled_first_{resolved}" if resolved == "unwound" else resolved
        why = (
            f"{'Chased' if resolved == 'chased' else 'Unwound'}: {ack.filled_base or 0} "
            f"{side} at {ack.avg_price}"
            if filled
            else f"Immediate-or-cancel order at {limit} found no price within the slippage guard"
        )
        await room.outcomes.record(
            done,
            Origin(signal_id),
            "filled" if filled else "skipped",
            code if filled else f"{resolved}_not_filled",
            why,
            ack=ack,
        )

    async def _resume(
        self, follower: Follower, key: str, link: Link, revision: int, what: str, *, resolved: str
    ) -> None:
        room = self._room
        ack = await room.find(follower, link, event_id(key, what))
        signal_id = event_id(key, "master_filled_first" if what == "chase" else "master_cancelled")
        if ack is not None and ack.status != "submitted":
            await self._settled(follower, key, link, revision, ack, signal_id=signal_id, resolved=resolved)
        elif time.time() - link.at >= room.lease_s:
            again = msgspec.structs.replace(link, resolved="")
            if what == "chase":
                await self.resolve_due(follower, key, again, revision)
            else:
                await self.after_master_cancel(follower, key, again, revision, signal_id)

    async def _resolve(self, key: str, link: Link, revision: int, resolved: str) -> None:
        done = msgspec.structs.replace(link, resolved=resolved, due=None)
        await self._room.links.update(key, done, revision)
        log.info(
            "event=link_resolved key=%s follower=%s order_id=%s resolved=%s",
            key,
            link.follower_id,
            link.order_id,
            resolved,
        )
