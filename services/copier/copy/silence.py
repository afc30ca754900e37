"""Master silence: a master whose venue has not been read (its fill watcher's heartbeat) for
`master_silence_s` is silent: an alert (`copytrade_master_silent`), and each subscribed
follower's `on_master_silence`: hold (nothing more), close_only (until the master is back), or
flatten (its copied holdings for that master sold, once per silence). It clears when the
master is back."""

from __future__ import annotations

import asyncio
import logging
import time

import nats
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from services.copier.copy.policy import Policy
from services.copier.copy.subscriptions import Subscriptions
from services.copier.followers import Follower, FollowerBook
from services.copier.metrics import CopierMetrics
from shared.control import Control, set_state
from shared.errors import CopytradeError
from shared.ledger import alive_key

log = logging.getLogger("copytrade.silence")


def silence_reason(master_id: str) -> str:
    return f"master_silence:{master_id}"


class MasterSilence:
    def __init__(
        self,
        *,
        fills: KeyValue,
        book: FollowerBook,
        control: Control,
        policy: Policy,
        subscriptions: Subscriptions,
        metrics: CopierMetrics,
    ) -> None:
        self._fills, self._book, self._control, self._policy = fills, book, control, policy
        self._subscriptions, self._metrics = subscriptions, metrics
        self._started = time.time()  # a master never heard of is silent only after this + limit
        self.silent: dict[str, str] = {}  # master -> episode (its last heartbeat)

    async def run(self, interval_s: float) -> None:
        while True:
            try:
                await self.check()
            except (CopytradeError, TimeoutError, nats.errors.Error) as exc:  # next round retries
                log.warning("event=master_silence_check_failed error=%s", type(exc).__name__)
            await asyncio.sleep(interval_s)

    async def check(self) -> dict[str, bool]:
        """Judge every master now; act on those that went silent or came back."""
        judged = {}
        for master in sorted(self._book.masters):
            heard = await self._last_heard(master)
            silent = time.time() - max(heard or 0.0, self._started) > self._book.master_silence_s
            self._metrics.master_silent.labels(master).set(int(silent))
            if silent and master not in self.silent:
                await self._went_silent(master, repr(heard))
            elif not silent and master in self.silent:
                await self._came_back(master)
            judged[master] = silent
        return judged

    async def _went_silent(self, master: str, episode: str) -> None:
        self.silent[master] = episode
        log.warning("event=master_silent master=%s silence_s=%s", master, self._book.master_silence_s)
        for follower in self._subscribers(master):
            action = follower.config.on_master_silence
            if action == "close_only":
                await self._control.restrict(follower.id, "close_only", silence_reason(master))
            elif action == "flatten":
                await self._subscriptions.sell_holdings(
                    follower, master, f"silence:{episode}", redelivered=True
                )

    async def _came_back(self, master: str) -> None:
        del self.silent[master]
        log.warning("event=master_back master=%s", master)
        for follower in self._subscribers(master):
            override = self._control.overrides.get(follower.id)
            if override is not None and override.reason == silence_reason(master):
                self._control.overrides.pop(follower.id, None)
                if self._control.kv is not None:
                    await set_state(self._control.kv, follower.id, None, f"{master} is back")

    def _subscribers(self, master: str) -> list[Follower]:
        return [f for f in self._book.subscribers(master) if self._policy.copies(f, master)]

    async def _last_heard(self, master: str) -> float | None:
        try:
            entry = await self._fills.get(alive_key(master))
        except KeyNotFoundError:
            return None
        return None if entry.value is None else float(entry.value.decode())
