"""`python -m services.copier`: one replica of the copier group COPYTRADE_GROUP."""

from __future__ import annotations

import asyncio
import gc
import logging

from services.copier.context import CopierContext
from services.copier.copy.figures import FigureRefresher
from services.copier.copy.policy import Policy
from services.copier.delivery import watched
from services.copier.followers import FollowerBook
from services.copier.metrics import CopierMetrics
from services.copier.reconcile import Reconciler
from services.copier.reload import ConfigReloader
from services.copier.service import Copier
from services.copier.spread.metrics import WorkMetrics
from shared import bus
from shared.config import CopierSettings, SecretSource, load_settings
from shared.control import Control, control_bucket
from shared.exchange.context import AdapterContext
from shared.exchange.paper import Transport, nats_transport
from shared.ledger import Ledger
from shared.runtime import run_main, service_runtime

log = logging.getLogger("copytrade.copier")
FIRST_FREEZE_S = 5.0
FREEZE_S = 30.0  # what the process holds this long is moved out of the cycle collector's way
SWEEP_EVERY = 20  # every 20th time (10 min), what was frozen is collected first
# allocations between young collections (CPython: 700): a fan-out's orders in flight keep many
# young objects alive, walked again by each (1,000 Kraken clients: GC 0.28 -> 0.13 ms per order)
YOUNG_GC_THRESHOLD = 20_000


def adapter_context(settings: CopierSettings, nc: object) -> AdapterContext:
    if settings.paper_venue == "embedded":
        # the paper service's engine, run in this process (benchmarks, dry runs): imported only
        # here, so a copier of real venues never loads it
        from services.paper.venue import PaperVenue

        venue = PaperVenue(latency_s=settings.paper_latency_ms / 1000, seed_cash=settings.paper_seed_cash)
        transport: Transport = venue.handle
    else:
        transport = nats_transport(nc)
    return AdapterContext(
        paper_transport=transport,
        http_timeout_s=_http_timeout(settings),
        rate_limit=settings.exchange_rate_limit,
        alpaca_connections=settings.concurrency,
    )  # as many Alpaca calls as orders


def settle_memory(*, collect: bool) -> None:
    """Freeze what the process holds now (follower clients, markets, sessions, config) out of
    the cycle collector's way: a copier of 1,000 Kraken followers tracks ~270,000 objects, and
    a full collection walked them all several times per signal (a fifth of a copy's CPU).
    collect: unfreeze and collect first, so what was frozen and has since become garbage (a
    retired client) is freed."""
    if collect:
        gc.unfreeze()
        gc.collect()
    gc.freeze()


async def keep_memory_settled(interval_s: float = FREEZE_S) -> None:
    """Freeze soon after start-up (a spread group's clients connect in the background), then
    every interval (connections open on first use); collect the frozen objects every
    SWEEP_EVERY intervals."""
    await asyncio.sleep(FIRST_FREEZE_S)
    settle_memory(collect=False)
    rounds = 0
    while True:
        await asyncio.sleep(interval_s)
        rounds += 1
        settle_memory(collect=rounds % SWEEP_EVERY == 0)


def _http_timeout(settings: CopierSettings) -> float:
    """Below the order timeout, so the client gives up before the copier's own deadline."""
    return settings.order_timeout_s * 0.8


async def run(settings: CopierSettings) -> None:
    gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])
    async with service_runtime(f"copier-{settings.group}", settings) as rt:
        secrets = SecretSource(settings.secrets_dir)
        metrics = CopierMetrics(rt.registry, settings.group)
        book = FollowerBook(settings.group, secrets, adapter_context(settings, rt.nc))
        reloader = ConfigReloader(
            config_path=settings.config,
            secrets_dir=settings.secrets_dir,
            book=book,
            metrics=metrics,
            redactor=rt.redactor,
            interval_s=settings.reload_interval_s,
        )
        if not reloader.load():  # a bad config at start-up stops the process, loudly
            raise SystemExit(f"invalid config {settings.config}: see the log")
        # readiness waits for markets and sessions; a spread group's replicas each serve only
        # their shards' followers, so their clients connect on first use and then stay warm
        failed = await book.connect_all(lazy=len(book.all()) > settings.spread_threshold)
        if failed:
            log.warning("event=followers_not_connected followers=%s", ",".join(failed))
        buckets = await bus.ensure_topology(rt.js, settings.stream_replicas)
        await bus.ensure_consumer(
            rt.js, settings.group, ack_wait_s=settings.ack_wait_s, max_deliver=settings.max_deliver
        )
        control = Control(await control_bucket(rt.js, settings.stream_replicas))
        background = [watched(control.watch(), "control-watch")]
        copier_ctx = CopierContext(
            nc=rt.nc,
            js=rt.js,
            book=book,
            metrics=metrics,
            settings=settings,
            instance=rt.instance,
            control=control,
            policy=Policy(control, metrics),
            ledger=Ledger(buckets.ledger),
            claims=buckets.claims,
            fills=buckets.fills,
        )
        reconciler = Reconciler(copier_ctx, settle_s=2 * settings.ack_wait_s)
        copier = Copier(
            copier_ctx,
            reconciler=reconciler,
            work_metrics=WorkMetrics(rt.registry, settings.group),
            mirror_registry=rt.registry,
        )
        worker = asyncio.create_task(copier.run())
        if settings.reconcile_interval_s:
            background.append(watched(reconciler.run(settings.reconcile_interval_s), "reconcile"))
        background.append(watched(reloader.watch(), "config-reload"))
        if settings.figures_refresh_s:
            refresher = FigureRefresher(book, metrics, interval_s=settings.figures_refresh_s)
            warm = len(book.all()) <= settings.spread_threshold  # spread: each replica its shards
            background.append(watched(refresher.run(warm=warm), "figures-refresh"))
        ready = asyncio.create_task(copier.ready.wait())
        await asyncio.wait({worker, ready}, return_when=asyncio.FIRST_COMPLETED)
        if worker.done():  # it failed before taking a signal: readiness never passes
            ready.cancel()
            await worker
        settle_memory(collect=True)
        background.append(watched(keep_memory_settled(), "memory-settle"))
        rt.mark_started()
        await rt.wait_stopped()
        for task in background:
            task.cancel()
        await copier.shutdown(settings.shutdown_grace_s)
        await worker
        await book.close()


def main() -> None:
    run_main(run(load_settings(CopierSettings)))


if __name__ == "__main__":
    main()
