"""`make demo`: the whole system on this machine, replaying the original guide's examples.

nats-server, the paper exchange, the sizer, a paper copier group and the master run as separate
processes. A $10,000 paper master buys $500 of BTC, then $20, then sells half its BTC; after each
signal the per-follower outcomes are read back from the results stream and printed.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import threading
import time
from decimal import Decimal
from pathlib import Path

import msgspec
import nats
import nats.errors
import yaml
from nats.aio.client import Client

from shared import bus
from shared.exchange.paper import Fund, Ok, Position, Snapshot, nats_transport
from shared.messages import CopyResult, TradeReply, TradeRequest
from shared.signing import new_signing_key
from support.localstack import ROOT, LocalStack, local_stack

FOLLOWERS = {"alice": 1_000, "bob": 5_000, "carol": 50_000, "dave": 100}
MASTER_EQUITY = 10_000


def write_config(path: Path, public_key: str) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "min_notional": "1.00",
                "master": {"id": "master", "exchange": "paper"},
                "signals": {"public_keys": [public_key], "max_age_s": 60},
                "followers": [{"id": f, "exchange": "paper"} for f in FOLLOWERS],
            },
            sort_keys=False,
        )
    )


async def trade(nc: Client, side: str, size: Decimal, size_type: str) -> TradeReply:
    request = TradeRequest(symbol="BTC/USD", side=side, size=size, size_type=size_type)  # type: ignore[arg-type]
    data = msgspec.json.Encoder(decimal_format="string").encode(request)
    reply = await nc.request(bus.MASTER_TRADE_SUBJECT, data, timeout=30)
    return msgspec.json.decode(reply.data, type=TradeReply)


async def results_for(nc: Client, signal_id: str, timeout_s: float = 15) -> list[CopyResult]:
    """Read this signal's outcomes back from the results stream (the audit trail)."""
    js = nc.jetstream()
    decoder = msgspec.json.Decoder(CopyResult)
    deadline = time.monotonic() + timeout_s
    found: dict[str, CopyResult] = {}
    while len(found) < len(FOLLOWERS) and time.monotonic() < deadline:
        for follower in FOLLOWERS:
            if follower in found:
                continue
            try:
                msg = await js.get_last_msg(bus.RESULTS_STREAM, bus.result_subject("paper", follower))
            except nats.errors.Error:  # not recorded yet (NotFoundError) or a slow reply
                continue
            assert msg.data is not None
            result = decoder.decode(msg.data)
            if result.signal_id == signal_id:
                found[follower] = result
        await asyncio.sleep(0.05)
    return [found[f] for f in FOLLOWERS if f in found]


def print_table(
    title: str, reply: TradeReply, results: list[CopyResult], held_before: dict[str, Decimal]
) -> None:
    signal = reply.signal
    assert signal is not None
    print(
        f"\n=== {title}  (signal {signal.signal_id[:12]}…, master equity "
        f"${signal.master_equity:,.2f}, fill {signal.filled_base} BTC @ ${signal.price:,})"
    )
    print(f"  {'follower':<8} {'equity':>10}  {'outcome':<8} {'order':>22}  detail")
    for r in results:
        order = ""
        if r.size is not None:
            order = f"${r.size:,.2f}" if r.size_type == "quote" else f"{r.size} BTC"
        detail = r.reason
        if r.outcome in ("filled", "submitted") and r.side == "sell" and held_before.get(r.follower_id):
            share = r.size / held_before[r.follower_id] * 100 if r.size else 0
            detail = f"sold {share:.1f}% of {held_before[r.follower_id]} BTC held"
        elif r.outcome in ("filled", "submitted"):
            detail = f"≈ ${r.notional:,.2f}, client order id {r.client_order_id}"
        equity = f"${FOLLOWERS[r.follower_id]:,}"
        print(f"  {r.follower_id:<8} {equity:>10}  {r.outcome:<8} {order:>22}  {detail}")


async def holdings(call: object) -> dict[str, Decimal]:
    out = {}
    for follower in [*FOLLOWERS, "master"]:
        reply = await call(Position(follower, "BTC/USD"))  # type: ignore[operator]
        out[follower] = reply.amount if isinstance(reply, Ok) and reply.amount else Decimal(0)
    return out


async def scenario(stack: LocalStack) -> None:
    assert stack.nats is not None
    nc = await nats.connect(stack.nats.url)
    call = nats_transport(nc)
    await call(Fund("master", Decimal(MASTER_EQUITY)))
    for follower, cash in FOLLOWERS.items():
        await call(Fund(follower, Decimal(cash)))
    steps = [
        ("master buys $500 of BTC", "buy", Decimal(500), "quote"),
        ("master buys $20 of BTC", "buy", Decimal(20), "quote"),
        ("master sells half its BTC", "sell", None, "base"),
    ]
    for title, side, size, size_type in steps:
        held = await holdings(call)
        reply = await trade(nc, side, size if size is not None else held["master"] / 2, size_type)
        if not reply.ok:
            raise SystemExit(f"master trade failed: {reply.error}")
        print_table(title, reply, await results_for(nc, reply.signal_id), held)
    snap = await call(Snapshot("master"))
    assert isinstance(snap, Ok)
    assert snap.snapshot is not None
    await nc.close()
    print("\nMetrics (Prometheus text format) are served while the system runs:")
    for name, port in stack.ports.items():
        print(f"  {name:<15} http://127.0.0.1:{port}/metrics")
    print("\nCopy outcomes counted by the copier:")
    for line in stack.metrics("copier").splitlines():
        if line.startswith("copytrade_copy_outcomes_total{"):
            print("  " + line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep running until Ctrl-C")
    args = parser.parse_args()
    workdir = ROOT / ".demo"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir()
    seed, public_key = new_signing_key()  # the master signs, the copier verifies
    write_config(workdir / "copytrade.yaml", public_key)
    with local_stack(workdir, workdir / "copytrade.yaml") as stack:
        stack.write_secret("MASTER_SIGNING_KEY", seed)
        print(f"nats-server at {stack.start_nats()} (JetStream store in {workdir / 'nats'})")
        stack.start("paper-exchange", "paper")
        stack.start("sizer", "sizer")
        stack.start("copier", "copier", COPYTRADE_GROUP="paper")
        stack.start("master", "master")
        stack.wait_ready()
        print("services ready: paper-exchange, sizer, copier (group paper), master")
        asyncio.run(scenario(stack))
        if args.keep:
            print("\nRunning; Ctrl-C (or SIGTERM) stops it and its services.")
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):  # the stack's exit stops the children
                signal.signal(sig, lambda *_: stop.set())
            stop.wait()
        print(f"\nShutting down cleanly (logs in {workdir}).")


if __name__ == "__main__":
    main()
