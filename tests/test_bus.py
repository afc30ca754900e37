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
