"""Intake: what a signal message must pass before anything is copied. Bytes that are not a
signal, a signature that does not verify, and a signal this group already took are recorded
as rejects (never executed) and the message is terminated."""

from __future__ import annotations

import msgspec
from nats.aio.msg import Msg

from services.copier.copy.claims import Claims
from services.copier.delivery import Delivery
from services.copier.followers import FollowerBook
from shared.messages import MALFORMED, TradeSignal


class Intake:
    def __init__(self, *, book: FollowerBook, claims: Claims, delivery: Delivery) -> None:
        self._book, self._claims, self._delivery = book, claims, delivery
        self._decoder = msgspec.json.Decoder(TradeSignal)

    async def admit(self, msg: Msg) -> TradeSignal | None:
        """The signal to copy, or None once the message was rejected and terminated."""
        try:
            signal = self._decoder.decode(msg.data)
        except MALFORMED as exc:
            await self._refuse(msg, "malformed", str(exc))
            return None
        problem = await self._judge(signal, redelivered=msg.metadata.num_delivered > 1)
        if problem is not None:
            await self._refuse(msg, *problem)
            return None
        return signal

    async def _judge(self, signal: TradeSignal, *, redelivered: bool) -> tuple[str, str] | None:
        """Why this signal must not be executed (reason code, text), or None."""
        problem = self._book.signature_problem(signal)
        if problem is not None:
            return problem
        seen = f"seen.{self._book.group}.{signal.signal_id}"
        if not redelivered and not await self._claims.create(seen, b"1"):
            return "replayed", f"signal {signal.signal_id} was already taken by this group"
        return None

    async def _refuse(self, msg: Msg, reason_code: str, reason: str) -> None:
        await self._delivery.reject(msg.data, reason_code, reason)
        await msg.term()
