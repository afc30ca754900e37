"""Several masters: each follower copies the masters it subscribes to, with the subscription's
sizing; one master's signals never touch another master's ledger."""

from __future__ import annotations

from decimal import Decimal

import pytest
import yaml

from shared import bus
from shared.config import parse_config
from shared.errors import ConfigError
from shared.ledger import Ledger, holding_key
from tests.harness import System, config_data, trade


def _config(**follower: object) -> object:
    data = config_data(
        [
            {"id": "tania", "exchange": "paper", **follower},
            {"id": "solo", "exchange": "paper", "subscriptions": [{"master": "beta"}]},
        ]
    )
    del data["master"]
    data["masters"] = [{"id": "alpha", "exchange": "paper"}, {"id": "beta", "exchange": "paper"}]
    return parse_config(yaml.safe_dump(data))


async def test_one_masters_exit_sells_only_its_share(system: System) -> None:
    config = _config(
        subscriptions=[
            {"master": "alpha"},
            {"master": "beta", "sizing": {"mode": "multiplier", "multiplier": "0.5"}},
        ]
    )
    for account, cash in {"alpha": 10_000, "beta": 10_000, "tania": 1_000, "solo": 1_000}.items():
        await system.fund(account, cash)
    await system.start_copier(config)  # type: ignore[arg-type]
    alpha = await system.start_master(config, master_id="alpha")  # type: ignore[arg-type]
    beta = await system.start_master(config, master_id="beta")  # type: ignore[arg-type]
    ledger = Ledger(await system.js.key_value(bus.LEDGER_BUCKET))

    a_buy = await alpha.trade(trade(base="0.02"))
    a_results = await system.wait_results(a_buy.signal_id, 1)
    b_buy = await beta.trade(trade(base="0.02"))
    b_results = await system.wait_results(b_buy.signal_id, 2)
    a_exit = await alpha.trade(trade(side="sell", base="0.02"))
    exit_results = await system.wait_results(a_exit.signal_id, 1)
    holdings = {m: (await ledger.read(holding_key("tania", m, "BTC/USD"))).amount for m in ("alpha", "beta")}

    assert set(a_results) == {"tania"}
    assert set(exit_results) == {"tania"}
    assert set(b_results) == {"tania", "solo"}
    assert b_results["tania"].size == Decimal("0.01000000")  # 0.5 × beta's 0.02
    assert exit_results["tania"].size == a_results["tania"].filled_base  # alpha's share, all
    assert holdings == {"alpha": Decimal(0), "beta": b_results["tania"].filled_base}
    assert exit_results["tania"].master_id == "alpha"


@pytest.mark.parametrize(
    ("follower", "message"),
    [
        ({}, "subscriptions: required with several masters"),
        ({"subscriptions": [{"master": "gamma"}]}, "`gamma` is not a configured master"),
        ({"subscriptions": [{"master": "alpha"}, {"master": "alpha"}]}, "a master is listed twice"),
        ({"id": "alpha", "subscriptions": [{"master": "beta"}]}, "is a master's id"),
    ],
)
def test_subscription_mistakes_are_refused_naming_the_field(
    follower: dict[str, object], message: str
) -> None:
    data = config_data([{"id": "tania", "exchange": "paper", **follower}])
    del data["master"]
    data["masters"] = [{"id": "alpha", "exchange": "paper"}, {"id": "beta", "exchange": "paper"}]

    with pytest.raises(ConfigError, match=message):
        parse_config(yaml.safe_dump(data))


def test_master_and_masters_together_are_refused() -> None:
    data = config_data([], masters=[{"id": "beta", "exchange": "paper"}])

    with pytest.raises(ConfigError, match="either `master`"):
        parse_config(yaml.safe_dump(data))
