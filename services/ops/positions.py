"""`copytrade positions`: the copy ledger as an operator reads it.

Per (follower, master, symbol): the copied holding (what a master's exits sell), next to the real
balance reconciliation last saw at the venue, its age, and the target (the master's copied
position × the follower's scale); then each master's copied position. Read-only: nothing is
created or written.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from services.ops.connection import connected
from shared import bus
from shared.bus import reading
from shared.config import CommonSettings
from shared.ledger import Entry, PositionReport

NOT_RECONCILED = "real: not yet reconciled"
_entries = msgspec.json.Decoder(Entry)
_reports = msgspec.json.Decoder(PositionReport)
_json = msgspec.json.Encoder(decimal_format="string")
T = TypeVar("T")


@dataclass(frozen=True)
class Scope:
    """Which entries to read: None is every follower (master)."""

    follower: str | None = None
    master: str | None = None
    masters: frozenset[str] | None = None  # the master positions shown (None: every one)


class Holding(msgspec.Struct, frozen=True, kw_only=True):
    follower: str
    master: str
    symbol: str
    holding: Decimal  # the copied holding (ledger)
    sold_by_hand: Decimal  # removed from it because the real balance was lower
    real: Decimal | None  # None: not yet reconciled
    target: Decimal | None
    reconciled_at: float | None
    age_s: float | None


class MasterPosition(msgspec.Struct, frozen=True, kw_only=True):
    master: str
    symbol: str
    copied_position: Decimal


class Positions(msgspec.Struct, frozen=True, kw_only=True):
    holdings: list[Holding]
    masters: list[MasterPosition]


async def positions(settings: CommonSettings, scope: Scope) -> Positions:
    async with connected(settings) as nc:
        kv = await _ledger_bucket(nc.jetstream())
        if kv is None:  # nothing was ever copied
            return Positions(holdings=[], masters=[])
        f, m = scope.follower or "*", scope.master or "*"
        held = await latest(kv, f"hold.{f}.{m}.>")
        reports = await latest(kv, f"report.{f}.{m}.>")
        master_entries = await latest(kv, f"master.{m}.>")
    now = time.time()
    return Positions(holdings=_holdings(held, reports, now), masters=_masters(master_entries, scope.masters))


async def _ledger_bucket(js: JetStreamContext) -> KeyValue | None:
    try:
        return await js.key_value(bus.LEDGER_BUCKET)
    except NotFoundError:
        return None


async def latest(kv: KeyValue, pattern: str) -> dict[str, bytes]:
    """The current value of every key matching `pattern` (deleted keys left out), in one
    complete read rather than one request per key (`bus.reading`)."""
    return {v.key: v.data for v in await reading.latest_in(kv, pattern)}


def _holdings(held: dict[str, bytes], reports: dict[str, bytes], now: float) -> list[Holding]:
    """One row per (follower, master, symbol) that holds something or should (its target)."""
    seen: dict[tuple[str, str, str], tuple[Entry, PositionReport | None]] = {}
    for key, value in held.items():
        parts = key.split(".", 3)  # hold.<follower>.<master>.<BASE_QUOTE>
        entry = _decode(_entries, key, value)
        if len(parts) == 4 and entry is not None:
            seen[(parts[1], parts[2], parts[3].replace("_", "/"))] = (entry, None)
    for key, value in reports.items():
        report = _decode(_reports, key, value)
        if report is not None:
            where = (report.follower_id, report.master_id, report.symbol)
            seen[where] = (seen.get(where, (Entry(), None))[0], report)
    rows = [_row(where, entry, report, now) for where, (entry, report) in sorted(seen.items())]
    return [r for r in rows if r.holding > 0 or (r.target or 0) > 0]


def _row(where: tuple[str, str, str], entry: Entry, report: PositionReport | None, now: float) -> Holding:
    follower, master, symbol = where
    return Holding(
        follower=follower,
        master=master,
        symbol=symbol,
        holding=entry.amount,
        sold_by_hand=entry.clipped,
        real=None if report is None else report.real,
        target=None if report is None else report.target,
        reconciled_at=None if report is None else report.at,
        age_s=None if report is None else max(0.0, now - report.at),
    )


def _masters(entries: dict[str, bytes], shown: frozenset[str] | None) -> list[MasterPosition]:
    found = []
    for key, value in sorted(entries.items()):
        parts = key.split(".", 2)  # master.<master>.<BASE_QUOTE>
        entry = _decode(_entries, key, value)
        if len(parts) != 3 or entry is None or entry.amount <= 0:
            continue
        if shown is None or parts[1] in shown:
            found.append(
                MasterPosition(
                    master=parts[1], symbol=parts[2].replace("_", "/"), copied_position=entry.amount
                )
            )
    return found


def _decode(decoder: msgspec.json.Decoder[T], key: str, value: bytes) -> T | None:
    try:
        return decoder.decode(value)
    except msgspec.DecodeError:  # written by another version: said, not fatal
        print(f"warning: ledger entry {key} cannot be read by this version: left out", file=sys.stderr)
        return None


# ---- output ----------------------------------------------------------------------------------


def as_json(found: Positions) -> str:
    return _json.encode(found).decode()


def as_table(found: Positions) -> str:
    if found.holdings:
        lines = table(
            ["follower", "master", "symbol", "holding", "real", "target", "reconciled"],
            [_cells(h) for h in found.holdings],
            numeric={3, 4, 5},
        )
    else:
        lines = ["no copied holdings"]
    lines.append("")
    if found.masters:
        lines += table(
            ["master", "symbol", "copied position"],
            [[p.master, p.symbol, _number(p.copied_position)] for p in found.masters],
            numeric={2},
        )
    else:
        lines.append("no master copied positions")
    return "\n".join(lines)


def _cells(h: Holding) -> list[str]:
    head = [h.follower, h.master, h.symbol, _number(h.holding)]
    if h.real is None or h.age_s is None:
        return [*head, NOT_RECONCILED]  # the last cell spans the columns it cannot fill
    return [*head, _number(h.real), _number(h.target), f"{age(h.age_s)} ago"]


def table(headers: list[str], rows: list[list[str]], numeric: set[int]) -> list[str]:
    """Aligned columns, numbers lined up on their decimal point. A row with fewer cells than
    headers ends with one cell spanning the rest (it does not widen its column)."""
    filled = [len(r) if len(r) == len(headers) else len(r) - 1 for r in rows]
    columns = [[r[i] if i < filled[n] else None for n, r in enumerate(rows)] for i in range(len(headers))]
    aligned = [_points(c) if i in numeric else c for i, c in enumerate(columns)]
    widths = [
        max([len(headers[i]), *(len(v) for v in col if v is not None)]) for i, col in enumerate(aligned)
    ]
    out = ["  ".join(_pad(h, widths[i], i in numeric) for i, h in enumerate(headers)).rstrip()]
    for n, row in enumerate(rows):
        cells = [
            _pad(cell, widths[i], i in numeric)
            for i, col in enumerate(aligned)
            if (cell := col[n]) is not None
        ]
        if len(row) < len(headers):
            cells.append(row[-1])
        out.append("  ".join(cells).rstrip())
    return out


def _points(column: list[str | None]) -> list[str | None]:
    """Numbers padded so that their decimal points line up."""
    shown = [v for v in column if v is not None]
    decimals = max((len(v.partition(".")[2]) + ("." in v) for v in shown), default=0)
    return [
        None if v is None else v + " " * (decimals - len(v.partition(".")[2]) - ("." in v)) for v in column
    ]


def _pad(text: str, width: int, right: bool) -> str:
    return text.rjust(width) if right else text.ljust(width)


def _number(value: Decimal | None) -> str:
    return "-" if value is None else f"{value:f}"


def age(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:.0f}s"
