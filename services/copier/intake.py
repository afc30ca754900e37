"""Intake: what a signal message must pass before anything is copied. Bytes that are not a
signal (a master fill, `TradeSignal`, or a master order event, `OrderSignal`), a signature that
does not verify, and a signal this group already took are recorded as rejects (never executed)
and the message is terminated.

The replay guard is a create-if-absent key per (group, signal) holding the stream sequence of
the message that took it: the same message delivered again (a redelivery, also one a new
consumer leader makes after a node loss, whose delivery count may start over) passes as a
redelivery; another message with that signal id is a replay."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from nats.aio.msg import Msg

from services.copier.copy.claims import Claims
from services.copier.delivery import Delivery
from services.copier.followers import FollowerBook
from shared.messages import MALFORMED, AnySignal

LEGACY_GUARD = b"1"  # guards written before they held the stream sequence


class GuardGone(Exception):
    """The replay guard existed a moment ago and is gone now: the message is retried."""


@dataclass(frozen=True)
class Admitted:
    signal: AnySignal
    redelivered: bool  # this message was taken before: its copies may exist already


class Intake:
    def __init__(self, *, book: FollowerBook, claims: Claims, delivery: Delivery) -> None:
        self._book, self._claims, self._delivery = book, claims, delivery
        self._decoder = msgspec.json.Decoder(AnySignal)

    async def admit(self, msg: Msg) -> Admitted | None:
        """The signal to copy, or None once the message was rejected and terminated."""
        try:
            signal = self._decoder.decode(msg.data)
        except MALFORMED as exc:
            await self._refuse(msg, "malformed", str(exc))
            return None
        problem = self._signature_problem(signal) or self._unknown_master(signal)
        if problem is not None:
            await self._refuse(msg, *problem)
            return None
        taken = await self._taken_before(signal, msg)
        if taken is None:
            await self._refuse(msg, "replayed", f"signal {signal.signal_id} was already taken by this group")
            return None
        return Admitted(signal, redelivered=taken or msg.metadata.num_delivered > 1)

    def _signature_problem(self, signal: AnySignal) -> tuple[str, str] | None:
        return self._book.signature_problem(signal)  # fills and order events alike

    def _unknown_master(self, signal: AnySignal) -> tuple[str, str] | None:
        if signal.master_id in self._book.masters:
            return None
        return "unknown_master", f"signal {signal.signal_id}: {signal.master_id} is no configured master"

    async def _taken_before(self, signal: AnySignal, msg: Msg) -> bool | None:
        """False: first taken now; True: this same message was taken before; None: a replay."""
        key = f"seen.{self._book.group}.{signal.signal_id}"
        mine = str(msg.metadata.sequence.stream).encode()
        if await self._claims.create(key, mine):
            return False
        held = await self._claims.value(key)
        if held is None:
            raise GuardGone(key)
        if held == mine or (held == LEGACY_GUARD and msg.metadata.num_delivered > 1):
            return True
        return None

    async def _refuse(self, msg: Msg, reason_code: str, reason: str) -> None:
        await self._delivery.reject(msg.data, reason_code, reason)
        await msg.term()
