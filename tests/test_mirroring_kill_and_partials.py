"""Mirroring under the kill switch, and fills of linked orders that are still open: the switch
cancels every open linked order at once (stops included), each fill applied, recorded
`kill_switch`; master events under it place nothing, and a still-live master order is mirrored
again only by its next event after the switch is off. A linked order filling in parts enters
the ledger part by part, each increment once, across repeated sweeps and restarts."""

from __future__ import annotations

from decimal import Decimal

import msgspec

from services.copier.orders.links import Link, link_key
from shared import bus
from shared.control import set_kill
from shared.exchange.paper import FillPart, PaperOrder
from shared.ledger import Ledger, holding_key
from shared.messages import linked_client_order_id
from tests.harness import CopierHandle, System, eventually, make_config
from tests.test_mirroring import (
    BTC,
    STOP_LOSS,
    MasterOrder,
    derived,
    holding,
    master_fill,
    mirroring,
    open_orders,
    order_event,
    outcome,
    paper,
    publish,
    start,
)

LINK_DECODER = msgspec.json.Decoder(Link)
LINK_ENCODER = msgspec.json.Encoder(decimal_format="string")


# ---- the kill switch ---------------------------------------------------------------------------


async def test_kill_switch_cancels_every_open_linked_order_stops_included(system: System) -> None:
    """No sweep is run by hand: the switch turning on wakes it (the round is every 30 s)."""
    await start(system, [paper("kim", subscriptions=mirroring())], {"kim": 1_000})
    await system.wait_results(await publish(system, master_fill("buy-1")), 1)  # 0.01 copied
    stop = order_event("new", "stop-1", order=STOP_LOSS, copied_position="0.1")
    await system.wait_results(await publish(system, order_event("new")), 1)
    await system.wait_results(await publish(system, stop), 1)
    limit = linked_client_order_id("m-1", "kim", 0)
    await system.paper(
        FillPart("kim", _order_id(await open_orders(system, "kim"), limit), Decimal("0.004"), Decimal(44000))
    )

    await set_kill(system.control, True)
    killed = (
        derived("kim", f"killed:{limit}"),
        derived("kim", f"killed:{linked_client_order_id('stop-1', 'kim', 0)}", "stop-1"),
    )
    await system.wait_results(killed[0], 1, timeout=5)
    await system.wait_results(killed[1], 1, timeout=5)
    on_limit = (await system.results(killed[0]))["kim"]
    on_stop = (await system.results(killed[1]))["kim"]
    orders = await system.orders("kim")

    assert (outcome(on_limit), on_limit.filled_base) == (("filled", "kill_switch"), Decimal("0.004"))
    assert outcome(on_stop) == ("skipped", "kill_switch")
    assert sorted((o.client_order_id, o.status) for o in orders if o.ordered is not None) == sorted(
        [(limit, "canceled"), (linked_client_order_id("stop-1", "kim", 0), "canceled")]
    )
    assert await holding(system, "kim") == Decimal("0.014")


async def test_events_under_the_kill_switch_place_nothing_and_only_the_next_one_after_relinks(
    system: System,
) -> None:
    copier = await start(system, [paper("kai", subscriptions=mirroring())], {"kai": 1_000})
    await system.wait_results(await publish(system, order_event("new", "m-1")), 1)
    await system.wait_results(await publish(system, order_event("new", "m-2")), 1)
    first = linked_client_order_id("m-1", "kai", 0)
    await system.paper(
        FillPart("kai", _order_id(await open_orders(system, "kai"), first), Decimal("0.004"), Decimal(44000))
    )
    await set_kill(system.control, True)
    await eventually(lambda: _none_open(system, "kai"), timeout=5)

    moved = MasterOrder(price="43000")
    during = [
        await publish(system, order_event("amend", "m-1", version=1, order=moved)),
        await publish(system, order_event("new", "m-3")),
    ]
    refused = [(await system.wait_results(s, 1))["kai"] for s in during]
    await system.wait_results(await publish(system, order_event("cancel", "m-2")), 1)
    await set_kill(system.control, False)
    await eventually(lambda: _switch_seen_off(copier))
    swept = await copier.copier.mirroring.sweep()  # the switch off re-places nothing by itself
    left_alone = await open_orders(system, "kai")
    amended = await publish(system, order_event("amend", "m-1", version=2, order=moved))
    relinked = (await system.wait_results(amended, 1))["kai"]
    resting = await open_orders(system, "kai")

    assert [outcome(r) for r in refused] == [("skipped", "kill_switch"), ("skipped", "kill_switch")]
    assert swept["killed"] == 0
    assert left_alone == []
    assert outcome(relinked) == ("submitted", "mirrored")
    assert [(o.client_order_id, o.limit_price, o.ordered) for o in resting] == [
        (linked_client_order_id("m-1", "kai", 2), Decimal("43000.0"), Decimal("0.006"))
    ]
    assert await holding(system, "kai") == Decimal("0.004")


# ---- fills of a linked order still open ------------------------------------------------------


async def test_partial_fills_enter_the_ledger_once_across_sweeps_and_restarts(system: System) -> None:
    """0.01 ordered: 30 % fills, then 40 % more, then the rest (the order ends); two sweeps and
    a restart between every step; the ledger equals what filled at every step, never more."""
    config = make_config([paper("pia", subscriptions=mirroring())])
    copier = await start(system, [paper("pia", subscriptions=mirroring())], {"pia": 1_000})
    await system.wait_results(await publish(system, order_event("new")), 1)
    cid = linked_client_order_id("m-1", "pia", 0)
    order_id = _order_id(await open_orders(system, "pia"), cid)
    seen: list[Decimal] = []

    for step, part in enumerate(["0.003", "0.004", "0.003"]):
        await system.paper(FillPart("pia", order_id, Decimal(part), Decimal(44000)))
        for _ in range(2):
            await copier.copier.mirroring.sweep()
            seen.append(await holding(system, "pia"))
        await copier.stop()
        copier = await system.start_copier(config, instance=f"copier-{step + 2}")
        await copier.copier.mirroring.sweep()
        seen.append(await holding(system, "pia"))
    partials = [
        (await system.results(derived("pia", f"partial:{cid}@{level}")))["pia"]
        for level in ("0.003", "0.007")
    ]
    ended = (await system.results(derived("pia", f"filled:{cid}")))["pia"]

    assert seen == [Decimal(x) for x in ["0.003"] * 3 + ["0.007"] * 3 + ["0.01"] * 3]
    assert [(outcome(r), r.filled_base) for r in partials] == [
        (("filled", "partially_filled"), Decimal("0.003")),
        (("filled", "partially_filled"), Decimal("0.004")),
    ]
    assert outcome(ended) == ("filled", "linked_order_filled")


async def test_a_credit_left_half_done_is_carried_out_once(system: System) -> None:
    """A replica died after writing the credit intent and applying it to the ledger, before
    the link said so: the sweep carries the intent out again (the same fill id), and the
    cancel that ends the order applies only the rest."""
    copier = await start(system, [paper("hal", subscriptions=mirroring())], {"hal": 1_000})
    await system.wait_results(await publish(system, order_event("new")), 1)
    cid = linked_client_order_id("m-1", "hal", 0)
    await system.paper(
        FillPart("hal", _order_id(await open_orders(system, "hal"), cid), Decimal("0.003"), Decimal(44000))
    )
    await _half_done_credit(system, "hal", cid, Decimal("0.003"))

    await copier.copier.mirroring.sweep()
    await copier.copier.mirroring.sweep()
    after_sweeps = await holding(system, "hal")
    await system.wait_results(await publish(system, order_event("cancel")), 1)

    assert after_sweeps == Decimal("0.003")
    assert await holding(system, "hal") == Decimal("0.003")


async def test_a_master_fill_credits_the_open_linked_orders_fill_at_once(system: System) -> None:
    await start(system, [paper("max", subscriptions=mirroring())], {"max": 1_000})
    await system.wait_results(await publish(system, order_event("new")), 1)
    cid = linked_client_order_id("m-1", "max", 0)
    await system.paper(
        FillPart("max", _order_id(await open_orders(system, "max"), cid), Decimal("0.004"), Decimal(44000))
    )

    carried = (await system.wait_results(await publish(system, master_fill("m-1", price="44000")), 1))["max"]
    credited = await holding(system, "max")
    partial = (await system.results(derived("max", f"partial:{cid}@0.004")))["max"]

    assert outcome(carried) == ("skipped", "mirrored_order")
    assert credited == Decimal("0.004")
    assert (outcome(partial), partial.filled_base) == (("filled", "partially_filled"), Decimal("0.004"))


# ---- helpers ---------------------------------------------------------------------------------


def _order_id(orders: list[PaperOrder], client_order_id: str) -> str:
    """The venue's id of the one open order with this client order id."""
    (found,) = [o.order_id for o in orders if o.client_order_id == client_order_id]
    return found


async def _none_open(system: System, follower: str) -> bool:
    return await open_orders(system, follower) == []


def _switch_seen_off(copier: CopierHandle) -> bool:
    return all(copier.copier.executor.policy.halted(f) is None for f in copier.book.all())


async def _half_done_credit(system: System, follower: str, cid: str, level: Decimal) -> None:
    """What a replica killed mid-credit leaves: the intent in the link, the ledger applied."""
    kv = await system.js.key_value(bus.LEDGER_BUCKET)
    key = link_key("paper", follower, "master", "m-1")
    entry = await kv.get(key)
    assert entry.value is not None
    link = msgspec.structs.replace(LINK_DECODER.decode(entry.value), crediting=(cid, level))
    await kv.update(key, LINK_ENCODER.encode(link), last=entry.revision)
    await Ledger(kv).apply(holding_key(follower, "master", BTC), f"{cid}@{level.normalize()}", level)
