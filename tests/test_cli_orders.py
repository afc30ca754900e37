"""`copytrade master order | amend | cancel` through the real console command: each changes the
master's order and publishes its order event once; sent again with the same request id, it
answers the first outcome and changes nothing."""

from __future__ import annotations

import asyncio
import re
import subprocess
from decimal import Decimal

from shared.messages import OrderSignal
from tests.harness import System
from tests.test_cli import run_cli
from tests.test_master_order_events import BTC, Kraken, _events
from tests.test_master_order_events import kraken as kraken  # the fixture

ORDER_ID = re.compile(r"master order (\S+) \(client order id")


async def _cli(system: System, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_cli, "master", *args, COPYTRADE_NATS_URL=system.server.url)


async def test_cli_order_amend_cancel_each_once_and_retries_change_nothing(
    system: System,
    kraken: Kraken,
) -> None:
    await kraken.start()
    order = (
        "order",
        "--symbol",
        BTC,
        "--side",
        "buy",
        "--base",
        "0.3",
        "--limit",
        "44000",
        "--request-id",
        "cli-order-00001",
    )

    placed, placed_again = await _cli(system, *order), await _cli(system, *order)
    found = ORDER_ID.search(placed.stdout)
    order_id = found.group(1) if found else "?"
    amend = ("amend", order_id, "--price", "43800", "--request-id", "cli-amend-00001")
    amended, amended_again = await _cli(system, *amend), await _cli(system, *amend)
    cancel = ("cancel", order_id, "--request-id", "cli-cancel-0001")
    cancelled, cancelled_again = await _cli(system, *cancel), await _cli(system, *cancel)
    events = await _events(system)
    runs = (placed, placed_again, amended, amended_again, cancelled, cancelled_again)

    assert [r.returncode for r in runs] == [0] * 6, [r.stderr for r in runs]
    assert [("answered again" in r.stdout) for r in runs] == [False, True] * 3
    assert [(e.order_id, e.event, e.version, e.price) for e in events] == [
        (order_id, "new", 0, Decimal(44000)),
        (order_id, "amend", 1, Decimal(43800)),
        (order_id, "cancel", 1, Decimal(43800)),
    ]
    assert [_signal_ids(r.stdout) for r in runs] == [[e.signal_id] for e in events for _ in range(2)]
    assert len([o for o in kraken.account.orders if o.client_order_id]) == 1


def _signal_ids(out: str) -> list[str]:
    return re.findall(r"signal ([0-9a-f]{32}) published", out)


async def test_cli_stop_limit_order_rests_as_a_stop_loss_limit(
    system: System,
    kraken: Kraken,
) -> None:
    await kraken.start()

    done = await _cli(
        system,
        "order",
        "--symbol",
        BTC,
        "--side",
        "sell",
        "--base",
        "1",
        "--stop",
        "40000",
        "--limit",
        "39900",
    )
    events = await _events(system)

    assert done.returncode == 0
    assert "resting: master order" in done.stdout
    assert [(e.event, e.kind, e.trigger_price, e.price) for e in events] == [
        ("new", "stop_loss_limit", Decimal(40000), Decimal(39900))
    ]
    assert all(isinstance(e, OrderSignal) for e in events)


async def test_cli_order_without_a_price_exits_2_with_one_line(system: System) -> None:
    done = await _cli(system, "order", "--symbol", BTC, "--side", "buy", "--base", "1")

    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert "--limit" in done.stderr


async def test_cli_cancel_of_an_unknown_order_is_refused_exit_1(
    system: System,
    kraken: Kraken,
) -> None:
    await kraken.start()

    done = await _cli(system, "cancel", "ONOSUCH-ORDER-000001", "--request-id", "cancel-nosuch-1")

    assert done.returncode == 1
    assert "no open master order ONOSUCH-ORDER-000001" in done.stderr
    assert await _events(system) == []


async def test_cli_order_without_a_master_service_changes_nothing_exit_1(system: System) -> None:
    done = await _cli(system, "order", "--symbol", BTC, "--side", "buy", "--base", "1", "--limit", "44000")

    assert done.returncode == 1
    assert "no master service answers" in done.stderr
