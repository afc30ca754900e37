"""Fills by hand published from Kraken's private stream without a REST read (issue 15 item 2,
services.master.streamed): a real nats-server, the Kraken emulator, the real ccxt and ccxt.pro
clients, the master's own watchers and relay running.

- The first streamed fill is published by a REST poll, which finds the stream's id in the trade
  history; later fills go out with no TradesHistory and no Balance call between the fill and
  its signal, each once, with the master's base held before it.
- A stream whose ids are not the trade history's never publishes a fill itself and never
  publishes one twice, even when its ids change after they were confirmed.
- After the stream reconnects (it may have missed a fill), the fills and the master's figures
  are read again by REST before a fill is published from the stream.
- The book of the master's figures: a fill that may be in the balances read, or one that came
  while they were being read, leaves the figures unknown rather than counted twice.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal

import msgspec
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from services.master.metrics import MasterMetrics
from services.master.order_watch import OrderWatcher
from services.master.stream import relay
from services.master.streamed import Book, account_figures
from services.master.watcher import FillWatcher
from shared import bus
from shared.config import MasterConfig, SecretSource
from shared.exchange.ccxt_adapter import CcxtAccount
from shared.exchange.context import AdapterContext
from shared.exchange.factory import build_account
from shared.exchange.port import ExchangeAccount, Fill
from shared.messages import TradeReply, TradeRequest, TradeSignal
from shared.signing import SignalSigner
from tests.emulators.kraken import KrakenEmulator
from tests.emulators.state import Account, Order
from tests.harness import (
    TEST_SIGNING_SEED,
    System,
    eventually,
    make_config,
    master_service,
    published_signals,
)
from tests.secrets_scan import register

BTC = "BTC/USD"
MASTER_KEY = "fake-key-streamfills-4Rt8"
MASTER_SECRET = base64.b64encode(b"fake-secret-streamfills-Hn6q" * 2).decode()
SECRETS = {"KRAKEN_MASTER_API_KEY": MASTER_KEY, "KRAKEN_MASTER_API_SECRET": MASTER_SECRET}
_requests = msgspec.json.Encoder(decimal_format="string")
BALANCE = "BalanceEx"  # Kraken's balances, as ccxt reads them


@dataclass
class Calls:
    """The private calls the emulator answered, in order (a middleware)."""

    methods: list[str] = field(default_factory=list)

    @web.middleware
    async def record(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path.startswith("/0/private/"):
            self.methods.append(request.path.rsplit("/", 1)[1])
        return await handler(request)


@dataclass
class Kraken:
    emulator: KrakenEmulator
    account: Account
    calls: Calls
    build: Callable[[bool], ExchangeAccount]
    me: MasterConfig

    def by_hand(self, side: str, size: str) -> Order:
        """A market order filled on Kraken's site."""
        return self.emulator.fill_by_hand(MASTER_KEY, BTC, side, Decimal(size))


@dataclass
class Master:
    fills: FillWatcher
    tasks: list[asyncio.Task[None]]
    registry: CollectorRegistry
    account: ExchangeAccount

    def metric(self, name: str) -> float:
        value = self.registry.get_sample_value(name)
        assert value is not None, name
        return value


@pytest.fixture
async def kraken() -> AsyncIterator[Kraken]:
    emulator = KrakenEmulator()
    calls = Calls()
    emulator.app.middlewares.append(calls.record)
    await emulator.start()
    register(MASTER_KEY, MASTER_SECRET)
    account = emulator.state.add_account(
        MASTER_KEY, MASTER_SECRET, {"USD": Decimal(100_000), "BTC": Decimal(2)}
    )
    contexts = {limited: AdapterContext(http_timeout_s=5.0, rate_limit=limited) for limited in (False, True)}
    me = make_config([], {"id": "master", "exchange": "kraken", "base_url": emulator.url}).master_named(None)
    built: list[ExchangeAccount] = []

    def build(rate_limit: bool = False) -> ExchangeAccount:
        """The master's account; with Kraken's rate limits (`rate_limit`), else none."""
        credentials = SecretSource(None, SECRETS).credentials(me, "MASTER")
        built.append(build_account(me, credentials, contexts[rate_limit]))
        return built[-1]

    yield Kraken(emulator, account, calls, build, me)
    for one in built:
        await one.close()
    for ctx in contexts.values():
        await ctx.close()
    await emulator.stop()


@pytest.fixture
async def master(system: System, kraken: Kraken, request: pytest.FixtureRequest) -> AsyncIterator[Master]:
    """The master service with both watchers and the relay running, as `services.master` runs
    them: watchers that poll only when woken (every fill below is the stream's doing), without
    a rate limiter; parametrized `rate_limit=True`, Kraken's rate limits and the default
    interval of the fill watcher's loop."""
    rate_limit = bool(getattr(request, "param", False))
    account = kraken.build(rate_limit)
    interval_s = 2.0 if rate_limit else 3600.0
    nc = await system.connect()
    me = kraken.me
    registry = CollectorRegistry()
    metrics = MasterMetrics(registry, me.id)
    service, published = await master_service(
        nc, account, me, metrics, signer=SignalSigner(TEST_SIGNING_SEED)
    )
    fills = FillWatcher(
        account=account, config=me, kv=published, master=service, figures_settle_s=0.0, metrics=metrics
    )
    orders = OrderWatcher(tracker=service.tracker, account=account, slow_s=3600.0, metrics=metrics)
    await fills.poll()  # the cursor begins now
    tasks = [
        asyncio.create_task(fills.run(interval_s)),
        asyncio.create_task(orders.run()),
        asyncio.create_task(relay(account, fills, orders)),  # type: ignore[arg-type]
    ]
    await eventually(lambda: fills.streamed(), timeout=5)
    yield Master(fills, tasks, registry, account)
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)
    assert all(t.cancelled() for t in tasks)  # none ended on an error
    await service.stop()


async def _trades(system: System) -> list[TradeSignal]:
    return [s for s in await published_signals(system.js) if isinstance(s, TradeSignal)]


def _counted(system: System, count: int) -> Callable[[], Awaitable[bool]]:
    async def enough() -> bool:
        return len(await _trades(system)) >= count

    return enough


async def _confirmed(system: System, kraken: Kraken, master: Master) -> None:
    """A first fill by hand, published through a poll that found the stream's id in the trade
    history; the master's figures read since."""
    kraken.by_hand("buy", "0.1")
    await eventually(_counted(system, 1), timeout=10, interval=0.01)
    await eventually(lambda: master.fills.stream_fills_trusted and master.fills.figures_known, timeout=10)


async def test_fills_after_the_ids_are_confirmed_go_out_without_a_rest_read(
    system: System, kraken: Kraken, master: Master
) -> None:
    first = kraken.by_hand("sell", "0.25")
    await eventually(_counted(system, 1), timeout=10, interval=0.01)
    await eventually(lambda: master.fills.stream_fills_trusted and master.fills.figures_known, timeout=10)
    read_by_poll = list(kraken.calls.methods)
    mark = len(kraken.calls.methods)

    second = kraken.by_hand("sell", "0.5")
    await eventually(_counted(system, 2), timeout=10, interval=0.01)
    between = kraken.calls.methods[mark:]
    again = await master.fills.poll()  # the fallback poll finds both published

    trades = await _trades(system)
    assert "TradesHistory" in read_by_poll  # the first: read by REST, its id checked there
    assert "TradesHistory" not in between
    assert BALANCE in read_by_poll  # (the name ccxt reads balances by is the one checked)
    assert BALANCE not in between
    assert [(t.order_id, t.side, t.size) for t in trades] == [
        (first.order_id, "sell", Decimal("0.25")),
        (second.order_id, "sell", Decimal("0.5")),
    ]
    assert [t.fill_id for t in trades] == [first.trade_id, second.trade_id]
    assert [t.master_position_before for t in trades] == [Decimal(2), Decimal("1.75")]
    assert trades[1].master_equity > 0
    assert again == 0
    assert master.metric("copytrade_master_stream_fills_trusted") == 1
    assert len(await _trades(system)) == 2


async def test_master_service_trade_told_by_the_stream_before_its_reply_is_copied_once(
    system: System, kraken: Kraken, master: Master
) -> None:
    """The stream tells the fill of the service's own order before the venue's reply to it:
    whichever path claims the order first (the service whole, the watcher per fill), it is
    copied once, and the service answers filled."""
    await _confirmed(system, kraken, master)

    kraken.emulator.state.latency_s = 0.3  # the order's reply comes 0.3 s after its fill
    request = TradeRequest(symbol=BTC, side="buy", size=Decimal("0.2"), size_type="base")
    reply = await system.nc.request(bus.MASTER_TRADE_SUBJECT, _requests.encode(request), timeout=10)
    await eventually(_counted(system, 2), timeout=10, interval=0.01)
    again = await master.fills.poll()

    answer = msgspec.json.decode(reply.data, type=TradeReply)
    copies = (await _trades(system))[1:]
    assert (answer.ok, answer.outcome) == (True, "filled")
    assert len(copies) == 1
    assert copies[0].filled_base == Decimal("0.2")
    assert again == 0


async def test_stream_whose_fill_ids_differ_never_publishes_a_fill_itself_nor_twice(
    system: System, kraken: Kraken, master: Master
) -> None:
    kraken.emulator.streams.foreign_exec_ids()

    orders = [kraken.by_hand("buy", "0.1")]
    await eventually(_counted(system, 1), timeout=10, interval=0.01)
    await eventually(lambda: master.fills.stream_fills_refuted, timeout=10)
    orders.append(kraken.by_hand("buy", "0.2"))
    await eventually(_counted(system, 2), timeout=10, interval=0.01)
    again = await master.fills.poll()

    trades = await _trades(system)
    assert [(t.order_id, t.fill_id) for t in trades] == [(o.order_id, o.trade_id) for o in orders]
    assert not master.fills.stream_fills_trusted
    assert again == 0


async def test_ids_that_change_after_they_were_confirmed_hold_the_trade_back_not_copy_it_twice(
    system: System, kraken: Kraken, master: Master
) -> None:
    await _confirmed(system, kraken, master)

    kraken.emulator.streams.foreign_exec_ids()
    later = kraken.by_hand("buy", "0.2")
    await eventually(_counted(system, 2), timeout=10, interval=0.01)  # from the stream, its id
    again = await master.fills.poll()  # the trade history names it otherwise

    trades = await _trades(system)
    assert again == 0
    assert [t.order_id for t in trades][1:] == [later.order_id]
    assert trades[1].fill_id != later.trade_id
    assert master.fills.stream_fills_refuted
    assert master.metric("copytrade_master_fills_held_back_total") == 1
    assert master.metric("copytrade_master_stream_fill_ids_differ") == 1
    assert master.metric("copytrade_master_stream_fills_trusted") == 0


async def test_after_the_stream_reconnects_the_figures_are_read_again_before_a_fill_goes_out(
    system: System, kraken: Kraken, master: Master
) -> None:
    await _confirmed(system, kraken, master)
    mark = len(kraken.calls.methods)

    await kraken.emulator.streams.drop()  # a fill may have been missed meanwhile
    await eventually(lambda: kraken.emulator.streams.subscriptions == 2, timeout=10)
    await eventually(lambda: BALANCE in kraken.calls.methods[mark:], timeout=10)
    await eventually(lambda: master.fills.figures_known, timeout=10)
    later = kraken.by_hand("buy", "0.3")
    await eventually(_counted(system, 2), timeout=10, interval=0.01)

    trades = await _trades(system)
    assert "TradesHistory" in kraken.calls.methods[mark:]  # and what it missed is read
    assert [t.order_id for t in trades][1:] == [later.order_id]
    assert trades[1].master_position_before == Decimal("2.1")


@pytest.mark.parametrize("master", [True], indirect=True, ids=["rate_limited"])
async def test_figures_are_read_on_any_room_when_fills_would_otherwise_go_to_rest(
    system: System, kraken: Kraken, master: Master
) -> None:
    """The account's budget below half (where background reads wait for it to come back):
    the master's figures are read as soon as there is any room, so fills go out from the
    stream, not each read back by REST (which would keep the budget spent)."""
    assert isinstance(master.account, CcxtAccount)
    kraken.by_hand("buy", "0.1")
    await eventually(_counted(system, 1), timeout=10, interval=0.01)
    while master.account.spare_budget(keep=0.0):  # spend the budget: trade-history reads
        await master.account.fills_since(time.time())

    await eventually(lambda: master.fills.figures_known, timeout=20)
    below_half = not master.account.spare_budget()
    mark = len(kraken.calls.methods)
    later = kraken.by_hand("buy", "0.2")
    await eventually(_counted(system, 2), timeout=10, interval=0.01)

    assert below_half
    assert master.fills.stream_fills_trusted
    assert "TradesHistory" not in kraken.calls.methods[mark:]
    assert (await _trades(system))[1].order_id == later.order_id


# ---- the book of the master's figures ----------------------------------------------------------


def _fill(at: float, side: str = "buy", amount: str = "0.5") -> Fill:
    return Fill(
        order_id="O1",
        symbol=BTC,
        side="buy" if side == "buy" else "sell",
        amount=Decimal(amount),
        price=Decimal(45000),
        at=at,
        trade_id=f"T{at}",
    )


async def _read_book(kraken: Kraken, settle_s: float = 0.0) -> Book:
    book = Book(account_figures(kraken.build(False)), max_age_s=60.0, settle_s=settle_s)
    assert book.apply(_fill(time.time() - 100)) is None  # a symbol not read yet
    assert await book.refresh()
    return book


async def test_book_applies_fills_made_after_its_read(kraken: Kraken) -> None:
    book = await _read_book(kraken)

    before_buy = book.apply(_fill(time.time() + 1))
    before_sell = book.apply(_fill(time.time() + 2, "sell", "0.2"))

    assert before_buy == Decimal(2)
    assert before_sell == Decimal("2.5")
    assert book.known()


async def test_book_forgets_a_fill_that_may_be_in_its_read(kraken: Kraken) -> None:
    book = await _read_book(kraken, settle_s=2.0)

    before = book.apply(_fill(time.time()))  # within the settle time of the read

    assert before is None
    assert not book.known()
    assert book.apply(_fill(time.time() + 10)) is None  # until it is read again


async def test_book_read_during_which_a_fill_came_is_not_taken(kraken: Kraken) -> None:
    book = await _read_book(kraken)
    book.forget()
    kraken.emulator.state.latency_s = 0.2
    mark = len(kraken.calls.methods)

    reading = asyncio.create_task(book.refresh())
    await eventually(lambda: BALANCE in kraken.calls.methods[mark:], timeout=5, interval=0.01)
    book.apply(_fill(time.time()))
    taken = await reading

    assert not taken
    assert not book.known()
