"""A three-node JetStream cluster on loopback (three nats-servers with routes): the topology at
three replicas, and a node lost in the middle of a burst of master trades."""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from shared import bus
from shared.bus.topology import bucket_configs, stream_configs
from shared.control import control_bucket
from shared.messages import (
    CopyResult,
    SignalRejected,
    TradeReply,
    TradeRequest,
    TradeSignal,
    client_order_id_for,
    signal_id_for,
)
from shared.signing import SignalSigner
from support.natsserver import (
    NatsCluster,
    consumer_leader,
    current,
    running_cluster,
    step_down,
    stream_leader,
)
from tests.harness import TEST_SIGNING_SEED, System, eventually, make_config, paper_followers

STREAMS = [c.name or "" for c in stream_configs(1)] + [f"KV_{c.bucket}" for c in bucket_configs(1)]


@pytest.fixture
def cluster() -> Iterator[NatsCluster]:
    with running_cluster() as nodes:
        yield nodes


@pytest.fixture
async def client(cluster: NatsCluster) -> AsyncIterator[Client]:
    nc = await nats.connect(cluster.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    yield nc
    await nc.close()


async def _replicas(js: JetStreamContext) -> dict[str, int]:
    return {name: (await js.stream_info(name)).config.num_replicas or 1 for name in STREAMS}


async def _consumer_replicas(js: JetStreamContext, group: str) -> int:
    info = await js.consumer_info(bus.SIGNALS_STREAM, bus.durable_name(group))
    return 1 + len(info.cluster.replicas or []) if info.cluster else 1


# ---- the topology at three replicas ------------------------------------------------------------


async def test_replicas_setting_raises_every_stream_bucket_and_consumer_to_three(
    client: Client,
) -> None:
    js = client.jetstream()
    await control_bucket(js)  # the CLI, run first, made the control bucket at R1
    await bus.ensure_topology(js)
    await bus.ensure_consumer(js, "paper", ack_wait_s=5, max_deliver=5)
    before = await _replicas(js)

    await bus.ensure_topology(js, 3)
    await eventually(lambda: _consumer_has_three(js), timeout=20)
    after = await _replicas(js)

    assert before == dict.fromkeys(STREAMS, 1)
    assert after == dict.fromkeys(STREAMS, 3)


async def _consumer_has_three(js: JetStreamContext) -> bool:
    return await _consumer_replicas(js, "paper") == 3


async def test_process_without_the_replicas_setting_never_lowers_them(client: Client) -> None:
    js = client.jetstream()
    await bus.ensure_topology(js, 3)

    await bus.ensure_topology(js)  # e.g. the CLI, or a service without COPYTRADE_STREAM_REPLICAS
    await bus.ensure_topology(js, 1)
    await control_bucket(js, 1)

    assert await _replicas(js) == dict.fromkeys(STREAMS, 3)


# ---- a node lost mid-burst ---------------------------------------------------------------------


FOLLOWERS = {f"c{i:02d}": 1_000 for i in range(8)}
TRADES = 16


class Unretrieved:
    """Collects what asyncio reports as never retrieved (a task or future that failed unseen)."""

    def __init__(self) -> None:
        self.reports: list[str] = []

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.reports.append(f"{context.get('message')}: {context.get('exception')!r}")


async def _gather_leaders(nc: Client, js: JetStreamContext, node: str) -> None:
    """Move the leaders of what the copy path writes to `node`, so losing it costs them all."""
    for stream in (bus.SIGNALS_STREAM, bus.RESULTS_STREAM, f"KV_{bus.CLAIMS_BUCKET}"):
        await eventually(lambda s=stream: current(js, s), timeout=20)
        if await stream_leader(js, stream) != node:
            await step_down(nc, stream, node)
        await eventually(lambda s=stream: _leads(js, s, node), timeout=20)
    durable = bus.durable_name("paper")
    if await consumer_leader(js, bus.SIGNALS_STREAM, durable) != node:
        await step_down(nc, bus.SIGNALS_STREAM, node, consumer=durable)
    await eventually(lambda: _consumer_led(js, durable, node), timeout=20)


async def _leads(js: JetStreamContext, stream: str, node: str) -> bool:
    return await stream_leader(js, stream) == node and await current(js, stream)


async def _consumer_led(js: JetStreamContext, durable: str, node: str) -> bool:
    return await consumer_leader(js, bus.SIGNALS_STREAM, durable) == node


async def _trade_until_filled(system: System, master: Any, request: TradeRequest) -> TradeReply:
    """Send the request until it fills, with the same request id (as the CLI's retry does)."""
    for _ in range(5):
        reply: TradeReply = await master.trade(request)
        if reply.ok:
            return reply
    raise AssertionError(f"trade {request.request_id} never filled: {reply.error}")


async def _placed(system: System) -> int:
    return sum([len(await system.orders(f)) for f in FOLLOWERS])


async def test_node_lost_mid_burst_leaves_one_order_per_follower_and_signal(
    cluster: NatsCluster,
    client: Client,
    tmp_path: Path,
) -> None:
    unretrieved = Unretrieved()
    asyncio.get_running_loop().set_exception_handler(unretrieved)
    js = client.jetstream()
    await bus.ensure_topology(js, 3)
    async with System(cluster, tmp_path) as system:
        await system.fund("master", 10_000)
        await system.fund_all(FOLLOWERS)
        system.venue.latency_s = 0.02  # master trades and copies interleave: the loss hits both
        config = make_config(paper_followers(FOLLOWERS))
        copier = await system.start_copier(config)
        master = await system.start_master(config)
        await _gather_leaders(client, js, "node-1")
        requests = [
            TradeRequest(symbol="BTC/USD", side="buy", size=Decimal(300), size_type="quote")
            for _ in range(TRADES)
        ]

        burst = asyncio.create_task(_burst(system, master, requests))
        await eventually(lambda: _at_least(system, 2 * len(FOLLOWERS)), timeout=30)
        cluster.node("node-1").kill()
        replies = await burst
        await eventually(lambda: _all_recorded(system, replies), timeout=40)
        held = {f: sorted(o.client_order_id for o in await system.orders(f)) for f in FOLLOWERS}
        recorded = await _recorded(system)
        outcomes = {r.outcome for r in (await system.results()).values()}
        copier_running = not copier.task.done()
    gc.collect()  # asyncio reports an unretrieved exception when its task is collected

    expected = {f: sorted(client_order_id_for(r.signal_id, f) for r in replies) for f in FOLLOWERS}
    assert held == expected
    assert recorded == Counter({(r.signal_id, f): 1 for r in replies for f in FOLLOWERS})
    assert outcomes == {"filled"}
    assert copier_running
    assert unretrieved.reports == []


async def _burst(system: System, master: Any, requests: list[TradeRequest]) -> list[TradeReply]:
    return [await _trade_until_filled(system, master, r) for r in requests]


async def _at_least(system: System, count: int) -> bool:
    return await _placed(system) >= count


async def _all_recorded(system: System, replies: list[TradeReply]) -> bool:
    wanted = {(r.signal_id, f) for r in replies for f in FOLLOWERS}
    try:
        recorded = await _recorded(system)
    except (TimeoutError, nats.errors.Error):  # the results stream is electing its leader
        return False
    return wanted <= set(recorded)


async def _recorded(system: System) -> Counter[tuple[str, str]]:
    """How many outcomes the results stream holds per (signal, follower)."""
    return Counter((r.signal_id, r.follower_id) for r in await system.audit() if isinstance(r, CopyResult))


# ---- a redelivery by a new consumer leader -----------------------------------------------------


async def test_signal_delivered_afresh_by_a_new_consumer_leader_is_copied_not_rejected(
    cluster: NatsCluster,
    tmp_path: Path,
) -> None:
    """A new consumer leader that never learnt of a delivery delivers the message again with its
    delivery count back at 1: the replay guard, holding that message's stream sequence, lets it
    through as a redelivery (its copies may exist); only another message is a replay."""
    async with System(cluster, tmp_path) as system:
        await system.fund_all({"solo": 1_000})
        copier = await system.start_copier(make_config(paper_followers({"solo": 1_000})))
        signal = SignalSigner(TEST_SIGNING_SEED).sign(_signal("afresh-1"))
        next_seq = (await system.js.stream_info(bus.SIGNALS_STREAM)).state.last_seq + 1
        await system.claims.put(f"seen.paper.{signal.signal_id}", str(next_seq).encode())

        await system.js.publish(bus.signal_subject("master"), _ENCODER.encode(signal))
        results = await system.wait_results(signal.signal_id, 1)
        rejected = [r for r in await system.audit() if isinstance(r, SignalRejected)]
        orders = await system.orders("solo")
        await copier.stop()

    assert results["solo"].outcome == "filled"
    assert rejected == []
    assert [o.client_order_id for o in orders] == [client_order_id_for(signal.signal_id, "solo")]


_ENCODER = msgspec.json.Encoder(decimal_format="string")


def _signal(order_id: str) -> TradeSignal:
    return TradeSignal(
        signal_id=signal_id_for("paper", order_id),
        master_id="master",
        exchange="paper",
        symbol="BTC/USD",
        side="buy",
        price=Decimal(45000),
        size=Decimal(500),
        size_type="quote",
        filled_base=Decimal(500) / 45000,
        order_id=order_id,
        master_equity=Decimal(10_000),
        master_position_before=Decimal(0),
        executed_at=time.time(),
    )


# ---- a request in flight when its node dies ----------------------------------------------------


async def test_request_in_flight_when_its_node_dies_ends_timed_out_before_its_timeout(
    cluster: NatsCluster,
) -> None:
    """nats_fixes: the reply cannot be relied on any more, so the caller hears at once (a copier
    waited out a 10 s venue read this way) instead of after the request's own timeout."""
    asked = asyncio.Event()

    async def never_answer(_msg: Msg) -> None:
        asked.set()

    responder = await nats.connect(cluster.nodes[1].url)
    await responder.subscribe("copytrade.test.silent", cb=never_answer)
    await responder.flush()
    requester = await nats.connect(cluster.nodes[0].url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    request = asyncio.create_task(requester.request("copytrade.test.silent", b"?", timeout=600))
    await asyncio.wait_for(asked.wait(), 10)

    cluster.nodes[0].kill()
    await eventually(request.done, timeout=30)
    error = request.exception()
    await requester.close()
    await responder.close()

    assert isinstance(error, nats.errors.TimeoutError)
