"""A follower's figures for sizing: read (or taken from the cache) through the policy's
pre-read check and equity limits; a temporary read error is retried within the signal's age,
and a read that still fails is a recorded failure, never a quiet skip."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import msgspec

from services.copier.copy.holdings import Holdings
from services.copier.copy.policy import Policy
from services.copier.followers import Follower, FollowerBook
from services.copier.metrics import CopierMetrics
from shared.config import CopierSettings
from shared.errors import ExchangeError, TemporaryError
from shared.messages import FollowerSnapshot, Skip, TradeSignal

log = logging.getLogger("copytrade.copier")
READ_ATTEMPTS = 4
READ_BACKOFF_S = 0.2


@dataclass(frozen=True)
class ReadFailed:
    """The follower's account could not be read: recorded as `failed` with the error class."""

    follower_id: str
    error: ExchangeError


Figures = FollowerSnapshot | Skip | ReadFailed


class FigureReader:
    def __init__(
        self,
        *,
        book: FollowerBook,
        policy: Policy,
        holdings: Holdings,
        settings: CopierSettings,
        limit: asyncio.Semaphore,
    ) -> None:
        self._book, self._policy, self._settings, self._limit = book, policy, settings, limit
        self._holdings = holdings

    async def read_all(self, signal: TradeSignal, followers: list[Follower]) -> list[Figures]:
        return list(await asyncio.gather(*(self.read(signal, f) for f in followers)))

    async def read(self, signal: TradeSignal, follower: Follower) -> Figures:
        refused = self._policy.before_reading(follower)
        if refused is not None:
            return refused
        try:
            async with self._limit:
                snapshot = await self._read_with_retries(signal, follower)
        except ExchangeError as exc:
            log.warning("event=account_read_failed follower=%s error=%s", follower.id, type(exc).__name__)
            return ReadFailed(follower.id, exc)
        state = await self._policy.after_reading(follower, snapshot.equity)
        if state == "paused":
            return Skip(follower_id=follower.id, reason_code="paused", reason="Follower is paused")
        holding = None
        if snapshot.rules is not None:
            # sells read the ledger itself (an operator may have adopted coins); the sizer never
            # sells more than the real balance, and only reconciliation clips the ledger, once
            # a discrepancy has settled (a cached balance may lag a copy made elsewhere)
            holding = await self._holdings.of(
                follower, signal.master_id, signal.symbol, fresh=signal.side == "sell"
            )
        return msgspec.structs.replace(snapshot, state=state, holding=holding)

    async def _read_with_retries(self, signal: TradeSignal, follower: Follower) -> FollowerSnapshot:
        """Retry temporary errors (timeouts, 5xx, rate limits) while the signal is young enough
        to copy; the last error raises."""
        age_limit = follower.config.risk.max_signal_age_s or self._book.signals.max_age_s
        deadline = signal.executed_at + age_limit
        for attempt in range(READ_ATTEMPTS):
            try:
                return await self._read(signal, follower)
            except TemporaryError as exc:
                delay = READ_BACKOFF_S * 2**attempt
                if attempt + 1 == READ_ATTEMPTS or time.time() + delay > deadline:
                    raise
                log.info(
                    "event=account_read_retry follower=%s attempt=%d error=%s",
                    follower.id,
                    attempt + 1,
                    type(exc).__name__,
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _read(self, signal: TradeSignal, follower: Follower) -> FollowerSnapshot:
        rules = await self._book.rules(follower, signal.symbol)
        return await follower.snapshot(
            signal,
            rules,
            self._settings.snapshot_ttl_s,
            state=self._policy.state(follower),
            max_signal_age_s=self._book.signals.max_age_s,
        )


class FigureRefresher:
    """Keeps followers' figures fresh in the background, so a signal's copies need no account
    read before their orders: every `interval_s`, followers whose figures are older are read
    again, a few at a time (the copy path keeps the rest of the venue's budget)."""

    def __init__(
        self, book: FollowerBook, metrics: CopierMetrics, *, interval_s: float, parallel: int = 8
    ) -> None:
        self._book, self._metrics, self._interval_s = book, metrics, interval_s
        self._parallel = asyncio.Semaphore(parallel)

    async def run(self, *, warm: bool) -> None:
        """warm: read every follower's figures first (a group this replica copies whole)."""
        if warm:
            await self.refresh_due(include_unread=True)
        while True:
            await asyncio.sleep(self._interval_s)
            await self.refresh_due()

    async def refresh_due(self, *, include_unread: bool = False) -> int:
        """Refresh the followers whose figures are older than the interval; how many were."""
        due = [f for f in self._book.all() if _due(f.figures_age(), self._interval_s, include_unread)]
        await asyncio.gather(*(self._refresh(f) for f in due))
        return len(due)

    async def _refresh(self, follower: Follower) -> None:
        async with self._parallel:
            try:
                await follower.refresh()
            except ExchangeError as exc:  # kept figures age; past the TTL the copy path reads
                self._metrics.figure_refresh_failures.inc()
                log.info("event=figures_refresh_failed follower=%s error=%s", follower.id, type(exc).__name__)


def _due(age: float | None, interval_s: float, include_unread: bool) -> bool:
    return include_unread if age is None else age >= interval_s * 0.9
