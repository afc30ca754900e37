"""Mirroring's outcomes: each one a `CopyResult` in the RESULTS stream, with its reason, like a
copy's. The signal id is the master event's (an order event, a master fill) or, for what the
link itself causes (a fill the sweep found, an orphan cancelled), an id derived from the link."""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal

from services.copier.copy.results import Recording, ResultLog
from services.copier.orders.links import Link
from shared.errors import ExchangeError
from shared.exchange.port import OrderAck
from shared.messages import CopyResult, OrderSignal, Outcome, Skip, TradeSignal

STORE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Origin:
    """What an outcome answers: a master event (its signal id, when the master's venue executed
    it, when this replica received it), or what a link itself caused (an id derived from the
    link, no times: received now)."""

    signal_id: str
    executed_at: float = 0.0
    received_at: float = 0.0

    @classmethod
    def of(cls, event: OrderSignal | TradeSignal, received_at: float) -> Origin:
        return cls(event.signal_id, event.executed_at, received_at)


class Outcomes:
    """Records outcomes for one group and waits until they are stored."""

    def __init__(self, results: ResultLog, group: str) -> None:
        self._results, self._group = results, group

    async def record(
        self,
        link: Link,
        origin: Origin,
        outcome: Outcome,
        reason_code: str,
        reason: str,
        *,
        ack: OrderAck | None = None,
        size: Decimal | None = None,
        filled: Decimal | None = None,
    ) -> None:
        result = CopyResult(
            signal_id=origin.signal_id,
            follower_id=link.follower_id,
            exchange=self._group,
            master_id=link.master_id,
            outcome=outcome,
            reason_code=reason_code,
            reason=reason[:500],
            symbol=link.symbol,
            side=link.side,
            size=size if size is not None else (link.size or None),
            size_type="base",
            notional=_notional(size or link.size, link),
            client_order_id=ack.client_order_id if ack is not None else link.client_order_id,
            exchange_order_id=None if ack is None else ack.exchange_order_id,
            filled_base=filled if filled is not None else (None if ack is None else ack.filled_base),
            avg_price=None if ack is None else ack.avg_price,
            signal_executed_at=origin.executed_at,
            received_at=origin.received_at or time.time(),
            order_sent_at=None,
            acked_at=None if ack is None else (ack.accepted_at or time.time()),
        )
        recording = Recording()
        await self._results.record(result, recording)
        await self._results.stored(recording, STORE_TIMEOUT_S)

    async def skipped(self, link: Link, origin: Origin, skip: Skip) -> None:
        await self.record(link, origin, "skipped", skip.reason_code, skip.reason)

    async def failed(self, link: Link, origin: Origin, error: ExchangeError) -> None:
        await self.record(link, origin, "failed", error.reason_code, f"{type(error).__name__}: {error}")


def _notional(size: Decimal, link: Link) -> Decimal | None:
    price = link.price if link.price is not None else link.trigger_price
    return None if price is None or not size else (size * price).quantize(Decimal("0.01"))
