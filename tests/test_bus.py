"""The NATS layer's guarantees that the copier's exactly-once logic rests on."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js.errors import BadRequestError

from shared import bus
from support.natsserver import NatsServer


async def test_pipelined_claim_of_existing_key_fails_with_wrong_last_sequence(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await bus.ensure_streams(js)
    subject = f"$KV.{bus.CLAIMS_BUCKET}.signal.follower"
    headers = {"Nats-Expected-Last-Subject-Sequence": "0"}

    first = await asyncio.wait_for(await js.publish_async(subject, b"1", headers=headers), 5)
    second = await js.publish_async(subject, b"2", headers=headers)
    with pytest.raises(BadRequestError) as refused:
        await asyncio.wait_for(second, 5)
    await nc.close()

    assert first.seq > 0
    assert refused.value.err_code == 10071


async def test_republished_signal_is_stored_once(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await bus.ensure_streams(js)

    acks = [
        await js.publish("copytrade.signals.master", b"{}", headers={"Nats-Msg-Id": "s1"}) for _ in range(2)
    ]
    info = await js.stream_info(bus.SIGNALS_STREAM)
    await nc.close()

    assert [a.duplicate for a in acks] == [None, True]
    assert info.state.messages == 1


async def test_latest_reads_every_current_value_of_a_pattern_once_deleted_keys_left_out(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    kv = await js.create_key_value(bucket="reading")
    for i in range(300):
        await kv.put(f"link.g.f{i}.order1", b"old")
    revisions = {f"link.g.f{i}.order1": await kv.put(f"link.g.f{i}.order1", b"new") for i in range(300)}
    await kv.put("link.g.f0.order2", b"another order")
    await kv.delete("link.g.f7.order1")
    await kv.purge("link.g.f8.order1")
    found = await bus.reading.latest(js, "reading", "link.g.*.order1")
    nothing = await bus.reading.latest(js, "reading", "link.h.*.order1")
    consumers = (await js.stream_info("KV_reading")).state.consumer_count
    await nc.close()

    assert {v.key for v in found} == set(revisions) - {"link.g.f7.order1", "link.g.f8.order1"}
    assert {v.data for v in found} == {b"new"}
    assert all(v.revision == revisions[v.key] for v in found)
    assert nothing == []
    assert consumers == 0  # each read's consumer deleted


async def test_latest_in_reads_through_a_bucket_handle(nats_server: NatsServer) -> None:
    """`latest_in` takes nats.py's private `_js` and `_name` off the handle: pinned here."""
    nc = await nats.connect(nats_server.url)
    kv = await nc.jetstream().create_key_value(bucket="handle")
    await kv.put("hold.f1.m1.BTC_USD", b"1")
    await kv.put("hold.f1.m2.BTC_USD", b"2")
    found = await bus.reading.latest_in(kv, "hold.f1.m1.>")
    await nc.close()

    assert [(v.key, v.data) for v in found] == [("hold.f1.m1.BTC_USD", b"1")]
