"""Builds the right adapter for an account config: a dispatch table, one entry per venue kind."""

from __future__ import annotations

from collections.abc import Callable

from shared.config import AccountConfig, Credentials
from shared.errors import ConfigError
from shared.exchange.context import AdapterContext
from shared.exchange.paper import PaperAccount
from shared.exchange.port import ExchangeAccount
from shared.exchange.registry import VENUES, AdapterKind

Builder = Callable[[AccountConfig, Credentials | None, AdapterContext], ExchangeAccount]


def _paper(account: AccountConfig, _: Credentials | None, ctx: AdapterContext) -> ExchangeAccount:
    if ctx.paper_transport is None:
        raise ConfigError("paper accounts need a paper exchange (COPYTRADE_PAPER_VENUE)")
    return PaperAccount(account.id, ctx.paper_transport)


def _required(account: AccountConfig, credentials: Credentials | None) -> Credentials:
    if credentials is None:
        raise ConfigError(f"account {account.id}: {account.exchange} needs API credentials")
    return credentials


def _ccxt(account: AccountConfig, creds: Credentials | None, ctx: AdapterContext) -> ExchangeAccount:
    from shared.exchange.ccxt_adapter import ccxt_account  # ccxt is heavy: paper-only processes skip it

    return ccxt_account(account, _required(account, creds), ctx)


def _alpaca(account: AccountConfig, creds: Credentials | None, ctx: AdapterContext) -> ExchangeAccount:
    from shared.exchange.alpaca_adapter import AlpacaAccount

    return AlpacaAccount(account, _required(account, creds), ctx)


BY_KIND: dict[AdapterKind, Builder] = {"paper": _paper, "ccxt": _ccxt, "alpaca": _alpaca}
BUILDERS: dict[str, Builder] = {name: BY_KIND[v.kind] for name, v in VENUES.items()}


def build_account(
    account: AccountConfig, credentials: Credentials | None, ctx: AdapterContext
) -> ExchangeAccount:
    builder = BUILDERS.get(account.exchange)
    if builder is None:
        raise ConfigError(f"account {account.id}: exchange {account.exchange} has no adapter")
    return builder(account, credentials, ctx)
