"""Mirroring end to end (issue 16): the master's resting order is placed, amended, cancelled and
filled by hand on its Kraken emulator; the master's own watchers, woken by Kraken's private
stream, publish its events; copiers mirror them onto the followers' linked orders at the Kraken
and Binance emulators, through ccxt. Nothing is published by the test."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import pytest

from services.master.stream import relay
from shared.exchange.context import AdapterContext
from shared.exchange.port import Streaming
from shared.messages import CopyResult, OrderEventKind, linked_client_order_id, order_event_id_for
from tests.emulators.state import Account, Order
from tests.harness import CopierHandle, System, eventually, make_config
from tests.test_master_order_events import Kraken, Master, _fills_watched, _subscribed
from tests.test_master_order_events import kraken as kraken  # the fixture
from tests.test_mirroring import Venue, holding, mirroring, outcome
from tests.test_mirroring import venue as venue  # the fixture

BINANCE = [("binance", ["bea"])]  # `venue`: bea follows on Binance with 1,000 USD
KIM_CASH = 3_000  # kim follows on the master's Kraken with 3,000 USD: three times bea's size
# the master holds 100,000 USD and 2 BTC at 45,000: equity 190,000, so 1.9 BTC is 0.01 per 1,000
MASTER_SIZE = "1.9"

Shape = tuple[str | None, str, Decimal | None, Decimal | None]


async def _copy(
    system: System, kraken: Kraken, venues: dict[str, Venue], followers: list[dict[str, Any]]
) -> list[CopierHandle]:
    """One copier group per venue, following the Kraken master."""
    config = make_config(followers, {"id": "master", "exchange": "kraken", "base_url": kraken.emulator.url})
    return [
        await system.start_copier(
            config,
            exchange=exchange,
            secrets=venue.secrets,
            ctx=AdapterContext(http_timeout_s=5.0, rate_limit=False),
        )
        for exchange, venue in venues.items()
    ]


@contextlib.asynccontextmanager
async def _watching(system: System, kraken: Kraken, master: Master) -> AsyncIterator[None]:
    """The master's fill and order watchers running, woken by Kraken's private stream, as the
    master process runs them; they must still be running when the test is done."""
    assert isinstance(master.account, Streaming)
    tasks = [
        asyncio.create_task(master.fills.run(2.0)),
        asyncio.create_task(master.orders.run()),
        asyncio.create_task(relay(master.account, master.fills, master.orders)),
    ]
    try:
        await eventually(lambda: _subscribed(kraken), timeout=5)
        await eventually(lambda: _fills_watched(system), timeout=5)  # the fill cursor is set
        yield
        assert [t for t in tasks if t.done()] == []  # none ended on an error
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)


async def _mirrored(
    system: System, order: Order, event: OrderEventKind, version: int
) -> dict[str, CopyResult]:
    """Each follower's result of the master's event, once both are recorded."""
    return await system.wait_results(order_event_id_for("kraken", order.order_id, event, version), 2)


def _outcomes(results: dict[str, CopyResult]) -> dict[str, tuple[str, str]]:
    return {f: outcome(r) for f, r in results.items()}


def _account(venue: Venue, name: str) -> Account:
    return venue.emulator.state.accounts[f"key-{name}-9Tq"]


def _most_live(venue: Venue, name: str) -> Callable[[], int]:
    """The most open orders the follower's account has had at once, from now on."""
    account, most = _account(venue, name), [0]

    def heard(_: Order) -> None:
        most[0] = max(most[0], sum(o.is_open for o in account.orders))

    account.listeners.append(heard)
    return lambda: most[0]


def _shapes(orders: list[Order]) -> list[Shape]:
    return [(o.client_order_id, o.status, o.limit_price, o.ordered) for o in orders]


@pytest.mark.parametrize("venue", BINANCE, indirect=True)
async def test_master_limit_placed_amended_cancelled_by_hand_moves_each_followers_linked_order(
    system: System,
    kraken: Kraken,
    venue: Venue,
) -> None:
    on_kraken = Venue(kraken.emulator)
    on_kraken.add("kraken", "kim", KIM_CASH)
    await _copy(
        system,
        kraken,
        {"kraken": on_kraken, "binance": venue},
        [on_kraken.follower("kim", "kraken"), venue.follower("bea", "binance")],
    )
    most_live = {"kim": _most_live(on_kraken, "kim"), "bea": _most_live(venue, "bea")}
    master = await kraken.start()

    async with _watching(system, kraken, master):
        order = kraken.by_hand("buy", MASTER_SIZE, "44123.4")
        placed = await _mirrored(system, order, "new", 0)
        kim_placed, bea_placed = on_kraken.orders("kim"), _shapes(venue.orders("bea"))
        kim_id = [(o.order_id, o.client_order_id) for o in kim_placed]
        kim_placed_shape = _shapes(kim_placed)
        kraken.amend(order, price="43987.6")
        amended = await _mirrored(system, order, "amend", 1)
        kim_amended = on_kraken.orders("kim")
        kim_amended_id = [(o.order_id, o.client_order_id) for o in kim_amended]
        kim_amended_shape, bea_amended = _shapes(kim_amended), _shapes(venue.orders("bea"))
        kraken.emulator.state.cancel(order)
        cancelled = await _mirrored(system, order, "cancel", 1)

    kim_cid, bea_cid = (linked_client_order_id(order.order_id, f, 0) for f in ("kim", "bea"))
    assert _outcomes(placed) == {"kim": ("submitted", "mirrored"), "bea": ("submitted", "mirrored")}
    assert kim_placed_shape == [(kim_cid, "open", Decimal("44123.4"), Decimal("0.03"))]
    assert bea_placed == [(bea_cid, "open", Decimal("44123.4"), Decimal("0.01"))]
    assert _outcomes(amended) == {"kim": ("submitted", "amended"), "bea": ("submitted", "replaced")}
    assert kim_amended_id == kim_id  # amended in place: same venue order id, same client id
    assert kim_amended_shape == [(kim_cid, "open", Decimal("43987.6"), Decimal("0.03"))]
    assert bea_amended == [
        (bea_cid, "user_canceled", Decimal("44123.4"), Decimal("0.01")),
        (amended["bea"].client_order_id, "open", Decimal("43987.6"), Decimal("0.01")),
    ]
    assert amended["bea"].client_order_id not in (None, bea_cid)
    assert _outcomes(cancelled) == {"kim": ("skipped", "cancelled"), "bea": ("skipped", "cancelled")}
    assert [o.status for o in on_kraken.orders("kim")] == ["user_canceled"]
    assert [o.status for o in venue.orders("bea")] == ["user_canceled", "user_canceled"]
    assert {f: live() for f, live in most_live.items()} == {"kim": 1, "bea": 1}  # never two live


@pytest.mark.parametrize("venue", BINANCE, indirect=True)
async def test_master_limit_filled_in_two_parts_leaves_each_ledger_at_what_its_venue_filled(
    system: System,
    kraken: Kraken,
    venue: Venue,
) -> None:
    """kim's linked order fills whole in two parts, bea's part of it (the rest is cancelled once
    the master's order has filled: `then: cancel`); each ledger is what its venue filled."""
    on_kraken = Venue(kraken.emulator)
    on_kraken.add("kraken", "kim", KIM_CASH)
    settle_at_once = mirroring(master_filled_first={"wait_s": 0, "then": "cancel"})
    copiers = await _copy(
        system,
        kraken,
        {"kraken": on_kraken, "binance": venue},
        [
            on_kraken.follower("kim", "kraken") | {"subscriptions": settle_at_once},
            venue.follower("bea", "binance") | {"subscriptions": settle_at_once},
        ],
    )
    master = await kraken.start()
    kim, bea = kraken.emulator.state, venue.emulator.state

    async with _watching(system, kraken, master):
        order = kraken.by_hand("buy", MASTER_SIZE, "44000")
        await _mirrored(system, order, "new", 0)
        kim_order, bea_order = on_kraken.open("kim")[0], venue.open("bea")[0]
        kim.fill_resting(_account(on_kraken, "kim"), kim_order, Decimal("0.01"))
        bea.fill_resting(_account(venue, "bea"), bea_order, Decimal("0.004"))
        kim.fill_resting(kraken.account, order, Decimal("0.7"))  # the master's first part
        await eventually(lambda: _holdings(system, Decimal("0.01"), Decimal("0.004")))
        kim.fill_resting(_account(on_kraken, "kim"), kim_order, Decimal("0.02"))
        bea.fill_resting(_account(venue, "bea"), bea_order, Decimal("0.003"))
        kim.fill_resting(kraken.account, order, Decimal("1.2"))  # the master's rest
        await eventually(lambda: not bea_order.is_open)
        await eventually(lambda: _holdings(system, kim_order.amount, bea_order.amount))
        for handle in copiers:  # later sweeps find nothing more to apply
            await handle.copier.mirroring.sweep()
        ledger = await holding(system, "kim"), await holding(system, "bea")
        carried = sorted(r.follower_id for r in await _results(system) if r.reason_code == "mirrored_order")

    assert (order.status, order.amount) == ("filled", Decimal(MASTER_SIZE))
    assert ledger == (kim_order.amount, bea_order.amount) == (Decimal("0.03"), Decimal("0.007"))
    assert [(o.status, [p.amount for p in o.parts or []]) for o in on_kraken.orders("kim")] == [
        ("filled", [Decimal("0.01"), Decimal("0.02")])
    ]
    assert [(o.status, [p.amount for p in o.parts or []]) for o in venue.orders("bea")] == [
        ("user_canceled", [Decimal("0.004"), Decimal("0.003")])
    ]
    assert carried == ["bea", "bea", "kim", "kim"]  # the master's two fills: not copied again


async def _holdings(system: System, kim: Decimal, bea: Decimal) -> bool:
    return (await holding(system, "kim"), await holding(system, "bea")) == (kim, bea)


async def _results(system: System) -> list[CopyResult]:
    return [r for r in await system.audit() if isinstance(r, CopyResult)]
