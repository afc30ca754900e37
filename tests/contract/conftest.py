"""The `venue` fixture: one adapter under test per venue, the same handle for all six.

Real venues run their loopback emulator with one funded account and reach it through the real
adapter (`build_account`, `base_url` = the emulator). Paper runs an embedded `PaperVenue`.
Faults use the emulators' names (`tests.emulators.state.Fault` values); for paper they map to
the paper venue's fault kinds.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
import pytest_asyncio
from aiohttp import web

from services.paper.venue import PaperVenue
from shared.config import AccountConfig, Credentials
from shared.exchange.context import AdapterContext
from shared.exchange.factory import build_account
from shared.exchange.paper import Call, Failure, FillPart, Find, Fund, InjectFault, Orders, Reply, SetPrice
from shared.exchange.port import ExchangeAccount
from shared.messages import MarketRules
from tests.emulators.alpaca import AlpacaEmulator
from tests.emulators.binance import BinanceEmulator
from tests.emulators.coinbase import CoinbaseEmulator
from tests.emulators.kraken import KrakenEmulator
from tests.emulators.okx import OkxEmulator
from tests.emulators.server import EmulatorServer
from tests.emulators.state import Fault
from tests.secrets_scan import register

VENUES = ["paper", "kraken", "coinbase", "binance", "okx", "alpaca"]
HTTP_TIMEOUT_S = 0.5  # loopback answers in milliseconds; held replies time out quickly
CASH, BTC_HELD = Decimal("10000"), Decimal("1")
ACCOUNT_ID = "follower-1"
KEY = "ctkey7Q2mWx9"  # distinctive values: the leak test looks for them in error messages
SECRET = "ctsecret4Rz8Lp"
PASSPHRASE = "ctpass6Hn3Vb"
STEP, MIN_AMOUNT = Decimal("0.00000001"), Decimal("0.00001")
PRICE_STEP = Decimal("0.1")  # BTC/USD price tick on every venue
register(KEY, SECRET, PASSPHRASE)

# The paper venue's fault kinds for the emulators' faults. "temporary" and "below_minimum" are
# kinds the paper engine raises (its _ERRORS table) but PaperFaultKind does not list yet.
PAPER_FAULTS = {
    Fault.HTTP_500.value: "temporary",
    Fault.RATE_LIMIT.value: "rate_limited",
    Fault.TIMEOUT_AFTER_ACCEPT.value: "timeout_after_accept",
    Fault.INSUFFICIENT_FUNDS.value: "insufficient_funds",
    Fault.INVALID_KEY.value: "auth_error",
    Fault.MIN_NOT_MET.value: "below_minimum",
}


@dataclass
class VenueUnderTest:
    """An adapter on a funded account, and the venue-side handles the contract needs."""

    name: str
    ctx: AdapterContext
    credentials: Credentials
    rules: MarketRules  # what the venue publishes for BTC/USD
    inject: Callable[[str], Awaitable[None]]  # queue a fault (a Fault value) for the next order
    orders: Callable[[], Awaitable[list[object]]]  # the orders the venue holds for the account
    set_timeout_hold: Callable[[float], None]  # how long a TIMEOUT_AFTER_ACCEPT reply is held
    market_loads: Callable[[], int]  # market-loading requests the venue has answered so far
    requests: Callable[[], int]  # requests of any kind the venue has answered so far
    add_follower: Callable[[str], Awaitable[ExchangeAccount]]  # another funded account
    impostor: Callable[[str], ExchangeAccount]  # "unknown_key" | "wrong_secret"
    session_of: Callable[[ExchangeAccount], object]  # the HTTP session an account uses
    # test controls of resting orders, venue-side: fill `amount` (base) of the account's resting
    # order with this client order id, at its limit price; move a market's price (triggering the
    # stops and take-profits it reaches)
    fill_resting: Callable[[str, Decimal], Awaitable[None]]
    move_price: Callable[[str, Decimal], Awaitable[None]]
    zero_size_requests: int = 0  # the paper adapter forwards every order: its venue refuses
    listed: dict[str, Decimal] = field(default_factory=lambda: {"ETH/USD": Decimal(3000)})
    built: list[ExchangeAccount] = field(default_factory=list)
    account: ExchangeAccount = field(init=False)  # the account under test, built first

    def build(self, account_id: str, credentials: Credentials, base_url: str | None) -> ExchangeAccount:
        config = AccountConfig(id=account_id, exchange=self.name, base_url=base_url)  # type: ignore[arg-type]
        account = build_account(config, credentials, self.ctx)
        self.built.append(account)
        return account


@dataclass(frozen=True)
class Emulated:
    """How one real venue's emulator is set up and read."""

    emulator: Callable[[], EmulatorServer]
    secret: str
    wrong_secret: str
    market_loading: Callable[[str], bool]  # request path -> loads markets or assets
    min_cost: Decimal  # limits.cost.min as the venue publishes it
    passphrase: str | None = None
    listed: tuple[tuple[str, Decimal], ...] = (("ETH/USD", Decimal(3000)),)  # besides BTC/USD


EMULATED = {
    "kraken": Emulated(
        KrakenEmulator,
        base64.b64encode(SECRET.encode() * 3).decode(),
        base64.b64encode(b"not-the-secret" * 4).decode(),
        lambda p: p in {"/0/public/Assets", "/0/public/AssetPairs"},
        Decimal("0.5"),
    ),
    "coinbase": Emulated(
        CoinbaseEmulator,
        SECRET,
        "not-the-secret",
        lambda p: p in {"/api/v3/brokerage/market/products", "/v2/currencies"},
        Decimal("0.5"),
    ),
    "binance": Emulated(
        BinanceEmulator, SECRET, "not-the-secret", lambda p: p == "/api/v3/exchangeInfo", Decimal("0.5")
    ),
    "okx": Emulated(
        OkxEmulator,
        SECRET,
        "not-the-secret",
        lambda p: p == "/api/v5/public/instruments",
        Decimal(0),
        PASSPHRASE,
    ),
    # Alpaca publishes crypto size rules on the asset, but no minimum notional; AAPL is a stock,
    # "AAPL/USD" to copytrade and "AAPL" to Alpaca
    "alpaca": Emulated(
        AlpacaEmulator,
        SECRET,
        "not-the-secret",
        lambda p: p.startswith("/v2/assets/"),
        Decimal(0),
        listed=(("ETH/USD", Decimal(3000)), ("AAPL/USD", Decimal(190))),
    ),
}


def _rules(min_cost: Decimal) -> MarketRules:
    return MarketRules(
        symbol="BTC/USD", amount_step=STEP, min_amount=MIN_AMOUNT, min_cost=min_cost, price_step=PRICE_STEP
    )


def recorded_paths(emulator: EmulatorServer) -> list[str]:
    """The request paths the emulator answers from now on, in order."""
    paths: list[str] = []

    @web.middleware
    async def record(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        paths.append(request.path)
        return await handler(request)

    emulator.app.middlewares.append(record)
    return paths


@contextlib.asynccontextmanager
async def emulated(name: str) -> AsyncIterator[VenueUnderTest]:
    spec = EMULATED[name]
    emulator = spec.emulator()
    if isinstance(emulator, AlpacaEmulator):
        emulator.fill_on_submit_reply = False  # as real Alpaca: pending_new, the fill read later
    paths = recorded_paths(emulator)
    state = emulator.state
    balances = {"USD": CASH, "BTC": BTC_HELD}
    state.add_account(KEY, spec.secret, balances, passphrase=spec.passphrase)
    async with emulator:
        credentials = Credentials(KEY, spec.secret, spec.passphrase)

        async def add_follower(suffix: str) -> ExchangeAccount:
            key = f"{KEY}-{suffix}"
            state.add_account(key, spec.secret, balances, passphrase=spec.passphrase)
            credentials = Credentials(key, spec.secret, spec.passphrase)
            return handle.build(f"{ACCOUNT_ID}-{suffix}", credentials, emulator.url)

        def impostor(kind: str) -> ExchangeAccount:
            key, secret = {
                "unknown_key": ("unknown-key", spec.secret),
                "wrong_secret": (KEY, spec.wrong_secret),
            }[kind]
            credentials = Credentials(key, secret, spec.passphrase)
            return handle.build(f"impostor-{kind}".replace("_", "-"), credentials, emulator.url)

        async def inject(fault: str) -> None:
            state.accounts[KEY].faults.append(Fault(fault))

        async def orders() -> list[object]:
            return list(state.accounts[KEY].orders)

        def set_timeout_hold(seconds: float) -> None:
            state.timeout_hold_s = seconds

        async def fill_resting(client_order_id: str, amount: Decimal) -> None:
            account = state.accounts[KEY]
            order = account.order_by_client_id(client_order_id)
            assert order is not None, f"no order {client_order_id} at {name}"
            state.fill_resting(account, order, amount)

        async def move_price(symbol: str, price: Decimal) -> None:
            state.set_price(symbol, price)

        handle = VenueUnderTest(
            name=name,
            ctx=AdapterContext(http_timeout_s=HTTP_TIMEOUT_S, rate_limit=False),
            credentials=credentials,
            rules=_rules(spec.min_cost),
            inject=inject,
            orders=orders,
            set_timeout_hold=set_timeout_hold,
            market_loads=lambda: sum(map(spec.market_loading, paths)),
            requests=lambda: len(paths),
            add_follower=add_follower,
            impostor=impostor,
            session_of=lambda account: getattr(account, "http_session", None),
            fill_resting=fill_resting,
            move_price=move_price,
            listed=dict(spec.listed),
        )
        handle.account = handle.build(ACCOUNT_ID, credentials, emulator.url)
        try:
            yield handle
        finally:
            await _close(handle)


@contextlib.asynccontextmanager
async def paper() -> AsyncIterator[VenueUnderTest]:
    engine = PaperVenue()
    calls: list[Call] = []

    async def transport(call: Call) -> Reply:
        calls.append(call)
        return await engine.handle(call)

    async def fund(account_id: str) -> None:
        await engine.handle(Fund(account_id, CASH, {"BTC": BTC_HELD}))

    async def add_follower(suffix: str) -> ExchangeAccount:
        await fund(f"{ACCOUNT_ID}-{suffix}")
        return handle.build(f"{ACCOUNT_ID}-{suffix}", handle.credentials, None)

    def impostor(kind: str) -> ExchangeAccount:
        # paper has no keys: an account the venue does not know is its authentication failure
        return handle.build(f"impostor-{kind}".replace("_", "-"), handle.credentials, None)

    async def inject(fault: str) -> None:
        await engine.handle(InjectFault(ACCOUNT_ID, PAPER_FAULTS[fault]))  # type: ignore[arg-type]

    async def orders() -> list[object]:
        reply = await engine.handle(Orders(ACCOUNT_ID))
        return list(getattr(reply, "orders", []))

    def set_timeout_hold(seconds: float) -> None:
        engine.timeout_hold_s = seconds

    async def fill_resting(client_order_id: str, amount: Decimal) -> None:
        found = await engine.handle(Find(ACCOUNT_ID, client_order_id))
        order = getattr(found, "order", None)
        assert order is not None
        assert order.limit_price is not None
        reply = await engine.handle(FillPart(ACCOUNT_ID, order.order_id, amount, order.limit_price))
        assert not isinstance(reply, Failure), reply

    async def move_price(symbol: str, price: Decimal) -> None:
        await engine.handle(SetPrice(symbol, price))

    ctx = AdapterContext(paper_transport=transport, http_timeout_s=HTTP_TIMEOUT_S)
    handle = VenueUnderTest(
        name="paper",
        ctx=ctx,
        credentials=Credentials(KEY, SECRET, PASSPHRASE),
        rules=_rules(Decimal("0.5")),
        inject=inject,
        orders=orders,
        set_timeout_hold=set_timeout_hold,
        market_loads=lambda: 0,  # the paper venue's rules live in the process: nothing loads
        requests=lambda: len(calls),
        zero_size_requests=1,
        add_follower=add_follower,
        impostor=impostor,
        session_of=lambda _account: ctx.paper_transport,  # paper's "session" is its transport
        fill_resting=fill_resting,
        move_price=move_price,
    )
    await fund(ACCOUNT_ID)
    handle.account = handle.build(ACCOUNT_ID, handle.credentials, None)
    try:
        yield handle
    finally:
        await _close(handle)


async def _close(venue: VenueUnderTest) -> None:
    for account in venue.built:
        await account.close()
    await venue.ctx.close()


@pytest_asyncio.fixture(params=VENUES)
async def venue(request: pytest.FixtureRequest) -> AsyncIterator[VenueUnderTest]:
    opener = paper() if request.param == "paper" else emulated(request.param)
    async with opener as handle:
        yield handle
