"""The sizing core: a pure function from (signal, follower) to an order or a skip with a reason.

Buys scale the master's size by the follower's sizing mode (the guide's
`user_size = master_size × user_equity / master_equity` by default); sells reduce the follower's
copied holding for that master (the ledger) by the fraction the master sold of its copied
position, never the follower's own coins. Sizes are truncated to the venue's step, never
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
from shared.sizing_modes import order_scale

ZERO = Decimal(0)
PRICE_STEP_UNPUBLISHED = Decimal("0.00000001")


def size_all(
    signal: TradeSignal,
    followers: list[FollowerSnapshot],
    min_notional: Decimal,
    now: float | None = None,
) -> list[Decision]:
    return [size_follower(signal, f, min_notional, now) for f in followers]


def size_follower(
    signal: TradeSignal,
    follower: FollowerSnapshot,
    min_notional: Decimal,
    now: float | None = None,
) -> Decision:
    """One follower's order for this signal, or a skip saying why not."""
    for gate in GATES:
        problem = gate(signal, follower, now)
        if problem is not None:
            return _skip(follower, *problem)
    if follower.rules is None:
        return _skip(
            follower,
            "unsupported_symbol",
            f"Symbol {signal.symbol} is not supported on the follower's exchange",
        )
    if signal.side == "sell":
        return _size_exit(signal, follower, follower.rules, min_notional)
    return _size_entry(signal, follower, follower.rules, min_notional)


# ---- risk gates: each returns (reason_code, reason) to skip, or None to go on ---------------------

Problem = tuple[str, str] | None


def _gate_symbol(signal: TradeSignal, follower: FollowerSnapshot, _: float | None) -> Problem:
    allow, deny = follower.risk.allow_symbols, follower.risk.deny_symbols
    if signal.symbol in deny or (allow is not None and signal.symbol not in allow):
        return "symbol_not_allowed", f"Symbol {signal.symbol} is not allowed for this follower"
    return None


def _gate_age(signal: TradeSignal, follower: FollowerSnapshot, now: float | None) -> Problem:
    limit = follower.max_signal_age_s
    if now is not None and limit is not None and now - signal.executed_at > limit:
        age = now - signal.executed_at
        return "stale_signal", f"Signal is {age:.1f}s old (limit {limit:g}s): not executed late"
    return None


def _gate_slippage(signal: TradeSignal, follower: FollowerSnapshot, _: float | None) -> Problem:
    tolerance, price = follower.risk.max_price_deviation_pct, follower.price
    if signal.side == "sell" or tolerance is None or price is None:
        return None  # exits are never blocked
    if follower.risk.slippage_action == "limit":
        return None  # the order's limit price holds the bound at the venue
    deviation = abs(price - signal.price) / signal.price * 100
    if deviation > tolerance:
        return ("slippage", f"Price moved {deviation:.2f}% from the master's fill (limit {tolerance}%)")
    return None


# the follower's state, the kill switch and equity limits are the copier's policy (one gate)
GATES = (_gate_symbol, _gate_age, _gate_slippage)


def _master_notional(signal: TradeSignal) -> Decimal:
    return signal.size if signal.size_type == "quote" else signal.size * signal.price


def _scale(signal: TradeSignal, follower: FollowerSnapshot) -> Fraction:
    """Follower size / master size before caps, by sizing mode (exact: no rounding yet)."""
    return order_scale(
        follower.sizing,
        equity=follower.equity,
        master_equity=signal.master_equity,
        master_notional=_master_notional(signal),
    )


def _size_entry(
    signal: TradeSignal, follower: FollowerSnapshot, rules: MarketRules, min_notional: Decimal
) -> Decision:
    limit = _limit_price(signal, follower, rules)
    scale = _scale(signal, follower)
    cap = _buy_cap(signal, follower)
    if cap is not None and cap < min_notional:
        return _skip(follower, "max_position", "Position limit reached for this symbol")
    if cap is not None and Fraction(_master_notional(signal)) * scale > cap:
        scale = Fraction(cap) / Fraction(_master_notional(signal))
    # a limit order is sized in base: venues take no quote-sized limit orders
    by_quote = signal.size_type == "quote" and rules.quote_orders and limit is None
    if by_quote:
        size = _truncate(Fraction(signal.size) * scale, rules.cost_step)
        base, notional = size / signal.price, size
    else:
        base = _truncate(_base_size(signal) * scale, rules.amount_step)
        size, notional = base, base * signal.price
    size_type: SizeType = "quote" if by_quote else "base"
    worst_cost = notional if limit is None else base * limit  # a limit buy may pay up to its limit
    problem = _check_minimums(notional, base, rules, min_notional) or _check_affordable(
        worst_cost, follower.cash
    )
    if problem is not None:
        return _skip(follower, *problem)
    return SizedOrder(
        follower_id=follower.follower_id,
        side="buy",
        size=size,
        size_type=size_type,
        notional=notional,
        scale=_decimal(scale),
        limit_price=limit,
    )


def _limit_price(signal: TradeSignal, follower: FollowerSnapshot, rules: MarketRules) -> Decimal | None:
    """A limit buy's price, the master's price + the tolerance, down to the venue's tick (never
    above the bound); None for a market order."""
    tolerance = follower.risk.max_price_deviation_pct
    if follower.risk.slippage_action != "limit" or tolerance is None:
        return None
    bound = Fraction(signal.price) * (1 + Fraction(tolerance) / 100)
    return _truncate(bound, rules.price_step or PRICE_STEP_UNPUBLISHED)


def _buy_cap(signal: TradeSignal, follower: FollowerSnapshot) -> Decimal | None:
    """The most a buy may spend: the order cap and the room left under the position cap."""
    caps = [follower.sizing.max_order_notional]
    if follower.risk.max_position_notional is not None:
        caps.append(follower.risk.max_position_notional - follower.position * signal.price)
    present = [c for c in caps if c is not None]
    return min(present) if present else None


def _size_exit(
    signal: TradeSignal, follower: FollowerSnapshot, rules: MarketRules, min_notional: Decimal
) -> Decision:
    if signal.sell_base <= ZERO:
        return _skip(
            follower,
            "master_own_holdings",
            "The master sold coins it held before it was followed: not copied",
        )
    held = follower.position if follower.holding is None else min(follower.holding, follower.position)
    if held <= ZERO:
        what = "copied holding" if follower.holding is not None else "position"
        return _skip(follower, "no_position", f"No {signal.symbol} {what} to sell")
    fraction = min(Fraction(1), Fraction(signal.filled_base) / Fraction(signal.sell_base))
    # fraction 1 (a full master exit) closes the copied holding, never the follower's own coins
    base = _truncate(Fraction(held) * fraction, rules.amount_step)
    notional = base * signal.price
    problem = _check_minimums(notional, base, rules, min_notional)
    if problem is not None:
        return _skip(follower, *problem)
    return SizedOrder(
        follower_id=follower.follower_id,
        side="sell",
        size=base,
        size_type="base",
        notional=notional,
        scale=_decimal(fraction),
    )


def _base_size(signal: TradeSignal) -> Fraction:
    size = Fraction(signal.size)
    return size if signal.size_type == "base" else size / Fraction(signal.price)


def _check_minimums(
    notional: Decimal, base: Decimal, rules: MarketRules, min_notional: Decimal
) -> tuple[str, str] | None:
    if notional < min_notional:
        return (
            "position_too_small",
            f"Position too small: ${_money(notional)} < ${_money(min_notional)} minimum",
        )
    if base < rules.min_amount or base <= ZERO:
        return (
            "below_exchange_minimum",
            f"Below exchange minimum amount: {base.normalize()} < {rules.min_amount.normalize()}",
        )
    if notional < rules.min_cost:
        return (
            "below_exchange_minimum",
            f"Below exchange minimum cost: ${_money(notional)} < ${_money(rules.min_cost)}",
        )
    return None


def _check_affordable(notional: Decimal, cash: Decimal) -> tuple[str, str] | None:
    if notional > cash:
        return (
            "insufficient_balance",
            f"Insufficient balance: ${_money(notional)} needed, ${_money(cash)} available",
        )
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
