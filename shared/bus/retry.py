"""Retrying JetStream writes through a leader change or a reconnect, in one place.

What a node loss looks like to a client, measured on a three-node loopback cluster
(tests/test_cluster.py): requests to a stream whose leader died get "no responders" at once
until its replicas elect a new leader, about 4-5 s later (Raft's election timeout); requests in
flight at the moment of the loss are never answered. So: a short wait per attempt, retries
for longer than an election takes, and pipelined writes that stop being acknowledged are sent
again rather than waited on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import nats
from nats.js.api import PubAck
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, ServerError, ServiceUnavailableError

log = logging.getLogger("copytrade.bus")
T = TypeVar("T")
# what a leader election, a node loss or a reconnect looks like to a client: worth another try
TRANSIENT: tuple[type[BaseException], ...] = (TimeoutError, nats.errors.Error)
CLOSED = (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError)
WRITE_TIMEOUT_S = 2.0  # one attempt's wait for a JetStream reply; beyond it, presumed lost
OUTAGE_S = 20.0  # a write keeps trying this long: a lost leader is replaced within ~10 s


def transient(exc: BaseException) -> bool:
    """A JetStream API error is an answer (conflict, not found), except "unavailable" (503),
    which a leader election returns; timeouts and connection errors are outages."""
    if isinstance(exc, APIError):
        return isinstance(exc, ServiceUnavailableError | ServerError)
    if isinstance(exc, CLOSED):
        return False  # this client was closed (shutting down): no retry can succeed
    return isinstance(exc, TRANSIENT)


async def retry_forever(
    what: str, action: Callable[[], Awaitable[T]], *, base_s: float = 0.1, cap_s: float = 5.0
) -> T:
    """Run action until it succeeds, backing off: used where giving up would lose money state."""
    return await retry(what, action, within_s=None, base_s=base_s, cap_s=cap_s)


async def retry(
    what: str,
    action: Callable[[], Awaitable[T]],
    *,
    within_s: float | None = OUTAGE_S,
    attempts: int | None = None,
    attempt_s: float | None = WRITE_TIMEOUT_S,
    base_s: float = 0.05,
    cap_s: float = 0.5,
) -> T:
    """Run action, retrying transient NATS errors with a short backoff for `within_s` seconds
    (and at most `attempts` times, if given; None for both: never give up), then re-raise.
    An attempt unanswered after `attempt_s` counts as lost (a request to a node that just died,
    or to an asset without a leader yet, is never answered). Anything not transient (a
    conflict, a bad request) raises at once."""
    deadline = None if within_s is None else time.monotonic() + within_s
    delay, attempt = base_s, 0
    while True:
        try:
            async with asyncio.timeout(attempt_s):  # no task per attempt, as wait_for makes
                return await action()
        except TRANSIENT as exc:
            if not transient(exc):
                raise  # an answer, not an outage: a claim that exists, a key not found
            attempt += 1
            if (attempts is not None and attempt >= attempts) or (
                deadline is not None and time.monotonic() + delay > deadline
            ):
                log.error(
                    "event=retry_exhausted what=%s attempts=%d error=%s", what, attempt, type(exc).__name__
                )
                raise
            log.warning("event=retry what=%s attempt=%d error=%s", what, attempt, type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(cap_s, delay * 2)


@dataclass
class Sent:
    """A pipelined JetStream write (publish_async) carrying a Nats-Msg-Id: safe to send again."""

    subject: str
    data: bytes
    headers: dict[str, str]
    ack: asyncio.Future[PubAck]


async def send(js: JetStreamContext, subject: str, data: bytes, msg_id: str) -> Sent:
    """Publish without waiting for the ack; `confirm` waits for a batch of them."""
    headers = {"Nats-Msg-Id": msg_id}
    return Sent(subject, data, headers, await js.publish_async(subject, data, headers=headers))


async def confirm(js: JetStreamContext, sent: Sequence[Sent], *, within_s: float = OUTAGE_S) -> None:
    """Return once JetStream stored every write. Acks are awaited while they keep coming; the
    writes an outage refused, or whose acks stop coming for WRITE_TIMEOUT_S (lost with a node),
    are sent again one by one (JetStream drops a copy it already stored, by message id).
    Raise an error JetStream answered with, or the outage once `within_s` is spent."""
    waiting = {s.ack: s for s in sent}
    again: list[Sent] = []
    refused: list[BaseException] = []
    try:
        while waiting:
            done, _ = await asyncio.wait(
                waiting, timeout=WRITE_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:  # no ack for a while: the rest went down with a node
                again.extend(waiting.values())
                break
            for future in done:
                write = waiting.pop(future)
                error = None if future.cancelled() else future.exception()
                if error is not None and not transient(error):
                    refused.append(error)
                elif error is not None or future.cancelled():
                    again.append(write)
    finally:
        for future in waiting:  # never awaited now: nobody is left to retrieve their outcome
            future.cancel()
    if refused:
        raise refused[0]
    if again:
        log.warning("event=writes_resent count=%d subject=%s", len(again), again[0].subject)
        results = await asyncio.gather(*(_resend(js, w, within_s) for w in again), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]


async def _resend(js: JetStreamContext, write: Sent, within_s: float) -> PubAck:
    return await retry(
        f"resend {write.subject}",
        lambda: js.publish(write.subject, write.data, timeout=WRITE_TIMEOUT_S, headers=write.headers),
        within_s=within_s,
    )
