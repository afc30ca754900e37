"""The master fill watcher: trades made on the master account outside copytrade (by hand on
the exchange's site, or by another bot) become signals, one per fill, exactly once.

The account's fills are polled from a cursor kept in JetStream KV, so a restart neither misses
nor repeats one. Each fill's signal id comes from its order id and fill id (the venue's trade
id, else the order's cumulative filled amount at that fill: services.master.orders), and each
published signal is recorded in the same bucket, so a fill seen again (the polls overlap) is
not published twice. An order of three fills gives three signals; followers copy each. The
master service's own orders are claimed by it and published whole: the watcher leaves them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from decimal import Decimal

import nats
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from services.master.metrics import MasterMetrics
from services.master.orders import OrderClaims, fingerprint
from services.master.signals import SignalPublisher, published_key
from services.master.streamed import SETTLE_S, Book, StreamIds, account_figures
from shared import bus
from shared.config import MasterConfig
from shared.errors import CopytradeError
from shared.exchange.port import AccountSnapshot, ExchangeAccount, Fill, OrderAck
from shared.ledger import alive_key
from shared.messages import signal_id_for

log = logging.getLogger("copytrade.watcher")
OVERLAP_S = 5.0
MAX_QUIET_S = 10.0  # the longest a busy account goes without looking for fills made by hand
# while the venue's private stream wakes the watcher, polls are only the fallback for what a
# reconnect may miss: this rare, so the account's budget stays whole for the reads it wakes
STREAMED_POLL_S = 30.0
FIGURES_MAX_AGE_S = 60.0  # MasterSettings.master_figures_max_age_s
HALF = 0.5  # a background call leaves half the account's burst to its own orders
URGENT_KEEP = 0.1  # the master's figures, when fills would otherwise be read by REST
Figures = Callable[[], Awaitable[tuple[Decimal, Decimal]]]  # equity, base held before the fill


def never_for(_fill: Fill) -> bool:
    return False


async def fills_bucket(js: JetStreamContext, replicas: int | None = None) -> KeyValue:
    """The master's bucket: published signal ids, the watcher's cursor, trade request records."""
    return await bus.bucket(js, bus.FILLS_BUCKET, replicas)


class Nap:
    """A watcher's wait between polls, cut short by `wake()` (the venue's private stream)."""

    def __init__(self) -> None:
        self._woken = asyncio.Event()

    def wake(self) -> None:
        self._woken.set()

    async def __call__(self, wait_s: float) -> bool:
        """Wait `wait_s`, or less when woken; whether it was woken."""
        try:
            await asyncio.wait_for(self._woken.wait(), wait_s)
        except TimeoutError:
            return False
        self._woken.clear()
        return True


class FillWatcher:
    def __init__(
        self,
        *,
        account: ExchangeAccount,
        config: MasterConfig,
        kv: KeyValue,
        master: SignalPublisher,
        on_fill: Callable[[], None] | None = None,
        figures_max_age_s: float = FIGURES_MAX_AGE_S,
        figures_settle_s: float = SETTLE_S,
        metrics: MasterMetrics | None = None,
    ) -> None:
        self._account, self._config, self._kv, self._master = account, config, kv, master
        self._on_fill = on_fill  # a fill published: the open-orders watcher speeds up
        self._cursor_key = f"cursor.{config.id}"
        self._orders = OrderClaims(kv, config.exchange)
        self._nap = Nap()
        # whether the venue's private stream is subscribed now and wakes this watcher (set by
        # services.master.stream); while it is, polls are only its fallback
        self.streamed: Callable[[], bool] = never
        # fills the stream gave whole, published without a read (services.master.streamed)
        self._book = Book(account_figures(account), figures_max_age_s, figures_settle_s)
        self._ids = StreamIds()
        self._taken: deque[tuple[Fill, Decimal | None]] = deque()  # (fill, base held before it)
        self._read_wanted = False  # a poll is wanted now, budget or not
        self._lock = asyncio.Lock()  # one publisher at a time: the poll or the stream's fills
        self._reading: asyncio.Task[None] | None = None  # the master's figures being read
        self._metrics = metrics
        if metrics is not None:
            metrics.stream_fills_trusted.set_function(lambda: float(self._ids.trusted))
            metrics.stream_fill_ids_differ.set_function(lambda: float(self._ids.refuted))

    @property
    def stream_fills_trusted(self) -> bool:
        """Whether fills are published from the stream without a read (its ids were checked)."""
        return self._ids.trusted

    @property
    def stream_fills_refuted(self) -> bool:
        """Whether the stream's fill ids were seen to differ from the trade history's."""
        return self._ids.refuted

    @property
    def figures_known(self) -> bool:
        """Whether a streamed fill could be signed now with the master's figures as read."""
        return self._book.known()

    def wake(self) -> None:
        """The venue's private stream reported a fill it did not give whole, or reconnected and
        may have missed some: poll now, budget or not (services.master.stream)."""
        self._book.forget()
        self._read_wanted = True
        self._nap.wake()

    def take(self, fill: Fill) -> None:
        """A fill the venue's private stream gave whole: published at once when its ids are
        the trade history's and the master's figures are known, else read by a poll."""
        self._taken.append((fill, self._book.apply(fill)))
        self._ids.streamed(fill)
        self._nap.wake()

    async def run(self, interval_s: float) -> None:
        try:
            await self._run(interval_s)
        finally:
            if self._reading is not None:
                self._reading.cancel()

    async def _run(self, interval_s: float) -> None:
        last = 0.0  # monotonic time of the last poll
        while True:
            if last:
                await self._nap(interval_s)
            try:
                if self._taken:
                    await self._publish_taken()
                woken, self._read_wanted = self._read_wanted, False
                # the master's own orders keep their budget; still, a poll at least every
                # MAX_QUIET_S, so a fill made by hand is never later than that
                since = time.monotonic() - last
                if self.streamed():
                    due = since >= STREAMED_POLL_S
                else:
                    due = since >= MAX_QUIET_S or _spare(self._account)
                if woken or due:
                    last = time.monotonic()
                    await self.poll()
                    await self._kv.put(alive_key(self._config.id), repr(time.time()).encode())
                if self.streamed() and self._figures_due():
                    self._read_figures()
            except (CopytradeError, TimeoutError, nats.errors.Error) as exc:  # the next poll retries
                self._read_wanted = self._read_wanted or bool(self._taken)
                log.warning("event=fill_poll_failed error=%s", type(exc).__name__)

    def _figures_due(self) -> bool:
        """Whether to read the master's figures now: due, and room in the account's budget
        (when urgent, any room now: the read goes at once, not after a wait a fill would land
        in and void it)."""
        return self._book.due() and _spare(self._account, URGENT_KEEP if self._book.urgent() else HALF)

    def _read_figures(self) -> None:
        """Read the master's figures in a task of its own: a read that waits on the account's
        rate limiter holds up no fill."""
        if self._reading is None or self._reading.done():
            self._reading = asyncio.create_task(self._book_refresh())
            self._reading.add_done_callback(_observed)

    async def _book_refresh(self) -> None:
        try:
            await self._book.refresh()
        except (CopytradeError, TimeoutError) as exc:  # the next loop reads again
            log.warning("event=master_figures_read_failed error=%s", type(exc).__name__)

    async def _publish_taken(self) -> None:
        """Publish the fills the stream gave whole; those it cannot are left to a poll."""
        async with self._lock:
            published = 0
            while self._taken:
                fill, before = self._taken[0]
                equity = self._book.equity
                # an order sent with a client id may be the master service's own, which it
                # claims once the venue acknowledges it (often after the stream told its fill):
                # the poll reads it, as before the stream, and leaves it to the service
                if not self._ids.trusted or before is None or equity is None or fill.client_order_id:
                    self._read_wanted = True  # the poll reads it (and checks the ids)
                elif await self._copy(fill, 0, _known(equity, before)):
                    self._ids.published(fill)
                    published += 1
                self._taken.popleft()  # after its outcome: an error leaves it to the poll
            if published and self._on_fill is not None:
                self._on_fill()

    async def poll(self) -> int:
        """Publish a signal for every new master fill since the cursor; return how many."""
        async with self._lock:
            return await self._poll()

    async def _poll(self) -> int:
        cursor = await self._cursor()
        # overlap the previous poll a little: a fill stamped at the cursor is not missed, and
        # the per-signal records keep it from being published twice
        began = time.monotonic()
        fills = sorted(await self._account.fills_since(cursor - OVERLAP_S), key=lambda f: f.at)
        held_back = self._ids.check(fills, began)
        account = _AccountNow(self._account, fills)
        twins: Counter[tuple[str, str]] = Counter()  # fills alike in all but their place
        published = 0
        for index, fill in enumerate(fills):
            twin = (fill.order_id, fingerprint(fill))
            published += await self._copy(
                fill,
                twins[twin],
                account.figures(index),
                held_back,
            )
            twins[twin] += 1
        if published and self._on_fill is not None:
            self._on_fill()
        if fills and fills[-1].at > cursor:  # every fill up to here is published
            await self._kv.put(self._cursor_key, repr(fills[-1].at).encode())
        return published

    async def _copy(
        self,
        fill: Fill,
        nth: int,
        figures: Figures,
        held_back: Callable[[Fill], bool] = never_for,
    ) -> bool:
        """Publish the fill's signal unless copytrade's own order or already published."""
        if await self._kv_has(published_key(signal_id_for(self._config.exchange, fill.order_id))):
            return False  # copytrade's own order (or one published whole before fill by fill)
        if (await self._orders.claim(fill.order_id, "fills")).by != "fills":
            return False  # the master service's own order: it publishes it whole
        fill_id = await self._orders.fill_id(fill, nth)
        if await self._kv_has(published_key(signal_id_for(self._config.exchange, fill.order_id, fill_id))):
            return False
        if held_back(fill):  # it may be published from the stream under another id
            log.error("event=fill_held_back order_id=%s fill_id=%s", fill.order_id, fill_id)
            if self._metrics is not None:
                self._metrics.fills_held_back.inc()
            return False
        equity, position_before = await figures()
        ack = OrderAck(
            exchange_order_id=fill.order_id,
            client_order_id=fill.client_order_id or "",
            status="filled",
            filled_base=fill.amount,
            avg_price=fill.price,
        )
        signal = self._master.signal_for(
            ack,
            fill.symbol,
            fill.side,
            fill.amount,
            "base",
            equity=equity,
            position_before=position_before,
            fill_id=fill_id,
        )
        signal = await self._master.publish(signal)
        log.info(
            "event=external_fill_published signal_id=%s order_id=%s fill_id=%s amount=%s "
            "copied_position_before=%s",
            signal.signal_id,
            fill.order_id,
            fill_id,
            fill.amount,
            signal.copied_position_before,
        )
        return True

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


class _AccountNow:
    """The master account's equity and positions, read once per poll when a fill needs them."""

    def __init__(self, account: ExchangeAccount, fills: list[Fill]) -> None:
        self._account, self._fills = account, fills
        self._snapshot: AccountSnapshot | None = None
        self._held: dict[str, Decimal] = {}

    async def snapshot(self) -> AccountSnapshot:
        if self._snapshot is None:
            self._snapshot = await self._account.snapshot()
        return self._snapshot

    def figures(self, index: int) -> Figures:
        """The equity and the base held before the poll's fill `index`, read when asked."""

        async def read() -> tuple[Decimal, Decimal]:
            return (await self.snapshot()).equity, await self.held_before(index)

        return read

    async def held_before(self, index: int) -> Decimal:
        """The base held before the poll's fill `index`: held now, less it and the later ones."""
        symbol = self._fills[index].symbol
        if symbol not in self._held:
            self._held[symbol] = await self._account.position(symbol)
        since = sum((_signed(f) for f in self._fills[index:] if f.symbol == symbol), Decimal(0))
        return max(Decimal(0), self._held[symbol] - since)


def _signed(fill: Fill) -> Decimal:
    return fill.amount if fill.side == "buy" else -fill.amount


def never() -> bool:
    return False


def _observed(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("event=master_figures_read_error", exc_info=exc)


def _known(equity: Decimal, before: Decimal) -> Figures:
    async def figures() -> tuple[Decimal, Decimal]:
        return equity, before

    return figures


def _spare(account: ExchangeAccount, keep: float = HALF) -> bool:
    """Whether the account's rate limiter has room for a background call that leaves `keep` of
    its burst (adapters with a limiter say so; others always have)."""
    spare = getattr(account, "spare_budget", None)
    return True if spare is None else bool(spare(keep))
