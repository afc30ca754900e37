"""Alpaca fan-out figures: `python -m scripts.bench_alpaca [followers] [latency_ms]`.

N Alpaca follower accounts, built through the adapter the copier uses (its aiohttp transport,
each with its rate limiter), place one BTC/USD order each, all at once, against the Alpaca
emulator in its own process. Printed: the first round (a fresh process: asset lookups, new
connections), a second round (warm), and the floor: N plain aiohttp order posts to the same
emulator.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import aiohttp

from shared.config import AccountConfig, Credentials
from shared.exchange.context import AdapterContext
from shared.exchange.factory import build_account
from shared.exchange.port import ExchangeAccount, OrderCommand
from tests.emulators.serve import key_for, secret_for

ROOT = Path(__file__).resolve().parent.parent


def start_emulator(accounts: int, latency_ms: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.emulators.serve",
            "alpaca",
            "--accounts",
            str(accounts),
            "--latency-ms",
            str(latency_ms),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def order() -> OrderCommand:
    return OrderCommand(
        client_order_id=uuid.uuid4().hex,
        symbol="BTC/USD",
        side="buy",
        size=Decimal(10),
        size_type="quote",
        reference_price=Decimal(45000),
    )


async def round_of_orders(accounts: list[ExchangeAccount]) -> float:
    started = time.perf_counter()
    acks = await asyncio.gather(*(a.place_order(order()) for a in accounts))
    elapsed = time.perf_counter() - started
    assert all(ack.status == "filled" for ack in acks), {ack.status for ack in acks}
    return elapsed


async def adapter_rounds(url: str, followers: int, connections: int) -> tuple[float, float]:
    ctx = AdapterContext(http_timeout_s=30, alpaca_connections=connections)
    accounts = [
        build_account(
            AccountConfig(id=f"a{i}", exchange="alpaca", base_url=url),
            Credentials(key_for(i), secret_for("alpaca", i)),
            ctx,
        )
        for i in range(followers)
    ]
    try:
        return await round_of_orders(accounts), await round_of_orders(accounts)
    finally:
        for account in accounts:
            await account.close()
        await ctx.close()


async def floor(url: str, followers: int) -> tuple[float, float]:
    """N order posts from one aiohttp session, twice (new connections, then reused): what the
    emulator itself allows."""

    async def post(session: aiohttp.ClientSession, i: int) -> None:
        headers = {"APCA-API-KEY-ID": key_for(i), "APCA-API-SECRET-KEY": secret_for("alpaca", i)}
        body = {
            "symbol": "BTC/USD",
            "side": "buy",
            "type": "market",
            "time_in_force": "gtc",
            "notional": "10",
            "client_order_id": uuid.uuid4().hex,
        }
        async with session.post(f"{url}/v2/orders", json=body, headers=headers) as reply:
            assert reply.status == 200, await reply.text()
            await reply.read()

    async def round_of_posts(session: aiohttp.ClientSession) -> float:
        started = time.perf_counter()
        await asyncio.gather(*(post(session, i) for i in range(followers)))
        return time.perf_counter() - started

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        return await round_of_posts(session), await round_of_posts(session)


async def main(followers: int, latency_ms: float) -> None:
    proc, url = start_emulator(followers, latency_ms)
    try:
        for connections in sorted({256, followers}):
            cold, warm = await adapter_rounds(url, followers, connections)
            print(
                f"{followers} Alpaca followers, one order each, emulator at {latency_ms:.0f} ms, "
                f"{connections} Alpaca connections: first round {cold:.2f} s, second {warm:.2f} s"
            )
        cold, warm = await floor(url, followers)
        print(f"floor: {followers} plain aiohttp order posts: first round {cold:.2f} s, second {warm:.2f} s")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    args = [float(a) for a in sys.argv[1:]]
    asyncio.run(main(int(args[0]) if args else 1000, args[1] if len(args) > 1 else 50.0))
