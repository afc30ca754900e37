"""`python -m services.master`: the master service (one active instance)."""

from __future__ import annotations

import asyncio
import logging

from services.master.metrics import MasterMetrics
from services.master.order_watch import OrderWatcher
from services.master.service import MasterContext, MasterService
from services.master.stream import relay
from services.master.watcher import FillWatcher
from shared import bus
from shared.config import MasterSettings, SecretSource, load_config, load_settings
from shared.control import Control
from shared.errors import ConfigError, CopytradeError
from shared.exchange.context import AdapterContext
from shared.exchange.factory import build_account
from shared.exchange.paper import nats_transport
from shared.exchange.port import Streaming
from shared.ledger import Ledger
from shared.runtime import run_main, service_runtime
from shared.signing import SignalSigner

log = logging.getLogger("copytrade.master")
SIGNING_KEY_NAME = "MASTER_SIGNING_KEY"


def master_signer(secrets: SecretSource, required: bool) -> SignalSigner | None:
    """The master's signing key from the secrets; a missing key is fatal when copiers need one."""
    seed = secrets.get(SIGNING_KEY_NAME)
    if seed is None and required:
        raise ConfigError(f"signals.require_signature is on but {SIGNING_KEY_NAME} is not set")
    return None if seed is None else SignalSigner(seed)


async def run(settings: MasterSettings) -> None:
    async with service_runtime("master", settings) as rt:
        config = load_config(settings.config)
        me = config.master_named(settings.master or None)  # COPYTRADE_MASTER
        secrets = SecretSource(settings.secrets_dir)
        credentials = secrets.credentials(me, "MASTER", plain_names=config.single_master)
        rt.redactor.add(credentials.values() if credentials else ())
        signer = master_signer(secrets, config.signals.require_signature)
        if signer is not None:
            rt.redactor.add([secrets.get(SIGNING_KEY_NAME) or ""])
        ctx = AdapterContext(
            paper_transport=nats_transport(rt.nc), http_timeout_s=settings.order_timeout_s * 0.8
        )
        account = build_account(me, credentials, ctx)
        try:
            await account.connect()  # markets and session before the first trade
        except CopytradeError as exc:
            log.warning("event=master_not_connected error=%s", type(exc).__name__)
        buckets = await bus.ensure_topology(rt.js, settings.stream_replicas)
        published = buckets.fills
        control = Control(buckets.control)
        metrics = MasterMetrics(rt.registry, me.id)
        master = MasterService(
            MasterContext(
                js=rt.js,
                account=account,
                config=me,
                metrics=metrics,
                signer=signer,
                published=published,
                ledger=Ledger(buckets.ledger),
                control=control,
            ),
            order_timeout_s=settings.order_timeout_s,
            named=not config.single_master,
        )
        await master.start(rt.nc)  # the kill switch is loaded and watched before any request
        watcher = FillWatcher(
            account=account,
            config=me,
            kv=published,
            master=master,
            on_fill=master.tracker.touch,
            figures_max_age_s=settings.master_figures_max_age_s,
            metrics=metrics,
        )
        orders = OrderWatcher(
            tracker=master.tracker, account=account, metrics=metrics, slow_s=settings.fill_watch_interval_s
        )
        watching = [
            asyncio.create_task(watcher.run(settings.fill_watch_interval_s)),
            asyncio.create_task(orders.run()),
        ]
        if isinstance(account, Streaming):  # the venue's private stream wakes both watchers
            watching.append(asyncio.create_task(relay(account, watcher, orders)))
        rt.mark_started()
        await rt.wait_stopped()
        for task in watching:
            task.cancel()
        await master.stop()
        await account.close()
        await ctx.close()


def main() -> None:
    run_main(run(load_settings(MasterSettings)))


if __name__ == "__main__":
    main()
