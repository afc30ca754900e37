"""Carrying out a link's written intent, whoever wrote it (this attempt, or one that crashed):

placing    look the order up by its id; place it only if the venue knows none
replacing  the new order found already (a venue that replaces in one request did it): done;
           else cancel the previous order and confirm, then place the new one for what is left

Never two live follower orders for one master order: nothing is placed before the cancel of the
previous order is confirmed."""

from __future__ import annotations

import logging
import time

import msgspec

from services.copier.followers import Follower
from services.copier.orders.links import Link
from services.copier.orders.room import LinkBusy, Room
from shared.errors import ExchangeError
from shared.exchange.port import NotNative, OrderAck
from shared.messages import Skip

log = logging.getLogger("copytrade.mirroring")


async def settle(
    room: Room,
    follower: Follower,
    key: str,
    link: Link,
    revision: int,
    *,
    may_place: bool,
    fresh: bool = False,
) -> tuple[Link, int]:
    """The link with its intent carried out (live, ended or unlinked) and written.

    fresh: this attempt wrote the intent just now (no one else can be at the venue with it)."""
    cid = link.client_order_id
    assert cid is not None
    if link.state == "replacing":
        link = await _cancel_previous(room, follower, link)
    found = await room.find(follower, link, cid)
    if found is not None:
        return await _write(room, key, _after(await room.apply(follower, link, found), found), revision)
    if not fresh and time.time() - link.at < room.lease_s:
        raise LinkBusy(f"{key}: {link.state} since {time.time() - link.at:.1f}s by {link.owner}")
    if not may_place or link.order_size <= 0:
        return await _write(room, key, msgspec.structs.replace(link, state="ended"), revision)
    return await _place(room, follower, key, link, revision)


async def _cancel_previous(room: Room, follower: Follower, link: Link) -> Link:
    """The previous order cancelled (confirmed) and its fill applied; unless the replacement is
    there already (the venue replaced it), when the previous one ended by the venue's hand."""
    assert link.previous is not None
    assert link.client_order_id is not None
    if link.previous in link.applied:
        return link
    if await room.find(follower, link, link.client_order_id) is not None:
        return await room.apply(follower, link, await room.find(follower, link, link.previous))
    return await room.apply(follower, link, await room.cancel(follower, link, link.previous))


async def _place(room: Room, follower: Follower, key: str, link: Link, revision: int) -> tuple[Link, int]:
    assert link.client_order_id is not None
    verdict = room.admit(follower, link.side, link.order_size, link.price or link.trigger_price)
    if isinstance(verdict, Skip) or verdict == "dry_run":
        skip = (
            verdict
            if isinstance(verdict, Skip)
            else Skip(follower_id=follower.id, reason_code="dry_run", reason="Dry run: no linked order")
        )
        return await _write(room, key, _unplaced(link, skip.reason_code, skip.reason), revision)
    command = room.resting(follower, link, link.client_order_id, link.order_size)
    try:
        ack = await room.place(follower, command)
    except ExchangeError as exc:  # recorded by the caller; the sweep looks the id up once
        failed = _unplaced(
            link, exc.reason_code, f"{type(exc).__name__}: {exc}", failed=not isinstance(exc, NotNative)
        )
        return await _write(room, key, failed, revision)
    log.info(
        "event=linked_order_placed follower=%s client_order_id=%s status=%s",
        follower.id,
        ack.client_order_id,
        ack.status,
    )
    return await _write(room, key, _after(await room.apply(follower, link, ack), ack), revision)


def _unplaced(link: Link, code: str, reason: str, *, failed: bool = False) -> Link:
    """No order placed: unlinked (its master's fills copied as fills) while nothing of this
    master order filled for the follower, else ended (never copied twice)."""
    state = "unlinked" if link.filled <= 0 else "ended"
    return msgspec.structs.replace(link, state=state, reason_code=code, reason=reason[:500], failed=failed)


def _after(link: Link, ack: OrderAck) -> Link:
    state = "live" if ack.status == "submitted" else "ended"
    return msgspec.structs.replace(link, state=state, previous=None)


async def _write(room: Room, key: str, link: Link, revision: int) -> tuple[Link, int]:
    return link, await room.links.update(key, link, revision)
