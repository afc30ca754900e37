"""Configuration errors are caught before anything trades; signals that keep failing end as dead
letters; credentials from the environment never leak."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

from shared.messages import CopyResult, DeadLetter
from support.natsserver import free_port
from tests.emulators.kraken import KrakenEmulator
from tests.harness import ROOT, System, config_data, eventually, make_config, paper_followers, trade
from tests.secrets_scan import leaks, log_files, register


def _check(path: Path, secrets_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "services.cli", "config", "check", str(path)]
    if secrets_dir is not None:
        args += ["--secrets-dir", str(secrets_dir)]
    return subprocess.run(
        args,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if "_API_" not in k},
    )


def test_config_check_accepts_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "copytrade.yaml"
    path.write_text(yaml.safe_dump(config_data(paper_followers({"alice": 1, "bob": 2}))))

    done = _check(path)

    assert (done.returncode, done.stdout.strip()) == (0, "ok: master master on paper, 2 followers")


def test_config_check_names_the_misspelled_field(tmp_path: Path) -> None:
    data = config_data([{"id": "alice", "exchange": "paper", "sizing": {"mdoe": "multiplier"}}])
    path = tmp_path / "copytrade.yaml"
    path.write_text(yaml.safe_dump(data))

    done = _check(path)

    assert done.returncode == 1
    assert "unknown field `mdoe`" in done.stderr
    assert "$.followers[0].sizing" in done.stderr


def test_config_check_reports_missing_and_orphan_credentials(tmp_path: Path) -> None:
    path = tmp_path / "copytrade.yaml"
    path.write_text(yaml.safe_dump(config_data([{"id": "tania", "exchange": "kraken"}])))
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "KRAKEN_USER_GHOST_API_KEY").write_text("k")

    done = _check(path, secrets)

    assert done.returncode == 1
    assert "missing credentials KRAKEN_USER_TANIA_API_KEY" in done.stderr
    assert "KRAKEN_USER_GHOST_API_KEY set but no follower in config uses them" in done.stderr


async def test_signal_that_keeps_failing_ends_as_a_dead_letter(system: System) -> None:
    await system.fund("master", 10_000)
    await system.fund("alice", 1_000)
    config = make_config(paper_followers({"alice": 1_000}))
    await system.start_copier(config, max_deliver=2)
    master = await system.start_master(config)
    await system.stop_sizer()  # every delivery fails: no sizer answers

    reply = await master.trade(trade(quote="500"))

    async def dead_lettered() -> bool:
        return any(isinstance(r, DeadLetter) for r in await system.audit())

    await eventually(dead_lettered, timeout=30)
    letters = [r for r in await system.audit() if isinstance(r, DeadLetter)]
    assert [(d.signal_id, d.deliveries) for d in letters] == [(reply.signal_id, 2)]
    assert await system.orders("alice") == []


async def test_secret_from_the_environment_never_leaks(system: System) -> None:
    fake_secret = base64.b64encode(b"a-known-fake-secret-0451").decode()
    register(fake_secret, "known-fake-key-0451")
    async with KrakenEmulator() as kraken:  # knows the key, with another secret: auth fails
        kraken.state.add_account("known-fake-key-0451", base64.b64encode(b"other").decode())
        config_path = system.tmp_path / "copytrade.yaml"
        config_path.write_text(
            yaml.safe_dump(config_data([{"id": "leaky", "exchange": "kraken", "base_url": kraken.url}]))
        )
        port = free_port()
        system.spawn_copier(
            config_path,
            exchange="kraken",
            COPYTRADE_HTTP_PORT=str(port),
            COPYTRADE_LOG_LEVEL="DEBUG",
            KRAKEN_USER_LEAKY_API_KEY="known-fake-key-0451",
            KRAKEN_USER_LEAKY_API_SECRET=fake_secret,
        )
        await system.fund("master", 10_000)
        master = await system.start_master(make_config([]))
        await eventually(lambda: _ready(port), timeout=30)
        reply = await master.trade(trade(quote="500"))
        results = await system.wait_results(reply.signal_id, 1, timeout=30)
        metrics = await asyncio.to_thread(_scrape, port)

    assert results["leaky"].reason_code == "auth_error"
    assert leaks([*log_files(system.tmp_path), metrics, _text(results["leaky"])]) == []


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def _text(result: CopyResult) -> str:
    import msgspec

    return msgspec.json.encode(result).decode()
