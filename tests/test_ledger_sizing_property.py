"""Property: over any sequence of master buys and partial sells, follower manual sales and
redelivered copies, sizing on the copy ledger never sells a follower's own coins, never lets a
copied holding go negative or above the real balance, and a full master exit empties it."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from services.sizer.sizing import size_follower
from shared.messages import (
    FollowerSnapshot,
    MarketRules,
    SizedOrder,
    SizingSpec,
    TradeSignal,
    signal_id_for,
)

STEP = Decimal("0.00000001")
BTC = MarketRules(
    symbol="BTC/USD", amount_step=STEP, min_amount=STEP, min_cost=Decimal(0), price_step=Decimal("0.1")
)
PRICE = Decimal(45000)

AMOUNT = st.decimals(min_value=Decimal("0.001"), max_value=Decimal("0.5"), places=3)
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("buy"), AMOUNT),
        st.tuples(st.just("sell"), st.sampled_from([Decimal("0.25"), Decimal("0.5"), Decimal(1)])),
        st.tuples(st.just("hand_sale"), st.sampled_from([Decimal("0.1"), Decimal("0.5")])),
        st.tuples(st.just("redeliver"), st.just(Decimal(0))),
    ),
    min_size=1,
    max_size=25,
)


class Model:
    """The master's copied position, one follower's real balance, own coins and copied holding,
    and the client order ids already applied (a redelivery applies nothing twice)."""

    def __init__(self, own: Decimal) -> None:
        self.master, self.own, self.holding = Decimal(0), own, Decimal(0)
        self.applied: set[str] = set()
        self.last: tuple[str, SizedOrder] | None = None
        self.count = 0

    @property
    def real(self) -> Decimal:
        return self.own + self.holding

    def copy(self, side: str, base: Decimal) -> None:
        self.count += 1
        order_id = f"o{self.count}"
        before = self.master
        self.master = max(Decimal(0), before + (base if side == "buy" else -base))
        signal = TradeSignal(
            signal_id=signal_id_for("paper", order_id),
            master_id="m",
            exchange="paper",
            symbol="BTC/USD",
            side=side,  # type: ignore[arg-type]
            price=PRICE,
            size=base,
            size_type="base",
            filled_base=base,
            order_id=order_id,
            master_equity=Decimal(100_000),
            master_position_before=before + Decimal(10),
            copied_position_before=before,
            executed_at=1.0,
        )
        snapshot = FollowerSnapshot(
            follower_id="f",
            equity=Decimal(10_000_000),
            cash=Decimal(10_000_000),
            position=self.real,
            holding=self.holding,
            rules=BTC,
            sizing=SizingSpec(mode="multiplier", multiplier=Decimal("0.5")),
        )
        decision = size_follower(signal, snapshot, Decimal("0.0001"))
        if isinstance(decision, SizedOrder):
            self.fill(order_id, decision)

    def fill(self, cid: str, order: SizedOrder) -> None:
        self.last = (cid, order)
        if cid in self.applied:
            return  # a redelivered or recovered copy: counted once
        self.applied.add(cid)
        self.holding += order.size if order.side == "buy" else -order.size

    def hand_sale(self, fraction: Decimal) -> None:
        """The follower sells part of all it holds by hand: its own coins go first, and the
        ledger clips the copied holding to what is left (as reconciliation does)."""
        real_after = self.real - (self.real * fraction).quantize(STEP)
        self.holding = min(self.holding, real_after)
        self.own = real_after - self.holding


@settings(max_examples=200, deadline=None)
@given(own=st.sampled_from([Decimal(0), Decimal(1)]), steps=STEPS)
def test_copying_on_the_ledger_never_sells_own_coins(own: Decimal, steps: list[tuple[str, Decimal]]) -> None:
    model = Model(own)
    own_start = own
    for action, amount in steps:
        own_before = model.own
        if action == "buy":
            model.copy("buy", amount)
        elif action == "sell":
            model.copy("sell", (model.master * amount).quantize(Decimal("0.001")) or Decimal("0.001"))
        elif action == "hand_sale":
            model.hand_sale(amount)
        elif model.last is not None:
            model.fill(*model.last)
        assert model.holding >= 0
        assert model.holding <= model.real
        if action != "hand_sale":
            assert model.own == own_before  # copies never touch the follower's own coins
    own_before_exit = model.own
    if model.master > 0:
        model.copy("sell", model.master)  # the master exits fully
    assert model.holding == 0  # a full exit closes exactly what was copied
    assert model.own == own_before_exit <= own_start
