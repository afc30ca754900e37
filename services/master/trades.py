"""Master trade requests by request id: what makes `copytrade master trade` safe to retry.

Before the master order is placed, a record keyed by the request id is created, create-if-absent:
of two requests with one id, only one places. The record holds the order's client order id
(derived from the request id) and the account snapshot the signal needs; the final reply is
stored on it. A request sent again finds the record: a final reply is answered again, an open
record is resumed by looking the order up by its client order id.
"""

from __future__ import annotations

import time
import uuid
from decimal import Decimal

import msgspec
from msgspec import Struct
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared import bus
from shared.messages import TradeReply, TradeRequest

_NAMESPACE = uuid.UUID("7a89e37d-0040-49a3-bd06-e72f71d1f70e")


def master_client_order_id(master_id: str, request_id: str) -> str:
    """32 hex chars (every venue accepts them), the same for every retry of one request."""
    return uuid.uuid5(_NAMESPACE, f"{master_id}:{request_id}").hex


class TradeRecord(Struct, frozen=True, kw_only=True):
    request: TradeRequest
    client_order_id: str
    master_equity: Decimal  # before the order: the signal's sizing basis, kept for a resume
    position_before: Decimal
    owner: str  # the master instance working on it
    at: float  # when that instance took it
    reply: TradeReply | None = None  # the final outcome; None while open


class TradeLedger:
    """Trade records in the master's KV bucket (in memory without one: tests, one process)."""

    def __init__(self, kv: KeyValue | None) -> None:
        self._kv = kv
        self._memory: dict[str, tuple[bytes, int]] = {}
        self._encoder = msgspec.json.Encoder(decimal_format="string")
        self._decoder = msgspec.json.Decoder(TradeRecord)

    async def get(self, request_id: str) -> tuple[TradeRecord, int] | None:
        """The record and its revision, or None."""
        key = _key(request_id)
        if self._kv is None:
            stored = self._memory.get(key)
        else:
            kv = self._kv
            try:
                entry = await bus.retry("trade_record_get", lambda: kv.get(key))
            except KeyNotFoundError:
                return None
            stored = None if entry.value is None else (entry.value, entry.revision or 0)
        return None if stored is None else (self._decoder.decode(stored[0]), stored[1])

    async def create(self, record: TradeRecord) -> bool:
        """Create the record; False if one with this request id exists (someone was first)."""
        key, data = _key(record.request.request_id), self._encoder.encode(record)
        if self._kv is None:
            if key in self._memory:
                return False
            self._memory[key] = (data, 1)
            return True
        kv = self._kv
        try:
            await bus.retry("trade_record_create", lambda: kv.create(key, data))
        except KeyWrongLastSequenceError:
            return False
        return True

    async def take_over(self, record: TradeRecord, revision: int, owner: str) -> TradeRecord | None:
        """Take an abandoned open record (compare-and-set); None if another instance did."""
        taken = msgspec.structs.replace(record, owner=owner, at=time.time())
        key, data = _key(record.request.request_id), self._encoder.encode(taken)
        if self._kv is None:
            self._memory[key] = (data, revision + 1)
            return taken
        kv = self._kv
        try:
            await bus.retry("trade_record_take", lambda: kv.update(key, data, last=revision))
        except KeyWrongLastSequenceError:
            return None
        return taken

    async def close(self, record: TradeRecord, reply: TradeReply) -> None:
        """Store the final reply (retried through NATS hiccups; raises when they last)."""
        key = _key(record.request.request_id)
        data = self._encoder.encode(msgspec.structs.replace(record, reply=reply))
        if self._kv is None:
            self._memory[key] = (data, self._memory.get(key, (b"", 0))[1] + 1)
            return
        kv = self._kv
        await bus.retry("trade_record_close", lambda: kv.put(key, data))


def _key(request_id: str) -> str:
    return f"trade.{request_id}"
