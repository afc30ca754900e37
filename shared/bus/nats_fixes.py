"""Fixes to nats.py bugs, installed explicitly at start-up by every process (`install()`).

Pinned by tests/test_bus.py: remove a fix only when that test passes without it.
"""

from __future__ import annotations

from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from nats.js.errors import APIError

_MARK = "copytrade_fix"


def install() -> None:
    """Install every fix (idempotent)."""
    _report_publish_async_errors()


def installed() -> bool:
    return bool(getattr(JetStreamContext._handle_async_reply, _MARK, False))


def require() -> None:
    """Fail fast where correctness depends on the fixes (the claim path)."""
    if not installed():
        raise RuntimeError("nats_fixes.install() was not called: claims would hang on a conflict")


def _report_publish_async_errors() -> None:
    """nats.py #985 (fix proposed in PR #994): an error JetStream returns for a `publish_async`
    (e.g. "wrong last sequence" for an existing claim) escapes the reply handler and the future
    never resolves. Catch what escapes and put it on the caller's future."""
    if installed():
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
