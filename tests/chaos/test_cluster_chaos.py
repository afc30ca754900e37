"""A three-node JetStream cluster losing nodes under a burst of master trades.

Three nats-servers with routes on loopback, every stream and bucket at three replicas, and every
service a subprocess given the three URLs: the paper venue, the sizer, the master, and two copier
groups of two replicas each (one copying directly, one spreading work items over its replicas).
While master trades are sent one after another (as `copytrade master trade` does, the same request
id again after an error), the node leading the most streams and consumers is SIGKILLed, restarted,
then another node is SIGKILLed (and restarted at the end).

Printed: orders expected / found / lost / duplicated; per copier group, the longest time it made
no progress while a signal was waiting for it (target 5 s); master trades that got an error reply,
or none, although they filled (target 0). Lost and duplicated orders must be 0; the timings are
figures with targets, not assertions.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import msgspec
import nats
import pytest
import yaml
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from services.master.trades import master_client_order_id
from shared import bus
from shared.exchange.paper import Fund, Orders, nats_transport
from shared.messages import (
    AuditRecord,
    CopyResult,
    TradeReply,
    TradeRequest,
    TradeSignal,
    client_order_id_for,
)
from support.localstack import LocalStack
from support.natsserver import NatsCluster, running_cluster
from tests.chaos.conftest import (
    CHAOS_PUBLIC_KEY,
    CHAOS_SEED,
    MASTER,
    Figures,
    count_orders,
)
from tests.harness import config_data, eventually

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1200)]

GROUPS = {"paper": {}, "paper-spread": {"COPYTRADE_SPREAD_THRESHOLD": "0", "COPYTRADE_SHARDS": "4"}}
FOLLOWERS = {group: [f"{group[6:] or 'direct'}-{i:02d}" for i in range(12)] for group in GROUPS}
WARM_SIGNALS = 4  # every group has copied this many signals before the first fault
BETWEEN = 6  # master trades filled between one fault and the next, and after the last
MAX_TRADES = 200
TRADE_GAP_S = 0.2  # between master trades: the burst spans the faults
REPLY_TIMEOUT_S = 10.0
STALL_TARGET_S = 5.0

_encoder = msgspec.json.Encoder(decimal_format="string")
_replies = msgspec.json.Decoder(TradeReply)


# ---- the stack ---------------------------------------------------------------------------------


def _config(path: Path) -> None:
    followers = [{"id": f, "exchange": "paper", "group": g} for g, fs in FOLLOWERS.items() for f in fs]
    path.write_text(
        yaml.safe_dump(config_data(followers, signals={"public_keys": [CHAOS_PUBLIC_KEY], "max_age_s": 3600}))
    )


@contextlib.contextmanager
def _stack(cluster: NatsCluster, workdir: Path) -> Iterator[LocalStack]:
    """Every service a subprocess on the cluster's three URLs, streams at three replicas."""
    _config(workdir / "copytrade.yaml")
    stack = LocalStack(workdir, workdir / "copytrade.yaml", nats=cluster)  # type: ignore[arg-type]
    stack.write_secret("MASTER_SIGNING_KEY", CHAOS_SEED)
    common = {"COPYTRADE_STREAM_REPLICAS": "3"}
    try:
        stack.start("paper-exchange", "paper", **common)
        stack.start("sizer", "sizer", **common)
        stack.start("master", "master", **common)
        for group, env in GROUPS.items():
            for replica in (1, 2):
                stack.start(f"copier-{group}-{replica}", "copier", COPYTRADE_GROUP=group, **common, **env)
        stack.wait_ready(timeout_s=90)
        yield stack
    finally:
        stack.stop()


# ---- master trades, as the CLI sends them ------------------------------------------------------


@dataclass
class Trade:
    request: TradeRequest
    error_replies: int = 0  # answered ok=False (refused / unknown)
    no_replies: int = 0  # no answer in time
    reply: TradeReply | None = None


@dataclass
class Burst:
    trades: list[Trade] = field(default_factory=list)

    @property
    def filled(self) -> int:
        return sum(1 for t in self.trades if t.reply is not None)


async def _send(nc: Client, trade: Trade) -> None:
    """Send until it fills, with the same request id (never a second order)."""
    while trade.reply is None:
        try:
            msg = await nc.request(
                bus.MASTER_TRADE_SUBJECT, _encoder.encode(trade.request), timeout=REPLY_TIMEOUT_S
            )
        except (TimeoutError, nats.errors.Error):
            trade.no_replies += 1
            await asyncio.sleep(0.2)
            continue
        reply = _replies.decode(msg.data)
        if reply.ok:
            trade.reply = reply
        else:
            trade.error_replies += 1
            await asyncio.sleep(0.2)


async def _burst(nc: Client, burst: Burst, faults: asyncio.Task[int]) -> None:
    """Master trades one after another until the faults are over and BETWEEN more filled."""
    after = 0
    while after < BETWEEN and len(burst.trades) < MAX_TRADES:
        trade = Trade(TradeRequest(symbol="BTC/USD", side="buy", size=Decimal(100), size_type="quote"))
        burst.trades.append(trade)
        await _send(nc, trade)
        after += faults.done()
        await asyncio.sleep(TRADE_GAP_S)


# ---- faults ------------------------------------------------------------------------------------


async def _leaders(js: JetStreamContext) -> Counter[str]:
    """How many streams and copier consumers each node leads ($JS.API.STREAM.INFO cluster.leader)."""
    led: Counter[str] = Counter()
    names = [bus.SIGNALS_STREAM, bus.RESULTS_STREAM, bus.WORK_STREAM] + [
        f"KV_{b}" for b in (bus.CLAIMS_BUCKET, bus.CONTROL_BUCKET, bus.FILLS_BUCKET, bus.LEDGER_BUCKET)
    ]
    for name in names:
        with contextlib.suppress(TimeoutError, nats.errors.Error):
            info = await js.stream_info(name)
            if info.cluster and info.cluster.leader:
                led[info.cluster.leader] += 1
    for group in GROUPS:
        with contextlib.suppress(TimeoutError, nats.errors.Error):
            consumer = await js.consumer_info(bus.SIGNALS_STREAM, bus.durable_name(group))
            if consumer.cluster and consumer.cluster.leader:
                led[consumer.cluster.leader] += 1
    return led


async def _kill_busiest(cluster: NatsCluster, js: JetStreamContext, spare: str | None) -> str:
    """SIGKILL the running node leading the most (not `spare`); return its name."""
    led = await _leaders(js)
    running = [n.name or "" for n in cluster.nodes if n.running and n.name != spare]
    victim = max(running, key=lambda name: led[name])
    await asyncio.to_thread(cluster.node(victim).kill)
    print(
        f"{time.strftime('%X')} SIGKILL {victim} (leading {led[victim]} of {sum(led.values())}: {dict(led)})"
    )
    return victim


async def _restart(cluster: NatsCluster, name: str) -> None:
    await asyncio.to_thread(cluster.node(name).start)
    await asyncio.to_thread(cluster.wait_healthy, 60)
    print(f"{time.strftime('%X')} restarted {name}: cluster healthy")


async def _faults(cluster: NatsCluster, js: JetStreamContext, burst: Burst) -> int:
    """Kill the busiest node, restart it, kill another, restart that: BETWEEN trades apart."""
    await eventually(lambda: _copying(js, burst), timeout=120)
    first = await _kill_busiest(cluster, js, spare=None)
    await _trades_after(burst)
    await _restart(cluster, first)
    await _trades_after(burst)
    second = await _kill_busiest(cluster, js, spare=first)
    await _trades_after(burst)
    await _restart(cluster, second)
    return 4


async def _trades_after(burst: Burst) -> None:
    target = burst.filled + BETWEEN
    await eventually(lambda: burst.filled >= target, timeout=180)


async def _copying(js: JetStreamContext, burst: Burst) -> bool:
    """Every group has copied WARM_SIGNALS signals: the copiers are consuming."""
    for group, followers in FOLLOWERS.items():
        info = await js.stream_info(bus.RESULTS_STREAM, subjects_filter=bus.result_subject(group, "*"))
        if sum((info.state.subjects or {}).values()) < WARM_SIGNALS * len(followers):
            return False
    return True


# ---- what the streams and the venue hold -------------------------------------------------------


async def _stored(js: JetStreamContext, stream: str) -> list[tuple[str, float, bytes]]:
    """(subject, store time, data) of every message in the stream."""
    info = await js.stream_info(stream)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream, seq)
        assert msg.time is not None
        assert msg.subject is not None
        assert msg.data is not None
        found.append((msg.subject, msg.time.timestamp(), msg.data))
    return found


async def _results(js: JetStreamContext) -> list[tuple[float, CopyResult]]:
    decoder = msgspec.json.Decoder(AuditRecord)
    found = []
    for _, at, data in await _stored(js, bus.RESULTS_STREAM):
        record = decoder.decode(data)
        if isinstance(record, CopyResult):
            found.append((at, record))
    return found


async def _all_recorded(js: JetStreamContext, burst: Burst) -> bool:
    wanted = burst.filled * sum(len(f) for f in FOLLOWERS.values())
    try:
        info = await js.stream_info(bus.RESULTS_STREAM, subjects_filter="copytrade.results.>")
    except (TimeoutError, nats.errors.Error):
        return False
    return sum((info.state.subjects or {}).values()) >= wanted


def longest_stall(pending: list[tuple[float, float]], progress: list[float]) -> tuple[float, float]:
    """The longest stretch inside a pending interval (a signal stored, its last copy recorded)
    with no progress (a result stored) at all: (seconds, when it began)."""
    events = sorted(progress)
    longest = (0.0, 0.0)
    for start, end in pending:
        inside = events[bisect.bisect_right(events, start) : bisect.bisect_right(events, end)]
        for a, b in itertools.pairwise([start, *inside]):
            longest = max(longest, (b - a, a))
    return longest


def _stalls(
    signals: dict[str, float], results: list[tuple[float, CopyResult]]
) -> dict[str, tuple[float, float]]:
    stalls = {}
    for group in GROUPS:
        mine = [(at, r) for at, r in results if r.exchange == group]
        done: dict[str, float] = {}
        for at, r in mine:
            done[r.signal_id] = max(done.get(r.signal_id, 0.0), at)
        pending = [(signals[sid], end) for sid, end in done.items() if sid in signals]
        stalls[group] = longest_stall(pending, [at for at, _ in mine])
    return stalls


# ---- the run -----------------------------------------------------------------------------------


async def test_cluster_losing_nodes_under_a_burst_loses_and_doubles_no_order(
    figures: Figures,
    tmp_path: Path,
) -> None:
    started, wall_started = time.monotonic(), time.time()
    with running_cluster() as cluster:
        nc = await nats.connect(cluster.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        js = nc.jetstream(timeout=2)
        await bus.ensure_topology(js, 3)
        venue = nats_transport(nc)
        with _stack(cluster, tmp_path) as stack:
            await venue(Fund(MASTER, Decimal(10_000)))
            for follower in (f for fs in FOLLOWERS.values() for f in fs):
                await venue(Fund(follower, Decimal(1_000)))
            burst = Burst()
            faults = asyncio.create_task(_faults(cluster, js, burst))
            await _burst(nc, burst, faults)
            injected = await faults
            await eventually(lambda: _all_recorded(js, burst), timeout=180)
            held = {
                f: [o.client_order_id for o in getattr(await venue(Orders(f)), "orders", [])]
                for fs in FOLLOWERS.values()
                for f in fs
            }
            master_orders = {o.client_order_id for o in getattr(await venue(Orders(MASTER)), "orders", [])}
            signals = {
                msgspec.json.decode(data, type=TradeSignal).signal_id: at
                for _, at, data in await _stored(js, bus.SIGNALS_STREAM)
            }
            results = await _results(js)
            alive = {name: proc.poll() is None for name, proc in stack.procs.items()}
        await nc.close()

    sent = [t.reply.signal_id for t in burst.trades if t.reply is not None]
    expected = {f: {client_order_id_for(sid, f) for sid in sent} for fs in FOLLOWERS.values() for f in fs}
    count = count_orders(expected, held)
    stalls = _stalls(signals, results)
    filled_anyway = [
        t for t in burst.trades if master_client_order_id(MASTER, t.request.request_id) in master_orders
    ]
    error_replies = sum(1 for t in filled_anyway if t.error_replies)
    no_replies = sum(1 for t in filled_anyway if t.no_replies)
    figures.add("3-node cluster: busiest node killed, restarted, another killed", injected, count, started)
    lines = [
        f"cluster: orders expected {count.expected} found {count.found} lost {count.lost} "
        f"duplicated {count.duplicated}",
        *(
            f"cluster: group {g} longest without progress {s:.1f} s (target <= {STALL_TARGET_S:g} s)"
            f", from {at - wall_started:.1f} s into the run"
            for g, (s, at) in stalls.items()
        ),
        f"cluster: master trades with an error reply although they filled {error_replies} "
        f"(target 0); with no reply in {REPLY_TIMEOUT_S:g} s although they filled {no_replies} "
        f"(target 0)",
    ]
    for line in lines:
        figures.note(line)
        print(line)

    assert len(sent) == len(burst.trades)
    assert (count.lost, count.duplicated, count.unexpected) == (0, 0, 0)
    assert all(alive.values()), alive


@pytest.mark.parametrize(
    ("pending", "progress", "stall"),
    [
        ([(0.0, 10.0)], [1.0, 2.0, 8.0, 10.0], (6.0, 2.0)),
        ([(0.0, 1.0), (5.0, 6.0)], [1.0, 6.0], (1.0, 5.0)),
    ],
)
def test_longest_stall_counts_only_time_a_signal_waited(
    pending: list[tuple[float, float]],
    progress: list[float],
    stall: tuple[float, float],
) -> None:
    assert longest_stall(pending, progress) == stall
