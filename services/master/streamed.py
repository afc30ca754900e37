"""Fills taken from the venue's private stream, published without a REST read.

A fill by hand is published within the venue's push and a few NATS round trips when three
things hold; otherwise the fill watcher reads the fills by REST as before (its poll, woken):

- **The stream's ids are the trade history's** (`StreamIds`). Signals are deduplicated on the
  fill's trade id, so a fill published from the stream must carry the id the REST trade history
  gives it, or the poll would publish it again. This is not taken on trust: the first fills
  streamed are published by the poll, and each one's id is looked up in the trade history read;
  once one is found there, the stream's fills are published directly. A fill of the same order,
  amount and price under another id proves the opposite: the stream's fills are then never
  published directly (logged, `copytrade_master_stream_fills_trusted` 0), and a trade the poll
  finds that may be one published from the stream is held back, not published twice.
- **The master's figures are current** (`Book`): a signal carries the master's equity and
  the base it held before the fill (followers size a sell by it). The book reads them by REST
  in the background, when the account's budget is spare, and then applies each streamed fill
  to the base held. Its equity is at most `max_age_s` old; past that, or when the stream may
  have missed something (a reconnect), or when a fill may already be in the balances read (it
  arrived during the read, or it happened within `SETTLE_S` of it), the book does not know,
  and the fill is read by REST.
- **Nobody else publishes it at the same time:** the watcher's lock (services.master.watcher).
  An order sent with a client order id may be the master service's own, which the service
  claims once the venue acknowledges it and publishes whole; the stream often tells its fill
  before that acknowledgement, so such fills are left to the poll, as before the stream. Fills
  made on the venue's site carry none.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from decimal import Decimal

from shared.exchange.port import ExchangeAccount, Fill

log = logging.getLogger("copytrade.master.streamed")
# a fill stamped by the venue before a balance read came back, or within this after, may be in
# that read already: applying it could count it twice. It allows for the venue's clock against
# ours (NTP keeps both within milliseconds). A fill that came while the read was in flight voids
# the read; the read goes out only when the account's rate limiter lets it go at once, so that
# window is one round trip.
SETTLE_S = 0.5
KEPT = 1000  # streamed fills remembered for the id check


Reader = Callable[[list[str]], Awaitable[tuple[Decimal, dict[str, Decimal]]]]


def account_figures(account: ExchangeAccount) -> Reader:
    """The master's equity and the base it holds of each symbol, as its venue tells them."""

    async def read(symbols: list[str]) -> tuple[Decimal, dict[str, Decimal]]:
        snapshot = await account.snapshot()
        return snapshot.equity, {s: await account.position(s) for s in symbols}  # one balance read

    return read


class Book:
    """The master account's equity and base held, kept current from its streamed fills.

    `wall` is the clock the venue's fill times are compared with; `mono` ages the figures."""

    def __init__(
        self,
        read: Reader,
        max_age_s: float,
        settle_s: float = SETTLE_S,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read, self.max_age_s, self._settle_s = read, max_age_s, settle_s
        self._wall, self._mono = wall, mono
        self.equity: Decimal | None = None
        self._held: dict[str, Decimal] = {}  # symbol -> base held now (known symbols only)
        self._symbols: set[str] = set()  # symbols to read at the next refresh
        self._read_at = 0.0  # wall time the last accepted read came back
        self._read_mono = 0.0
        self._arrived = 0  # streamed fills applied or refused so far (a read in flight checks)

    def known(self) -> bool:
        """Whether the equity is current enough to sign a signal with."""
        return self.equity is not None and self._mono() - self._read_mono <= self.max_age_s

    def due(self) -> bool:
        """Whether a background refresh is due: unknown, a symbol to learn, or half its age."""
        if self.equity is None or self._symbols - self._held.keys():
            return True
        return self._mono() - self._read_mono > self.max_age_s / 2

    def urgent(self) -> bool:
        """Whether a streamed fill would be read by REST for want of figures, now or soon: then
        they are read whatever the account's spare budget (their one balance read spares a
        trade-history read and a balance read per fill)."""
        if self.equity is None or self._symbols - self._held.keys():
            return True
        return self._mono() - self._read_mono > self.max_age_s * 3 / 4

    def forget(self) -> None:
        """Something may have changed unseen (the stream reconnected): read again first."""
        self.equity, self._held = None, {}
        self._arrived += 1

    def apply(self, fill: Fill) -> Decimal | None:
        """Apply a streamed fill; the base held before it, None when the book cannot say."""
        self._arrived += 1
        self._symbols.add(fill.symbol)
        before = self._held.get(fill.symbol)
        if before is None:  # a symbol not read yet: the next refresh reads it
            return None
        if fill.at <= self._read_at + self._settle_s:  # the read may hold it already
            self.forget()
            return None
        self._held[fill.symbol] = before + (fill.amount if fill.side == "buy" else -fill.amount)
        return before if self.known() else None

    async def refresh(self) -> bool:
        """Read the equity and the base held of every symbol seen; False (nothing changed)
        when a streamed fill arrived while reading, as the read may or may not hold it."""
        arrived = self._arrived
        equity, held = await self._read(sorted(self._symbols))
        if self._arrived != arrived:
            return False
        self.equity, self._held = equity, held
        self._read_at, self._read_mono = self._wall(), self._mono()
        return True


class StreamIds:
    """Whether the stream's fill ids are the trade history's, as seen on this account."""

    def __init__(self) -> None:
        self.trusted = False
        self.refuted = False
        # (fill, monotonic time it came): streamed and not yet seen in a REST read; published
        # from the stream. A read compares only what came before it began.
        self._unchecked: deque[tuple[Fill, float]] = deque(maxlen=KEPT)
        self._published: deque[tuple[Fill, float]] = deque(maxlen=KEPT)

    def streamed(self, fill: Fill) -> None:
        if not (self.trusted or self.refuted):
            self._unchecked.append((fill, time.monotonic()))

    def published(self, fill: Fill) -> None:
        self._published.append((fill, time.monotonic()))

    def check(self, read: list[Fill], began: float) -> Callable[[Fill], bool]:
        """Compare the fills streamed before a REST read of the trade history (begun at
        monotonic `began`) with what it returned; the read's `held_back` test."""
        ids = {(f.order_id, f.trade_id) for f in read}
        if not self.refuted:
            self._confirm(read, ids, began)
        return lambda fill: self._may_be_published(fill, ids, began)

    def _confirm(self, read: list[Fill], ids: set[tuple[str, str | None]], began: float) -> None:
        for item in [i for i in self._unchecked if i[1] < began]:
            fill = item[0]
            if (fill.order_id, fill.trade_id) in ids:
                self._unchecked.remove(item)
                if not self.trusted:
                    log.info("event=stream_fill_ids_confirmed order_id=%s", fill.order_id)
                self.trusted = True
            elif any(_alike(fill, f) for f in read):
                self._refute(fill)
                return
        if self.trusted:
            self._unchecked.clear()

    def _may_be_published(self, fill: Fill, ids: set[tuple[str, str | None]], began: float) -> bool:
        """Whether a trade of the read, not published under its own id, may be one the stream
        published under another: one alike (order, amount, price), streamed before the read,
        whose id is not in the read. Then the stream's ids are refuted, and the trade is held
        back."""
        for streamed, came in self._published:
            if came < began and _alike(streamed, fill) and (streamed.order_id, streamed.trade_id) not in ids:
                self._refute(streamed)
                return True
        return False

    def _refute(self, fill: Fill) -> None:
        if not self.refuted:
            log.error(
                "event=stream_fill_ids_differ order_id=%s: the stream's fill ids are not the trade "
                "history's; fills are published from REST reads only",
                fill.order_id,
            )
        self.trusted, self.refuted = False, True
        self._unchecked.clear()


def _alike(a: Fill, b: Fill) -> bool:
    same = a.order_id == b.order_id and a.amount == b.amount and a.price == b.price
    return same and a.trade_id != b.trade_id
