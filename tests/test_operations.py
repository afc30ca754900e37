"""Operating a running copier: live config swaps the way Kubernetes does them, and SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal as signals
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

from services.copier.reload import fingerprint
from support.natsserver import free_port
from tests.harness import System, config_data, eventually, make_config, paper_followers, trade


def mount(directory: Path, files: dict[str, str]) -> None:
    """Publish files the way the kubelet updates a ConfigMap volume: an atomic `..data` swap."""
    directory.mkdir(exist_ok=True)
    version = directory / f"..{uuid.uuid4().hex[:8]}"
    version.mkdir()
    for name, text in files.items():
        (version / name).write_text(text)
    staging = directory / "..data_tmp"
    staging.symlink_to(version.name)
    os.replace(staging, directory / "..data")
    for name in files:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")


def config_text(followers: dict[str, int]) -> str:
    return yaml.safe_dump(config_data(paper_followers(followers)))


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def metric(text: str, line_prefix: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def _start(system: System, followers: dict[str, int], **env: str) -> tuple[Any, Path, int]:
    await system.fund("master", 10_000)
    await system.fund_all({"alice": 1_000, "bob": 2_000, "carol": 3_000})
    config_dir = system.tmp_path / "config"
    mount(config_dir, {"copytrade.yaml": config_text(followers)})
    port = free_port()
    system.spawn_copier(
        config_dir / "copytrade.yaml", COPYTRADE_HTTP_PORT=str(port), COPYTRADE_RELOAD_INTERVAL_S="0.1", **env
    )
    await eventually(lambda: metric(scrape(port), "copytrade_config_last_reload_success") == 1, timeout=30)
    # the config loads before the group's durable exists, and a new durable delivers only
    # signals published after it: a signal sent in between is never copied
    await eventually(system.consumer_exists, timeout=30)
    master = await system.start_master(make_config(paper_followers(followers)))
    return master, config_dir, port


def _reloads(port: int, outcome: str) -> float | None:
    return metric(scrape(port), f'copytrade_config_reloads_total{{outcome="{outcome}"}}')


def test_fingerprint_changes_with_a_swapped_secret_or_a_rewritten_config_only(tmp_path: Path) -> None:
    config, secrets = tmp_path / "copytrade.yaml", tmp_path / "secrets"
    config.write_text("version: 1\n")
    mount(secrets, {"KRAKEN_USER_A_API_KEY": "key-1", "KRAKEN_USER_A_API_SECRET": "secret-1"})
    first, unchanged = fingerprint(config, secrets), fingerprint(config, secrets)

    mount(secrets, {"KRAKEN_USER_A_API_KEY": "key-2", "KRAKEN_USER_A_API_SECRET": "secret-1"})
    swapped = fingerprint(config, secrets)
    config.write_text("version: 1  # edited\n")
    rewritten = fingerprint(config, secrets)

    assert first == unchanged
    assert len({first, swapped, rewritten}) == 3


async def test_swapped_config_adds_and_removes_followers_without_restart(system: System) -> None:
    master, config_dir, port = await _start(system, {"alice": 1_000})
    first = await master.trade(trade(quote="500"))
    await system.wait_results(first.signal_id, 1)

    mount(config_dir, {"copytrade.yaml": config_text({"bob": 2_000})})
    await eventually(lambda: _reloads(port, "applied") == 2, timeout=10)
    second = await master.trade(trade(quote="500"))
    results = await system.wait_results(second.signal_id, 1)

    assert set(results) == {"bob"}
    assert 'follower="alice"' not in scrape(port)
    assert 'follower="bob"' in scrape(port)


async def test_broken_config_is_rejected_and_previous_followers_stay(system: System) -> None:
    master, config_dir, port = await _start(system, {"alice": 1_000})

    mount(config_dir, {"copytrade.yaml": "followers: [{id: bob, exchange: paper, sizing: huge}]"})
    await eventually(lambda: _reloads(port, "rejected") == 1, timeout=10)
    reply = await master.trade(trade(quote="500"))
    results = await system.wait_results(reply.signal_id, 1)

    assert set(results) == {"alice"}
    assert metric(scrape(port), "copytrade_config_last_reload_success") == 0


async def test_sigterm_mid_fan_out_leaves_one_order_per_follower(system: System) -> None:
    followers = {f"t{i:02d}": 1_000 for i in range(40)}
    await system.fund("master", 10_000)
    await system.fund_all(followers)
    config_path = system.tmp_path / "copytrade.yaml"
    config_path.write_text(config_text(followers))
    system.venue.latency_s = 0.05
    first = system.spawn_copier(
        config_path, instance="leaving", COPYTRADE_CONCURRENCY="4", COPYTRADE_SHUTDOWN_GRACE_S="0.2"
    )
    await eventually(system.consumer_exists, timeout=20)
    master = await system.start_master(make_config(paper_followers(followers)))

    reply = await master.trade(trade(quote="500"))
    await eventually(lambda: _placed_at_least(system, followers, 5), timeout=20)
    first.send_signal(signals.SIGTERM)
    exit_code = await asyncio.to_thread(first.wait, 30)
    system.spawn_copier(config_path, instance="successor")
    await system.wait_results(reply.signal_id, len(followers), timeout=60)

    assert exit_code == 0
    assert {f: len(await system.orders(f)) for f in followers} == dict.fromkeys(followers, 1)


async def _placed_at_least(system: System, followers: dict[str, int], count: int) -> bool:
    placed = await asyncio.gather(*(system.orders(f) for f in followers))
    return sum(len(p) for p in placed) >= count
