"""Links: one record per (follower, master resting order) in the ledger bucket, saying which
follower order mirrors it now and what became of it. Every venue step is written here as an
intent first (the client order id it will use, derived, never random), so a crash at any point
is resumed by looking that id up, never by placing again.

Keys: `link.<group>.<follower>.<hash of master and order id>`; written with an expected
revision (two replicas, or an event and the sweep, never both move a link)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from decimal import Decimal
from typing import Literal

import msgspec
from msgspec import Struct
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared import bus
from shared.bus import nats_fixes, reading
from shared.errors import CopytradeError
from shared.messages import MirroredKind, Side

ZERO = Decimal(0)
REMEMBERED_FILLS = 64  # master fill signals counted per link: redeliveries come long before
_NAMESPACE = uuid.UUID("a3f1c2b4-5d6e-4f70-8a91-b2c3d4e5f607")
EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
WRONG_LAST_SEQUENCE = 10071  # JetStream: the subject's last message is not the one expected

# placing    the follower order `client_order_id` is being placed (may exist at the venue)
# live       it rests at the venue (as last seen)
# replacing  `previous` is being cancelled, then `client_order_id` placed for what is left
# ended      the follower order is gone from the venue (filled, or cancelled with its fill applied)
# unlinked   no follower order mirrors the master order (skipped, refused, failed): its fills
#            are copied as fills
LinkState = Literal["placing", "live", "replacing", "ended", "unlinked"]


class LinkConflict(CopytradeError):
    """Another replica (or the sweep) moved the link first: the caller reads it again later."""

    reason_code = "link_conflict"


class Link(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    follower_id: str
    master_id: str
    exchange: str  # the master's broker
    order_id: str  # the master's order
    kind: MirroredKind
    symbol: str  # canonical BASE/QUOTE
    side: Side
    state: LinkState
    version: int  # the master order's version the follower order mirrors
    master_size: Decimal  # the master order's total (base), as of `version`
    size: Decimal = ZERO  # the follower's total for it (base, every version's fills included)
    price: Decimal | None = None  # on the follower venue's tick
    trigger_price: Decimal | None = None
    client_order_id: str | None = None  # the follower order now (or the last one)
    previous: str | None = None  # replacing: the order cancelled before `client_order_id`
    applied: dict[str, Decimal] = {}  # follower order -> its fill, applied to the ledger once
    # a follower order still open -> its fill so far, applied to the ledger (each increment
    # once, as the fill `<client order id>@<level>`); moved to `applied` when the order ends
    credited: dict[str, Decimal] = {}
    crediting: tuple[str, Decimal] | None = None  # intent: that order's fill up to this level
    master_filled: Decimal = ZERO  # the master fills counted (signals in `master_fills`)
    master_fills: list[str] = []
    master_open: bool = True  # False once the master cancelled it or it filled whole
    due: float | None = None  # the master filled whole: settle the follower's side then
    # what ended the link for good ("": not yet): cancelled, kept, unwound, chased, both_filled,
    # orphan, gone, unlinked; `unwinding` / `chasing` while that order is being placed
    resolved: str = ""
    reason_code: str = ""  # why it is unlinked or ended (a skip's, a failure's)
    reason: str = ""
    failed: bool = False  # that reason is a failure (an error), not a skip
    owner: str = ""  # the replica that wrote the last intent
    at: float = 0.0  # when it was last written

    @property
    def filled(self) -> Decimal:
        """What the follower's orders for this master order filled, as applied to the ledger."""
        return sum(self.applied.values(), ZERO)

    @property
    def order_size(self) -> Decimal:
        """The current follower order's own size: the total less what earlier orders filled."""
        earlier = sum((v for k, v in self.applied.items() if k != self.client_order_id), ZERO)
        return self.size - earlier

    @property
    def placed(self) -> bool:
        """The current follower order went out (it rests, or ended with a fill)."""
        return self.state == "live" or (self.client_order_id or "") in self.applied

    @property
    def finished(self) -> bool:
        return self.resolved not in ("", "unwinding", "chasing") and self.state in ("ended", "unlinked")


def link_key(group: str, follower_id: str, master_id: str, order_id: str) -> str:
    return f"link.{group}.{follower_id}.{uuid.uuid5(_NAMESPACE, f'{master_id}:{order_id}').hex}"


def event_id(key: str, what: str) -> str:
    """A deterministic id for an outcome (or an order) the link itself causes: a fill found by
    the sweep, an orphan cancelled, a chase, an unwind."""
    return uuid.uuid5(_NAMESPACE, f"{key}:{what}").hex


# the links to one master order as one read found them, by key (LinkStore.of_order)
Known = Mapping[str, tuple[Link, int]]


class LinkStore:
    def __init__(self, kv: KeyValue, group: str, js: JetStreamContext) -> None:
        nats_fixes.require()  # without it an update that conflicts never resolves
        self._kv, self.group, self._js = kv, group, js
        self._encoder = msgspec.json.Encoder(decimal_format="string")
        self._decoder = msgspec.json.Decoder(Link)

    def key(self, follower_id: str, master_id: str, order_id: str) -> str:
        return link_key(self.group, follower_id, master_id, order_id)

    async def get(self, key: str) -> tuple[Link, int] | None:
        try:
            entry = await bus.retry(f"read link {key}", lambda: self._kv.get(key))
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.revision is None or entry.operation in ("DEL", "PURGE"):
            return None
        return self._decoder.decode(entry.value), entry.revision

    async def create(self, key: str, link: Link) -> int | None:
        """Write a new link; None when one exists already (another attempt made it)."""
        data = self._encoder.encode(msgspec.structs.replace(link, at=time.time()))
        try:
            return await bus.retry(f"create link {key}", lambda: self._kv.create(key, data))
        except KeyWrongLastSequenceError:
            return None

    async def update(self, key: str, link: Link, revision: int) -> int:
        """Replace the link written at `revision`; LinkConflict if it moved since. Sent with
        publish_async, KeyValue.update's expected-sequence check without a request of its own
        (as claims are: a fan-out writes one link per follower); a retried write that finds its
        own earlier attempt stored takes it as made."""
        data = self._encoder.encode(msgspec.structs.replace(link, at=time.time()))
        subject, headers = bus.kv_subject(bus.LEDGER_BUCKET, key), {EXPECTED_LAST: str(revision)}
        attempts = 0

        async def once() -> int:
            nonlocal attempts
            attempts += 1
            ack = await self._js.publish_async(subject, data, headers=headers)
            return (await ack).seq

        try:
            return await bus.retry(f"update link {key}", once)
        except BadRequestError as exc:
            if exc.err_code != WRONG_LAST_SEQUENCE:
                raise
            stored = await self._stored(key) if attempts > 1 else None
            if stored is not None and stored[0] == data:
                return stored[1]
            raise LinkConflict(f"link {key} changed under us") from None

    async def _stored(self, key: str) -> tuple[bytes, int] | None:
        try:
            entry = await bus.retry(f"read link {key}", lambda: self._kv.get(key))
        except KeyNotFoundError:
            return None
        return None if entry.value is None or entry.revision is None else (entry.value, entry.revision)

    async def purge(self, key: str) -> None:
        await bus.retry(f"purge link {key}", lambda: self._kv.purge(key))

    async def of_order(self, master_id: str, order_id: str) -> dict[str, tuple[Link, int]]:
        """Every follower's link to one master order, by key, as stored now: one read for an
        event's whole fan-out (where a key is missing, no link was)."""
        order = link_key(self.group, "*", master_id, order_id)
        return {key: (link, revision) for key, link, revision in await self._read(order)}

    async def scan(self) -> list[tuple[str, Link, int]]:
        """Every link of the group, as stored now."""
        return await self._read(f"link.{self.group}.>")

    async def _read(self, keys: str) -> list[tuple[str, Link, int]]:
        found = await bus.retry(
            f"read links {keys}", lambda: reading.latest(self._js, bus.LEDGER_BUCKET, keys)
        )
        return [(v.key, self._decoder.decode(v.data), v.revision) for v in found]


class KeyLocks:
    """One holder per link key in this process: an event and the sweep take turns."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[bool]:
        """Hold the key; whether another holder was there first (a link read before then may
        have moved since: read it again)."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield users > 0
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
