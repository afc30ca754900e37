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
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from shared import bus
from shared.config import AccountConfig, Credentials
from shared.exchange.context import AdapterContext
from shared.exchange.factory import build_account
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
    ctx = AdapterContext(http_timeout_s=10)  # each follower with its rate limiter, as in production
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
    asyncio.run(kraken_fan_out(1000, 50, 5))



async def kraken_fan_out(followers: int, latency_ms: float, signals: int) -> None:
    """A copier process copying to N Kraken followers at the emulator (its own process)."""
    import nats

    from scripts.benchkit import ENCODER, fill_to_last_ack, fresh_config, signal
    from shared.messages import CopyResult
    from support.localstack import local_stack

    emulator, url = start_emulator(followers, latency_ms)
    workdir = ROOT / ".bench" / f"kraken-{followers}"
    config = fresh_config(workdir, [{"id": f"k{i:05d}", "exchange": "kraken", "base_url": url,
                                     "credentials": f"K{i:05d}"} for i in range(followers)])
    decoder = msgspec.json.Decoder(CopyResult)
    try:
        with local_stack(workdir, config) as stack:
            for i in range(followers):
                stack.write_secret(f"KRAKEN_USER_K{i:05d}_API_KEY", key_for(i))
                stack.write_secret(f"KRAKEN_USER_K{i:05d}_API_SECRET", secret_for("kraken", i))
            stack.start_nats()
            stack.start("sizer", "sizer")
            stack.start("copier", "copier", COPYTRADE_GROUP="kraken",
                        COPYTRADE_CONCURRENCY=str(followers), COPYTRADE_SNAPSHOT_TTL_S="3600",
                        COPYTRADE_ACK_WAIT_S="60",
                        COPYTRADE_SPREAD_THRESHOLD=str(followers + 1))
            stack.wait_ready(120)
            assert stack.nats is not None
            nc = await nats.connect(stack.nats.url)
            results: dict[str, list[CopyResult]] = {}

            async def collect(msg: Any) -> None:
                result = decoder.decode(msg.data)
                results.setdefault(result.signal_id, []).append(result)

            await nc.jetstream().subscribe(bus.RESULTS_ALL, cb=collect, ordered_consumer=True)
            times = []
            for _ in range(signals + 1):
                sig = signal("10")
                await nc.jetstream().publish(bus.signal_subject("master"), ENCODER.encode(sig),
                                             headers={"Nats-Msg-Id": sig.signal_id})
                deadline = time.monotonic() + 120
                while len(results.get(sig.signal_id, [])) < followers:
                    assert time.monotonic() < deadline, "kraken fan-out incomplete"
                    await asyncio.sleep(0.005)
                done = results[sig.signal_id]
                assert all(r.outcome == "filled" for r in done), {r.reason for r in done}
                times.append(fill_to_last_ack(done))
            await nc.close()
    finally:
        emulator.terminate()
        emulator.wait()
    warm = sorted(times[1:])
    print(f"{followers} Kraken followers (real ccxt clients, emulator at {latency_ms:.0f} ms, "
          f"each with its rate limiter): master fill → last order acknowledged p50 "
          f"{warm[len(warm) // 2]:.3f} s, max {warm[-1]:.3f} s over {signals} signals "
          f"(first, cold: {times[0]:.3f} s)   (target ≤ 0.5 s)")


if __name__ == "__main__":
    main()
