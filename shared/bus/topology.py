"""The JetStream topology: every stream, bucket and durable, created or brought to the
configured settings (replicas included) in one place, whichever service starts first."""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass

from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from shared.bus import subjects as s
from shared.bus.retry import retry as bus_retry

log = logging.getLogger("copytrade.bus")


def stream_configs(replicas: int) -> list[StreamConfig]:
    return [
        StreamConfig(
            name=s.SIGNALS_STREAM,
            subjects=[s.SIGNALS_ALL],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            duplicate_window=s.DUPLICATE_WINDOW_S,
            max_age=30 * s.DAY,
            num_replicas=replicas,
        ),
        StreamConfig(
            name=s.RESULTS_STREAM,
            storage=StorageType.FILE,
            max_age=90 * s.DAY,
            subjects=[s.RESULTS_ALL, s.REJECTS_ALL, s.DEADLETTER_ALL],
            duplicate_window=s.DUPLICATE_WINDOW_S,
            num_replicas=replicas,
        ),
        # work queue: an item leaves the stream when acked; Nats-Msg-Id "<signal>:<shard>" dedupes
        StreamConfig(
            name=s.WORK_STREAM,
            subjects=[s.WORK_ALL],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=s.DUPLICATE_WINDOW_S,
            max_age=s.DAY,
            num_replicas=replicas,
        ),
    ]


def bucket_configs(replicas: int) -> list[KeyValueConfig]:
    return [
        KeyValueConfig(
            bucket=s.CLAIMS_BUCKET, history=1, ttl=7 * s.DAY, storage=StorageType.FILE, replicas=replicas
        ),
        KeyValueConfig(bucket=s.CONTROL_BUCKET, history=5, storage=StorageType.FILE, replicas=replicas),
        KeyValueConfig(
            bucket=s.FILLS_BUCKET, history=1, ttl=30 * s.DAY, storage=StorageType.FILE, replicas=replicas
        ),
        KeyValueConfig(bucket=s.LEDGER_BUCKET, history=5, storage=StorageType.FILE, replicas=replicas),
    ]


@dataclass(frozen=True)
class Buckets:
    claims: KeyValue
    control: KeyValue
    fills: KeyValue
    ledger: KeyValue


async def ensure_topology(js: JetStreamContext, replicas: int | None = None) -> Buckets:
    """Create or update every stream and bucket to these settings; return the buckets.

    `replicas` (COPYTRADE_STREAM_REPLICAS) raises an existing stream's or bucket's replicas, never
    lowers them (a process started without the setting must not strip a cluster of its copies;
    scale down by hand with the nats CLI); None keeps what exists and creates R1."""
    for config in stream_configs(replicas or 1):
        await _ensure_stream(js, config, replicas)
    made = {c.bucket: await _ensure_bucket(js, c, replicas) for c in bucket_configs(replicas or 1)}
    return Buckets(
        claims=made[s.CLAIMS_BUCKET],
        control=made[s.CONTROL_BUCKET],
        fills=made[s.FILLS_BUCKET],
        ledger=made[s.LEDGER_BUCKET],
    )


async def ensure_streams(js: JetStreamContext, replicas: int | None = None) -> KeyValue:
    """The whole topology; the claims bucket (what the copier and tests need first)."""
    return (await ensure_topology(js, replicas)).claims


async def bucket(js: JetStreamContext, name: str, replicas: int | None = None) -> KeyValue:
    """One bucket of the topology, created or updated to its settings (replicas as above)."""
    config = next(c for c in bucket_configs(replicas or 1) if c.bucket == name)
    return await _ensure_bucket(js, config, replicas)


def _replicas(name: str, wanted: int | None, current: int) -> int:
    if wanted is None:
        return current
    if wanted < current:
        log.warning("event=replicas_not_lowered stream=%s replicas=%d configured=%d", name, current, wanted)
        return current
    return wanted


async def _info(js: JetStreamContext, name: str) -> StreamInfo | None:
    try:
        return await bus_retry(f"stream info {name}", lambda: js.stream_info(name))
    except NotFoundError:
        return None


async def _ensure_stream(js: JetStreamContext, config: StreamConfig, replicas: int | None) -> None:
    info = await _info(js, config.name or "")
    if info is None:
        try:
            await bus_retry(f"add stream {config.name}", lambda: js.add_stream(config))
            return
        except BadRequestError:  # another process created it meanwhile
            info = await bus_retry(f"stream info {config.name}", lambda: js.stream_info(config.name or ""))
    wanted = dataclasses.replace(
        config, num_replicas=_replicas(config.name or "", replicas, info.config.num_replicas or 1)
    )
    try:  # the same settings: a no-op; others: refused, then brought to ours
        await bus_retry(f"add stream {config.name}", lambda: js.add_stream(wanted))
    except BadRequestError:
        log.info("event=stream_updated stream=%s replicas=%s", config.name, wanted.num_replicas)
        await bus_retry(f"update stream {config.name}", lambda: js.update_stream(wanted))


async def _ensure_bucket(js: JetStreamContext, config: KeyValueConfig, replicas: int | None) -> KeyValue:
    """A bucket is a stream `KV_<bucket>`: created when missing, else its replicas, history
    and TTL brought to ours (nats.py's create refuses an existing bucket with other settings)."""
    info = await _info(js, f"KV_{config.bucket}")
    if info is None:
        try:
            return await bus_retry(f"create bucket {config.bucket}", lambda: js.create_key_value(config))
        except BadRequestError:  # another process created it meanwhile
            info = await bus_retry(
                f"stream info {config.bucket}", lambda: js.stream_info(f"KV_{config.bucket}")
            )
    num_replicas = _replicas(config.bucket, replicas, info.config.num_replicas or 1)
    wanted: dict[str, float] = {
        "num_replicas": num_replicas,
        "max_msgs_per_subject": config.history,
        "max_age": config.ttl or 0.0,
    }
    current = {key: getattr(info.config, key) or 0 for key in wanted}
    if current != wanted:
        log.info("event=bucket_updated bucket=%s from=%s to=%s", config.bucket, current, wanted)
        updated = dataclasses.replace(
            info.config,
            num_replicas=num_replicas,
            max_msgs_per_subject=config.history,
            max_age=config.ttl or 0.0,
        )
        await bus_retry(f"update bucket {config.bucket}", lambda: js.update_stream(updated))
    return await bus_retry(f"bucket {config.bucket}", lambda: js.key_value(config.bucket))


async def ensure_consumer(js: JetStreamContext, group: str, *, ack_wait_s: float, max_deliver: int) -> None:
    """The copier group's durable: every group sees every signal, its replicas share it."""
    config = ConsumerConfig(
        durable_name=s.durable_name(group),
        filter_subject=s.SIGNALS_ALL,
        deliver_policy=DeliverPolicy.NEW,
        ack_wait=ack_wait_s,
        max_deliver=max_deliver,
        max_ack_pending=1,  # one signal in hand per group, across replicas: signal order holds
    )  # replicas: the stream's (a consumer follows its stream when that is scaled up)
    await bus_retry(f"add consumer {config.durable_name}", lambda: js.add_consumer(s.SIGNALS_STREAM, config))


async def ensure_work_consumers(
    js: JetStreamContext, group: str, shards: int, *, ack_wait_s: float, max_deliver: int
) -> None:
    """One durable per (group, shard) on the work stream; one item in hand per shard, so a
    shard's items (and each follower's copies) run in signal order on whichever replica pulls."""
    for shard in range(shards):
        config = ConsumerConfig(
            durable_name=s.work_durable(group, shard),
            filter_subject=s.work_subject(group, shard),
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ack_wait_s,
            max_deliver=max_deliver,
            max_ack_pending=1,
        )
        await bus_retry(
            f"add consumer {config.durable_name}", functools.partial(js.add_consumer, s.WORK_STREAM, config)
        )
