"""Mirroring a master's resting orders (`orders: {mode: orders}`): one linked follower order per
master order, amended and cancelled with it, stops native or skipped, either side filling
first settled once, orphans cancelled, and a restart half way through an amend leaving exactly
one live follower order. Order events are built and signed here, as the master publishes them."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from services.copier.orders.links import event_id, link_key
from services.paper.__main__ import serve_venue
from services.paper.venue import PaperVenue
from shared import bus
from shared.exchange.context import AdapterContext
from shared.exchange.paper import FillPart, PaperOrder
from shared.ledger import Ledger, holding_key
from shared.messages import (
    CopyResult,
    MirroredKind,
    OrderEventKind,
    OrderSignal,
    Side,
    SignalRejected,
    TradeSignal,
    linked_client_order_id,
    order_event_id_for,
    signal_id_for,
)
from shared.signing import SignalSigner, new_signing_key
from tests.emulators.binance import BinanceEmulator
from tests.emulators.coinbase import CoinbaseEmulator
from tests.emulators.kraken import KrakenEmulator
from tests.emulators.server import EmulatorServer
from tests.emulators.state import Order
from tests.harness import TEST_SIGNING_SEED, CopierHandle, System, eventually, make_config
from tests.secrets_scan import register

ENCODER = msgspec.json.Encoder(decimal_format="string")
SIGNER = SignalSigner(TEST_SIGNING_SEED)
BTC = "BTC/USD"


# ---- what the master publishes ---------------------------------------------------------------


@dataclass(frozen=True)
class MasterOrder:
    """The master's order as its events describe it: a limit buy unless told otherwise."""

    kind: MirroredKind = "limit"
    side: Side = "buy"
    size: str = "0.1"
    price: str | None = "44000"
    trigger: str | None = None


LIMIT_BUY = MasterOrder()
STOP_LOSS = MasterOrder(kind="stop_loss", side="sell", price=None, trigger="40000")


def order_event(
    event: OrderEventKind,
    order_id: str = "m-1",
    *,
    version: int = 0,
    order: MasterOrder = LIMIT_BUY,
    filled: str = "0",
    copied_position: str = "0",
) -> OrderSignal:
    return SIGNER.sign(
        OrderSignal(
            signal_id=order_event_id_for("paper", order_id, event, version),
            master_id="master",
            exchange="paper",
            event=event,
            version=version,
            order_id=order_id,
            kind=order.kind,
            symbol=BTC,
            side=order.side,
            size=Decimal(order.size),
            filled=Decimal(filled),
            price=None if order.price is None else Decimal(order.price),
            trigger_price=None if order.trigger is None else Decimal(order.trigger),
            master_equity=Decimal(10_000),
            copied_position=Decimal(copied_position),
            executed_at=time.time(),
        )
    )


def master_fill(
    order_id: str, side: Side = "buy", base: str = "0.1", price: str = "45000", copied_before: str = "0"
) -> TradeSignal:
    """The master's fill of its order `order_id`, whole."""
    return SIGNER.sign(
        TradeSignal(
            signal_id=signal_id_for("paper", order_id),
            master_id="master",
            exchange="paper",
            symbol=BTC,
            side=side,
            price=Decimal(price),
            size=Decimal(base),
            size_type="base",
            filled_base=Decimal(base),
            order_id=order_id,
            master_equity=Decimal(10_000),
            master_position_before=Decimal(copied_before),
            copied_position_before=Decimal(copied_before),
            executed_at=time.time(),
        )
    )


async def publish(system: System, signal: OrderSignal | TradeSignal) -> str:
    await system.js.publish(
        bus.signal_subject("master"), ENCODER.encode(signal), headers={"Nats-Msg-Id": uuid.uuid4().hex}
    )
    return signal.signal_id


def mirroring(**orders: Any) -> list[dict[str, Any]]:
    return [{"master": "master", "orders": {"mode": "orders", **orders}}]


def paper(follower: str, **settings: Any) -> dict[str, Any]:
    return {"id": follower, "exchange": "paper", **settings}


# ---- reading what happened -------------------------------------------------------------------


async def open_orders(system: System, account: str) -> list[PaperOrder]:
    return [o for o in await system.orders(account) if o.status == "open"]


async def holding(system: System, follower: str) -> Decimal:
    ledger = Ledger(await system.js.key_value(bus.LEDGER_BUCKET))
    return (await ledger.read(holding_key(follower, "master", BTC))).amount


def derived(follower: str, what: str, order_id: str = "m-1", group: str = "paper") -> str:
    return event_id(link_key(group, follower, "master", order_id), what)


async def swept_until(copier: CopierHandle, done: Any, timeout: float = 15.0) -> None:
    """Run the sweep until `done()` holds (the background one runs every 30 s)."""

    async def check() -> bool:
        await copier.copier.mirroring.sweep()
        return bool(await done())

    await eventually(check, timeout)


def outcome(result: CopyResult) -> tuple[str, str]:
    return result.outcome, result.reason_code


async def start(system: System, followers: list[dict[str, Any]], cash: dict[str, int]) -> CopierHandle:
    await system.fund("master", 10_000)
    for account, amount in cash.items():
        await system.fund(account, amount)
    return await system.start_copier(make_config(followers))


# ---- placing, amending, cancelling -------------------------------------------------------------


async def test_master_resting_buy_becomes_one_linked_order_per_mirroring_follower(
    system: System,
) -> None:
    await start(
        system,
        [paper("alice", subscriptions=mirroring()), paper("bob", subscriptions=mirroring()), paper("carl")],
        {"alice": 1_000, "bob": 5_000, "carl": 1_000},
    )

    placed = await publish(system, order_event("new", order=MasterOrder(price="44000.05")))
    results = await system.wait_results(placed, 2)
    alice, bob = await open_orders(system, "alice"), await open_orders(system, "bob")

    assert {f: outcome(r) for f, r in results.items()} == {
        "alice": ("submitted", "mirrored"),
        "bob": ("submitted", "mirrored"),
    }
    assert [(o.client_order_id, o.limit_price, o.ordered) for o in alice] == [
        (linked_client_order_id("m-1", "alice", 0), Decimal("44000.0"), Decimal("0.01"))
    ]
    assert [(o.limit_price, o.ordered) for o in bob] == [(Decimal("44000.0"), Decimal("0.05"))]
    assert await system.orders("carl") == []


async def test_unsigned_or_forged_order_events_are_rejected_and_place_nothing(
    system: System,
) -> None:
    await start(system, [paper("alice", subscriptions=mirroring())], {"alice": 1_000})
    forger = SignalSigner(new_signing_key()[0])
    unsigned = msgspec.structs.replace(order_event("new"), signature="")

    await publish(system, unsigned)
    await publish(system, forger.sign(unsigned))
    await eventually(lambda: _rejected(system, 2))

    assert sorted(await _rejections(system)) == ["bad_signature", "unsigned"]
    assert await system.orders("alice") == []


async def test_cancel_cancels_the_linked_order(system: System) -> None:
    await start(system, [paper("alice", subscriptions=mirroring())], {"alice": 1_000})
    await system.wait_results(await publish(system, order_event("new")), 1)

    sent = time.time()
    cancelled = await publish(system, order_event("cancel"))
    result = (await system.wait_results(cancelled, 1))["alice"]

    assert outcome(result) == ("skipped", "cancelled")
    assert result.acked_at is not None  # when the venue confirmed the cancel
    assert sent <= result.acked_at
    assert [o.status for o in await system.orders("alice")] == ["canceled"]
    assert await holding(system, "alice") == 0


@dataclass
class Venue:
    emulator: EmulatorServer
    secrets: dict[str, str] = field(default_factory=dict)

    def add(self, exchange: str, name: str, cash: int = 1_000) -> None:
        """A follower account on this venue holding `cash` USD; its credentials kept by env name."""
        raw = f"secret-{name}-Wd3"
        secret = base64.b64encode(raw.encode() * 2).decode() if exchange == "kraken" else raw
        self.emulator.state.add_account(f"key-{name}-9Tq", secret, {"USD": Decimal(cash)})
        stem = f"{exchange.upper()}_USER_{name.upper()}"
        self.secrets |= {f"{stem}_API_KEY": f"key-{name}-9Tq", f"{stem}_API_SECRET": secret}
        register(f"key-{name}-9Tq", secret)

    def follower(self, name: str, exchange: str) -> dict[str, Any]:
        return {"id": name, "exchange": exchange, "base_url": self.emulator.url, "subscriptions": mirroring()}

    def orders(self, name: str) -> list[Order]:
        return list(self.emulator.state.accounts[f"key-{name}-9Tq"].orders)

    def open(self, name: str) -> list[Order]:
        return [o for o in self.orders(name) if o.is_open]


@pytest.fixture
async def venue(request: pytest.FixtureRequest) -> AsyncIterator[Venue]:
    """One emulated venue with funded followers (the test's parameter: venue, followers)."""
    exchange, names = request.param
    emulator: EmulatorServer = {
        "kraken": KrakenEmulator,
        "binance": BinanceEmulator,
        "coinbase": CoinbaseEmulator,
    }[exchange]()
    await emulator.start()
    venue = Venue(emulator)
    for name in names:
        venue.add(exchange, name)
    yield venue
    await emulator.stop()


async def _on_venue(system: System, venue: Venue, exchange: str, names: list[str]) -> None:
    await system.fund("master", 10_000)
    config = make_config([venue.follower(n, exchange) for n in names])
    await system.start_copier(
        config,
        exchange=exchange,
        secrets=venue.secrets,
        ctx=AdapterContext(http_timeout_s=5.0, rate_limit=False),
    )


@pytest.mark.parametrize("venue", [("kraken", ["kim"])], indirect=True)
async def test_amend_on_kraken_changes_the_linked_order_in_place(
    system: System,
    venue: Venue,
) -> None:
    await _on_venue(system, venue, "kraken", ["kim"])
    await system.wait_results(await publish(system, order_event("new")), 1)
    first = venue.open("kim")

    amended = await publish(
        system, order_event("amend", version=1, order=MasterOrder(price="43500", size="0.2"))
    )
    result = (await system.wait_results(amended, 1))["kim"]
    now = venue.open("kim")

    assert outcome(result) == ("submitted", "amended")
    assert [(o.order_id, o.client_order_id, o.limit_price, o.ordered) for o in now] == [
        (first[0].order_id, linked_client_order_id("m-1", "kim", 0), Decimal("43500.0"), Decimal("0.02"))
    ]
    assert len(venue.orders("kim")) == 1


@pytest.mark.parametrize("venue", [("binance", ["bea"])], indirect=True)
async def test_amend_on_binance_replaces_the_linked_order_never_two_live(
    system: System,
    venue: Venue,
) -> None:
    await _on_venue(system, venue, "binance", ["bea"])
    await system.wait_results(await publish(system, order_event("new")), 1)

    amended = await publish(
        system, order_event("amend", version=1, order=MasterOrder(price="43500", size="0.2"))
    )
    result = (await system.wait_results(amended, 1))["bea"]
    orders = venue.orders("bea")

    assert outcome(result) == ("submitted", "replaced")
    assert [(o.status, o.limit_price, o.ordered) for o in orders] == [
        ("user_canceled", Decimal("44000.0"), Decimal("0.01")),
        ("open", Decimal("43500.0"), Decimal("0.02")),
    ]
    assert orders[1].client_order_id == result.client_order_id != orders[0].client_order_id


# ---- stops and targets ---------------------------------------------------------------------------


async def _copied(system: System, followers: int) -> None:
    """The master bought 0.1 BTC at 45,000: each follower holds its copy (market, as today)."""
    await system.wait_results(await publish(system, master_fill("buy-1")), followers)


async def test_stop_loss_rests_natively_and_a_price_fall_closes_the_copied_holding(
    system: System,
) -> None:
    copier = await start(
        system,
        [paper("sam", subscriptions=mirroring()), paper("nostop", subscriptions=mirroring(stop_loss=False))],
        {"sam": 1_000, "nostop": 1_000},
    )
    await _copied(system, 2)
    stop = order_event("new", "stop-1", order=STOP_LOSS, copied_position="0.1")

    results = await system.wait_results(await publish(system, stop), 2)
    resting = await open_orders(system, "sam")
    await system.set_price(BTC, "39000")
    await swept_until(copier, lambda: _is(holding(system, "sam"), Decimal(0)))
    filled = await system.results(derived("sam", f"filled:{resting[0].client_order_id}", "stop-1"))

    assert outcome(results["sam"]) == ("submitted", "mirrored")
    assert outcome(results["nostop"]) == ("skipped", "stop_loss_off")
    assert [(o.trigger, o.trigger_price, o.ordered) for o in resting] == [
        ("stop_loss", Decimal("40000.0"), Decimal("0.01"))
    ]
    assert outcome(filled["sam"]) == ("filled", "linked_order_filled")
    assert await holding(system, "nostop") == Decimal("0.01")


@pytest.mark.parametrize("venue", [("coinbase", ["cora"])], indirect=True)
async def test_stop_loss_without_a_native_order_is_a_recorded_skip(
    system: System,
    venue: Venue,
) -> None:
    await _on_venue(system, venue, "coinbase", ["cora"])
    stop = order_event("new", "stop-1", order=STOP_LOSS, copied_position="0.1")

    result = (await system.wait_results(await publish(system, stop), 1))["cora"]

    assert outcome(result) == ("skipped", "order_kind_not_native")
    assert "stop_loss" in result.reason
    assert venue.orders("cora") == []


async def test_stop_amend_on_paper_cancels_then_places_the_next_version(system: System) -> None:
    await start(system, [paper("sam", subscriptions=mirroring())], {"sam": 1_000})
    await _copied(system, 1)
    await system.wait_results(
        await publish(
            system,
            order_event("new", "stop-1", order=STOP_LOSS, copied_position="0.1"),
        ),
        1,
    )

    amended = await publish(
        system,
        order_event(
            "amend", "stop-1", version=1, order=replace(STOP_LOSS, trigger="41000"), copied_position="0.1"
        ),
    )
    result = (await system.wait_results(amended, 1))["sam"]
    stops = [o for o in await system.orders("sam") if o.trigger is not None]

    assert outcome(result) == ("submitted", "replaced")
    assert [(o.status, o.trigger_price, o.client_order_id) for o in stops] == [
        ("canceled", Decimal("40000.0"), linked_client_order_id("stop-1", "sam", 0)),
        ("open", Decimal("41000.0"), linked_client_order_id("stop-1", "sam", 1)),
    ]


# ---- one side filled first -------------------------------------------------------------------


async def test_master_filled_first_chase_fills_the_follower_and_cancel_records_it(
    system: System,
) -> None:
    copier = await start(
        system,
        [
            paper(
                "chaser",
                risk={"max_price_deviation_pct": "5"},
                subscriptions=mirroring(master_filled_first={"wait_s": 0, "then": "chase"}),
            ),
            paper("leaver", subscriptions=mirroring(master_filled_first={"wait_s": 0, "then": "cancel"})),
        ],
        {"chaser": 1_000, "leaver": 1_000},
    )
    await system.wait_results(await publish(system, order_event("new", order=MasterOrder(price="44000"))), 2)

    fill = await publish(system, master_fill("m-1", price="44000"))
    carried = await system.wait_results(fill, 2)
    settled = derived("chaser", "master_filled_first"), derived("leaver", "master_filled_first")
    await swept_until(copier, lambda: _counted(system, settled))
    chased = (await system.results(settled[0]))["chaser"]
    left = (await system.results(settled[1]))["leaver"]
    chaser = await system.orders("chaser")

    assert {f: outcome(r) for f, r in carried.items()} == {
        "chaser": ("skipped", "mirrored_order"),
        "leaver": ("skipped", "mirrored_order"),
    }
    assert [(o.status, o.limit_price) for o in chaser] == [
        ("canceled", Decimal("44000.0")),
        ("filled", Decimal("46200.0")),
    ]
    assert (outcome(chased), chased.filled_base) == (("filled", "chased"), Decimal("0.01"))
    assert outcome(left) == ("skipped", "master_filled_first_cancelled")
    assert [o.status for o in await system.orders("leaver")] == ["canceled"]
    assert (await holding(system, "chaser"), await holding(system, "leaver")) == (Decimal("0.01"), Decimal(0))


async def test_follower_filled_first_then_master_cancel_keeps_or_unwinds(system: System) -> None:
    await start(
        system,
        [
            paper("keeper", subscriptions=mirroring(follower_filled_first="keep")),
            paper("unwinder", subscriptions=mirroring(follower_filled_first="unwind")),
        ],
        {"keeper": 1_000, "unwinder": 1_000},
    )
    await system.wait_results(await publish(system, order_event("new")), 2)
    for follower in ("keeper", "unwinder"):
        linked = (await open_orders(system, follower))[0]
        await system.paper(FillPart(follower, linked.order_id, Decimal("0.01"), Decimal(44000)))

    cancelled = await publish(system, order_event("cancel"))
    results = await system.wait_results(cancelled, 2)
    unwinder = await system.orders("unwinder")

    assert {f: outcome(r) for f, r in results.items()} == {
        "keeper": ("filled", "follower_filled_first_kept"),
        "unwinder": ("filled", "follower_filled_first_unwound"),
    }
    assert await holding(system, "keeper") == Decimal("0.01")
    assert await holding(system, "unwinder") == 0
    assert [(o.side, o.status, o.amount) for o in unwinder] == [
        ("buy", "filled", Decimal("0.01")),
        ("sell", "filled", Decimal("0.01")),
    ]


# ---- orphans and restarts --------------------------------------------------------------------


async def test_orphan_sweep_cancels_a_linked_order_whose_master_order_went_while_down(
    system: System,
) -> None:
    """The copier is down while the master cancels its order, and the follower's subscription
    stops mirroring orders meanwhile: the cancel reaches no mirroring follower, the sweep on
    start finds the linked order orphaned and cancels it."""
    copier = await start(system, [paper("olga", subscriptions=mirroring())], {"olga": 1_000})
    await system.wait_results(await publish(system, order_event("new")), 1)
    await copier.stop()

    cancelled = await publish(system, order_event("cancel"))
    fills_only = make_config([paper("olga", subscriptions=[{"master": "master"}])])
    restarted = await system.start_copier(fills_only, instance="copier-2")
    orphan = derived("olga", f"orphan:{linked_client_order_id('m-1', 'olga', 0)}")
    await swept_until(restarted, lambda: _counted(system, [orphan]))
    result = (await system.results(orphan))["olga"]

    assert outcome(result) == ("skipped", "orphan_cancelled")
    assert "no longer mirrors" in result.reason
    assert [o.status for o in await system.orders("olga")] == ["canceled"]
    assert await system.results(cancelled) == {}


async def test_orphan_sweep_cancels_a_linked_order_whose_cancel_failed_at_the_venue(
    system: System,
) -> None:
    """The master's cancel arrives while the follower's venue is unreachable: recorded failed,
    the link knows its master order is over, and the sweep cancels the order once the venue is
    back."""
    copier = await start(system, [paper("mia", subscriptions=mirroring())], {"mia": 1_000})
    await system.wait_results(await publish(system, order_event("new")), 1)
    venue_service = system._services[0]  # the paper venue: down for the cancel
    await venue_service.stop()

    cancelled = await publish(system, order_event("cancel"))
    failed = (await system.wait_results(cancelled, 1))["mia"]
    system._services.append(await serve_venue(await system.connect(), system.venue))
    orphan = derived("mia", f"orphan:{linked_client_order_id('m-1', 'mia', 0)}")
    await swept_until(copier, lambda: _counted(system, [orphan]))
    result = (await system.results(orphan))["mia"]

    assert (failed.outcome, "the sweep cancels it" in failed.reason) == ("failed", True)
    assert outcome(result) == ("skipped", "orphan_cancelled")
    assert "no longer live" in result.reason
    assert [o.status for o in await system.orders("mia")] == ["canceled"]


async def test_restart_between_an_amend_and_its_follower_order_leaves_one_at_the_new_price(
    system: System,
) -> None:
    """The copier dies after cancelling the old stop and while its replacement is on the way
    (the venue takes it late): the restarted copier looks the replacement up before placing."""
    venue: PaperVenue = system.venue
    copier = await start(system, [paper("rita", subscriptions=mirroring())], {"rita": 1_000})
    await _copied(system, 1)
    placed = order_event("new", "stop-1", order=STOP_LOSS, copied_position="0.1")
    await system.wait_results(await publish(system, placed), 1)
    venue.latency_s = 1.0  # the replacement's placement hangs at the venue

    moved = replace(STOP_LOSS, trigger="41000")
    amended = await publish(
        system, order_event("amend", "stop-1", version=1, order=moved, copied_position="0.1")
    )
    await eventually(lambda: _cancelled(system, "rita", linked_client_order_id("stop-1", "rita", 0)))
    await copier.copier.shutdown(grace_s=0)  # killed mid-amend: nothing finishes
    await copier.task
    venue.latency_s = 0.0
    await system.start_copier(make_config([paper("rita", subscriptions=mirroring())]), instance="copier-2")
    result = (await system.wait_results(amended, 1, timeout=30))["rita"]
    stops = [o for o in await system.orders("rita") if o.trigger is not None]

    assert outcome(result) == ("submitted", "replaced")
    assert [(o.status, o.trigger_price, o.client_order_id) for o in stops] == [
        ("canceled", Decimal("40000.0"), linked_client_order_id("stop-1", "rita", 0)),
        ("open", Decimal("41000.0"), linked_client_order_id("stop-1", "rita", 1)),
    ]


# ---- helpers ---------------------------------------------------------------------------------


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _rejections(system: System) -> list[str]:
    return [r.reason_code for r in await system.audit() if isinstance(r, SignalRejected)]


async def _rejected(system: System, count: int) -> bool:
    return len(await _rejections(system)) >= count


async def _counted(system: System, signal_ids: Any) -> bool:
    recorded = {r.signal_id for r in await system.audit() if isinstance(r, CopyResult)}
    return all(s in recorded for s in signal_ids)


async def _cancelled(system: System, follower: str, client_order_id: str) -> bool:
    return any(
        o.client_order_id == client_order_id and o.status == "canceled" for o in await system.orders(follower)
    )
