"""Convergence: two masters trade while copiers are SIGKILLed, nats-server restarts and follower
venues fail; once the faults stop, every follower's copied holding comes back to its target.

Two paper masters (`masters:`), each run by its own master service subprocess (COPYTRADE_MASTER),
send buys and partial sells one after another, as `copytrade master trade --master` does (the
same request id again after an error). Every follower copies both: the first by equity ratio,
the second by a multiplier. Two copier replicas run as subprocesses with reconciliation healing
every second. Meanwhile the run SIGKILLs a copier (and starts a new one), restarts nats-server,
and queues 5xx (exchange_error), 429 (rate_limited) and timeout-after-accept faults at the
followers' venue accounts.

Sizes are chosen so that every copy, sell and heal is exact at the venue's lot step (1e-8 BTC):
a follower's copied holding for a master (ledger `hold.<follower>.<master>.BTC_USD`) should
equal the master's copied position (ledger `master.<master>.BTC_USD`) × the follower's scale for
that subscription, and any gap is something copying or healing failed to close.

Printed: followers, fills, the largest drift when the faults stopped and after (in lot steps),
the time to converge (target 30 s) and duplicates (a client order id sent to the venue after
the venue had accepted it). Asserted: 0 duplicates, convergence within 30 s, and the ledger
agreeing with the venue's balances.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal as signals
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
import yaml
from nats.aio.client import Client

from services.paper.venue import PaperVenue
from shared import bus
from shared.exchange.paper import InjectFault, Ok, Orders, Place, Position, Submit
from shared.ledger import Ledger, holding_key, master_key
from shared.messages import SizingSpec, TradeReply, TradeRequest, TradeSignal, client_order_id_for
from shared.sizing_modes import position_scale
from support.natsserver import NatsServer
from tests.chaos.conftest import CHAOS_PUBLIC_KEY, CHAOS_SEED, Figures
from tests.harness import ROOT, System, eventually

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1200)]

SEED = 20_250_113
SYMBOL = "BTC/USD"
LOT = Decimal("0.00000001")  # the paper venue's amount step for BTC/USD
MASTERS = ("alpha", "beta")  # alpha: followers' own sizing (equity ratio); beta: a multiplier
MASTER_EQUITY = Decimal(100_000)
FOLLOWERS = [f"c{i:02d}" for i in range(40)]
EQUITIES = (5_000, 10_000, 20_000)  # equity ratio 0.05, 0.1, 0.2 of the master's
MULTIPLIERS = ("0.1", "0.25", "0.5")
TRADES_PER_MASTER = 15
BUYS = (Decimal("0.004"), Decimal("0.008"), Decimal("0.012"))  # BTC: 180 to 540 USD
SELLS = (Fraction(1, 4), Fraction(1, 2), Fraction(3, 4))  # of the master's position
SELL_STEP = Decimal("0.001")  # a master sale is a whole number of these: copies stay exact
TRADE_GAP_S = 1.0
REPLY_TIMEOUT_S = 10.0
FAULT_KINDS = ("exchange_error", "rate_limited", "timeout_after_accept")
FAULTS_PER_ROUND = 8
MAX_PENDING = 2  # faults queued per account: a copy makes 4 attempts, so one may still land
# one fault per master trade: the last ones land while the masters' last trades are copied
SCHEDULE = (
    "venue",
    "kill",
    "venue",
    "venue",
    "nats",
    "venue",
    "venue",
    "kill",
    "venue",
    "venue",
    "venue",
    "nats",
    "venue",
    "kill",
    "venue",
    "venue",
    "venue",
    "nats",
    "venue",
    "kill",
    "venue",
    "venue",
    "venue",
)
CONVERGE_S = 30.0
STABLE_S = 3.0  # converged means: still converged this long after
COPIER_ENV = {
    "COPYTRADE_RECONCILE_INTERVAL_S": "1",
    "COPYTRADE_RECONCILE_HEAL": "true",
    "COPYTRADE_RECONCILE_THRESHOLD": "0",
}

_encoder = msgspec.json.Encoder(decimal_format="string")
_replies = msgspec.json.Decoder(TradeReply)


# ---- the venue: orders counted by client order id -------------------------------------------


class CountingVenue(PaperVenue):
    """The paper venue, noting every order sent again after it had accepted it: a venue that does
    not refuse a known client order id (Kraken's userref) would have placed it twice."""

    def __init__(self) -> None:
        super().__init__(timeout_hold_s=1.5)
        self.resent: Counter[tuple[str, str]] = Counter()

    async def _place(self, call: Place | Submit) -> Ok:
        if call.order.client_order_id in self._account(call.account).orders:
            self.resent[call.account, call.order.client_order_id] += 1
        return await super()._place(call)

    def pending_faults(self, account: str) -> int:
        return len(self._account(account).faults)

    def stop_faults(self) -> int:
        """Drop every fault still queued; return how many there were."""
        left = 0
        for account in self.accounts():
            left += len(self._account(account).faults)
            self._account(account).faults.clear()
        return left


@pytest.fixture
async def system(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[System]:
    stack = System(nats_server, tmp_path)
    stack.venue = CountingVenue()
    async with stack:
        yield stack


# ---- config and processes ----------------------------------------------------------------------


def _follower(number: int, follower_id: str) -> dict[str, Any]:
    multiplier = MULTIPLIERS[number % len(MULTIPLIERS)]
    return {
        "id": follower_id,
        "exchange": "paper",
        "subscriptions": [
            {"master": "alpha"},
            {"master": "beta", "sizing": {"mode": "multiplier", "multiplier": multiplier}},
        ],
    }


def _config_data() -> dict[str, Any]:
    return {
        "masters": [{"id": m, "exchange": "paper"} for m in MASTERS],
        "signals": {"public_keys": [CHAOS_PUBLIC_KEY], "max_age_s": 3600},
        "followers": [_follower(i, f) for i, f in enumerate(FOLLOWERS)],
    }


def _equity(follower_id: str) -> int:
    return EQUITIES[FOLLOWERS.index(follower_id) % len(EQUITIES)]


def _spawn_master(system: System, config_path: Path, master_id: str) -> subprocess.Popen[bytes]:
    """`python -m services.master` serving `master_id`, signing with the chaos key."""
    secrets = system.tmp_path / "master-secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "MASTER_SIGNING_KEY").write_text(CHAOS_SEED)
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("COPYTRADE_")},
        "COPYTRADE_NATS_URL": system.server.url,
        "COPYTRADE_CONFIG": str(config_path),
        "COPYTRADE_SECRETS_DIR": str(secrets),
        "COPYTRADE_HTTP_PORT": "0",
        "COPYTRADE_INSTANCE": f"master-{master_id}",
        "COPYTRADE_MASTER": master_id,
        "COPYTRADE_ORDER_TIMEOUT_S": "2",
    }
    log = (system.tmp_path / f"master-{master_id}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.master"], cwd=ROOT, env=environ, stdout=log, stderr=log
    )
    system.processes.append(proc)  # killed at teardown
    return proc


@dataclass
class Copiers:
    """The copier replicas running now, by instance; each SIGKILLed one is replaced by a new
    process."""

    system: System
    config_path: Path
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    started: int = 0
    killed: int = 0

    def start(self) -> None:
        self.started += 1
        instance = f"copier-{self.started}"
        self.running[instance] = self.system.spawn_copier(self.config_path, instance=instance, **COPIER_ENV)

    async def kill_and_replace(self) -> None:
        proc = self.running.pop(next(iter(self.running)))  # the oldest
        proc.send_signal(signals.SIGKILL)
        await asyncio.to_thread(proc.wait, 10)
        self.killed += 1
        self.start()

    def check(self) -> None:
        """Fail at once, with the end of its log, when a copier exited by itself."""
        for instance, proc in self.running.items():
            if proc.poll() is not None:
                log = (self.system.tmp_path / f"{instance}.log").read_text()
                raise AssertionError(f"{instance} exited ({proc.returncode}): {log[-2000:]}")


# ---- master trades, as the CLI sends them ------------------------------------------------------


def _plan(rng: random.Random) -> list[tuple[str, Decimal]]:
    """A master's trades: buys, and sales of a quarter, half or three quarters of its position
    whenever that is a whole number of SELL_STEP (so every copy of it is exact)."""
    trades: list[tuple[str, Decimal]] = []
    position = Decimal(0)
    for _ in range(TRADES_PER_MASTER):
        sizes = [position * f.numerator / f.denominator for f in SELLS]
        exact = [s for s in sizes if s > 0 and s % SELL_STEP == 0]
        if exact and rng.random() < 0.4:
            size, side = rng.choice(exact), "sell"
        else:
            size, side = rng.choice(BUYS), "buy"
        trades.append((side, size))
        position += size if side == "buy" else -size
    return trades


@dataclass
class Trading:
    filled: Counter[str] = field(default_factory=Counter)
    retries: int = 0  # requests sent again after an error or no reply (same request id)

    @property
    def total(self) -> int:
        return self.filled.total()


async def _send(nc: Client, master_id: str, request: TradeRequest, trading: Trading) -> None:
    """Send until it fills, with the same request id (never a second master order)."""
    while True:
        try:
            msg = await nc.request(
                bus.master_trade_subject(master_id), _encoder.encode(request), timeout=REPLY_TIMEOUT_S
            )
            if _replies.decode(msg.data).ok:
                trading.filled[master_id] += 1
                return
        except (TimeoutError, nats.errors.Error):
            pass
        trading.retries += 1
        await asyncio.sleep(0.2)


async def _trade(nc: Client, master_id: str, plan: list[tuple[str, Decimal]], trading: Trading) -> None:
    for side, size in plan:
        request = TradeRequest(
            symbol=SYMBOL,
            side=side,  # type: ignore[arg-type]
            size=size,
            size_type="base",
            master_id=master_id,
        )
        await _send(nc, master_id, request, trading)
        await asyncio.sleep(TRADE_GAP_S)


# ---- faults ------------------------------------------------------------------------------------


@dataclass
class Faults:
    venue: Counter[str] = field(default_factory=Counter)
    nats_restarts: int = 0


async def _venue_faults(venue: CountingVenue, rng: random.Random, faults: Faults) -> None:
    """Queue a 5xx, a 429 or a timeout-after-accept at FAULTS_PER_ROUND followers' accounts
    (in-process: NATS may be down)."""
    open_ = [f for f in FOLLOWERS if venue.pending_faults(f) < MAX_PENDING]
    for follower in rng.sample(open_, min(FAULTS_PER_ROUND, len(open_))):
        kind = rng.choice(FAULT_KINDS)
        await venue.handle(InjectFault(follower, kind))  # type: ignore[arg-type]
        faults.venue[kind] += 1


async def _restart_nats(system: System, faults: Faults) -> None:
    await asyncio.to_thread(system.server.stop)
    await asyncio.sleep(1.0)  # an outage every client notices
    await asyncio.to_thread(system.server.start)
    faults.nats_restarts += 1


async def _faults(system: System, copiers: Copiers, trading: Trading, faults: Faults) -> None:
    """One fault per master trade filled, from the third on, as SCHEDULE says."""
    venue = system.venue
    assert isinstance(venue, CountingVenue)
    rng = random.Random(SEED)
    for number, fault in enumerate(SCHEDULE):
        await eventually(lambda n=number: trading.total >= 2 + n, timeout=120)
        if fault == "venue":
            await _venue_faults(venue, rng, faults)
        elif fault == "kill":
            await copiers.kill_and_replace()
        else:
            await _restart_nats(system, faults)


# ---- drift: copied holdings against their targets ----------------------------------------------


def _scale(follower_id: str, master_id: str) -> Fraction:
    number = FOLLOWERS.index(follower_id)
    spec = (
        SizingSpec()
        if master_id == "alpha"
        else SizingSpec(mode="multiplier", multiplier=Decimal(MULTIPLIERS[number % len(MULTIPLIERS)]))
    )
    scale = position_scale(spec, equity=Decimal(_equity(follower_id)), master_equity=MASTER_EQUITY)
    assert scale is not None
    return scale


@dataclass(frozen=True)
class Drift:
    follower_id: str
    master_id: str
    holding: Decimal
    target: Fraction

    @property
    def steps(self) -> Fraction:
        return abs(Fraction(self.holding) - self.target) / Fraction(LOT)


async def _drifts(ledger: Ledger) -> list[Drift]:
    positions = {m: (await ledger.read(master_key(m, SYMBOL))).amount for m in MASTERS}
    return [
        Drift(
            f, m, (await ledger.read(holding_key(f, m, SYMBOL))).amount, Fraction(positions[m]) * _scale(f, m)
        )
        for f in FOLLOWERS
        for m in MASTERS
    ]


def _largest(drifts: list[Drift]) -> Fraction:
    return max(d.steps for d in drifts)


async def _converge(ledger: Ledger, copiers: Copiers, deadline_s: float) -> tuple[float | None, list[Drift]]:
    """Seconds until every holding is within one lot step of its target and stays so for
    STABLE_S (None: not by the deadline); the drifts last read."""
    started = time.monotonic()
    converged_at: float | None = None
    while True:
        copiers.check()
        try:
            drifts = await _drifts(ledger)
        except (TimeoutError, nats.errors.Error):
            drifts = []
        now = time.monotonic()
        if drifts and _largest(drifts) <= 1:
            converged_at = converged_at or now
            if now - converged_at >= STABLE_S:
                return converged_at - started, drifts
        else:
            converged_at = None
            if now - started > deadline_s:
                return None, drifts
        await asyncio.sleep(0.25)


# ---- what the venue holds ----------------------------------------------------------------------


async def _fills(venue: PaperVenue, accounts: list[str], copies: set[str]) -> Counter[str]:
    """Orders that filled something over these accounts: copies (a client order id of a signal's
    copy) and heals (any other), by side."""
    count: Counter[str] = Counter()
    for account in accounts:
        reply = await venue.handle(Orders(account))
        for order in getattr(reply, "orders", []):
            if order.amount > 0:
                kind = "copy" if order.client_order_id in copies else "heal"
                count[f"{kind} {order.side}"] += 1
    return count


async def _ledger_off_venue(venue: PaperVenue, ledger: Ledger, copies: set[str]) -> list[str]:
    """Followers whose real BTC balance is not the sum of their copied holdings (they hold no
    coins of their own here), with the venue's orders the ledger never applied."""
    off = []
    for follower in FOLLOWERS:
        entries = [await ledger.read(holding_key(follower, m, SYMBOL)) for m in MASTERS]
        held = sum((e.amount for e in entries), Decimal(0))
        real = getattr(await venue.handle(Position(follower, SYMBOL)), "amount", None) or Decimal(0)
        if real == held:
            continue
        applied = {cid for e in entries for cid in e.applied}
        orders = getattr(await venue.handle(Orders(follower)), "orders", [])
        missing = [
            f"{'copy' if o.client_order_id in copies else 'heal'} {o.side} {o.amount} {o.client_order_id}"
            for o in orders
            if o.amount and o.client_order_id not in applied
        ]
        off.append(f"{follower}: venue {real} ledger {held}; not in the ledger: {missing}")
    return off


async def _copy_ids(system: System) -> tuple[int, set[str]]:
    """How many signals the masters published, and the client order id of each one's copies."""
    info = await system.js.stream_info(bus.SIGNALS_STREAM)
    ids = set()
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await system.js.get_msg(bus.SIGNALS_STREAM, seq)
        ids.add(msgspec.json.decode(msg.data or b"", type=TradeSignal).signal_id)
    return len(ids), {client_order_id_for(s, f) for s in ids for f in FOLLOWERS}


# ---- the run -----------------------------------------------------------------------------------


async def test_two_masters_through_kills_restarts_and_venue_faults_converge_without_duplicates(
    system: System,
    figures: Figures,
) -> None:
    venue = system.venue
    assert isinstance(venue, CountingVenue)
    config_path = system.tmp_path / "copytrade.yaml"
    config_path.write_text(yaml.safe_dump(_config_data()))
    for master in MASTERS:
        await system.fund(master, MASTER_EQUITY)
    for follower in FOLLOWERS:
        await system.fund(follower, _equity(follower))
    ledger = Ledger(await system.js.key_value(bus.LEDGER_BUCKET))
    rng = random.Random(SEED)
    plans = {m: _plan(rng) for m in MASTERS}
    copiers = Copiers(system, config_path)
    trading, faults = Trading(), Faults()

    for master in MASTERS:
        _spawn_master(system, config_path, master)
    for _ in range(2):
        copiers.start()
    await eventually(system.consumer_exists, timeout=60)
    nc = await system.connect()
    injecting = asyncio.create_task(_faults(system, copiers, trading, faults))
    await asyncio.gather(*(_trade(nc, m, plans[m], trading) for m in MASTERS))
    await injecting
    copiers.check()
    left_queued = venue.stop_faults()
    stopped_drift = _largest(await _drifts(ledger))
    seconds, drifts = await _converge(ledger, copiers, CONVERGE_S)
    signal_count, copy_ids = await _copy_ids(system)
    off_venue = await _ledger_off_venue(venue, ledger, copy_ids)
    fills = await _fills(venue, FOLLOWERS, copy_ids)
    master_fills = (await _fills(venue, list(MASTERS), set())).total()
    duplicates = venue.resent.total()

    lines = [
        f"convergence: followers {len(FOLLOWERS)} x masters {len(MASTERS)} (alpha equity ratio, "
        f"beta multiplier); master trades {trading.total} ({dict(trading.filled)}), "
        f"sent again {trading.retries}, signals {signal_count}",
        f"convergence: faults: venue {dict(faults.venue)} ({left_queued} unused), copier "
        f"SIGKILLs {copiers.killed}, nats-server restarts {faults.nats_restarts}",
        f"convergence: fills: master {master_fills}, followers {fills.total()} "
        f"({', '.join(f'{k} {n}' for k, n in sorted(fills.items()))})",
        f"convergence: max drift when the faults stopped {float(stopped_drift):.0f} lot steps; "
        f"after {float(_largest(drifts)) if drifts else float('nan'):.0f} lot steps",
        "convergence: time to converge "
        + (f"{seconds:.1f} s" if seconds is not None else f"not within {CONVERGE_S:g} s")
        + f" (target <= {CONVERGE_S:g} s); duplicates {duplicates}; ledger off the venue "
        f"{len(off_venue)}",
    ]
    for line in lines:
        figures.note(line)
        print(line)
    for line in off_venue:
        print(f"convergence: ledger off the venue: {line}")
    gaps = [d for d in drifts if d.steps > 1]

    assert trading.total == len(MASTERS) * TRADES_PER_MASTER
    assert duplicates == 0, venue.resent
    assert seconds is not None, [
        f"{d.follower_id}/{d.master_id}: holding {d.holding} target {float(d.target):.8f}" for d in gaps
    ]
    assert off_venue == [], off_venue
