"""Faults while signals are being copied: a copier SIGKILLed again and again, the NATS server
restarted under a burst, exchanges failing, throttling and timing out after accepting.

Every scenario counts the orders each follower's venue account holds by client order id: one
per signal and follower, none lost, none doubled.
"""

from __future__ import annotations

import asyncio
import base64
import random
import signal as signals
import subprocess
import time
from collections import Counter
from decimal import Decimal

import nats.errors
import pytest
import yaml

from shared import bus
from shared.exchange.context import AdapterContext
from shared.messages import CopyResult, DeadLetter, TradeSignal, client_order_id_for
from support.natsserver import NatsServer
from tests.chaos.conftest import (
    Figures,
    Publisher,
    chaos_config,
    chaos_config_data,
    count_orders,
    expected_orders,
    jetstream_unavailable,
    outcomes,
    paper_orders,
    results_recorded,
    signed_signal,
)
from tests.emulators.kraken import KrakenEmulator
from tests.emulators.state import Fault
from tests.harness import CopierHandle, System, eventually

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1200)]

SEED = 20_240_601


async def _fund(system: System, followers: list[str]) -> None:
    for follower in followers:
        await system.fund(follower, 1_000)


async def _consumer_exists(system: System, group: str = "paper") -> bool:
    try:
        await system.js.consumer_info(bus.SIGNALS_STREAM, bus.durable_name(group))
    except nats.errors.Error:  # NotFoundError until the copier creates it; timeouts mid-restart
        return False
    return True


async def _placed(system: System, followers: list[str]) -> int:
    return sum(len(cids) for cids in (await paper_orders(system.venue, followers)).values())


async def _at_least(system: System, followers: list[str], count: int) -> bool:
    return await _placed(system, followers) >= count


async def _all_recorded(system: System, count: int) -> bool:
    return await results_recorded(system.js) >= count


def _every_pair(sent: list[TradeSignal], followers: list[str]) -> Counter[tuple[str, str]]:
    return Counter({(s.signal_id, f): 1 for s in sent for f in followers})


# ---- a copier SIGKILLed mid fan-out, twenty times -------------------------------------------------


async def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signals.SIGKILL)
    await asyncio.to_thread(proc.wait, 10)


# direct: the replica that takes a signal copies it; spread: one work item per shard of followers
PATHS = {"direct": {}, "spread": {"COPYTRADE_SPREAD_THRESHOLD": "0", "COPYTRADE_SHARDS": "8"}}


@pytest.mark.parametrize("path", sorted(PATHS))
async def test_copier_sigkilled_twenty_times_loses_and_doubles_nothing(
    system: System,
    figures: Figures,
    path: str,
) -> None:
    started = time.monotonic()
    followers = [f"k{i:02d}" for i in range(50)]
    sent = [signed_signal(f"kill-{i:02d}") for i in range(24)]
    await _fund(system, followers)
    config_path = system.tmp_path / "copytrade.yaml"
    config_path.write_text(yaml.safe_dump(chaos_config_data(followers)))
    system.venue.latency_s = 0.03
    rng = random.Random(SEED)
    progress: list[int] = []

    for round_ in range(20):
        proc = system.spawn_copier(
            config_path, instance=f"doomed-{round_:02d}", COPYTRADE_CONCURRENCY="4", **PATHS[path]
        )
        if round_ == 0:
            await eventually(lambda: _consumer_exists(system), timeout=30)
            await Publisher(system.js).publish_all(sent)
        before = await _placed(system, followers)
        target = before + rng.randint(5, 30)
        await eventually(lambda t=target: _at_least(system, followers, t), timeout=60)
        await _kill(proc)
        progress.append(await _placed(system, followers) - before)
    placed_by_the_doomed = await _placed(system, followers)
    system.spawn_copier(config_path, instance="survivor", **PATHS[path])
    await eventually(lambda: _all_recorded(system, len(sent) * len(followers)), timeout=240)
    records = await system.audit()
    held = await paper_orders(system.venue, followers)
    count = count_orders(expected_orders(sent, followers), held)
    recovered = sum(1 for r in records if isinstance(r, CopyResult) and r.recovered)
    figures.add(f"copier SIGKILLed 20x mid fan-out ({path})", len(progress), count, started)
    figures.note(f"SIGKILL ({path}): {recovered} copies recovered (found at the venue or claim taken over)")

    assert len(progress) == 20
    assert min(progress) >= 5
    assert placed_by_the_doomed < len(sent) * len(followers)  # the survivor had work left
    assert (count.expected, count.found) == (1_200, 1_200)
    assert (count.lost, count.duplicated, count.unexpected) == (0, 0, 0)
    assert outcomes(records) == _every_pair(sent, followers)
    assert {r.outcome for r in records if isinstance(r, CopyResult)} == {"filled"}
    assert [r for r in records if isinstance(r, DeadLetter)] == []
    assert recovered > 0  # kills landed between an order and its record


# ---- the NATS server restarted under a burst -------------------------------------------------------


REFUSED_WHILE_RECOVERING = 30  # publishes JetStream refuses (503) before it is back: ~1.5 s


async def _restart_nats_while_publishing(
    system: System,
    copier: CopierHandle,
    publisher: Publisher,
    batch: list[TradeSignal],
) -> asyncio.Task[None]:
    """Stop nats-server and publish `batch` into the outage. Bring the server back on the same
    port first without JetStream, as while a restarted server recovers its store (clients
    reconnect, JetStream requests get a 503), then with it and the same store. Services must
    reconnect and carry on by themselves."""
    assert isinstance(system.server, NatsServer)  # one server here, not a cluster
    await asyncio.to_thread(system.server.stop)
    failures = publisher.failures
    publishing = asyncio.create_task(publisher.publish_all(batch))
    await eventually(lambda: publisher.failures > failures, timeout=30)
    with jetstream_unavailable(system.server):
        await eventually(lambda: copier.nc.is_connected, timeout=30)
        refused = publisher.failures
        await eventually(lambda: publisher.failures >= refused + REFUSED_WHILE_RECOVERING, timeout=30)
    await asyncio.to_thread(system.server.start)
    return publishing


async def test_nats_restart_during_burst_loses_and_doubles_nothing(
    system: System,
    figures: Figures,
) -> None:
    started = time.monotonic()
    followers = [f"n{i:02d}" for i in range(20)]
    sent = [signed_signal(f"restart-{i:02d}") for i in range(30)]
    first, second, third = sent[:10], sent[10:20], sent[20:]
    await _fund(system, followers)
    system.venue.latency_s = 0.03
    copier = await system.start_copier(chaos_config(followers), concurrency=2)
    publisher = Publisher(system.js)
    placed_at_stops: list[int] = []

    try:
        await publisher.publish_all(first)
        for batch, mid_burst in ((second, 40), (third, 250)):
            await eventually(lambda n=mid_burst: _at_least(system, followers, n), timeout=45)
            placed_at_stops.append(await _placed(system, followers))
            await (await _restart_nats_while_publishing(system, copier, publisher, batch))
        await eventually(lambda: _all_recorded(system, len(sent) * len(followers)), timeout=120)
    finally:  # the figures say what was lost even when the copier never came back
        held = await paper_orders(system.venue, followers)
        count = count_orders(expected_orders(sent, followers), held)
        figures.add("nats-server restarted 2x during a burst", len(placed_at_stops), count, started)
    records = await system.audit()

    assert len(placed_at_stops) == 2
    assert max(placed_at_stops) < len(sent) * len(followers)
    assert publisher.failures >= 2 * (REFUSED_WHILE_RECOVERING + 1)  # the master saw each outage
    assert (count.expected, count.found) == (600, 600)
    assert (count.lost, count.duplicated, count.unexpected) == (0, 0, 0)
    assert outcomes(records) == _every_pair(sent, followers)
    assert {r.outcome for r in records if isinstance(r, CopyResult)} == {"filled"}
    assert not copier.task.done()


# ---- exchange faults across a burst ----------------------------------------------------------------

PAPER_FAULTS = ("exchange_error", "rate_limited", "timeout_after_accept")
MAX_FAULTS = 3  # per follower: place_idempotently makes 4 attempts, so all 3 may hit one order


def _pick(rng: random.Random, followers: list[str], faults: Counter[str], count: int) -> list[str]:
    """`count` followers that may take one more fault (faults queue up faster than orders go)."""
    return rng.sample([f for f in followers if faults[f] < MAX_FAULTS], count)


async def test_paper_exchange_faults_across_a_burst_double_nothing_and_record_every_outcome(
    system: System,
    figures: Figures,
) -> None:
    started = time.monotonic()
    followers = [f"x{i:02d}" for i in range(40)]
    sent = [signed_signal(f"fault-{i:02d}") for i in range(12)]
    await _fund(system, followers)
    system.venue.timeout_hold_s = 1.5
    await system.start_copier(chaos_config(followers), order_timeout_s=0.5)
    publisher = Publisher(system.js)
    rng = random.Random(SEED)
    injected: Counter[tuple[str, str]] = Counter()
    per_follower: Counter[str] = Counter()

    for number, signal in enumerate(sent):
        if number < len(sent) - 4:  # the last signals drain what is still queued
            for follower in _pick(rng, followers, per_follower, 12):
                kind = rng.choice(PAPER_FAULTS)
                await system.fault(follower, kind)
                injected[follower, kind] += 1
                per_follower[follower] += 1
        await publisher.publish(signal)
    await eventually(lambda: _all_recorded(system, len(sent) * len(followers)), timeout=180)
    records = await system.audit()
    results = [r for r in records if isinstance(r, CopyResult)]
    failed = [r for r in results if r.outcome == "failed"]
    held = await paper_orders(system.venue, followers)
    expected = expected_orders(sent, followers)
    for r in failed:  # an injected exchange error refuses the order: nothing is expected of it
        expected[r.follower_id].discard(client_order_id_for(r.signal_id, r.follower_id))
    count = count_orders(expected, held)
    figures.add("paper venue: exchange error, 429, timeout-after-accept", injected.total(), count, started)

    assert injected.total() == 8 * 12
    assert outcomes(records) == _every_pair(sent, followers)
    assert {r.outcome for r in results} == {"filled", "failed"}
    assert Counter(r.follower_id for r in failed) == Counter(
        {f: n for (f, kind), n in injected.items() if kind == "exchange_error"}
    )
    assert {(r.reason_code, r.reason) for r in failed} == {
        ("exchange_error", "ExchangeError: paper: injected fault: exchange_error")
    }
    assert (count.lost, count.duplicated, count.unexpected) == (0, 0, 0)
    assert count.found == len(sent) * len(followers) - len(failed)
    assert {(r.follower_id, r.client_order_id) for r in results if r.outcome == "filled"} == {
        (f, cid) for f, cids in held.items() for cid in cids
    }


async def test_order_accepted_on_the_last_attempt_is_recorded_as_filled(system: System) -> None:
    followers = ["unlucky"]
    await _fund(system, followers)
    system.venue.timeout_hold_s = 1.5
    for kind in ("rate_limited", "rate_limited", "rate_limited", "timeout_after_accept"):
        await system.fault("unlucky", kind)
    await system.start_copier(chaos_config(followers), order_timeout_s=0.5)
    signal = signed_signal("accepted-on-the-last-attempt")

    await Publisher(system.js).publish(signal)
    await eventually(lambda: _all_recorded(system, 1), timeout=30)
    result = (await system.results(signal.signal_id))["unlucky"]
    held = await paper_orders(system.venue, followers)

    assert held == {"unlucky": [client_order_id_for(signal.signal_id, "unlucky")]}
    assert (result.outcome, result.reason) == ("filled", "")


KRAKEN_FAULTS = (Fault.HTTP_500, Fault.RATE_LIMIT, Fault.TIMEOUT_AFTER_ACCEPT)


def _kraken_accounts(emulator: KrakenEmulator, followers: list[str]) -> dict[str, str]:
    """Fund one emulator account per follower; return its credentials by env-var name."""
    secrets: dict[str, str] = {}
    for follower in followers:
        key, secret = f"key-{follower}", base64.b64encode(f"secret-{follower}".encode() * 3).decode()
        emulator.state.add_account(key, secret, {"USD": Decimal(1_000)})
        secrets[f"KRAKEN_USER_{follower.upper()}_API_KEY"] = key
        secrets[f"KRAKEN_USER_{follower.upper()}_API_SECRET"] = secret
    return secrets


async def test_kraken_faults_across_a_burst_double_nothing_and_fill_every_copy(
    system: System,
    figures: Figures,
) -> None:
    started = time.monotonic()
    followers = [f"kr{i:02d}" for i in range(16)]
    sent = [signed_signal(f"kraken-{i:02d}") for i in range(8)]
    emulator = KrakenEmulator()
    emulator.state.timeout_hold_s = 1.5
    rng = random.Random(SEED)
    injected: Counter[Fault] = Counter()
    per_follower: Counter[str] = Counter()
    async with emulator:
        secrets = _kraken_accounts(emulator, followers)
        config = chaos_config(followers, exchange="kraken", base_url=emulator.url)
        ctx = AdapterContext(http_timeout_s=0.5, rate_limit=False)  # loopback: no leaky bucket
        copier = await system.start_copier(
            config, exchange="kraken", secrets=secrets, ctx=ctx, order_timeout_s=1.0
        )
        publisher = Publisher(system.js)

        for number, signal in enumerate(sent):
            if number < len(sent) - 3:
                for follower in _pick(rng, followers, per_follower, 6):
                    fault = rng.choice(KRAKEN_FAULTS)
                    emulator.state.accounts[f"key-{follower}"].faults.append(fault)
                    injected[fault] += 1
                    per_follower[follower] += 1
            await publisher.publish(signal)
        await eventually(lambda: _all_recorded(system, len(sent) * len(followers)), timeout=180)
        records = await system.audit()
        held = {
            f: [o.client_order_id or "" for o in emulator.state.accounts[f"key-{f}"].orders]
            for f in followers
        }
        left = sum(len(emulator.state.accounts[f"key-{f}"].faults) for f in followers)
        await copier.stop()
        await ctx.close()  # the shared HTTP session and market loader: the process closes them
    count = count_orders(expected_orders(sent, followers), held)
    figures.add("kraken emulator: 5xx, 429, timeout-after-accept", injected.total(), count, started)

    assert injected.total() == 5 * 6
    assert left == 0
    assert outcomes(records) == _every_pair(sent, followers)
    assert {r.outcome for r in records if isinstance(r, CopyResult)} == {"filled"}
    assert (count.expected, count.found) == (128, 128)
    assert (count.lost, count.duplicated, count.unexpected) == (0, 0, 0)
