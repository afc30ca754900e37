"""Kraken's private WebSocket stream as the master's wake-up (`Streaming.activity`): the real
ccxt and ccxt.pro clients against the Kraken emulator on loopback, no mocks. A fill yields a
`Fill` equal to the one the REST trade history reads (its trade id included), and nothing else
for a market order; a resting order's changes "order"; another account's activity is not
heard; a dropped socket comes back and yields a bare "fill" and "order" once; a refused token
is an AuthError that names no secret."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal

import msgspec
import pytest

from shared.config import AccountConfig, Credentials
from shared.errors import AuthError
from shared.exchange.context import AdapterContext
from shared.exchange.factory import build_account
from shared.exchange.port import Activity, ExchangeAccount, Fill, Streaming
from tests.emulators.kraken import KrakenEmulator
from tests.emulators.state import Order
from tests.harness import eventually
from tests.secrets_scan import register

BTC = "BTC/USD"
KEYS = {"master": "ksk-master-7Tg2Qw", "other": "ksk-other-3Jd8Lm"}
SECRETS = {name: base64.b64encode(f"kss-{name}-secret-9Vx4".encode() * 2).decode() for name in KEYS}
WRONG_SECRET = base64.b64encode(b"not-the-kraken-secret" * 2).decode()
register(*KEYS.values(), *SECRETS.values())


@dataclass
class Listener:
    """An account's activity(), iterated by a task of its own into `heard`."""

    account: ExchangeAccount
    heard: list[Activity] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    @property
    def kinds(self) -> list[str]:
        """What was heard, a fill given whole as "Fill"."""
        return ["Fill" if isinstance(a, Fill) else a for a in self.heard]

    async def _run(self) -> None:
        assert isinstance(self.account, Streaming)
        async for item in self.account.activity():
            self.heard.append(item)


@dataclass
class Kraken:
    emulator: KrakenEmulator
    ctx: AdapterContext
    built: list[Listener] = field(default_factory=list)

    def account(self, name: str, secret: str | None = None) -> ExchangeAccount:
        config = AccountConfig(id=name, exchange="kraken", base_url=self.emulator.url)
        return build_account(config, Credentials(KEYS[name], secret or SECRETS[name]), self.ctx)

    async def listen(self, name: str) -> Listener:
        """The account's stream, subscribed."""
        listener = Listener(self.account(name))
        listener.task = asyncio.create_task(listener._run())
        self.built.append(listener)
        await eventually(lambda: self.emulator.streams.subscribed(KEYS[name]) == 1, timeout=5)
        return listener

    def fill(self, name: str) -> Order:
        """A market order placed by hand on Kraken's site."""
        return self.emulator.fill_by_hand(KEYS[name], BTC, "buy", Decimal("0.01"))

    def resting(self, name: str) -> Order:
        """A resting limit order placed by hand on Kraken's site."""
        state = self.emulator.state
        order = state.place_resting(
            state.accounts[KEYS[name]], BTC, "buy", Decimal("0.01"), limit_price=Decimal(40000)
        )
        order.rename(f"OHAND{len(state.accounts[KEYS[name]].orders):02d}-KR4KN-000001")
        return order


@pytest.fixture
async def kraken() -> AsyncIterator[Kraken]:
    emulator = KrakenEmulator()
    await emulator.start()
    for name, key in KEYS.items():
        emulator.state.add_account(key, SECRETS[name], {"USD": Decimal(100_000), "BTC": Decimal(1)})
    venue = Kraken(emulator, AdapterContext(http_timeout_s=5.0, rate_limit=False))
    yield venue
    for listener in venue.built:
        await listener.account.close()
        if listener.task is not None:
            listener.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener.task
    await venue.ctx.close()
    await emulator.stop()


def test_only_a_venue_with_a_stream_builds_a_streaming_account() -> None:
    ctx = AdapterContext()
    creds = Credentials("k", "s")

    kraken = build_account(AccountConfig(id="a", exchange="kraken"), creds, ctx)
    binance = build_account(AccountConfig(id="b", exchange="binance"), creds, ctx)

    assert isinstance(kraken, Streaming)
    assert not isinstance(binance, Streaming)


async def test_fill_by_hand_is_heard_as_one_fill(kraken: Kraken) -> None:
    master = await kraken.listen("master")

    kraken.fill("master")
    await eventually(lambda: len(master.heard) >= 1, timeout=5)
    kraken.resting("master")  # heard after the fill's reports, were any of them an "order"
    await eventually(lambda: len(master.heard) >= 3, timeout=5)

    # pending_new, new, trade, filled of a market order: the trade only
    assert master.kinds == ["Fill", "order", "order"]


async def test_streamed_fill_is_the_fill_the_trade_history_reads(kraken: Kraken) -> None:
    master = await kraken.listen("master")
    order = kraken.fill("master")
    await eventually(lambda: len(master.heard) >= 1, timeout=5)

    streamed = master.heard[0]
    read = await master.account.fills_since(order.created - 1)

    assert isinstance(streamed, Fill)
    assert len(read) == 1
    assert streamed.trade_id == read[0].trade_id == order.trade_id
    assert msgspec.structs.replace(streamed, at=0.0) == msgspec.structs.replace(read[0], at=0.0)
    assert streamed.at == pytest.approx(read[0].at, abs=0.001)


async def test_resting_order_placed_amended_and_cancelled_is_heard_as_orders(kraken: Kraken) -> None:
    master = await kraken.listen("master")
    account = kraken.emulator.state.accounts[KEYS["master"]]

    order = kraken.resting("master")
    await eventually(lambda: len(master.heard) >= 2, timeout=5)
    placed = list(master.heard)
    kraken.emulator.state.amend(account, order, price=Decimal(41000), size=None)
    await eventually(lambda: len(master.heard) >= 3, timeout=5)
    amended = list(master.heard)
    kraken.emulator.state.cancel(order)
    await eventually(lambda: len(master.heard) >= 4, timeout=5)

    assert placed == ["order", "order"]
    assert amended == ["order", "order", "order"]
    assert master.heard == ["order"] * 4


async def test_resting_order_filled_in_part_is_heard_as_a_fill(kraken: Kraken) -> None:
    master = await kraken.listen("master")
    account = kraken.emulator.state.accounts[KEYS["master"]]
    order = kraken.resting("master")
    await eventually(lambda: len(master.heard) >= 2, timeout=5)

    kraken.emulator.state.fill_resting(account, order, Decimal("0.004"))
    await eventually(lambda: len(master.heard) >= 3, timeout=5)

    assert master.kinds[:3] == ["order", "order", "Fill"]
    assert set(master.kinds[3:]) <= {"order"}  # the resting order's fill changes it


async def test_another_accounts_activity_is_not_heard(kraken: Kraken) -> None:
    master = await kraken.listen("master")
    other = await kraken.listen("other")

    kraken.fill("other")
    kraken.resting("other")
    await eventually(lambda: len(other.heard) >= 3, timeout=5)
    kraken.fill("master")  # heard after the other's, were they sent to the master too
    await eventually(lambda: "Fill" in master.kinds, timeout=5)

    assert master.kinds == ["Fill"]
    assert other.kinds == ["Fill", "order", "order"]


async def test_stream_comes_back_after_a_drop_and_yields_fill_and_order_once(kraken: Kraken) -> None:
    master = await kraken.listen("master")

    await kraken.emulator.streams.drop()
    await eventually(lambda: kraken.emulator.streams.subscriptions == 2, timeout=10)
    await eventually(lambda: len(master.heard) >= 2, timeout=5)
    after_drop = list(master.heard)
    kraken.fill("master")
    await eventually(lambda: len(master.heard) >= 3, timeout=5)

    assert after_drop == ["fill", "order"]
    assert master.kinds == ["fill", "order", "Fill"]
    assert kraken.emulator.streams.subscribed(KEYS["master"]) == 1
    assert len(kraken.emulator.streams.tokens(KEYS["master"])) == 2  # a fresh token per connection


async def test_refused_token_is_an_auth_error_naming_no_secret(kraken: Kraken) -> None:
    kraken.emulator.streams.refuse(KEYS["master"])
    account = kraken.account("master")
    assert isinstance(account, Streaming)

    with pytest.raises(AuthError) as refused:
        async with asyncio.timeout(10):
            await anext(account.activity())
    await account.close()

    text = str(refused.value)
    tokens = kraken.emulator.streams.tokens(KEYS["master"])
    assert "ESession:Invalid session" in text
    assert len(tokens) == 1
    assert not [s for s in (KEYS["master"], SECRETS["master"], *tokens) if s in text]


async def test_refused_credentials_are_an_auth_error_naming_no_secret(kraken: Kraken) -> None:
    account = kraken.account("master", secret=WRONG_SECRET)
    assert isinstance(account, Streaming)

    with pytest.raises(AuthError) as refused:
        async with asyncio.timeout(10):
            await anext(account.activity())
    await account.close()

    text = str(refused.value)
    assert not [s for s in (KEYS["master"], SECRETS["master"], WRONG_SECRET) if s in text]
    assert kraken.emulator.streams.tokens(KEYS["master"]) == []


async def test_closing_the_account_ends_its_stream(kraken: Kraken) -> None:
    master = await kraken.listen("master")
    assert master.task is not None

    await master.account.close()
    await eventually(lambda: kraken.emulator.streams.subscribed(KEYS["master"]) == 0, timeout=5)
    async with asyncio.timeout(5):
        await master.task

    assert master.task.exception() is None
    assert master.heard == []


async def test_subscribed_only_while_a_subscription_is_open(kraken: Kraken) -> None:
    idle = kraken.account("other")
    assert isinstance(idle, Streaming)
    master = await kraken.listen("master")
    account = master.account
    assert isinstance(account, Streaming)
    await eventually(lambda: account.subscribed, timeout=5)

    kraken.emulator.streams.refuse(KEYS["master"])  # its next subscription is refused
    await kraken.emulator.streams.drop()
    assert master.task is not None
    with pytest.raises(AuthError):
        await asyncio.wait_for(master.task, 10)
    kraken.built.remove(master)

    assert not idle.subscribed  # never iterated
    assert not account.subscribed  # dropped, then refused
    await idle.close()
    await account.close()
