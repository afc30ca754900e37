"""`python -m services.paper`: the paper exchange service (a simulated venue on NATS)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import msgspec
from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from services.paper.venue import PaperVenue
from shared import bus
from shared.config import PaperSettings, load_settings
from shared.exchange.paper import Call
from shared.runtime import run_main, service_runtime

log = logging.getLogger("copytrade.paper")


async def serve_venue(nc: Client, venue: PaperVenue) -> Service:
    decoder = msgspec.json.Decoder(Call)
    encoder = msgspec.json.Encoder(decimal_format="string")

    tasks: set[asyncio.Task[None]] = set()

    async def handle(request: Request) -> None:
        # nats-py runs a subscription's callbacks one at a time: answer each call in its own
        # task so simulated latency overlaps, as it would at a real venue
        task = asyncio.create_task(answer(request))
        tasks.add(task)
        task.add_done_callback(_observed(tasks))

    async def answer(request: Request) -> None:
        try:
            call = decoder.decode(request.data)
        except msgspec.DecodeError as exc:  # not JSON, or JSON of the wrong shape
            await request.respond_error("400", str(exc))
            return
        await request.respond(encoder.encode(await venue.handle(call)))

    service = await add_service(
        nc,
        name=bus.PAPER_SERVICE,
        version="1.0.0",
        description="Simulated exchange for demo, dry runs and tests",
    )
    await service.add_group(name=bus.PAPER_GROUP).add_endpoint(name=bus.PAPER_ENDPOINT, handler=handle)
    return service


def _observed(tasks: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
    """A done-callback that forgets the task and logs its exception (none goes unseen)."""

    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("event=paper_call_failed error=%s", type(task.exception()).__name__)

    return done


async def run(settings: PaperSettings) -> None:
    async with service_runtime("paper-exchange", settings) as rt:
        service = await serve_venue(
            rt.nc, PaperVenue(latency_s=settings.paper_latency_ms / 1000, seed_cash=settings.paper_seed_cash)
        )
        rt.mark_started()
        await rt.wait_stopped()
        await service.stop()


def main() -> None:
    run_main(run(load_settings(PaperSettings)))


if __name__ == "__main__":
    main()
