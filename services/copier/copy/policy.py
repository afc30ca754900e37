"""The one gate: whether an order may go out, decided in one place for every order path
(copies, heals, and whatever comes next). Nothing reaches a venue around it."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Literal

from services.copier.copy.limits import EquityGuard
from services.copier.followers import Follower
from services.copier.metrics import CopierMetrics
from shared.control import Control, Unsubscribed
from shared.messages import FollowerState, SizedOrder, Skip

log = logging.getLogger("copytrade.policy")
Verdict = Literal["place", "dry_run"] | Skip


class Policy:
    def __init__(self, control: Control, metrics: CopierMetrics) -> None:
        self._control, self._metrics = control, metrics
        self._guard = EquityGuard(control.kv)

    def state(self, follower: Follower) -> FollowerState:
        """The follower's state now: an operator's or a risk trip's override, else its config."""
        return self._control.state_of(follower.id, follower.configured_state())

    def copies(self, follower: Follower, master_id: str) -> bool:
        """Whether the follower copies this master now: subscribed in the config and not
        unsubscribed by an operator."""
        return follower.copies(master_id) and (follower.id, master_id) not in self._control.unsubscribed

    def unsubscribed(self, follower: Follower, master_id: str) -> Unsubscribed | None:
        return self._control.unsubscribed.get((follower.id, master_id))

    def before_reading(self, follower: Follower) -> Skip | None:
        """A paused follower is neither read nor sized."""
        if self.state(follower) == "paused":
            return _refuse(follower, "paused", "Follower is paused")
        return None

    async def after_reading(self, follower: Follower, equity: Decimal) -> FollowerState:
        """Apply the follower's daily-loss / drawdown limits to its equity; its state now."""
        trip = await self._guard.check(follower, equity)
        if trip is not None:
            state, reason = trip
            if await self._control.restrict(follower.id, state, reason):
                self._metrics.risk_trips.labels(self._metrics.group, follower.id, reason.split(":")[0]).inc()
                log.warning(
                    "event=risk_limit_tripped follower=%s state=%s reason=%r", follower.id, state, reason
                )
        return self.state(follower)

    def halted(self, follower: Follower) -> Skip | None:
        """The kill switch's refusal while it is on: no new orders, and no order of the
        follower's left resting on its behalf (mirroring cancels linked orders then)."""
        return self._kill_switch(follower, None, None)

    def admit(
        self, follower: Follower, order: SizedOrder, *, held_notional: Decimal | None = None
    ) -> Verdict:
        """May this order go out now? Asked as late as possible, right before placing.

        held_notional: the follower's position in the symbol at the order's price, where the
        caller knows it (a heal); a copy's size already respects the position cap (sizer).
        """
        for rule in _RULES:
            refusal = rule(self, follower, order, held_notional)
            if refusal is not None:
                return refusal
        return "dry_run" if self.state(follower) == "dry_run" else "place"

    def _kill_switch(self, follower: Follower, _o: SizedOrder | None, _h: Decimal | None) -> Skip | None:
        if self._control.killed:
            return _refuse(follower, "kill_switch", "Kill switch is on: no new orders")
        return None

    def _follower_state(self, follower: Follower, order: SizedOrder, _h: Decimal | None) -> Skip | None:
        state = self.state(follower)
        if state == "paused":
            return _refuse(follower, "paused", "Follower is paused")
        if state == "close_only" and order.side == "buy":
            return _refuse(follower, "close_only", "Follower is close-only: buys are not copied")
        return None

    def _order_cap(self, follower: Follower, order: SizedOrder, _h: Decimal | None) -> Skip | None:
        cap = follower.config.sizing.max_order_notional
        if order.side == "buy" and cap is not None and order.notional > cap:
            return _refuse(
                follower,
                "max_order_notional",
                f"Order ${order.notional:.2f} is over max_order_notional ${cap}",
            )
        return None

    def _position_cap(
        self, follower: Follower, order: SizedOrder, held_notional: Decimal | None
    ) -> Skip | None:
        cap = follower.config.risk.max_position_notional
        if order.side != "buy" or cap is None or held_notional is None:
            return None
        if held_notional + order.notional > cap:
            return _refuse(follower, "max_position", "Position limit reached for this symbol")
        return None


_RULES = (Policy._kill_switch, Policy._follower_state, Policy._order_cap, Policy._position_cap)


def _refuse(follower: Follower, code: str, reason: str) -> Skip:
    return Skip(follower_id=follower.id, reason_code=code, reason=reason)
