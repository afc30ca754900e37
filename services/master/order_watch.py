"""The open-orders watcher: the master's resting orders, placed, amended or cancelled by hand on
the venue (or by copytrade), become order events within a second (services.master.order_events).

Where the venue has a private stream (Kraken, Alpaca: `shared.exchange.port.Streaming`), the
watcher is woken by it and compares at once (services.master.stream); open orders are polled
besides, as the fallback for whatever a reconnect misses and on the other venues. A poll is one
private call (Kraken OpenOrders, Binance openOrders per symbol, ...) drawn from the same
per-account budget as the master's own trades, so the pace adapts (`Cadence`):

- every FAST_S (0.5 s: an event is seen within a second) while the master has resting orders or
  something happened lately (an order event, a fill, an order request: ACTIVE_S);
- otherwise at the fill watcher's interval (a new order by hand is then seen within it);
- and slower, doubling up to MAX_BACKOFF times, while the account's rate limiter makes calls
  wait: the master's own calls keep their budget. It speeds up again, halving, once calls pass
  without waiting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import nats

from services.master.metrics import MasterMetrics
from services.master.order_events import OrderTracker
from services.master.watcher import STREAMED_POLL_S, Nap, never
from shared.errors import CopytradeError
from shared.exchange.port import ExchangeAccount, NotNative
from shared.messages import OrderSignal

log = logging.getLogger("copytrade.master.orders")
FAST_S = 0.5
ACTIVE_S = 60.0
MAX_BACKOFF = 8


@runtime_checkable
class Throttled(Protocol):
    """An account whose adapter counts the calls its rate limiter held back (ccxt, Alpaca)."""

    @property
    def rate_limit_waits(self) -> int: ...

    def spare_budget(self) -> bool: ...


class Cadence:
    """How long the watcher waits before its next poll."""

    def __init__(
        self, fast_s: float, slow_s: float, active_s: float = ACTIVE_S, max_backoff: int = MAX_BACKOFF
    ) -> None:
        self.fast_s, self.slow_s = fast_s, max(fast_s, slow_s)
        self._active_s, self._max_backoff = active_s, max_backoff
        self.backoff = 1

    def next(self, *, resting: int, active_at: float, waited: bool) -> float:
        """The next wait, given the resting orders, the last activity (monotonic) and whether
        the account's calls waited on its rate limiter since the last poll."""
        if waited:
            self.backoff = min(self._max_backoff, self.backoff * 2)
        else:
            self.backoff = max(1, self.backoff // 2)
        busy = resting > 0 or time.monotonic() - active_at < self._active_s
        return (self.fast_s if busy else self.slow_s) * self.backoff


class OrderWatcher:
    def __init__(
        self,
        *,
        tracker: OrderTracker,
        account: ExchangeAccount,
        slow_s: float,
        fast_s: float = FAST_S,
        metrics: MasterMetrics | None = None,
    ) -> None:
        self._tracker, self._account, self._metrics = tracker, account, metrics
        self.cadence = Cadence(fast_s, slow_s)
        self._waits = self._rate_limit_waits()
        self._nap = Nap()
        self.streamed: Callable[[], bool] = never  # as FillWatcher.streamed

    def wake(self) -> None:
        """The venue's private stream reported an order change: compare now, budget or not
        (services.master.stream)."""
        self._nap.wake()

    async def run(self) -> None:
        woken = False
        while True:
            try:
                await (self._tracker.sync() if woken else self.poll())
            except NotNative as exc:  # the venue lists no resting orders: nothing to watch
                log.warning("event=open_orders_not_watched reason=%s", exc)
                return
            except (CopytradeError, TimeoutError, ValueError, nats.errors.Error) as exc:
                log.warning("event=open_orders_poll_failed error=%s", type(exc).__name__)
            except Exception:  # a bug: logged with its trace, and the watch goes on
                log.exception("event=open_orders_poll_error")
            woken = await self._nap(self._next_wait())

    async def poll(self) -> list[OrderSignal]:
        """One comparison of every open order with the state kept: the events published. Only
        with budget to spare: the master's own orders keep theirs (the next poll comes soon)."""
        if isinstance(self._account, Throttled) and not self._account.spare_budget():
            return []
        return await self._tracker.sync()

    def _next_wait(self) -> float:
        waits = self._rate_limit_waits()
        waited, self._waits = waits > self._waits, waits
        wait = self.cadence.next(
            resting=self._tracker.open_orders, active_at=self._tracker.active_at, waited=waited
        )
        if self.streamed():  # the stream wakes it on every change: polls are the fallback only
            wait = max(wait, STREAMED_POLL_S)
        if self._metrics is not None:
            self._metrics.order_poll_interval.set(wait)
        return wait

    def _rate_limit_waits(self) -> int:
        account = self._account
        return account.rate_limit_waits if isinstance(account, Throttled) else 0
