"""Builds the right adapter for an account config: a dispatch table, one entry per venue kind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from shared.config import AccountConfig, Credentials
from shared.errors import ConfigError
from shared.exchange.paper import PaperAccount, Transport
from shared.exchange.port import ExchangeAccount


@dataclass
class AdapterContext:
    """What adapters of one process share: the paper transport, per-venue shared resources."""

    paper_transport: Transport | None = None
    shared: dict[str, object] = field(default_factory=dict)  # per-venue markets, HTTP sessions


Builder = Callable[[AccountConfig, Credentials | None, AdapterContext], ExchangeAccount]


def _paper(account: AccountConfig, _: Credentials | None, ctx: AdapterContext) -> ExchangeAccount:
    if ctx.paper_transport is None:
        raise ConfigError("paper accounts need a paper exchange (COPYTRADE_PAPER_VENUE)")
    return PaperAccount(account.id, ctx.paper_transport)


BUILDERS: dict[str, Builder] = {"paper": _paper}


def build_account(
    account: AccountConfig, credentials: Credentials | None, ctx: AdapterContext
) -> ExchangeAccount:
    builder = BUILDERS.get(account.exchange)
    if builder is None:
        raise ConfigError(f"account {account.id}: exchange {account.exchange} has no adapter")
    return builder(account, credentials, ctx)
