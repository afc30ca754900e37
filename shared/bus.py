"""NATS names and helpers: connecting, the JetStream topology, publishing with retry."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from shared.config import Settings
from shared.errors import ConfigError

log = logging.getLogger("copytrade.bus")


def _report_publish_async_errors() -> None:
    """Work around nats.py #985 (fix proposed in PR #994): an error JetStream returns for a
    `publish_async` (e.g. "wrong last sequence" for an existing claim) escapes the reply handler
    and the future never resolves. Catch what escapes and put it on the caller's future."""
    original = JetStreamContext._handle_async_reply

    async def handle(self: JetStreamContext, msg: Msg) -> None:
        try:
            await original(self, msg)
        except APIError as error:
            token = msg.subject[len(self._nc._inbox_prefix) + 22 + 2:]  # as nats.py computes it
            future = self._publish_async_futures.get(token)
            if future is not None and not future.done():
                future.set_exception(error)

    if not getattr(original, "copytrade_fix", False):
        handle.copytrade_fix = True  # type: ignore[attr-defined]
        JetStreamContext._handle_async_reply = handle  # type: ignore[method-assign]


_report_publish_async_errors()

SIGNALS_STREAM = "SIGNALS"
RESULTS_STREAM = "RESULTS"
WORK_STREAM = "WORK"  # signals spread over a group's replicas: one item per (signal, shard)
CLAIMS_BUCKET = "copytrade-claims"
SIZER_SUBJECT = "copytrade.sizer.size"
MASTER_TRADE_SUBJECT = "copytrade.master.trade"
DUPLICATE_WINDOW_S = 300.0
DAY = 86_400.0


def signal_subject(master_id: str) -> str:
    return f"copytrade.signals.{master_id}"


def result_subject(exchange: str, follower_id: str) -> str:
    return f"copytrade.results.{exchange}.{follower_id}"


def reject_subject(exchange: str) -> str:
    return f"copytrade.rejects.{exchange}"


def deadletter_subject(exchange: str) -> str:
    return f"copytrade.deadletter.{exchange}"


def durable_name(exchange: str) -> str:
    return f"copier-{exchange}"


def work_subject(group: str, shard: int) -> str:
    return f"copytrade.work.{group}.{shard}"


def work_durable(group: str, shard: int) -> str:
    return f"work-{group}-{shard}"


def replicas_subject(group: str) -> str:
    """Core NATS (not stored): the group's replicas announce themselves here every second."""
    return f"copytrade.replicas.{group}"


def nats_password(settings: Settings) -> str | None:
    """The password from the settings, or from the file named like the user (a Secret mount)."""
    if settings.nats_password or not (settings.nats_password_dir and settings.nats_user):
        return settings.nats_password
    path = Path(settings.nats_password_dir) / settings.nats_user
    try:
        return path.read_text().strip()
    except OSError:
        raise ConfigError(f"NATS password file for user {settings.nats_user} is missing") from None


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.nats_tls_ca is None:
        return None
    context = ssl.create_default_context(cafile=settings.nats_tls_ca)
    if settings.nats_tls_cert:
        context.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key)
    return context


async def connect(settings: Settings, name: str) -> Client:
    """Connect with credentials when set; reconnect forever (services outlive NATS restarts)."""
    async def on_disconnect() -> None:
        log.warning("event=nats_disconnected service=%s", name)

    async def on_reconnect() -> None:
        log.info("event=nats_reconnected service=%s", name)

    async def on_error(exc: Exception) -> None:
        log.warning("event=nats_error service=%s error=%s", name, type(exc).__name__)

    return await nats.connect(
        settings.nats_url, name=name, user=settings.nats_user, password=nats_password(settings),
        tls=tls_context(settings),
        max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=5,
        disconnected_cb=on_disconnect, reconnected_cb=on_reconnect, error_cb=on_error,
    )


async def ensure_streams(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """Create or update the streams and the claims bucket; return the claims bucket."""
    streams = [
        StreamConfig(name=SIGNALS_STREAM, subjects=["copytrade.signals.>"],
                     retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
                     duplicate_window=DUPLICATE_WINDOW_S, max_age=30 * DAY,
                     num_replicas=replicas),
        StreamConfig(name=RESULTS_STREAM, storage=StorageType.FILE, max_age=90 * DAY,
                     subjects=["copytrade.results.>", "copytrade.rejects.>",
                               "copytrade.deadletter.>"],
                     duplicate_window=DUPLICATE_WINDOW_S, num_replicas=replicas),
        # work queue: an item leaves the stream when acked; Nats-Msg-Id "<signal>:<shard>" dedupes
        StreamConfig(name=WORK_STREAM, subjects=["copytrade.work.>"],
                     retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
                     duplicate_window=DUPLICATE_WINDOW_S, max_age=DAY, num_replicas=replicas),
    ]
    for config in streams:
        try:
            await js.add_stream(config)
        except BadRequestError:  # exists with other settings: bring it to ours
            await js.update_stream(config)
    try:
        return await js.key_value(CLAIMS_BUCKET)
    except NotFoundError:
        return await js.create_key_value(KeyValueConfig(
            bucket=CLAIMS_BUCKET, history=1, ttl=7 * DAY, storage=StorageType.FILE,
            replicas=replicas))


async def ensure_consumer(
    js: JetStreamContext, exchange: str, *, ack_wait_s: float, max_deliver: int
) -> None:
    """The copier group's durable: every group sees every signal, its replicas share it."""
    await js.add_consumer(SIGNALS_STREAM, ConsumerConfig(
        durable_name=durable_name(exchange), filter_subject="copytrade.signals.>",
        deliver_policy=DeliverPolicy.NEW, ack_wait=ack_wait_s, max_deliver=max_deliver,
        max_ack_pending=1,  # one signal in hand per group, across replicas: signal order holds
    ))


async def ensure_work_consumers(
    js: JetStreamContext, group: str, shards: int, *, ack_wait_s: float, max_deliver: int
) -> None:
    """One durable per (group, shard) on the work stream; one item in hand per shard, so a
    shard's items (and each follower's copies) run in signal order on whichever replica pulls."""
    for shard in range(shards):
        await js.add_consumer(WORK_STREAM, ConsumerConfig(
            durable_name=work_durable(group, shard), filter_subject=work_subject(group, shard),
            deliver_policy=DeliverPolicy.ALL, ack_wait=ack_wait_s, max_deliver=max_deliver,
            max_ack_pending=1,
        ))


async def retry_forever(
    what: str, action: Callable[[], Awaitable[object]], *, base_s: float = 0.1, cap_s: float = 5.0
) -> object:
    """Run action until it succeeds, backing off: used where giving up would lose money state."""
    delay = base_s
    attempt = 0
    while True:
        try:
            return await action()
        except (TimeoutError, nats.errors.Error) as exc:
            attempt += 1
            log.warning("event=retry what=%s attempt=%d error=%s", what, attempt,
                        type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(cap_s, delay * 2)
