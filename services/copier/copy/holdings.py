"""Followers' copied holdings (the ledger) on the copy path: read once per replica and kept
from the follower's own fills, written exactly once per fill (keyed by client order id), and
clipped to the real balance when the follower sold by hand."""

from __future__ import annotations

import logging
from decimal import Decimal

from services.copier.followers import Follower
from shared.exchange.port import OrderAck
from shared.ledger import Entry, Ledger, holding_key
from shared.messages import Side

log = logging.getLogger("copytrade.copier")


class Holdings:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    async def of(self, follower: Follower, master_id: str, symbol: str, *, fresh: bool = False) -> Decimal:
        """The follower's copied holding for this master and (canonical) symbol; `fresh` reads
        the ledger rather than this replica's copy of it."""
        key = holding_key(follower.id, master_id, symbol)
        cached = None if fresh else follower.holdings.get(key)
        if cached is None:
            cached = (await self._ledger.read(key)).amount
            follower.holdings[key] = cached
        return cached

    async def entry(self, follower: Follower, master_id: str, symbol: str) -> Entry:
        return await self._ledger.read(holding_key(follower.id, master_id, symbol))

    async def clip(self, follower: Follower, master_id: str, symbol: str, real_balance: Decimal) -> Decimal:
        """The holding, lowered to the real balance when the follower holds less."""
        holding = await self.of(follower, master_id, symbol)
        if holding <= real_balance:
            return holding
        key = holding_key(follower.id, master_id, symbol)
        await self._ledger.clip(key, real_balance)
        follower.holdings[key] = (await self._ledger.read(key)).amount
        return follower.holdings[key]

    async def record(
        self, follower: Follower, master_id: str, symbol: str, side: Side, ack: OrderAck
    ) -> None:
        """Apply a copy's fill once (by its client order id). An order still working has no
        final fill yet: reconciliation brings the holding to the venue's figures later."""
        key = holding_key(follower.id, master_id, symbol)
        if ack.status == "submitted" or not ack.filled_base:
            if ack.status == "submitted":
                log.info(
                    "event=holding_pending follower=%s client_order_id=%s", follower.id, ack.client_order_id
                )
            return
        delta = ack.filled_base if side == "buy" else -ack.filled_base
        _, after = await self._ledger.apply(key, ack.client_order_id, delta)
        follower.holdings[key] = after
