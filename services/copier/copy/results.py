"""Outcomes: every copy ends as one `CopyResult` in the RESULTS stream (filled, submitted,
skipped with its reason, dry run, or failed with its error class), deduplicated per
(signal, follower); the signal is acked only once all of them are stored."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from services.copier.followers import Follower
from services.copier.metrics import CopierMetrics
from shared import bus
from shared.errors import ExchangeError
from shared.exchange.port import OrderAck, OrderStatus
from shared.messages import CopyResult, Outcome, SizedOrder, Skip, TradeSignal

log = logging.getLogger("copytrade.copier")
# expired: the venue ended the order having filled nothing (a limit order out of the money)
_OUTCOMES: dict[OrderStatus, Outcome] = {"filled": "filled", "submitted": "submitted", "expired": "skipped"}


@dataclass(frozen=True)
class Copy:
    """One follower's copy of one signal: what every outcome of it shares."""

    signal: TradeSignal
    follower: Follower
    group: str
    received_at: float

    @property
    def symbol(self) -> str:
        return self.follower.venue_symbol(self.signal.symbol)

    def skipped(self, skip: Skip) -> CopyResult:
        return CopyResult(
            signal_id=self.signal.signal_id,
            master_id=self.signal.master_id,
            follower_id=self.follower.id,
            exchange=self.group,
            symbol=self.symbol,
            side=self.signal.side,
            signal_executed_at=self.signal.executed_at,
            received_at=self.received_at,
            outcome="skipped",
            reason_code=skip.reason_code,
            reason=skip.reason,
        )

    def dry_run(self, order: SizedOrder, client_order_id: str) -> CopyResult:
        return CopyResult(
            signal_id=self.signal.signal_id,
            master_id=self.signal.master_id,
            follower_id=self.follower.id,
            exchange=self.group,
            symbol=self.symbol,
            side=self.signal.side,
            signal_executed_at=self.signal.executed_at,
            received_at=self.received_at,
            outcome="dry_run",
            reason_code="dry_run",
            reason="Dry run: decision recorded, no order",
            size=order.size,
            size_type=order.size_type,
            notional=order.notional,
            client_order_id=client_order_id,
        )

    def placed(
        self, order: SizedOrder, ack: OrderAck, sent_at: float | None, *, recovered: bool
    ) -> CopyResult:
        code, reason = _unfilled(order) if ack.status == "expired" else ("none", "")
        return CopyResult(
            signal_id=self.signal.signal_id,
            master_id=self.signal.master_id,
            follower_id=self.follower.id,
            exchange=self.group,
            symbol=self.symbol,
            side=self.signal.side,
            signal_executed_at=self.signal.executed_at,
            received_at=self.received_at,
            outcome=_OUTCOMES[ack.status],
            reason_code=code,
            reason=reason,
            size=order.size,
            size_type=order.size_type,
            notional=order.notional,
            client_order_id=ack.client_order_id,
            exchange_order_id=ack.exchange_order_id,
            filled_base=ack.filled_base,
            avg_price=ack.avg_price,
            recovered=recovered,
            order_sent_at=sent_at,
            acked_at=ack.accepted_at or time.time(),
        )

    def failed(
        self,
        error: ExchangeError,
        *,
        order: SizedOrder | None = None,
        client_order_id: str | None = None,
        sent_at: float | None = None,
    ) -> CopyResult:
        """An order or an account read that failed: its error class, never a quiet skip."""
        return CopyResult(
            signal_id=self.signal.signal_id,
            master_id=self.signal.master_id,
            follower_id=self.follower.id,
            exchange=self.group,
            symbol=self.symbol,
            side=self.signal.side,
            signal_executed_at=self.signal.executed_at,
            received_at=self.received_at,
            outcome="failed",
            reason_code=error.reason_code,
            reason=f"{type(error).__name__}: {error}",
            size=None if order is None else order.size,
            size_type=None if order is None else order.size_type,
            notional=None if order is None else order.notional,
            client_order_id=client_order_id,
            order_sent_at=sent_at,
        )


def _unfilled(order: SizedOrder) -> tuple[str, str]:
    if order.limit_price is not None:
        return (
            "limit_not_filled",
            f"Limit order at {order.limit_price} not filled: the price moved beyond the slippage tolerance",
        )
    return "not_filled", "The venue ended the order without filling it"


class Recording:
    """One signal's outcome records in flight to the results stream, and their tally."""

    def __init__(self) -> None:
        self.pending: list[bus.Sent] = []
        self.tally: Counter[str] = Counter()


class ResultLog:
    """Writes outcomes to the RESULTS stream and reads a follower's latest one back."""

    def __init__(self, js: JetStreamContext, metrics: CopierMetrics, group: str) -> None:
        self._js, self._metrics, self._group = js, metrics, group
        self._encoder = msgspec.json.Encoder(decimal_format="string")
        self._decoder = msgspec.json.Decoder(CopyResult)

    async def record(self, result: CopyResult, recording: Recording) -> None:
        """Send the outcome (deduplicated by Nats-Msg-Id); `stored` awaits it."""
        subject = bus.result_subject(self._group, result.follower_id)
        data, msg_id = self._encoder.encode(result), f"{result.signal_id}:{result.follower_id}"
        recording.pending.append(await bus.send(self._js, subject, data, msg_id))
        recording.tally[result.outcome] += 1
        self._metrics.outcome(result.follower_id, result.outcome, result.reason_code, result.master_id)
        level = logging.DEBUG if result.outcome in ("filled", "submitted") else logging.INFO
        log.log(
            level,
            "event=copy_%s signal_id=%s follower=%s client_order_id=%s reason=%r",
            result.outcome,
            result.signal_id,
            result.follower_id,
            result.client_order_id,
            result.reason,
        )

    async def stored(self, recording: Recording, timeout_s: float) -> None:
        """Wait until the stream has stored every record; those whose write failed or whose
        ack stopped coming (a leader change, a node lost) are sent again, deduplicated; raise
        when that fails too."""
        await bus.confirm(self._js, recording.pending, within_s=min(timeout_s, bus.OUTAGE_S))

    async def recorded(self, follower_id: str, signal_id: str) -> bool:
        """Whether this follower's latest recorded outcome is for this signal."""
        try:
            msg = await bus.retry(
                "read result",
                lambda: self._js.get_last_msg(
                    bus.RESULTS_STREAM, bus.result_subject(self._group, follower_id)
                ),
            )
        except NotFoundError:
            return False
        return msg.data is not None and self._decoder.decode(msg.data).signal_id == signal_id
