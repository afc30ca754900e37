"""Follower states and the kill switch, written to the control bucket that every copier (and
the master, for the kill switch) watches."""

from __future__ import annotations

import difflib

from services.ops.connection import connected
from services.ops.errors import CliError
from shared.config import CommonSettings, CopytradeConfig
from shared.control import control_bucket, set_kill, set_state
from shared.messages import FollowerState

STATE_COMMANDS: dict[str, tuple[FollowerState | None, str]] = {
    "pause": ("paused", "copy nothing for a follower"),
    "resume": (None, "return a follower to its configured state"),
    "close-only": ("close_only", "copy only exits for a follower"),
    "dry-run": ("dry_run", "record decisions for a follower, place no orders"),
}


def check_follower(config: CopytradeConfig, follower_id: str) -> None:
    """A follower id that is not in the config is an error naming the closest ids."""
    check_id("follower", follower_id, [f.id for f in config.followers])


def check_master(config: CopytradeConfig, master_id: str) -> None:
    """A master id that is not in the config is an error naming the closest ids."""
    check_id("master", master_id, [m.id for m in config.masters])


def check_id(kind: str, given: str, ids: list[str]) -> None:
    if given in ids:
        return
    close = difflib.get_close_matches(given, ids, n=3)
    if close:
        hint = f"did you mean {' or '.join(close)}?"
    elif ids:
        hint = f"{kind}s: {', '.join(ids[:8])}{', ...' if len(ids) > 8 else ''}"
    else:
        hint = f"the config has no {kind}s"
    raise CliError(f"unknown {kind} {given!r}: {hint} (nothing changed)")


async def change_state(settings: CommonSettings, command: str, follower_id: str, who: str) -> str:
    state = STATE_COMMANDS[command][0]
    async with connected(settings) as nc:
        kv = await control_bucket(nc.jetstream(), settings.stream_replicas)
        await set_state(kv, follower_id, state, reason=f"{command} by {who}")
    return f"{follower_id}: {state or 'its configured state'} (every copier applies it within a second)"


async def kill(settings: CommonSettings, on: bool) -> str:
    async with connected(settings) as nc:
        await set_kill(await control_bucket(nc.jetstream(), settings.stream_replicas), on)
    return (
        "kill switch ON: no new orders, master trades refused"
        if on
        else "kill switch off: copying and master trades resume"
    )
