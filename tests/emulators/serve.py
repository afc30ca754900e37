"""Run one venue emulator in its own process (for the benchmark): `python -m tests.emulators.serve
kraken --accounts 1000 --cash 1000000 --latency-ms 50`. Prints the URL on stdout, then serves
until terminated. Account i has key `bench-key-<i>` and the secret `secret_for(venue, i)`."""

from __future__ import annotations

import argparse
import asyncio
import base64
import signal
from decimal import Decimal

from tests.emulators.alpaca import AlpacaEmulator
from tests.emulators.binance import BinanceEmulator
from tests.emulators.coinbase import CoinbaseEmulator
from tests.emulators.kraken import KrakenEmulator
from tests.emulators.okx import OkxEmulator
from tests.emulators.server import EmulatorServer

EMULATORS: dict[str, type[EmulatorServer]] = {
    "kraken": KrakenEmulator,
    "coinbase": CoinbaseEmulator,
    "binance": BinanceEmulator,
    "okx": OkxEmulator,
    "alpaca": AlpacaEmulator,
}


def key_for(i: int) -> str:
    return f"bench-key-{i}"


def secret_for(venue: str, i: int) -> str:
    raw = f"bench-secret-{i:06d}"
    return base64.b64encode(raw.encode()).decode() if venue == "kraken" else raw


async def serve(venue: str, accounts: int, cash: Decimal, latency_ms: float) -> None:
    emulator = EMULATORS[venue]()
    emulator.state.latency_s = latency_ms / 1000
    for i in range(accounts):
        emulator.state.add_account(
            key_for(i),
            secret_for(venue, i),
            {"USD": cash},
            passphrase="bench-pass" if venue == "okx" else None,
        )
    print(await emulator.start(), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await emulator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("venue", choices=sorted(EMULATORS))
    parser.add_argument("--accounts", type=int, default=1)
    parser.add_argument("--cash", type=Decimal, default=Decimal(1_000_000))
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    asyncio.run(serve(args.venue, args.accounts, args.cash, args.latency_ms))


if __name__ == "__main__":
    main()
