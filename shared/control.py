"""Operator controls kept in NATS KV, seen by every copier replica within milliseconds:
the global kill switch and per-follower state overrides (pause, resume, close-only, dry-run)."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Literal

import msgspec
from msgspec import Struct
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from shared import bus
from shared.messages import FollowerState

log = logging.getLogger("copytrade.control")

CONTROL_BUCKET = bus.CONTROL_BUCKET  # the name lives in shared.bus; kept here for the CLI
KILL_KEY = "kill"
STATE_PREFIX = "state."
UNSUB_PREFIX = "unsub."


class Override(Struct, frozen=True, kw_only=True):
    state: FollowerState
    reason: str
    at: float


class Unsubscribed(Struct, frozen=True, kw_only=True):
    """An operator ended a follower's subscription to a master (`copytrade unsubscribe`)."""

    action: Literal["keep", "close"] | None = None  # None: the subscription's on_unsubscribe
    reason: str = ""
    at: float = 0.0


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Override)
_unsub_decoder = msgspec.json.Decoder(Unsubscribed)


def unsubscribed_key(follower_id: str, master_id: str) -> str:
    return f"{UNSUB_PREFIX}{follower_id}.{master_id}"


async def set_unsubscribed(
    kv: KeyValue, follower_id: str, master_id: str, action: Literal["keep", "close"] | None, reason: str
) -> None:
    await kv.put(
        unsubscribed_key(follower_id, master_id),
        _encoder.encode(Unsubscribed(action=action, reason=reason, at=time.time())),
    )


async def control_bucket(js: JetStreamContext, replicas: int | None = None) -> KeyValue:
    """The control bucket, created or brought to `replicas` like every bucket (shared.bus)."""
    return await bus.bucket(js, bus.CONTROL_BUCKET, replicas)


async def set_kill(kv: KeyValue, on: bool) -> None:
    await kv.put(KILL_KEY, b"on" if on else b"off")


async def set_state(kv: KeyValue, follower_id: str, state: FollowerState | None, reason: str) -> None:
    """Override a follower's configured state; None returns it to its configured state."""
    key = STATE_PREFIX + follower_id
    if state is None:
        with contextlib.suppress(KeyNotFoundError):
            await kv.delete(key)
        return
    await kv.put(key, _encoder.encode(Override(state=state, reason=reason, at=time.time())))


STRICTNESS: dict[FollowerState, int] = {"active": 0, "dry_run": 0, "close_only": 1, "paused": 2}


class Control:
    """The current overrides, kept up to date from the bucket by `watch`."""

    def __init__(self, kv: KeyValue | None = None) -> None:
        self.kv = kv
        self.killed = False
        self.overrides: dict[str, Override] = {}
        self.unsubscribed: dict[tuple[str, str], Unsubscribed] = {}  # (follower, master)

    async def restrict(self, follower_id: str, state: FollowerState, reason: str) -> bool:
        """Move a follower to a stricter state (a risk trip); False if it already is there."""
        current = self.overrides.get(follower_id)
        if current is not None and STRICTNESS[current.state] >= STRICTNESS[state]:
            return False
        self.overrides[follower_id] = Override(state=state, reason=reason, at=time.time())
        if self.kv is not None:
            await set_state(self.kv, follower_id, state, reason)
        return True

    def state_of(self, follower_id: str, configured: FollowerState) -> FollowerState:
        override = self.overrides.get(follower_id)
        return configured if override is None else override.state

    def apply(self, key: str, value: bytes | None) -> None:
        try:
            self._apply(key, value)
        except msgspec.DecodeError as exc:  # a bad value written by hand: the watch goes on
            log.error("event=control_value_invalid key=%s error=%s", key, exc)

    def _apply(self, key: str, value: bytes | None) -> None:
        if key == KILL_KEY:
            self.killed = value == b"on"
            log.warning("event=kill_switch state=%s", "on" if self.killed else "off")
        elif key.startswith(STATE_PREFIX):
            follower_id = key[len(STATE_PREFIX) :]
            if value:
                self.overrides[follower_id] = _decoder.decode(value)
            else:
                self.overrides.pop(follower_id, None)
        elif key.startswith(UNSUB_PREFIX):
            follower_id, _, master_id = key[len(UNSUB_PREFIX) :].partition(".")
            if value:
                self.unsubscribed[(follower_id, master_id)] = _unsub_decoder.decode(value)
            else:
                self.unsubscribed.pop((follower_id, master_id), None)

    async def watch(self) -> None:
        assert self.kv is not None
        watcher = await self.kv.watchall()
        async for entry in watcher:
            if entry is None:  # the end of the current values; updates follow
                continue
            deleted = entry.operation in ("DEL", "PURGE")
            self.apply(entry.key, None if deleted else entry.value)
