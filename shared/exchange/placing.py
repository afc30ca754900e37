"""Placing an order exactly once through any adapter: the one place retries live.

A temporary failure (timeout, 5xx, rate limit) may hide an accepted order, so every retry first
looks the order up by its client order id; only an order the venue does not know is re-sent.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import cast

from shared.errors import TemporaryError
from shared.exchange.port import ExchangeAccount, OrderAck, OrderCommand, ReadsFillLater

log = logging.getLogger("copytrade.placing")


def fill_reader(account: ExchangeAccount) -> ReadsFillLater | None:
    """The account if it reads fills later (`isinstance(account, ReadsFillLater)`, answered once
    per adapter class: a runtime protocol check inspects the class's members on every call,
    microseconds twice per order on the copy path), else None."""
    return cast(ReadsFillLater, account) if _reads_fill_later(type(account)) else None


@functools.cache
def _reads_fill_later(kind: type) -> bool:
    return issubclass(kind, ReadsFillLater)


async def place_idempotently(
    account: ExchangeAccount,
    order: OrderCommand,
    *,
    timeout_s: float,
    attempts: int = 4,
    backoff_s: float = 0.2,
    send_only: bool = False,
) -> OrderAck:
    """Place `order` or find it placed; raise the last error when attempts run out. With
    `send_only`, an account that reads fills later (`ReadsFillLater`) only sends it: its fill is
    read by `read_fill_of` once the fan-out's orders are all out."""
    later = fill_reader(account) if send_only else None
    send = account.place_order if later is None else later.send_order
    last: Exception = TemporaryError("no attempt made")
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            if attempt:  # only an order the venue says it does not know is sent again
                async with asyncio.timeout(timeout_s):
                    found = await account.find_order(order.client_order_id, order.symbol)
                if found is not None:
                    return found
            async with asyncio.timeout(timeout_s):  # no task per order, as wait_for makes
                return await send(order)
        except (TemporaryError, TimeoutError) as exc:
            last = exc if isinstance(exc, TemporaryError) else TemporaryError("order timed out")
            log.warning(
                "event=order_retry account=%s client_order_id=%s attempt=%d error=%s",
                account.account_id,
                order.client_order_id,
                attempt + 1,
                type(exc).__name__,
            )
    # the last attempt may itself have been accepted before it timed out: look once more
    found = await _final_lookup(account, order, timeout_s)
    if found is not None:
        return found
    raise last


async def _final_lookup(account: ExchangeAccount, order: OrderCommand, timeout_s: float) -> OrderAck | None:
    try:
        async with asyncio.timeout(timeout_s):
            return await account.find_order(order.client_order_id, order.symbol)
    except (TemporaryError, TimeoutError):
        return None  # still unknown: the claim stays, and a redelivery looks again


async def read_fill_of(
    account: ExchangeAccount, order: OrderCommand, sent: OrderAck, *, timeout_s: float
) -> OrderAck:
    """The fill of an order `place_idempotently(..., send_only=True)` sent: read back where the
    reply told none; looked up once more if the read times out; else the order as sent."""
    later = fill_reader(account)
    if later is None or sent.status != "submitted":
        return sent
    try:
        async with asyncio.timeout(timeout_s):
            return await later.read_fill(order, sent)
    except (TemporaryError, TimeoutError):
        found = await _final_lookup(account, order, timeout_s)
        return sent if found is None else found
