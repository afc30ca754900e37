"""Alpaca's transport: the adapter's requests on aiohttp are the ones alpaca-py's client sends,
without a thread per call, on one session per endpoint that the process's context closes.

Real adapter and a real alpaca-py `TradingClient` (in a thread: it is synchronous) against the
loopback Alpaca emulator, which records what it is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from aiohttp import web
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient

from shared.config import AccountConfig, Credentials
from shared.errors import AuthError, ExchangeError, TemporaryError
from shared.exchange.alpaca_adapter import AlpacaAccount
from shared.exchange.context import AdapterContext
from shared.exchange.factory import build_account
from shared.exchange.port import OrderCommand
from tests.emulators.alpaca import AlpacaEmulator
from tests.secrets_scan import register

KEY = "transport-key"
SECRET = "ctalptransport7Rk2"
ACCOUNTS = 40
# what both clients set themselves; the rest (Accept, Connection...) is the HTTP library's
HEADERS = ("APCA-API-KEY-ID", "APCA-API-SECRET-KEY", "User-Agent", "Content-Type")
register(SECRET, "wrong-secret-Hq81")

Sent = tuple[str, str, tuple[tuple[str, str], ...], tuple[str | None, ...], Any]


class Recording(AlpacaEmulator):
    """The emulator, with what every request carried: method, path, query, headers, JSON body."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[Sent] = []
        self.app.middlewares.append(self._record)

    @web.middleware
    async def _record(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        raw = await request.read()
        self.sent.append(
            (
                request.method,
                request.path,
                tuple(sorted(request.query.items())),
                tuple(request.headers.get(h) for h in HEADERS),
                msgspec.json.decode(raw) if raw else None,
            )
        )
        return await handler(request)


@pytest_asyncio.fixture
async def emulator() -> AsyncIterator[Recording]:
    emulator = Recording()
    emulator.state.latency_s = 0.05  # every reply waits: requests overlap
    emulator.state.add_account(KEY, SECRET, {"USD": Decimal(10_000)})
    for i in range(ACCOUNTS):
        emulator.state.add_account(f"key-{i}", SECRET, {"USD": Decimal(10_000)})
    async with emulator:
        yield emulator


@pytest_asyncio.fixture
async def ctx() -> AsyncIterator[AdapterContext]:
    ctx = AdapterContext(http_timeout_s=5)
    yield ctx
    await ctx.close()


def account(emulator: AlpacaEmulator, ctx: AdapterContext, key: str = KEY, url: str = "") -> AlpacaAccount:
    built = build_account(
        AccountConfig(id=key, exchange="alpaca", base_url=url or emulator.url), Credentials(key, SECRET), ctx
    )
    assert isinstance(built, AlpacaAccount)
    return built


def buy(client_order_id: str) -> OrderCommand:
    return OrderCommand(
        client_order_id=client_order_id,
        symbol="BTC/USD",
        side="buy",
        size=Decimal("10.019"),
        size_type="quote",
        reference_price=Decimal(45_000),
    )


async def test_adapter_sends_what_alpaca_py_sends(emulator: Recording, ctx: AdapterContext) -> None:
    follower = account(emulator, ctx)
    client = TradingClient(KEY, SECRET, url_override=emulator.url)
    placed_id, our_id = uuid.uuid4().hex, uuid.uuid4().hex
    await follower.market_rules("BTC/USD")  # the asset lookup, out of the way
    order_body = {
        "symbol": "BTC/USD",
        "side": "buy",
        "type": "market",
        "time_in_force": "gtc",
        "client_order_id": our_id,
        "notional": "10.01",  # a decimal string, as we send it: alpaca-py's models send floats
    }
    theirs = [
        lambda: client.get("/account"),
        lambda: client.post("/orders", order_body | {"client_order_id": placed_id}),
        lambda: client.get("/orders:by_client_order_id", {"client_order_id": placed_id}),
        lambda: client.get(
            "/orders", {"status": "open", "limit": 500, "direction": "asc", "symbols": "BTC/USD"}
        ),
        lambda: client.delete(f"/orders/{uuid.uuid4()}"),
    ]
    ours: list[Callable[[], Awaitable[object]]] = [
        follower.snapshot,
        lambda: follower.send_order(buy(our_id)),
        lambda: follower.find_order(placed_id, "BTC/USD"),
        lambda: follower.open_orders("BTC/USD"),
        lambda: follower._call("delete", f"/orders/{uuid.uuid4()}", missing_ok=True),
    ]

    sent_by_alpaca_py, sent_by_us = [], []
    for their_call, our_call in zip(theirs, ours, strict=True):
        del emulator.sent[:]
        await asyncio.to_thread(_quiet, their_call)
        sent_by_alpaca_py.append(_same_ids(emulator.sent[0], placed_id, our_id))
        del emulator.sent[:]
        await our_call()
        sent_by_us.append(_same_ids(emulator.sent[0], placed_id, our_id))

    assert sent_by_us == sent_by_alpaca_py
    assert sent_by_us[1][4]["notional"] == "10.01"


def _quiet(call: Callable[[], object]) -> None:
    """alpaca-py's call; an error reply (the unknown order's 404) is as good as any."""
    with contextlib.suppress(APIError):
        call()


def _same_ids(sent: Sent, placed_id: str, our_id: str) -> Sent:
    """The request with our client order id written as the one alpaca-py placed, and the
    order id of a delete left out: what is compared is how a call is sent."""
    method, path, query, headers, body = sent
    if isinstance(body, dict) and body.get("client_order_id") == placed_id:
        body = body | {"client_order_id": our_id}
    return method, path.rsplit("/", 1)[0] if method == "DELETE" else path, query, headers, body


async def test_forty_accounts_placing_at_once_start_no_thread(
    emulator: Recording, ctx: AdapterContext
) -> None:
    followers = [account(emulator, ctx, f"key-{i}") for i in range(ACCOUNTS)]
    threads = threading.active_count()

    acks = await asyncio.gather(*(f.place_order(buy(uuid.uuid4().hex)) for f in followers))

    assert {ack.status for ack in acks} == {"filled"}
    assert emulator.max_in_flight > 6  # the loop's default executor had 6 threads on two cores
    assert threading.active_count() == threads


async def test_accounts_share_their_endpoints_session_until_the_context_closes(
    emulator: Recording, ctx: AdapterContext
) -> None:
    first, second = account(emulator, ctx, "key-0"), account(emulator, ctx, "key-1")
    elsewhere = account(emulator, ctx, "key-2", url=emulator.url.replace("127.0.0.1", "localhost"))
    await asyncio.gather(first.snapshot(), second.snapshot())
    session, others = first.http_session, [second.http_session, elsewhere.http_session]

    await ctx.close()

    assert others[0] is session
    assert others[1] is not session
    assert session.closed
    assert others[1].closed


@pytest.mark.parametrize(
    ("url", "secret", "error"),
    [
        ("", "wrong-secret-Hq81", AuthError),  # refused: 403 with Alpaca's body
        ("http://127.0.0.1:9", SECRET, TemporaryError),  # unreachable: nothing listens there
    ],
)
async def test_failed_calls_say_nothing_of_the_keys(
    emulator: Recording, ctx: AdapterContext, url: str, secret: str, error: type[ExchangeError]
) -> None:
    follower = build_account(
        AccountConfig(id="f", exchange="alpaca", base_url=url or emulator.url), Credentials(KEY, secret), ctx
    )

    with pytest.raises(ExchangeError) as raised:
        await follower.snapshot()

    text = f"{raised.value!s} {raised.value!r}"
    assert type(raised.value) is error
    assert KEY not in text
    assert secret not in text
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__
