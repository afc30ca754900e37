"""Runs the real services against a real nats-server for tests: in-process by default,
as subprocesses where a test must kill one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import nats
import yaml
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue
from nats.micro.service import Service
from prometheus_client import CollectorRegistry, generate_latest

from services.copier.context import CopierContext
from services.copier.copy.policy import Policy
from services.copier.followers import FollowerBook
from services.copier.metrics import CopierMetrics
from services.copier.reconcile import Reconciler
from services.copier.service import Copier
from services.copier.spread.metrics import WorkMetrics
from services.master.service import MasterContext, MasterMetrics, MasterService
from services.master.watcher import FillWatcher, fills_bucket
from services.paper.__main__ import serve_venue
from services.paper.venue import PaperVenue
from services.sizer.service import Sizer, SizerMetrics
from shared import bus
from shared.config import (
    CopierSettings,
    CopytradeConfig,
    MasterConfig,
    SecretSource,
    load_settings,
    parse_config,
)
from shared.control import Control, control_bucket
from shared.exchange.context import AdapterContext
from shared.exchange.factory import build_account
from shared.exchange.paper import Fund, InjectFault, Orders, PaperOrder, SetPrice
from shared.exchange.paper import nats_transport as paper_transport
from shared.exchange.port import ExchangeAccount
from shared.ledger import Ledger
from shared.messages import AnySignal, AuditRecord, CopyResult, TradeRequest
from shared.signing import SignalSigner, new_signing_key
from support.natsserver import NatsCluster, NatsServer
from tests.secrets_scan import leaks, register

ROOT = Path(__file__).resolve().parent.parent


async def eventually(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout: float = 10.0,
    interval: float = 0.02,
) -> None:
    """Poll until condition() is true; fail after `timeout` seconds (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


TEST_SIGNING_SEED, TEST_PUBLIC_KEY = new_signing_key()
register(TEST_SIGNING_SEED)


def config_data(
    followers: list[dict[str, Any]], master: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """A config file's content: a paper master whose signals are signed with the test key."""
    return {
        "master": master or {"id": "master", "exchange": "paper"},
        "signals": {"public_keys": [TEST_PUBLIC_KEY]},
        "followers": followers,
        **extra,
    }


def make_config(
    followers: list[dict[str, Any]], master: dict[str, Any] | None = None, **extra: Any
) -> CopytradeConfig:
    return parse_config(yaml.safe_dump(config_data(followers, master, **extra)))


async def master_service(
    nc: Client,
    account: ExchangeAccount,
    me: MasterConfig,
    metrics: MasterMetrics,
    *,
    signer: SignalSigner | None = None,
    named: bool = False,
) -> tuple[MasterService, KeyValue]:
    """A master service on `account`, started on `nc` (answering trade requests), and the
    fills bucket it shares with a fill watcher."""
    published = await fills_bucket(nc.jetstream())
    service = MasterService(
        MasterContext(
            js=nc.jetstream(),
            account=account,
            config=me,
            metrics=metrics,
            signer=signer,
            published=published,
        ),
        named=named,
    )
    await service.start(nc)
    return service, published


async def published_signals(js: JetStreamContext) -> list[AnySignal]:
    """Every signal in the SIGNALS stream, oldest first."""
    info = await js.stream_info(bus.SIGNALS_STREAM)
    if info.state.messages == 0:
        return []
    decoder = msgspec.json.Decoder(AnySignal)
    return [
        decoder.decode((await js.get_msg(bus.SIGNALS_STREAM, seq)).data or b"")
        for seq in range(info.state.first_seq, info.state.last_seq + 1)
    ]


def paper_followers(equities: Mapping[str, int | str], **settings: Any) -> list[dict[str, Any]]:
    return [{"id": fid, "exchange": "paper", **settings} for fid in equities]


def _cancel(task: asyncio.Task[None]) -> Callable[[], Awaitable[None]]:
    async def cancel() -> None:
        task.cancel()
        await asyncio.wait({task})

    return cancel


@dataclass
class CopierHandle:
    copier: Copier
    task: asyncio.Task[None]
    registry: CollectorRegistry
    nc: Client
    book: FollowerBook
    reconciler: Reconciler

    async def stop(self) -> None:
        await self.copier.shutdown(grace_s=5)
        await self.task
        await self.book.close()
        await self.nc.close()

    def metrics_text(self) -> str:
        return generate_latest(self.registry).decode()

    def metric(self, name: str, **labels: str) -> float:
        """The sum of this replica's samples of `name` whose labels include `labels`."""
        return sum(
            sample.value
            for family in self.registry.collect()
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )


class System:
    """nats-server + paper exchange + sizer, with copiers and a master added per test."""

    def __init__(self, server: NatsServer | NatsCluster, tmp_path: Path) -> None:
        self.server = server
        self.tmp_path = tmp_path
        self.venue = PaperVenue()
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._services: list[Service] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.copiers: list[CopierHandle] = []

    def settings(self, **overrides: Any) -> CopierSettings:
        base: dict[str, Any] = {
            "nats_url": self.server.url,
            "http_port": 0,
            "ack_wait_s": 5.0,
            "order_timeout_s": 2.0,
            "snapshot_ttl_s": 0.0,
        }
        base.update(overrides)
        return load_settings(CopierSettings, {}, **base)

    async def connect(self) -> Client:
        nc = await nats.connect(
            bus.servers(self.server.url), max_reconnect_attempts=-1, reconnect_time_wait=0.2
        )
        self._closers.append(nc.close)
        return nc

    async def __aenter__(self) -> System:
        self.nc = await self.connect()
        self.js = self.nc.jetstream()
        self.claims = await bus.ensure_streams(self.js)
        self.control = await control_bucket(self.js)
        self.paper = paper_transport(self.nc)
        self._services.append(await serve_venue(await self.connect(), self.venue))
        self.sizer_registry = CollectorRegistry()
        self.sizer = await Sizer(SizerMetrics(self.sizer_registry)).start(await self.connect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.scan_for_secrets()
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for closer in reversed(self._closers):
            with contextlib.suppress(Exception):  # best effort clean-up
                await closer()

    async def scan_for_secrets(self) -> None:
        """No registered secret in any result record or any metric this system exported."""
        try:
            records = [msgspec.json.encode(r).decode() for r in await self.audit()]
        except (nats.errors.Error, TimeoutError):  # a test that broke NATS: scan the metrics
            records = []
        metrics = [h.metrics_text() for h in self.copiers]
        found = leaks([*records, *metrics])
        assert not found, f"secret values leaked into results or metrics: {found}"

    async def consumer_exists(self, group: str = "paper") -> bool:
        """Whether a copier of the group has created its durable (it is consuming)."""
        try:
            await self.js.consumer_info(bus.SIGNALS_STREAM, bus.durable_name(group))
        except NotFoundError:
            return False
        return True

    async def stop_sizer(self) -> None:
        await self.sizer.stop()

    # ---- paper exchange ------------------------------------------------------------------------

    async def fund(
        self, account: str, cash: int | str | Decimal, holdings: dict[str, Decimal] | None = None
    ) -> None:
        await self.paper(Fund(account, Decimal(cash), holdings or {}))

    async def fund_all(self, equities: Mapping[str, int | str]) -> None:
        for account, cash in equities.items():
            await self.fund(account, cash)

    async def fault(self, account: str, kind: str) -> None:
        await self.paper(InjectFault(account, kind))  # type: ignore[arg-type]

    async def set_price(self, symbol: str, price: str) -> None:
        await self.paper(SetPrice(symbol, Decimal(price)))

    async def orders(self, account: str) -> list[PaperOrder]:
        reply = await self.paper(Orders(account))
        return list(getattr(reply, "orders", []))

    # ---- services ----------------------------------------------------------------------------

    async def start_copier(
        self,
        config: CopytradeConfig,
        exchange: str = "paper",
        instance: str = "copier-1",
        secrets: dict[str, str] | None = None,
        ctx: AdapterContext | None = None,
        **settings: Any,
    ) -> CopierHandle:
        """A copier replica in this process; `secrets` are credentials by env-var name."""
        s = self.settings(group=exchange, instance=instance, **settings)
        nc = await self.connect()
        js = nc.jetstream()
        registry = CollectorRegistry()
        metrics = CopierMetrics(registry, exchange)
        ctx = ctx or AdapterContext()
        ctx.paper_transport = ctx.paper_transport or paper_transport(nc)
        book = FollowerBook(exchange, SecretSource(None, secrets or {}), ctx)
        book.apply(config)
        metrics.set_followers(book.state_counts())
        await bus.ensure_consumer(js, exchange, ack_wait_s=s.ack_wait_s, max_deliver=s.max_deliver)
        control = Control(await control_bucket(js))
        watching = asyncio.create_task(control.watch())
        copier_ctx = CopierContext(
            nc=nc,
            js=js,
            book=book,
            metrics=metrics,
            settings=s,
            instance=instance,
            control=control,
            policy=Policy(control, metrics),
            ledger=Ledger(await js.key_value(bus.LEDGER_BUCKET)),
            claims=await js.key_value(bus.CLAIMS_BUCKET),
            fills=await js.key_value(bus.FILLS_BUCKET),
        )
        reconciler = Reconciler(copier_ctx)
        copier = Copier(copier_ctx, reconciler=reconciler, work_metrics=WorkMetrics(registry, exchange))
        handle = CopierHandle(copier, asyncio.create_task(copier.run()), registry, nc, book, reconciler)
        self.copiers.append(handle)
        self._closers.insert(0, _cancel(watching))
        self._closers.insert(0, handle.stop)
        return handle

    async def start_replicas(
        self,
        config: CopytradeConfig,
        count: int,
        exchange: str = "paper",
        others: int = 0,
        **settings: Any,
    ) -> list[CopierHandle]:
        """`count` replicas of one group in this process, returned once each sees all of them
        (plus `others` replicas running elsewhere, e.g. subprocesses)."""
        handles = [
            await self.start_copier(config, exchange, instance=f"replica-{i + 1}", **settings)
            for i in range(count)
        ]
        await eventually(
            lambda: all(
                len(h.copier.replicas.live()) == count + others and h.copier.settled for h in handles
            ),
            timeout=20,
        )
        return handles

    async def start_master(
        self,
        config: CopytradeConfig,
        secrets: dict[str, str] | None = None,
        master_id: str | None = None,
    ) -> MasterService:
        """The master service of `master_id` (None: the only master), as COPYTRADE_MASTER picks."""
        me = config.master_named(master_id)
        nc = await self.connect()
        credentials = SecretSource(None, secrets or {}).credentials(
            me, "MASTER", plain_names=config.single_master
        )
        ctx = AdapterContext(paper_transport(nc))
        account = build_account(me, credentials, ctx)
        await account.connect()
        self._closers += [ctx.close, account.close]  # closed in reverse: the account, then its session
        self.master_registry = CollectorRegistry()
        signer = SignalSigner(TEST_SIGNING_SEED) if config.signals.require_signature else None
        master, published = await master_service(
            nc,
            account,
            me,
            MasterMetrics(self.master_registry, me.id),
            signer=signer,
            named=not config.single_master,
        )
        self.watcher = FillWatcher(account=account, config=me, kv=published, master=master)
        return master

    def spawn_copier(
        self, config_path: Path, exchange: str = "paper", instance: str = "proc", **env: str
    ) -> subprocess.Popen[bytes]:
        environ = {
            **os.environ,
            "COPYTRADE_NATS_URL": self.server.url,
            "COPYTRADE_CONFIG": str(config_path),
            "COPYTRADE_GROUP": exchange,
            "COPYTRADE_INSTANCE": instance,
            "COPYTRADE_HTTP_PORT": "0",
            "COPYTRADE_SECRETS_DIR": str(self.tmp_path / "no-secrets"),
            "COPYTRADE_ACK_WAIT_S": "2",
            "COPYTRADE_ORDER_TIMEOUT_S": "1",
            "COPYTRADE_SNAPSHOT_TTL_S": "0",
            **env,
        }
        log = (self.tmp_path / f"{instance}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.copier"], cwd=ROOT, env=environ, stdout=log, stderr=log
        )
        self.processes.append(proc)
        return proc

    # ---- the audit trail ---------------------------------------------------------------------

    async def audit(self) -> list[AuditRecord]:
        info = await self.js.stream_info(bus.RESULTS_STREAM)
        decoder = msgspec.json.Decoder(AuditRecord)
        records: list[AuditRecord] = []
        if info.state.messages == 0:
            return records
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await self.js.get_msg(bus.RESULTS_STREAM, seq)
            assert msg.data is not None
            records.append(decoder.decode(msg.data))
        return records

    async def results(self, signal_id: str | None = None) -> dict[str, CopyResult]:
        """The recorded outcome per follower (for one signal, if given)."""
        return {
            r.follower_id: r
            for r in await self.audit()
            if isinstance(r, CopyResult) and signal_id in (None, r.signal_id)
        }

    async def wait_results(self, signal_id: str, count: int, timeout: float = 15.0) -> dict[str, CopyResult]:
        async def complete() -> bool:
            return len(await self.results(signal_id)) >= count

        await eventually(complete, timeout)
        return await self.results(signal_id)


def trade(
    symbol: str = "BTC/USD", side: str = "buy", quote: str | None = None, base: str | None = None
) -> TradeRequest:
    size_type, size = ("quote", quote) if quote is not None else ("base", base)
    return TradeRequest(
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        size=Decimal(size or "0"),
        size_type=size_type,  # type: ignore[arg-type]
    )
