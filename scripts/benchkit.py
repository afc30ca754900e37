"""What the benchmark scripts share: signed test signals and fresh paper configs."""

from __future__ import annotations

import shutil
import time
import uuid
from decimal import Decimal
from pathlib import Path

import msgspec
import yaml

from shared.messages import CopyResult, TradeSignal, signal_id_for
from shared.signing import SignalSigner, new_signing_key

ENCODER = msgspec.json.Encoder(decimal_format="string")
SEED, PUBLIC_KEY = new_signing_key()
SIGNER = SignalSigner(SEED)
RESULT = msgspec.json.Decoder(CopyResult)


def signal(quote: str = "100") -> TradeSignal:
    order_id = uuid.uuid4().hex
    return SIGNER.sign(TradeSignal(
        signal_id=signal_id_for("paper", order_id), master_id="master", exchange="paper",
        symbol="BTC/USD", side="buy", price=Decimal(45000), size=Decimal(quote),
        size_type="quote", filled_base=Decimal(quote) / 45000, order_id=order_id,
        master_equity=Decimal(1_000_000), master_position_before=Decimal(0),
        executed_at=time.time()))


def fresh_config(workdir: Path, followers: list[dict[str, str]]) -> Path:
    """An empty work directory with a config of these followers, trusting the bench's key."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    config = workdir / "copytrade.yaml"
    config.write_text(yaml.safe_dump({
        "master": {"id": "master", "exchange": "paper"},
        "signals": {"public_keys": [PUBLIC_KEY]}, "followers": followers}))
    return config


def fresh_paper_config(workdir: Path, followers: int) -> Path:
    """An empty work directory with a config of N paper followers."""
    return fresh_config(workdir, [{"id": f"f{i:05d}", "exchange": "paper"} for i in range(followers)])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def fill_to_last_ack(results: list[CopyResult]) -> float:
    return max(r.acked_at or 0 for r in results) - results[0].signal_executed_at
