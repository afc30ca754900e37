"""Exchange-client figures for `make bench`: what one more Kraken follower costs a copier.

The Kraken emulator runs in its own process; real ccxt clients are built through the adapter
the copier uses (markets, HTTP session and TLS context shared per exchange).
"""

from __future__ import annotations

import asyncio
import gc
import resource
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

from shared.config import AccountConfig, Credentials
from shared.exchange.factory import AdapterContext, build_account
from shared.exchange.port import ExchangeAccount, OrderCommand
from tests.emulators.serve import key_for, secret_for

ROOT = Path(__file__).resolve().parent.parent


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


def start_emulator(accounts: int, latency_ms: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.emulators.serve", "kraken", "--accounts", str(accounts),
         "--latency-ms", str(latency_ms)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def follower(i: int, url: str, ctx: AdapterContext) -> ExchangeAccount:
    config = AccountConfig(id=f"k{i}", exchange="kraken", base_url=url)
    return build_account(config, Credentials(key_for(i), secret_for("kraken", i)), ctx)


async def first_order(account: ExchangeAccount) -> None:
    await account.place_order(OrderCommand(
        client_order_id=uuid.uuid4().hex, symbol="BTC/USD", side="buy", size=Decimal(10),
        size_type="quote", reference_price=Decimal(45000)))


async def memory_and_first_order(followers: int) -> None:
    proc, url = start_emulator(followers + 1, 0)
    ctx = AdapterContext(rate_limit=False, http_timeout_s=10)
    try:
        warm = follower(followers, url, ctx)  # markets, session and TLS context exist already
        await warm.connect()
        await first_order(warm)
        gc.collect()
        before, cpu_before = rss_kb(), resource.getrusage(resource.RUSAGE_SELF).ru_utime
        accounts = [follower(i, url, ctx) for i in range(followers)]
        for account in accounts:
            await account.connect()
            await first_order(account)
        gc.collect()
        cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu_before
        per = (rss_kb() - before) / followers
        print(f"Kraken follower clients ({followers} added, each after its first order, shared "
              f"markets/session/TLS): {per:.0f} KB resident memory per additional follower "
              f"(target ≤ 100 KB); first-order cost of a newly added follower "
              f"{cpu / followers * 1000:.2f} ms CPU (client creation + connect + first order)")
        for account in [*accounts, warm]:
            await account.close()
        await ctx.close()
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    asyncio.run(memory_and_first_order(500))


if __name__ == "__main__":
    main()
