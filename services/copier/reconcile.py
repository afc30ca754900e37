"""Reconciliation: compare each follower's actual position with what copying should have
produced (the master's position scaled by the follower's sizing), export the drift, record it
for `copytrade status`, and optionally heal it through the same idempotent order path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from decimal import Decimal

import msgspec
from msgspec import Struct
from nats.js.kv import KeyValue

from services.copier.followers import Follower, FollowerBook
from services.copier.metrics import CopierMetrics
from shared.errors import CopytradeError
from shared.exchange.placing import place_idempotently
from shared.exchange.port import OrderCommand
from shared.messages import TradeSignal, client_order_id_for

log = logging.getLogger("copytrade.reconcile")
DRIFT_PREFIX = "drift."


class MasterPosition(Struct, frozen=True, kw_only=True):
    signal_id: str  # the signal that produced this position
    amount: Decimal
    equity: Decimal
    price: Decimal


class Drift(Struct, frozen=True, kw_only=True):
    follower_id: str
    symbol: str
    expected: Decimal
    actual: Decimal
    ratio: Decimal  # |actual - expected| / expected
    at: float


class Reconciler:
    def __init__(
        self, *, book: FollowerBook, metrics: CopierMetrics, exchange: str,
        control: KeyValue | None, claims: KeyValue, threshold: Decimal, heal: bool,
        order_timeout_s: float,
    ) -> None:
        self._book, self._metrics, self._exchange = book, metrics, exchange
        self._control, self._claims = control, claims
        self._threshold, self._heal, self._order_timeout_s = threshold, heal, order_timeout_s
        self._master: dict[str, MasterPosition] = {}
        self._encoder = msgspec.json.Encoder(decimal_format="string")

    def observe(self, signal: TradeSignal) -> None:
        """Track the master's position from each copied signal."""
        sign = 1 if signal.side == "buy" else -1
        self._master[signal.symbol] = MasterPosition(
            signal_id=signal.signal_id, equity=signal.master_equity, price=signal.price,
            amount=max(Decimal(0), signal.master_position_before + sign * signal.filled_base))

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            with contextlib.suppress(Exception):  # a failed round is retried next interval
                await self.reconcile()

    async def reconcile(self) -> list[Drift]:
        """One round over every follower and symbol; returns the drifts over the threshold."""
        drifts = []
        for symbol, master in list(self._master.items()):
            for follower in self._book.all():
                drift = await self._check(follower, symbol, master)
                if drift is not None and drift.ratio > self._threshold:
                    drifts.append(drift)
                    await self._report(drift, master, follower)
        return drifts

    async def _check(self, follower: Follower, symbol: str, master: MasterPosition) -> Drift | None:
        spec = follower.config.sizing
        try:
            venue_symbol = follower.venue_symbol(symbol)
            actual = await follower.account.position(venue_symbol)
            if spec.mode == "multiplier" and spec.multiplier is not None:
                expected = master.amount * spec.multiplier
            elif spec.mode == "equity_ratio":
                equity = (await follower.account.snapshot()).equity
                expected = master.amount * equity / master.equity
            else:
                return None  # fixed_notional copies have no position to match
        except CopytradeError:
            return None
        ratio = abs(actual - expected) / expected if expected > 0 else Decimal(actual > 0)
        self._metrics.drift.labels(self._exchange, follower.id, symbol).set(float(ratio))
        return Drift(follower_id=follower.id, symbol=symbol, expected=expected, actual=actual,
                     ratio=ratio, at=time.time())

    async def _report(self, drift: Drift, master: MasterPosition, follower: Follower) -> None:
        log.warning("event=position_drift follower=%s symbol=%s expected=%s actual=%s ratio=%.3f",
                    drift.follower_id, drift.symbol, drift.expected, drift.actual, drift.ratio)
        if self._control is not None:
            await self._control.put(f"{DRIFT_PREFIX}{drift.follower_id}", self._encoder.encode(drift))
        if self._heal:
            await self._heal_drift(drift, master, follower)

    async def _heal_drift(self, drift: Drift, master: MasterPosition, follower: Follower) -> None:
        """One correcting order per (master position, follower): claimed like any copy."""
        key = f"heal.{master.signal_id}.{follower.id}"
        try:
            await self._claims.create(key, b"1")
        except Exception:
            return  # already healed for this master position (or being healed)
        gap = drift.expected - drift.actual
        command = OrderCommand(
            client_order_id=client_order_id_for(f"heal-{master.signal_id}", follower.id),
            symbol=follower.venue_symbol(drift.symbol), side="buy" if gap > 0 else "sell",
            size=abs(gap), size_type="base", reference_price=master.price)
        try:
            await place_idempotently(follower.account, command, timeout_s=self._order_timeout_s)
        except CopytradeError as exc:
            log.warning("event=heal_failed follower=%s error=%s", follower.id, type(exc).__name__)
