"""`python -m services.master`: the master service (one active instance)."""

from __future__ import annotations

from services.master.service import MasterMetrics, MasterService
from shared import bus
from shared.config import SecretSource, Settings, load_config, load_settings
from shared.exchange.factory import AdapterContext, build_account
from shared.exchange.paper import nats_transport
from shared.runtime import run_main, service_runtime


async def run(settings: Settings) -> None:
    async with service_runtime("master", settings) as rt:
        config = load_config(settings.config)
        credentials = SecretSource(settings.secrets_dir).credentials(config.master, "MASTER")
        rt.redactor.add(credentials.values() if credentials else ())
        ctx = AdapterContext(paper_transport=nats_transport(rt.nc))
        account = build_account(config.master, credentials, ctx)
        await bus.ensure_streams(rt.js, settings.stream_replicas)
        master = MasterService(js=rt.js, account=account, config=config.master,
                               metrics=MasterMetrics(rt.registry, config.master.id),
                               order_timeout_s=settings.order_timeout_s)
        service = await master.start(rt.nc)
        rt.mark_started()
        await rt.wait_stopped()
        await service.stop()
        await account.close()


def main() -> None:
    run_main(run(load_settings()))


if __name__ == "__main__":
    main()
