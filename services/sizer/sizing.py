"""The sizing core: a pure function from (signal, follower) to an order or a skip with a reason.

Buys scale the master's size by the follower's sizing mode (the guide's
`user_size = master_size × user_equity / master_equity` by default); sells reduce the follower's
own position by the fraction the master sold. Sizes are truncated to the venue's step, never
rounded up, and never exceed what the follower can afford or holds.
"""

from __future__ import annotations

import math
from decimal import ROUND_DOWN, Decimal
from fractions import Fraction

from shared.messages import (
    Decision,
    FollowerSnapshot,
    MarketRules,
    SizedOrder,
    SizeType,
    Skip,
    TradeSignal,
)

ZERO = Decimal(0)


def size_all(
    signal: TradeSignal, followers: list[FollowerSnapshot], min_notional: Decimal
) -> list[Decision]:
    return [size_follower(signal, f, min_notional) for f in followers]


def size_follower(signal: TradeSignal, follower: FollowerSnapshot, min_notional: Decimal) -> Decision:
    """One follower's order for this signal, or a skip saying why not."""
    if follower.rules is None:
        return _skip(follower, "unsupported_symbol",
                     f"Symbol {signal.symbol} is not supported on the follower's exchange")
    if signal.side == "sell":
        return _size_exit(signal, follower, follower.rules, min_notional)
    return _size_entry(signal, follower, follower.rules, min_notional)


def _master_notional(signal: TradeSignal) -> Decimal:
    return signal.size if signal.size_type == "quote" else signal.size * signal.price


def _scale(signal: TradeSignal, follower: FollowerSnapshot) -> Fraction:
    """Follower size / master size before caps, by sizing mode (exact: no rounding yet)."""
    spec = follower.sizing
    if spec.mode == "multiplier" and spec.multiplier is not None:
        return Fraction(spec.multiplier)
    if spec.mode == "fixed_notional" and spec.fixed_notional is not None:
        return Fraction(spec.fixed_notional) / Fraction(_master_notional(signal))
    return Fraction(follower.equity) / Fraction(signal.master_equity)


def _size_entry(
    signal: TradeSignal, follower: FollowerSnapshot, rules: MarketRules, min_notional: Decimal
) -> Decision:
    scale = _scale(signal, follower)
    cap = follower.sizing.max_order_notional
    if cap is not None and Fraction(_master_notional(signal)) * scale > cap:
        scale = Fraction(cap) / Fraction(_master_notional(signal))
    if signal.size_type == "quote" and rules.quote_orders:
        size = _truncate(Fraction(signal.size) * scale, rules.cost_step)
        base, notional = size / signal.price, size
    else:
        base = _truncate(_base_size(signal) * scale, rules.amount_step)
        size, notional = base, base * signal.price
    size_type: SizeType = "quote" if signal.size_type == "quote" and rules.quote_orders else "base"
    problem = _check_minimums(notional, base, rules, min_notional) or _check_affordable(
        notional, follower.cash)
    if problem is not None:
        return _skip(follower, *problem)
    return SizedOrder(follower_id=follower.follower_id, side="buy", size=size,
                      size_type=size_type, notional=notional, scale=_decimal(scale))


def _size_exit(
    signal: TradeSignal, follower: FollowerSnapshot, rules: MarketRules, min_notional: Decimal
) -> Decision:
    if follower.position <= ZERO:
        return _skip(follower, "no_position", f"No {signal.symbol} position to sell")
    if signal.master_position_before <= ZERO:
        return _skip(follower, "no_position",
                     "Master held no position before this sell: short sales are not copied")
    fraction = min(Fraction(1), Fraction(signal.filled_base) / Fraction(signal.master_position_before))
    # fraction 1 (a full master exit) closes the follower's whole position
    base = _truncate(Fraction(follower.position) * fraction, rules.amount_step)
    notional = base * signal.price
    problem = _check_minimums(notional, base, rules, min_notional)
    if problem is not None:
        return _skip(follower, *problem)
    return SizedOrder(follower_id=follower.follower_id, side="sell", size=base, size_type="base",
                      notional=notional, scale=_decimal(fraction))


def _base_size(signal: TradeSignal) -> Fraction:
    size = Fraction(signal.size)
    return size if signal.size_type == "base" else size / Fraction(signal.price)


def _check_minimums(
    notional: Decimal, base: Decimal, rules: MarketRules, min_notional: Decimal
) -> tuple[str, str] | None:
    if notional < min_notional:
        return ("position_too_small",
                f"Position too small: ${_money(notional)} < ${_money(min_notional)} minimum")
    if base < rules.min_amount or base <= ZERO:
        return ("below_exchange_minimum",
                f"Below exchange minimum amount: {base.normalize()} < {rules.min_amount.normalize()}")
    if notional < rules.min_cost:
        return ("below_exchange_minimum",
                f"Below exchange minimum cost: ${_money(notional)} < ${_money(rules.min_cost)}")
    return None


def _check_affordable(notional: Decimal, cash: Decimal) -> tuple[str, str] | None:
    if notional > cash:
        return ("insufficient_balance",
                f"Insufficient balance: ${_money(notional)} needed, ${_money(cash)} available")
    return None


def _truncate(value: Fraction, step: Decimal) -> Decimal:
    """Round down to a multiple of step (never up: an order may not exceed its budget)."""
    return math.floor(value / Fraction(step)) * step


def _decimal(value: Fraction) -> Decimal:
    return Decimal(value.numerator) / Decimal(value.denominator)


def _money(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.01'), rounding=ROUND_DOWN):,}"


def _skip(follower: FollowerSnapshot, reason_code: str, reason: str) -> Skip:
    return Skip(follower_id=follower.follower_id, reason_code=reason_code, reason=reason)
