"""What every part of mirroring shares: the links, the outcomes, the policy, the ledger, and the
venue steps on a follower's linked orders (place, cancel and confirm, look up, apply a fill)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

import msgspec

from services.copier.copy.holdings import Holdings
from services.copier.copy.policy import Policy, Verdict
from services.copier.followers import Follower, FollowerBook
from services.copier.orders.links import ZERO, KeyLocks, Link, LinkStore, event_id
from services.copier.orders.metrics import MirrorMetrics
from services.copier.orders.outcomes import Origin, Outcomes
from shared.config import CopierSettings, OrdersConfig
from shared.errors import CopytradeError, TemporaryError
from shared.exchange.placing import place_idempotently
from shared.exchange.port import OrderAck, OrderCommand, Trigger
from shared.messages import MarketRules, Side, SizedOrder

log = logging.getLogger("copytrade.mirroring")
T = TypeVar("T")
ATTEMPTS = 4
BACKOFF_S = 0.2
_TRIGGERS: dict[str, Trigger] = {
    "stop_loss": "stop_loss",
    "stop_loss_limit": "stop_loss",
    "take_profit": "take_profit",
    "take_profit_limit": "take_profit",
}


class LinkBusy(CopytradeError):
    """Another attempt holds this link's intent and may be at the venue now: try again later."""

    reason_code = "link_busy"


@dataclass
class Room:
    group: str
    instance: str
    book: FollowerBook
    policy: Policy
    holdings: Holdings
    links: LinkStore
    outcomes: Outcomes
    settings: CopierSettings
    locks: KeyLocks
    metrics: MirrorMetrics

    @property
    def lease_s(self) -> float:
        """An intent older than this was left by an attempt that is gone: it is resumed."""
        return self.settings.order_timeout_s * 4

    def orders_config(self, follower: Follower, master_id: str) -> OrdersConfig | None:
        """The follower's order mirroring for this master, if it mirrors orders now."""
        subscription = follower.subscriptions.get(master_id)
        if subscription is None or subscription.orders.mode != "orders":
            return None
        return subscription.orders if self.policy.copies(follower, master_id) else None

    async def rules(self, follower: Follower, symbol: str) -> MarketRules | None:
        return await self.book.rules(follower, symbol)

    def admit(
        self,
        follower: Follower,
        side: Side,
        size: Decimal,
        price: Decimal | None,
        limit: Decimal | None = None,
    ) -> Verdict:
        """The policy's verdict on a linked order (or a chase, an unwind) of this size."""
        notional = size * (price or ZERO)
        order = SizedOrder(
            follower_id=follower.id,
            side=side,
            size=size,
            size_type="base",
            notional=notional,
            scale=Decimal(1),
            limit_price=limit,
        )
        return self.policy.admit(follower, order)

    def resting(self, follower: Follower, link: Link, client_order_id: str, size: Decimal) -> OrderCommand:
        trigger = _TRIGGERS.get(link.kind)
        limit = None if link.kind in ("stop_loss", "take_profit") else link.price
        return OrderCommand(
            client_order_id=client_order_id,
            symbol=follower.venue_symbol(link.symbol),
            side=link.side,
            size=size,
            size_type="base",
            reference_price=link.price or link.trigger_price or ZERO,
            limit_price=limit,
            time_in_force="gtc",
            trigger=trigger,
            trigger_price=link.trigger_price if trigger is not None else None,
        )

    async def place(self, follower: Follower, command: OrderCommand) -> OrderAck:
        return await place_idempotently(follower.account, command, timeout_s=self.settings.order_timeout_s)

    async def find(self, follower: Follower, link: Link, client_order_id: str) -> OrderAck | None:
        symbol = follower.venue_symbol(link.symbol)
        return await self._retrying(lambda: follower.account.find_order(client_order_id, symbol))

    async def cancel(self, follower: Follower, link: Link, client_order_id: str) -> OrderAck | None:
        """Cancel and confirm: the order as it ended (None: the venue knows none); an order
        still open afterwards raises (nothing is placed before a cancel is confirmed)."""
        symbol = follower.venue_symbol(link.symbol)
        ack = await self._retrying(lambda: follower.account.cancel_order(client_order_id, symbol))
        if ack is not None and ack.status == "submitted":
            raise TemporaryError(f"cancel of {client_order_id} not confirmed: still open")
        # when the venue confirmed the cancel: the outcome's acked_at
        return ack if ack is None else msgspec.structs.replace(ack, accepted_at=time.time())

    async def apply(self, follower: Follower, link: Link, ack: OrderAck | None) -> Link:
        """An ended follower order's fill into the ledger, once (by its client order id): only
        what was not credited while it was open."""
        if ack is None or ack.status == "submitted" or ack.client_order_id in link.applied:
            return link
        link = await self._carry_credit(follower, link)
        cid, filled = ack.client_order_id, ack.filled_base or ZERO
        before = link.credited.get(cid, ZERO)
        if filled > before:
            await self._record(follower, link, ack if before == 0 else _increment(cid, filled, before))
        credited = {k: v for k, v in link.credited.items() if k != cid}
        return msgspec.structs.replace(
            link, applied={**link.applied, cid: max(filled, before)}, credited=credited
        )

    async def credit(
        self, follower: Follower, key: str, link: Link, revision: int, ack: OrderAck
    ) -> tuple[Link, int, Decimal]:
        """An open follower order's fill so far into the ledger: only what is new since its last
        credit, once, recorded (`partially_filled`). The level is written as an intent first,
        so a crash between the ledger and the link is carried out again (the same fill id),
        never counted twice. The link as written, its revision and the amount credited now."""
        if link.crediting is not None:  # left by an attempt gone
            link, revision, _ = await self._settle_credit(follower, key, link, revision)
        cid, level = ack.client_order_id, ack.filled_base or ZERO
        if ack.status != "submitted" or cid in link.applied or level <= link.credited.get(cid, ZERO):
            return link, revision, ZERO
        intent = msgspec.structs.replace(link, crediting=(cid, level))
        revision = await self.links.update(key, intent, revision)
        return await self._settle_credit(follower, key, intent, revision)

    async def _settle_credit(
        self, follower: Follower, key: str, intent: Link, revision: int
    ) -> tuple[Link, int, Decimal]:
        """A written credit intent carried out, recorded, then the link written."""
        assert intent.crediting is not None
        cid, level = intent.crediting
        amount = ZERO if cid in intent.applied else level - intent.credited.get(cid, ZERO)
        link = await self._carry_credit(follower, intent)
        if amount > 0:
            await self.outcomes.record(
                link,
                Origin(event_id(key, f"partial:{cid}@{level.normalize()}")),
                "filled",
                "partially_filled",
                f"Linked {link.kind} order {cid}, still open, filled {amount} more ({level} in "
                "all): applied to the copied holding",
                filled=amount,
            )
        return link, await self.links.update(key, link, revision), max(amount, ZERO)

    async def _carry_credit(self, follower: Follower, link: Link) -> Link:
        """A written credit intent carried out: the increment up to its level applied once."""
        if link.crediting is None:
            return link
        cid, level = link.crediting
        if cid in link.applied:  # the order ended and was applied whole since
            return msgspec.structs.replace(link, crediting=None)
        before = link.credited.get(cid, ZERO)
        if level > before:
            await self._record(follower, link, _increment(cid, level, before))
        credited = {**link.credited, cid: max(level, before)}
        return msgspec.structs.replace(link, credited=credited, crediting=None)

    async def _record(self, follower: Follower, link: Link, ack: OrderAck) -> None:
        if ack.filled_base:
            await self.holdings.record(follower, link.master_id, link.symbol, link.side, ack)
            follower.forget_figures()  # its cash and balance moved

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """A venue call retried on temporary errors (a cancel or a lookup is safe to repeat)."""
        for attempt in range(ATTEMPTS):
            try:
                async with asyncio.timeout(self.settings.order_timeout_s):
                    return await call()
            except (TemporaryError, TimeoutError) as exc:
                if attempt + 1 == ATTEMPTS:
                    raise TemporaryError(f"venue call failed: {type(exc).__name__}") from exc
                await asyncio.sleep(BACKOFF_S * 2**attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")


def _increment(client_order_id: str, level: Decimal, before: Decimal) -> OrderAck:
    """A linked order's fill from `before` up to `level`, as a fill of its own for the ledger
    (which applies a fill once by its id): `<client order id>@<level>`."""
    return OrderAck(
        exchange_order_id="",
        client_order_id=f"{client_order_id}@{level.normalize()}",
        status="filled",
        filled_base=level - before,
    )
