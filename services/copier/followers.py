"""The copier group's followers: config, one adapter per follower, cached account figures."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from decimal import Decimal

import msgspec

from shared.config import (
    CopytradeConfig,
    Credentials,
    FollowerConfig,
    SecretSource,
    SignalsConfig,
    SubscriptionConfig,
)
from shared.control import Control
from shared.exchange.context import AdapterContext
from shared.exchange.factory import build_account
from shared.exchange.port import ExchangeAccount, OrderAck
from shared.exchange.registry import venue
from shared.messages import (
    AnySignal,
    FollowerSnapshot,
    FollowerState,
    MarketRules,
    SizingSpec,
    TradeSignal,
    shard_of,
)
from shared.signing import SignalVerifier

Lineage = tuple[str, int]  # (consumer, delivery sequence) of the message a copy ran under


@dataclass
class _Figures:
    equity: Decimal
    cash: Decimal
    positions: dict[str, Decimal]
    fetched_at: float


class Follower:
    """One follower: its config, its own exchange client, its last known account figures."""

    def __init__(
        self,
        config: FollowerConfig,
        account: ExchangeAccount,
        credentials: Credentials | None,
        subscriptions: list[SubscriptionConfig] | None = None,
    ) -> None:
        self.config = config
        # master id -> subscription; set by the book from the config (default: the only master)
        self.subscriptions = {s.master: s for s in subscriptions or ()}
        self.account = account
        self.credentials = credentials
        self._figures: _Figures | None = None
        self.holdings: dict[str, Decimal] = {}  # ledger key -> copied holding, as last written
        self._lineage: Lineage | None = None
        self._lock = asyncio.Lock()
        self._changes = 0  # fills applied and figures dropped: a refresh read before one is stale

    @property
    def id(self) -> str:
        return self.config.id

    def venue_symbol(self, symbol: str) -> str:
        return self.config.symbols.get(symbol, symbol)

    def copies(self, master_id: str) -> bool:
        return master_id in self.subscriptions

    def sizing_for(self, master_id: str) -> SizingSpec:
        """The subscription's sizing, else the follower's own."""
        subscription = self.subscriptions.get(master_id)
        if subscription is None or subscription.sizing is None:
            return self.config.sizing
        return subscription.sizing

    def configured_state(self) -> FollowerState:
        return self.config.state if self.config.enabled else "paused"

    async def snapshot(
        self,
        signal: TradeSignal,
        rules: MarketRules | None,
        ttl_s: float,
        *,
        state: FollowerState,
        max_signal_age_s: float,
    ) -> FollowerSnapshot:
        """Account figures for sizing; re-read from the venue when older than ttl_s."""
        symbol = self.venue_symbol(signal.symbol)
        async with self._lock:
            figures = self._figures
            if figures is None or time.monotonic() - figures.fetched_at > ttl_s:
                snap = await self.account.snapshot()
                figures = _Figures(snap.equity, snap.cash, {}, time.monotonic())
                self._figures = figures
            if symbol not in figures.positions and rules is not None:
                figures.positions[symbol] = await self.account.position(symbol)
            # the venue's price, only for a slippage guard that skips (one call more); a guard
            # by limit order leaves the bound to the venue
            risk = self.config.risk
            guarded = (
                risk.max_price_deviation_pct is not None
                and risk.slippage_action == "skip"
                and rules is not None
            )
            price = await self.account.price(symbol) if guarded else None
        return FollowerSnapshot(
            follower_id=self.id,
            equity=figures.equity,
            cash=figures.cash,
            position=figures.positions.get(symbol, Decimal(0)),
            rules=rules,
            sizing=self.sizing_for(signal.master_id),
            risk=self.config.risk,
            state=state,
            price=price,
            max_signal_age_s=self.config.risk.max_signal_age_s or max_signal_age_s,
        )

    def figures_age(self) -> float | None:
        """Seconds since the figures were read from the venue; None when there are none."""
        figures = self._figures
        return None if figures is None else time.monotonic() - figures.fetched_at

    async def refresh(self) -> None:
        """Read equity, cash and every tracked position again, off the copy path. Read outside
        the lock (a copy is never held up by it); kept only if no fill landed meanwhile."""
        changes = self._changes
        symbols = list(self._figures.positions) if self._figures is not None else []
        snap = await self.account.snapshot()
        positions = {symbol: await self.account.position(symbol) for symbol in symbols}
        async with self._lock:
            if self._changes == changes:
                self._figures = _Figures(snap.equity, snap.cash, positions, time.monotonic())

    def resume(self, lineage: Lineage) -> None:
        """Keep the cached figures only if this replica ran the follower's previous copy.

        Every delivery of a consumer advances its sequence, so (consumer, seq - 1) means no other
        replica took a message for this follower in between; otherwise another replica may have
        traded the account (a shard that moved, a redelivery) and the figures are read again.
        """
        if self._lineage != (lineage[0], lineage[1] - 1):
            self.forget_figures()
        self._lineage = lineage

    def forget_figures(self) -> None:
        """The account changed in a way this replica did not see (an order found on recovery)."""
        self._figures = None
        self.holdings = {}
        self._changes += 1

    def apply_fill(self, symbol: str, side: str, ack: OrderAck) -> None:
        """Update cached cash and position from a fill instead of re-reading the venue."""
        self._changes += 1
        figures = self._figures
        if ack.status == "expired":
            return  # ended having filled nothing: the account is as it was
        if figures is None or ack.filled_base is None or ack.avg_price is None:
            self._figures = None  # unknown effect: read again next time
            return
        sign = 1 if side == "buy" else -1
        figures.positions[symbol] = figures.positions.get(symbol, Decimal(0)) + sign * ack.filled_base
        figures.cash -= sign * ack.filled_base * ack.avg_price


class FollowerBook:
    """The followers of one copier group, built from config; adapters are made once each."""

    def __init__(self, group: str, secrets: SecretSource, ctx: AdapterContext) -> None:
        self.group = group
        self._secrets = secrets
        self._ctx = ctx
        self._followers: dict[str, Follower] = {}
        self._retired: list[Follower] = []
        self._rules: dict[str, MarketRules | None] = {}
        self._shards: tuple[int, list[list[Follower]]] | None = None  # (count, members per shard)
        self.min_notional = Decimal("1.00")
        self.masters: set[str] = set()  # the configured masters: signals of others are refused
        self.generation = 0  # counts configs applied
        self.master_silence_s = 300.0
        self.signals = SignalsConfig(require_signature=False)
        self.verifier = SignalVerifier([])

    def apply(self, config: CopytradeConfig) -> list[str]:
        """Adopt a new config; return the ids of removed followers.

        Raises ConfigError, leaving the book unchanged, when a follower lacks credentials.
        Clients replaced or removed are retired and closed later (`close_retired`), so copies
        in flight finish on the client they started with.
        """
        verifier = self.verifier  # built first: a bad key raises before anything changes
        if config.signals.public_keys != self.signals.public_keys:
            verifier = SignalVerifier(config.signals.public_keys)
        built: dict[str, Follower] = {}
        for fconfig in config.followers_of(self.group):
            creds = self._secrets.credentials(fconfig, "USER")
            if venue(fconfig.exchange).paper_switch:  # <EXCHANGE>_USER_<NAME>_PAPER overrides
                fconfig = msgspec.structs.replace(fconfig, paper=self._secrets.alpaca_paper(fconfig))
            current = self._followers.get(fconfig.id)
            subscriptions = config.subscriptions_of(fconfig)
            if current is not None and _same_account(current, fconfig, creds):
                current.config = fconfig  # sizing, state, symbols: the client stays
                current.subscriptions = {s.master: s for s in subscriptions}
                built[fconfig.id] = current
            else:
                built[fconfig.id] = Follower(
                    fconfig, build_account(fconfig, creds, self._ctx), creds, subscriptions
                )
        self._retired += [f for fid, f in self._followers.items() if built.get(fid) is not f]
        removed = [fid for fid in self._followers if fid not in built]
        self._followers = built
        self._shards = None
        self.min_notional = config.min_notional
        self.masters = {m.id for m in config.masters}
        self.generation += 1
        self.master_silence_s = config.master_silence_s
        self.verifier = verifier
        self.signals = config.signals
        return removed

    async def close_retired(self) -> None:
        retired, self._retired = self._retired, []
        for follower in retired:
            await follower.account.close()

    async def close(self) -> None:
        self._retired += list(self._followers.values())
        self._followers = {}
        await self.close_retired()
        await self._ctx.close()  # shared per-venue sessions and markets

    async def connect_all(self, *, lazy: bool = False) -> list[str]:
        """Connect every follower's client (markets, session) ahead of the first signal;
        return the ids that failed (they are retried on use and their copies fail alone).

        lazy: connect one follower per venue endpoint only (the shared markets and session);
        the others connect when their replica takes their shards (`connect`), or on first use.
        For groups spread over replicas, where each replica serves only its shards' followers.
        """
        followers = list(self._followers.values())
        if lazy:
            endpoints = {
                (f.config.exchange, f.config.base_url, f.config.paper): f for f in reversed(followers)
            }
            followers = list(endpoints.values())
        return await self.connect(followers)

    @staticmethod
    async def connect(followers: list[Follower]) -> list[str]:
        """Connect these followers' clients; the ids that failed."""
        results = await asyncio.gather(*(f.account.connect() for f in followers), return_exceptions=True)
        return [f.id for f, r in zip(followers, results, strict=True) if isinstance(r, BaseException)]

    def signature_problem(self, signal: AnySignal) -> tuple[str, str] | None:
        """Why the signal's signature is not acceptable (reason code, text), or None."""
        if not self.signals.require_signature:
            return None
        problem = self.verifier.problem(signal)
        if problem is None:
            return None
        return problem, f"signal {signal.signal_id}: {problem.replace('_', ' ')}"

    def secret_values(self) -> list[str]:
        return [v for f in self._followers.values() if f.credentials for v in f.credentials.values()]

    def all(self) -> list[Follower]:
        return list(self._followers.values())

    def subscribers(self, master_id: str) -> list[Follower]:
        """The followers that copy this master."""
        return [f for f in self._followers.values() if f.copies(master_id)]

    def in_shard(self, shard: int, shards: int) -> list[Follower]:
        """The followers of one shard (`shard_of`), computed once per config and shard count."""
        if self._shards is None or self._shards[0] != shards:
            members: list[list[Follower]] = [[] for _ in range(shards)]
            for follower in self._followers.values():
                members[shard_of(follower.id, shards)].append(follower)
            self._shards = (shards, members)
        return list(self._shards[1][shard]) if shard < shards else []

    def state_counts(self, control: Control | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in self._followers.values():
            state = f.configured_state()
            state = control.state_of(f.id, state) if control else state
            counts[state] = counts.get(state, 0) + 1
        return counts

    async def rules(self, follower: Follower, symbol: str) -> MarketRules | None:
        """Market rules, loaded once per symbol for the whole group (shared by followers)."""
        venue_symbol = follower.venue_symbol(symbol)
        if venue_symbol not in self._rules:
            self._rules[venue_symbol] = await follower.account.market_rules(venue_symbol)
        return self._rules[venue_symbol]


def _same_account(old: Follower, new: FollowerConfig, credentials: Credentials | None) -> bool:
    keys = ("exchange", "credentials", "base_url", "paper")
    same_config = all(getattr(old.config, k) == getattr(new, k) for k in keys)
    return same_config and old.credentials == credentials
