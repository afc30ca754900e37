"""What the chaos scenarios share: signed signals published exactly once, counting orders by
client order id, and the figures table printed at the end of `make chaos`.

Every scenario reports one row: faults injected, orders expected, orders the venue holds, and of
those expected, how many are missing (lost) or held more than once (duplicated); `unexpected`
counts orders whose client order id no copy should have produced.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec
import nats
import pytest
import yaml
from nats.js.client import JetStreamContext

from services.paper.venue import PaperVenue
from shared import bus
from shared.config import CopytradeConfig, parse_config
from shared.exchange.paper import Orders
from shared.messages import CopyResult, TradeSignal, client_order_id_for, signal_id_for
from shared.signing import SignalSigner
from support.natsserver import NatsServer, nats_server_binary
from tests.harness import config_data, paper_followers

MASTER = "master"
PRICE = Decimal("45000")
MASTER_EQUITY = Decimal("10000")
# A fixed master key (the harness makes a new one per run): the same signatures, hence the same
# hypothesis draws and the same hostile sample, on every run.
CHAOS_SEED = base64.b64encode(hashlib.sha256(b"copytrade chaos suite").digest()).decode()
SIGNER = SignalSigner(CHAOS_SEED)
CHAOS_PUBLIC_KEY = SIGNER.public_key_b64
ENCODER = msgspec.json.Encoder(decimal_format="string")


# ---- signals -----------------------------------------------------------------------------------


def signed_signal(order_id: str, quote: str = "100") -> TradeSignal:
    """The master's market buy of `quote` USD of BTC, signed with the test key: a follower with
    1,000 USD of equity copies a tenth of it."""
    size = Decimal(quote)
    return SIGNER.sign(
        TradeSignal(
            signal_id=signal_id_for("paper", order_id),
            master_id=MASTER,
            exchange="paper",
            symbol="BTC/USD",
            side="buy",
            price=PRICE,
            size=size,
            size_type="quote",
            filled_base=(size / PRICE).quantize(Decimal("0.00000001")),
            order_id=order_id,
            master_equity=MASTER_EQUITY,
            master_position_before=Decimal(0),
            executed_at=time.time(),
        )
    )


class Publisher:
    """Publishes signals as the master does, retrying each until JetStream stores it.

    The message id is the signal id, so a retry whose earlier attempt was stored is dropped by
    JetStream's duplicate window: exactly one copy is stored however often we retry.
    """

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.failures = 0  # attempts that got no ack: the outage as the master saw it

    async def publish(self, signal: TradeSignal, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self.js.publish(
                    bus.signal_subject(MASTER),
                    ENCODER.encode(signal),
                    timeout=1.0,
                    headers={"Nats-Msg-Id": signal.signal_id},
                )
                return
            except (nats.errors.Error, TimeoutError):
                self.failures += 1
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)  # back off before the next attempt, as bus.retry_forever

    async def publish_all(self, signals: Iterable[TradeSignal]) -> None:
        for signal in signals:
            await self.publish(signal)


async def publish_until_stored(js: JetStreamContext, signal: TradeSignal) -> None:
    await Publisher(js).publish(signal)


def chaos_config_data(followers: Iterable[str], **follower_settings: Any) -> dict[str, Any]:
    """Config file content for paper followers. Scenarios outlast the default 60 s signal age
    limit: a signal skipped as stale would hide a lost copy, so the limit is an hour here."""
    return config_data(
        paper_followers(dict.fromkeys(followers, 0), **follower_settings),
        signals={"public_keys": [CHAOS_PUBLIC_KEY], "max_age_s": 3600},
    )


def chaos_config(followers: Iterable[str], **follower_settings: Any) -> CopytradeConfig:
    return parse_config(yaml.safe_dump(chaos_config_data(followers, **follower_settings)))


# ---- NATS ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def jetstream_unavailable(server: NatsServer, timeout_s: float = 10.0) -> Iterator[None]:
    """nats-server back on its port with JetStream not answering yet, as while a restarted server
    recovers its store: clients reconnect, and every JetStream request gets a 503."""
    proc = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(server.port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", server.port), 0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("nats-server without JetStream did not start")
            time.sleep(0.02)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


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
        expected=len(wanted),
        found=sum(seen.values()),
        lost=len(wanted - set(seen)),
        duplicated=sum(n - 1 for key, n in seen.items() if key in wanted),
        unexpected=sum(n for key, n in seen.items() if key not in wanted),
    )


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
        header = ("scenario", "faults", "expected", "found", "lost", "duplicated", "unexpected", "seconds")
        lines = [f"{header[0]:<56}" + "".join(f"{h:>11}" for h in header[1:])]
        for row in self.rows:
            c = row.count
            cells = (row.faults, c.expected, c.found, c.lost, c.duplicated, c.unexpected)
            lines.append(f"{row.scenario:<56}" + "".join(f"{v:>11}" for v in cells) + f"{row.seconds:>11.1f}")
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
