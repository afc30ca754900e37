"""The one gate: every order path (copies and heals) is refused by the same policy."""

from __future__ import annotations

import pytest

from shared.control import set_kill, set_state
from tests.harness import CopierHandle, System, eventually, make_config, paper_followers, trade


async def _drifted(system: System) -> CopierHandle:
    """A follower whose copy of a master buy failed: its holding is below its target, a heal
    buys."""
    await system.fund("master", 10_000)
    await system.fund("meddled", 1_000)
    config = make_config(paper_followers({"meddled": 1_000}))
    copier = await system.start_copier(config, reconcile_heal=True)
    master = await system.start_master(config)
    await system.fault("meddled", "exchange_error")
    reply = await master.trade(trade(base="0.02"))
    results = await system.wait_results(reply.signal_id, 1)
    assert results["meddled"].outcome == "failed"
    return copier


@pytest.mark.parametrize(
    ("state", "refusal"), [("paused", "paused"), ("close_only", "close_only"), ("dry_run", "dry_run")]
)
async def test_heal_is_refused_by_the_followers_state(system: System, state: str, refusal: str) -> None:
    copier = await _drifted(system)
    await set_state(system.control, "meddled", state, "test")  # type: ignore[arg-type]
    await eventually(lambda: copier.copier.executor.policy.state(copier.book.all()[0]) == state)
    orders_before = len(await system.orders("meddled"))

    await copier.reconciler.reconcile()  # a drift is acted on once seen twice
    drifts = await copier.reconciler.reconcile()

    assert [d.follower_id for d in drifts] == ["meddled"]
    assert len(await system.orders("meddled")) == orders_before
    assert copier.metric("copytrade_heals_total", outcome=refusal) == 1


async def test_heal_is_refused_under_the_kill_switch(system: System) -> None:
    copier = await _drifted(system)
    await set_kill(system.control, True)
    await eventually(lambda: copier.copier._control.killed)
    orders_before = len(await system.orders("meddled"))

    await copier.reconciler.reconcile()
    await copier.reconciler.reconcile()

    assert len(await system.orders("meddled")) == orders_before
    assert copier.metric("copytrade_heals_total", outcome="kill_switch") == 1


async def test_heal_of_an_active_follower_places_one_order(system: System) -> None:
    copier = await _drifted(system)
    orders_before = len(await system.orders("meddled"))

    await copier.reconciler.reconcile()
    await copier.reconciler.reconcile()  # seen twice: healed
    await copier.reconciler.reconcile()  # healed: no drift left
    await copier.reconciler.reconcile()

    assert len(await system.orders("meddled")) == orders_before + 1
    assert copier.metric("copytrade_heals_total", outcome="placed") == 1
