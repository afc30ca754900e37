"""The copy ledger: what copying holds, kept apart from what accounts hold of their own.

- per (master, symbol): the master's **copied position**, the net of its fills since it was
  followed (never below zero; what it held before is not part of it);
- per (follower, master, symbol): the follower's **copied holding**, changed only by its own
  copy fills and clipped to its real balance when it sold by hand.

Each entry lives in the JetStream KV bucket `copytrade-ledger` (replicated like every bucket).
A change is applied exactly once per fill: the entry keeps the ids of the fills recently applied
(with the amount before each), and is written with an expected revision, so a redelivery, a
recovered order or two replicas racing count a fill once. A change is first tried on top of the
entry as this process last read or wrote it (one round trip instead of a read and a write per
fill); when someone else wrote since, the revision check refuses it and the entry is read again.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from decimal import Decimal

import msgspec
from msgspec import Struct
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared import bus
from shared.bus import reading

log = logging.getLogger("copytrade.ledger")
ZERO = Decimal(0)
REMEMBERED = 64  # fill ids kept per entry: redeliveries come long before 64 newer fills
WRITE_ATTEMPTS = 20
KNOWN_ENTRIES = 8192  # entries kept as last read or written (raw: a full one is ~4 KB)


class Entry(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    amount: Decimal = ZERO  # base units
    applied: dict[str, Decimal] = {}  # fill id -> amount before it (insertion ordered)
    clipped: Decimal = ZERO  # total removed because the real balance was lower (manual sales)
    # coins an operator adopted into the holding (`copytrade adopt`): part of its target, so a
    # heal never sells them; never more than the holding (an exit that sells them clears it)
    adopted: Decimal = ZERO


def master_key(master_id: str, symbol: str) -> str:
    return f"master.{master_id}.{_symbol(symbol)}"


def holding_key(follower_id: str, master_id: str, symbol: str) -> str:
    return f"hold.{follower_id}.{master_id}.{_symbol(symbol)}"


def alive_key(master_id: str) -> str:
    """In the fills bucket: when the master's venue was last read (its fill watcher's poll)."""
    return f"alive.{master_id}"


def report_key(follower_id: str, master_id: str, symbol: str) -> str:
    return f"report.{follower_id}.{master_id}.{_symbol(symbol)}"


class PositionReport(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What reconciliation last saw for a copied holding: for `copytrade positions`."""

    follower_id: str
    master_id: str
    symbol: str
    holding: Decimal  # the copied holding (ledger), after any clip
    real: Decimal  # the follower's real balance of the symbol at its venue
    target: Decimal  # the master's copied position × the follower's scale
    at: float


def _symbol(symbol: str) -> str:
    return symbol.replace("/", "_")  # BTC/USD -> BTC_USD: one key token


class LedgerConflict(Exception):
    """An entry kept changing under us: too many writers at once."""


class Ledger:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._encoder = msgspec.json.Encoder(decimal_format="string")
        self._decoder = msgspec.json.Decoder(Entry)
        # key -> (stored bytes, revision) as this process last read or wrote them, newest last
        self._known: OrderedDict[str, tuple[bytes | None, int | None]] = OrderedDict()

    @property
    def kv(self) -> KeyValue:
        return self._kv

    async def read(self, key: str) -> Entry:
        return (await self._read(key))[0]

    async def read_revision(self, key: str) -> tuple[Entry, int | None]:
        """The entry and its revision (None: never written): a change of revision means some
        fill, clip or adoption was applied in between."""
        return await self._read(key)

    async def apply(
        self, key: str, fill_id: str, delta: Decimal, *, adopt: bool = False
    ) -> tuple[Decimal, Decimal]:
        """Add `delta` (a buy's fill; negative for a sell's) once for `fill_id`, never below zero;
        return (amount before, amount after). A fill already applied changes nothing and returns
        the figures it had. adopt: the operator adopts coins the account already holds."""
        for attempt in range(WRITE_ATTEMPTS):
            entry, revision = await self._latest(key, known=attempt == 0)
            if fill_id in entry.applied:
                before = entry.applied[fill_id]
                return before, max(ZERO, before + delta)
            after = max(ZERO, entry.amount + delta)
            applied = dict(entry.applied)
            applied[fill_id] = entry.amount
            while len(applied) > REMEMBERED:
                del applied[next(iter(applied))]
            adopted = min(after, entry.adopted + (delta if adopt else ZERO))
            new = msgspec.structs.replace(entry, amount=after, applied=applied, adopted=adopted)
            if await self._write(key, new, revision):
                return entry.amount, after
        raise LedgerConflict(f"ledger entry {key} kept changing")

    async def clip(self, key: str, real_balance: Decimal) -> Decimal:
        """Lower the entry to the real balance when it holds more (the account sold by hand);
        return how much was removed (0 if nothing)."""
        for _ in range(WRITE_ATTEMPTS):
            entry, revision = await self._read(key)  # never judged on a kept copy: read
            excess = entry.amount - max(ZERO, real_balance)
            if excess <= 0:
                return ZERO
            new = msgspec.structs.replace(
                entry,
                amount=entry.amount - excess,
                clipped=entry.clipped + excess,
                adopted=min(entry.adopted, entry.amount - excess),
            )
            if await self._write(key, new, revision):
                log.warning(
                    "event=holding_clipped key=%s removed=%s real_balance=%s", key, excess, real_balance
                )
                return excess
        raise LedgerConflict(f"ledger entry {key} kept changing")

    async def report(self, report: PositionReport) -> None:
        """Record what reconciliation saw (last value wins; for operators, not for money)."""
        key = report_key(report.follower_id, report.master_id, report.symbol)
        await bus.retry(f"ledger report {key}", lambda: self._kv.put(key, self._encoder.encode(report)))

    async def entries(self, prefix: str) -> dict[str, Entry]:
        """Every entry under `prefix` (whole tokens, ending in "."), in one complete read
        (`bus.reading`: nats.py's `keys` can come back empty under load, and a close would then
        sell nothing, quietly)."""
        if not prefix.endswith("."):
            raise ValueError(f"ledger prefix {prefix!r} must end with a '.'")
        found = await bus.retry(f"ledger entries {prefix}", lambda: reading.latest_in(self._kv, f"{prefix}>"))
        return {v.key: self._decoder.decode(v.data) for v in found}

    async def _latest(self, key: str, *, known: bool) -> tuple[Entry, int | None]:
        """The entry as last read or written here (`known`: a write on top of it is checked by
        its revision), else read now."""
        kept = self._known.get(key) if known else None
        if kept is None:
            return await self._read(key)
        self._known.move_to_end(key)
        data, revision = kept
        return (Entry() if data is None else self._decoder.decode(data)), revision

    async def _read(self, key: str) -> tuple[Entry, int | None]:
        self._known.pop(key, None)
        try:
            got = await bus.retry(f"ledger read {key}", lambda: self._kv.get(key))
        except KeyNotFoundError:
            self._remember(key, None, None)
            return Entry(), None
        if got.value is None or got.operation in ("DEL", "PURGE"):
            self._remember(key, None, got.revision)
            return Entry(), got.revision
        self._remember(key, got.value, got.revision)
        return self._decoder.decode(got.value), got.revision

    async def _write(self, key: str, entry: Entry, revision: int | None) -> bool:
        data = self._encoder.encode(entry)
        self._known.pop(key, None)  # until this write's outcome is known

        async def write() -> int:
            if revision is None:
                return await self._kv.create(key, data)
            return await self._kv.update(key, data, last=revision)

        try:
            written = await bus.retry(f"ledger write {key}", write)
        except KeyWrongLastSequenceError:
            return False  # someone else wrote first: read again
        self._remember(key, data, written)
        return True

    def _remember(self, key: str, data: bytes | None, revision: int | None) -> None:
        self._known[key] = (data, revision)
        if len(self._known) > KNOWN_ENTRIES:
            self._known.popitem(last=False)
