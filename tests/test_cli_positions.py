"""The copy ledger through the `copytrade` command: positions (copied holdings next to the real
balance reconciliation saw), unsubscribe, adopt (once per request id), and the warnings of
`config check`."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from nats.js.errors import NoKeysError

from services.ops.cli import main
from shared import bus
from shared.control import Unsubscribed, unsubscribed_key
from shared.ledger import Ledger, holding_key
from tests.harness import System, config_data, make_config, paper_followers, trade
from tests.test_cli import run_cli, unreachable_nats


def _write(directory: Path, data: dict[str, Any]) -> Path:
    path = directory / "copytrade.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _two_masters(directory: Path) -> Path:
    """tania copies alpha only; both masters configured."""
    data = config_data(
        [
            {
                "id": "tania",
                "exchange": "paper",
                "subscriptions": [{"master": "alpha", "on_unsubscribe": "close"}],
            }
        ]
    )
    del data["master"]
    data["masters"] = [{"id": "alpha", "exchange": "paper"}, {"id": "beta", "exchange": "paper"}]
    return _write(directory, data)


async def _cli(system: System, config: Path, *args: str) -> Any:
    return await asyncio.to_thread(
        run_cli, *args, COPYTRADE_CONFIG=str(config), COPYTRADE_NATS_URL=system.server.url
    )


async def test_positions_after_a_copy_shows_holding_then_reconciled_real_balance(
    system: System,
) -> None:
    await system.fund("master", 10_000)
    await system.fund("alice", 10_000, {"BTC": Decimal("0.01")})  # its own, before copying
    followers = paper_followers({"alice": 10_000})
    config = _write(system.tmp_path, config_data(followers))
    copier = await system.start_copier(make_config(followers))
    master = await system.start_master(make_config(followers))
    buy = await master.trade(trade(base="0.02"))
    copied = (await system.wait_results(buy.signal_id, 1))["alice"].filled_base

    before = await _cli(system, config, "positions")
    await copier.reconciler.reconcile()
    after = await _cli(system, config, "positions", "--json")
    table = await _cli(system, config, "positions", "--follower", "alice")
    shown = json.loads(after.stdout)
    row = next(line for line in table.stdout.splitlines() if line.startswith("alice"))

    assert (before.returncode, after.returncode, table.returncode) == (0, 0, 0)
    assert "alice" in before.stdout
    assert "real: not yet reconciled" in before.stdout
    assert copied is not None
    assert copied > 0
    assert [(h["follower"], h["master"], h["symbol"]) for h in shown["holdings"]] == [
        ("alice", "master", "BTC/USD")
    ]
    assert Decimal(shown["holdings"][0]["holding"]) == copied
    assert Decimal(shown["holdings"][0]["real"]) == copied + Decimal("0.01")
    assert Decimal(shown["holdings"][0]["target"]) > 0
    assert shown["masters"] == [
        {"master": "master", "symbol": "BTC/USD", "copied_position": shown["masters"][0]["copied_position"]}
    ]
    assert Decimal(shown["masters"][0]["copied_position"]) == Decimal("0.02")
    assert f"{copied + Decimal('0.01'):f}" in row
    assert "ago" in row
    assert "not yet reconciled" not in table.stdout


def test_positions_of_unknown_follower_exits_2_with_one_line_naming_close_id(
    tmp_path: Path,
) -> None:
    config = _write(tmp_path, config_data(paper_followers({"alice": 1, "bob": 1})))

    done = run_cli(
        "positions",
        "--follower",
        "alcie",
        COPYTRADE_CONFIG=str(config),
        COPYTRADE_NATS_URL=unreachable_nats(),
    )

    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert "alcie" in done.stderr
    assert "alice" in done.stderr
    assert "bob" not in done.stderr
    assert done.stdout == ""


def test_positions_of_unknown_master_exits_2_naming_close_id(tmp_path: Path) -> None:
    config = _two_masters(tmp_path)

    done = run_cli(
        "positions", "--master", "alpah", COPYTRADE_CONFIG=str(config), COPYTRADE_NATS_URL=unreachable_nats()
    )

    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert "alpha" in done.stderr


async def test_unsubscribe_writes_control_key_once(system: System) -> None:
    config = _two_masters(system.tmp_path)

    first = await _cli(system, config, "unsubscribe", "tania", "alpha", "--close")
    written = await system.control.get(unsubscribed_key("tania", "alpha"))
    again = await _cli(system, config, "unsubscribe", "tania", "alpha", "--close")
    unchanged = await system.control.get(unsubscribed_key("tania", "alpha"))

    assert (first.returncode, again.returncode) == (0, 0)
    assert written.value is not None
    assert msgspec.json.decode(written.value, type=Unsubscribed).action == "close"
    assert unchanged.revision == written.revision  # the retry wrote nothing
    assert "stops copying alpha for tania" in first.stdout
    assert "already unsubscribed" in again.stdout


async def test_unsubscribe_from_master_not_subscribed_exits_2_and_writes_nothing(
    system: System,
) -> None:
    config = _two_masters(system.tmp_path)

    done = await _cli(system, config, "unsubscribe", "tania", "beta")
    keys = await _control_keys(system)

    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert "does not subscribe to beta" in done.stderr
    assert "alpha" in done.stderr
    assert unsubscribed_key("tania", "beta") not in keys


async def test_adopt_twice_with_same_request_id_adds_once(system: System) -> None:
    config = _two_masters(system.tmp_path)
    adopt = ("adopt", "tania", "alpha", "BTC/USD", "0.25", "--request-id", "upgrade-0001")

    first = await _cli(system, config, *adopt)
    again = await _cli(system, config, *adopt)
    holding = await Ledger(await system.js.key_value(bus.LEDGER_BUCKET)).read(
        holding_key("tania", "alpha", "BTC/USD")
    )

    assert (first.returncode, again.returncode) == (0, 0)
    assert holding.amount == Decimal("0.25")
    assert first.stdout.startswith("request upgrade-0001")
    assert "adopted" in first.stdout
    assert "already adopted" in again.stdout
    assert "reconciliation clips" in first.stderr  # not reconciled yet: told what would happen


@pytest.mark.parametrize("amount", ["-1", "0", "nan", "inf", "abc"])
def test_adopt_with_bad_amount_exits_2_with_one_line(amount: str, tmp_path: Path) -> None:
    config = _two_masters(tmp_path)

    done = run_cli(
        "adopt",
        "tania",
        "alpha",
        "BTC/USD",
        "--",
        amount,
        COPYTRADE_CONFIG=str(config),
        COPYTRADE_NATS_URL=unreachable_nats(),
    )

    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert "amount" in done.stderr
    assert "Traceback" not in done.stderr


def test_config_check_prints_warnings_and_exits_0(tmp_path: Path) -> None:
    data = config_data(paper_followers({"alice": 1}))
    data["signals"]["max_age_s"] = 10
    config = _write(tmp_path, data)

    done = run_cli("config", "check", str(config), "--secrets-dir", str(tmp_path), COPYTRADE_ACK_WAIT_S="30")

    assert done.returncode == 0
    assert done.stdout.startswith("ok:")
    assert [line.split(" ", 2)[:2] for line in done.stderr.splitlines()] == [
        ["warning:", "signals.max_age_s"]
    ]


def test_config_check_with_bad_environment_is_invalid_in_one_line(tmp_path: Path) -> None:
    config = _write(tmp_path, config_data(paper_followers({"alice": 1})))

    done = run_cli(
        "config", "check", str(config), "--secrets-dir", str(tmp_path), COPYTRADE_ACK_WAIT_S="soon"
    )

    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("invalid: environment")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", [["positions"], ["unsubscribe"], ["adopt"]])
def test_ledger_command_help_lists_its_environment(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    shown = capsys.readouterr().out

    assert exit_.value.code == 0
    assert "COPYTRADE_NATS_URL" in shown
    assert "COPYTRADE_CONFIG" in shown


async def _control_keys(system: System) -> list[str]:
    try:
        return list(await system.control.keys())
    except NoKeysError:  # an empty bucket
        return []
