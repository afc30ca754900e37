"""Mirrored resting orders for `make bench`: a master cancel reaching 1,000 paper followers.

nats-server, the paper exchange (the master's venue), the sizer, one copier with the paper venue
embedded (the followers' venue, 50 ms per order as in the fan-out figure) and the master service
run as processes; every follower subscribes with `orders: {mode: orders}`. Each round the master
places a resting limit buy below the market through its order endpoint (what `copytrade master
order` sends), waits until every follower's linked order rests, then cancels it.

Times run from the moment the bench sends the master's request (the master's own venue call and
its order event included) to two moments: the last follower's cancel confirmed by its venue
(the issue's figure: each cancel outcome carries when the venue confirmed it, `acked_at`), and
the last follower's outcome stored in the RESULTS stream (JetStream's timestamp), once the link
is written too. Placements are timed to the outcome stored. The paper venue answers a cancel
at once: its simulated latency applies to orders only.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import nats
import yaml
from nats.aio.client import Client
from nats.aio.msg import Msg

from scripts.benchkit import PUBLIC_KEY, SEED
from services.master.requests import (
    CancelRequest,
    OrderCall,
    OrderReply,
    OrderRequest,
    endpoint_of,
    order_subject,
)
from shared import bus
from support.localstack import ROOT, LocalStack, local_stack

LIMIT = Decimal(44000)  # below the paper market (45,000): the order rests


class _Result(msgspec.Struct):
    """The fields of a CopyResult the bench needs (the rest is skipped when decoding)."""

    signal_id: str
    follower_id: str
    outcome: str
    reason_code: str
    acked_at: float | None = None  # when the venue confirmed the follower's order or cancel


@dataclass(frozen=True)
class Round:
    placed: float  # master order request sent -> last linked follower order resting
    cancelled: float  # master cancel request sent -> last follower outcome stored
    acknowledged: float  # master cancel request sent -> last follower cancel confirmed by its venue
    master_cancel: float  # master cancel request sent -> the master's reply


def write_config(workdir: Path, followers: int) -> Path:
    """N paper followers mirroring the master's resting orders, trusting the bench's key."""
    workdir.mkdir(parents=True)
    mirroring: dict[str, Any] = {"master": "master", "orders": {"mode": "orders"}}
    config = workdir / "copytrade.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "master": {"id": "master", "exchange": "paper"},
                "signals": {"public_keys": [PUBLIC_KEY]},
                "followers": [
                    {"id": f"f{i:05d}", "exchange": "paper", "subscriptions": [mirroring]}
                    for i in range(followers)
                ],
            }
        )
    )
    return config


class MirrorRun:
    """The stack, started fresh, and the results as they are stored (by signal)."""

    def __init__(self, followers: int, latency_ms: float) -> None:
        self.followers, self.latency_ms = followers, latency_ms
        self.workdir = ROOT / ".bench" / f"mirroring-{followers}"
        self.stored: dict[str, list[tuple[float, _Result]]] = {}
        self._decoder = msgspec.json.Decoder(_Result)
        self._encoder = msgspec.json.Encoder(decimal_format="string")

    async def __aenter__(self) -> MirrorRun:
        shutil.rmtree(self.workdir, ignore_errors=True)
        self._ctx = local_stack(self.workdir, write_config(self.workdir, self.followers))
        self.stack: LocalStack = self._ctx.__enter__()
        self.stack.write_secret("MASTER_SIGNING_KEY", SEED)
        self.stack.start_nats()
        latency = str(self.latency_ms)
        self.stack.start(
            "paper-exchange", "paper", COPYTRADE_PAPER_LATENCY_MS=latency, COPYTRADE_PAPER_SEED_CASH="1000000"
        )
        self.stack.wait_ready(30)  # the master connects to its venue on start
        self.stack.start("sizer", "sizer")
        self.stack.start(
            "copier",
            "copier",
            COPYTRADE_CONCURRENCY=str(self.followers),
            COPYTRADE_PAPER_VENUE="embedded",
            COPYTRADE_PAPER_SEED_CASH="1000000",
            COPYTRADE_PAPER_LATENCY_MS=latency,
            COPYTRADE_SNAPSHOT_TTL_S="3600",
            COPYTRADE_ACK_WAIT_S="60",
        )
        self.stack.start("master", "master")
        self.stack.wait_ready(60)
        assert self.stack.nats is not None
        self.nc: Client = await nats.connect(self.stack.nats.url)
        await self.nc.jetstream().subscribe(bus.RESULTS_ALL, cb=self._on_result, ordered_consumer=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()
        self._ctx.__exit__(None, None, None)

    async def _on_result(self, msg: Msg) -> None:
        result = self._decoder.decode(msg.data)
        stored_at = msg.metadata.timestamp.timestamp()
        self.stored.setdefault(result.signal_id, []).append((stored_at, result))

    async def request(self, call: OrderCall) -> OrderReply:
        reply = await self.nc.request(order_subject(None, endpoint_of(call)), self._encoder.encode(call), 30)
        answer = msgspec.json.decode(reply.data, type=OrderReply)
        if not answer.ok or answer.signal is None:
            raise RuntimeError(f"master {endpoint_of(call)}: {answer.outcome} {answer.error}")
        return answer

    async def last_stored(self, signal_id: str, expected: str, timeout_s: float = 60) -> float:
        """When the last follower's outcome of this order event was stored; every one must
        have the reason code `expected`."""
        deadline = time.monotonic() + timeout_s
        while len(self.stored.get(signal_id, [])) < self.followers:
            if time.monotonic() > deadline:
                got = len(self.stored.get(signal_id, []))
                raise RuntimeError(f"{got}/{self.followers} outcomes after {timeout_s}s")
            await asyncio.sleep(0.005)
        stored = self.stored[signal_id]
        bad = [r for _, r in stored if r.reason_code != expected]
        if bad:
            raise RuntimeError(f"{len(bad)} not {expected}, e.g. {bad[0].outcome} {bad[0].reason_code}")
        return max(at for at, _ in stored)

    def last_acked(self, signal_id: str) -> float:
        """When the last follower's venue confirmed its part of this order event."""
        acked = [r.acked_at for _, r in self.stored[signal_id]]
        if None in acked:
            raise RuntimeError(f"{acked.count(None)} outcomes of {signal_id} without the venue's time")
        return max(a for a in acked if a is not None)

    async def round(self) -> Round:
        """The master places a resting limit buy, every follower's linked order rests, the
        master cancels it, every follower's is cancelled."""
        sent = time.time()
        order = await self.request(
            OrderRequest(symbol="BTC/USD", side="buy", size=Decimal("0.1"), limit_price=LIMIT)
        )
        assert order.signal is not None
        placed = await self.last_stored(order.signal.signal_id, "mirrored") - sent
        sent = time.time()
        cancel = await self.request(CancelRequest(order_id=order.order_id))
        answered = time.time() - sent
        assert cancel.signal is not None
        cancelled = await self.last_stored(cancel.signal.signal_id, "cancelled") - sent
        acknowledged = self.last_acked(cancel.signal.signal_id) - sent
        return Round(placed=placed, cancelled=cancelled, acknowledged=acknowledged, master_cancel=answered)


TARGET_S = 0.5


async def mirrored_cancel(followers: int, latency_ms: float, rounds: int) -> None:
    async with MirrorRun(followers, latency_ms) as run:
        first = await run.round()
        warm = [await run.round() for _ in range(rounds)]
    acks, cancels = [r.acknowledged for r in warm], [r.cancelled for r in warm]
    placements = [r.placed for r in warm]
    p50 = statistics.median(acks)
    print(
        f"{followers} paper followers mirroring orders at {latency_ms:.0f} ms exchange latency: master "
        f"cancel → last follower cancel acknowledged by its venue p50 {p50:.3f} s, max "
        f"{max(acks):.3f} s over {rounds} rounds (first round, cold caches: {first.acknowledged:.3f} s)"
        f"   (target ≤ 0.5 s: {'met' if p50 <= TARGET_S else 'MISSED'})"
    )
    print(
        f"  to the last follower's outcome stored (its link written too): p50 "
        f"{statistics.median(cancels):.3f} s, max {max(cancels):.3f} s (first round {first.cancelled:.3f} s)"
    )
    print(
        f"  of which the master's own cancel (request → its reply, order event published): p50 "
        f"{statistics.median(r.master_cancel for r in warm) * 1000:.0f} ms; the paper venue cancels "
        "without latency"
    )
    print(
        f"  master order → last linked follower order resting: p50 {statistics.median(placements):.3f} s, "
        f"max {max(placements):.3f} s (first round: {first.placed:.3f} s)"
    )


async def main(quick: bool) -> None:
    await mirrored_cancel(1000, 50, 3 if quick else 5)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    asyncio.run(main(parser.parse_args().quick))
