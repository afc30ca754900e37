"""Fixes to nats.py bugs, installed explicitly at start-up by every process (`install()`).

Pinned by tests/test_bus.py: remove a fix only when that test passes without it.
"""

from __future__ import annotations

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from nats.js.errors import APIError

_MARK = "copytrade_fix"


def install() -> None:
    """Install every fix (idempotent)."""
    _report_publish_async_errors()
    _fail_requests_in_flight_on_disconnect()


def installed() -> bool:
    return all(
        getattr(fixed, _MARK, False)
        for fixed in (JetStreamContext._handle_async_reply, Client._attempt_reconnect)
    )


def require() -> None:
    """Fail fast where correctness depends on the fixes (the claim path)."""
    if not installed():
        raise RuntimeError("nats_fixes.install() was not called: claims would hang on a conflict")


def _report_publish_async_errors() -> None:
    """nats.py #985 (fix proposed in PR #994): an error JetStream returns for a `publish_async`
    (e.g. "wrong last sequence" for an existing claim) escapes the reply handler and the future
    never resolves. Catch what escapes and put it on the caller's future."""
    if getattr(JetStreamContext._handle_async_reply, _MARK, False):
        return
    original = JetStreamContext._handle_async_reply

    async def handle(self: JetStreamContext, msg: Msg) -> None:
        try:
            await original(self, msg)
        except APIError as error:
            token = msg.subject[len(self._nc._inbox_prefix) + 22 + 2 :]  # as nats.py computes it
            future = self._publish_async_futures.get(token)
            if future is not None and not future.done():
                future.set_exception(error)

    setattr(handle, _MARK, True)
    JetStreamContext._handle_async_reply = handle  # type: ignore[method-assign]


def _fail_requests_in_flight_on_disconnect() -> None:
    """nats.py leaves a request in flight when its connection drops waiting out its whole
    timeout, though its reply will most likely never come (it was sent to, or by way of, the
    server that is gone; nats.c #391 asks for the same behaviour). A copier whose node died sat
    10 s on a venue read that way. Fail them as timed out (the outcome is unknown, as after any
    timeout: callers look up or retry) when the client starts reconnecting."""
    if getattr(Client._attempt_reconnect, _MARK, False):
        return
    original = Client._attempt_reconnect

    async def attempt_reconnect(self: Client) -> None:
        for future in list(self._resp_map.values()):
            if not future.done():
                future.set_exception(nats.errors.TimeoutError())
        await original(self)

    setattr(attempt_reconnect, _MARK, True)
    Client._attempt_reconnect = attempt_reconnect  # type: ignore[method-assign]
