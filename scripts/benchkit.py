"""What the benchmark scripts share: signed test signals and fresh paper configs."""

from __future__ import annotations

import os
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


def signal(quote: str = "100", exchange: str = "paper") -> TradeSignal:
    """A signed buy of `quote` USD of BTC by the master (on `exchange`), filled now."""
    order_id = uuid.uuid4().hex
    return SIGNER.sign(
        TradeSignal(
            signal_id=signal_id_for(exchange, order_id),
            master_id="master",
            exchange=exchange,
            symbol="BTC/USD",
            side="buy",
            price=Decimal(45000),
            size=Decimal(quote),
            size_type="quote",
            filled_base=Decimal(quote) / 45000,
            order_id=order_id,
            master_equity=Decimal(1_000_000),
            master_position_before=Decimal(0),
            executed_at=time.time(),
        )
    )


def fresh_config(
    workdir: Path, followers: list[dict[str, str]], master: dict[str, str] | None = None
) -> Path:
    """An empty work directory with a config of these followers, trusting the bench's key."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    config = workdir / "copytrade.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "master": master or {"id": "master", "exchange": "paper"},
                "signals": {"public_keys": [PUBLIC_KEY]},
                "followers": followers,
            }
        )
    )
    return config


def fresh_paper_config(workdir: Path, followers: int) -> Path:
    """An empty work directory with a config of N paper followers."""
    return fresh_config(workdir, [{"id": f"f{i:05d}", "exchange": "paper"} for i in range(followers)])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def fill_to_last_ack(results: list[CopyResult]) -> float:
    return max(r.acked_at or 0 for r in results) - results[0].signal_executed_at


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far: utime + stime from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS
