"""Alpaca answers an order with pending_new: the adapter reads the outcome back before reporting.

Real Alpaca's submit reply almost never shows the fill; without the read-back every Alpaca copy
would be recorded as submitted, its filled amount unknown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import pytest_asyncio

from shared.config import AccountConfig, Credentials
from shared.exchange.alpaca_adapter import FILL_READS_S, AlpacaAccount
from shared.exchange.context import AdapterContext
from shared.exchange.factory import build_account
from shared.exchange.port import ExchangeAccount, OrderCommand
from tests.contract.conftest import HTTP_TIMEOUT_S, KEY, SECRET
from tests.emulators.alpaca import AlpacaEmulator

PRICE = Decimal(45000)


@dataclass
class Alpaca:
    emulator: AlpacaEmulator
    account: ExchangeAccount


@pytest_asyncio.fixture
async def alpaca() -> AsyncIterator[Alpaca]:
    emulator = AlpacaEmulator()
    emulator.fill_on_submit_reply = False  # as real Alpaca: the submit reply says pending_new
    emulator.state.add_account(KEY, SECRET, {"USD": Decimal(10000)})
    ctx = AdapterContext(http_timeout_s=HTTP_TIMEOUT_S)  # with its rate limiter, as in production
    async with emulator:
        account = build_account(
            AccountConfig(id="follower-1", exchange="alpaca", base_url=emulator.url),
            Credentials(KEY, SECRET, None),
            ctx,
        )
        try:
            yield Alpaca(emulator, account)
        finally:
            await account.close()
            await ctx.close()


def buy(label: str) -> OrderCommand:
    return OrderCommand(
        client_order_id=f"ct-{label}",
        symbol="BTC/USD",
        side="buy",
        size=Decimal("0.001"),
        size_type="base",
        reference_price=PRICE,
    )


async def test_pending_new_order_is_reported_with_the_fill_read_back(alpaca: Alpaca) -> None:
    ack = await alpaca.account.place_order(buy("read-back"))

    assert (ack.status, ack.filled_base, ack.avg_price) == ("filled", Decimal("0.001"), PRICE)
    assert ack.accepted_at is not None
    assert isinstance(alpaca.account, AlpacaAccount)
    assert alpaca.account.rate_limit_waits == 0


async def test_order_shown_working_for_a_while_is_read_until_it_fills(alpaca: Alpaca) -> None:
    alpaca.emulator.working_reads = len(FILL_READS_S) - 1

    ack = await alpaca.account.place_order(buy("working"))

    assert (ack.status, ack.filled_base) == ("filled", Decimal("0.001"))


async def test_order_still_working_after_the_last_read_is_submitted_and_placed_once(
    alpaca: Alpaca,
) -> None:
    alpaca.emulator.working_reads = len(FILL_READS_S)  # a stock order waiting for the open

    ack = await alpaca.account.place_order(buy("waiting"))
    later = await alpaca.account.find_order("ct-waiting", "BTC/USD")

    assert (ack.status, ack.filled_base, ack.accepted_at is not None) == ("submitted", None, True)
    assert later is not None
    assert later.status == "filled"
    assert len(alpaca.emulator.state.accounts[KEY].orders) == 1
