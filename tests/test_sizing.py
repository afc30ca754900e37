"""The sizing core: the guide's examples, each rule, and properties that must always hold."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.sizer.sizing import size_follower
from shared.messages import (
    FollowerSnapshot,
    MarketRules,
    RiskSpec,
    SizedOrder,
    SizingSpec,
    Skip,
    TradeSignal,
    signal_id_for,
)

BTC = MarketRules(
    symbol="BTC/USD",
    amount_step=Decimal("0.00000001"),
    min_amount=Decimal("0.00001"),
    min_cost=Decimal("0.5"),
    price_step=Decimal("0.1"),
)
LIMIT_1PCT = RiskSpec(max_price_deviation_pct=Decimal("1"), slippage_action="limit")
ONE = Decimal("1.00")


def signal(
    side: str = "buy",
    size: str = "500",
    size_type: str = "quote",
    *,
    price: str = "45000",
    equity: str = "10000",
    position_before: str = "0",
    filled_base: str | None = None,
) -> TradeSignal:
    filled = (
        Decimal(filled_base)
        if filled_base
        else (Decimal(size) / Decimal(price) if size_type == "quote" else Decimal(size))
    )
    return TradeSignal(
        signal_id=signal_id_for("paper", "o1"),
        master_id="master",
        exchange="paper",
        symbol="BTC/USD",
        side=side,  # type: ignore[arg-type]
        price=Decimal(price),
        size=Decimal(size),
        size_type=size_type,  # type: ignore[arg-type]
        filled_base=filled,
        order_id="o1",
        master_equity=Decimal(equity),
        master_position_before=Decimal(position_before),
        executed_at=1.0,
    )


def follower(
    equity: str = "1000",
    *,
    cash: str | None = None,
    position: str = "0",
    rules: MarketRules | None = BTC,
    sizing: SizingSpec | None = None,
    risk: RiskSpec | None = None,
    price: str | None = None,
) -> FollowerSnapshot:
    return FollowerSnapshot(
        follower_id="f",
        equity=Decimal(equity),
        cash=Decimal(cash if cash is not None else equity),
        position=Decimal(position),
        rules=rules,
        sizing=sizing or SizingSpec(),
        risk=risk or RiskSpec(),
        price=None if price is None else Decimal(price),
    )


def test_guide_examples_scale_quote_buy_by_equity() -> None:
    sizes = {eq: size_follower(signal(), follower(eq), ONE) for eq in ("1000", "5000", "50000")}

    assert {eq: (d.size, d.size_type) for eq, d in sizes.items() if isinstance(d, SizedOrder)} == {
        "1000": (Decimal("50.00"), "quote"),
        "5000": (Decimal("250.00"), "quote"),
        "50000": (Decimal("2500.00"), "quote"),
    }


def test_tiny_account_skips_with_guide_wording() -> None:
    decision = size_follower(signal(size="20"), follower("100"), ONE)

    assert decision == Skip(
        follower_id="f", reason_code="position_too_small", reason="Position too small: $0.20 < $1.00 minimum"
    )


def test_unaffordable_buy_skips_insufficient_balance() -> None:
    decision = size_follower(signal(), follower("1000", cash="10"), ONE)

    assert isinstance(decision, Skip)
    assert decision.reason_code == "insufficient_balance"


def test_unlisted_symbol_skips_unsupported() -> None:
    decision = size_follower(signal(), follower(rules=None), ONE)

    assert isinstance(decision, Skip)
    assert decision.reason_code == "unsupported_symbol"


def test_below_exchange_minimum_amount_skips() -> None:
    rules = MarketRules(symbol="BTC/USD", amount_step=Decimal("0.0001"), min_amount=Decimal("0.01"))
    decision = size_follower(signal(size="0.01", size_type="base"), follower("1000"), ONE)
    strict = size_follower(signal(size="0.01", size_type="base"), follower("1000", rules=rules), ONE)

    assert isinstance(decision, SizedOrder)
    assert decision.size == Decimal("0.001")
    assert isinstance(strict, Skip)
    assert strict.reason_code == "below_exchange_minimum"


def test_max_order_notional_caps_a_buy() -> None:
    capped = size_follower(
        signal(), follower("50000", sizing=SizingSpec(max_order_notional=Decimal("1000"))), ONE
    )

    assert isinstance(capped, SizedOrder)
    assert capped.size == Decimal("1000.00")


def test_multiplier_and_fixed_notional_modes_size_buys() -> None:
    doubled = size_follower(
        signal(), follower(sizing=SizingSpec(mode="multiplier", multiplier=Decimal("2"))), ONE
    )
    fixed = size_follower(
        signal(), follower(sizing=SizingSpec(mode="fixed_notional", fixed_notional=Decimal("25"))), ONE
    )

    assert isinstance(doubled, SizedOrder)
    assert doubled.size == Decimal("1000.00")
    assert isinstance(fixed, SizedOrder)
    assert fixed.size == Decimal("25.00")


def test_master_half_sell_sells_half_of_follower_position() -> None:
    decision = size_follower(
        signal("sell", "0.5", "base", position_before="1"), follower(position="0.3"), ONE
    )

    assert isinstance(decision, SizedOrder)
    assert (decision.side, decision.size, decision.size_type) == ("sell", Decimal("0.15"), "base")


def test_master_full_exit_closes_whole_follower_position() -> None:
    decision = size_follower(
        signal("sell", "1", "base", position_before="1"), follower(position="0.12345678"), ONE
    )

    assert isinstance(decision, SizedOrder)
    assert decision.size == Decimal("0.12345678")


def test_sell_is_never_blocked_by_the_buy_cap() -> None:
    decision = size_follower(
        signal("sell", "1", "base", position_before="1"),
        follower(position="1", sizing=SizingSpec(max_order_notional=Decimal("10"))),
        ONE,
    )

    assert isinstance(decision, SizedOrder)
    assert decision.size == Decimal("1")


def test_sell_without_follower_position_skips() -> None:
    decision = size_follower(signal("sell", "1", "base", position_before="1"), follower(), ONE)

    assert isinstance(decision, Skip)
    assert decision.reason_code == "no_position"


def test_limit_mode_buys_by_base_at_master_price_plus_tolerance() -> None:
    decision = size_follower(signal(price="45000.05"), follower(risk=LIMIT_1PCT), ONE)

    assert isinstance(decision, SizedOrder)
    assert (decision.size_type, decision.limit_price) == ("base", Decimal("45450.0"))  # tick down
    assert decision.size == Decimal("0.00111110")  # $50 at the master's price, truncated


def test_limit_mode_places_the_order_whatever_the_venue_price_shows() -> None:
    moved = follower(risk=LIMIT_1PCT, price="50000")  # the venue holds the bound, not a snapshot
    skip_mode = follower(risk=RiskSpec(max_price_deviation_pct=Decimal("1")), price="50000")

    limited, skipped = size_follower(signal(), moved, ONE), size_follower(signal(), skip_mode, ONE)

    assert isinstance(limited, SizedOrder)
    assert limited.limit_price == Decimal("45450.0")
    assert isinstance(skipped, Skip)
    assert skipped.reason_code == "slippage"


def test_limit_buy_must_afford_its_limit_price() -> None:
    # $50 at the master's price, $50.50 at the limit: $50.25 of cash is not enough
    decision = size_follower(signal(), follower(cash="50.25", risk=LIMIT_1PCT), ONE)

    assert isinstance(decision, Skip)
    assert decision.reason_code == "insufficient_balance"


def test_limit_mode_leaves_sells_as_market_orders() -> None:
    sig = signal("sell", "0.5", "base", position_before="1")
    decision = size_follower(sig, follower(position="0.2", risk=LIMIT_1PCT), ONE)

    assert isinstance(decision, SizedOrder)
    assert decision.limit_price is None


def test_limit_action_without_a_tolerance_is_a_config_error() -> None:
    with pytest.raises(msgspec.ValidationError, match="needs max_price_deviation_pct"):
        msgspec.convert({"slippage_action": "limit"}, RiskSpec)


money = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("10000000"), places=2)
prices = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("200000"), places=2)
amounts = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("1000"), places=8)


@settings(max_examples=300, deadline=None)
@given(master_size=money, master_equity=money, equity=money, cash=money, price=prices, quote=st.booleans())
def test_buy_never_exceeds_cash_or_undercuts_minimums(
    *,
    master_size: Decimal,
    master_equity: Decimal,
    equity: Decimal,
    cash: Decimal,
    price: Decimal,
    quote: bool,
) -> None:
    size_type = "quote" if quote else "base"
    sig = signal(size=str(master_size), size_type=size_type, price=str(price), equity=str(master_equity))
    decision = size_follower(sig, follower(str(equity), cash=str(cash)), ONE)

    if isinstance(decision, SizedOrder):
        base = decision.size / price if decision.size_type == "quote" else decision.size
        assert decision.notional <= cash
        assert decision.notional >= ONE
        assert decision.notional >= BTC.min_cost
        assert base >= BTC.min_amount
        exact = Fraction(master_size) * Fraction(equity) / Fraction(master_equity)
        assert decision.size <= exact


@settings(max_examples=300, deadline=None)
@given(master_size=money, master_equity=money, equity=money)
def test_buy_is_proportional_to_equity_truncated_never_rounded_up(
    master_size: Decimal,
    master_equity: Decimal,
    equity: Decimal,
) -> None:
    sig = signal(size=str(master_size), equity=str(master_equity))
    decision = size_follower(sig, follower(str(equity), cash="1e12"), ONE)

    exact = Fraction(master_size) * Fraction(equity) / Fraction(master_equity)
    if isinstance(decision, SizedOrder):
        assert exact - Fraction(1, 100) < decision.size <= exact
    elif exact > Fraction(10**12):
        assert decision.reason_code == "insufficient_balance"
    else:
        assert exact < Fraction(101, 100)
        assert decision.reason_code in {
            "position_too_small",
            "below_exchange_minimum",
        }


@settings(max_examples=300, deadline=None)
@given(sold=amounts, before=amounts, position=amounts)
def test_sell_never_exceeds_what_the_follower_holds(
    sold: Decimal,
    before: Decimal,
    position: Decimal,
) -> None:
    sig = signal("sell", str(sold), "base", position_before=str(before))
    decision = size_follower(sig, follower(position=str(position)), ONE)

    if isinstance(decision, SizedOrder):
        fraction = min(Fraction(1), Fraction(sold) / Fraction(before))
        assert decision.size <= position
        assert decision.size <= Fraction(position) * fraction
        assert decision.size % BTC.amount_step == 0


@settings(max_examples=300, deadline=None)
@given(
    master_size=money,
    equity=money,
    cash=money,
    price=prices,
    tolerance=st.decimals(min_value=Decimal("0.01"), max_value=Decimal("50"), places=2),
)
def test_limit_buy_stays_within_tolerance_on_tick_and_affordable_at_its_limit(
    master_size: Decimal,
    equity: Decimal,
    cash: Decimal,
    price: Decimal,
    tolerance: Decimal,
) -> None:
    risk = RiskSpec(max_price_deviation_pct=tolerance, slippage_action="limit")
    sig = signal(size=str(master_size), price=str(price))
    decision = size_follower(sig, follower(str(equity), cash=str(cash), risk=risk), ONE)

    if isinstance(decision, SizedOrder):
        assert decision.limit_price is not None
        assert decision.size_type == "base"
        assert decision.limit_price <= price * (1 + tolerance / 100)
        assert decision.limit_price % Decimal("0.1") == 0
        assert decision.size * decision.limit_price <= cash
