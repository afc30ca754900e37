"""The bus is locked down as deployed: every service connects with its own NATS user from
deploy/k8s/base/nats/auth.conf, and only the master may publish trade signals."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import msgspec
import nats
import nats.errors
import pytest
import yaml
from nats.aio.client import Client

from shared import bus
from shared.exchange.paper import Fund, Orders, nats_transport
from shared.messages import TradeReply, TradeRequest
from support.localstack import ROOT, LocalStack, local_stack
from tests.harness import TEST_SIGNING_SEED, config_data
from tests.secrets_scan import register

AUTH_CONF = ROOT / "deploy/k8s/base/nats/auth.conf"
PASSWORDS = {
    "master": "pw-master",
    "copier": "pw-copier",
    "sizer": "pw-sizer",
    "paper-exchange": "pw-paper",
    "operator": "pw-operator",
}
register(*PASSWORDS.values())
SERVER_ENV = {
    "NATS_MASTER_PASSWORD": "pw-master",
    "NATS_COPIER_PASSWORD": "pw-copier",
    "NATS_SIZER_PASSWORD": "pw-sizer",
    "NATS_PAPER_PASSWORD": "pw-paper",
    "NATS_OPERATOR_PASSWORD": "pw-operator",
}


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[LocalStack]:
    server_conf = tmp_path / "nats.conf"  # includes resolve beside the including file
    (tmp_path / "auth.conf").write_text(AUTH_CONF.read_text())
    server_conf.write_text("include ./auth.conf\n")
    config = tmp_path / "copytrade.yaml"
    config.write_text(yaml.safe_dump(config_data([{"id": "alice", "exchange": "paper"}])))
    passwords = tmp_path / "nats-credentials"  # as the copytrade-nats Secret is mounted
    passwords.mkdir()
    for user, password in PASSWORDS.items():
        (passwords / user).write_text(password)
    with local_stack(tmp_path, config) as stack:
        stack.write_secret("MASTER_SIGNING_KEY", TEST_SIGNING_SEED)
        stack.start_nats(server_conf, SERVER_ENV)
        for name, module, user in (
            ("paper", "paper", "paper-exchange"),
            ("sizer", "sizer", "sizer"),
            ("copier", "copier", "copier"),
            ("master", "master", "master"),
        ):
            stack.start(name, module, COPYTRADE_NATS_USER=user, COPYTRADE_NATS_PASSWORD_DIR=str(passwords))
        stack.wait_ready()
        yield stack


async def _as(stack: LocalStack, user: str) -> Client:
    assert stack.nats is not None
    return await nats.connect(stack.nats.url, user=user, password=PASSWORDS[user], allow_reconnect=False)


async def _copy_once(stack: LocalStack) -> int:
    """Fund the paper accounts (as the master may), trade as the operator, count alice's orders."""
    master = await _as(stack, "master")
    call = nats_transport(master)
    await call(Fund("master", Decimal(10_000)))
    await call(Fund("alice", Decimal(1_000)))
    operator = await _as(stack, "operator")
    request = TradeRequest(symbol="BTC/USD", side="buy", size=Decimal(500), size_type="quote")
    reply = await operator.request(
        bus.MASTER_TRADE_SUBJECT, msgspec.json.Encoder(decimal_format="string").encode(request), timeout=30
    )
    assert msgspec.json.decode(reply.data, type=TradeReply).ok
    for _ in range(200):
        orders = getattr(await call(Orders("alice")), "orders", [])
        if orders:
            break
        await asyncio.sleep(0.05)
    await master.close()
    await operator.close()
    return len(orders)


async def _copier_may_publish_a_signal(stack: LocalStack) -> bool:
    copier = await _as(stack, "copier")
    try:
        await copier.jetstream().publish("copytrade.signals.master", b"{}", timeout=2)
    except nats.errors.Error:  # refused: a permissions violation leaves the publish unanswered
        return False
    finally:
        await copier.close()
    return True


async def _anonymous_may_connect(stack: LocalStack) -> bool:
    assert stack.nats is not None
    try:
        nc = await nats.connect(
            stack.nats.url, allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0
        )
    except (nats.errors.Error, OSError):  # authorization violation, or the socket refused
        return False
    await nc.close()
    return True


def test_services_copy_with_their_own_nats_users(secured: LocalStack) -> None:
    orders = asyncio.run(_copy_once(secured))

    assert orders == 1


def test_only_the_master_may_publish_signals(secured: LocalStack) -> None:
    copier_published = asyncio.run(_copier_may_publish_a_signal(secured))
    anonymous = asyncio.run(_anonymous_may_connect(secured))

    assert copier_published is False
    assert anonymous is False
