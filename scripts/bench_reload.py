"""CPU of the config reload watcher with 2,000 secret files: `python -m scripts.bench_reload`.

One watcher tick each simulated second for TICKS seconds (the clock is simulated, the work is
real: system calls and full scans when due). Prints CPU per tick, i.e. % of a core at 1 tick/s,
for a Kubernetes Secret mount (`..data`) and for a plain directory.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from services.copier.reload import ChangeWatch

FILES, TICKS = 2_000, 120


def plain(root: Path) -> Path:
    directory = root / "plain"
    directory.mkdir()
    for i in range(FILES):
        (directory / f"ALPACA_USER_F{i:04d}_API_KEY").write_text("k" * 24)
    return directory


def kubernetes(root: Path) -> Path:
    directory, version = root / "k8s", root / "k8s" / "..2026_01_01"
    version.mkdir(parents=True)
    for i in range(FILES):
        (version / f"ALPACA_USER_F{i:04d}_API_KEY").write_text("k" * 24)
    (directory / "..data").symlink_to(version.name)
    for i in range(FILES):
        name = f"ALPACA_USER_F{i:04d}_API_KEY"
        (directory / name).symlink_to(f"..data/{name}")
    return directory


async def ticks(config: Path, secrets: Path) -> float:
    """CPU seconds per tick of the watcher's loop body, as `ConfigReloader.watch` runs it."""
    now = [0.0]
    watch = ChangeWatch(config, secrets, clock=lambda: now[0])
    started = time.process_time()
    for _ in range(TICKS):
        now[0] += 1.0
        if watch.due():
            await asyncio.to_thread(watch.rescan)
    return (time.process_time() - started) / TICKS


async def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-reload-"))
    config = root / "copytrade.yaml"
    config.write_text("version: 1\n")
    for name, secrets in (("kubernetes ..data", kubernetes(root)), ("plain directory", plain(root))):
        cpu = await ticks(config, secrets)
        print(
            f"{name:18} {FILES} files: {cpu * 1000:.3f} ms CPU per tick "
            f"= {cpu * 100:.3f}% of a core at 1 tick/s"
        )


if __name__ == "__main__":
    asyncio.run(main())
