"""The master's own orders keep their budget: background calls (watching its fills and orders)
go only while the account's rate limiter has half its burst to spare."""

from __future__ import annotations

from shared.exchange.throttle import BurstThrottle


async def test_background_call_has_room_only_above_the_kept_half() -> None:
    throttle = BurstThrottle(rate_limit_ms=3000, burst=15)  # Kraken: 15 calls, one per 3 s

    rooms = []
    for _ in range(9):
        rooms.append(throttle.has_room(1.0, keep=7.5))
        await throttle(1.0)

    assert rooms[:7] == [True] * 7  # 7 background calls leave 8 units for the master's orders
    assert rooms[7:] == [False, False]


async def test_the_masters_own_call_still_goes_when_background_calls_may_not() -> None:
    throttle = BurstThrottle(rate_limit_ms=3000, burst=15)
    for _ in range(8):
        await throttle(1.0)

    spare = throttle.has_room(1.0, keep=7.5)
    await throttle(1.0)  # an order's own call: within the burst, it does not wait

    assert not spare
    assert throttle.waits == 0
