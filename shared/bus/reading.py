"""Reading a KV bucket's current values in one pass, complete.

nats.py's `KeyValue.watch` (and `keys`, built on it) decides it has caught up from the pending
count its consumer reports after subscribing; a push consumer may have delivered everything by
then while the client has not yet handled one message, so the "caught up" marker comes first and
the read looks empty (seen: a master cancel that found none of its 1,000 followers' links). A
pull consumer delivers nothing until asked, so the pending count it is created with is exact:
`latest` reads exactly that many messages, the last one of each key.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from shared.bus.retry import TRANSIENT
from shared.bus.subjects import kv_subject

BATCH = 1_000  # messages per fetch
FETCH_TIMEOUT_S = 5.0
_DELETED = ("DEL", "PURGE")


@dataclass(frozen=True)
class Value:
    key: str
    data: bytes
    revision: int


async def latest(js: JetStreamContext, bucket: str, keys: str = ">") -> list[Value]:
    """The current value of every key of `bucket` matching `keys` (a KV pattern), deleted keys
    left out; oldest write first."""
    stream, prefix = f"KV_{bucket}", kv_subject(bucket, "")
    config = api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        ack_policy=api.AckPolicy.NONE,
        filter_subject=kv_subject(bucket, keys),
        inactive_threshold=60.0,  # the server drops it if this reader dies before deleting it
        mem_storage=True,
        num_replicas=1,
    )
    info = await js.add_consumer(stream, config)
    found: list[Value] = []
    try:
        pending = info.num_pending or 0
        if pending:
            sub = await js.pull_subscribe_bind(name=info.name, stream=stream)
            try:
                while pending > 0:
                    for msg in await sub.fetch(min(pending, BATCH), timeout=FETCH_TIMEOUT_S):
                        pending = msg.metadata.num_pending
                        if msg.data and not _deleted(msg.headers):
                            found.append(
                                Value(msg.subject[len(prefix) :], msg.data, msg.metadata.sequence.stream)
                            )
            finally:
                await sub.unsubscribe()
    finally:
        with contextlib.suppress(NotFoundError, *TRANSIENT):
            await js.delete_consumer(stream, info.name)  # else gone after its inactive threshold
    return found


async def latest_in(kv: KeyValue, keys: str = ">") -> list[Value]:
    """`latest` through a bucket handle: nats.py keeps the bucket's JetStream context and name
    on it (`_js`, `_name`: private, so pinned by tests/test_bus.py)."""
    return await latest(kv._js, kv._name, keys)


def _deleted(headers: dict[str, str] | None) -> bool:
    if not headers:
        return False
    return headers.get("KV-Operation") in _DELETED or "Nats-Marker-Reason" in headers
