"""Copying one signal for a set of followers: their figures, the sizer's decisions, then per
follower policy -> claim -> send the order, concurrently under this replica's limit; once every
follower's order is out, each one's fill is read (where the venue's reply told none) and its
outcome recorded. No order waits behind another follower's fill read, and a replica's limit
bounds the calls in flight, not the orders waiting for their fills.

The same code runs a whole group's signal (the direct path) and one shard's work item (the
spread path): only the set of followers and the message it runs under differ.

Exactly-once effect: before an order, (signal, follower) is claimed with the sized order and
its deterministic client order id; a redelivered message recovers each claimed follower by
looking its order up at the venue instead of placing it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Protocol

import msgspec

from services.copier.context import CopierContext
from services.copier.copy.claims import ClaimBusy, Claims
from services.copier.copy.figures import FigureReader, ReadFailed
from services.copier.copy.holdings import Holdings
from services.copier.copy.results import Copy, Recording, ResultLog
from services.copier.copy.sizing import SizerClient
from services.copier.followers import Follower, Lineage
from services.copier.reconcile import Reconciler
from shared.errors import ExchangeError
from shared.exchange.placing import place_idempotently, read_fill_of
from shared.exchange.port import OrderAck, OrderCommand
from shared.messages import (
    Claim,
    Decision,
    FollowerSnapshot,
    SizedOrder,
    Skip,
    TradeSignal,
    client_order_id_for,
)

log = logging.getLogger("copytrade.copier")
STORE_TIMEOUT_S = 30.0
FINISH_DEFER_S = 5.0  # most a sent order's fill read waits for the signal's other shards


class FillRouter(Protocol):
    """Takes the master fills that followers' linked orders carry (services/copier/orders)."""

    async def take_fills(
        self, signal: TradeSignal, followers: list[Follower], received_at: float
    ) -> list[Follower]: ...


@dataclass(frozen=True)
class Sent:
    """A follower's order, out at the venue; its fill is read once the signal's orders are."""

    claim: Claim
    command: OrderCommand
    ack: OrderAck
    sent_at: float
    recovered: bool


class Sending:
    """Per signal, this replica's followers whose order is not out yet, over every shard of it
    in hand: a sent order's fill read and record wait for them (a bounded time), so that one
    shard's bookkeeping does not take the CPU (and the venue's attention) from the same
    signal's orders in other shards. Another signal's orders are not waited for."""

    def __init__(self) -> None:
        self._left: dict[str, int] = {}
        self._out: dict[str, asyncio.Event] = {}

    def add(self, signal_id: str, followers: int) -> None:
        if followers <= 0:
            return
        self._left[signal_id] = self._left.get(signal_id, 0) + followers
        self._out.setdefault(signal_id, asyncio.Event())

    def one_out(self, signal_id: str) -> None:
        left = self._left.get(signal_id, 0) - 1
        if left > 0:
            self._left[signal_id] = left
            return
        self._left.pop(signal_id, None)
        out = self._out.pop(signal_id, None)
        if out is not None:
            out.set()

    async def all_out(self, signal_id: str, within_s: float) -> None:
        out = self._out.get(signal_id)
        if out is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await out.wait()


class AllOut:
    """Counts a signal's followers whose order is not out yet (sent, refused, failed), here
    and (`Sending`) in the replica's other shards of the signal."""

    def __init__(self, signal_id: str, followers: int, sending: Sending) -> None:
        self._signal_id, self._left, self._sending = signal_id, followers, sending
        self._out = asyncio.Event()
        sending.add(signal_id, followers)
        if not followers:
            self._out.set()

    def one_out(self) -> None:
        if self._left <= 0:
            return
        self._left -= 1
        self._sending.one_out(self._signal_id)
        if self._left <= 0:
            self._out.set()

    def close(self) -> None:
        """Count whatever never went out (a copy cancelled before it began) as out."""
        while self._left > 0:
            self.one_out()

    async def wait(self) -> None:
        """Until these orders are all out, then (at most FINISH_DEFER_S) the signal's others."""
        await self._out.wait()
        await self._sending.all_out(self._signal_id, FINISH_DEFER_S)


class CopyExecutor:
    """Copies signals for followers of one group; one per replica, shared by both paths so the
    replica's concurrency limit bounds all of its orders."""

    def __init__(self, ctx: CopierContext, *, reconciler: Reconciler | None = None) -> None:
        book, metrics, settings = ctx.book, ctx.metrics, ctx.settings
        self._book, self._metrics, self._settings, self._instance = book, metrics, settings, ctx.instance
        self._group = book.group
        self._limit = asyncio.Semaphore(settings.concurrency)
        self._sending = Sending()
        self.policy = ctx.policy
        self.claims = Claims(ctx.js, ctx.claims, timeout_s=settings.order_timeout_s)
        self.holdings = Holdings(ctx.ledger)
        self._figures = FigureReader(
            book=book, policy=self.policy, holdings=self.holdings, settings=settings, limit=self._limit
        )
        self._sizer = SizerClient(ctx.nc, book, metrics)
        self._results = ResultLog(ctx.js, metrics, self._group)
        self._reconciler = reconciler
        # (master, symbol) -> newest signal shown to the reconciler: one per master position
        self._observed: dict[tuple[str, str], float] = {}
        self.mirroring: FillRouter | None = None  # set by the service: mirrored fills go there

    async def execute(
        self,
        signal: TradeSignal,
        followers: list[Follower],
        received_at: float,
        *,
        redelivered: bool,
        lineage: Lineage,
        shard: int | None = None,
    ) -> None:
        """Copy `signal` for `followers`; return once every outcome is stored, raise if one
        could not be (the message is then retried, and claims make the retry safe)."""
        for follower in followers:
            follower.resume(lineage)
        if self.mirroring is not None:  # a linked order carries it: never copied twice
            followers = await self.mirroring.take_fills(signal, followers, received_at)
        decisions = await self._decide(signal, followers)
        recording, out = Recording(), AllOut(signal.signal_id, len(followers), self._sending)
        try:
            outcomes = await asyncio.gather(
                *(
                    self._copy_one(
                        Copy(signal, f, self._group, received_at),
                        decisions[f.id],
                        redelivered,
                        recording,
                        out,
                    )
                    for f in followers
                ),
                return_exceptions=True,
            )
        finally:
            out.close()
        await self._results.stored(recording, STORE_TIMEOUT_S)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            raise failures[0]
        self._observe(signal)
        where = "" if shard is None else f" shard={shard}"
        log.info(
            "event=signal_copied signal_id=%s%s followers=%d %s seconds=%.3f",
            signal.signal_id,
            where,
            len(followers),
            " ".join(f"{k}={v}" for k, v in sorted(recording.tally.items())),
            time.time() - received_at,
        )

    def _observe(self, signal: TradeSignal) -> None:
        """Show the reconciler the master's newest position (shards may finish out of order)."""
        position = (signal.master_id, signal.symbol)
        if self._reconciler is None or signal.executed_at < self._observed.get(position, 0):
            return
        self._observed[position] = signal.executed_at
        self._reconciler.observe(signal)

    async def _decide(
        self, signal: TradeSignal, followers: list[Follower]
    ) -> dict[str, Decision | ReadFailed]:
        """Each follower's figures, then the sizer's decision for those that could be read."""
        figures = await self._figures.read_all(signal, followers)
        decided: dict[str, Decision | ReadFailed] = {
            f.follower_id: f for f in figures if not isinstance(f, FollowerSnapshot)
        }
        ready = [f for f in figures if isinstance(f, FollowerSnapshot)]
        decided.update(await self._sizer.size(signal, ready))
        return decided

    async def _copy_one(
        self,
        copy: Copy,
        decision: Decision | ReadFailed,
        redelivered: bool,
        recording: Recording,
        out: AllOut,
    ) -> None:
        try:
            async with self._limit:  # claim only when about to place: a crash strands few claims
                sent = await self._copy_one_now(copy, decision, redelivered, recording)
        finally:
            out.one_out()
        if sent is not None:
            await out.wait()  # every follower's order is out before a fill is read
            async with self._limit:
                await self._finish(copy, sent, recording)

    async def _copy_one_now(
        self, copy: Copy, decision: Decision | ReadFailed, redelivered: bool, recording: Recording
    ) -> Sent | None:
        """Up to the order sent; None when the outcome is recorded already (a skip, a failure,
        a copy recovered)."""
        key = f"{copy.signal.signal_id}.{copy.follower.id}"
        if redelivered:
            entry = await self.claims.get(key)
            if entry is not None:
                return await self._recover(copy, key, entry, recording)
        if isinstance(decision, ReadFailed):
            await self._results.record(copy.failed(decision.error), recording)
            return None
        verdict = decision if isinstance(decision, Skip) else self.policy.admit(copy.follower, decision)
        if isinstance(verdict, Skip):
            await self._results.record(copy.skipped(verdict), recording)
            return None
        assert isinstance(decision, SizedOrder)
        cid = client_order_id_for(copy.signal.signal_id, copy.follower.id)
        if verdict == "dry_run":
            await self._results.record(copy.dry_run(decision, cid), recording)
            return None
        claim = Claim(owner=self._instance, at=time.time(), order=decision, client_order_id=cid)
        revision = await self.claims.claim(key, claim)
        if revision is None:
            entry = await self.claims.get(key)
            if entry is None:
                raise ClaimBusy(f"{key}: claimed by another attempt, then gone")
            return await self._recover(copy, key, entry, recording)
        return await self._place(copy, (key, claim, revision), recording)

    async def _place(
        self, copy: Copy, held: tuple[str, Claim, int], recording: Recording, *, recovered: bool = False
    ) -> Sent | None:
        """Send the claimed order (its fill is read by `_finish`); a refusal or a failure is
        recorded here, once the claim is marked ended: an attempt that took the claim over
        meanwhile may have placed the order, and its outcome is the one that counts."""
        key, claim, revision = held
        order, follower = claim.order, copy.follower
        verdict = self.policy.admit(follower, order)  # again: it may have changed while queued
        if isinstance(verdict, Skip):
            await self._end(key, claim, revision)
            await self._results.record(copy.skipped(verdict), recording)
            return None
        command = OrderCommand(
            client_order_id=claim.client_order_id,
            symbol=copy.symbol,
            side=order.side,
            size=order.size,
            size_type=order.size_type,
            reference_price=copy.signal.price,
            limit_price=order.limit_price,
        )
        sent_at = time.time()
        self._metrics.internal_latency.observe(sent_at - copy.received_at)
        self._metrics.in_flight.inc()
        try:
            ack = await place_idempotently(
                follower.account, command, timeout_s=self._settings.order_timeout_s, send_only=True
            )
        except ExchangeError as exc:
            failed = copy.failed(exc, order=order, client_order_id=claim.client_order_id, sent_at=sent_at)
            await self._end(key, claim, revision)
            await self._results.record(failed, recording)
            return None
        finally:
            self._metrics.in_flight.dec()
        self._metrics.copy_latency.observe((ack.accepted_at or time.time()) - copy.signal.executed_at)
        return Sent(claim, command, ack, sent_at, recovered)

    async def _finish(self, copy: Copy, sent: Sent, recording: Recording) -> None:
        """The sent order's fill read (where its reply told none), applied to the follower's
        figures and copied holding, and its outcome recorded."""
        order, follower = sent.claim.order, copy.follower
        try:
            ack = await read_fill_of(
                follower.account, sent.command, sent.ack, timeout_s=self._settings.order_timeout_s
            )
            follower.apply_fill(sent.command.symbol, order.side, ack)
            await self.holdings.record(follower, copy.signal.master_id, copy.signal.symbol, order.side, ack)
            result = copy.placed(order, ack, sent.sent_at, recovered=sent.recovered)
        except ExchangeError as exc:
            result = copy.failed(
                exc, order=order, client_order_id=sent.claim.client_order_id, sent_at=sent.sent_at
            )
        await self._results.record(result, recording)

    async def _end(self, key: str, claim: Claim, revision: int) -> None:
        """Mark the claim's attempt ended without an order, or raise `ClaimBusy` when another
        attempt took the claim over meanwhile (the message is retried; that attempt's order, if
        it placed one, is then found and recorded)."""
        if not await self.claims.end(key, claim, revision):
            raise ClaimBusy(f"{key}: taken over by another attempt while this one failed")

    async def _recover(
        self, copy: Copy, key: str, entry: tuple[Claim, int], recording: Recording
    ) -> Sent | None:
        """A claim exists: its outcome is recorded, or its order is found, or its attempt ended
        without one, or it is taken over."""
        claim, revision = entry
        follower = copy.follower
        follower.forget_figures()  # another attempt may have traded the account: read it again
        if await self._results.recorded(follower.id, copy.signal.signal_id):
            recording.tally["already_recorded"] += 1
            return None
        found = await follower.account.find_order(claim.client_order_id, copy.symbol)
        if found is not None:
            await self.holdings.record(
                follower, copy.signal.master_id, copy.signal.symbol, claim.order.side, found
            )
            await self._results.record(copy.placed(claim.order, found, None, recovered=True), recording)
            return None
        if claim.ended:  # that attempt's failure or skip was not stored: recorded as a failure
            error = ExchangeError("an earlier attempt of this copy ended without an order")
            failed = copy.failed(error, order=claim.order, client_order_id=claim.client_order_id)
            await self._results.record(failed, recording)
            return None
        if time.time() - claim.at < self._settings.order_timeout_s * 2:
            raise ClaimBusy(f"{key} claimed {time.time() - claim.at:.1f}s ago by {claim.owner}")
        taken = msgspec.structs.replace(claim, owner=self._instance, at=time.time())
        revision = await self.claims.take_over(key, taken, revision)
        log.info(
            "event=claim_taken_over signal_id=%s follower=%s client_order_id=%s",
            copy.signal.signal_id,
            follower.id,
            claim.client_order_id,
        )
        return await self._place(copy, (key, taken, revision), recording, recovered=True)
