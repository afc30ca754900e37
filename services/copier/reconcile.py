"""Reconciliation on the ledger, per (master, symbol) and follower:

- ledger vs real balance: a real balance below the copied holding means the follower sold by
  hand; the holding is clipped to it and reported (`copytrade status`);
- copied holding vs target (the master's copied position × the follower's sizing scale): the
  drift is exported, recorded and alerted, and optionally healed through the same policy as a
  copy (kill switch, state, caps, dry-run), the same claimed idempotent order path, and the
  ledger. A heal never buys back what the follower sold by hand.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from decimal import ROUND_DOWN, Decimal

import msgspec
import nats
from msgspec import Struct
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError

from services.copier.context import CopierContext
from services.copier.copy.holdings import Holdings
from services.copier.followers import Follower
from services.copier.metrics import CopierMetrics
from shared import bus
from shared.errors import CopytradeError
from shared.exchange.placing import place_idempotently
from shared.exchange.port import OrderAck, OrderCommand
from shared.ledger import PositionReport, holding_key, master_key
from shared.messages import AnySignal, Side, SizedOrder, Skip, TradeSignal, client_order_id_for
from shared.sizing_modes import position_scale

log = logging.getLogger("copytrade.reconcile")
DRIFT_PREFIX = "drift."


class MasterPosition(Struct, frozen=True, kw_only=True):
    master_id: str
    symbol: str
    signal_id: str  # the newest signal seen: a heal is claimed once per master position
    equity: Decimal
    price: Decimal
    legacy_amount: Decimal | None  # from a master that predates the ledger: its whole balance


class Drift(Struct, frozen=True, kw_only=True):
    follower_id: str
    symbol: str
    expected: Decimal
    actual: Decimal
    ratio: Decimal  # |actual - expected| / expected
    at: float
    master_id: str = ""
    clipped: Decimal = Decimal(0)  # removed from the holding: the follower sold this by hand
    stable: bool = False  # seen the same in two rounds in a row: safe to act on
    revision: int = 0  # the holding's ledger revision it was judged on


class Reconciler:
    """Judges drift only on what it saw twice: a discrepancy is acted on (clipped, healed) when
    two rounds in a row saw the same ledger entries, the same real balance and the same target.
    A copy in flight (its order filled at the venue, its ledger write not yet made) changes the
    ledger before the next round, so it is never mistaken for a sale by hand or healed twice."""

    def __init__(self, ctx: CopierContext, *, settle_s: float = 0.0) -> None:
        # settle_s: how long a discrepancy must stay the same before it is acted on; a copy
        # whose replica died between its order and its ledger write is redelivered and
        # recovered within about twice the ack wait
        settings = ctx.settings
        self._settle_s = settle_s
        self._book, self._metrics, self._policy = ctx.book, ctx.metrics, ctx.policy
        self._group = ctx.book.group
        self._ledger, self._holdings = ctx.ledger, Holdings(ctx.ledger)
        self._control, self._claims, self._js = ctx.control.kv, ctx.claims, ctx.js
        self._threshold, self._heal = settings.reconcile_threshold, settings.reconcile_heal
        self._order_timeout_s = settings.order_timeout_s
        self._master: dict[tuple[str, str], MasterPosition] = {}
        # holding key -> (last round's observation, when it was first seen the same)
        self._seen: dict[str, tuple[tuple[object, ...], float]] = {}
        self._encoder = msgspec.json.Encoder(decimal_format="string")
        self._decoder = msgspec.json.Decoder(AnySignal)

    def observe(self, signal: TradeSignal) -> None:
        """Track which (master, symbol) positions exist, from each copied signal."""
        legacy = None
        if signal.copied_position_before is None:
            sign = 1 if signal.side == "buy" else -1
            legacy = max(Decimal(0), signal.master_position_before + sign * signal.filled_base)
        self._master[(signal.master_id, signal.symbol)] = MasterPosition(
            master_id=signal.master_id,
            symbol=signal.symbol,
            signal_id=signal.signal_id,
            equity=signal.master_equity,
            price=signal.price,
            legacy_amount=legacy,
        )

    async def prime(self) -> None:
        """After a restart: each master's newest signal says which position to reconcile."""
        for master in sorted(self._book.masters):
            try:
                msg = await self._js.get_last_msg(bus.SIGNALS_STREAM, bus.signal_subject(master))
            except NotFoundError:
                continue
            signal = None if msg.data is None else self._decoder.decode(msg.data)
            # an order event carries no fill: the master's next fill shows its position
            if isinstance(signal, TradeSignal) and (master, signal.symbol) not in self._master:
                self.observe(signal)

    async def run(self, interval_s: float) -> None:
        await _quietly(self.prime(), self._metrics)
        while True:
            await asyncio.sleep(interval_s)
            await _quietly(self.reconcile(), self._metrics)

    async def reconcile(self) -> list[Drift]:
        """One round over every follower and (master, symbol); the drifts over the threshold."""
        drifts = []
        for master in list(self._master.values()):
            amount, master_revision = await self._master_amount(master)
            for follower in self._book.subscribers(master.master_id):
                drift = await self._check(follower, master, amount, master_revision)
                if drift is not None and (drift.ratio > self._threshold or drift.clipped > 0):
                    drifts.append(drift)
                    await self._report(drift, master, follower)
        return drifts

    async def _master_amount(self, master: MasterPosition) -> tuple[Decimal, int | None]:
        if master.legacy_amount is not None:
            return master.legacy_amount, None
        entry, revision = await self._ledger.read_revision(master_key(master.master_id, master.symbol))
        return entry.amount, revision

    async def _check(
        self,
        follower: Follower,
        master: MasterPosition,
        master_amount: Decimal,
        master_revision: int | None,
    ) -> Drift | None:
        key = holding_key(follower.id, master.master_id, master.symbol)
        try:
            expected = await self._target(follower, master, master_amount)
            if expected is None:
                return None
            entry, revision = await self._ledger.read_revision(key)
            real = await follower.account.position(follower.venue_symbol(master.symbol))
        except CopytradeError as exc:  # this follower's venue: the others still reconcile
            self._metrics.reconcile_errors.inc()
            log.warning("event=reconcile_read_failed follower=%s error=%s", follower.id, type(exc).__name__)
            return None
        observation = (revision, master_revision, real, expected)
        previous, since = self._seen.get(key, ((), time.time()))
        since = since if previous == observation else time.time()
        self._seen[key] = (observation, since)
        stable = previous == observation and time.time() - since >= self._settle_s
        clipped = Decimal(0)
        if stable and entry.amount > real:  # seen twice: the follower sold by hand
            clipped = await self._ledger.clip(key, real)
            follower.holdings.pop(key, None)
            self._seen.pop(key, None)  # the clip changed the entry: judge it again afresh
        actual = min(entry.amount, real)
        expected += entry.adopted  # coins an operator adopted are part of the target
        ratio = abs(actual - expected) / expected if expected > 0 else Decimal(actual > 0)
        self._metrics.drift.labels(self._group, follower.id, master.symbol).set(float(ratio))
        await self._ledger.report(
            PositionReport(
                follower_id=follower.id,
                master_id=master.master_id,
                symbol=master.symbol,
                holding=actual,
                real=real,
                target=expected,
                at=time.time(),
            )
        )
        return Drift(
            follower_id=follower.id,
            symbol=master.symbol,
            expected=expected,
            actual=actual,
            ratio=ratio,
            at=time.time(),
            master_id=master.master_id,
            clipped=clipped,
            stable=stable and not clipped,
            revision=revision or 0,
        )

    async def _target(
        self, follower: Follower, master: MasterPosition, master_amount: Decimal
    ) -> Decimal | None:
        """The holding copying should have produced: the master's, scaled like a copy."""
        spec = follower.sizing_for(master.master_id)
        equity = (await follower.account.snapshot()).equity if spec.mode == "equity_ratio" else Decimal(0)
        scale = position_scale(spec, equity=equity, master_equity=master.equity)
        if scale is None:
            return None
        return master_amount * Decimal(scale.numerator) / Decimal(scale.denominator)

    async def _report(self, drift: Drift, master: MasterPosition, follower: Follower) -> None:
        log.warning(
            "event=position_drift follower=%s master=%s symbol=%s expected=%s actual=%s "
            "ratio=%.3f sold_by_hand=%s stable=%s",
            drift.follower_id,
            drift.master_id,
            drift.symbol,
            drift.expected,
            drift.actual,
            drift.ratio,
            drift.clipped,
            drift.stable,
        )
        if self._control is not None:
            await self._control.put(f"{DRIFT_PREFIX}{drift.follower_id}", self._encoder.encode(drift))
        if self._heal and drift.stable and drift.ratio > self._threshold:
            await self._heal_drift(drift, master, follower)

    async def _heal_drift(self, drift: Drift, master: MasterPosition, follower: Follower) -> None:
        """One correcting order per state of the holding: through the policy, like any copy,
        claimed, recovered after a crash (found by its client order id and applied to the
        ledger once), and never for less than the venue can trade."""
        subscription = follower.subscriptions.get(master.master_id)
        if subscription is not None and subscription.orders.mode == "orders":
            self._count_heal(follower, "orders_mode")  # its resting orders decide, not a heal
            return
        gap = drift.expected - drift.actual
        entry = await self._holdings.entry(follower, master.master_id, master.symbol)
        if gap > 0 and entry.clipped:
            self._count_heal(follower, "sold_by_hand")
            return  # the follower sold by hand: its decision, not bought back
        side: Side = "buy" if gap > 0 else "sell"
        rules = await self._book.rules(follower, master.symbol)
        size = abs(gap) if rules is None else _down(abs(gap), rules.amount_step)
        if rules is None or size < rules.min_amount or size <= 0 or size * master.price < rules.min_cost:
            self._count_heal(follower, "below_exchange_minimum")
            return
        order = SizedOrder(
            follower_id=follower.id,
            side=side,
            size=size,
            size_type="base",
            notional=size * master.price,
            scale=Decimal(1),
        )
        verdict = self._policy.admit(follower, order, held_notional=drift.actual * master.price)
        if verdict != "place":
            self._count_heal(follower, verdict.reason_code if isinstance(verdict, Skip) else "dry_run")
            return
        tag = f"{follower.id}.{master.master_id}.{master.symbol.replace('/', '_')}.{drift.revision}"
        command = OrderCommand(
            client_order_id=client_order_id_for(f"heal:{tag}", follower.id),
            symbol=follower.venue_symbol(drift.symbol),
            side=side,
            size=size,
            size_type="base",
            reference_price=master.price,
        )
        try:
            ack = await self._heal_once(f"heal.{tag}", follower, command)
            if ack is not None:
                await self._holdings.record(follower, master.master_id, master.symbol, side, ack)
        except CopytradeError as exc:
            self._count_heal(follower, "failed")
            log.warning("event=heal_failed follower=%s error=%s", follower.id, type(exc).__name__)
            return
        if ack is not None:
            self._count_heal(follower, "placed")

    async def _heal_once(self, key: str, follower: Follower, command: OrderCommand) -> OrderAck | None:
        """Place the heal under a claim; a claim that exists is recovered: its order found at
        the venue (then applied to the ledger), or, past the lease, taken over and placed."""
        now = repr(time.time()).encode()
        try:
            await self._claims.create(key, now)
        except KeyWrongLastSequenceError:
            found = await follower.account.find_order(command.client_order_id, command.symbol)
            if found is not None:
                return found
            entry = await self._claims.get(key)
            if entry.value is None or time.time() - float(entry.value) < 2 * self._order_timeout_s:
                return None  # another attempt may be placing it now
            await self._claims.update(key, now, last=entry.revision)
        return await place_idempotently(follower.account, command, timeout_s=self._order_timeout_s)

    def _count_heal(self, follower: Follower, outcome: str) -> None:
        self._metrics.heals.labels(self._group, outcome).inc()
        if outcome != "placed":
            log.info("event=heal_refused follower=%s reason=%s", follower.id, outcome)


async def _quietly(work: Awaitable[object], metrics: CopierMetrics) -> None:
    """A failed round is logged and counted; the next interval tries again."""
    try:
        await work
    except (CopytradeError, nats.errors.Error, TimeoutError) as exc:
        metrics.reconcile_errors.inc()
        log.warning("event=reconcile_round_failed error=%s", type(exc).__name__)


def _down(value: Decimal, step: Decimal) -> Decimal:
    return (value / step).to_integral_value(rounding=ROUND_DOWN) * step
