"""Sizing a linked order like a copy: the master order as an internal signal (never
published, never signed) through the same figures and sizer as any copy. Buys scale by the
subscription's sizing; sells and stops by the follower's copied holding for that master
(fraction = master size / master copied position). Then the price onto the follower venue's
tick: down for a buy, up for a sell (never a worse price than the master's)."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from decimal import Decimal

import msgspec
from nats.aio.client import Client

from services.copier.copy.figures import FigureReader, ReadFailed
from services.copier.copy.holdings import Holdings
from services.copier.copy.policy import Policy
from services.copier.copy.sizing import SizerClient
from services.copier.followers import Follower, FollowerBook
from services.copier.metrics import CopierMetrics
from shared.config import CopierSettings
from shared.messages import (
    Decision,
    FollowerSnapshot,
    MarketRules,
    OrderSignal,
    Side,
    TradeSignal,
    signal_id_for,
)

INTERNAL = "copytrade"  # the "exchange" of internal signals (as copy/subscriptions.py)
_NAMESPACE = uuid.UUID("6e0b5f3a-1c2d-4e8f-9a7b-3c4d5e6f7a81")


def internal_signal(event: OrderSignal) -> TradeSignal:
    """The master order's part still to trade, as a signal the sizer sizes like a fill. Its
    time is now: a resting order carries its own price, so no age limit applies to it."""
    left = event.size - event.filled
    price = event.price if event.price is not None else event.trigger_price
    assert price is not None  # every mirrored kind has a limit or a trigger price
    order_id = "mirror-" + uuid.uuid5(_NAMESPACE, event.signal_id).hex
    return TradeSignal(
        signal_id=signal_id_for(INTERNAL, order_id),
        master_id=event.master_id,
        exchange=INTERNAL,
        symbol=event.symbol,
        side=event.side,
        price=price,
        size=left,
        size_type="base",
        filled_base=left,
        order_id=order_id,
        master_equity=event.master_equity,
        master_position_before=event.copied_position,
        copied_position_before=event.copied_position,
        executed_at=time.time(),
    )


def on_tick(price: Decimal | None, side: Side, rules: MarketRules | None) -> Decimal | None:
    """The price on the venue's tick: a buy's down, a sell's up."""
    step = None if rules is None else rules.price_step
    if price is None or step is None:
        return price
    steps = price / step
    return (math.floor(steps) if side == "buy" else math.ceil(steps)) * step


def on_step(size: Decimal, rules: MarketRules | None) -> Decimal:
    """A size down to the venue's amount step."""
    if rules is None:
        return size
    return math.floor(size / rules.amount_step) * rules.amount_step


class LinkSizer:
    """Figures and the sizer's decision for linked orders (a copy's, without its slippage guard:
    a resting order's own price is its bound)."""

    def __init__(
        self,
        *,
        nc: Client,
        book: FollowerBook,
        policy: Policy,
        holdings: Holdings,
        settings: CopierSettings,
        metrics: CopierMetrics,
    ) -> None:
        limit = asyncio.Semaphore(settings.concurrency)
        self._figures = FigureReader(
            book=book, policy=policy, holdings=holdings, settings=settings, limit=limit
        )
        self._sizer = SizerClient(nc, book, metrics)

    async def size(self, event: OrderSignal, followers: list[Follower]) -> dict[str, Decision | ReadFailed]:
        signal = internal_signal(event)
        figures = await self._figures.read_all(signal, followers)
        decided: dict[str, Decision | ReadFailed] = {
            f.follower_id: f for f in figures if not isinstance(f, FollowerSnapshot)
        }
        ready = [_unguarded(f) for f in figures if isinstance(f, FollowerSnapshot)]
        if ready:
            decided.update(await self._sizer.size(signal, ready))
        return decided


def _unguarded(snapshot: FollowerSnapshot) -> FollowerSnapshot:
    risk = msgspec.structs.replace(snapshot.risk, max_price_deviation_pct=None, slippage_action="skip")
    return msgspec.structs.replace(snapshot, risk=risk, price=None)
