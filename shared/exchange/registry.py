"""The one venue table: every venue copytrade trades on, what kind of adapter serves it, and
the few facts about it that code outside the adapters needs. Every list of venues derives
from it (config validation, the adapter factory, credential names)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

AdapterKind = Literal["paper", "ccxt", "alpaca"]


@dataclass(frozen=True)
class Venue:
    name: str
    kind: AdapterKind
    needs_credentials: bool = True
    # `<EXCHANGE>_USER_<NAME>_PAPER` may switch an account between paper and live trading
    paper_switch: bool = False


VENUES: dict[str, Venue] = {
    v.name: v
    for v in (
        Venue("paper", "paper", needs_credentials=False),
        Venue("kraken", "ccxt"),
        Venue("coinbase", "ccxt"),
        Venue("binance", "ccxt"),
        Venue("okx", "ccxt"),
        Venue("alpaca", "alpaca", paper_switch=True),
    )
}


def venue(name: str) -> Venue:
    """The venue called `name` (config validation guarantees it exists)."""
    return VENUES[name]
