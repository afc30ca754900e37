"""Equity limits per follower: a daily loss moves it to close-only, a drawdown from its peak
pauses it. Baselines (the day's opening equity, the peak) live in the control bucket, so every
replica and every restart judges against the same figures."""

from __future__ import annotations

import logging
import time
from decimal import Decimal

import msgspec
from msgspec import Struct
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from services.copier.followers import Follower
from shared.messages import FollowerState

log = logging.getLogger("copytrade.risk")
RISK_PREFIX = "risk."


class Baseline(Struct, frozen=True, kw_only=True):
    day: str  # UTC date the opening equity belongs to
    day_start: Decimal
    peak: Decimal


class EquityGuard:
    def __init__(self, kv: KeyValue | None) -> None:
        self._kv = kv
        self._baselines: dict[str, Baseline] = {}
        self._encoder = msgspec.json.Encoder(decimal_format="string")
        self._decoder = msgspec.json.Decoder(Baseline)

    async def check(self, follower: Follower, equity: Decimal) -> tuple[FollowerState, str] | None:
        """The state a breached limit requires, with the rule and figures; None if within limits."""
        risk = follower.config.risk
        if risk.daily_loss_pct is None and risk.max_drawdown_pct is None:
            return None
        base = await self._update(follower.id, equity)
        drawdown, daily = risk.max_drawdown_pct, risk.daily_loss_pct
        if drawdown is not None and equity < base.peak * (1 - drawdown / 100):
            return "paused", (
                f"max_drawdown: equity {equity:.2f} is over {drawdown}% below peak {base.peak:.2f}"
            )
        if daily is not None and equity < base.day_start * (1 - daily / 100):
            return "close_only", (
                f"daily_loss: equity {equity:.2f} is over {daily}% below today's opening {base.day_start:.2f}"
            )
        return None

    async def _update(self, follower_id: str, equity: Decimal) -> Baseline:
        today = time.strftime("%Y-%m-%d", time.gmtime())
        base = self._baselines.get(follower_id) or await self._load(follower_id)
        new = base
        if new is None or new.day != today:
            new = Baseline(day=today, day_start=equity, peak=max(equity, new.peak if new else equity))
        if equity > new.peak:
            new = msgspec.structs.replace(new, peak=equity)
        if new != base and self._kv is not None:
            await self._kv.put(RISK_PREFIX + follower_id, self._encoder.encode(new))
        self._baselines[follower_id] = new
        return new

    async def _load(self, follower_id: str) -> Baseline | None:
        if self._kv is None:
            return None
        try:
            entry = await self._kv.get(RISK_PREFIX + follower_id)
        except KeyNotFoundError:
            return None
        return None if entry.value is None else self._decoder.decode(entry.value)
