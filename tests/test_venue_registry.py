"""One venue table: the config's venue names, the factory and the ccxt venue data agree."""

from __future__ import annotations

from typing import get_args

from shared.config import ExchangeName
from shared.exchange.factory import BUILDERS
from shared.exchange.registry import VENUES
from shared.exchange.venues import VENUES as CCXT_VENUES


def test_every_configurable_venue_has_one_entry_and_a_builder() -> None:
    assert set(get_args(ExchangeName)) == set(VENUES) == set(BUILDERS)


def test_ccxt_venues_are_exactly_the_ccxt_entries_of_the_table() -> None:
    assert {name for name, v in VENUES.items() if v.kind == "ccxt"} == set(CCXT_VENUES)
