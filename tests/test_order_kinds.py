"""The exchange port's order kinds: what a command's fields make of it, and which kinds each
venue places natively (the capability table is data, one entry per venue)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from shared.errors import InvalidOrder
from shared.exchange import ccxt_orders
from shared.exchange.alpaca_adapter import CRYPTO_CAPABILITIES, STOCK_CAPABILITIES
from shared.exchange.paper import CAPABILITIES as PAPER_CAPABILITIES
from shared.exchange.port import (
    RESTING_KINDS,
    NotNative,
    OrderCommand,
    amended_client_id,
    kind_of,
    resting_kind,
)
from shared.exchange.venues import VENUES


def command(**fields: Any) -> OrderCommand:
    base: dict[str, Any] = {
        "client_order_id": "c1",
        "symbol": "BTC/USD",
        "side": "sell",
        "size": Decimal("0.01"),
        "size_type": "base",
        "reference_price": Decimal(45000),
    }
    return OrderCommand(**base | fields)


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({}, "market"),
        ({"limit_price": Decimal(44000)}, "limit_ioc"),
        ({"limit_price": Decimal(44000), "time_in_force": "gtc"}, "limit"),
        ({"trigger": "stop_loss", "trigger_price": Decimal(44000)}, "stop_loss"),
        (
            {"trigger": "stop_loss", "trigger_price": Decimal(44000), "limit_price": Decimal(43900)},
            "stop_loss_limit",
        ),
        ({"trigger": "take_profit", "trigger_price": Decimal(46000)}, "take_profit"),
        (
            {"trigger": "take_profit", "trigger_price": Decimal(46000), "limit_price": Decimal(45900)},
            "take_profit_limit",
        ),
    ],
)
def test_kind_of_reads_the_command_fields(fields: dict[str, Any], kind: str) -> None:
    assert kind_of(command(**fields)) == kind
    assert resting_kind(command(**fields)) == (kind if kind in RESTING_KINDS else None)


@pytest.mark.parametrize(
    "fields",
    [
        {"trigger": "stop_loss"},  # no trigger price
        {"trigger_price": Decimal(44000)},  # no trigger
        {"time_in_force": "gtc"},  # a resting order without a limit price
        {"limit_price": Decimal(44000), "time_in_force": "gtc", "size_type": "quote"},
    ],
)
def test_kind_of_contradicting_fields_is_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidOrder):
        kind_of(command(**fields))


def test_default_command_keeps_todays_market_and_ioc_orders() -> None:
    market, ioc = command(), command(limit_price=Decimal(44000), size_type="quote")

    assert (kind_of(market), kind_of(ioc)) == ("market", "limit_ioc")


def test_not_native_is_an_invalid_order_with_its_own_reason() -> None:
    assert issubclass(NotNative, InvalidOrder)
    assert NotNative.reason_code != InvalidOrder.reason_code


def test_capability_table_covers_every_ccxt_venue() -> None:
    assert set(ccxt_orders.RESTING) == set(VENUES)


def test_every_venue_rests_limit_orders_and_names_only_resting_kinds() -> None:
    tables = [r.capabilities for r in ccxt_orders.RESTING.values()] + [
        CRYPTO_CAPABILITIES,
        STOCK_CAPABILITIES,
        PAPER_CAPABILITIES,
    ]

    assert all("limit" in c.native and c.native <= RESTING_KINDS for c in tables)


def test_amended_client_id_is_derived_and_fits_every_venue() -> None:
    first = amended_client_id("c1", Decimal(44100), None)

    assert first == amended_client_id("c1", Decimal(44100), None)
    assert first != amended_client_id("c1", Decimal(44200), None)
    assert len(first) == 32
    assert first.isalnum()


OKX_ALGO = {"ordType": "conditional", "algoId": "7001", "slTriggerPx": "", "tpTriggerPx": ""}


@pytest.mark.parametrize(
    ("info", "kind"),
    [
        (OKX_ALGO | {"slTriggerPx": "44000", "slOrdPx": "-1"}, "stop_loss"),
        (OKX_ALGO | {"slTriggerPx": "44000", "slOrdPx": "43800"}, "stop_loss_limit"),
        (OKX_ALGO | {"tpTriggerPx": "46000", "tpOrdPx": "-1"}, "take_profit"),
        (OKX_ALGO | {"tpTriggerPx": "46000", "tpOrdPx": "45900"}, "take_profit_limit"),
        ({"ordType": "limit", "algoId": ""}, "limit"),
        ({"ordType": "limit", "algoId": "7001"}, None),  # placed by a triggered algo order
        ({"ordType": "ioc", "algoId": ""}, None),
    ],
)
def test_okx_resting_kind_reads_algo_orders_and_skips_what_they_placed(
    info: dict[str, str], kind: str | None
) -> None:
    assert ccxt_orders.RESTING["okx"].kind_of({"info": info}) == kind
