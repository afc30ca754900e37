"""Config reload: a bad file never kills the watcher nor half-applies, and watching is cheap.

The copier runs as a real process against a real nats-server; the mounts are laid out the way
the kubelet lays out a ConfigMap or Secret volume (`..<version>/`, `..data`, name links).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from services.copier.followers import FollowerBook
from services.copier.metrics import CopierMetrics
from services.copier.reload import ChangeWatch, ConfigReloader
from services.paper.venue import PaperVenue
from shared.config import SecretSource
from shared.exchange.context import AdapterContext
from shared.observability import RedactSecrets
from support.natsserver import free_port
from tests.harness import System, config_data, eventually, make_config, paper_followers, trade
from tests.secrets_scan import register
from tests.test_operations import metric, scrape

SHORT_KEY = "AAEC"  # valid base64, 3 bytes: not an Ed25519 public key
KEYS, SECRETS = ("ctreloadkey1x", "ctreloadkey2x"), ("ctreloadsecret1x", "ctreloadsecret2x")
register(*KEYS, *SECRETS)


def mount(directory: Path, files: dict[str, bytes], *, links: bool = True) -> None:
    """Publish files as the kubelet does: a new version directory, an atomic `..data` swap,
    then links for names not yet linked (`links=False` leaves that last step for later)."""
    directory.mkdir(exist_ok=True)
    version = directory / f"..2026_{uuid.uuid4().hex[:8]}"
    version.mkdir()
    for name, content in files.items():
        (version / name).write_bytes(content)
    staging = directory / "..data_tmp"
    staging.symlink_to(version.name)
    os.replace(staging, directory / "..data")
    if links:
        link_names(directory, files)


def link_names(directory: Path, names: dict[str, bytes]) -> None:
    for name in names:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")


def config_bytes(followers: list[str], public_keys: list[str] | None = None) -> bytes:
    data = config_data(paper_followers(dict.fromkeys(followers, 0)))
    if public_keys is not None:
        data["signals"] = {"public_keys": public_keys}
    return yaml.safe_dump(data).encode()


def _reloads(port: int, outcome: str) -> float | None:
    return metric(scrape(port), f'copytrade_config_reloads_total{{outcome="{outcome}"}}')


def _success(port: int) -> float | None:
    return metric(scrape(port), "copytrade_config_last_reload_success")


async def test_bad_files_are_rejected_whole_and_the_next_good_file_applies(system: System) -> None:
    await system.fund("master", 10_000)
    await system.fund_all({"alice": 1_000, "bob": 2_000})
    config_dir = system.tmp_path / "config"
    mount(config_dir, {"copytrade.yaml": config_bytes(["alice"])})
    port = free_port()
    system.spawn_copier(
        config_dir / "copytrade.yaml", COPYTRADE_HTTP_PORT=str(port), COPYTRADE_RELOAD_INTERVAL_S="0.1"
    )
    await eventually(lambda: _success(port) == 1, timeout=30)
    await eventually(system.consumer_exists, timeout=30)
    master = await system.start_master(make_config(paper_followers({"alice": 1_000})))

    mount(config_dir, {"copytrade.yaml": b"followers: [{id: \xff\xfe bob}]\n"})
    await eventually(lambda: _reloads(port, "rejected") == 1, timeout=10)
    not_utf8_success = _success(port)
    mount(config_dir, {"copytrade.yaml": config_bytes(["bob"], public_keys=[SHORT_KEY])})
    await eventually(lambda: _reloads(port, "rejected") == 2, timeout=10)
    short_key_success = _success(port)
    kept = await master.trade(trade(quote="500"))
    kept_results = await system.wait_results(kept.signal_id, 1)
    mount(config_dir, {"copytrade.yaml": config_bytes(["bob"])})
    await eventually(lambda: _reloads(port, "applied") == 2, timeout=10)
    applied = await master.trade(trade(quote="500"))
    applied_results = await system.wait_results(applied.signal_id, 1)

    assert not_utf8_success == 0
    assert short_key_success == 0
    assert set(kept_results) == {"alice"}  # old followers, and the old verifier took the signal
    assert kept_results["alice"].outcome == "filled"
    assert set(applied_results) == {"bob"}
    assert _success(port) == 1
    assert _reloads(port, "error") == 0


async def test_short_public_key_keeps_previous_followers_and_verifier(tmp_path: Path) -> None:
    config = tmp_path / "copytrade.yaml"
    config.write_bytes(config_bytes(["alice"]))
    registry = CollectorRegistry()
    metrics = CopierMetrics(registry, "paper")
    book = FollowerBook("paper", SecretSource(None, {}), AdapterContext(paper_transport=PaperVenue().handle))
    reloader = ConfigReloader(
        config_path=str(config),
        secrets_dir=str(tmp_path / "none"),
        book=book,
        metrics=metrics,
        redactor=RedactSecrets(),
        interval_s=1,
    )
    first = reloader.load()
    verifier = book.verifier

    config.write_bytes(config_bytes(["bob"], public_keys=[SHORT_KEY]))
    second = reloader.load()

    assert first is True
    assert second is False
    assert [f.id for f in book.all()] == ["alice"]
    assert book.verifier is verifier
    assert registry.get_sample_value("copytrade_config_last_reload_success") == 0
    await book.close()


def _k8s_secrets(tmp_path: Path, count: int) -> tuple[Path, Path, dict[str, bytes]]:
    config, secrets = tmp_path / "copytrade.yaml", tmp_path / "secrets"
    config.write_text("version: 1\n")
    files = {f"KRAKEN_USER_F{i}_API_KEY": f"key-{i}".encode() for i in range(count)}
    mount(secrets, files)
    return config, secrets, files


def test_data_swap_is_due_and_rescans_changed(tmp_path: Path) -> None:
    config, secrets, files = _k8s_secrets(tmp_path, 3)
    watch = ChangeWatch(config, secrets)
    idle = watch.due()

    mount(secrets, files | {"KRAKEN_USER_F0_API_KEY": b"key-rotated"})
    swapped_due, swapped_changed = watch.due(), watch.rescan()
    settled_due, settled = watch.due(), watch.rescan()  # the tick after a change looks again
    quiet = watch.due()

    assert idle is False
    assert (swapped_due, swapped_changed) == (True, True)
    assert (settled_due, settled) == (True, False)
    assert quiet is False


def test_name_linked_after_the_swap_is_seen_on_the_next_tick(tmp_path: Path) -> None:
    config, secrets, files = _k8s_secrets(tmp_path, 3)
    watch = ChangeWatch(config, secrets)
    added = files | {"KRAKEN_USER_NEW_API_KEY": b"key-new"}

    mount(secrets, added, links=False)  # the kubelet swaps first, links new names after
    swap_seen = watch.due() and watch.rescan()
    link_names(secrets, added)
    link_seen = watch.due() and watch.rescan()

    assert swap_seen is True
    assert link_seen is True


def test_plain_directory_rename_is_due_at_once_and_rewrite_at_full_scan(tmp_path: Path) -> None:
    config, secrets = tmp_path / "copytrade.yaml", tmp_path / "secrets"
    config.write_text("version: 1\n")
    secrets.mkdir()
    (secrets / "KRAKEN_USER_A_API_KEY").write_text("key-1")
    os.utime(secrets, ns=(0, 0))  # mounted long ago: any change now moves its mtime
    now = [0.0]
    watch = ChangeWatch(config, secrets, full_scan_s=30, clock=lambda: now[0])

    staged = secrets / ".tmp-write"
    staged.write_text("key-2")
    staged.replace(secrets / "KRAKEN_USER_A_API_KEY")  # an atomic write: renamed over
    renamed = watch.due() and watch.rescan()
    watch.due()
    watch.rescan()
    (secrets / "KRAKEN_USER_A_API_KEY").write_text("key-3!")  # in place: no directory change
    before_full_scan = watch.due()
    now[0] = 31.0
    at_full_scan = watch.due() and watch.rescan()

    assert renamed is True
    assert before_full_scan is False
    assert at_full_scan is True


async def test_non_utf8_secret_is_rejected_and_previous_followers_stay(tmp_path: Path) -> None:
    config, secrets = tmp_path / "copytrade.yaml", tmp_path / "secrets"
    follower = {"id": "erin", "exchange": "alpaca", "base_url": "http://127.0.0.1:9"}
    config.write_text(yaml.safe_dump(config_data([follower])))
    mount(
        secrets,
        {"ALPACA_USER_ERIN_API_KEY": KEYS[0].encode(), "ALPACA_USER_ERIN_API_SECRET": SECRETS[0].encode()},
    )
    registry = CollectorRegistry()
    book = FollowerBook("alpaca", SecretSource(secrets, {}), AdapterContext())
    reloader = ConfigReloader(
        config_path=str(config),
        secrets_dir=str(secrets),
        book=book,
        metrics=CopierMetrics(registry, "alpaca"),
        redactor=RedactSecrets(),
        interval_s=1,
    )
    first = reloader.load()
    erin = book.all()[0]

    mount(
        secrets,
        {
            "ALPACA_USER_ERIN_API_KEY": b"\xff" + KEYS[1].encode(),
            "ALPACA_USER_ERIN_API_SECRET": SECRETS[1].encode(),
        },
    )
    second = reloader.load()

    assert (first, second) == (True, False)
    assert book.all() == [erin]
    assert registry.get_sample_value("copytrade_config_last_reload_success") == 0
    await book.close()
