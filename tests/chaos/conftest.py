"""What the chaos scenarios share: signed signals published exactly once, counting orders by
client order id, and the figures table printed at the end of `make chaos`.

Every scenario reports one row: faults injected, orders expected, orders the venue holds, and of
those expected, how many are missing (lost) or held more than once (duplicated); `unexpected`
counts orders whose client order id no copy should have produced.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec
import nats
import pytest
import yaml
from nats.js.client import JetStreamContext

from shared import bus
from shared.config import CopytradeConfig, parse_config
from shared.exchange.paper import Orders, PaperVenue
from shared.messages import CopyResult, TradeSignal, client_order_id_for, signal_id_for
from shared.signing import SignalSigner
from tests.harness import TEST_PUBLIC_KEY, TEST_SIGNING_SEED, config_data, paper_followers

MASTER = "master"
PRICE = Decimal("45000")
MASTER_EQUITY = Decimal("10000")
SIGNER = SignalSigner(TEST_SIGNING_SEED)
ENCODER = msgspec.json.Encoder(decimal_format="string")


# ---- signals -----------------------------------------------------------------------------------


def signed_signal(order_id: str, quote: str = "100") -> TradeSignal:
    """The master's market buy of `quote` USD of BTC, signed with the test key: a follower with
    1,000 USD of equity copies a tenth of it."""
    size = Decimal(quote)
    return SIGNER.sign(TradeSignal(
        signal_id=signal_id_for("paper", order_id), master_id=MASTER, exchange="paper",
        symbol="BTC/USD", side="buy", price=PRICE, size=size, size_type="quote",
        filled_base=(size / PRICE).quantize(Decimal("0.00000001")), order_id=order_id,
        master_equity=MASTER_EQUITY, master_position_before=Decimal(0), executed_at=time.time()))


async def publish_until_stored(js: JetStreamContext, signal: TradeSignal, timeout: float = 60) -> int:
    """Publish as the master does, retrying until JetStream acks; return the failed attempts.

    The message id is the signal id, so a retry whose first attempt was stored is dropped by
    JetStream's duplicate window: exactly one copy is stored however often we retry.
    """
    deadline = time.monotonic() + timeout
    failures = 0
    while True:
        try:
            await js.publish(bus.signal_subject(MASTER), ENCODER.encode(signal), timeout=1.0,
                             headers={"Nats-Msg-Id": signal.signal_id})
            return failures
        except (nats.errors.Error, TimeoutError):
            failures += 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)  # back off before the next attempt, as bus.retry_forever


def chaos_config_data(followers: Iterable[str], **follower_settings: Any) -> dict[str, Any]:
    """Config file content for paper followers. Scenarios outlast the default 60 s signal age
    limit: a signal skipped as stale would hide a lost copy, so the limit is an hour here."""
    return config_data(paper_followers(dict.fromkeys(followers, 0), **follower_settings),
                       signals={"public_keys": [TEST_PUBLIC_KEY], "max_age_s": 3600})


def chaos_config(followers: Iterable[str], **follower_settings: Any) -> CopytradeConfig:
    return parse_config(yaml.safe_dump(chaos_config_data(followers, **follower_settings)))


# ---- counting ------------------------------------------------------------------------------------


def expected_orders(signals: Iterable[TradeSignal], followers: Iterable[str]) -> dict[str, set[str]]:
    """The client order id every follower's venue account should hold once per signal."""
    ids = [s.signal_id for s in signals]
    return {f: {client_order_id_for(sid, f) for sid in ids} for f in followers}


async def paper_orders(venue: PaperVenue, accounts: Iterable[str]) -> dict[str, list[str]]:
    """Client order ids the paper venue holds per account, read in-process (no NATS needed)."""
    held: dict[str, list[str]] = {}
    for account in accounts:
        reply = await venue.handle(Orders(account))
        held[account] = [o.client_order_id for o in getattr(reply, "orders", [])]
    return held


async def results_recorded(js: JetStreamContext) -> int:
    """How many copy outcomes the results stream holds (cheap: per-subject counts only)."""
    info = await js.stream_info(bus.RESULTS_STREAM, subjects_filter="copytrade.results.>")
    return sum((info.state.subjects or {}).values())


def outcomes(records: Iterable[object]) -> Counter[tuple[str, str]]:
    """How many outcomes were recorded per (signal, follower)."""
    return Counter((r.signal_id, r.follower_id) for r in records if isinstance(r, CopyResult))


@dataclass(frozen=True)
class OrderCount:
    expected: int
    found: int
    lost: int
    duplicated: int
    unexpected: int


def count_orders(expected: dict[str, set[str]], held: dict[str, list[str]]) -> OrderCount:
    """Compare the orders each account should hold with those its venue holds, by client id."""
    seen = Counter((account, cid) for account, cids in held.items() for cid in cids)
    wanted = {(account, cid) for account, cids in expected.items() for cid in cids}
    return OrderCount(
        expected=len(wanted), found=sum(seen.values()),
        lost=len(wanted - set(seen)),
        duplicated=sum(n - 1 for key, n in seen.items() if key in wanted),
        unexpected=sum(n for key, n in seen.items() if key not in wanted))


# ---- figures ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    scenario: str
    faults: int
    count: OrderCount
    seconds: float


@dataclass
class Figures:
    """What each scenario did to the system and what the venues hold afterwards."""

    rows: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, scenario: str, faults: int, count: OrderCount, started: float) -> None:
        self.rows.append(Figure(scenario, faults, count, time.monotonic() - started))

    def note(self, line: str) -> None:
        self.notes.append(line)

    def table(self) -> list[str]:
        header = ("scenario", "faults", "expected", "found", "lost", "duplicated", "unexpected",
                  "seconds")
        lines = [f"{header[0]:<44}" + "".join(f"{h:>11}" for h in header[1:])]
        for row in self.rows:
            c = row.count
            cells = (row.faults, c.expected, c.found, c.lost, c.duplicated, c.unexpected)
            lines.append(f"{row.scenario:<44}" + "".join(f"{v:>11}" for v in cells)
                         + f"{row.seconds:>11.1f}")
        return lines + self.notes


FIGURES = pytest.StashKey[Figures]()


@pytest.fixture(scope="session")
def figures(request: pytest.FixtureRequest) -> Figures:
    return request.config.stash.setdefault(FIGURES, Figures())


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    found = config.stash.get(FIGURES, None)
    if found is None or not (found.rows or found.notes):
        return
    terminalreporter.section("chaos figures")
    for line in found.table():
        terminalreporter.write_line(line)
