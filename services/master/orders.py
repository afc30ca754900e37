"""Which path copies a master order, and the id of each of its fills.

A master order is copied either whole, by the master service (copytrade's own order: one signal,
fill id ""), or fill by fill, by the fill watcher (a trade made outside copytrade). A
create-if-absent claim per order in the fills bucket decides which, once: the service claims its
order as soon as the venue acknowledged it, the watcher an order the first time it sees a fill
of it. Whoever finds the other's claim leaves the order alone, so no fill is copied twice, even
when a lost acknowledgement lets the watcher see the service's order first.

A fill's id is the venue's trade id where the adapter has one; else the order's cumulative
filled amount at that fill, kept on the claim (with which fill got which amount) before the
signal is published, so a fill seen again, after a restart or in the next poll's overlap, gets
the same id.
"""

from __future__ import annotations

import re
import uuid
from decimal import Decimal
from typing import Literal

import msgspec
from msgspec import Struct
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared import bus
from shared.errors import CopytradeError
from shared.exchange.port import Fill
from shared.messages import signal_id_for

Copier = Literal["own", "fills"]  # own: the master service, whole; fills: the watcher, per fill
_FILL_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")  # what a signal's fill_id may hold
_NAMESPACE = uuid.UUID("0f0a4d64-7b7e-4c38-9d0e-3c1b8f5a2e61")
ZERO = Decimal(0)


class ClaimConflict(CopytradeError):
    """An order's claim kept changing under us: try again later."""

    reason_code = "claim_conflict"


class OrderClaim(Struct, frozen=True, kw_only=True):
    by: Copier
    filled: Decimal = ZERO  # fills without a trade id: the cumulative amount so far
    parts: dict[str, str] = {}  # such a fill's fingerprint -> its fill id


def trade_fill_id(trade_id: str) -> str:
    """The venue's trade id as a signal's fill id (hashed if it does not fit one)."""
    return trade_id if _FILL_ID.match(trade_id) else uuid.uuid5(_NAMESPACE, trade_id).hex


def fingerprint(fill: Fill) -> str:
    """What tells a fill without a trade id from its order's others (`nth` apart twins)."""
    return f"{fill.at!r}|{fill.amount}|{fill.price}"


class OrderClaims:
    """Claims in the master's fills bucket (in memory without one: tests, one process)."""

    def __init__(self, kv: KeyValue | None, exchange: str) -> None:
        self._kv, self._exchange = kv, exchange
        self._memory: dict[str, tuple[bytes, int]] = {}
        self._encoder = msgspec.json.Encoder(decimal_format="string")
        self._decoder = msgspec.json.Decoder(OrderClaim)

    async def claim(self, order_id: str, by: Copier) -> OrderClaim:
        """Claim the order for `by` unless it is claimed already; return its claim (compare
        `.by`: the other path's claim means the other path copies it)."""
        key = self._key(order_id)
        for _ in range(10):
            found = await self._get(key)
            if found is not None:
                return found[0]
            claim = OrderClaim(by=by)
            if await self._write(key, claim, None):
                return claim
        raise ClaimConflict(f"the claim of order {order_id} kept changing")

    async def fill_id(self, fill: Fill, nth: int = 0) -> str:
        """The fill's id: its trade id, else the cumulative amount of its order at this fill,
        written on the order's claim (the watcher's) before it is used. `nth` counts the earlier
        fills of the order with the same fingerprint (same time, amount and price) in the list
        read. A fill given a cumulative id keeps it once its adapter learns trade ids."""
        key, print_ = self._key(fill.order_id), f"{fingerprint(fill)}|{nth}"
        for _ in range(10):
            found = await self._get(key)
            claim, revision = found if found is not None else (OrderClaim(by="fills"), None)
            if print_ in claim.parts:
                return claim.parts[print_]
            if fill.trade_id:
                return trade_fill_id(fill.trade_id)
            filled = claim.filled + fill.amount
            fill_id = f"cum:{format(filled.normalize(), 'f')}"
            parts = {**claim.parts, print_: fill_id}
            if await self._write(key, msgspec.structs.replace(claim, filled=filled, parts=parts), revision):
                return fill_id
        raise ClaimConflict(f"the claim of order {fill.order_id} kept changing")

    def _key(self, order_id: str) -> str:
        return f"order.{signal_id_for(self._exchange, order_id)}"  # hex: any order id fits a key

    async def _get(self, key: str) -> tuple[OrderClaim, int] | None:
        if self._kv is None:
            stored = self._memory.get(key)
        else:
            kv = self._kv
            try:
                entry = await bus.retry("order_claim_get", lambda: kv.get(key))
            except KeyNotFoundError:
                return None
            stored = None if entry.value is None else (entry.value, entry.revision or 0)
        return None if stored is None else (self._decoder.decode(stored[0]), stored[1])

    async def _write(self, key: str, claim: OrderClaim, revision: int | None) -> bool:
        """Create (revision None) or compare-and-set; False when another write came first."""
        data = self._encoder.encode(claim)
        if self._kv is None:
            current = self._memory.get(key)
            if (current[1] if current else None) != revision:
                return False
            self._memory[key] = (data, (revision or 0) + 1)
            return True
        kv = self._kv

        async def write() -> int:
            if revision is None:
                return await kv.create(key, data)
            return await kv.update(key, data, last=revision)

        try:
            await bus.retry("order_claim_write", write)
        except KeyWrongLastSequenceError:
            return False
        return True
