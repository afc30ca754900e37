"""The sizing modes as data: how a follower's size relates to the master's, in one table
that the sizer (orders) and reconciliation (positions) both read."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction

from shared.messages import SizingMode, SizingSpec

# mode -> (spec, follower equity, master equity, master order notional) -> follower/master scale
_ORDER_SCALE: dict[SizingMode, Callable[[SizingSpec, Decimal, Decimal, Decimal], Fraction]] = {
    "equity_ratio": lambda _, equity, master_equity, __: Fraction(equity) / Fraction(master_equity),
    "multiplier": lambda spec, *_: Fraction(spec.multiplier or 0),
    "fixed_notional": lambda spec, _, __, notional: Fraction(spec.fixed_notional or 0) / Fraction(notional),
}
# fixed_notional copies a constant amount per buy: it has no position to match
_HOLDS_POSITION: dict[SizingMode, bool] = {"equity_ratio": True, "multiplier": True, "fixed_notional": False}


def order_scale(
    spec: SizingSpec, *, equity: Decimal, master_equity: Decimal, master_notional: Decimal
) -> Fraction:
    """Follower order size / master order size, before caps (exact: no rounding yet)."""
    return _ORDER_SCALE[spec.mode](spec, equity, master_equity, master_notional)


def position_scale(spec: SizingSpec, *, equity: Decimal, master_equity: Decimal) -> Fraction | None:
    """Follower position / master position that copying aims at; None for a mode with none."""
    if not _HOLDS_POSITION[spec.mode]:
        return None
    return _ORDER_SCALE[spec.mode](spec, equity, master_equity, Decimal(1))
