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
from decimal import Decimal

import msgspec
import nats
from msgspec import Struct
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.copier.copy.holdings import Holdings
from services.copier.copy.policy import Policy
from services.copier.followers import Follower, FollowerBook
from services.copier.metrics import CopierMetrics
from shared.errors import CopytradeError
from shared.exchange.placing import place_idempotently
from shared.exchange.port import OrderCommand
from shared.ledger import Ledger, PositionReport, master_key
from shared.messages import SizedOrder, Skip, TradeSignal, client_order_id_for
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


class Reconciler:
    def __init__(
        self, *, book: FollowerBook, metrics: CopierMetrics, group: str, policy: Policy,
        ledger: Ledger, holdings: Holdings, control: KeyValue | None, claims: KeyValue,
        threshold: Decimal, heal: bool, order_timeout_s: float,
    ) -> None:
        self._book, self._metrics, self._group, self._policy = book, metrics, group, policy
        self._ledger, self._holdings = ledger, holdings
        self._control, self._claims = control, claims
        self._threshold, self._heal, self._order_timeout_s = threshold, heal, order_timeout_s
        self._master: dict[tuple[str, str], MasterPosition] = {}
        self._encoder = msgspec.json.Encoder(decimal_format="string")

    def observe(self, signal: TradeSignal) -> None:
        """Track which (master, symbol) positions exist, from each copied signal."""
        legacy = None
        if signal.copied_position_before is None:
            sign = 1 if signal.side == "buy" else -1
            legacy = max(Decimal(0), signal.master_position_before + sign * signal.filled_base)
        self._master[(signal.master_id, signal.symbol)] = MasterPosition(
            master_id=signal.master_id, symbol=signal.symbol, signal_id=signal.signal_id,
            equity=signal.master_equity, price=signal.price, legacy_amount=legacy)

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.reconcile()
            except (CopytradeError, nats.errors.Error, TimeoutError) as exc:  # next round retries
                self._metrics.reconcile_errors.inc()
                log.warning("event=reconcile_round_failed error=%s", type(exc).__name__)

    async def reconcile(self) -> list[Drift]:
        """One round over every follower and (master, symbol); the drifts over the threshold."""
        drifts = []
        for master in list(self._master.values()):
            amount = await self._master_amount(master)
            for follower in self._book.subscribers(master.master_id):
                drift = await self._check(follower, master, amount)
                if drift is not None and (drift.ratio > self._threshold or drift.clipped > 0):
                    drifts.append(drift)
                    await self._report(drift, master, follower)
        return drifts

    async def _master_amount(self, master: MasterPosition) -> Decimal:
        if master.legacy_amount is not None:
            return master.legacy_amount
        return (await self._ledger.read(master_key(master.master_id, master.symbol))).amount

    async def _check(
        self, follower: Follower, master: MasterPosition, master_amount: Decimal
    ) -> Drift | None:
        try:
            expected = await self._target(follower, master, master_amount)
            if expected is None:
                return None
            real = await follower.account.position(follower.venue_symbol(master.symbol))
            held = await self._holdings.of(follower, master.master_id, master.symbol, fresh=True)
            actual = await self._holdings.clip(follower, master.master_id, master.symbol, real)
            # coins an operator adopted are part of the target: never healed away
            expected += (await self._holdings.entry(follower, master.master_id, master.symbol)).adopted
        except CopytradeError as exc:  # this follower's venue: the others still reconcile
            self._metrics.reconcile_errors.inc()
            log.warning("event=reconcile_read_failed follower=%s error=%s", follower.id,
                        type(exc).__name__)
            return None
        ratio = abs(actual - expected) / expected if expected > 0 else Decimal(actual > 0)
        self._metrics.drift.labels(self._group, follower.id, master.symbol).set(float(ratio))
        await self._ledger.report(PositionReport(
            follower_id=follower.id, master_id=master.master_id, symbol=master.symbol,
            holding=actual, real=real, target=expected, at=time.time()))
        return Drift(follower_id=follower.id, symbol=master.symbol, expected=expected,
                     actual=actual, ratio=ratio, at=time.time(), master_id=master.master_id,
                     clipped=held - actual)

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
        log.warning("event=position_drift follower=%s master=%s symbol=%s expected=%s actual=%s "
                    "ratio=%.3f sold_by_hand=%s", drift.follower_id, drift.master_id, drift.symbol,
                    drift.expected, drift.actual, drift.ratio, drift.clipped)
        if self._control is not None:
            await self._control.put(f"{DRIFT_PREFIX}{drift.follower_id}", self._encoder.encode(drift))
        if self._heal and drift.ratio > self._threshold:
            await self._heal_drift(drift, master, follower)

    async def _heal_drift(self, drift: Drift, master: MasterPosition, follower: Follower) -> None:
        """One correcting order per (master position, follower): through the policy, like any
        copy, and claimed, so it is placed at most once."""
        gap = drift.expected - drift.actual
        if gap > 0 and (await self._holdings.entry(follower, master.master_id, master.symbol)).clipped:
            self._metrics.heals.labels(self._group, "sold_by_hand").inc()
            log.info("event=heal_refused follower=%s reason=sold_by_hand", follower.id)
            return  # the follower sold by hand: its decision, not bought back
        order = SizedOrder(follower_id=follower.id, side="buy" if gap > 0 else "sell",
                           size=abs(gap), size_type="base", notional=abs(gap) * master.price,
                           scale=Decimal(1))
        verdict = self._policy.admit(follower, order, held_notional=drift.actual * master.price)
        if verdict != "place":
            reason = verdict.reason_code if isinstance(verdict, Skip) else "dry_run"
            self._metrics.heals.labels(self._group, reason).inc()
            log.info("event=heal_refused follower=%s reason=%s", follower.id, reason)
            return
        try:
            await self._claims.create(f"heal.{master.signal_id}.{follower.id}.{master.master_id}", b"1")
        except KeyWrongLastSequenceError:
            return  # already healed for this master position (or being healed)
        command = OrderCommand(
            client_order_id=client_order_id_for(f"heal-{master.signal_id}", follower.id),
            symbol=follower.venue_symbol(drift.symbol), side=order.side, size=order.size,
            size_type="base", reference_price=master.price)
        try:
            ack = await place_idempotently(follower.account, command, timeout_s=self._order_timeout_s)
            await self._holdings.record(follower, master.master_id, master.symbol, order.side, ack)
        except CopytradeError as exc:
            self._metrics.heals.labels(self._group, "failed").inc()
            log.warning("event=heal_failed follower=%s error=%s", follower.id, type(exc).__name__)
            return
        self._metrics.heals.labels(self._group, "placed").inc()
