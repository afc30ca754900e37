"""The ledger writes a fill on top of the entry as this process last saw it (one round trip per
fill on the copy path); a write that another process's change made stale is refused by the
entry's revision and applied on the entry read again, once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import nats
import pytest
from nats.aio.client import Client

from shared import bus
from shared.ledger import Ledger, holding_key
from support.natsserver import NatsServer


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(bus.servers(nats_server.url))
    yield client
    await client.close()


async def _two_ledgers(nc: Client) -> tuple[Ledger, Ledger, str]:
    """Two processes' views of the same bucket, and a fresh key."""
    kv = await bus.bucket(nc.jetstream(), bus.LEDGER_BUCKET)
    return Ledger(kv), Ledger(kv), holding_key(f"f{uuid.uuid4().hex[:10]}", "master", "BTC/USD")


async def test_fill_applied_over_another_writers_change_counts_both(nc: Client) -> None:
    mine, theirs, key = await _two_ledgers(nc)

    await mine.apply(key, "fill-1", Decimal(1))
    await theirs.apply(key, "fill-2", Decimal(2))  # unseen by `mine`: its kept entry is stale
    after_third = await mine.apply(key, "fill-3", Decimal(3))
    entry = await theirs.read(key)

    assert after_third == (Decimal(3), Decimal(6))
    assert entry.amount == Decimal(6)
    assert list(entry.applied) == ["fill-1", "fill-2", "fill-3"]


async def test_fill_another_process_applied_is_not_applied_again(nc: Client) -> None:
    mine, theirs, key = await _two_ledgers(nc)

    await mine.apply(key, "fill-1", Decimal(1))
    await theirs.apply(key, "fill-2", Decimal(2))
    again = await mine.apply(key, "fill-2", Decimal(2))  # a redelivery on the stale process
    entry = await mine.read(key)

    assert again == (Decimal(1), Decimal(3))
    assert entry.amount == Decimal(3)


async def test_clip_reads_the_entry_however_recently_it_was_written(nc: Client) -> None:
    mine, theirs, key = await _two_ledgers(nc)

    await mine.apply(key, "fill-1", Decimal(1))
    await theirs.apply(key, "fill-2", Decimal(2))
    removed = await mine.clip(key, Decimal("1.5"))  # the kept entry (1) would need no clip
    entry = await theirs.read(key)

    assert removed == Decimal("1.5")
    assert entry.amount == Decimal("1.5")
