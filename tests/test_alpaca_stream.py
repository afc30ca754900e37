"""Alpaca's trade_updates stream wakes the master (`AlpacaAccount.activity()`, port.Streaming):
the real adapter and alpaca-py against the emulator's stream on loopback, no mocks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from alpaca.trading.enums import TradeEvent
from alpaca.trading.models import TradeUpdate
from alpaca.trading.stream import TradingStream

from shared.config import AccountConfig, Credentials
from shared.errors import AuthError, CopytradeError
from shared.exchange.alpaca_adapter import AlpacaAccount
from shared.exchange.alpaca_stream import stream_url
from shared.exchange.context import AdapterContext
from shared.exchange.port import Activity, OrderCommand, Streaming
from tests.emulators.alpaca import AlpacaEmulator
from tests.emulators.state import Account
from tests.harness import eventually
from tests.secrets_scan import register

BTC = "BTC/USD"
KEY, SECRET = "ctstreamkey8Vq2", "ctstreamsecret5Jw7"
OTHER_KEY, OTHER_SECRET = "ctotherkey3Nx6", "ctothersecret9Tb4"
register(KEY, SECRET, OTHER_KEY, OTHER_SECRET)


class Feed:
    """What an `activity()` iteration has yielded so far, read in a task of its own."""

    def __init__(self, source: AsyncIterator[Activity]) -> None:
        self.items: list[Activity] = []
        self.at: list[float] = []  # monotonic time each item came
        self.error: CopytradeError | None = None
        self.task = asyncio.create_task(self._read(source))

    async def _read(self, source: AsyncIterator[Activity]) -> None:
        try:
            async for item in source:
                self.items.append(item)
                self.at.append(time.monotonic())
        except CopytradeError as exc:
            self.error = exc

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.wait({self.task})


@pytest.fixture
async def emulator() -> AsyncIterator[AlpacaEmulator]:
    emulator = AlpacaEmulator()
    await emulator.start()
    emulator.state.add_account(KEY, SECRET, {"USD": Decimal(100_000), "BTC": Decimal(1)})
    emulator.state.add_account(OTHER_KEY, OTHER_SECRET, {"USD": Decimal(100_000)})
    yield emulator
    await emulator.stop()


@pytest.fixture
def venue_account(emulator: AlpacaEmulator) -> Account:
    return emulator.state.accounts[KEY]


@pytest.fixture
async def account(emulator: AlpacaEmulator) -> AsyncIterator[AlpacaAccount]:
    ctx = AdapterContext(http_timeout_s=5.0, rate_limit=False)
    config = AccountConfig(id="master", exchange="alpaca", base_url=emulator.url)
    account = AlpacaAccount(config, Credentials(KEY, SECRET), ctx)
    yield account
    await account.close()
    await ctx.close()


@pytest.fixture
async def feed(account: AlpacaAccount, venue_account: Account) -> AsyncIterator[Feed]:
    """The account's activity, once the emulator has it subscribed."""
    feed = Feed(account.activity())
    await eventually(lambda: bool(venue_account.listeners), timeout=5)
    yield feed
    await feed.stop()


def _resting_buy(client_order_id: str) -> OrderCommand:
    return OrderCommand(
        client_order_id=client_order_id,
        symbol=BTC,
        side="buy",
        size=Decimal("0.01"),
        size_type="base",
        reference_price=Decimal(40_000),
        limit_price=Decimal(40_000),
        time_in_force="gtc",
    )


def test_alpaca_account_is_streaming(account: AlpacaAccount) -> None:
    assert isinstance(account, Streaming)


def test_stream_url_is_alpacas_or_the_base_urls_host() -> None:
    assert stream_url(None, paper=True) == "wss://paper-api.alpaca.markets/stream"
    assert stream_url(None, paper=False) == "wss://api.alpaca.markets/stream"
    assert stream_url("http://127.0.0.1:8080", paper=True) == "ws://127.0.0.1:8080/stream"
    assert stream_url("https://proxy.example/v2", paper=False) == "wss://proxy.example/stream"


async def test_fill_made_by_hand_yields_fill(
    emulator: AlpacaEmulator, venue_account: Account, feed: Feed
) -> None:
    emulator.state.fill(venue_account, BTC, "buy", cost=Decimal(500))  # on Alpaca's site

    await eventually(lambda: "fill" in feed.items, timeout=5)

    assert feed.items == ["order", "fill"]  # new, then fill


async def test_partial_fills_of_a_resting_order_yield_fill_each(
    emulator: AlpacaEmulator, venue_account: Account, feed: Feed
) -> None:
    order = emulator.state.place_resting(
        venue_account, BTC, "sell", Decimal("0.5"), limit_price=Decimal(50_000)
    )
    emulator.state.fill_resting(venue_account, order, Decimal("0.2"))
    emulator.state.fill_resting(venue_account, order, Decimal("0.3"))

    await eventually(lambda: feed.items.count("fill") == 2, timeout=5)

    assert feed.items == ["order", "fill", "fill"]  # new, partial_fill, fill


async def test_resting_order_placed_replaced_and_cancelled_yields_order(
    account: AlpacaAccount, feed: Feed
) -> None:
    await account.place_order(_resting_buy("stream-rest-1"))
    amended = await account.amend_order("stream-rest-1", BTC, price=Decimal(39_000))
    await account.cancel_order(amended.client_order_id, BTC)

    await eventually(lambda: len(feed.items) >= 4, timeout=5)

    assert feed.items == ["order"] * 4  # new; new (its replacement) and replaced; canceled


async def test_another_accounts_events_are_not_yielded(
    emulator: AlpacaEmulator, venue_account: Account, feed: Feed
) -> None:
    other = emulator.state.accounts[OTHER_KEY]
    emulator.state.fill(other, BTC, "buy", cost=Decimal(500))
    emulator.state.place_resting(other, BTC, "buy", Decimal("0.01"), limit_price=Decimal(40_000))
    emulator.state.fill(venue_account, BTC, "buy", cost=Decimal(100))  # ours: the marker

    await eventually(lambda: "fill" in feed.items, timeout=5)

    assert feed.items == ["order", "fill"]  # the marker's alone


async def test_stream_comes_back_after_a_drop_and_yields_once(
    emulator: AlpacaEmulator, account: AlpacaAccount, venue_account: Account, feed: Feed
) -> None:
    await emulator.stream.drop()
    await eventually(lambda: len(feed.items) >= 2, timeout=5)
    after_reconnect = list(feed.items)
    await eventually(lambda: bool(venue_account.listeners), timeout=5)
    emulator.state.fill(venue_account, BTC, "buy", cost=Decimal(100))
    await eventually(lambda: len(feed.items) >= 4, timeout=5)

    assert after_reconnect == ["fill", "order"]
    assert feed.items == ["fill", "order", "order", "fill"]
    assert emulator.stream.connections == 2
    assert account._stream.reconnects == 1


async def test_close_ends_the_activity(account: AlpacaAccount, feed: Feed) -> None:
    await account.close()

    await asyncio.wait_for(feed.task, timeout=5)

    assert feed.task.done()
    assert feed.error is None


async def test_refused_key_is_an_auth_error_without_the_secret(emulator: AlpacaEmulator) -> None:
    ctx = AdapterContext(http_timeout_s=5.0, rate_limit=False)
    config = AccountConfig(id="master", exchange="alpaca", base_url=emulator.url)
    account = AlpacaAccount(config, Credentials(KEY, "not-" + SECRET), ctx)
    feed = Feed(account.activity())

    await asyncio.wait_for(feed.task, timeout=5)
    await account.close()
    await ctx.close()

    assert isinstance(feed.error, AuthError)
    assert "refused" in str(feed.error)
    assert SECRET not in f"{feed.error!s} {feed.error!r}"
    assert KEY not in f"{feed.error!s} {feed.error!r}"
    assert feed.items == []


async def test_alpaca_py_trading_stream_reads_the_emulator(
    emulator: AlpacaEmulator, venue_account: Account
) -> None:
    """The emulator speaks the stream as alpaca-py's own client reads it."""
    updates: list[TradeUpdate] = []

    async def heard(update: TradeUpdate) -> None:
        updates.append(update)

    stream = TradingStream(KEY, SECRET, url_override=stream_url(emulator.url, paper=True))
    stream.subscribe_trade_updates(heard)
    running = asyncio.create_task(stream._run_forever())  # type: ignore[no-untyped-call]
    await eventually(lambda: bool(venue_account.listeners), timeout=5)
    order = emulator.state.place_resting(
        venue_account, BTC, "buy", Decimal("0.01"), limit_price=Decimal(40_000)
    )
    emulator.state.fill_resting(venue_account, order, Decimal("0.004"))
    emulator.state.cancel(order)
    await eventually(lambda: len(updates) >= 3, timeout=5)
    running.cancel()
    await asyncio.wait({running})
    await stream.close()

    assert [TradeEvent(u.event) for u in updates] == [
        TradeEvent.NEW,
        TradeEvent.PARTIAL_FILL,
        TradeEvent.CANCELED,
    ]
    assert {str(u.order.id) for u in updates} == {order.order_id}
    assert (updates[1].qty, updates[1].price) == (0.004, 40_000.0)


async def test_fill_is_yielded_well_within_a_poll(
    emulator: AlpacaEmulator, venue_account: Account, feed: Feed
) -> None:
    started = time.monotonic()
    emulator.state.fill(venue_account, BTC, "buy", cost=Decimal(100))
    await eventually(lambda: "fill" in feed.items, timeout=5)

    assert feed.at[feed.items.index("fill")] - started < 0.25  # the fast poll is 0.5 s


async def test_subscribed_only_while_a_subscription_is_open(account: AlpacaAccount) -> None:
    before = account.subscribed
    feed = Feed(account.activity())
    await eventually(lambda: account.subscribed, timeout=5)
    await account.close()
    await asyncio.wait_for(feed.task, timeout=5)

    assert not before  # never iterated
    assert not account.subscribed  # closed
