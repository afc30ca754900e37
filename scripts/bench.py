"""`make bench`: latency, throughput and memory of the copy pipeline, measured on this machine.

Every figure comes from real processes: nats-server, the paper exchange (simulated latency), the
sizer and a copier replica; then the real venues (scripts/bench_exchanges.py): Kraken and Alpaca
followers through the real clients against the project's emulators, and the master on Kraken.
Signals are published straight to JetStream with executed_at = now, so "fill → last ack" is the
time from the master's fill to the last follower order acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import nats
from nats.aio.client import Client

if not __package__:  # `python scripts/bench.py` (make bench): import `scripts` from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts import bench_exchanges, bench_mirroring, bench_scale
from scripts.benchkit import ENCODER, RESULT, fill_to_last_ack, fresh_paper_config, pct, signal
from shared import bus
from shared.messages import CopyResult
from support.localstack import ROOT, LocalStack, local_stack


class Run:
    """One copier configuration with N paper followers, processes started fresh."""

    def __init__(
        self, name: str, followers: int, latency_ms: float, concurrency: int, spread_threshold: int = 200
    ) -> None:
        self.name, self.followers = name, followers
        self.latency_ms, self.concurrency = latency_ms, concurrency
        self.spread_threshold = spread_threshold  # groups above it spread over replicas
        self.workdir = ROOT / ".bench" / name

    async def __aenter__(self) -> Run:
        config = fresh_paper_config(self.workdir, self.followers)
        self._ctx = local_stack(self.workdir, config)
        self.stack: LocalStack = self._ctx.__enter__()
        self.stack.start_nats()
        self.stack.start("sizer", "sizer")
        # the paper exchange embedded in the copier (the default for benchmarks and dry runs)
        self.stack.start(
            "copier",
            "copier",
            COPYTRADE_CONCURRENCY=str(self.concurrency),
            COPYTRADE_PAPER_VENUE="embedded",
            COPYTRADE_PAPER_SEED_CASH="1000000",
            COPYTRADE_PAPER_LATENCY_MS=str(self.latency_ms),
            COPYTRADE_SNAPSHOT_TTL_S="3600",
            COPYTRADE_ACK_WAIT_S="60",
            COPYTRADE_SPREAD_THRESHOLD=str(self.spread_threshold),
        )
        self.stack.wait_ready(60)
        assert self.stack.nats is not None
        self.nc: Client = await nats.connect(self.stack.nats.url)
        self.results: dict[str, list[CopyResult]] = {}
        await self.nc.jetstream().subscribe(bus.RESULTS_ALL, cb=self._on_result, ordered_consumer=True)
        return self

    async def _on_result(self, msg: object) -> None:
        result = RESULT.decode(msg.data)  # type: ignore[attr-defined]
        self.results.setdefault(result.signal_id, []).append(result)

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()
        self._ctx.__exit__(None, None, None)

    async def copy(self, quote: str = "100", timeout_s: float = 300) -> list[CopyResult]:
        """Publish one signal; return every follower's result once all are in."""
        sig = signal(quote)
        await self.nc.jetstream().publish(
            bus.signal_subject("master"), ENCODER.encode(sig), headers={"Nats-Msg-Id": sig.signal_id}
        )
        deadline = time.monotonic() + timeout_s
        while len(self.results.get(sig.signal_id, [])) < self.followers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: results incomplete after {timeout_s}s")
            await asyncio.sleep(0.005)
        results = self.results[sig.signal_id]
        bad = [r for r in results if r.outcome != "filled"]
        if bad:
            raise RuntimeError(f"{self.name}: {len(bad)} not filled, e.g. {bad[0].reason}")
        return results

    def rss_kb(self) -> int:
        status = Path(f"/proc/{self.stack.procs['copier'].pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


async def internal_latency(signals: int) -> None:
    async with Run("latency-1", 1, 0, 16) as run:
        await run.copy()  # warm: client, markets, account figures
        internal, end_to_end = [], []
        for _ in range(signals):
            (result,) = await run.copy()
            assert result.order_sent_at is not None
            assert result.acked_at is not None
            internal.append((result.order_sent_at - result.received_at) * 1000)
            end_to_end.append((result.acked_at - result.signal_executed_at) * 1000)
    print(
        f"internal latency, 1 follower ({signals} signals): signal received → order sent "
        f"p50 {pct(internal, 0.5):.2f} ms, p99 {pct(internal, 0.99):.2f} ms   (target ≤ 2 / ≤ 5 ms)"
    )
    print(
        f"  master fill → order acknowledged: p50 {pct(end_to_end, 0.5):.2f} ms, "
        f"p99 {pct(end_to_end, 0.99):.2f} ms"
    )


async def fan_out(followers: int, latency_ms: float, signals: int) -> None:
    async with Run(f"fanout-{followers}", followers, latency_ms, concurrency=followers) as run:
        cold = fill_to_last_ack(await run.copy())
        warm = [fill_to_last_ack(await run.copy()) for _ in range(signals)]
        rss = run.rss_kb()
    print(
        f"{followers} paper followers at {latency_ms:.0f} ms exchange latency: master fill → "
        f"last order acknowledged p50 {statistics.median(warm):.3f} s, max {max(warm):.3f} s "
        f"over {signals} signals (first signal, cold caches: {cold:.3f} s)   (target ≤ 0.5 s)"
    )
    print(f"  copier resident memory with {followers} followers: {rss / 1024:.1f} MiB")


async def sequential(followers: int, latency_ms: float) -> None:
    async with Run(
        f"sequential-{followers}", followers, latency_ms, concurrency=1, spread_threshold=10**9
    ) as run:
        await run.copy(timeout_s=600)  # warm the account figures, as the concurrent run does
        elapsed = fill_to_last_ack(await run.copy(timeout_s=600))
    print(
        f"  baseline, one follower at a time (the original design), {followers} followers: "
        f"{elapsed:.2f} s  (→ ≈ {elapsed * 1000 / followers:.1f} s for 1,000, "
        f"≈ {elapsed * 10_000 / followers:.0f} s for 10,000)"
    )


async def throughput(followers: int, signals: int) -> None:
    async with Run(f"throughput-{followers}", followers, 0, concurrency=256) as run:
        await run.copy()
        rates = []
        for _ in range(signals):
            results = await run.copy()
            first = min(r.received_at for r in results)
            last = max(r.acked_at or 0 for r in results)
            rates.append(len(results) / (last - first))
    print(
        f"throughput, one copier, 0 ms exchange latency, {followers} followers: "
        f"{statistics.median(rates):,.0f} orders/s (median of {signals} signals; "
        f"target ≥ 3,000)"
    )


async def memory_per_follower(small: int, large: int) -> None:
    rss = {}
    for n in (small, large):
        async with Run(f"memory-{n}", n, 0, concurrency=256) as run:
            await run.copy()
            await run.copy()
            rss[n] = run.rss_kb()
    per = (rss[large] - rss[small]) / (large - small)
    print(
        f"memory per additional paper follower after its first order: {per:.1f} KB "
        f"(copier RSS {rss[small] / 1024:.1f} MiB at {small}, {rss[large] / 1024:.1f} MiB at {large})"
    )


async def main(quick: bool) -> None:
    print(f"copytrade bench — figures measured now, on this machine ({'quick' if quick else 'full'} run)\n")
    await internal_latency(50 if quick else 200)
    await fan_out(1000, 50, 3 if quick else 10)
    await bench_mirroring.main(quick)
    await sequential(100 if quick else 200, 50)  # one at a time: 200 give the per-follower time
    await throughput(2000, 3 if quick else 5)
    await memory_per_follower(100, 1100 if quick else 2100)
    await bench_scale.main(quick)
    await bench_exchanges.main(quick)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    asyncio.run(main(parser.parse_args().quick))
