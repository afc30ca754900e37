"""Each follower's rate limiter: a leaky bucket that holds the venue's burst and drains while idle.

ccxt's own throttler (4.5) holds one call's worth of tokens and credits no idle time: after a
balance read (Kraken cost 3, one unit a second) every later call of the account waits three
seconds, however long the account was idle. A Kraken copy (balance, ticker, balance, order)
waited seven seconds for it. Venues allow bursts — Kraken's REST counter holds 15 calls and
decays a third of a call a second; AddOrder is not counted — so this limiter takes ccxt's cost
units at ccxt's rate, and holds `burst` of them (`CcxtVenue.burst`). A zero-cost call (Kraken's
AddOrder) never waits.

A venue that counts a limit per IP (Binance's request weight) gets one more bucket per process,
shared by all its accounts (`then`): a call takes its account's tokens first, then the IP's, so
an account held back by its own limit holds none of the shared budget.

ccxt calls `await exchange.throttler(cost)` before each request and sets `throttler.loop` when it
opens; this class answers both. The Alpaca adapter calls it before each request too.
"""

from __future__ import annotations

import asyncio

from aiolimiter import AsyncLimiter


class BurstThrottle:
    """ccxt's throttler interface over an `aiolimiter.AsyncLimiter` of `burst` cost units."""

    def __init__(self, rate_limit_ms: float, burst: float, then: BurstThrottle | None = None) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None  # set by ccxt; the bucket needs none
        self._bucket = AsyncLimiter(burst, burst * rate_limit_ms / 1000)
        self._then = then
        self.waits = 0  # calls that found the bucket full and waited

    def has_room(self, amount: float, keep: float) -> bool:
        """Whether `amount` could go now and still leave `keep` units for others: a background
        call (watching the master's fills or orders) takes only what the account's own orders
        do not need."""
        return self._bucket.has_capacity(min(amount + keep, self._bucket.max_rate))

    async def __call__(self, cost: float | None = None) -> None:
        amount = min(1.0 if cost is None else float(cost), self._bucket.max_rate)
        if amount <= 0:
            return
        if not self._bucket.has_capacity(amount):
            self.waits += 1
        await self._bucket.acquire(amount)
        if self._then is not None:
            await self._then(cost)
