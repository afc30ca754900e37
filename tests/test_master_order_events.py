"""The master's order lifecycle reaches the bus: a resting order placed, amended or cancelled, by
hand on the venue or through the master service, is one order event (OrderSignal) each, once,
across restarts; an order that fills is never reported as cancelled (issue 16 item 1)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal

import msgspec
import pytest
from nats.js.errors import KeyNotFoundError
from prometheus_client import CollectorRegistry

from services.master.metrics import MasterMetrics
from services.master.order_events import open_key
from services.master.order_watch import Cadence, OrderWatcher
from services.master.requests import AmendRequest, CancelRequest, OrderRequest
from services.master.service import MasterService
from services.master.stream import relay
from services.master.watcher import FillWatcher, fills_bucket
from shared import bus
from shared.config import SecretSource
from shared.control import KILL_KEY
from shared.exchange.context import AdapterContext
from shared.exchange.factory import build_account
from shared.exchange.port import ExchangeAccount, Streaming
from shared.ledger import Ledger, alive_key, master_key
from shared.messages import AnySignal, OrderSignal, TradeSignal, order_event_id_for
from shared.signing import SignalSigner, SignalVerifier
from tests.emulators.kraken import KrakenEmulator
from tests.emulators.state import Account, Order
from tests.harness import (
    TEST_PUBLIC_KEY,
    TEST_SIGNING_SEED,
    System,
    eventually,
    make_config,
    master_service,
    published_signals,
)
from tests.secrets_scan import register

BTC = "BTC/USD"
MASTER_KEY = "fake-key-master-9Qe2"
MASTER_SECRET = base64.b64encode(b"fake-secret-master-Pw3k" * 2).decode()
SECRETS = {"KRAKEN_MASTER_API_KEY": MASTER_KEY, "KRAKEN_MASTER_API_SECRET": MASTER_SECRET}


@dataclass
class Master:
    """A master service on the Kraken emulator, through ccxt, with its two watchers."""

    service: MasterService
    orders: OrderWatcher
    fills: FillWatcher
    account: ExchangeAccount


@dataclass
class Kraken:
    emulator: KrakenEmulator
    account: Account
    start: Callable[..., Awaitable[Master]]

    def by_hand(
        self,
        side: str,
        size: str,
        limit: str | None = None,
        *,
        trigger: str | None = None,
        trigger_price: str | None = None,
    ) -> Order:
        """A resting order placed on Kraken's site: no client order id."""
        order = self.emulator.state.place_resting(
            self.account,
            BTC,
            side,
            Decimal(size),
            limit_price=None if limit is None else Decimal(limit),
            trigger=trigger,
            trigger_price=None if trigger_price is None else Decimal(trigger_price),
        )
        order.rename(f"OHAND{len(self.account.orders):02d}-KR4KN-000001")
        return order

    def amend(self, order: Order, price: str | None = None, size: str | None = None) -> None:
        self.emulator.state.amend(
            self.account,
            order,
            price=None if price is None else Decimal(price),
            size=None if size is None else Decimal(size),
        )


@pytest.fixture
async def kraken(system: System) -> AsyncIterator[Kraken]:
    emulator = KrakenEmulator()
    await emulator.start()
    register(MASTER_KEY, MASTER_SECRET)
    account = emulator.state.add_account(
        MASTER_KEY, MASTER_SECRET, {"USD": Decimal(100_000), "BTC": Decimal(2)}
    )
    config = make_config([], {"id": "master", "exchange": "kraken", "base_url": emulator.url})
    me = config.master_named(None)
    closers: list[Callable[[], Awaitable[None]]] = []

    async def start(rate_limit: bool = False) -> Master:
        """A master process over the same buckets (a restart: nothing kept in memory); with
        Kraken's rate limits (`rate_limit`), else none (a loopback emulator)."""
        ctx = AdapterContext(http_timeout_s=5.0, rate_limit=rate_limit)
        account = build_account(me, SecretSource(None, SECRETS).credentials(me, "MASTER"), ctx)
        metrics = MasterMetrics(CollectorRegistry(), me.id)
        service, published = await master_service(
            await system.connect(), account, me, metrics, signer=SignalSigner(TEST_SIGNING_SEED)
        )
        closers.extend([ctx.close, account.close, service.stop])
        return Master(
            service,
            OrderWatcher(tracker=service.tracker, account=account, slow_s=2.0, metrics=metrics),
            FillWatcher(
                account=account, config=me, kv=published, master=service, on_fill=service.tracker.touch
            ),
            account,
        )

    yield Kraken(emulator, account, start)
    for close in reversed(closers):
        await close()
    await emulator.stop()


async def _published(system: System) -> list[AnySignal]:
    return await published_signals(system.js)


async def _events(system: System) -> list[OrderSignal]:
    return [s for s in await _published(system) if isinstance(s, OrderSignal)]


def _shape(events: list[OrderSignal]) -> list[tuple[str, str, int, Decimal | None]]:
    return [(e.order_id, e.event, e.version, e.price) for e in events]


# ---- orders placed by hand on the venue -----------------------------------------------------


async def test_limit_placed_amended_cancelled_by_hand_is_new_amend_cancel_once_across_restarts(
    system: System,
    kraken: Kraken,
) -> None:
    master = await kraken.start()
    first = await master.orders.poll()  # nothing rests yet

    order = kraken.by_hand("buy", "0.5", "44000")
    polls = [await master.orders.poll(), await master.orders.poll()]
    master = await kraken.start()  # restarted between the events
    kraken.amend(order, price="43500")
    polls += [await master.orders.poll(), await master.orders.poll()]
    master = await kraken.start()
    kraken.emulator.state.cancel(order)
    polls += [await master.orders.poll(), await master.orders.poll()]
    master = await kraken.start()
    polls.append(await master.orders.poll())
    events = await _events(system)

    assert first == []
    assert [len(p) for p in polls] == [1, 0, 1, 0, 1, 0, 0]
    assert _shape(events) == [
        (order.order_id, "new", 0, Decimal(44000)),
        (order.order_id, "amend", 1, Decimal(43500)),
        (order.order_id, "cancel", 1, Decimal(43500)),
    ]
    assert [e.signal_id for e in events] == [
        order_event_id_for("kraken", order.order_id, e.event, e.version) for e in events
    ]
    assert {(e.kind, e.side, e.size, e.filled, e.symbol) for e in events} == {
        ("limit", "buy", Decimal("0.5"), Decimal(0), BTC)
    }
    assert all(SignalVerifier([TEST_PUBLIC_KEY]).problem(e) is None for e in events)
    assert all(e.master_equity == 100_000 + 2 * 45_000 for e in events)


async def test_changes_made_while_the_watcher_was_down_are_each_published_once(
    system: System,
    kraken: Kraken,
) -> None:
    master = await kraken.start()
    kept = kraken.by_hand("buy", "0.2", "44000")
    cancelled = kraken.by_hand("sell", "0.3", "46000")
    before = await master.orders.poll()

    kraken.amend(kept, size="0.25")  # the watcher is down meanwhile
    kraken.emulator.state.cancel(cancelled)
    stop = kraken.by_hand("sell", "1", trigger="stop_loss", trigger_price="40000")
    master = await kraken.start()
    after = await master.orders.poll()
    again = await (await kraken.start()).orders.poll()
    events = await _events(system)

    assert sorted((e.event, e.order_id) for e in before) == sorted(
        [("new", cancelled.order_id), ("new", kept.order_id)]
    )
    assert sorted((e.event, e.order_id, e.version) for e in after) == sorted(
        [("amend", kept.order_id, 1), ("cancel", cancelled.order_id, 0), ("new", stop.order_id, 0)]
    )
    assert again == []
    assert len(events) == 5
    assert [(e.size, e.price) for e in after if e.event == "amend"] == [(Decimal("0.25"), Decimal(44000))]
    assert [(e.kind, e.trigger_price, e.price) for e in after if e.event == "new"] == [
        ("stop_loss", Decimal(40000), None)
    ]


async def test_event_published_before_its_state_was_written_is_not_repeated(
    system: System,
    kraken: Kraken,
) -> None:
    master = await kraken.start()
    order = kraken.by_hand("buy", "0.5", "44000")
    await master.orders.poll()
    kv = await system.js.key_value(bus.FILLS_BUCKET)
    state = (await kv.get(open_key("master"))).value or b""

    kraken.amend(order, price="43000")
    published = await master.orders.poll()
    await kv.put(open_key("master"), state)  # as if the process died before writing its state
    again = await (await kraken.start()).orders.poll()
    later = await master.orders.poll()
    events = await _events(system)

    assert [(e.event, e.version) for e in published] == [("amend", 1)]
    assert again == later == []
    assert [(e.event, e.version) for e in events] == [("new", 0), ("amend", 1)]


async def test_filled_resting_order_is_not_reported_cancelled(
    system: System,
    kraken: Kraken,
) -> None:
    master = await kraken.start()
    await master.fills.poll()  # first start: the fill cursor begins now
    filled = kraken.by_hand("buy", "0.4", "44000")
    partly = kraken.by_hand("buy", "0.6", "44000")
    await master.orders.poll()

    kraken.emulator.state.fill_resting(kraken.account, filled, Decimal("0.1"))
    on_part = await master.orders.poll()
    kraken.emulator.state.fill_resting(kraken.account, filled, Decimal("0.3"))
    kraken.emulator.state.fill_resting(kraken.account, partly, Decimal("0.2"))
    kraken.emulator.state.cancel(partly)
    gone = await master.orders.poll()
    fills = await master.fills.poll()
    published = await _published(system)

    assert on_part == []  # a fill is no amendment
    assert [(e.event, e.order_id, e.filled, e.size) for e in gone] == [
        ("cancel", partly.order_id, Decimal("0.2"), Decimal("0.6"))
    ]
    assert fills == 3
    assert sorted((s.order_id, s.filled_base) for s in published if isinstance(s, TradeSignal)) == sorted(
        [
            (filled.order_id, Decimal("0.1")),
            (filled.order_id, Decimal("0.3")),
            (partly.order_id, Decimal("0.2")),
        ]
    )
    assert [e.event for e in published if isinstance(e, OrderSignal) and e.order_id == filled.order_id] == [
        "new"
    ]


async def test_order_event_carries_the_masters_copied_position(
    system: System,
    kraken: Kraken,
) -> None:
    master = await kraken.start()
    ledger = Ledger(await system.js.key_value(bus.LEDGER_BUCKET))
    await ledger.apply(master_key("master", BTC), "earlier-fill", Decimal("0.7"))

    kraken.by_hand("sell", "0.7", trigger="stop_loss", trigger_price="40000")
    events = await master.orders.poll()

    assert [(e.event, e.kind, e.copied_position) for e in events] == [("new", "stop_loss", Decimal("0.7"))]


async def test_running_watcher_sees_an_amendment_within_a_second(
    system: System,
    kraken: Kraken,
) -> None:
    master = await kraken.start()
    order = kraken.by_hand("buy", "0.5", "44000")
    running = asyncio.create_task(master.orders.run())
    try:
        await eventually(lambda: _count(system, 1), timeout=5)
        kraken.amend(order, price="43900")
        await eventually(lambda: _count(system, 2), timeout=5, interval=0.01)
        kraken.emulator.state.cancel(order)
        await eventually(lambda: _count(system, 3), timeout=5, interval=0.01)
    finally:
        running.cancel()
        await asyncio.wait({running})

    assert [e.event for e in await _events(system)] == ["new", "amend", "cancel"]
    assert master.orders.cadence.next(resting=1, active_at=0.0, waited=False) == 0.5  # within 1 s
    assert master.orders.cadence.backoff == 1


async def test_venue_private_stream_wakes_both_watchers_long_before_their_next_poll(
    system: System,
    kraken: Kraken,
) -> None:
    """Kraken's executions channel: watchers that would not look again for an hour still
    publish a fill made by hand and an order placed, amended and cancelled by hand."""
    master = await kraken.start()
    assert isinstance(master.account, Streaming)
    master.orders.cadence = Cadence(3600.0, 3600.0)
    await master.fills.poll()  # the cursor begins now
    tasks = [
        asyncio.create_task(master.fills.run(3600.0)),
        asyncio.create_task(master.orders.run()),
        asyncio.create_task(relay(master.account, master.fills, master.orders)),
    ]
    try:
        await eventually(lambda: _subscribed(kraken), timeout=5)
        await eventually(lambda: master.fills.streamed() and master.orders.streamed(), timeout=5)
        await eventually(lambda: _fills_watched(system), timeout=5)  # its first look is over
        kraken.emulator.state.fill(kraken.account, BTC, "buy", amount=Decimal("0.1"))
        await eventually(lambda: _trades(system, 1), timeout=5, interval=0.01)
        order = kraken.by_hand("buy", "0.5", "44000")
        await eventually(lambda: _count(system, 1), timeout=5, interval=0.01)
        kraken.amend(order, price="43900")
        await eventually(lambda: _count(system, 2), timeout=5, interval=0.01)
        kraken.emulator.state.cancel(order)
        await eventually(lambda: _count(system, 3), timeout=5, interval=0.01)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)

    assert [e.event for e in await _events(system)] == ["new", "amend", "cancel"]
    trades = [s for s in await _published(system) if isinstance(s, TradeSignal)]
    assert [(t.side, t.size) for t in trades] == [("buy", Decimal("0.1"))]
    assert not master.fills.streamed()  # the relay ended: the watchers poll at their own pace
    assert not master.orders.streamed()
    assert all(not t.done() or t.cancelled() for t in tasks)  # none ended on an error


async def _subscribed(kraken: Kraken) -> bool:
    return kraken.emulator.streams.subscribed(MASTER_KEY) > 0


async def _fills_watched(system: System) -> bool:
    try:
        await (await fills_bucket(system.js)).get(alive_key("master"))
    except KeyNotFoundError:
        return False
    return True


async def _trades(system: System, count: int) -> bool:
    return len([s for s in await _published(system) if isinstance(s, TradeSignal)]) >= count


async def _count(system: System, count: int) -> bool:
    return len(await _events(system)) >= count


async def test_watcher_polls_slower_while_the_accounts_calls_wait_on_its_rate_limit(
    system: System,
    kraken: Kraken,
) -> None:
    master = await kraken.start(rate_limit=True)
    kraken.by_hand("buy", "0.5", "44000")
    await master.orders.poll()
    for _ in range(15):  # the master's own calls spend Kraken's burst (15 calls)
        await master.service.tracker.sync(BTC)
    running = asyncio.create_task(master.orders.run())
    try:
        await eventually(lambda: master.orders.cadence.backoff > 1, timeout=15)
    finally:
        running.cancel()
        await asyncio.wait({running})

    assert master.orders.cadence.backoff > 1


def test_cadence_polls_fast_while_orders_rest_and_backs_off_while_calls_wait() -> None:
    cadence = Cadence(fast_s=0.5, slow_s=2.0)
    idle = time.monotonic() - 3600

    waits = [
        cadence.next(resting=0, active_at=idle, waited=False),
        cadence.next(resting=1, active_at=idle, waited=False),
        cadence.next(resting=0, active_at=time.monotonic(), waited=False),
        cadence.next(resting=1, active_at=idle, waited=True),
        cadence.next(resting=1, active_at=idle, waited=True),
        cadence.next(resting=1, active_at=idle, waited=False),
        cadence.next(resting=1, active_at=idle, waited=False),
    ]

    assert waits == [2.0, 0.5, 0.5, 1.0, 2.0, 1.0, 0.5]


# ---- orders through the master service ------------------------------------------------------


async def test_order_amend_cancel_through_the_service_each_once_and_retries_change_nothing(
    system: System,
    kraken: Kraken,
) -> None:
    master = await kraken.start()
    desk = master.service.desk
    place = OrderRequest(
        symbol=BTC, side="buy", size=Decimal("0.3"), limit_price=Decimal(44000), request_id="order-place-0001"
    )

    placed = await desk.handle(place)
    placed_again = await desk.handle(place)
    amend = AmendRequest(order_id=placed.order_id, price=Decimal(43800), request_id="order-amend-0001")
    amended = await desk.handle(amend)
    amended_again = await desk.handle(amend)
    polled = await master.orders.poll()
    cancel = CancelRequest(order_id=placed.order_id, request_id="order-cancel-0001")
    cancelled = await desk.handle(cancel)
    cancelled_again = await (await kraken.start()).service.desk.handle(cancel)
    events = await _events(system)
    venue_orders = [o for o in kraken.account.orders if o.client_order_id is not None]

    assert [(r.outcome, r.replayed, r.status) for r in (placed, amended, cancelled)] == [
        ("done", False, "open"),
        ("done", False, "open"),
        ("done", False, "canceled"),
    ]
    assert placed_again == msgspec.structs.replace(placed, replayed=True)
    assert amended_again == msgspec.structs.replace(amended, replayed=True)
    assert cancelled_again == msgspec.structs.replace(cancelled, replayed=True)
    assert polled == []  # the service published them: the watcher has nothing to add
    assert _shape(events) == [
        (placed.order_id, "new", 0, Decimal(44000)),
        (placed.order_id, "amend", 1, Decimal(43800)),
        (placed.order_id, "cancel", 1, Decimal(43800)),
    ]
    assert [r.signal for r in (placed, amended, cancelled)] == events
    assert len(venue_orders) == 1
    assert venue_orders[0].client_order_id == placed.client_order_id


async def test_fills_of_an_order_placed_through_the_service_are_signalled_per_fill(
    system: System,
    kraken: Kraken,
) -> None:
    master = await kraken.start()
    await master.fills.poll()  # first start: the fill cursor begins now
    placed = await master.service.desk.handle(
        OrderRequest(
            symbol=BTC,
            side="buy",
            size=Decimal("0.5"),
            limit_price=Decimal(44000),
            request_id="order-fills-0001",
        )
    )
    order = next(o for o in kraken.account.orders if o.order_id == placed.order_id)

    for part in ("0.2", "0.3"):
        kraken.emulator.state.fill_resting(kraken.account, order, Decimal(part))
        await master.fills.poll()
    polled = await master.orders.poll()
    published = await _published(system)

    assert [(s.order_id, s.filled_base) for s in published if isinstance(s, TradeSignal)] == [
        (placed.order_id, Decimal("0.2")),
        (placed.order_id, Decimal("0.3")),
    ]
    assert polled == []  # filled: no cancel
    assert [e.event for e in published if isinstance(e, OrderSignal)] == ["new"]


async def test_stop_loss_and_take_profit_limits_through_the_service_are_new_events(
    system: System,
    kraken: Kraken,
) -> None:
    master = await kraken.start()

    stop = await master.service.desk.handle(
        OrderRequest(
            symbol=BTC,
            side="sell",
            size=Decimal(1),
            trigger="stop_loss",
            trigger_price=Decimal(40000),
            limit_price=Decimal(39900),
            request_id="order-stop-0001",
        )
    )
    take = await master.service.desk.handle(
        OrderRequest(
            symbol=BTC,
            side="sell",
            size=Decimal(1),
            trigger="take_profit",
            trigger_price=Decimal(50000),
            request_id="order-take-0001",
        )
    )
    events = await _events(system)

    assert [(r.outcome, r.status) for r in (stop, take)] == [("done", "open"), ("done", "open")]
    assert [(e.event, e.kind, e.trigger_price, e.price) for e in events] == [
        ("new", "stop_loss_limit", Decimal(40000), Decimal(39900)),
        ("new", "take_profit", Decimal(50000), None),
    ]


async def test_limit_crossing_the_price_fills_at_once_without_an_order_event(
    system: System,
    kraken: Kraken,
) -> None:
    master = await kraken.start()

    crossed = await master.service.desk.handle(
        OrderRequest(
            symbol=BTC,
            side="buy",
            size=Decimal("0.1"),
            limit_price=Decimal(46000),
            request_id="order-cross-0001",
        )
    )
    polled = await master.orders.poll()

    assert (crossed.outcome, crossed.status, crossed.signal) == ("done", "filled", None)
    assert polled == []
    assert await _events(system) == []


async def test_amend_of_an_order_placed_by_hand_is_refused_through_the_service(
    system: System,
    kraken: Kraken,
) -> None:
    master = await kraken.start()
    order = kraken.by_hand("buy", "0.5", "44000")
    await master.orders.poll()

    refused = await master.service.desk.handle(
        AmendRequest(order_id=order.order_id, price=Decimal(43000), request_id="amend-by-hand-1")
    )

    assert refused.outcome == "refused"
    assert "by hand" in refused.error
    assert order.limit_price == 44000
    assert [e.event for e in await _events(system)] == ["new"]


async def test_same_request_id_for_another_order_request_is_refused(
    system: System,
    kraken: Kraken,
) -> None:
    master = await kraken.start()
    first = await master.service.desk.handle(
        OrderRequest(
            symbol=BTC,
            side="buy",
            size=Decimal("0.3"),
            limit_price=Decimal(44000),
            request_id="order-reused-01",
        )
    )

    other = await master.service.desk.handle(
        OrderRequest(
            symbol=BTC,
            side="buy",
            size=Decimal("0.4"),
            limit_price=Decimal(44000),
            request_id="order-reused-01",
        )
    )

    assert first.outcome == "done"
    assert other.outcome == "refused"
    assert "another request" in other.error
    assert len(await _events(system)) == 1


async def test_kill_switch_refuses_orders_and_amendments_not_cancels(
    system: System,
    kraken: Kraken,
) -> None:
    master = await kraken.start()
    desk = master.service.desk
    placed = await desk.handle(
        OrderRequest(
            symbol=BTC,
            side="buy",
            size=Decimal("0.3"),
            limit_price=Decimal(44000),
            request_id="order-killed-01",
        )
    )
    await system.control.put(KILL_KEY, b"on")
    await eventually(lambda: master.service.killed)

    order = await desk.handle(
        OrderRequest(
            symbol=BTC,
            side="buy",
            size=Decimal("0.3"),
            limit_price=Decimal(44000),
            request_id="order-killed-02",
        )
    )
    amend = await desk.handle(
        AmendRequest(order_id=placed.order_id, size=Decimal("0.5"), request_id="amend-killed-01")
    )
    cancel = await desk.handle(CancelRequest(order_id=placed.order_id, request_id="cancel-killed-01"))

    assert [r.outcome for r in (order, amend, cancel)] == ["refused", "refused", "done"]
    assert "kill switch" in order.error
    assert "kill switch" in amend.error
    assert [e.event for e in await _events(system)] == ["new", "cancel"]
