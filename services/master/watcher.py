"""The master fill watcher: trades made on the master account outside copytrade (by hand on
the exchange's site, or by another bot) become signals, exactly once.

The account's fills are polled from a cursor kept in JetStream KV, so a restart neither misses
nor repeats one. Each published signal is recorded in the same bucket (the master service
records its own too), and the signal id is derived from the master order id exactly as for
copytrade's own orders, so a fill is never published twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from decimal import Decimal

import nats
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from services.master.signals import SignalPublisher, published_key
from shared import bus
from shared.config import MasterConfig
from shared.errors import CopytradeError
from shared.exchange.port import ExchangeAccount, Fill, OrderAck
from shared.messages import signal_id_for

log = logging.getLogger("copytrade.watcher")
OVERLAP_S = 5.0


async def fills_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """The master's bucket: published signal ids, the watcher's cursor, trade request records."""
    return await bus.bucket(js, bus.FILLS_BUCKET, replicas)


class FillWatcher:
    def __init__(self, *, account: ExchangeAccount, config: MasterConfig, kv: KeyValue,
                 master: SignalPublisher) -> None:
        self._account, self._config, self._kv, self._master = account, config, kv, master
        self._cursor_key = f"cursor.{config.id}"

    async def run(self, interval_s: float) -> None:
        while True:
            try:
                await self.poll()
            except (CopytradeError, TimeoutError, nats.errors.Error) as exc:  # the next poll retries
                log.warning("event=fill_poll_failed error=%s", type(exc).__name__)
            await asyncio.sleep(interval_s)

    async def poll(self) -> int:
        """Publish a signal for every new master order filled since the cursor; return how many."""
        cursor = await self._cursor()
        # overlap the previous poll a little: a fill stamped at the cursor is not missed, and
        # the per-signal records keep it from being published twice
        fills = await self._account.fills_since(cursor - OVERLAP_S)
        published = 0
        for order_id, order_fills in _by_order(fills).items():
            signal_id = signal_id_for(self._config.exchange, order_id)
            if await self._kv_has(published_key(signal_id)):
                continue  # copytrade's own order, or already published
            await self._publish(order_id, order_fills)
            published += 1
        if fills:
            await self._kv.put(self._cursor_key, repr(max(f.at for f in fills)).encode())
        return published

    async def _publish(self, order_id: str, fills: list[Fill]) -> None:
        amount = sum((f.amount for f in fills), Decimal(0))
        price = sum((f.amount * f.price for f in fills), Decimal(0)) / amount
        first = fills[0]
        snapshot = await self._account.snapshot()
        held_now = await self._account.position(first.symbol)
        before = held_now - amount if first.side == "buy" else held_now + amount
        ack = OrderAck(exchange_order_id=order_id, client_order_id=first.client_order_id or "",
                       status="filled", filled_base=amount, avg_price=price)
        signal = self._master.signal_for(ack, first.symbol, first.side, amount, "base",
                                         snapshot.equity, max(before, Decimal(0)))
        await self._master.publish(signal)
        log.info("event=external_fill_published signal_id=%s order_id=%s amount=%s",
                 signal.signal_id, order_id, amount)

    async def _cursor(self) -> float:
        """Where the last poll stopped; the first start begins now (history is not replayed)."""
        try:
            entry = await self._kv.get(self._cursor_key)
            return float((entry.value or b"0").decode())
        except KeyNotFoundError:
            now = time.time()
            await self._kv.put(self._cursor_key, repr(now).encode())
            return now

    async def _kv_has(self, key: str) -> bool:
        try:
            await self._kv.get(key)
        except KeyNotFoundError:
            return False
        return True


def _by_order(fills: list[Fill]) -> dict[str, list[Fill]]:
    grouped: dict[str, list[Fill]] = defaultdict(list)
    for fill in sorted(fills, key=lambda f: f.at):
        grouped[fill.order_id].append(fill)
    return grouped
