"""Operator tools over NATS: follower states, the kill switch, status and per-follower history."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import msgspec
import nats
from nats.aio.client import Client
from nats.js.api import DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue

from services.copier.reconcile import DRIFT_PREFIX, Drift
from shared import bus
from shared.config import CopytradeConfig, Settings
from shared.control import CONTROL_BUCKET, Control, control_bucket, set_kill, set_state
from shared.messages import CopyResult, FollowerState

STATE_COMMANDS: dict[str, FollowerState | None] = {
    "pause": "paused", "resume": None, "close-only": "close_only", "dry-run": "dry_run"}
_results = msgspec.json.Decoder(CopyResult)


@contextlib.asynccontextmanager
async def connected(settings: Settings) -> AsyncIterator[Client]:
    nc = await nats.connect(settings.nats_url, user=settings.nats_user,
                            password=bus.nats_password(settings), tls=bus.tls_context(settings),
                            connect_timeout=5)
    try:
        yield nc
    finally:
        await nc.close()


async def change_state(settings: Settings, command: str, follower_id: str, who: str) -> str:
    async with connected(settings) as nc:
        kv = await control_bucket(nc.jetstream())
        await set_state(kv, follower_id, STATE_COMMANDS[command], reason=f"{command} by {who}")
    state = STATE_COMMANDS[command] or "its configured state"
    return f"{follower_id}: {state} (every copier applies it within a second)"


async def kill(settings: Settings, on: bool) -> str:
    async with connected(settings) as nc:
        await set_kill(await control_bucket(nc.jetstream()), on)
    return "kill switch ON: no new orders" if on else "kill switch off: copying resumes"


async def status(settings: Settings, config: CopytradeConfig) -> str:
    """One line per follower: configured and effective state, its last outcome."""
    async with connected(settings) as nc:
        js = nc.jetstream()
        control = Control()
        with contextlib.suppress(NotFoundError):
            kv = await js.key_value(CONTROL_BUCKET)
            for key in await _keys(kv):
                entry = await kv.get(key)
                control.apply(key, entry.value)
        drifts = await _drifts(js)
        lines = [f"kill switch: {'ON' if control.killed else 'off'}",
                 f"{'follower':<20} {'exchange':<9} {'state':<11} {'last outcome':<34} "
                 f"{'age':>6}  drift"]
        for follower in config.followers:
            configured = follower.state if follower.enabled else "paused"
            state = control.state_of(follower.id, configured)
            last = await _last_result(js, follower.group or follower.exchange, follower.id)
            outcome = "-" if last is None else f"{last.outcome} {last.reason_code}"
            age = "-" if last is None else f"{time.time() - last.received_at:.0f}s"
            drift = drifts.get(follower.id)
            shown = "-" if drift is None else (
                f"{drift.symbol} holds {drift.actual}, expected {drift.expected:.8f} "
                f"({drift.ratio:.0%} off)")
            lines.append(f"{follower.id:<20} {follower.exchange:<9} {state:<11} {outcome:<34} "
                         f"{age:>6}  {shown}")
    return "\n".join(lines)


async def history(settings: Settings, follower_id: str, limit: int) -> list[CopyResult]:
    """The follower's most recent outcomes from the RESULTS stream, oldest first."""
    async with connected(settings) as nc:
        js = nc.jetstream()
        sub = await js.subscribe(f"copytrade.results.*.{follower_id}", ordered_consumer=True,
                                 deliver_policy=DeliverPolicy.ALL)
        found: list[CopyResult] = []
        with contextlib.suppress(nats.errors.TimeoutError):
            while True:
                msg = await sub.next_msg(timeout=1.0)
                found.append(_results.decode(msg.data))
                if msg.metadata.num_pending == 0:
                    break
        await sub.unsubscribe()
    return found[-limit:]


async def _drifts(js: JetStreamContext) -> dict[str, Drift]:
    """The last drift reconciliation recorded per follower (over the threshold)."""
    found: dict[str, Drift] = {}
    with contextlib.suppress(NotFoundError):
        kv = await js.key_value(CONTROL_BUCKET)
        for key in await _keys(kv):
            if key.startswith(DRIFT_PREFIX):
                entry = await kv.get(key)
                if entry.value:
                    drift = msgspec.json.decode(entry.value, type=Drift)
                    found[drift.follower_id] = drift
    return found


async def _keys(kv: KeyValue) -> list[str]:
    try:
        return list(await kv.keys())
    except NoKeysError:
        return []


async def _last_result(js: JetStreamContext, group: str, follower_id: str) -> CopyResult | None:
    try:
        msg = await js.get_last_msg(bus.RESULTS_STREAM, bus.result_subject(group, follower_id))
    except (NotFoundError, KeyNotFoundError):
        return None
    return None if msg.data is None else _results.decode(msg.data)


def format_history(results: list[CopyResult]) -> str:
    lines = [f"{'when (UTC)':<20} {'signal':<14} {'outcome':<9} {'order':>18}  reason"]
    for r in results:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.received_at))
        order = "" if r.size is None else f"{r.side} {r.size} {r.size_type}"
        lines.append(f"{when:<20} {r.signal_id[:12]:<14} {r.outcome:<9} {order:>18}  {r.reason}")
    return "\n".join(lines)

