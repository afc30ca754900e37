"""Retrying JetStream writes through a leader change or a reconnect, in one place."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
from nats.js.errors import APIError, ServerError, ServiceUnavailableError

log = logging.getLogger("copytrade.bus")
T = TypeVar("T")
# what a leader election, a node loss or a reconnect looks like to a client: worth another try
TRANSIENT: tuple[type[BaseException], ...] = (TimeoutError, nats.errors.Error)


def transient(exc: BaseException) -> bool:
    """A JetStream API error is an answer (conflict, not found), except "unavailable" (503),
    which a leader election returns; timeouts and connection errors are outages."""
    if isinstance(exc, APIError):
        return isinstance(exc, ServiceUnavailableError | ServerError)
    return isinstance(exc, TRANSIENT)


async def retry_forever(
    what: str, action: Callable[[], Awaitable[T]], *, base_s: float = 0.1, cap_s: float = 5.0
) -> T:
    """Run action until it succeeds, backing off: used where giving up would lose money state."""
    return await retry(what, action, attempts=None, base_s=base_s, cap_s=cap_s)


async def retry(
    what: str, action: Callable[[], Awaitable[T]], *, attempts: int | None = 8,
    base_s: float = 0.1, cap_s: float = 2.0,
) -> T:
    """Run action, retrying transient NATS errors with backoff; re-raise after `attempts`
    (None: never give up). Anything not transient (a conflict, a bad request) raises at once."""
    delay, attempt = base_s, 0
    while True:
        try:
            return await action()
        except TRANSIENT as exc:
            if not transient(exc):
                raise  # an answer, not an outage: a claim that exists, a key not found
            attempt += 1
            if attempts is not None and attempt >= attempts:
                raise
            log.warning("event=retry what=%s attempt=%d error=%s", what, attempt, type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(cap_s, delay * 2)
