"""Scale figures for `make bench`: one signal fanned out to 1,000 and 10,000 followers by 1, 2 and 4
copier replicas, each its own process, against the paper exchange at 50 ms order latency.

Every copier embeds its own paper venue (COPYTRADE_PAPER_VENUE=embedded) with seeded cash: the
replicas do not share exchange state, which is fine for throughput (each follower is served by
one replica per signal) but means these runs say nothing about cross-replica recovery (the
tests do). The bench process only publishes signals and polls the RESULTS stream's message
count while a signal runs; it decodes the results (for the timestamps) after the measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from scripts.benchkit import ENCODER, cpu_seconds, fresh_paper_config, pct, signal
from shared import bus
from support.localstack import ROOT, LocalStack, local_stack

SHARDS = 32


class _Result(msgspec.Struct):
    """The fields of a CopyResult the bench needs (the rest is skipped when decoding)."""

    signal_id: str
    outcome: str
    received_at: float
    signal_executed_at: float
    acked_at: float | None = None


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
    return kb / 1024


def metric(text: str, name: str) -> float:
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


@dataclass
class Figures:
    label: str
    followers: int
    replicas: int
    latencies: list[float]  # fill -> last follower order acknowledged, per signal
    burst_rate: float  # orders/s with signals published back to back
    cpu: dict[str, float]  # process -> share of one core during the measurement
    cpu_per_order_ms: dict[str, float]  # process -> CPU milliseconds per follower order
    rss: dict[str, float]  # process -> MiB at the end
    sizer_handle_ms: float = 0.0  # the sizer's own time per batch (mean)
    sizer_round_trip_ms: float = 0.0  # as the copiers see it, queueing in both included (mean)
    notes: list[str] = field(default_factory=list)

    @property
    def orders_per_s(self) -> float:
        return self.followers / statistics.median(self.latencies)


class ScaleRun:
    """nats-server, one sizer and N copier replicas of one paper group, started fresh."""

    def __init__(
        self,
        name: str,
        followers: int,
        replicas: int,
        *,
        latency_ms: float = 50,
        concurrency: int = 1000,
        spread: bool = True,
        sizers: int = 1,
    ) -> None:
        self.name, self.followers, self.replicas, self.sizers = name, followers, replicas, sizers
        self.latency_ms, self.concurrency, self.spread = latency_ms, concurrency, spread
        self.workdir = ROOT / ".bench" / name
        self.seen = 0  # results stored so far

    async def __aenter__(self) -> ScaleRun:
        config = fresh_paper_config(self.workdir, self.followers)
        self._ctx = local_stack(self.workdir, config)
        self.stack: LocalStack = self._ctx.__enter__()
        self.stack.start_nats()
        for i in range(self.sizers):  # one queue group: requests spread over the replicas
            self.stack.start(self.sizer_names[i], "sizer")
        for i in range(self.replicas):
            self.stack.start(
                f"copier-{i + 1}",
                "copier",
                COPYTRADE_CONCURRENCY=str(self.concurrency),
                COPYTRADE_PAPER_VENUE="embedded",
                COPYTRADE_PAPER_SEED_CASH="1000000",
                COPYTRADE_PAPER_LATENCY_MS=str(self.latency_ms),
                COPYTRADE_SNAPSHOT_TTL_S="3600",
                COPYTRADE_ACK_WAIT_S="60",
                COPYTRADE_SHARDS=str(SHARDS),
                COPYTRADE_SPREAD_THRESHOLD="200" if self.spread else "1000000000",
            )
        self.stack.wait_ready(120)
        await self._replicas_agree(60)
        assert self.stack.nats is not None
        self.nc: Client = await nats.connect(self.stack.nats.url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()
        self._ctx.__exit__(None, None, None)

    async def _replicas_agree(self, timeout_s: float) -> None:
        """Every replica sees all the others, and together they own every shard once."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            texts = [self.stack.metrics(c) for c in self.copiers]
            if (
                all(metric(t, "copytrade_copier_replicas") == self.replicas for t in texts)
                and sum(metric(t, "copytrade_work_shards_owned") for t in texts) == SHARDS
            ):
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name}: replicas did not agree on shard ownership")

    @property
    def sizer_names(self) -> list[str]:
        return ["sizer", *(f"sizer-{i + 2}" for i in range(self.sizers - 1))]

    @property
    def copiers(self) -> list[str]:
        return [f"copier-{i + 1}" for i in range(self.replicas)]

    def pids(self) -> dict[str, int]:
        assert self.stack.nats is not None
        assert self.stack.nats.proc is not None
        return {
            "nats": self.stack.nats.proc.pid,
            **{n: self.stack.procs[n].pid for n in [*self.sizer_names, *self.copiers]},
        }

    async def publish(self, count: int = 1) -> list[str]:
        ids = []
        for _ in range(count):
            sig = signal()
            await self.nc.jetstream().publish(
                bus.signal_subject("master"), ENCODER.encode(sig), headers={"Nats-Msg-Id": sig.signal_id}
            )
            ids.append(sig.signal_id)
        return ids

    async def wait_stored(self, signals: int, timeout_s: float = 300) -> None:
        """Until the RESULTS stream holds every follower's result for `signals` more signals."""
        target = self.seen + signals * self.followers
        deadline = time.monotonic() + timeout_s
        while True:
            info = await self.nc.jetstream().stream_info(bus.RESULTS_STREAM)
            if info.state.messages >= target:
                self.seen = target
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: {info.state.messages}/{target} results")
            await asyncio.sleep(0.01)

    async def results(self) -> dict[str, list[_Result]]:
        """Every stored result, by signal (read after the measurement)."""
        js = self.nc.jetstream()
        sub = await js.pull_subscribe(
            bus.RESULTS_ALL,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE),
        )
        decoder = msgspec.json.Decoder(_Result)
        by_signal: dict[str, list[_Result]] = {}
        got = 0
        while got < self.seen:
            for msg in await sub.fetch(batch=5000, timeout=5):
                result = decoder.decode(msg.data)
                by_signal.setdefault(result.signal_id, []).append(result)
                got += 1
        await sub.unsubscribe()
        return by_signal


def fill_to_last_ack(results: list[_Result]) -> float:
    bad = [r for r in results if r.outcome != "filled"]
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(results)} not filled ({bad[0].outcome})")
    return max(r.acked_at or 0 for r in results) - results[0].signal_executed_at


async def measure(run: ScaleRun, signals: int, burst: int, label: str) -> Figures:
    await run.publish()  # warm: clients, account figures, shard ownership settled
    await run.wait_stored(1)
    await run.publish()
    await run.wait_stored(1)
    pids = run.pids()
    cpu_before, started = {n: cpu_seconds(p) for n, p in pids.items()}, time.monotonic()
    measured = []
    for _ in range(signals):
        measured += await run.publish()
        await run.wait_stored(1)
    burst_ids = await run.publish(burst)
    await run.wait_stored(burst)
    wall = time.monotonic() - started
    used = {n: cpu_seconds(p) - cpu_before[n] for n, p in pids.items()}
    cpu = {n: u / wall for n, u in used.items()}
    orders = (signals + burst) * run.followers
    per_order = {n: 1000 * u / orders for n, u in used.items()}
    rss = {n: rss_mib(p) for n, p in pids.items()}
    texts = [run.stack.metrics(c) for c in run.copiers]
    trip_s = sum(metric(t, "copytrade_sizer_request_seconds_sum") for t in texts)
    trip_n = sum(metric(t, "copytrade_sizer_request_seconds_count") for t in texts)
    sizers = [run.stack.metrics(n) for n in run.sizer_names]
    handle_s = sum(metric(t, "copytrade_sizer_handle_seconds_sum") for t in sizers)
    handle_n = sum(metric(t, "copytrade_sizer_handle_seconds_count") for t in sizers)
    results = await run.results()
    latencies = [fill_to_last_ack(results[s]) for s in measured]
    in_burst = [r for s in burst_ids for r in results[s]]
    first = min(r.signal_executed_at for r in in_burst)
    burst_rate = len(in_burst) / (max(r.acked_at or 0 for r in in_burst) - first)
    return Figures(
        label=label,
        followers=run.followers,
        replicas=run.replicas,
        latencies=latencies,
        burst_rate=burst_rate,
        cpu=cpu,
        rss=rss,
        cpu_per_order_ms=per_order,
        sizer_handle_ms=1000 * handle_s / max(handle_n, 1),
        sizer_round_trip_ms=1000 * trip_s / max(trip_n, 1),
    )


async def scenario(
    followers: int, replicas: int, signals: int, burst: int, *, spread: bool = True, sizers: int = 1
) -> Figures:
    mode = "spread" if spread else "direct"
    async with ScaleRun(
        f"scale-{followers}-{replicas}-{mode}", followers, replicas, spread=spread, sizers=sizers
    ) as run:
        return await measure(run, signals, burst, mode)


def share(figures: Figures, prefix: str) -> float:
    return sum(v for k, v in figures.cpu.items() if k.startswith(prefix))


def print_table(rows: list[Figures]) -> None:
    print(
        f"{'followers':>9} {'path':>6} {'replicas':>8} {'p50 s':>7} {'p99 s':>7} "
        f"{'orders/s':>9} {'burst/s':>8}  {'CPU % of a core, per replica':<28} "
        f"{'RSS MiB per replica':<20} {'sizer':>6} {'nats':>5} {'CPU ms/order':>12}"
    )
    for f in rows:
        copiers = [k for k in f.cpu if k.startswith("copier")]
        cpu = " ".join(f"{f.cpu[c] * 100:.0f}" for c in copiers)
        rss = " ".join(f"{f.rss[c]:.0f}" for c in copiers)
        per_order = sum(f.cpu_per_order_ms.values())
        print(
            f"{f.followers:>9,} {f.label:>6} {f.replicas:>8} "
            f"{statistics.median(f.latencies):>7.3f} {pct(f.latencies, 0.99):>7.3f} "
            f"{f.orders_per_s:>9,.0f} {f.burst_rate:>8,.0f}  {cpu:<28} {rss:<20} "
            f"{share(f, 'sizer') * 100:>5.0f}% {f.cpu['nats'] * 100:>4.0f}% {per_order:>12.3f}"
        )


async def main(quick: bool) -> None:
    print(
        f"\nscale: paper exchange at 50 ms, one signal to every follower, replicas as separate "
        f"processes on {os.cpu_count()} cores ({'quick' if quick else 'full'} run)"
    )
    print(
        "  p50/p99: master fill → last follower order acknowledged, one signal at a time; "
        "orders/s = followers / p50;\n  burst/s: orders per second with several signals "
        "published back to back; CPU: share of one core while measuring (sizer, nats: the "
        "one sizer and nats-server)\n  targets: 1,000 followers ≤ 0.5 s with one replica; "
        "10,000 followers ≤ 3 s with four replicas"
    )
    rows = []
    small, large = (5, 3) if quick else (20, 5)
    for followers, signals in ((1000, small), (10_000, large)):
        burst = 3 if followers > 1000 else 10
        rows.append(await scenario(followers, 1, signals, burst, spread=False))
        for replicas in (1, 2, 4):
            rows.append(await scenario(followers, replicas, signals, burst))
        print_table(rows[-4:])
    busiest = max(rows, key=lambda f: share(f, "sizer"))
    print(
        f"  sizer (one replica; more join its queue group): at most "
        f"{share(busiest, 'sizer') * 100:.0f}% of one core ({busiest.followers:,} followers, "
        f"{busiest.replicas} copier replicas), {busiest.sizer_handle_ms:.1f} ms per batch of "
        f"≤ 1,000 followers; the copiers' round trip ({busiest.sizer_round_trip_ms:.0f} ms) is "
        f"queueing in the busy copier processes"
    )
    widest = rows[-1]
    per_order = sum(widest.cpu_per_order_ms.values())
    ceiling = (os.cpu_count() or 1) * 1000 / per_order
    print(
        f"  machine ceiling: {os.cpu_count()} cores / {per_order:.3f} ms CPU per order "
        f"(copiers + nats + sizer) ≈ {ceiling:,.0f} orders/s, so {widest.followers:,} "
        f"followers take ≥ {widest.followers / ceiling:.2f} s however many replicas run"
    )
    for f in rows:
        copier = sum(v for k, v in f.cpu_per_order_ms.items() if k.startswith("copier"))
        print(
            f"  CPU per order, {f.followers:,} {f.label} × {f.replicas}: copiers {copier:.3f} ms, "
            f"nats {f.cpu_per_order_ms['nats']:.3f} ms, sizer "
            f"{sum(v for k, v in f.cpu_per_order_ms.items() if k.startswith('sizer')):.3f} ms"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    asyncio.run(main(parser.parse_args().quick))
