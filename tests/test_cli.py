"""The `copytrade` command as an operator meets it: help that names the environment, one-line
errors with exit status 2 for a missing config, an unreachable NATS or a bad argument, and a
master trade whose reply is lost told to retry with its request id."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
import yaml
from nats.aio.msg import Msg
from nats.js.errors import NoKeysError

from services.ops.cli import ENV_HELP, main
from shared import bus
from shared.config import OperatorSettings
from support.natsserver import free_port
from tests.harness import ROOT, System, config_data, paper_followers

COPYTRADE = str(Path(sys.executable).parent / "copytrade")


def run_cli(*args: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed console command, with only the given COPYTRADE_* variables set."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("COPYTRADE_")}
    return subprocess.run(
        [COPYTRADE, *args], cwd=ROOT, env={**environ, **env}, capture_output=True, text=True, timeout=timeout
    )


def unreachable_nats() -> str:
    return f"nats://127.0.0.1:{free_port()}"


def write_config(directory: Path, followers: list[str]) -> Path:
    path = directory / "copytrade.yaml"
    path.write_text(yaml.safe_dump(config_data(paper_followers(dict.fromkeys(followers, 1)))))
    return path


def test_status_without_config_exits_2_with_one_line(tmp_path: Path) -> None:
    done = run_cli(
        "status", COPYTRADE_CONFIG=str(tmp_path / "missing.yaml"), COPYTRADE_NATS_URL=unreachable_nats()
    )

    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert "missing.yaml" in done.stderr
    assert "COPYTRADE_CONFIG" in done.stderr
    assert done.stdout == ""


def test_kill_with_unreachable_nats_exits_2_with_one_line() -> None:
    url = unreachable_nats()
    started = time.monotonic()

    done = run_cli("kill", "on", COPYTRADE_NATS_URL=url)
    elapsed = time.monotonic() - started

    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert url in done.stderr
    assert "COPYTRADE_NATS_URL" in done.stderr
    assert elapsed < 15  # the CLI's own bound is 5 s; the rest is slack for a busy machine


def test_unreachable_nats_error_shows_no_password() -> None:
    url = f"nats://operator:hunter2-secret@127.0.0.1:{free_port()}"

    done = run_cli("kill", "on", COPYTRADE_NATS_URL=url)

    assert done.returncode == 2
    assert "hunter2-secret" not in done.stderr + done.stdout


async def test_pause_of_unknown_follower_suggests_close_id_and_changes_nothing(
    system: System,
) -> None:
    config = write_config(system.tmp_path, ["alice", "bob"])
    before = await _control_keys(system)

    done = await asyncio.to_thread(
        run_cli, "pause", "alcie", COPYTRADE_CONFIG=str(config), COPYTRADE_NATS_URL=system.server.url
    )
    after = await _control_keys(system)

    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert "alice" in done.stderr
    assert "bob" not in done.stderr
    assert before == after == []


async def _control_keys(system: System) -> list[str]:
    try:
        return list(await system.control.keys())
    except NoKeysError:  # an empty bucket
        return []


@pytest.mark.parametrize("quote", ["-1", "0", "nan", "abc"])
def test_trade_with_bad_quote_exits_with_one_line_error(quote: str) -> None:
    done = run_cli(
        "master",
        "trade",
        "--symbol",
        "BTC/USD",
        "--side",
        "buy",
        "--quote",
        quote,
        COPYTRADE_NATS_URL=unreachable_nats(),
    )

    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert "--quote" in done.stderr
    assert "Traceback" not in done.stderr


def test_trade_with_unknown_master_exits_2_naming_the_configured_one(tmp_path: Path) -> None:
    config = write_config(tmp_path, ["alice"])

    done = run_cli(
        "master",
        "trade",
        "--symbol",
        "BTC/USD",
        "--side",
        "buy",
        "--quote",
        "5",
        "--master",
        "mastr",
        COPYTRADE_CONFIG=str(config),
        COPYTRADE_NATS_URL=unreachable_nats(),
    )

    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert "mastr" in done.stderr
    assert "master" in done.stderr.replace("mastr", "")


def test_bare_master_prints_help_and_runs_nothing() -> None:
    done = run_cli("master", COPYTRADE_NATS_URL=unreachable_nats(), timeout=30)

    assert done.returncode == 2
    assert done.stdout.startswith("usage: copytrade master")
    assert "trade" in done.stdout
    assert "run" in done.stdout


@pytest.mark.parametrize(
    "command", [["status"], ["pause"], ["history"], ["kill"], ["master", "trade"], ["run"]]
)
def test_command_help_lists_its_environment(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    shown = capsys.readouterr().out

    assert exit_.value.code == 0
    assert "COPYTRADE_NATS_URL" in shown
    assert "COPYTRADE_NATS_TLS_CA" in shown
    assert ("COPYTRADE_CONFIG" in shown) == (command != ["kill"])


def test_help_names_only_real_settings() -> None:
    fields = {f.name for f in msgspec.structs.fields(OperatorSettings)}

    assert set(ENV_HELP) <= fields


@pytest.mark.parametrize("answer", [None, b"\x00 not a reply"])
async def test_trade_without_readable_reply_tells_operator_to_retry_with_same_id(
    system: System,
    answer: bytes | None,
) -> None:
    async def master_that_fails_to_answer(msg: Msg) -> None:
        if answer is not None:
            await msg.respond(answer)

    await system.nc.subscribe(bus.MASTER_TRADE_SUBJECT, cb=master_that_fails_to_answer)

    done = await asyncio.to_thread(
        run_cli,
        "master",
        "trade",
        "--symbol",
        "BTC/USD",
        "--side",
        "buy",
        "--quote",
        "5",
        "--request-id",
        "retry-me-0001",
        "--timeout",
        "1",
        COPYTRADE_NATS_URL=system.server.url,
    )

    assert done.returncode == 3
    assert len(done.stderr.splitlines()) == 1
    assert "--request-id retry-me-0001" in done.stderr
    assert "failed" not in done.stderr
    assert done.stdout.startswith("request retry-me-0001")
