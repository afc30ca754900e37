"""One order per follower between a signal and its copy: the follower's figures come from a
cache kept by its own fills and refreshed in the background, never read on the copy path."""

from __future__ import annotations

import asyncio
import base64
import gc
import weakref
from decimal import Decimal
from typing import cast

import nats
from prometheus_client import CollectorRegistry

from services.copier.__main__ import settle_memory
from services.copier.copy.execute import AllOut, Sending
from services.copier.copy.figures import FigureRefresher
from services.copier.metrics import CopierMetrics
from shared.config import AccountConfig, Credentials
from shared.exchange.context import AdapterContext
from shared.exchange.factory import build_account
from shared.exchange.paper.protocol import nats_transport
from shared.exchange.placing import fill_reader
from shared.exchange.port import ReadsFillLater
from support.natsserver import NatsServer
from tests.contract.conftest import recorded_paths
from tests.emulators.kraken import KrakenEmulator
from tests.harness import System, make_config, trade
from tests.secrets_scan import register

KEY, SECRET = "fake-key-hot-3Jq", base64.b64encode(b"fake-secret-hot-path-9Zr").decode()
register(KEY, SECRET)
READER_KEY, READER_SECRET = "fake-key-reader-4Hs", base64.b64encode(b"fake-secret-reader-8Qd").decode()
register(READER_KEY, READER_SECRET, "fake-pass-reader-2Lm")
SECRETS = {"KRAKEN_USER_HOT_API_KEY": KEY, "KRAKEN_USER_HOT_API_SECRET": SECRET}


def _private(paths: list[str]) -> list[str]:
    return [p.rsplit("/", 1)[-1] for p in paths if "/private/" in p]


async def test_second_copy_sends_the_order_with_no_account_read(system: System) -> None:
    kraken = KrakenEmulator()
    paths = recorded_paths(kraken)
    kraken.state.add_account(KEY, SECRET, {"USD": Decimal(1_000)})
    async with kraken:
        await system.fund("master", 10_000)
        config = make_config([{"id": "hot", "exchange": "kraken", "base_url": kraken.url}])
        copier = await system.start_copier(
            config, exchange="kraken", secrets=SECRETS, ctx=AdapterContext(), snapshot_ttl_s=120.0
        )
        master = await system.start_master(config)
        first = await master.trade(trade(quote="500"))
        await system.wait_results(first.signal_id, 1)
        paths.clear()

        second = await master.trade(trade(quote="500"))
        results = await system.wait_results(second.signal_id, 1)
        refresher = FigureRefresher(copier.book, CopierMetrics(CollectorRegistry(), "kraken"), interval_s=0)
        refreshed = await refresher.refresh_due()

    assert results["hot"].outcome == "filled"
    assert "Balance" not in _private(paths)[: _private(paths).index("AddOrder")]
    assert _private(paths).count("AddOrder") == 1
    assert refreshed == 1


async def test_every_followers_order_goes_out_before_any_fill_is_read(system: System) -> None:
    """Kraken's order reply tells no fill: each is read back, but only once the signal's orders
    are all out, even when the replica's limit is smaller than its followers (the slot is not
    held while an order waits for the others)."""
    kraken = KrakenEmulator()
    paths = recorded_paths(kraken)
    ids = [f"hot{i}" for i in range(4)]
    secrets: dict[str, str] = {}
    for i, fid in enumerate(ids):
        key, secret = f"fake-key-{fid}-7Kp", base64.b64encode(f"fake-secret-{fid}-{i}-2Vw".encode()).decode()
        register(key, secret)
        kraken.state.add_account(key, secret, {"USD": Decimal(1_000)})
        secrets |= {
            f"KRAKEN_USER_{fid.upper()}_API_KEY": key,
            f"KRAKEN_USER_{fid.upper()}_API_SECRET": secret,
        }
    async with kraken:
        await system.fund("master", 10_000)
        followers = [{"id": fid, "exchange": "kraken", "base_url": kraken.url} for fid in ids]
        config = make_config(followers)
        await system.start_copier(
            config, exchange="kraken", secrets=secrets, ctx=AdapterContext(), concurrency=1
        )
        master = await system.start_master(config)
        warm = await master.trade(trade(quote="500"))  # figures read, connections made
        await system.wait_results(warm.signal_id, len(ids))
        paths.clear()

        signal = await master.trade(trade(quote="500"))
        results = await system.wait_results(signal.signal_id, len(ids))

    calls = [c for c in _private(paths) if c in ("AddOrder", "QueryOrders")]
    assert {r.outcome for r in results.values()} == {"filled"}
    assert calls == ["AddOrder"] * len(ids) + ["QueryOrders"] * len(ids)


async def test_fill_reader_answers_as_the_protocol_check_does(nats_server: NatsServer) -> None:
    """The copy path asks once per adapter class whether an account reads fills later; the
    answer is the runtime protocol check's, for every venue."""
    nc = await nats.connect(nats_server.url)
    ctx = AdapterContext(paper_transport=nats_transport(nc))
    creds = Credentials(READER_KEY, READER_SECRET, "fake-pass-reader-2Lm")
    accounts = [
        build_account(AccountConfig(id=f"reader-{exchange}", exchange=exchange), creds, ctx)
        for exchange in ("kraken", "coinbase", "binance", "okx", "alpaca", "paper")
    ]

    answers = [(fill_reader(a) is cast(object, a), fill_reader(a) is None) for a in accounts]
    expected = [(isinstance(a, ReadsFillLater), not isinstance(a, ReadsFillLater)) for a in accounts]

    for account in accounts:
        await account.close()
    await ctx.close()
    await nc.close()
    assert answers == expected
    assert any(later for later, _ in answers)


def test_settled_memory_is_frozen_and_a_sweep_frees_what_became_garbage() -> None:
    """The copier freezes what it holds out of the cycle collector's way; a sweep collects
    what was frozen and has since become garbage (a retired client)."""
    node = _Node()
    node.me = node
    ref = weakref.ref(node)

    settle_memory(collect=False)
    frozen = gc.get_freeze_count()
    del node
    gc.collect()
    kept_while_frozen = ref() is not None
    settle_memory(collect=True)
    freed_by_sweep = ref() is None
    gc.unfreeze()

    assert frozen > 0
    assert kept_while_frozen
    assert freed_by_sweep


class _Node:
    me: object = None


def test_outcomes_of_a_removed_follower_count_again_from_zero() -> None:
    """Outcome series are kept per label set on the copy path; removing a follower drops them,
    and a follower added back counts from zero."""
    registry = CollectorRegistry()
    metrics = CopierMetrics(registry, "kraken")
    labels = {"group": "kraken", "follower": "ann", "outcome": "filled", "reason": "none", "master": "m"}

    metrics.outcome("ann", "filled", "none", "m")
    metrics.outcome("ann", "filled", "none", "m")
    before = registry.get_sample_value("copytrade_copy_outcomes_total", labels)
    metrics.forget_follower("ann")
    forgotten = registry.get_sample_value("copytrade_copy_outcomes_total", labels)
    metrics.outcome("ann", "filled", "none", "m")
    again = registry.get_sample_value("copytrade_copy_outcomes_total", labels)

    assert (before, forgotten, again) == (2.0, None, 1.0)


async def test_fill_reads_wait_for_the_signals_orders_in_other_shards_not_other_signals() -> None:
    """A shard whose orders are out reads fills once the same signal's orders in the replica's
    other shards are out too; another signal's orders are not waited for."""
    sending = Sending()
    shard_a, shard_b = AllOut("s1", 1, sending), AllOut("s1", 1, sending)
    other_signal = AllOut("s2", 1, sending)

    shard_a.one_out()
    other_signal.one_out()
    a_reads = asyncio.create_task(shard_a.wait())
    other_reads = asyncio.create_task(other_signal.wait())
    await asyncio.sleep(0)  # one turn of the loop: each task runs until it blocks
    other_read_at_once, a_waited = other_reads.done(), not a_reads.done()
    shard_b.one_out()
    await asyncio.wait_for(a_reads, timeout=5)

    assert other_read_at_once
    assert a_waited
