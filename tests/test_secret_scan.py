"""The secret-leak scan that every System runs at exit can fail: a planted secret is found."""

from __future__ import annotations

import msgspec
import pytest

from shared import bus
from shared.messages import CopyResult
from tests.harness import System
from tests.secrets_scan import register

PLANTED = "planted-secret-7781"
register(PLANTED)


async def test_secret_planted_in_a_result_fails_the_scan(system: System) -> None:
    result = CopyResult(
        signal_id="s" * 32,
        follower_id="f1",
        exchange="paper",
        outcome="failed",
        reason=f"AuthError: key {PLANTED} refused",
    )
    await system.js.publish(bus.result_subject("paper", "f1"), msgspec.json.encode(result))

    with pytest.raises(AssertionError, match="leaked into results"):
        await system.scan_for_secrets()

    await system.js.purge_stream(bus.RESULTS_STREAM)  # leave nothing for the exit scan to find
