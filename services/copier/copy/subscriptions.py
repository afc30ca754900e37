"""Subscribing and unsubscribing: when a follower starts copying a master
(`on_subscribe: copy_open`) it buys the master's current copied position × its own ratio once;
when the subscription is removed (or `copytrade unsubscribe`), `on_unsubscribe: close` sells
that copied holding only (own coins untouched), `keep` leaves it and stops managing it.

Each (follower, master) has a record in the ledger bucket (`sub.<follower>.<master>`), created
once, so a restart or a second replica never opens twice. The order itself is an ordinary copy
of an internal signal (never published): the same figures, sizer, policy, claims, ledger and
results as any copy, with an id fixed per subscription, so a retry recovers instead of
re-placing."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Literal

import msgspec
import nats
from msgspec import Struct
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from services.copier.copy.execute import CopyExecutor
from services.copier.copy.policy import Policy
from services.copier.followers import Follower, FollowerBook
from shared import bus
from shared.errors import CopytradeError
from shared.ledger import Ledger
from shared.messages import AnySignal, Side, TradeSignal, signal_id_for

log = logging.getLogger("copytrade.subscriptions")
State = Literal["opening", "active", "closing"]
INTERNAL = "copytrade"  # the "exchange" of internal signals: never published, never signed


class Record(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    state: State
    since: float  # when the subscription began: fixes the ids of its open and close
    on_unsubscribe: Literal["keep", "close"] = "keep"
    close: Literal["keep", "close"] | None = None  # decided when it ends
    at: float = 0.0  # last change: a record stuck opening/closing past the lease is taken over


_Action = Callable[..., Awaitable[None]]
_NAMESPACE = uuid.UUID("0c5e3a4e-2f65-5f0b-8f5e-1d6a3c1b7e21")


def record_key(follower_id: str, master_id: str) -> str:
    return f"sub.{follower_id}.{master_id}"


class Subscriptions:
    def __init__(
        self,
        *,
        js: JetStreamContext,
        kv: KeyValue,
        book: FollowerBook,
        policy: Policy,
        executor: CopyExecutor,
        lease_s: float,
    ) -> None:
        self._js, self._kv, self._book, self._policy = js, kv, book, policy
        self._executor, self._lease_s = executor, lease_s
        self._generation = -1  # the book's config generation the settled pairs belong to
        self._ledger = Ledger(kv)
        self._settled: set[tuple[str, str]] = set()  # (follower, master) active and wanted
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(Record)
        self._signals = msgspec.json.Decoder(AnySignal)

    async def run(self, interval_s: float) -> None:
        """Sync now and every interval (a config or an operator's unsubscribe changes pairs)."""
        while True:
            try:
                await self.sync()
            except (CopytradeError, TimeoutError, nats.errors.Error) as exc:  # next round retries
                log.warning("event=subscriptions_sync_failed error=%s", type(exc).__name__)
            await asyncio.sleep(interval_s)

    async def sync(self) -> int:
        """Open, close or adopt what changed; return how many pairs needed work."""
        if self._book.generation != self._generation:  # a new config: look at every pair again
            self._generation = self._book.generation
            self._settled.clear()
        worked = 0
        for follower in self._book.all():
            for master in sorted(self._book.masters):
                if (follower.id, master) in self._settled and self._policy.copies(follower, master):
                    continue
                worked += await self._sync_pair(follower, master)
        return worked

    async def _sync_pair(self, follower: Follower, master: str) -> int:
        wanted = self._policy.copies(follower, master)
        record, revision = await self._read(follower.id, master)
        if wanted and record is None:
            return await self._begin(follower, master)
        if record is None:
            return 0
        if wanted and record.state == "active":
            await self._keep(follower, master, record, revision)
            return 0
        if wanted and record.state == "opening":
            return await self._retry(follower, master, record, revision, self._open)
        if record.state == "closing":
            return await self._retry(follower, master, record, revision, self._close)
        return await self._end(follower, master, record, revision)

    async def _keep(self, follower: Follower, master: str, record: Record, revision: int) -> None:
        on_unsubscribe = follower.subscriptions[master].on_unsubscribe
        if on_unsubscribe != record.on_unsubscribe:  # the config changed what removal does
            changed = msgspec.structs.replace(record, on_unsubscribe=on_unsubscribe)
            if not await self._write(follower.id, master, changed, revision):
                return
        self._settled.add((follower.id, master))

    async def _begin(self, follower: Follower, master: str) -> int:
        subscription = follower.subscriptions[master]
        opening = subscription.on_subscribe == "copy_open"
        now = time.time()
        record = Record(
            state="opening" if opening else "active",
            since=now,
            at=now,
            on_unsubscribe=subscription.on_unsubscribe,
        )
        try:
            await self._kv.create(record_key(follower.id, master), self._encoder.encode(record))
        except KeyWrongLastSequenceError:
            return 0  # another replica began it: the next sync sees its record
        log.info(
            "event=subscribed follower=%s master=%s on_subscribe=%s",
            follower.id,
            master,
            subscription.on_subscribe,
        )
        if opening:
            await self._open(follower, master, record, redelivered=False)
            await self._write(
                follower.id, master, msgspec.structs.replace(record, state="active", at=time.time()), None
            )
        self._settled.add((follower.id, master))
        return 1

    async def _end(self, follower: Follower, master: str, record: Record, revision: int) -> int:
        unsub = self._policy.unsubscribed(follower, master)
        close = (unsub.action if unsub is not None else None) or record.on_unsubscribe
        closing = msgspec.structs.replace(record, state="closing", close=close, at=time.time())
        if not await self._write(follower.id, master, closing, revision):
            return 0
        log.info("event=unsubscribed follower=%s master=%s on_unsubscribe=%s", follower.id, master, close)
        await self._close(follower, master, closing, redelivered=False)
        return 1

    async def _retry(
        self, follower: Follower, master: str, record: Record, revision: int, action: _Action
    ) -> int:
        """A record left opening/closing (its replica died): past the lease, take it over."""
        if time.time() - record.at < self._lease_s:
            return 0
        taken = msgspec.structs.replace(record, at=time.time())
        if not await self._write(follower.id, master, taken, revision):
            return 0
        await action(follower, master, taken, redelivered=True)
        if taken.state == "opening":
            await self._write(
                follower.id, master, msgspec.structs.replace(taken, state="active", at=time.time()), None
            )
        return 1

    async def _open(self, follower: Follower, master: str, record: Record, *, redelivered: bool) -> None:
        """Buy the master's copied position in every symbol, scaled like a copy."""
        last = await self._last_signal(master)
        prefix = f"master.{master}."
        for key, entry in (await self._ledger.entries(prefix)).items():
            if entry.amount > 0 and last is not None:
                await self._copy(
                    follower,
                    last,
                    key[len(prefix) :],
                    "buy",
                    entry.amount,
                    episode=f"open:{record.since!r}",
                    redelivered=redelivered,
                )

    async def _close(self, follower: Follower, master: str, record: Record, *, redelivered: bool) -> None:
        if record.close == "close":
            await self.sell_holdings(follower, master, f"close:{record.since!r}", redelivered=redelivered)
        await self._kv.delete(record_key(follower.id, master))
        self._settled.discard((follower.id, master))

    async def sell_holdings(
        self, follower: Follower, master: str, episode: str, *, redelivered: bool
    ) -> None:
        """Sell the follower's copied holdings for this master (own coins untouched), once per
        `episode` (an unsubscribe, a master's silence)."""
        last = await self._last_signal(master)
        prefix = f"hold.{follower.id}.{master}."
        for key, entry in (await self._ledger.entries(prefix)).items():
            if entry.amount > 0 and last is not None:
                await self._copy(
                    follower,
                    last,
                    key[len(prefix) :],
                    "sell",
                    entry.amount,
                    episode=episode,
                    redelivered=redelivered,
                )

    async def _copy(
        self,
        follower: Follower,
        last: AnySignal,
        symbol_key: str,
        side: Side,
        amount: Decimal,
        *,
        episode: str,
        redelivered: bool,
    ) -> None:
        """Copy an internal signal of `amount` for this follower alone, through the whole path."""
        symbol = symbol_key.replace("_", "/")
        fill = isinstance(last, TradeSignal) and last.symbol == symbol  # a fill's price, else the venue's
        price = last.price if fill else await follower.account.price(follower.venue_symbol(symbol))
        if price is None:
            log.warning("event=subscription_no_price follower=%s symbol=%s", follower.id, symbol)
            return
        order_id = (
            "internal-" + uuid.uuid5(_NAMESPACE, f"{follower.id}:{last.master_id}:{symbol}:{episode}").hex
        )
        signal = TradeSignal(
            signal_id=signal_id_for(INTERNAL, order_id),
            master_id=last.master_id,
            exchange=INTERNAL,
            symbol=symbol,
            side=side,
            price=price,
            size=amount,
            size_type="base",
            filled_base=amount,
            order_id=order_id,
            master_equity=last.master_equity,
            master_position_before=amount,
            copied_position_before=amount,
            executed_at=time.time(),
        )
        await self._executor.execute(
            signal, [follower], time.time(), redelivered=redelivered, lineage=("", 0)
        )

    async def _last_signal(self, master: str) -> AnySignal | None:
        """The master's newest signal: its equity (the ratio) and a price to check against."""
        try:
            msg = await self._js.get_last_msg(bus.SIGNALS_STREAM, bus.signal_subject(master))
        except NotFoundError:
            return None
        return None if msg.data is None else self._signals.decode(msg.data)

    async def _read(self, follower_id: str, master: str) -> tuple[Record | None, int]:
        try:
            entry = await self._kv.get(record_key(follower_id, master))
        except KeyNotFoundError:
            return None, 0
        if entry.value is None:
            return None, entry.revision or 0
        return self._decoder.decode(entry.value), entry.revision or 0

    async def _write(self, follower_id: str, master: str, record: Record, revision: int | None) -> bool:
        key, data = record_key(follower_id, master), self._encoder.encode(record)
        try:
            if revision is None:
                await self._kv.put(key, data)
            else:
                await self._kv.update(key, data, last=revision)
        except KeyWrongLastSequenceError:
            return False  # another replica moved it first
        return True
